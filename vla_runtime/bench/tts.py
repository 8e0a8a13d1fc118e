"""``vla-runtime bench tts``: test-time chunk selection, its cost and its effect, side by side with one chunk.

Two parts, one JSON:

* ``latency``: in this process, on the fast node's own step (``core/policy.fast_step_for`` on the trained
  flow-matching reference, ``models/reference_reach_flow``: 10 Euler steps, guided towards an executing
  plan as the node guides it) with the node's selector (``core/chunk_selection.ChunkSelector``,
  consistency verifier): the wall time of one inference (draw ``N`` candidates + verify + choose) for
  ``N`` = 1, 2, 4, 8, p50/p99 over ``reps``, ``candidate_spread_mean`` (the largest max-abs
  difference between a candidate and the kept one, rad: 0 would mean the candidates were all alike) and
  ``kept_other_than_first`` (of the ``reps`` inferences, how many kept a candidate other than the first).
  The reference's graphs have a fixed batch dim of 1, so the candidates are ``N`` passes (``batched``:
  false) and the cost grows about linearly in ``N``.
* ``rows``: the effect on ``touch_dynamic`` through the whole graph (sim_robot, controller_bridge,
  slow_reasoner, action_chunk_node as processes over DDS, ``config/sim_panda_reach_flow.yaml``): ``N = 1``
  against ``N = 4`` with the consistency verifier, ``episodes`` each (seeds as ``vla-runtime eval``):
  success rate, mean time to success, HOLD requests inside the episodes, and how often the verifier kept a
  candidate other than the first (``candidates_changed``). No delay is injected (an injected delay would be
  paid once per pass). ``episodes = 0`` skips this part.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["CANDIDATES", "bench_tts", "selection_latency"]

#: Candidate counts of the latency sweep.
CANDIDATES = (1, 2, 4, 8)


def selection_latency(package: str | Path, ns: Sequence[int] = CANDIDATES, reps: int = 40,
                      verifier: str = "consistency", max_guidance: float = 20.0, jacobian: str = "identity",
                      seed: int = 0) -> list[dict]:
    """Wall time of one selected inference per ``N`` on the package's fast step (see the module docstring).

    The observation: the proprio statistics' centre as the state, a random latent (seeded); the executing plan: an
    earlier chunk of the same step, 3 of its steps already executed and 3 frozen (100 ms at 30 Hz).
    """
    from vla_runtime.core.chunk_selection import ChunkSelector
    from vla_runtime.core.policy import fast_step_for
    from vla_runtime.engines.model_package import load_model_package

    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    pkg = load_model_package(package, parts=("fast",))
    try:
        step = fast_step_for(pkg, max_guidance=max_guidance, jacobian=jacobian, seed=seed)
        rng = np.random.default_rng(seed)
        state = np.asarray(pkg.proprio.denormalize(np.zeros(step.state_size)), dtype=np.float64)
        latent = None
        if step.has_latent and step.latent_tensors is None:
            latent = rng.standard_normal(step.latent_view.shape).astype(np.float32)
        plan = step.run(state, None, latent).chunk
        h = len(plan)
        exec_steps, frozen = 3, 3
        shifted = np.vstack([plan[exec_steps:], np.repeat(plan[-1:], exec_steps, axis=0)])
        mask = np.arange(h) < frozen
        rows = []
        for n in ns:
            sel = ChunkSelector(n, verifier, step)
            sel.run(state, (shifted, mask), latent, exec_steps, None)  # warm
            sel.changed = 0
            ms, spreads = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                got = sel.run(state, (shifted, mask), latent, exec_steps, None)
                ms.append((time.perf_counter() - t0) * 1e3)
                spreads.append(got.spread)
            rows.append({"candidates": n, "verifier": verifier, "batched": False,
                         "latency_ms_p50": round(float(np.percentile(ms, 50)), 3),
                         "latency_ms_p99": round(float(np.percentile(ms, 99)), 3),
                         "candidate_spread_mean": round(float(np.mean(spreads)), 5),
                         "kept_other_than_first": sel.changed})
        return rows
    finally:
        pkg.close()


def bench_tts(episodes: int = 20, config: str | None = None, task: str = "touch_dynamic", seed: int = 0,
              reps: int = 40, log: Callable[[str], None] | None = None) -> dict:
    """Latency vs N in-process, then N = 1 vs N = 4 (consistency) on ``task`` through the graph.

    Args:
        episodes: Episodes per graph row (0: latency only).
        config: Base config (default ``config/sim_panda_reach_flow.yaml``).
        task: ``touch_dynamic`` (or ``touch``).
        seed: Episode seed (as ``vla-runtime eval``) and the latency sweep's.
        reps: Inferences timed per N.
        log: Progress lines (None: quiet).
    """
    from vla_runtime.bench.horizon import graph_row
    from vla_runtime.commands.evaluation import EPISODE_SEED_STRIDE
    from vla_runtime.core.config import PROJECT_ROOT, load_config

    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    base = Path(config) if config else PROJECT_ROOT / "config" / "sim_panda_reach_flow.yaml"
    cfg = load_config(base)
    say = log or (lambda _s: None)
    t_start = time.monotonic()
    say("bench tts: latency vs N (in process)")
    latency = selection_latency(cfg.model_package_path, reps=reps, max_guidance=cfg.scheduler.rtc_max_guidance,
                                jacobian=cfg.scheduler.rtc_jacobian, seed=seed)
    rows = []
    if episodes:
        with tempfile.TemporaryDirectory(prefix="bench_tts_") as tmp:
            for n in (1, 4):
                over = {"scheduler": {"candidates": n, "verifier": "consistency"}}
                rows.append(graph_row(base, Path(tmp) / f"n{n}.yaml", over, f"candidates_{n}_consistency", task,
                                      episodes, seed * EPISODE_SEED_STRIDE, 0.0, say))
    by = {r["name"]: r for r in rows}
    one, four = by.get("candidates_1_consistency"), by.get("candidates_4_consistency")
    targets: dict[str, bool] = {}
    lat = {r["candidates"]: r for r in latency}
    if 1 in lat and 4 in lat:
        targets["n4_latency_le_5x_n1"] = lat[4]["latency_ms_p50"] <= 5 * lat[1]["latency_ms_p50"]
    if one and four:
        targets["n4_no_hold_in_episodes"] = four["hold_fraction"] in (0, 0.0, None)
        targets["n4_success_ge_n1_minus_5pct"] = four["success_rate"] >= one["success_rate"] - 0.05
    return {"benchmark": "tts", "task": task, "config": str(base), "package": str(cfg.model_package_path),
            "latency_in_process": True, "through_graph": bool(rows), "episodes_per_row": episodes,
            "latency": latency, "rows": rows, "wall_s": round(time.monotonic() - t_start, 1),
            "targets": targets, "passed": all(targets.values())}
