"""Check an exported package against LeRobot itself and record LeRobot's outputs as a fixture.

For two fixed inputs (raw camera frames, prompt, raw state, initial noise) this runs

* LeRobot: ``prepare_observation_for_inference`` -> pre-processor -> ``predict_action_chunk(noise=...)``
  -> post-processor, plus ``select_action``'s first action on a freshly reset policy, capturing the
  intermediates (token ids, the preprocessed image tensors, normalised state, the K/V prefix cache,
  the first velocity / denoiser output) with hooks on the policy's own methods;
* the package: :class:`tools.lerobot.runner.PackageRunner` (numpy + onnxruntime + tokenizers);

and compares them. ``reference.npz`` keys (``<k>`` = input index 0 or 1):

* inputs: ``in<k>_image_<camera>`` uint8 [H, W, 3] ([n_obs, H, W, 3] for Diffusion),
  ``in<k>_prompt`` (0-d unicode array), ``in<k>_state`` float32 [S] ([n_obs, S]),
  ``in<k>_noise`` float32 [H_model, A_model]; DDPM only: ``in<k>_step_noise`` float32
  [n, H_model, A_model], the standard-normal draw of each step whose timestep > 0, in step order;
* outputs: ``out<k>_actions`` float32 [chunk, A] (robot units, after the post-processor),
  ``out<k>_first_action`` float32 [A] (``select_action`` + post-processor);
* intermediates: ``mid<k>_state_norm``, ``mid<k>_image_<camera>`` (the tensor the network sees),
  ``mid<k>_lang_tokens``/``mid<k>_lang_mask`` (int64 [1, L]), ``mid<k>_prompt``,
  ``mid<k>_<latent name>`` (every slow-graph output), ``mid<k>_v_t0`` (first velocity, at t = 1) or
  ``mid<k>_model_output0`` (first denoiser output), ``mid<k>_actions_norm``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from tools.lerobot.export import camera_keys
from tools.lerobot.load import Checkpoint, load_checkpoint
from tools.lerobot.runner import PackageRunner

# The second prompt ends with a newline already and is long enough to be truncated at max_len.
PROMPTS = ("pick up the red cube",
           "push_the blue block to the left of the green bowl, then open the gripper and lift it slowly\n")


@dataclasses.dataclass
class Report:
    """Result of a verification: per-quantity max abs differences."""

    ok: bool = True
    max_diff: float = 0.0
    lines: list[str] = dataclasses.field(default_factory=list)

    def check(self, what: str, a: Any, b: Any, tol: float, exact: bool = False) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            self.ok = False
            self.lines.append(f"  {what}: SHAPE MISMATCH lerobot {a.shape} vs package {b.shape}")
            return
        d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        bad = d != 0 if exact else d > tol
        if not exact:
            self.max_diff = max(self.max_diff, d)
        self.ok &= not bad
        self.lines.append(f"  {what}: max|diff| {d:.3g}{'  <-- FAIL' if bad else ''}")


def make_inputs(spec: dict[str, Any], k: int) -> dict[str, Any]:
    """Deterministic input set ``k`` for a package: frames, prompt, raw state, noise."""
    rng = np.random.default_rng(1000 + k)
    kind = spec["source"]["policy_type"]
    n_obs = spec.get("n_obs_steps") if kind == "diffusion" else None
    frames = {}
    for c in spec["cameras"]:
        h, w = c["height"], c["width"]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
        shape = (n_obs, h, w, 3) if n_obs else (h, w, 3)
        noise = rng.integers(-40, 40, size=shape)
        frames[c["name"]] = np.clip(base + noise, 0, 255).astype(np.uint8)
    norm = spec["proprio"]["normalization"]
    dim = len(spec["proprio"]["names"])
    bounds = {"min_max": ("min", "max"), "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90")}.get(norm["kind"])
    if norm["kind"] == "mean_std":
        centre, scale = np.asarray(norm["mean"]), np.asarray(norm["std"])
    elif bounds:
        lo, hi = np.asarray(norm[bounds[0]]), np.asarray(norm[bounds[1]])
        centre, scale = (lo + hi) / 2, (hi - lo) / 4
    else:
        centre, scale = np.zeros(dim), np.full(dim, 0.3)
    sshape = (n_obs, dim) if n_obs else (dim,)
    state = (centre + scale * rng.normal(0, 1, size=sshape)).astype(np.float32)
    if kind == "pi05":  # both ends of the state tokens: below q01 -> -1, above q99 -> 255
        state[..., 0] = np.float32(norm["q01"][0]) - 0.5
        state[..., -1] = np.float32(norm["q99"][-1]) + 0.5
    fast = spec["fast"]
    noise = step_noise = None
    chunk = [spec["model_horizon"], spec["action"].get("padding", {}).get("model_dim", spec["action_dim"])]
    if fast["kind"] != "one_shot":
        noise = rng.standard_normal(chunk).astype(np.float32)
    if fast["kind"] == "diffusion" and fast["diffusion"]["scheduler"] == "ddpm":
        n = sum(1 for st in fast["diffusion"]["steps"] if st["timestep"] > 0)
        step_noise = rng.standard_normal((n, *chunk)).astype(np.float32)
    return {"frames": frames, "prompt": PROMPTS[k] if spec.get("tokenizer") else "", "state": state, "noise": noise,
            "step_noise": step_noise}


def lerobot_reference(ck: Checkpoint, spec: dict[str, Any], inp: dict[str, Any]) -> dict[str, Any]:
    """LeRobot's own outputs (and intermediates) for one input set."""
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference

    policy, kind = ck.policy, ck.policy_type
    cams = {c["name"]: c["feature"] for c in spec["cameras"]}
    noise = None if inp["noise"] is None else torch.from_numpy(inp["noise"])[None]
    mid: dict[str, Any] = {}

    def observation(i: int | None = None) -> dict[str, Any]:
        obs = {}
        for name, key in cams.items():
            f = inp["frames"][name]
            obs[key] = f[i] if i is not None else f
        st = inp["state"]
        obs["observation.state"] = st[i] if i is not None else st
        return prepare_observation_for_inference({k: np.array(v) for k, v in obs.items()}, torch.device("cpu"),
                                                 inp["prompt"], "")

    hooks = _install_hooks(policy, kind, mid)
    if inp.get("step_noise") is not None:
        hooks.append(_replay_ddpm_noise(inp["step_noise"]))
    try:
        with torch.no_grad():
            if kind == "diffusion":
                n_obs = policy.config.n_obs_steps
                batches = [ck.pre(observation(i)) for i in range(n_obs)]
                batch = {k: torch.stack([b[k] for b in batches], dim=1) for k in list(cams.values())
                         + ["observation.state"]}
                mid["state_norm"] = batch["observation.state"][0].numpy()
                mid["images"] = {n: batch[k][0].numpy() for n, k in cams.items()}
                policy.reset()
                chunk = policy.predict_action_chunk(batch, noise=noise)
            else:
                batch = ck.pre(observation())
                mid["state_norm"] = batch["observation.state"][0].numpy()
                if kind == "act":
                    mid["images"] = {n: batch[k][0].numpy() for n, k in cams.items()}
                if "observation.language.tokens" in batch:
                    mid["lang_tokens"] = batch["observation.language.tokens"].numpy().astype(np.int64)
                    mid["lang_mask"] = batch["observation.language.attention_mask"].numpy().astype(np.int64)
                policy.reset()
                chunk = policy.predict_action_chunk(batch, noise=noise) if noise is not None \
                    else policy.predict_action_chunk(batch)
            mid["actions_norm"] = chunk[0].numpy()
            actions = ck.post(chunk)[0].numpy()
            first = _first_action(ck, kind, observation, noise)
    finally:
        for h in hooks:
            h()
    return {"mid": mid, "actions": actions, "first_action": first}


