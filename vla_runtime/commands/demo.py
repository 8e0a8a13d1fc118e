"""``make demo``: the whole stack on the simulated robot, with a report of what happened.

Starts the config's node graph (sim robot, slow path, fast path, controller bridge) as separate
processes on the current ``ROS_DOMAIN_ID`` (watch it with your own tools while it runs), records
the end-effector path, the fast loop's plan stream, latent age and the bridge's safety state,
stops the graph, and writes ``report.json`` and ``report.png`` into a fresh run directory
(``runs/demo-<time>/``). With the trained reference policy it runs one episode of each task instead
(:func:`vla_runtime.commands.evaluation.run_demo_episodes`), into files of the same names. The
terminal gets a short table and the report's path; ``--json`` prints the summary as JSON.
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
from vla_runtime.commands.report import (
    REPORT_JSON,
    REPORT_PNG,
    detector_panel,
    infer_panel,
    latent_age_panel,
    mode_events,
    period_panel,
    top_view_panel,
    write_json,
    write_plot,
)
from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.core.contract import DIAG_DETECTOR, DIAG_FAST_PATH, DIAG_SLOW_PATH, TOPIC_ACTION_CHUNK
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


def run_graph_demo(config: Path, duration: float, out_root: Path, log=print) -> dict:
    """Run the config's graph for ``duration`` seconds and write the report; return its summary."""
    cfg = load_config(config)
    run_dir = out_root / time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    with GraphHarness(domain_id=domain, log_dir=run_dir / "logs", name="demo") as g:
        config_file = g.write_config(config)
        specs = node_graph(load_config(config_file), config_file)
        log(f"demo: starting {[s.name for s in specs]} on ROS_DOMAIN_ID={domain}")
        rec = GraphRecorder(g)
        g.start(specs)
        try:
            g.wait(lambda: sum(1 for _, m in rec.plans if m.points) >= 5, 90, "the fast path's first plans",
                   interval=0.1)
        except GraphError as e:
            raise SystemExit(f"demo: {e}\nlogs in {run_dir / 'logs'}") from None
        t_start = time.monotonic()
        log(f"demo: policy running; recording {duration:.0f} s")
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
    feat = [f for f in rec.features.samples if t_start <= f.t <= t_end]
    detector = [(t, kv) for t, kv in rec.diags.since(DIAG_DETECTOR, t_start) if t <= t_end]
    modes = rec.modes()
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
            "p50": float(np.percentile([f.latent_age_s for f in feat], 50)) if feat else None,
            "max": float(max(f.latent_age_s for f in feat)) if feat else None,
        },
        "safety_modes": [m for _, m in modes],
        "ee_path_length_m": float(np.sum(np.linalg.norm(np.diff(ee_xyz, axis=0), axis=1))) if len(ee_xyz) > 1 else 0.0,
    }
    if detector:
        scores = [x for x in (_num(kv.get("score")) for _, kv in detector) if np.isfinite(x)]
        summary["detector"] = {"max_score": max(scores, default=None),
                               "halts_published": detector[-1][1].get("halts_published")}
    write_json(run_dir / REPORT_JSON, summary)
    events = mode_events([(t, m) for t, m in modes if t_start <= t <= t_end], t0=t_start)
    tick_ms = 1000.0 / cfg.rates.fast_hz
    ft = np.array([f.t for f in feat]) - t_start
    panels = [
        period_panel(plan_t[1:] - t_start, np.diff(plan_t) * 1e3 if len(plan_t) > 1 else np.zeros(0), tick_ms,
                     "Did the fast loop keep its rate?"),
        latent_age_panel([{"label": "latent age", "t": ft, "age_s": [f.latent_age_s for f in feat]}],
                         cfg.latent.max_age_s, events),
        top_view_panel([{"label": "hand", "xy": ee_xyz[:, :2]}], point="/ee_pose"),
    ]
    if "failure_detector" in cfg.nodes:
        panels.append(detector_panel([t - t_start for t, _ in detector], [_num(kv.get("score")) for _, kv in detector],
                                     [_num(kv.get("threshold")) for _, kv in detector], events,
                                     note=_detector_note(detector), xlim=(0.0, duration)))
    else:
        panels.append(infer_panel([{"label": "fast path", "t": ft, "infer_ms": [f.infer_ms for f in feat]}], tick_ms))
    write_plot(run_dir / REPORT_PNG, panels, title=f"vla-runtime demo: {Path(config).name}, {duration:g} s "
               f"(timing only: no task episodes)")
    summary["run_dir"] = str(run_dir)
    summary["json"] = str(run_dir / REPORT_JSON)
    summary["png"] = str(run_dir / REPORT_PNG)
    return summary


