"""``make demo``: the whole stack on the simulated robot, with a report of what happened.

Starts the config's node graph (sim robot, slow path, fast path, controller bridge) as separate
processes on the current ``ROS_DOMAIN_ID`` (watch it with your own tools while it runs), records
the end-effector path, the fast loop's plan stream, latent age and the bridge's safety state,
stops the graph, and writes ``report.json`` and ``report.png`` into a fresh run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from vla_runtime.commands.check import check_config
from vla_runtime.commands.report import write_json, write_plot
from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.core.contract import DIAG_FAST_PATH, DIAG_SLOW_PATH, TOPIC_ACTION_CHUNK
from vla_runtime.graph.harness import (
    DiagnosticsWatch,
    FeaturesWatch,
    GraphError,
    GraphHarness,
    NodeExited,
    PoseWatch,
    node_graph,
    timing_summary,
)

DEFAULT_CONFIG = PROJECT_ROOT / "config" / "sim_panda_reach.yaml"  # the trained reference policy
TIMING_CONFIG = PROJECT_ROOT / "config" / "sim_panda.yaml"  # untrained timing model: loop timing only


class GraphRecorder:
    """Records what a person would watch: EE pose, plans, features, safety state, diagnostics.

    Poses, plans and features are kept for the whole run (the report plots all of them).
    """

    def __init__(self, harness: GraphHarness):
        from trajectory_msgs.msg import JointTrajectory

        from vla_runtime.nodes.common import QOS_COMMAND

        self.pose = PoseWatch(harness.probe, keep=None)
        self.plans = harness.probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        self.features = FeaturesWatch(harness.probe, keep=None)
        self.safety = harness.safety
        self.diags = DiagnosticsWatch(harness.probe)

    def diag(self, name: str) -> dict[str, str]:
        return self.diags.latest(name)

    def modes(self) -> list[tuple[float, str]]:
        return [(t, st.message) for t, st in self.safety.reports]


def run_graph_demo(config: Path, duration: float, out_root: Path) -> dict:
    """Run the config's graph for ``duration`` seconds and write the report; return its summary."""
    cfg = load_config(config)
    run_dir = out_root / time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    with GraphHarness(domain_id=domain, log_dir=run_dir / "logs", name="demo") as g:
        config_file = g.write_config(config)
        specs = node_graph(load_config(config_file), config_file)
        print(f"demo: starting {[s.name for s in specs]} on ROS_DOMAIN_ID={domain}")
        rec = GraphRecorder(g)
        g.start(specs)
        try:
            g.wait(lambda: sum(1 for _, m in rec.plans if m.points) >= 5, 90, "the fast path's first plans",
                   interval=0.1)
        except GraphError as e:
            raise SystemExit(f"demo: {e}\nlogs in {run_dir / 'logs'}") from None
        t_start = time.monotonic()
        print(f"demo: policy running; recording {duration:.0f} s")
        try:
            g.run_for(duration)
        except NodeExited as e:
            raise SystemExit(f"demo: node(s) died: {e.dead}; logs in {run_dir / 'logs'}") from None
        fast = rec.diag(DIAG_FAST_PATH)
        slow = rec.diag(DIAG_SLOW_PATH)
        how = g.stop()
    t_end = t_start + duration
    ee = [(t, p) for t, p, _ in rec.pose.samples if t_start <= t <= t_end]
    ee_xyz = np.array([p for _, p in ee]) if ee else np.zeros((0, 3))
    plan_t = np.array([t for t, m in rec.plans if m.points and t_start <= t <= t_end])
    feat = [(f.t, f.latent_age_s) for f in rec.features.samples if t_start <= f.t <= t_end]
    timing = timing_summary(fast)
    summary = {
        "config": str(config),
        "duration_s": duration,
        "nodes_stopped": how,
        "fast_path": {
            "achieved_hz": timing.get("achieved_hz"),
            "period_jitter_ms": timing.get("period_jitter_ms"),
            "deadline_miss_rate": timing.get("deadline_miss_rate"),
            "infer_ms": timing.get("infer_ms"),
            "overhead_ms": timing.get("overhead_ms"),
            "plans_received_hz": round(len(plan_t) / duration, 2),
            "hold_ticks": fast.get("hold_ticks"),
            "provider": fast.get("provider"),
        },
        "slow_path": {k: slow.get(k) for k in ("rate_hz", "latency_ms_p50", "latency_ms_p99", "latent_version")},
        "latent_age_s": {
            "p50": float(np.percentile([a for _, a in feat], 50)) if feat else None,
            "max": float(max(a for _, a in feat)) if feat else None,
        },
        "safety_modes": [m for _, m in rec.modes()],
        "ee_path_length_m": float(np.sum(np.linalg.norm(np.diff(ee_xyz, axis=0), axis=1))) if len(ee_xyz) > 1 else 0.0,
    }
    write_json(run_dir / "report.json", summary)
    periods = np.diff(plan_t) * 1e3 if len(plan_t) > 1 else np.zeros(0)
    write_plot(run_dir / "report.png", [
        {"title": "end-effector path (top view)", "series": {"ee": (ee_xyz[:, 0], ee_xyz[:, 1])},
         "xlabel": "x [m]", "ylabel": "y [m]", "equal_axes": True},
        {"title": "fast-path plan period at a subscriber", "series": {"period": (plan_t[1:] - t_start, periods)},
         "xlabel": "t [s]", "ylabel": "ms", "hline": 1000.0 / cfg.rates.fast_hz},
        {"title": "latent age", "series": {"age": (np.array([t for t, _ in feat]) - t_start,
                                                   np.array([a for _, a in feat]))},
         "xlabel": "t [s]", "ylabel": "s", "hline": cfg.latent.max_age_s},
        {"title": "end-effector height", "series": {"z": (np.array([t for t, _ in ee]) - t_start, ee_xyz[:, 2])},
         "xlabel": "t [s]", "ylabel": "m"},
    ])
    summary["run_dir"] = str(run_dir)
    return summary


def run_demo(args: argparse.Namespace) -> int:
    """``vla-runtime demo``: task episodes with the reference policy, else a timing-only run."""
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    report = check_config(str(config))
    if not report.ok:
        print(f"demo: {config} is invalid:", file=sys.stderr)
        for p in report.problems:
            print(f"  ✗ {p}", file=sys.stderr)
        return 1
    cfg = load_config(config)
    out_root = Path(args.out)
    if cfg.sim is not None and cfg.sim.robot == "panda" and _has_trained_policy(cfg):
        from vla_runtime.commands.evaluation import run_demo_episodes

        run_dir = out_root / time.strftime("demo-%Y%m%d-%H%M%S")
        result = run_demo_episodes(run_dir, config=config)
        rows = [{k: v for k, v in ep.items() if k != "trace"} for ep in result["episodes"]]
        print(json.dumps(rows, indent=2, default=float))
        print(f"demo: report written to {result['json']} and {result['png']}")
        return 0
    summary = run_graph_demo(config.resolve(), args.duration, out_root)
    print(json.dumps({k: v for k, v in summary.items() if k != "nodes_stopped"}, indent=2, default=float))
    print(f"demo: report written to {summary['run_dir']}/report.json and report.png")
    return 0


def _has_trained_policy(cfg) -> bool:
    from vla_runtime.core.model_spec import load_model_spec

    return bool(load_model_spec(cfg.model_package_path).trained)