def _replay_ddpm_noise(step_noise: np.ndarray) -> Any:
    """Make diffusers' DDPM step draw ``step_noise[0], step_noise[1], ...`` (restarting after the last)."""
    import diffusers.schedulers.scheduling_ddpm as ddpm
    import torch

    orig = ddpm.randn_tensor
    state = {"i": 0}

    def replay(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **kw: Any) -> Any:
        a = torch.from_numpy(step_noise[state["i"] % len(step_noise)]).reshape(shape)
        state["i"] += 1
        return a.to(dtype=dtype or torch.float32)

    ddpm.randn_tensor = replay

    def undo() -> None:
        ddpm.randn_tensor = orig

    return undo


def _first_action(ck: Checkpoint, kind: str, observation: Any, noise: Any) -> np.ndarray:
    import torch

    from lerobot.policies.utils import populate_queues

    policy = ck.policy
    policy.reset()
    if kind == "diffusion":
        n_obs = policy.config.n_obs_steps
        for i in range(n_obs - 1):  # the earlier observations of the window, as select_action would have queued them
            b = dict(ck.pre(observation(i)))
            b.pop("action", None)
            b["observation.images"] = torch.stack([b[k] for k in policy.config.image_features], dim=-4)
            policy._queues = populate_queues(policy._queues, b)
        a = policy.select_action(ck.pre(observation(n_obs - 1)), noise=noise)
    else:
        model = getattr(policy, "model", None)
        if noise is not None:
            model.sample_noise = lambda shape, device: noise.clone()
        try:
            a = policy.select_action(ck.pre(observation()))
        finally:
            if noise is not None:
                del model.sample_noise
    return ck.post(a)[0].numpy()


