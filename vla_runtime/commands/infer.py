"""``vla-runtime infer PACKAGE --inputs IN.npz --out OUT.npz``: one action chunk, outside any ROS graph.

It runs the package's slow and fast parts once (:class:`vla_runtime.core.policy.PolicyRunner`, the code
the nodes and ``vla-runtime serve`` run) on the observation in ``IN.npz``:

==============  ==========================================================================================
key             value
==============  ==========================================================================================
``<camera>``    uint8 ``H×W×3`` RGB frame per camera name (a windowed package: ``T×H×W×3``, oldest first; one
                frame stands for a window of copies). A frame of another size than the package's is
                centre-cropped to its aspect ratio and resized bilinearly (the output says which).
``prompt``      the task instruction, a string (0-d array); packages without a tokenizer ignore it
``state``       float32 ``[S]`` raw robot state in the package's ``proprio.names`` order (or ``[T, S]``)
``noise``       optional float32 starting noise, the model's chunk (model horizon × model action dims)
``step_noise``  optional float32 DDPM draws ``[n, H, A]`` (one per step with timestep > 0)
``seed``        optional integer: seed of the generator for the noise not given (default 0)
==============  ==========================================================================================

``OUT.npz`` holds ``actions`` float32 ``[H, A]`` in robot units (de-normalised, delta dims absolute),
``actions_normalized``, ``dim_names``, and where they exist ``lang_tokens``/``lang_mask`` and the latent
tensors (``latent.<name>``). Unknown input keys are refused by name; nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Keys of an observation besides the cameras.
OBS_KEYS = ("prompt", "state", "noise", "step_noise", "seed")


class InferInputError(ValueError):
    """The inputs do not fit the package (the message names the key)."""


def observation_from_mapping(obs: Mapping[str, Any], cameras: list[str]) -> dict[str, Any]:
    """Check an observation (``vla-runtime infer``'s npz or an openpi request) against a package's cameras.

    Returns:
        ``{"frames": {camera: uint8 array}, "prompt": str, "state": float32 array, "noise": array | None,
        "step_noise": array | None, "seed": int | None}``.

    Raises:
        InferInputError: An unknown key, a missing camera or state, or a value of the wrong kind.
    """
    unknown = sorted(k for k in obs if k not in cameras and k not in OBS_KEYS)
    if unknown:
        raise InferInputError(f"unknown input key(s) {unknown}; the package takes cameras {cameras} and "
                              f"{list(OBS_KEYS)}")
    frames = {}
    for cam in cameras:
        if cam not in obs:
            raise InferInputError(f"no frame for camera {cam!r} (the package's cameras: {cameras})")
        f = np.asarray(obs[cam])
        if f.dtype != np.uint8 or f.ndim not in (3, 4) or f.shape[-1] != 3:
            raise InferInputError(f"camera {cam!r}: expected a uint8 H×W×3 RGB frame (or T×H×W×3), got "
                                  f"{list(f.shape)} {f.dtype}")
        frames[cam] = f
    if "state" not in obs:
        raise InferInputError("no 'state' (float32 [S], the robot state in the package's proprio order)")
    state = np.asarray(obs["state"])
    if state.dtype.kind not in "fiu" or state.ndim not in (1, 2):
        raise InferInputError(f"state: expected a float32 [S] (or [T, S]) array, got {list(state.shape)} "
                              f"{state.dtype}")
    prompt = obs.get("prompt", "")
    if isinstance(prompt, np.ndarray):
        if prompt.dtype.kind != "U" or prompt.ndim != 0:
            raise InferInputError(f"prompt: expected a string, got a {prompt.dtype} array of shape "
                                  f"{list(prompt.shape)}")
        prompt = str(prompt)
    if not isinstance(prompt, str):
        raise InferInputError(f"prompt: expected a string, got {type(prompt).__name__}")
    out: dict[str, Any] = {"frames": frames, "prompt": prompt, "state": state.astype(np.float32), "noise": None,
                           "step_noise": None, "seed": None}
    for key in ("noise", "step_noise"):
        if key in obs and obs[key] is not None:
            v = np.asarray(obs[key])
            if v.dtype.kind != "f":
                raise InferInputError(f"{key}: expected a float32 array, got {v.dtype}")
            out[key] = v.astype(np.float32)
    if "seed" in obs and obs["seed"] is not None:
        seed = np.asarray(obs["seed"])
        if seed.ndim != 0 or seed.dtype.kind not in "iu":
            raise InferInputError(f"seed: expected an integer, got {seed!r}")
        out["seed"] = int(seed)
    return out


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an inputs ``.npz`` (never unpickled).

    Raises:
        InferInputError: The file is missing, not an npz, or holds object arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise InferInputError(f"inputs file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise InferInputError(f"{p}: not a readable .npz of plain arrays ({e})") from e


def run_infer(runner: Any, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One chunk for one observation through a :class:`~vla_runtime.core.policy.PolicyRunner`.

    Returns:
        The output arrays (``actions`` float32 [H, A] in robot units, ``actions_normalized``,
        ``dim_names``, tokens and latent where they exist) plus ``resized`` (cameras resized).

    Raises:
        InferInputError: Bad inputs (named); ValueError/KeyError from the runtime name what does not fit.
    """
    inp = observation_from_mapping(obs, runner.cameras)
    rng = np.random.default_rng(inp["seed"]) if inp["seed"] is not None else None
    out = runner.infer(inp["frames"], inp["prompt"], inp["state"], noise=inp["noise"], step_noise=inp["step_noise"],
                       rng=rng)
    res: dict[str, np.ndarray] = {
        "actions": out.actions.astype(np.float32),
        "actions_normalized": np.asarray(out.normalized),
        "dim_names": np.array(runner.package.action_space.dim_names),
        "resized": np.array(out.resized, dtype=str),
    }
    if out.tokens is not None:
        res["lang_tokens"], res["lang_mask"] = out.tokens.ids, out.tokens.mask
    for name, v in out.latent.items():
        res[f"latent.{name}"] = v
    return res


def cmd_infer(package: str, inputs: str, out: str, threads: int = 1) -> int:
    """The command: load, run, write; errors are one line on stderr and exit code 1."""
    import sys

    from vla_runtime.core.policy import PolicyRunner
    from vla_runtime.engines.base import EngineConfig, EngineError
    from vla_runtime.engines.model_package import ModelPackageError, load_model_package

    try:
        obs = load_inputs(inputs)
        with load_model_package(package, EngineConfig(intra_op_threads=threads)) as pkg:
            res = run_infer(PolicyRunner(pkg), obs)
    except (InferInputError, ModelPackageError, EngineError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vla-runtime infer: {msg}", file=sys.stderr)
        return 1
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **res)
    a = res["actions"]
    note = f"; resized to the package's size: {res['resized'].tolist()}" if res["resized"].size else ""
    first = [round(float(v), 4) for v in a[0]]
    print(f"wrote {out}: actions {list(a.shape)} in robot units (first step {first}){note}")
    return 0
