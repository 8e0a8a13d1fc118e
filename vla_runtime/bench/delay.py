"""``vla-runtime bench delay``: slow fast-path inference, three ways of living with it, side by side.

The trained flow-matching reference (``config/sim_panda_reach_flow48.yaml``: a 48-step (1.6 s) chunk
at 30 Hz, 10 Euler steps sampled by the runtime; the 32-step package's 1.07 s is less than the twice
500 ms a chunk must cover with one inference in flight) runs through the whole graph (sim_robot,
controller_bridge, slow_reasoner, action_chunk_node as processes over DDS) on ``touch_dynamic``, with
a fixed extra latency injected into every fast inference (``model.fast_engine.inject_delay_ms``), for
each mode:

* ``sync``: stop-and-go (``scheduler.inference: sync``): execute the first half of the chunk (as the
  synchronous baseline of Black et al.: 25 of π0's 50 steps), hold while the next one is computed,
  then execute it from its first action (the arm stood still meanwhile: no row of it is skipped);
* ``async_crossfade``: inference off the tick, unguided sampling, chunks joined by the delay-aware
  0.1 s cross-fade (``rtc_max_guidance: 0``);
* ``async_rtc``: inference off the tick, real-time chunking (the new chunk's first ``d`` steps frozen
  to the executing plan, the rest of the overlap guided with a soft mask, weight clipped at the
  config's ``scheduler.rtc_max_guidance``, with the config's Jacobian and cross-fade: for the
  reference, identity Jacobian, β 20, 50 ms).

Per (mode, delay) row, over the episodes (seeds as ``vla-runtime eval``):

* ``achieved_hz``, ``jitter_p99_ms``: the fast loop's own (its diagnostics, reset when the
  episodes start); ``stream_hz``: messages on ``/vla/action_chunk`` per second as a subscriber sees
  them, plans and HOLD requests alike, and ``max_stream_gap_ms``, the longest silence between two
  of them inside an episode (the command stream never stops);
* ``hold_fraction``: HOLD requests among those messages, inside the episodes (from /vla/resume to
  success or the time limit);
* ``max_splice_accel_jump``: the largest change of commanded joint acceleration (rad/s², arm joints)
  between consecutive ticks at a chunk splice, inside the episodes. The command of a tick is the
  first point of its plan; a tick is a splice when its plan differs from what the previous plan
  said for that time (a new chunk took over); the jump is looked at on the splice tick and the two
  after it (the cross-fade spreads a splice over 0.1 s);
  ``splice_accel_jump_p99`` is the 99th percentile of the same, and ``max_splice_at_s`` when the
  largest one came (seconds after the episode's /vla/resume);
* ``success_rate``, ``mean_time_to_success_s``;
* ``chunks``, ``skipped_actions``: chunks merged, and their leading actions dropped because the arm
  moved past their time during the inference (none for stop-and-go, whose arm holds meanwhile).

Speed rows (``speed_rows``): stop-and-go and RTC again at ``speed_delay_ms`` (300 ms) on ``touch``
(a static cube: time to success measures how fast the arm gets there, where on ``touch_dynamic`` the
sliding cube sets the pace); the target "RTC ≥ 1.5× faster than stop-and-go" is judged on them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MODES", "bench_delay", "splice_accel_jumps"]

#: Scheduler settings of each mode (merged over the config's ``scheduler``).
MODES: dict[str, dict] = {
    "sync": {"inference": "sync", "rtc_max_guidance": 0.0, "blend_s": 0.1, "execution_horizon_fraction": 0.5},
    "async_crossfade": {"inference": "async", "rtc_max_guidance": 0.0, "blend_s": 0.1},
    "async_rtc": {"inference": "async"},  # β, Jacobian and cross-fade: the config's
}
DELAYS_MS = (0.0, 100.0, 200.0, 300.0, 500.0)
#: The speed comparison: these modes on ``touch`` at this delay.
SPEED_MODES = ("sync", "async_rtc")
SPEED_DELAY_MS = 300.0


class PlanStream:
    """Every message on ``/vla/action_chunk`` with its receive time: (t, hold, stamp_s, points, times from start)."""

    def __init__(self, node, names_keep: Callable[[Sequence[str]], np.ndarray]) -> None:
        from trajectory_msgs.msg import JointTrajectory

        from vla_runtime.core.contract import TOPIC_ACTION_CHUNK
        from vla_runtime.nodes.common import QOS_COMMAND

        self.rows: list[tuple[float, bool, float, np.ndarray | None, np.ndarray | None]] = []
        self._keep = names_keep
        self._cols: np.ndarray | None = None

        def on_plan(msg: JointTrajectory) -> None:
            t = time.monotonic()
            if not msg.points:
                self.rows.append((t, True, 0.0, None, None))
                return
            if self._cols is None:
                self._cols = self._keep(list(msg.joint_names))
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            pts = np.array([p.positions for p in msg.points], dtype=np.float64)[:, self._cols]
            ts = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
            self.rows.append((t, False, stamp, pts, ts))

        self.sub = node.create_subscription(JointTrajectory, TOPIC_ACTION_CHUNK, on_plan, QOS_COMMAND)

    def between(self, t0: float, t1: float) -> list:
        return [r for r in self.rows if t0 <= r[0] <= t1]


def splice_accel_jumps(rows: list, tol: float = 1e-6, at: list[float] | None = None) -> list[float]:
    """Acceleration jumps (rad/s², max over dims) at chunk splices in a plan stream (see the module docstring).

    Args:
        rows: ``(t, hold, stamp_s, points (n, A), times_from_start (n,))`` in arrival order.
        tol: How far (rad) a plan may differ from the previous plan's prediction and still be the same chunk.
        at: If given, each jump's receive time (the splice's message) is appended to it.
    """
    cmds: list[tuple[float, np.ndarray, bool, float]] = []  # (stamp, command, splice?, receive t), no holds
    jumps: list[float] = []

    def flush() -> None:
        if len(cmds) < 4:
            return
        ts = np.array([c[0] for c in cmds])
        q = np.array([c[1] for c in cmds])
        dt = np.diff(ts)
        if (dt <= 0).any():
            return
        v = np.diff(q, axis=0) / dt[:, None]
        a = np.diff(v, axis=0) / (0.5 * (dt[1:] + dt[:-1]))[:, None]
        da = np.abs(np.diff(a, axis=0)).max(axis=1)  # da[k] is the change between a[k] and a[k+1]
        for k, (_, _, splice, t_recv) in enumerate(cmds):
            if splice:  # the command at index k enters a[k-1] (centred); look at that and the next two
                lo, hi = max(0, k - 2), min(len(da), k + 2)
                if hi > lo:
                    jumps.append(float(da[lo:hi].max()))
                    if at is not None:
                        at.append(t_recv)

    prev = None
    for t, hold, stamp, pts, ts in rows:
        if hold:
            flush()
            cmds, prev = [], None
            continue
        splice = False
        if prev is not None:
            p_stamp, p_pts, p_ts = prev
            t_rel = stamp - p_stamp
            if len(p_ts) >= 2 and p_ts[0] - 1e-6 <= t_rel <= p_ts[-1]:  # the previous plan at this stamp
                predicted = np.array([np.interp(t_rel, p_ts, p_pts[:, j]) for j in range(p_pts.shape[1])])
                splice = bool(np.abs(pts[0] - predicted).max() > tol)
        cmds.append((stamp, pts[0], splice, t))
        prev = (stamp, pts, ts)
    flush()
    return jumps


def bench_delay(episodes: int = 20, delays_ms: Sequence[float] = DELAYS_MS, modes: Sequence[str] = tuple(MODES),
                config: str | None = None, task: str = "touch_dynamic", seed: int = 0,
                log: Callable[[str], None] | None = None, speed: bool = True) -> dict:
    """Run the sweep; returns ``rows`` (one per mode and delay), ``speed_rows``, ``targets`` and ``passed``.

    Args:
        episodes: Episodes per row (≥ 20 for the targets to count).
        delays_ms: Injected fast-inference delays.
        modes: Names from :data:`MODES`.
        config: Base config (default ``config/sim_panda_reach_flow48.yaml``).
        task: ``touch_dynamic`` (or ``touch``).
        seed: Episode seed (as ``vla-runtime eval``).
        log: Progress lines (None: quiet).
        speed: Also run :data:`SPEED_MODES` on ``touch`` at :data:`SPEED_DELAY_MS` (``speed_rows``).
    """
    from vla_runtime.commands.evaluation import EPISODE_SEED_STRIDE, _GraphSession
    from vla_runtime.core.config import PROJECT_ROOT
    from vla_runtime.graph.harness import write_config

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; choose from {list(MODES)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    base = Path(config) if config else PROJECT_ROOT / "config" / "sim_panda_reach_flow48.yaml"
    from vla_runtime.core.config import load_config

    beta = load_config(base).scheduler.rtc_max_guidance
    if "async_rtc" in modes and beta <= 0:
        raise ValueError(f"{base}: scheduler.rtc_max_guidance is {beta}: async_rtc needs a guidance weight > 0")
    say = log or (lambda _s: None)
    rows = []
    t_start = time.monotonic()
    runs = [(mode, float(delay), task) for delay in delays_ms for mode in modes]
    if speed:
        runs += [(mode, SPEED_DELAY_MS, "touch") for mode in SPEED_MODES]
    with tempfile.TemporaryDirectory(prefix="bench_delay_") as tmp:
        for mode, delay, row_task in runs:
            fast_engine = dict(load_config(base).model.fast_engine.model_dump(exclude_none=True))
            fast_engine["inject_delay_ms"] = delay
            over = {"scheduler": dict(MODES[mode]), "model": {"fast_engine": fast_engine}}
            path = write_config(base, Path(tmp) / f"{mode}_{int(delay)}_{row_task}.yaml", over)
            rows.append(_row(_GraphSession, path, mode, delay, row_task, episodes, seed * EPISODE_SEED_STRIDE, say))
    return _summary(rows, episodes, time.monotonic() - t_start, str(base), task)


def _arm_columns(names: Sequence[str]) -> np.ndarray:
    return np.array([i for i, n in enumerate(names) if "gripper" not in n and "finger" not in n], dtype=int)


def _row(session_cls, path: Path, mode: str, delay: float, task: str, episodes: int, seed0: int,
         say: Callable[[str], None]) -> dict:
    from std_srvs.srv import Trigger

    with session_cls("async", None, path, say) as s:
        stream = PlanStream(s.g.probe.node, _arm_columns)
        s.g.call(Trigger, "/action_chunk_node/reset_stats", Trigger.Request())
        results, windows, errors = [], [], []
        for i in range(episodes):
            try:
                r = s.episode(task, seed0 + i)
            except (TimeoutError, RuntimeError) as e:  # the episode could not be run (a reset, the resume)
                errors.append(f"episode {i}: {str(e).splitlines()[0]}")
                if len(errors) >= 3:
                    break
                continue
            results.append(r)
            windows.append(s.last_window)
            outcome = f"success in {r['time_to_success_s']:.2f} s" if r["success"] else "FAIL"
            say(f"bench delay: {mode} {delay:g} ms episode {i + 1}/{episodes}: {outcome}")
        timing = s.diag.fast_path_timing()
        kv = s.diag.fast_path()
    msgs = [row for t0, t1 in windows for row in stream.between(t0, t1)]
    holds = sum(1 for m in msgs if m[1])
    run_s = sum(t1 - t0 for t0, t1 in windows)
    jumps, jump_t, jump_t0 = [], [], []
    for t0, t1 in windows:
        at: list[float] = []
        jumps += splice_accel_jumps(stream.between(t0, t1), at=at)
        jump_t += at
        jump_t0 += [t0] * len(at)
    k_max = int(np.argmax(jumps)) if jumps else None
    times = [r["time_to_success_s"] for r in results if r["success"]]
    jitter = (timing.get("period_jitter_ms") or {}).get("p99")
    return {
        "mode": mode,
        "delay_ms": delay,
        "task": task,
        "episodes": len(results),
        "achieved_hz": timing.get("achieved_hz"),
        "jitter_p99_ms": jitter,
        "stream_hz": len(msgs) / run_s if run_s > 0 else None,
        "max_stream_gap_ms": max((1e3 * (b[0] - a[0]) for w in windows for a, b in
                                  zip(stream.between(*w), stream.between(*w)[1:])), default=None),
        "hold_fraction": holds / len(msgs) if msgs else None,
        "max_splice_accel_jump": max(jumps) if jumps else None,
        "splice_accel_jump_p99": float(np.percentile(jumps, 99)) if jumps else None,
        "max_splice_at_s": round(jump_t[k_max] - jump_t0[k_max], 3) if k_max is not None else None,
        "splices": len(jumps),
        "success_rate": sum(r["success"] for r in results) / len(results) if results else None,
        "episode_errors": errors,
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "inference_ms_p50": (timing.get("infer_ms") or {}).get("p50"),
        "delay_planned_s": kv.get("delay_planned_s"),
        "chunks": kv.get("chunks"),
        "skipped_actions": kv.get("skipped_actions"),
        "rtc_guided_chunks": kv.get("rtc_guided_chunks"),
        "provider": kv.get("provider"),
    }


def _summary(rows: list[dict], episodes: int, wall_s: float, config: str, task: str) -> dict:
    speed_rows = [r for r in rows if r["task"] != task]
    rows = [r for r in rows if r["task"] == task]

    def get(mode: str, delay: float, among: list[dict] = rows) -> dict | None:
        return next((r for r in among if r["mode"] == mode and r["delay_ms"] == delay), None)

    targets: dict[str, bool] = {}
    asyncs = [r for r in rows + speed_rows if r["mode"] != "sync" and r["delay_ms"] <= 500]
    if asyncs:
        targets["async_no_hold_up_to_500ms"] = all(r["hold_fraction"] == 0 for r in asyncs)
        targets["async_30hz_within_0.5pct"] = all(r["achieved_hz"] is not None and abs(r["achieved_hz"] - 30.0) <= 0.15
                                                  for r in asyncs)
    rtc, xf = get("async_rtc", 300.0), get("async_crossfade", 300.0)
    if rtc is not None:
        targets["rtc_success_ge_90pct_at_300ms"] = (rtc["success_rate"] or 0.0) >= 0.9 and rtc["episodes"] >= 20
    if rtc is not None and xf is not None and rtc["max_splice_accel_jump"] is not None \
            and xf["max_splice_accel_jump"] is not None:
        targets["rtc_splice_jump_le_half_crossfade_at_300ms"] = \
            rtc["max_splice_accel_jump"] <= 0.5 * xf["max_splice_accel_jump"]
    fast, slow = get("async_rtc", SPEED_DELAY_MS, speed_rows), get("sync", SPEED_DELAY_MS, speed_rows)
    if fast is not None and slow is not None and fast["mean_time_to_success_s"]:
        # stop-and-go that never succeeds is slower than any finite time
        targets["rtc_1.5x_faster_than_sync_on_touch_at_300ms"] = slow["mean_time_to_success_s"] is None or \
            slow["mean_time_to_success_s"] >= 1.5 * fast["mean_time_to_success_s"]
    return {"benchmark": "delay", "task": task, "config": config, "episodes_per_row": episodes,
            "wall_s": round(wall_s, 1), "rows": rows, "speed_rows": speed_rows, "targets": targets,
            "passed": all(targets.values())}
