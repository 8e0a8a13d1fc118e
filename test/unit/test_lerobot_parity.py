"""Parity with LeRobot, without torch: the runtime's own path on the imported fixtures.

Each fixture under ``test/fixtures/lerobot/<type>/`` is a tiny random-weight LeRobot 0.6.1 policy
exported by ``tools/lerobot`` with ``reference.npz``: LeRobot's own outputs (pre-processor →
``predict_action_chunk(noise=…)`` → post-processor, and ``select_action``'s first action) on two
inputs. The runtime runs the same pixels, prompt, state and noise through ``vla-runtime infer``'s
code path (:func:`vla_runtime.commands.infer.run_infer` on a :class:`PolicyRunner`) — never through
``tools/lerobot/runner.py``.

``VLA_LEROBOT_PACKAGES=<dir>`` runs the same tests on freshly imported packages instead (``make
test-import`` does, on the packages it has just exported, each with LeRobot's ``reference.npz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vla_runtime.cli import main
from vla_runtime.commands.infer import run_infer
from vla_runtime.core.policy import PolicyRunner
from vla_runtime.engines import EngineConfig
from vla_runtime.engines.model_package import load_model_package

FIXTURES = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "lerobot"
TYPES = ["act", "diffusion", "diffusion_ddim", "pi0", "pi05", "smolvla"]
TOL = 1e-4


def reference_inputs(ref, k: int, cameras: list[str]) -> dict[str, np.ndarray]:
    """Input set ``k`` of a reference.npz as ``vla-runtime infer`` takes it."""
    obs = {c: ref[f"in{k}_image_{c}"] for c in cameras}
    obs["prompt"] = ref[f"in{k}_prompt"]
    obs["state"] = ref[f"in{k}_state"]
    for key in ("noise", "step_noise"):
        if f"in{k}_{key}" in ref:
            obs[key] = ref[f"in{k}_{key}"]
    return obs


def package_root() -> Path:
    """The committed fixtures, or the packages ``VLA_LEROBOT_PACKAGES`` names."""
    return Path(os.environ.get("VLA_LEROBOT_PACKAGES") or FIXTURES)


@pytest.fixture(scope="module", params=TYPES)
def fixture(request):
    path = package_root() / request.param
    if not (path / "reference.npz").is_file():
        pytest.skip(f"no package with reference.npz at {path}")
    with load_model_package(path, EngineConfig(intra_op_threads=1)) as pkg:
        yield request.param, pkg, np.load(path / "reference.npz")


@pytest.mark.parametrize("k", [0, 1])
def test_runtime_matches_lerobot(fixture, k: int) -> None:
    kind, pkg, ref = fixture
    runner = PolicyRunner(pkg)
    assert sorted(runner.cameras) == sorted(c.name for c in pkg.spec.cameras)
    out = run_infer(runner, reference_inputs(ref, k, runner.cameras))
    want = ref[f"out{k}_actions"]
    assert out["actions"].shape == want.shape
    assert np.max(np.abs(out["actions"] - want)) <= TOL, kind
    # select_action on a freshly reset policy executes the chunk's first action.
    assert np.max(np.abs(out["actions"][0] - ref[f"out{k}_first_action"])) <= TOL
    assert np.max(np.abs(out["actions_normalized"] - ref[f"mid{k}_actions_norm"])) <= TOL
    assert out["resized"].size == 0  # the fixtures' frames are at the package's size
    if f"mid{k}_lang_tokens" in ref:  # the token ids are LeRobot's (SmolVLA pads to "longest": compare its length)
        n = ref[f"mid{k}_lang_tokens"].shape[1]
        np.testing.assert_array_equal(out["lang_tokens"][:, :n], ref[f"mid{k}_lang_tokens"])
        np.testing.assert_array_equal(out["lang_mask"][:, :n], ref[f"mid{k}_lang_mask"])
        assert not out["lang_mask"][:, n:].any()
    for name in [t.name for t in pkg.spec.latent.tensors] if pkg.spec.latent else []:
        got, lr = out[f"latent.{name}"], ref[f"mid{k}_{name}"]
        if got.shape != lr.shape:  # SmolVLA: LeRobot's prompt is shorter; compare the valid prefix positions
            ours, theirs = out["latent.prefix_mask"][0].astype(bool), ref[f"mid{k}_prefix_mask"][0].astype(bool)
            assert ours.sum() == theirs.sum()
            if name == "prefix_mask":
                continue
            got, lr = got[..., ours, :], lr[..., theirs, :]
        assert np.max(np.abs(got.astype(np.float64) - lr)) <= TOL, name


def test_the_prompt_is_lerobots(fixture) -> None:
    kind, pkg, ref = fixture
    if pkg.tokenizer is None:
        assert kind in ("act", "diffusion", "diffusion_ddim")
        return
    for k in range(2):
        state = pkg.proprio.normalize(ref[f"in{k}_state"])
        assert pkg.tokenizer.prompt.text(str(ref[f"in{k}_prompt"]), state) == str(ref[f"mid{k}_prompt"])


def test_the_same_seed_gives_the_same_chunk_and_another_seed_another(fixture) -> None:
    kind, pkg, ref = fixture
    runner = PolicyRunner(pkg)
    obs = reference_inputs(ref, 0, runner.cameras)
    obs.pop("noise", None)
    obs.pop("step_noise", None)
    a = run_infer(runner, {**obs, "seed": np.int64(7)})["actions"]
    b = run_infer(runner, {**obs, "seed": np.int64(7)})["actions"]
    c = run_infer(runner, {**obs, "seed": np.int64(8)})["actions"]
    np.testing.assert_array_equal(a, b)
    if kind == "act":  # no noise anywhere
        np.testing.assert_array_equal(a, c)
    else:
        assert np.max(np.abs(a - c)) > 1e-4


def test_infer_command_writes_lerobots_actions(tmp_path: Path, capsys) -> None:
    ref = np.load(FIXTURES / "pi0" / "reference.npz")
    obs = reference_inputs(ref, 1, ["scene", "wrist"])
    np.savez(tmp_path / "in.npz", **obs)
    rc = main(["infer", str(FIXTURES / "pi0"), "--inputs", str(tmp_path / "in.npz"), "--out",
               str(tmp_path / "out.npz")])
    assert rc == 0, capsys.readouterr().err
    out = np.load(tmp_path / "out.npz")
    assert np.max(np.abs(out["actions"] - ref["out1_actions"])) <= TOL
    assert out["dim_names"].tolist()[-1] == "gripper/gripper"
    assert "actions [10, 8] in robot units" in capsys.readouterr().out


def test_infer_command_refuses_bad_inputs_by_name(tmp_path: Path, capsys) -> None:
    ref = np.load(FIXTURES / "act" / "reference.npz")
    good = {"scene": ref["in0_image_scene"], "state": ref["in0_state"]}
    cases = [
        ({**good, "stat": np.zeros(8)}, "unknown input key(s) ['stat']"),
        ({"state": ref["in0_state"]}, "no frame for camera 'scene'"),
        ({**good, "scene": good["scene"].astype(np.float32)}, "camera 'scene': expected a uint8 H×W×3"),
        ({**good, "state": np.zeros(7, np.float32)}, "state has 7 values, expected 8"),
        ({"scene": good["scene"]}, "no 'state'"),
        ({**good, "prompt": np.array([1, 2])}, "prompt: expected a string"),
    ]
    for i, (obs, msg) in enumerate(cases):
        np.savez(tmp_path / f"in{i}.npz", **obs)
        rc = main(["infer", str(FIXTURES / "act"), "--inputs", str(tmp_path / f"in{i}.npz"), "--out",
                   str(tmp_path / "o.npz")])
        err = capsys.readouterr().err
        assert rc == 1 and msg in err and "Traceback" not in err, (msg, err)
    np.savez(tmp_path / "obj.npz", scene=np.array([object()], dtype=object), state=ref["in0_state"])
    rc = main(["infer", str(FIXTURES / "act"), "--inputs", str(tmp_path / "obj.npz"), "--out", str(tmp_path / "o.npz")])
    assert rc == 1 and "not a readable .npz of plain arrays" in capsys.readouterr().err


def test_a_camera_of_another_size_is_fitted_and_reported(tmp_path: Path) -> None:
    ref = np.load(FIXTURES / "pi0" / "reference.npz")
    with load_model_package(FIXTURES / "pi0") as pkg:
        runner = PolicyRunner(pkg)
        obs = reference_inputs(ref, 0, runner.cameras)
        big = np.repeat(np.repeat(obs["wrist"], 2, axis=0), 2, axis=1)  # 96x128: the same picture, twice the size
        out = run_infer(runner, {**obs, "wrist": big})
    assert out["resized"].tolist() == ["wrist"]
    # Down-scaling an exact 2x upscale bilinearly (half-pixel centres) gives the original frame back.
    assert np.max(np.abs(out["actions"] - ref["out0_actions"])) <= TOL
