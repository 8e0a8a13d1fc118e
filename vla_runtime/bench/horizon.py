"""``vla-runtime bench horizon``: the fixed execution horizon against the consensus horizon, side by side.

The trained flow-matching reference (``config/sim_panda_reach_flow.yaml``: a 32-step chunk at 30 Hz,
10 Euler steps, real-time chunking) runs through the whole graph (sim_robot, controller_bridge,
slow_reasoner, action_chunk_node as processes over DDS) on ``touch_dynamic``, with a fixed latency
injected into every fast inference (``model.fast_engine.inject_delay_ms``, default 100 ms), once per
horizon policy:

* ``fixed``: the config's execution horizon (the reference's: 1 step, so the worker re-plans back to
  back, every ~``delay``);
* ``consensus``: ``scheduler.horizon_policy: consensus`` (core/async_inference.ConsensusTrigger): a
  chunk runs up to ``consensus_max_steps`` while successive chunks agree within
  ``consensus_tolerance`` over their overlap and the next inference starts early where they part.

Per row, over the episodes (seeds as ``vla-runtime eval``): ``inferences_per_motion_s`` (chunks the
fast path merged, counted on ``/vla/policy_features``, per second inside the episodes: from
/vla/resume to success or the time limit), ``success_rate``, ``mean_time_to_success_s``,
``hold_fraction`` (HOLD requests among the plan messages inside the episodes), the consensus
counters (chunks that agreed over the whole overlap / parted inside it) and the fast loop's rate.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["POLICIES", "bench_horizon", "graph_row"]

#: Scheduler settings of each horizon policy (merged over the config's ``scheduler``).
POLICIES: dict[str, dict] = {
    "fixed": {"horizon_policy": "fixed"},
    "consensus": {"horizon_policy": "consensus", "consensus_tolerance": 0.02, "consensus_min_steps": 1,
                  "consensus_max_steps": 12},
}


def graph_row(base: Path, out: Path, overrides: Mapping, name: str, task: str, episodes: int, seed0: int,
              inject_delay_ms: float, say: Callable[[str], None]) -> dict:
    """Run ``episodes`` of ``task`` through the whole graph with ``overrides`` merged over ``base``; one row.

    Shared by ``bench horizon`` and ``bench tts``: success, time to success, merged chunks (inferences)
    per second of motion, HOLD requests inside the episodes, and the fast path's diagnostics.
    """
    from std_srvs.srv import Trigger

    from vla_runtime.bench.delay import PlanStream, _arm_columns
    from vla_runtime.commands.evaluation import _GraphSession
    from vla_runtime.core.config import load_config
    from vla_runtime.graph.harness import write_config

    fast_engine = dict(load_config(base).model.fast_engine.model_dump(exclude_none=True))
    fast_engine["inject_delay_ms"] = float(inject_delay_ms)
    over = {**overrides, "model": {"fast_engine": fast_engine}}
    path = write_config(base, out, over)
    with _GraphSession("async", None, path, say) as s:
        stream = PlanStream(s.g.probe.node, _arm_columns)
        s.g.call(Trigger, "/action_chunk_node/reset_stats", Trigger.Request())
        results, windows = [], []
        for i in range(episodes):
            r = s.episode(task, seed0 + i)
            results.append(r)
            windows.append(s.last_window)
            outcome = f"success in {r['time_to_success_s']:.2f} s" if r["success"] else "FAIL"
            say(f"bench: {name} episode {i + 1}/{episodes}: {outcome}")
        time.sleep(1.2)  # one more diagnostics message (1 Hz) after the last episode
        timing = s.diag.fast_path_timing()
        kv = s.diag.fast_path()
        feature_times = np.array([f.t for f in s.features.samples])
    msgs = [row for t0, t1 in windows for row in stream.between(t0, t1)]
    run_s = sum(t1 - t0 for t0, t1 in windows)
    merged = sum(int(((feature_times >= t0) & (feature_times <= t1)).sum()) for t0, t1 in windows)
    times = [r["time_to_success_s"] for r in results if r["success"]]
    keys = ("candidates", "candidates_changed", "candidate_spread", "horizon_policy", "consensus_agreed",
            "consensus_parted", "inferences", "chunks", "chunks_dropped", "rtc_guided_chunks", "provider")
    return {
        "name": name,
        "inject_delay_ms": float(inject_delay_ms),
        "episodes": len(results),
        "success_rate": sum(r["success"] for r in results) / len(results) if results else None,
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "motion_s": round(run_s, 2),
        "inferences_per_motion_s": merged / run_s if run_s > 0 else None,
        "hold_fraction": sum(1 for m in msgs if m[1]) / len(msgs) if msgs else None,
        "achieved_hz": timing.get("achieved_hz"),
        "inference_ms_p50": (timing.get("infer_ms") or {}).get("p50"),
        "inference_ms_p99": (timing.get("infer_ms") or {}).get("p99"),
        "diagnostics": {k: kv.get(k) for k in keys if k in kv},
    }


def bench_horizon(episodes: int = 20, delay_ms: float = 100.0, config: str | None = None,
                  task: str = "touch_dynamic", seed: int = 0, policies: Mapping[str, dict] | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Fixed vs consensus horizon through the graph; returns ``rows``, ``ratio`` and ``targets``.

    Args:
        episodes: Episodes per row.
        delay_ms: Injected fast-inference delay.
        config: Base config (default ``config/sim_panda_reach_flow.yaml``).
        task: ``touch_dynamic`` (or ``touch``).
        seed: Episode seed (as ``vla-runtime eval``).
        policies: Name → scheduler overrides (default :data:`POLICIES`).
        log: Progress lines (None: quiet).
    """
    from vla_runtime.commands.evaluation import EPISODE_SEED_STRIDE
    from vla_runtime.core.config import PROJECT_ROOT

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not delay_ms >= 0:
        raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
    base = Path(config) if config else PROJECT_ROOT / "config" / "sim_panda_reach_flow.yaml"
    policies = dict(policies or POLICIES)
    say = log or (lambda _s: None)
    t_start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_horizon_") as tmp:
        for name, sched in policies.items():
            rows.append(graph_row(base, Path(tmp) / f"{name}.yaml", {"scheduler": dict(sched)}, name, task, episodes,
                                  seed * EPISODE_SEED_STRIDE, delay_ms, say))
    by = {r["name"]: r for r in rows}
    out: dict = {"benchmark": "horizon", "task": task, "config": str(base), "through_graph": True,
                 "episodes_per_row": episodes, "inject_delay_ms": delay_ms, "policies": policies, "rows": rows}
    fixed, cons = by.get("fixed"), by.get("consensus")
    targets: dict[str, bool] = {}
    if fixed and cons and fixed["inferences_per_motion_s"] and cons["inferences_per_motion_s"] is not None:
        out["inference_ratio_consensus_over_fixed"] = cons["inferences_per_motion_s"] / fixed["inferences_per_motion_s"]
        targets["consensus_fewer_inferences"] = out["inference_ratio_consensus_over_fixed"] < 1.0
        targets["consensus_success_within_5pct_of_fixed"] = cons["success_rate"] >= fixed["success_rate"] - 0.05
        targets["no_hold_in_episodes"] = all(r["hold_fraction"] in (0, 0.0, None) for r in rows)
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    out["targets"] = targets
    out["passed"] = all(targets.values())
    return out
