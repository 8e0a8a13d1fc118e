"""Reference implementation of the runtime side of an imported package: numpy + onnxruntime + tokenizers.

This module reads only the package (``model.yaml``, the ONNX graphs, ``tokenizer.json``); it never
imports torch or lerobot. It is the executable form of the algorithm in ``docs/lerobot-export.md``
and what :mod:`tools.lerobot.verify` compares against LeRobot. It is NOT the runtime: the runtime
side is written separately from the document; this file exists so that the document is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

F32 = np.float32


def normalize(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """Raw -> normalised, in float32, in the same operation order as LeRobot's ``NormalizerProcessorStep``."""
    x = np.asarray(x, dtype=F32)
    kind = norm["kind"]
    if kind in ("identity", "none"):
        return x
    eps = F32(norm["eps"])
    if kind == "mean_std":
        return (x - np.asarray(norm["mean"], F32)) / (np.asarray(norm["std"], F32) + eps)
    lo, hi = _bounds(norm)
    d = hi - lo
    d = np.where(d == 0, eps, d).astype(F32)
    return F32(2) * (x - lo) / d - F32(1)


def unnormalize(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """Normalised -> raw, in float32, in the same operation order as LeRobot's ``UnnormalizerProcessorStep``."""
    x = np.asarray(x, dtype=F32)
    kind = norm["kind"]
    if kind in ("identity", "none"):
        return x
    if kind == "mean_std":
        return x * np.asarray(norm["std"], F32) + np.asarray(norm["mean"], F32)
    lo, hi = _bounds(norm)
    d = hi - lo
    d = np.where(d == 0, F32(norm["eps"]), d).astype(F32)
    if kind == "min_max":
        return (x + F32(1)) / F32(2) * d + lo
    return (x + F32(1)) * d / F32(2) + lo


def _bounds(norm: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    names = {"min_max": ("min", "max"), "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90")}[norm["kind"]]
    return np.asarray(norm[names[0]], F32), np.asarray(norm[names[1]], F32)


def pi05_state_string(norm_state: np.ndarray, bins: int = 256) -> str:
    """π0.5's state tokens: each normalised dim -> bin index in [-1, bins-1], joined by spaces."""
    edges = np.linspace(-1, 1, bins + 1)[:-1]
    return " ".join(str(int(v)) for v in (np.digitize(np.asarray(norm_state), bins=edges) - 1))


class PackageRunner:
    """Runs a schema-2 package the way the runtime must (one observation, batch 1)."""

    def __init__(self, package: Path) -> None:
        import onnxruntime as ort

        self.dir = Path(package)
        self.spec = yaml.safe_load((self.dir / "model.yaml").read_text(encoding="utf-8"))
        if self.spec.get("schema_version") != 2:
            raise ValueError(f"{self.dir}: expected schema_version 2, got {self.spec.get('schema_version')!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sessions = {k: ort.InferenceSession(str(self.dir / self.spec[k]["onnx"]), opts,
                                                 providers=["CPUExecutionProvider"])
                         for k in ("slow", "fast") if self.spec.get(k)}
        tok = self.spec.get("tokenizer")
        self.tokenizer = None
        if tok is not None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.dir / tok["file"]))
            if tok["truncation"]:
                self.tokenizer.enable_truncation(max_length=tok["max_len"], direction=tok["truncation_side"])
            # The slow graph has a fixed token length: pad to max_len whatever the checkpoint's padding
            # mode ("longest" gives the same actions: padded positions are masked out everywhere).
            self.tokenizer.enable_padding(direction=tok["padding_side"], pad_id=tok["pad_id"], length=tok["max_len"])

    # -- pieces -----------------------------------------------------------------------------------
    def prompt(self, task: str, norm_state: np.ndarray | None) -> str:
        """The text LeRobot tokenizes for ``task``."""
        p = self.spec["tokenizer"]["prompt"]
        if p["kind"] == "pi05_state_prompt":
            clean = task.strip().replace("_", " ").replace("\n", " ")
            assert norm_state is not None
            return f"Task: {clean}, State: {pi05_state_string(norm_state, p['state_bins'])};\nAction: "
        return task if task.endswith("\n") else task + "\n"

    def tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """ids, mask as int64 [1, max_len]."""
        assert self.tokenizer is not None
        enc = self.tokenizer.encode(text, add_special_tokens=self.spec["tokenizer"]["add_special_tokens"])
        return np.asarray([enc.ids], np.int64), np.asarray([enc.attention_mask], np.int64)

    def _feeds(self, graph: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for t in self.spec[graph]["inputs"]:
            feeds[t["name"]] = np.ascontiguousarray(values[t["name"]], dtype=t["dtype"])
        return feeds

    def run(self, graph: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph; returns every output by name."""
        sess = self.sessions[graph]
        outs = sess.run(None, self._feeds(graph, values))
        return {o.name: v for o, v in zip(sess.get_outputs(), outs)}

    # -- the whole chunk --------------------------------------------------------------------------
    def predict_chunk(self, frames: dict[str, np.ndarray], task: str, state: np.ndarray,
                      noise: np.ndarray | None, step_noise: np.ndarray | None = None) -> dict[str, Any]:
        """One action chunk in robot units, with every intermediate value.

        Args:
            frames: camera name -> uint8 [H, W, 3] (Diffusion: [n_obs, H, W, 3], oldest first).
            task: The instruction (ignored by ACT/Diffusion).
            state: Raw state float32 [S] (Diffusion: [n_obs, S]).
            noise: Initial noise [H_model, A_model] (flow / diffusion policies).
            step_noise: DDPM only: the standard-normal draw of each step with timestep > 0, in step
                order, [n, H_model, A_model].
        """
        s = self.spec
        kind = s["source"]["policy_type"]
        mid: dict[str, Any] = {}
        state = np.asarray(state, F32)
        ns = normalize(state, s["proprio"]["normalization"])
        mid["state_norm"] = ns
        values: dict[str, np.ndarray] = {f"image_{c['name']}": frames[c["name"]][None] for c in s["cameras"]}
        values["state"] = ns[None]
        if kind in ("pi0", "pi05", "smolvla"):
            text = self.prompt(task, ns if kind == "pi05" else None)
            ids, mask = self.tokenize(text)
            mid.update(prompt=text, lang_tokens=ids, lang_mask=mask)
            values.update(lang_tokens=ids, lang_mask=mask)
            latents = self.run("slow", values)
            mid.update(latents)
            n_steps = s["fast"]["flow"]["steps"]
            x = np.asarray(noise, F32)[None]
            dt = F32(-1.0 / n_steps)
            for k in range(n_steps):
                t = F32(1.0 + k * (-1.0 / n_steps))  # t = 1 is pure noise; the product is taken in float64
                v = self.run("fast", {**latents, "x_t": x, "t": np.array([t], F32), "state": ns[None]})["v_t"]
                if k == 0:
                    mid["v_t0"] = v
                x = x + dt * v
            norm_actions = x[0, :, : s["action_dim"]]
        elif kind == "act":
            norm_actions = self.run("fast", values)["actions"][0]
        else:
            gc = self.run("slow", values)["global_cond"]
            mid["global_cond"] = gc
            x = np.asarray(noise, F32)[None]
            samp = s["fast"]["diffusion"]
            for k, st in enumerate(samp["steps"]):
                out = self.run("fast", {"x_t": x, "timestep": np.array([st["timestep"]], np.int64), "global_cond": gc})
                if k == 0:
                    mid["model_output0"] = out["model_output"]
                vn = None if step_noise is None or st["timestep"] == 0 else np.asarray(step_noise[k], F32)[None]
                x = scheduler_step(samp, st, out["model_output"], x, vn)
            start = s.get("chunk_offset", 0)
            norm_actions = x[0, start: start + s["chunk_horizon"]]
        mid["actions_norm"] = norm_actions
        actions = unnormalize(norm_actions, s["action"]["normalization"])
        m = np.concatenate([[g["kind"] == "joint_delta"] * len(g.get("joints") or [None])
                            for g in s["action"]["groups"]]).astype(bool)
        if m.any():  # LeRobot's relative actions: joint_delta dims add the raw state of the same index
            actions = actions.copy()
            actions[:, : len(m)] += np.where(m, state[-1] if state.ndim == 2 else state, 0)[None]
        mid["actions"] = actions
        return mid


def scheduler_step(samp: dict[str, Any], st: dict[str, Any], model_output: np.ndarray, x: np.ndarray,
                   variance_noise: np.ndarray | None = None) -> np.ndarray:
    """One DDIM (eta = 0) or DDPM step, as diffusers computes it, from the package's per-step constants."""
    a_t, a_prev = F32(st["alpha_prod_t"]), F32(st["alpha_prod_t_prev"])
    b_t = F32(1) - a_t
    if samp["prediction_type"] == "epsilon":
        x0 = (x - b_t ** F32(0.5) * model_output) / a_t ** F32(0.5)
        eps = model_output
    elif samp["prediction_type"] == "sample":
        x0 = model_output
        eps = (x - a_t ** F32(0.5) * x0) / b_t ** F32(0.5)
    else:
        raise ValueError(f"prediction_type {samp['prediction_type']!r} is not supported")
    if samp["clip_sample"]:
        r = F32(samp["clip_sample_range"])
        x0 = np.clip(x0, -r, r)
    if samp["scheduler"] == "ddim":
        return a_prev ** F32(0.5) * x0 + (F32(1) - a_prev) ** F32(0.5) * eps
    cur_alpha = a_t / a_prev
    cur_beta = F32(1) - cur_alpha
    b_prev = F32(1) - a_prev
    mean = (a_prev ** F32(0.5) * cur_beta) / b_t * x0 + cur_alpha ** F32(0.5) * b_prev / b_t * x
    if st["timestep"] > 0:
        if variance_noise is None:
            raise ValueError("a DDPM step with t > 0 needs variance_noise")
        var = np.maximum(b_prev / b_t * cur_beta, F32(1e-20))
        mean = mean + var ** F32(0.5) * variance_noise
    return mean