def _detector_note(detector: list[tuple[float, dict[str, str]]]) -> str | None:
    """What the detector panel cannot show by itself: no learned score, and what the detector halted for."""
    parts = []
    if detector and not any(np.isfinite(_num(kv.get("score"))) for _, kv in detector):
        parts.append("no learned score: hard monitors only")
    causes = [kv.get("causes") for _, kv in detector if kv.get("causes") not in (None, "", "none")]
    if causes:
        cause = causes[0] if len(causes[0]) <= 70 else causes[0][:67] + "..."
        parts.append(f"fired on: {cause}")
    return "\n".join(parts) or None


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def episode_table(rows: list[dict]) -> str:
    """The demo's episodes as a short table a person reads: task, colour, success, time, closest distance."""
    head = ("task", "colour", "success", "time [s]", "min distance [cm]")
    body = [(r["task"], r["colour"], "yes" if r["success"] else "no",
             f"{r['time_to_success_s']:.2f}" if r["time_to_success_s"] is not None else "-",
             f"{100 * r['min_distance_m']:.1f}" if r.get("min_distance_m") is not None else "-") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in (head, *body))


def _hz(v) -> str:
    return f"{v:.1f} Hz" if isinstance(v, (int, float)) else "-"


def _ms(v) -> str:
    return f"{v:.1f} ms" if isinstance(v, (int, float)) else "-"


def run_demo(args: argparse.Namespace) -> int:
    """``vla-runtime demo``: task episodes with the reference policy, else a timing-only run.

    Prints a short table (``--json``: the report's JSON) and where the report was written.
    """
    as_json = bool(getattr(args, "json", False))
    say = (lambda line: print(line, file=sys.stderr)) if as_json else print
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
        result = run_demo_episodes(run_dir, config=config, log=say)
        if as_json:
            rows = [{k: v for k, v in ep.items() if k != "trace"} for ep in result["episodes"]]
            print(json.dumps({**{k: v for k, v in result.items() if k != "episodes"}, "episodes": rows},
                             indent=2, default=float))
            return 0
        fp = result["fast_path"]
        print()
        print(episode_table(result["episodes"]))
        infer_p50 = (fp.get("infer_ms") or {}).get("p50")
        print(f"\nfast loop {_hz(fp.get('achieved_hz'))}, inference p50 {_ms(infer_p50)}")
        print(f"report: {result['png']} (data: {result['json']})")
        return 0
    summary = run_graph_demo(config.resolve(), args.duration, out_root, log=say)
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "nodes_stopped"}, indent=2, default=float))
        return 0
    fp, lat = summary["fast_path"], summary["latent_age_s"]
    print()
    print(f"config            {Path(summary['config']).name} (timing model: no task episodes)")
    print(f"fast loop         {_hz(fp.get('achieved_hz'))}, period jitter p99 "
          f"{_ms((fp.get('period_jitter_ms') or {}).get('p99'))}, plans at a subscriber {fp['plans_received_hz']} Hz")
    print(f"latent age        p50 {_ms(lat['p50'] * 1e3 if lat['p50'] is not None else None)}, "
          f"max {_ms(lat['max'] * 1e3 if lat['max'] is not None else None)}")
    print(f"bridge modes      {' → '.join(dict.fromkeys(summary['safety_modes'])) or '-'}")
    print(f"report: {summary['png']} (data: {summary['json']})")
    return 0


def _has_trained_policy(cfg) -> bool:
    from vla_runtime.core.model_spec import load_model_spec

    return bool(load_model_spec(cfg.model_package_path).trained)
