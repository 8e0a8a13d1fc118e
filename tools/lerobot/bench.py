"""Per-step latency of LeRobot's own inference in torch (the torch side of ``vla-runtime bench import``).

One step is what ``lerobot.common.control_utils.predict_action`` does with ``predict_action_chunk``:
``prepare_observation_for_inference`` → pre-processor (normalise, tokenize, ...) →
``policy.predict_action_chunk(noise=...)`` → post-processor. The inputs are the verification's input
set 0 (:func:`tools.lerobot.verify.make_inputs`), written with LeRobot's actions to ``inputs_out`` so
the runtime side times the same computation on the same numbers. LeRobot environment only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def bench_torch(checkpoint: Path, package: Path, n: int, threads: int, inputs_out: Path,
                tokenizer: Path | None = None) -> dict[str, Any]:
    """Time ``n`` LeRobot inference steps on input set 0 (after 3 warm-up steps) with ``threads`` torch threads."""
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference
    from tools.lerobot.load import load_checkpoint
    from tools.lerobot.verify import make_inputs

    torch.set_num_threads(threads)
    ck = load_checkpoint(checkpoint, tokenizer)
    spec = yaml.safe_load((Path(package) / "model.yaml").read_text(encoding="utf-8"))
    if ck.policy_type == "diffusion":
        raise ValueError("bench_torch times single-observation policies (pi0, pi05, smolvla, act)")
    inp = make_inputs(spec, 0)
    cams = {c["name"]: c["feature"] for c in spec["cameras"]}
    noise = None if inp["noise"] is None else torch.from_numpy(inp["noise"])[None]
    policy = ck.policy

    def step() -> np.ndarray:
        obs = {key: np.array(inp["frames"][name]) for name, key in cams.items()}
        obs["observation.state"] = np.array(inp["state"])
        with torch.no_grad():
            batch = ck.pre(prepare_observation_for_inference(obs, torch.device("cpu"), inp["prompt"], ""))
            policy.reset()
            chunk = policy.predict_action_chunk(batch, noise=noise) if noise is not None \
                else policy.predict_action_chunk(batch)
            return ck.post(chunk)[0].numpy()

    for _ in range(3):
        actions = step()
    times = np.zeros(n)
    for i in range(n):
        t0 = time.perf_counter()
        step()
        times[i] = (time.perf_counter() - t0) * 1e3
    arrays: dict[str, np.ndarray] = {name: inp["frames"][name] for name in cams}
    arrays.update(state=inp["state"], prompt=np.array(inp["prompt"]), lerobot_actions=actions.astype(np.float32))
    if inp["noise"] is not None:
        arrays["noise"] = inp["noise"]
    np.savez(inputs_out, **arrays)
    return {"policy_type": ck.policy_type, "torch": torch.__version__, "threads": threads, "n": n,
            "p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
            "mean_ms": round(float(times.mean()), 3)}