def _install_hooks(policy: Any, kind: str, mid: dict[str, Any]) -> list[Any]:
    """Record intermediates from the policy's own methods; returns undo callables."""
    undo = []

    def wrap(obj: Any, name: str, record: Any) -> None:
        orig = getattr(obj, name)

        def wrapped(*a: Any, **kw: Any) -> Any:
            out = orig(*a, **kw)
            record(a, kw, out)
            return out

        setattr(obj, name, wrapped)
        undo.append(lambda: delattr(obj, name))

    if kind in ("pi0", "pi05", "smolvla"):
        m = policy.model

        def rec_images(a: Any, kw: Any, out: Any) -> None:
            keys = camera_keys(policy.config)
            for key, img in zip(keys, out[0]):
                mid.setdefault("images", {})[key.rsplit(".", 1)[-1]] = img[0].numpy()

        wrap(policy, "prepare_images" if kind == "smolvla" else "_preprocess_images", rec_images)

        orig_den = m.denoise_step

        def den(*a: Any, **kw: Any) -> Any:
            if "v_t0" not in mid:  # snapshot the cache before the step (SmolVLA appends to it in place)
                snap = {}
                for i, layer in enumerate(kw["past_key_values"].layers):
                    snap[i] = (layer.keys.clone(), layer.values.clone())
            out = orig_den(*a, **kw)
            if "v_t0" not in mid:
                mid["v_t0"] = out.numpy()
                for i, (k_, v_) in snap.items():
                    mid[f"past_key_{i}"] = k_.numpy()
                    mid[f"past_value_{i}"] = v_.numpy()
                mid["prefix_mask"] = kw["prefix_pad_masks"].numpy().astype(np.int64)
            return out

        m.denoise_step = den
        undo.append(lambda: delattr(m, "denoise_step"))
    elif kind == "act":
        pass
    else:
        d = policy.diffusion

        def rec_gc(a: Any, kw: Any, out: Any) -> None:
            mid["global_cond"] = out.numpy()

        wrap(d, "_prepare_global_conditioning", rec_gc)
        orig_unet = d.unet.forward

        def unet_fwd(*a: Any, **kw: Any) -> Any:
            out = orig_unet(*a, **kw)
            mid.setdefault("model_output0", out.numpy())
            return out

        d.unet.forward = unet_fwd
        undo.append(lambda: delattr(d.unet, "forward"))
    return undo


