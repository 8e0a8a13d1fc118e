"""model.yaml schema 2 (imported policies): validation that names the bad value, the package loader, the
policy tokenizer and prompt formats, LeRobot's normalisation kinds, frames of another size, the
observation window and the diffusion scheduler."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydantic
import pytest
import yaml

from vla_runtime.core.action_space import Normalizer, ProprioNormalizer
from vla_runtime.core.diffusion import DiffusionSampler
from vla_runtime.core.model_spec import (
    DiffusionSpec,
    HfTokenizerSpec,
    ModelSpec,
    Normalization,
    PromptSpec,
    ProprioSpec,
    load_model_spec,
)
from vla_runtime.core.policy import ObservationWindow
from vla_runtime.core.policy_io import fit_frame
from vla_runtime.core.text import HfTokenizer, PromptFormat, state_bins
from vla_runtime.engines.model_package import ModelPackageError, load_model_package, validate_package

FIX = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "lerobot"


def raw(kind: str) -> dict:
    return yaml.safe_load((FIX / kind / "model.yaml").read_text(encoding="utf-8"))


def tensor(d: dict, part: str, name: str) -> dict:
    return next(t for t in d[part]["inputs"] + d[part]["outputs"] if t["name"] == name)


# ------------------------------------------------------------------------------ the schema
def test_every_fixture_is_schema_2_and_says_what_the_runtime_needs() -> None:
    pi0 = load_model_spec(FIX / "pi0")
    assert pi0.schema_version == 2 and pi0.parts == ("slow", "fast") and pi0.fast.is_flow
    assert [c.name for c in pi0.cameras] == ["scene", "wrist"] and (pi0.cameras[0].height, pi0.cameras[0].width) == (
        48, 64)
    assert pi0.latent.is_multi and [t.name for t in pi0.latent.tensors][-1] == "prefix_mask"
    assert pi0.latent.nbytes == 4 * 56 * 8 * 4 + 56 * 8
    assert (pi0.model_chunk_horizon, pi0.model_action_dim) == (10, 12) and pi0.action_dim == 8
    assert isinstance(pi0.tokenizer, HfTokenizerSpec) and pi0.tokenizer.prompt.kind == "newline_terminated"
    assert pi0.fast.input_by_role("proprio").name == "state" and not pi0.state_in_slow
    smol, pi05 = load_model_spec(FIX / "smolvla"), load_model_spec(FIX / "pi05")
    assert smol.state_in_slow and smol.slow.input_by_role("proprio") is not None
    assert pi05.state_in_slow and pi05.slow.input_by_role("proprio") is None  # the state is in the prompt
    act = load_model_spec(FIX / "act")
    assert act.parts == ("fast",) and act.slow is None and act.latent is None and act.tokenizer is None
    assert act.fast.input_by_role("image").camera == "scene"
    dif = load_model_spec(FIX / "diffusion")
    assert dif.fast.is_diffusion and dif.fast.diffusion.scheduler == "ddpm" and dif.n_obs_steps == 2
    assert (dif.chunk_offset, dif.chunk_horizon, dif.model_chunk_horizon) == (1, 8, 16)
    assert load_model_spec(FIX / "diffusion_ddim").fast.diffusion.scheduler == "ddim"


def _drop_pad(d: dict) -> None:
    d["action"].pop("padding")


V2_ERRORS = [
    ("pi0", lambda d: d.update(schema_version=1), "schema_version is 1 but the file uses .*cameras.*latent.tensors"
                                                  ".*tokenizer.kind 'hf_tokenizers'.*set schema_version: 2"),
    ("pi0", lambda d: d.update(schema_version=3), "schema_version\n.*input_value=3"),
    ("pi0", lambda d: d["latent"]["tensors"][0].update(shape=[1, 1, 50, 8]),
     r"slow output 'past_key_0' is \[1, 1, 56, 8\] float32 but latent.tensors says \[1, 1, 50, 8\]"),
    ("pi0", lambda d: d["latent"]["tensors"].pop(), r"latent.tensors .* must be exactly the slow outputs"),
    ("pi0", lambda d: d["latent"].update(tokens=4, dim=8), "either 'tokens' and 'dim' .* or 'tensors'"),
    ("pi0", lambda d: d["cameras"][0].update(height=40), r"has shape \[1, 48, 64, 3\] but camera 'scene' is 40x64x3"),
    ("pi0", lambda d: tensor(d, "slow", "image_wrist").update(camera="top"), r"must name one of the cameras"),
    ("pi0", lambda d: d["cameras"].append(dict(d["cameras"][0], name="extra")), r"cameras \['extra'\] feed no image"),
    ("pi0", lambda d: d["cameras"][0].update(name="state"), "camera name must not .* got 'state'"),
    ("pi0", lambda d: d["cameras"][0]["preprocess"].update(in_graph=False), "preprocess.in_graph must be true"),
    ("pi0", lambda d: d["cameras"][0]["preprocess"]["steps"].append({"op": "resize"}),
     r"preprocess op 'resize' needs \['height', 'width'\]"),
    ("pi0", lambda d: tensor(d, "slow", "image_scene").update(dtype="float32"), "takes the raw uint8 frame"),
    ("pi0", lambda d: d["tokenizer"].update(max_len=20), "'lang_tokens' has length 24 but tokenizer.max_len is 20"),
    ("pi0", lambda d: d["tokenizer"].update(file="/etc/tokenizer.json"), "tokenizer file must be a path inside"),
    ("pi0", lambda d: d["tokenizer"]["prompt"].update(kind="chat"), "prompt.kind\n.*input_value='chat'"),
    ("pi0", lambda d: d.pop("tokenizer"), "'lang_tokens' \\(role 'instruction_ids'\\) needs a 'tokenizer' block"),
    ("pi0", lambda d: d["action"]["padding"].update(model_dim=6), "model_dim = 6 is smaller than the 8 action dims"),
    ("pi0", _drop_pad, r"noisy_actions tensor 'x_t' has shape \[1, 10, 12\] .* trailing dims \[10, 8\]"),
    ("pi0", lambda d: d["proprio"]["padding"].update(where="runtime"),
     "proprio tensor 'state' has 8 dims but proprio.padding.to 12"),
    ("pi0", lambda d: d["proprio"]["normalization"].update(kind="quantiles"), "needs 'q01' and 'q99'"),
    ("pi0", lambda d: d["proprio"]["normalization"].update(eps=-1e-8), "eps\n.*greater than or equal to 0"),
    ("pi0", lambda d: d["fast"]["inputs"].append({"name": "n", "shape": [1, 10, 12], "dtype": "float32",
                                                  "role": "noise"}), "role 'noise' does not apply to a flow_matching"),
    ("pi0", lambda d: d["fast"].update(kind="diffusion"), "'flow' block given but fast kind is 'diffusion'"),
    ("pi0", lambda d: d.update(chunk_offset=2), "chunk_offset 2 \\+ chunk_horizon 10 exceeds model_horizon 10"),
    ("act", lambda d: d.update(latent={"tensors": [{"name": "z", "shape": [1, 4]}]}), "needs a slow part"),
    ("act", lambda d: tensor(d, "fast", "state").update(role="latent"), "role 'latent' but the package has no slow"),
    ("diffusion", lambda d: d["fast"]["diffusion"]["steps"].reverse(), "strictly decreasing timesteps"),
    ("diffusion", lambda d: d["fast"]["diffusion"]["steps"][0].update(timestep=100),
     r"timestep 100 is outside \[0, num_train_timesteps = 100\)"),
    ("diffusion", lambda d: d["fast"]["diffusion"]["steps"][3].update(alpha_prod_t=0.5),
     r"steps\[3\].alpha_prod_t = 0.5 but alphas_cumprod\[80\] = 0.085"),
    ("diffusion", lambda d: d["fast"]["diffusion"].update(eta=0.5), "eta must be 0"),
    ("diffusion", lambda d: d["fast"].pop("diffusion"), "fast kind 'diffusion' needs a 'diffusion:"),
    ("diffusion", lambda d: d.update(n_obs_steps=3), r"expected \[1, 3, 8\] \(a window of n_obs_steps states\)"),
    ("diffusion", lambda d: tensor(d, "fast", "model_output").update(role="velocity"),
     "'model_output' has role 'velocity', which only a 'kind: flow_matching' fast part takes"),
    ("diffusion", lambda d: tensor(d, "fast", "timestep").update(shape=[1, 2]),
     r"diffusion_timestep tensor 'timestep' has shape \[1, 2\]"),
]


@pytest.mark.parametrize(("kind", "edit", "match"), V2_ERRORS)
def test_schema_2_errors_name_the_bad_value(kind: str, edit, match: str) -> None:
    d = raw(kind)
    ModelSpec.model_validate(copy.deepcopy(d))  # the fixture itself is valid
    edit(d)
    with pytest.raises(pydantic.ValidationError, match=match):
        ModelSpec.model_validate(d)


def test_load_refuses_a_schema_version_it_does_not_read(tmp_path: Path) -> None:
    d = raw("act")
    d["schema_version"] = 7
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="schema_version 7 is not one this runtime reads"):
        load_model_spec(tmp_path)


# ------------------------------------------------------------------------------ the package
def _copy(tmp_path: Path, kind: str) -> Path:
    dst = tmp_path / kind
    shutil.copytree(FIX / kind, dst)
    return dst


def test_package_loader_checks_the_tokenizer_file_and_the_parts(tmp_path: Path) -> None:
    pkg = _copy(tmp_path, "pi0")
    (pkg / "tokenizer.json").unlink()
    with pytest.raises(ModelPackageError, match="tokenizer: tokenizer file not found: .*tokenizer.json"):
        load_model_package(pkg)
    (pkg / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelPackageError, match="not a tokenizers file"):
        validate_package(pkg)
    with load_model_package(FIX / "act") as p:  # default parts: the fast part only
        assert p.slow_engine is None and p.slow_onnx is None and p.fast_onnx.name == "policy.onnx"
    with pytest.raises(ModelPackageError, match="the package has no slow part"):
        load_model_package(FIX / "act", parts=("slow",))


def test_a_latent_that_disagrees_with_the_graphs_is_refused_by_name(tmp_path: Path) -> None:
    pkg = _copy(tmp_path, "diffusion")
    d = yaml.safe_load((pkg / "model.yaml").read_text())
    d["latent"]["tensors"][0]["shape"] = [1, 40]
    for part in ("slow", "fast"):
        tensor(d, part, "global_cond")["shape"] = [1, 40]
    (pkg / "model.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ModelPackageError, match=r"output 'global_cond': model.yaml says shape \[1, 40\], graph has "
                                                r"\[1, 48\]"):
        validate_package(pkg)


# ------------------------------------------------------------------------------ tokenizer and prompt
@pytest.fixture(scope="module")
def pi0_tok() -> HfTokenizer:
    spec = load_model_spec(FIX / "pi0")
    return HfTokenizer.from_spec(spec.tokenizer, FIX / "pi0")


def test_hf_tokenizer_pads_and_truncates_to_the_graphs_length(pi0_tok: HfTokenizer) -> None:
    short = pi0_tok.encode_prompt("pick up the red cube")
    assert short.ids.shape == (1, 24) and short.ids.dtype == np.int64
    n = int(short.mask.sum())
    assert 1 < n < 24 and (short.ids[0, n:] == 0).all() and not short.truncated
    assert pi0_tok.decode(short.ids).strip() == "pick up the red cube"
    long = pi0_tok.encode_prompt("move " * 40)
    assert long.mask.all() and long.truncated
    left = HfTokenizer(FIX / "pi0" / "tokenizer.json", pi0_tok.spec.model_copy(update={"padding_side": "left"}))
    assert (left.encode_prompt("pick up the red cube").ids[0, -n:] == short.ids[0, :n]).all()
    strict = HfTokenizer(FIX / "pi0" / "tokenizer.json", pi0_tok.spec.model_copy(update={"truncation": False}))
    with pytest.raises(ValueError, match="the prompt is .* tokens, the graph takes 24"):
        strict.encode_prompt("move " * 40)


def test_prompt_formats() -> None:
    nl = PromptFormat(PromptSpec(kind="newline_terminated"))
    assert nl.text("pick") == "pick\n" and nl.text("pick\n") == "pick\n"
    assert PromptFormat(PromptSpec(kind="plain")).text("pick") == "pick"
    pi05 = PromptFormat(PromptSpec(kind="pi05_state_prompt"))
    s = np.array([-1.5, -1.0, 0.0, 1 - 2 / 256, 0.999, 2.0], np.float32)
    assert state_bins(s).tolist() == [-1, 0, 128, 255, 255, 255]
    assert pi05.text(" put_the cube\nthere ", s) == "Task: put the cube there, State: -1 0 128 255 255 255;\nAction: "
    with pytest.raises(ValueError, match="needs the normalised robot state"):
        pi05.text("x")
    with pytest.raises(ValueError, match="state for the prompt must be finite"):
        pi05.text("x", np.array([np.nan]))


# ------------------------------------------------------------------------------ normalisation
def test_lerobot_normalisation_kinds() -> None:
    x = np.array([[0.0, 1.0, 2.0]], np.float32)
    ms = Normalizer(Normalization(kind="mean_std", mean=(1, 1, 1), std=(2, 0, 4), eps=1e-8), 3)
    n = ms.normalize(x)
    np.testing.assert_allclose(n, [[-0.5, 0.0, 0.25]])  # std 0 + eps: a constant dim, no division by zero
    np.testing.assert_allclose(ms.denormalize(n), [[0.0, 1.0, 2.0]], atol=1e-6)
    for kind, lo, hi in (("min_max", "min", "max"), ("quantiles", "q01", "q99"), ("quantile10", "q10", "q90")):
        stats = Normalization(kind=kind, **{lo: (0, 1, -2), hi: (2, 1, 2)}, eps=1e-8)
        norm = Normalizer(stats, 3)
        n = norm.normalize(x)
        assert n[0, 0] == -1.0 and n[0, 2] == 1.0 and n[0, 1] == -1.0  # max == min: span eps (at min: -1), no NaN
        np.testing.assert_allclose(norm.denormalize(np.array([[-1.0, 0.0, 3.0]])), [[0.0, 1.0, 6.0]], atol=1e-6)
    ident = Normalizer(Normalization(kind="identity"), 3)
    np.testing.assert_array_equal(ident.normalize(x), x)
    with pytest.raises(ValueError, match="each max must exceed its min"):
        Normalization(kind="min_max", min=(1.0,), max=(0.0,), eps=1e-8)
    with pytest.raises(ValueError, match="each max must exceed its min"):
        Normalization(kind="min_max", min=(1.0,), max=(1.0,))  # schema 1 (no eps): strict


def test_proprio_padding_at_run_time_and_windows() -> None:
    spec = ProprioSpec(names=("a", "b"), normalization=Normalization(kind="mean_std", mean=(1, 2), std=(1, 2), eps=0),
                       padding={"to": 4, "value": 0.0, "where": "runtime"})
    p = ProprioNormalizer(spec)
    np.testing.assert_allclose(p(np.array([2.0, 2.0])), [[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(p.window(np.array([[1.0, 4.0], [3.0, 2.0]])), [[0, 1, 0, 0], [2, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"state window must be \(T, 2\)"):
        p.window(np.zeros((2, 3)))


# ------------------------------------------------------------------------------ frames and windows
def test_fit_frame_keeps_a_frame_of_the_right_size_and_crops_to_the_aspect_ratio() -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 200  # the centre square
    assert fit_frame(img, 40, 80) is img
    sq = fit_frame(img, 20, 20)  # centre crop 40x40 (all 200), then resize
    assert sq.shape == (20, 20, 3) and (sq == 200).all()
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (64, 1, 3))  # 64x64
    half = fit_frame(ramp, 32, 32)
    np.testing.assert_allclose(half[0, :, 0], (ramp[0, 0::2, 0].astype(float) + ramp[0, 1::2, 0]) / 2, atol=1)
    with pytest.raises(ValueError, match="H×W×3 uint8 RGB"):
        fit_frame(np.zeros((4, 4, 3), np.float32), 2, 2)


def test_observation_window_fills_then_slides() -> None:
    w = ObservationWindow(3)
    frames, states = w.push({"cam": np.full((2, 2, 3), 1, np.uint8)}, np.array([1.0]))
    assert frames["cam"].shape == (3, 2, 2, 3) and states[:, 0].tolist() == [1, 1, 1]
    w.push({"cam": np.full((2, 2, 3), 2, np.uint8)}, np.array([2.0]))
    frames, states = w.push({"cam": np.full((2, 2, 3), 3, np.uint8)}, np.array([3.0]))
    assert states[:, 0].tolist() == [1, 2, 3] and frames["cam"][:, 0, 0, 0].tolist() == [1, 2, 3]
    frames, states = w.push({"cam": np.full((2, 2, 3), 4, np.uint8)}, np.array([4.0]))
    assert states[:, 0].tolist() == [2, 3, 4]
    w.reset()
    assert w.push({"cam": np.zeros((2, 2, 3), np.uint8)}, np.array([9.0]))[1][:, 0].tolist() == [9, 9, 9]


# ------------------------------------------------------------------------------ diffusion scheduler
def _sched(kind: str, prediction: str, clip: bool = False) -> DiffusionSampler:
    steps = [{"timestep": 3, "prev_timestep": 2, "alpha_prod_t": 0.2, "alpha_prod_t_prev": 0.5},
             {"timestep": 2, "prev_timestep": 0, "alpha_prod_t": 0.5, "alpha_prod_t_prev": 0.9},
             {"timestep": 0, "prev_timestep": -1, "alpha_prod_t": 0.9, "alpha_prod_t_prev": 1.0}]
    return DiffusionSampler(DiffusionSpec(scheduler=kind, num_train_timesteps=4, prediction_type=prediction,
                                          clip_sample=clip, steps=steps), 3, 2)


def test_ddim_with_a_zero_noise_estimate_rescales_the_sample() -> None:
    s = _sched("ddim", "epsilon")
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    seen: list[int] = []

    def denoise(xt: np.ndarray, t: int) -> np.ndarray:
        seen.append(t)
        return np.zeros_like(xt)

    out = s.sample(denoise, noise=x)
    assert seen == [3, 2, 0] and s.n_step_noise == 0
    # x0 = x/√a, ε = 0 → x' = √a'·x0 at every step: the product telescopes to √(1/0.2)·x.
    np.testing.assert_allclose(out, x / np.sqrt(0.2), rtol=1e-6)


def test_ddpm_draws_at_every_positive_timestep_and_ends_on_the_prediction() -> None:
    s = _sched("ddpm", "sample", clip=True)
    target = np.full((3, 2), 0.3, np.float32)
    assert s.n_step_noise == 2
    a = s.sample(lambda x, t: target, rng=np.random.default_rng(1))
    np.testing.assert_allclose(a, target, atol=1e-7)  # the last step (t = 0) lands on x0, without noise
    big = s.sample(lambda x, t: np.full((3, 2), 5.0, np.float32), noise=np.zeros((3, 2)),
                   step_noise=np.zeros((2, 3, 2)))
    np.testing.assert_allclose(big, 1.0)  # clip_sample_range 1
    # The draws change the intermediate steps; the same draws give the same chunk.
    def through(x, t):
        return x * 0.5

    r1 = s.sample(through, rng=np.random.default_rng(5))
    r2 = s.sample(through, rng=np.random.default_rng(5))
    r3 = s.sample(through, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(r1, r2)
    assert not np.allclose(r1, r3)
    with pytest.raises(ValueError, match="draws noise at every step: give rng or step_noise"):
        s.sample(through, noise=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"step_noise has shape \[1, 3, 2\], expected \[2, 3, 2\]"):
        s.sample(through, noise=np.zeros((3, 2)), step_noise=np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match=r"denoiser returned shape \[2, 2\]"):
        s.sample(lambda x, t: np.zeros((2, 2)), rng=np.random.default_rng(0))


# ------------------------------------------------------------------------------ a noise input
def test_a_noise_input_is_filled_from_the_seeded_generator() -> None:
    from vla_runtime.core.policy import ChunkFastStep, PolicyRunner

    path = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "noise_head"
    state = np.arange(8.0)
    with load_model_package(path) as pkg:
        assert pkg.spec.parts == ("fast",) and pkg.spec.fast.input_by_role("noise").name == "noise"
        a = PolicyRunner(pkg, seed=3).infer({}, "", state).actions
        b = PolicyRunner(pkg, seed=3).infer({}, "", state).actions
        c = PolicyRunner(pkg, seed=4).infer({}, "", state).actions
        noise = np.random.default_rng(3).standard_normal((1, 10, 8)).astype(np.float32)
        np.testing.assert_allclose(a, 2 * (0.5 * noise[0] + state), rtol=1e-6)  # the graph, de-normalised (std 2)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
        given = np.full((10, 8), 0.25, np.float32)
        np.testing.assert_allclose(PolicyRunner(pkg).infer({}, "", state, noise=given).actions,
                                   2 * (0.125 + np.tile(state, (10, 1))), rtol=1e-6)
        with pytest.raises(ValueError, match="fast input 'noise' takes noise: give rng or noise"):
            ChunkFastStep.from_package(pkg).run(state)


def test_rtc_guidance_of_an_imported_flow_head_pulls_its_prefix_towards_the_executing_plan() -> None:
    from vla_runtime.core.flow import RtcGuidance
    from vla_runtime.core.policy import PolicyRunner

    ref = np.load(FIX / "pi0" / "reference.npz")
    with load_model_package(FIX / "pi0") as pkg:
        runner = PolicyRunner(pkg)
        frames = {c: ref[f"in0_image_{c}"] for c in ("scene", "wrist")}
        state = ref["in0_state"]
        free = runner.infer(frames, str(ref["in0_prompt"]), state, noise=ref["in0_noise"]).actions
        plan = free + 0.2  # an executing plan 0.2 rad away from what the model would do now
        fast = runner.fast
        y = fast.encode_plan(plan, state)
        assert y.shape == (10, 12) and not y[:, 8:].any()  # the padded dims are pulled to 0, what they train on
        guided = fast.run(state, rng=None, noise=ref["in0_noise"], guidance=RtcGuidance(y, delay=3, exec_horizon=3),
                          latent=runner.slow.run(frames, str(ref["in0_prompt"])).tensors).chunk
    before = np.abs(free[:3] - plan[:3]).mean()
    after = np.abs(guided[:3] - plan[:3]).mean()
    assert after < 0.5 * before, (before, after)  # the frozen prefix moves to the plan
