"""Export a LeRobot checkpoint folder to a model package (ONNX graphs + ``model.yaml``, schema 2).

``export_package(checkpoint_dir, out_dir)`` loads the policy and its pre/post-processors offline,
cuts the policy into graphs (:mod:`tools.lerobot.graphs`), exports them with
``torch.onnx.export`` (dynamo; the TorchScript exporter where dynamo fails) and writes, as data,
everything the runtime must do around the graphs: tokenizer and prompt format, cameras, state and
action normalisation, padding, the sampler (flow-matching Euler or the Diffusion scheduler with its
constants), chunk size and execution horizon. ``docs/lerobot-export.md`` specifies the contract; the
schema is the runtime's own (``vla_runtime/core/model_spec.py``, ``schema_version: 2``), which
:func:`export_package` writes and the runtime validates.

Runs only in the LeRobot environment (torch, lerobot, onnx).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tools.lerobot import graphs
from tools.lerobot.load import Checkpoint, load_checkpoint, preprocessor_tokenizer_name

SCHEMA_VERSION = 2
OPSET = 18
EXTERNAL_DATA_BYTES = 1_500_000_000
PANDA_NAMES = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper/gripper"]
log = logging.getLogger("lerobot_export")


def _floats(a: Any) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


# --------------------------------------------------------------------------------------------------
# Reading the checkpoint's processors


def normalization_of(ck: Checkpoint, key: str, which: str = "pre") -> dict[str, Any]:
    """The (un)normaliser's treatment of feature ``key`` as a ``normalization`` block.

    Kinds and formulas (``x`` raw, ``n`` normalised; ``eps`` from the step):
    ``identity``; ``mean_std``: ``n = (x - mean) / (std + eps)``, ``x = n * std + mean``;
    ``min_max``: ``d = max - min`` (``eps`` where ``d == 0``), ``n = 2 (x - min) / d - 1``,
    ``x = (n + 1) / 2 * d + min``; ``quantiles``: same with ``q01``/``q99``; ``quantile10``: same
    with ``q10``/``q90``.
    """
    from lerobot.configs import NormalizationMode

    step = ck.step("normalizer_processor" if which == "pre" else "unnormalizer_processor", which)
    if step is None or key not in step.features:
        return {"kind": "identity"}
    mode = step.norm_map.get(step.features[key].type, NormalizationMode.IDENTITY)
    stats = step._tensor_stats.get(key)
    if mode == NormalizationMode.IDENTITY or stats is None:
        return {"kind": "identity"}
    fields = {
        NormalizationMode.MEAN_STD: ("mean_std", ("mean", "std")),
        NormalizationMode.MIN_MAX: ("min_max", ("min", "max")),
        NormalizationMode.QUANTILES: ("quantiles", ("q01", "q99")),
        NormalizationMode.QUANTILE10: ("quantile10", ("q10", "q90")),
    }
    if mode not in fields:
        raise ValueError(f"feature {key!r}: normalisation mode {mode} is not supported")
    kind, names = fields[mode]
    out: dict[str, Any] = {"kind": kind}
    for n in names:
        if n not in stats:
            raise ValueError(f"feature {key!r}: {kind} normalisation needs statistic {n!r}, the checkpoint has "
                             f"{sorted(stats)}")
        out[n] = _floats(stats[n].detach().cpu().numpy())
    out["eps"] = float(step.eps)
    return out


def _image_affine(ck: Checkpoint, keys: list[str]) -> dict[str, tuple[Any, Any]]:
    """Visual normalisation of each camera as ``(x - a) / b`` (for the in-graph preprocessing)."""
    import torch

    out: dict[str, tuple[Any, Any]] = {}
    for k in keys:
        n = normalization_of(ck, k)
        if n["kind"] == "identity":
            continue
        if n["kind"] == "mean_std":
            a, b = np.array(n["mean"]), np.array(n["std"]) + n["eps"]
        else:
            lo, hi = {"min_max": ("min", "max"), "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90")}[n["kind"]]
            lo_v, d = np.array(n[lo]), np.array(n[hi]) - np.array(n[lo])
            d = np.where(d == 0, n["eps"], d)
            a, b = lo_v + d / 2, d / 2
        out[k] = (torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    return out


def camera_keys(cfg: Any) -> list[str]:
    """The camera features the runtime feeds, in the policy's order.

    ``empty_camera_<i>`` features (π0/π0.5/SmolVLA ``empty_cameras``) are not fed: at inference LeRobot
    finds them missing from the batch and substitutes a constant image with mask 0 inside the policy,
    which the exported slow graph does too.
    """
    return [k for k in cfg.image_features if ".empty_camera_" not in k]


def _camera_blocks(ck: Checkpoint, keys: list[str]) -> list[dict[str, Any]]:
    cfg = ck.policy.config
    cams = []
    for k in keys:
        c, h, w = cfg.image_features[k].shape
        steps: list[dict[str, Any]] = [
            {"op": "to_float", "scale": 1.0 / 255, "note": "uint8 RGB HWC -> float32 CHW in [0, 1]"}]
        norm = normalization_of(ck, k)
        if norm["kind"] != "identity":
            steps.append({"op": "normalize", **norm})
        t = ck.policy_type
        if t in ("pi0", "pi05"):
            rh, rw = cfg.image_resolution
            steps += [{"op": "resize_with_pad", "height": rh, "width": rw, "interpolation": "bilinear",
                       "align_corners": False, "antialias": False, "pad": "center", "pad_value": 0.0,
                       "clamp": [0.0, 1.0], "size_rule": "ratio = max(W/w, H/h); (int(H/ratio), int(W/ratio))"},
                      {"op": "affine", "scale": 2.0, "offset": -1.0, "note": "[0, 1] -> [-1, 1] (SigLIP)"}]
        elif t == "smolvla":
            if cfg.resize_imgs_with_padding is not None:
                rw, rh = cfg.resize_imgs_with_padding
                steps.append({"op": "resize_with_pad", "height": rh, "width": rw, "interpolation": "bilinear",
                              "align_corners": False, "antialias": False, "pad": "left_top", "pad_value": 0.0,
                              "clamp": None, "size_rule": "ratio = max(W/w, H/h); (int(H/ratio), int(W/ratio))"})
            steps.append({"op": "affine", "scale": 2.0, "offset": -1.0, "note": "[0, 1] -> [-1, 1] (SigLIP)"})
        elif t == "diffusion":
            if cfg.resize_shape is not None:
                steps.append({"op": "resize", "height": cfg.resize_shape[0], "width": cfg.resize_shape[1],
                              "interpolation": "bilinear", "antialias": True,
                              "note": "torchvision.transforms.Resize"})
            crop = getattr(ck.policy.diffusion.rgb_encoder if not cfg.use_separate_rgb_encoder_per_camera
                           else ck.policy.diffusion.rgb_encoder[0], "do_crop", False)
            if crop:
                steps.append({"op": "center_crop", "height": cfg.crop_shape[0], "width": cfg.crop_shape[1]})
        cams.append({"name": k.rsplit(".", 1)[-1], "feature": k, "height": int(h), "width": int(w), "channels": int(c),
                     "encoding": "rgb8", "preprocess": {"in_graph": True, "steps": steps}})
    return cams


# --------------------------------------------------------------------------------------------------
# ONNX export


def _export(module: Any, args: tuple, path: Path, in_names: list[str], out_names: list[str]) -> str:
    """Export ``module(*args)`` to ``path``; dynamo first, the TorchScript exporter if dynamo fails."""
    import torch

    module.eval()
    # Protobuf caps one file at 2 GB: a real-size VLA (π0's PaliGemma is ~3 B parameters) keeps its weights
    # in a side file <graph>.onnx.data, which onnxruntime loads from the same folder.
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=in_names, output_names=out_names,
                              external_data=big, opset_version=OPSET, verbose=False)
        how = "dynamo"
    except Exception as e:  # noqa: BLE001 - torch.export raises many unrelated types; we retry another way
        log.warning("dynamo export of %s failed (%s: %s); using the TorchScript exporter", path.name,
                    type(e).__name__, str(e).splitlines()[0][:200])
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=in_names, output_names=out_names,
                              opset_version=OPSET)
        how = "torchscript"
    _strip_node_metadata(path)
    return how


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node metadata (stack traces with this machine's paths, FX names).

    Without it the graph is smaller and the same checkpoint exports to the same bytes anywhere.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def clear(nodes: Any) -> None:
        for n in nodes:
            del n.metadata_props[:]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    clear(a.g.node)
                for g in a.graphs:
                    clear(g.node)

    clear(model.graph.node)
    for f in model.functions:
        clear(f.node)
    del model.metadata_props[:]
    onnx.save(model, str(path))


def _tensor_specs(path: Path, roles: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs/outputs of an exported graph as YAML tensor specs (names, shapes, dtypes from ONNX)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dt = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
          "tensor(int32)": "int32", "tensor(double)": "float64"}

    def one(a: Any) -> dict[str, Any]:
        d = {"name": a.name, "shape": [int(x) if isinstance(x, int) else None for x in a.shape], "dtype": dt[a.type]}
        d.update(roles.get(a.name, {"role": "other"}))
        return d

    return [one(a) for a in sess.get_inputs()], [one(a) for a in sess.get_outputs()]


def _camera_inputs(cams: list[dict[str, Any]], n_obs: int | None = None) -> tuple[list[str], dict[str, Any]]:
    names, roles = [], {}
    for c in cams:
        n = f"image_{c['name']}"
        names.append(n)
        roles[n] = {"role": "image", "camera": c["name"], "layout": "NTHWC" if n_obs else "NHWC"}
    return names, roles


def _example_frames(cams: list[dict[str, Any]], n_obs: int | None = None) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    lead = (1, n_obs) if n_obs else (1,)
    return [torch.randint(0, 256, (*lead, c["height"], c["width"], 3), generator=g, dtype=torch.uint8) for c in cams]


def _export_vla(ck: Checkpoint, out: Path, cams: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    import torch

    t = ck.policy_type
    cfg = ck.policy.config
    keys = [c["feature"] for c in cams]
    image_input = graphs.ImageInput(keys, _image_affine(ck, keys))
    slow = graphs.VlaPrefix(ck.policy, t, image_input)
    L = int(cfg.tokenizer_max_length)
    in_names, roles = _camera_inputs(cams)
    frames = _example_frames(cams)
    tokens = torch.ones(1, L, dtype=torch.int64)
    mask = torch.ones(1, L, dtype=torch.int64)
    mask[0, L // 2:] = 0
    args: list[Any] = [*frames, tokens, mask]
    in_names += ["lang_tokens", "lang_mask"]
    roles["lang_tokens"] = {"role": "instruction_ids"}
    roles["lang_mask"] = {"role": "instruction_mask"}
    S = int(cfg.input_features["observation.state"].shape[0])
    state = torch.zeros(1, S)
    if t == "smolvla":
        args.append(state)
        in_names.append("state")
        roles["state"] = {"role": "proprio"}
    with torch.no_grad():
        outs = slow(*args)
    n_layers = (len(outs) - 1) // 2
    lat_names = [f"past_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")] + ["prefix_mask"]
    for n in lat_names:
        roles[n] = {"role": "latent"}
    t0 = time.monotonic()
    how = _export(slow, tuple(args), out / "slow.onnx", in_names, lat_names)
    spec["_export_log"].append({"graph": "slow.onnx", "exporter": how, "seconds": round(time.monotonic() - t0, 1)})
    s_in, s_out = _tensor_specs(out / "slow.onnx", roles)

    H, A_max = int(cfg.chunk_size), int(cfg.max_action_dim)
    fast = graphs.VlaVelocity(ck.policy, t, n_layers)
    f_args: list[Any] = [torch.zeros(1, H, A_max), torch.ones(1)]
    f_names = ["x_t", "t"]
    f_roles = {"x_t": {"role": "noisy_actions"}, "t": {"role": "flow_time"}, "v_t": {"role": "velocity"}}
    if t == "pi0":
        f_args.append(state)
        f_names.append("state")
        f_roles["state"] = {"role": "proprio"}
    f_args += list(outs)
    f_names += lat_names
    f_roles.update({n: {"role": "latent"} for n in lat_names})
    t0 = time.monotonic()
    how = _export(fast, tuple(f_args), out / "fast.onnx", f_names, ["v_t"])
    spec["_export_log"].append({"graph": "fast.onnx", "exporter": how, "seconds": round(time.monotonic() - t0, 1)})
    f_in, f_out = _tensor_specs(out / "fast.onnx", f_roles)
    spec["latent"] = {"kind": "kv_prefix_cache", "layers": n_layers,
                      "layout": "past_key_i / past_value_i: [batch, kv_heads, prefix_len, head_dim], post-RoPE; "
                                "prefix_mask: [batch, prefix_len] int64, 1 = valid prefix token",
                      "tensors": [{k: o[k] for k in ("name", "shape", "dtype")} for o in s_out]}
    spec["slow"] = {"onnx": "slow.onnx", "runs": "once per observation", "inputs": s_in, "outputs": s_out}
    # One velocity evaluation; the runtime runs the Euler loop: t = 1 is pure noise (LeRobot's convention),
    # x <- x + dt * v with dt = -1/steps at t_k = 1 - k/steps.
    steps = int(cfg.num_steps if t == "smolvla" else cfg.num_inference_steps)
    spec["fast"] = {"onnx": "fast.onnx", "runs": "once per flow step", "kind": "flow_matching",
                    "flow": {"steps": steps, "time_convention": "noise_at_1", "schedule": "uniform_euler"},
                    "inputs": f_in, "outputs": f_out}


def _export_act(ck: Checkpoint, out: Path, cams: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    import torch

    cfg = ck.policy.config
    keys = [c["feature"] for c in cams]
    module = graphs.ActPolicyGraph(ck.policy, graphs.ImageInput(keys, _image_affine(ck, keys)))
    names, roles = _camera_inputs(cams)
    S = int(cfg.input_features["observation.state"].shape[0])
    args = (*_example_frames(cams), torch.zeros(1, S))
    names.append("state")
    roles["state"] = {"role": "proprio"}
    roles["actions"] = {"role": "actions"}
    t0 = time.monotonic()
    how = _export(module, args, out / "policy.onnx", names, ["actions"])
    spec["_export_log"].append({"graph": "policy.onnx", "exporter": how, "seconds": round(time.monotonic() - t0, 1)})
    i, o = _tensor_specs(out / "policy.onnx", roles)
    spec["fast"] = {"onnx": "policy.onnx", "runs": "once per chunk (the whole policy: no slow part)",
                    "kind": "one_shot", "inputs": i, "outputs": o}
    if cfg.temporal_ensemble_coeff is not None:
        spec["temporal_ensemble"] = {"coeff": float(cfg.temporal_ensemble_coeff)}


def _export_diffusion(ck: Checkpoint, out: Path, cams: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    import torch

    cfg = ck.policy.config
    dm = ck.policy.diffusion
    keys = [c["feature"] for c in cams]
    n_obs = int(cfg.n_obs_steps)
    enc = graphs.DiffusionEncoder(ck.policy, graphs.ImageInput(keys, _image_affine(ck, keys)))
    names, roles = _camera_inputs(cams, n_obs)
    S = int(cfg.input_features["observation.state"].shape[0])
    args = (*_example_frames(cams, n_obs), torch.zeros(1, n_obs, S))
    names.append("state")
    roles["state"] = {"role": "proprio"}
    roles["global_cond"] = {"role": "latent"}
    t0 = time.monotonic()
    how = _export(enc, args, out / "slow.onnx", names, ["global_cond"])
    spec["_export_log"].append({"graph": "slow.onnx", "exporter": how, "seconds": round(time.monotonic() - t0, 1)})
    s_in, s_out = _tensor_specs(out / "slow.onnx", roles)
    with torch.no_grad():
        gc = enc(*args)
    H, A = int(cfg.horizon), int(cfg.action_feature.shape[0])
    den = graphs.DiffusionDenoiser(ck.policy)
    d_args = (torch.zeros(1, H, A), torch.tensor([10], dtype=torch.int64), gc)
    d_roles = {"x_t": {"role": "noisy_actions"}, "timestep": {"role": "diffusion_timestep"},
               "global_cond": {"role": "latent"}, "model_output": {"role": "denoiser_output"}}
    t0 = time.monotonic()
    how = _export(den, d_args, out / "fast.onnx", ["x_t", "timestep", "global_cond"], ["model_output"])
    spec["_export_log"].append({"graph": "fast.onnx", "exporter": how, "seconds": round(time.monotonic() - t0, 1)})
    f_in, f_out = _tensor_specs(out / "fast.onnx", d_roles)
    # The window of n_obs_steps observations (oldest first; the first call repeats its observation) and the
    # slice of the sampled chunk LeRobot executes: steps n_obs_steps - 1 .. n_obs_steps - 2 + n_action_steps.
    spec["n_obs_steps"] = n_obs
    spec["chunk_offset"] = n_obs - 1
    spec["latent"] = {"kind": "global_conditioning",
                      "tensors": [{k: o[k] for k in ("name", "shape", "dtype")} for o in s_out]}
    spec["slow"] = {"onnx": "slow.onnx", "runs": "once per observation window", "inputs": s_in, "outputs": s_out}
    spec["fast"] = {"onnx": "fast.onnx", "runs": "once per denoising step", "kind": "diffusion",
                    "diffusion": _scheduler_block(dm), "inputs": f_in, "outputs": f_out}


def _scheduler_block(dm: Any) -> dict[str, Any]:
    """The policy's diffusers scheduler as a ``fast.diffusion`` block: its settings and, per inference step, the
    constants the runtime's DDPM/DDIM step uses (``vla_runtime/core/diffusion.py``)."""
    sch = dm.noise_scheduler
    sch.set_timesteps(dm.num_inference_steps)
    kind = type(sch).__name__
    ac = sch.alphas_cumprod.detach().cpu().numpy().astype(np.float32)
    ts = [int(x) for x in sch.timesteps]
    steps = []
    for i, t in enumerate(ts):
        if kind == "DDIMScheduler":
            prev = t - sch.config.num_train_timesteps // sch.num_inference_steps
            a_prev = float(ac[prev]) if prev >= 0 else float(sch.final_alpha_cumprod)
        else:
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_prev = float(ac[prev]) if prev >= 0 else 1.0
        steps.append({"timestep": t, "prev_timestep": int(prev), "alpha_prod_t": float(ac[t]),
                      "alpha_prod_t_prev": a_prev})
    if bool(sch.config.thresholding):
        raise ValueError("scheduler thresholding is not supported by the exporter")
    block: dict[str, Any] = {
        "scheduler": "ddim" if kind == "DDIMScheduler" else "ddpm",
        "num_train_timesteps": int(sch.config.num_train_timesteps),
        "prediction_type": sch.config.prediction_type,
        "clip_sample": bool(sch.config.clip_sample),
        "clip_sample_range": float(sch.config.clip_sample_range),
    }
    if kind == "DDIMScheduler":
        block["eta"] = 0.0
    else:
        if sch.config.variance_type != "fixed_small":
            raise ValueError(f"DDPM variance_type {sch.config.variance_type!r} is not supported (only fixed_small)")
        block["variance_type"] = "fixed_small"
    block.update({
        "beta_schedule": sch.config.beta_schedule,
        "beta_start": float(sch.config.beta_start),
        "beta_end": float(sch.config.beta_end),
        "steps": steps,
        "alphas_cumprod": [float(x) for x in ac],
    })
    return block