def verify_package(checkpoint: Path, package: Path, *, tokenizer: Path | None = None,
                   reference_out: Path | None = None, tol: float = 1e-4) -> Report:
    """Compare the package with LeRobot on the two fixed inputs; optionally write ``reference.npz``."""
    ck = load_checkpoint(checkpoint, tokenizer)
    runner = PackageRunner(package)
    spec = runner.spec
    rep = Report()
    npz: dict[str, Any] = {}
    for k in range(2):
        inp = make_inputs(spec, k)
        ref = lerobot_reference(ck, spec, inp)
        got = runner.predict_chunk(inp["frames"], inp["prompt"], inp["state"], inp["noise"], inp["step_noise"])
        rep.lines.append(f"input {k} ({spec['source']['policy_type']}, prompt {inp['prompt']!r}):")
        m = ref["mid"]
        rep.check("normalised state", m["state_norm"], got["state_norm"], 1e-6)
        if "lang_tokens" in m:
            # A checkpoint whose tokenizer pads to the longest prompt ("longest", SmolVLA's default) gives
            # LeRobot fewer positions than the package's fixed max_len; the padded tail must be masked.
            n = m["lang_tokens"].shape[1]
            rep.check("token ids", m["lang_tokens"], got["lang_tokens"][:, :n], 0, exact=True)
            rep.check("token mask", m["lang_mask"], got["lang_mask"][:, :n], 0, exact=True)
            rep.check("token mask (padding beyond LeRobot's length)", np.zeros_like(got["lang_mask"][:, n:]),
                      got["lang_mask"][:, n:], 0, exact=True)
        valid_ref = m.get("prefix_mask")
        valid_got = got.get("prefix_mask")
        for name in [o["name"] for o in spec.get("latent", {}).get("tensors", [])]:
            if name not in m:
                continue
            a, b = m[name], got[name]
            if name.startswith("past_") and a.shape != b.shape and valid_ref is not None:
                a, b = a[:, :, valid_ref[0] == 1], b[:, :, valid_got[0] == 1]
                name += " (valid prefix positions)"
            elif name == "prefix_mask" and a.shape != b.shape:
                a, b = np.sort(a[0])[::-1], np.sort(b[0])[::-1][: a.shape[1]]
                name += " (count of valid positions)"
            rep.check(f"latent {name}", a, b, tol)
        for name in ("v_t0", "model_output0"):
            if name in m:
                rep.check(name, m[name], got[name], tol)
        rep.check("actions (normalised)", m["actions_norm"], got["actions_norm"], tol)
        rep.check("actions (robot units)", ref["actions"], got["actions"], tol)
        rep.check("select_action first action", ref["first_action"], got["actions"][0], tol)
        for cam, a in inp["frames"].items():
            npz[f"in{k}_image_{cam}"] = a
        npz[f"in{k}_prompt"] = np.array(inp["prompt"])
        npz[f"in{k}_state"] = inp["state"]
        if inp["noise"] is not None:
            npz[f"in{k}_noise"] = inp["noise"]
        if inp["step_noise"] is not None:
            npz[f"in{k}_step_noise"] = inp["step_noise"]
        npz[f"out{k}_actions"] = ref["actions"].astype(np.float32)
        npz[f"out{k}_first_action"] = ref["first_action"].astype(np.float32)
        for name, v in m.items():
            if name == "images":
                for cam, img in v.items():
                    npz[f"mid{k}_image_{cam}"] = img.astype(np.float32)
            else:
                npz[f"mid{k}_{name}"] = v
        if "prompt" in got:
            npz[f"mid{k}_prompt"] = np.array(got["prompt"])
    if reference_out is not None:
        np.savez_compressed(reference_out, **npz)
    return rep