# --------------------------------------------------------------------------------------------------
# Tokenizer and prompt


def _tokenizer_block(ck: Checkpoint, out: Path) -> dict[str, Any] | None:
    step = ck.step("tokenizer_processor")
    if step is None:
        return None
    assert ck.tokenizer_dir is not None
    shutil.copyfile(ck.tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    tok = step.input_tokenizer
    t = ck.policy_type
    # pi05: "Task: {clean task}, State: {256 state bins};\nAction: "; pi0 and SmolVLA: the task ending in "\n".
    prompt = {"kind": "pi05_state_prompt", "state_bins": 256} if t == "pi05" else {"kind": "newline_terminated"}
    # The slow graph has a fixed token length (max_len): a checkpoint with padding "longest" (SmolVLA's default)
    # gives the same actions padded further, as the padded positions are masked everywhere.
    return {
        "kind": "hf_tokenizers",
        "file": "tokenizer.json",
        "source": _portable_name(preprocessor_tokenizer_name(ck.path)),
        "max_len": int(step.max_length),
        "padding_side": step.padding_side,
        "truncation": bool(step.truncation),
        "truncation_side": getattr(tok, "truncation_side", "right"),
        "add_special_tokens": True,
        "pad_id": int(tok.pad_token_id),
        "prompt": prompt,
    }


def _portable_name(name: str | None) -> str | None:
    """A Hub id as is; a local folder by its last component (no machine paths in a package)."""
    if name and Path(name).is_absolute():
        return f"local:{Path(name).name}"
    return name


# --------------------------------------------------------------------------------------------------
# The package


def _action_groups(names: list[str], relative: list[bool] | None = None) -> list[dict[str, Any]]:
    """Action groups for the dim names: joints (absolute, or ``joint_delta`` where LeRobot's relative-action step
    adds the state), then one gripper group per ``<group>/gripper`` dim."""
    rel = relative or [False] * len(names)
    groups: list[dict[str, Any]] = []
    for i, n in enumerate(names):
        if n.endswith("/gripper"):
            if rel[i]:
                raise ValueError(f"action dim {n!r} is relative to the state: only joint dims can be (joint_delta)")
            groups.append({"name": n.split("/", 1)[0], "kind": "gripper"})
            continue
        if "/" in n:
            raise ValueError(f"action dim {n!r}: the exporter names joints or '<group>/gripper' dims")
        kind = "joint_delta" if rel[i] else "joint_position"
        last = groups[-1] if groups else None
        if last is not None and last["kind"] == kind:
            last["joints"].append(n)
        else:
            groups.append({"name": "arm" if kind == "joint_position" else "arm_delta", "kind": kind, "joints": [n]})
    arm_names = [g["name"] for g in groups]
    for k, g in enumerate(groups):  # several runs of one kind: number them
        if arm_names.count(g["name"]) > 1:
            g["name"] = f"{g['name']}{sum(1 for h in groups[:k] if h['name'].startswith(g['name']))}"
    return groups


def export_package(checkpoint: Path, out: Path, *, tokenizer: Path | None = None, name: str | None = None,
                   robot: str = "panda", control_rate_hz: float = 30.0,
                   state_names: list[str] | None = None, action_names: list[str] | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` into the package folder ``out`` and return the ``model.yaml`` mapping.

    Args:
        checkpoint: A LeRobot ``save_pretrained`` folder with its processor configs.
        out: Package folder to (re)create.
        tokenizer: Folder with the prompt tokenizer's ``tokenizer.json`` when the preprocessor names a
            Hub tokenizer that is not cached locally.
        name: Package name (default: the folder name of ``out``).
        robot: Robot the action layout is for.
        control_rate_hz: Rate the chunk's steps are executed at (LeRobot's dataset fps).
        state_names: Names of the state dims (default: the Panda's 7 joints + gripper when 8-D).
        action_names: Names of the action dims (same default).
    """
    t_start = time.monotonic()
    ck = load_checkpoint(checkpoint, tokenizer)
    cfg = ck.policy.config
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t = ck.policy_type
    unsupported = [k for k in cfg.input_features if not (k == "observation.state" or k in cfg.image_features)]
    if unsupported or "observation.state" not in cfg.input_features:
        raise ValueError(f"{checkpoint}: the exporter supports camera images + observation.state inputs; this policy "
                         f"has inputs {sorted(cfg.input_features)}")
    if t == "smolvla" and cfg.adapt_to_pi_aloha:
        raise ValueError("SmolVLA with adapt_to_pi_aloha=True is not supported by the exporter")
    keys = camera_keys(cfg)
    cams = _camera_blocks(ck, keys)
    S = int(cfg.input_features["observation.state"].shape[0])
    A = int(cfg.output_features["action"].shape[0])
    state_names = state_names or (PANDA_NAMES if S == 8 else [f"state_{i}" for i in range(S)])
    action_names = action_names or (PANDA_NAMES if A == 8 else [f"action_{i}" for i in range(A)])
    if len(state_names) != S or len(action_names) != A:
        raise ValueError(f"{len(state_names)} state names / {len(action_names)} action names given for a policy with "
                         f"state dim {S} and action dim {A}")
    horizon = int(cfg.horizon if t == "diffusion" else cfg.chunk_size)
    # The package's key order is the order model.yaml reads best in (dicts keep insertion order).
    spec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name or out.name,
        "trained": not (Path(checkpoint) / "tiny_arch.json").is_file(),
        "purpose": f"LeRobot {t} policy imported from {Path(checkpoint).name}",
        "source": {"framework": "lerobot", "version": _lerobot_version(), "policy_type": t,
                   "checkpoint": Path(checkpoint).name},
        "robot": robot,
        "control_rate_hz": float(control_rate_hz),
        "chunk_horizon": int(cfg.n_action_steps) if t == "diffusion" else horizon,
        "model_horizon": horizon,
        "n_action_steps": int(cfg.n_action_steps),
        "action_dim": A,
        "cameras": cams,
        "_export_log": [],
    }
    tok = _tokenizer_block(ck, out)
    if tok is not None:
        spec["tokenizer"] = tok
    if t in ("pi0", "pi05", "smolvla"):
        _export_vla(ck, out, cams, spec)
    elif t == "act":
        _export_act(ck, out, cams, spec)
    else:
        _export_diffusion(ck, out, cams, spec)
    spec["proprio"] = {"names": state_names, "normalization": normalization_of(ck, "observation.state")}
    if t in ("pi0", "smolvla"):  # pi05 puts the state into the prompt, not into a graph
        spec["proprio"]["padding"] = {"to": int(cfg.max_state_dim), "value": 0.0, "where": "in_graph"}
    rel = ck.step("relative_actions_processor")
    mask = [bool(m) for m in rel._build_mask(A)] if rel is not None and rel.enabled else None
    if mask is not None and any(mask) and list(state_names[:A]) != list(action_names):
        raise ValueError("relative actions add the state dim of the same index: the exporter needs the state's first "
                         f"{A} names to be the action names, got {state_names} / {action_names}")
    spec["action"] = {"head": "continuous", "normalization": normalization_of(ck, "action", "post"),
                      "groups": _action_groups(action_names, mask)}
    if t in ("pi0", "pi05", "smolvla"):
        spec["action"]["padding"] = {"model_dim": int(cfg.max_action_dim)}
    timings = spec.pop("_export_log")
    spec["export"] = {"tool": "tools/lerobot/export.py", "opset": OPSET,
                      "graphs": [{"onnx": g["graph"], "exporter": g["exporter"]} for g in timings]}
    (out / "model.yaml").write_text(_header(spec) + dump_yaml(spec), encoding="utf-8")
    _validate_with_runtime_schema(out)
    spec["_timings"] = {"total_s": round(time.monotonic() - t_start, 1),
                        **{g["graph"]: g["seconds"] for g in timings}}
    return spec


def _validate_with_runtime_schema(out: Path) -> None:
    """Refuse a package the runtime would refuse: ``model.yaml`` through the runtime's own schema.

    ``vla_runtime.core.model_spec`` needs only pydantic and pyyaml (both in this environment); the runtime
    then checks the graphs against it when it loads the package.
    """
    from vla_runtime.core.model_spec import load_model_spec

    try:
        load_model_spec(out)
    except ValueError as e:
        raise ValueError(f"the exporter wrote a model.yaml the runtime refuses (an exporter bug): {e}") from e


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of scalars, no anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _repr_list(dumper: yaml.SafeDumper, data: list) -> Any:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _repr_str(dumper: yaml.SafeDumper, data: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"' if "\n" in data else None)


_Dumper.add_representer(list, _repr_list)
_Dumper.add_representer(str, _repr_str)


def dump_yaml(data: Any) -> str:
    """YAML text of ``data`` in the package's layout (used for ``model.yaml``)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def _header(spec: dict[str, Any]) -> str:
    return (f"# {spec['name']} — imported from LeRobot {spec['source']['policy_type']} "
            f"(tools/lerobot/export.py); do not edit by hand.\n"
            "# schema_version 2 (vla_runtime/core/model_spec.py); docs/lerobot-export.md: every field and the "
            "algorithm.\n")


def _lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")
