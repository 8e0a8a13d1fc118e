"""``vla-runtime bench interrupt``: a new instruction mid-reach, with interruption on and off, in one run.

Through the whole graph (sim_robot, controller_bridge, slow_reasoner, action_chunk_node as processes
over DDS; ``config/sim_panda_reach.yaml``, the trained reference policy, unless ``--config``), per
episode (seeds as ``vla-runtime eval``: cube poses from the seed): "touch the red cube" is set and the
run starts (as an eval episode), and mid-reach "touch the blue cube" is published on
``/vla/instruction``: ``switch_after_s`` (0.7 s) after ``/vla/resume``, or earlier once the TCP has
covered :data:`MID_REACH_FRACTION` of its distance to the red cube (a near cube is reached in well
under 0.7 s: a switch with the hand already at red would measure nothing about interruption). Each
side runs its own graph:

* ``interrupt``: the fast path as shipped (core/interruption: the old plan is brought to rest within
  the acceleration limits and the robot holds until a latent computed after the new instruction);
* ``no_interrupt``: ``action_chunk_node`` with ``interrupt:=false``: the old plan runs on until the
  slow path's next latent changes the guidance.

Per side, over the episodes:

* ``success_rate``: the TCP (``/ee_pose`` → fingertip point) came within the success radius
  (sim/tasks.SUCCESS_RADIUS_M) of the blue cube before the task's time limit AND never within it of
  the red cube after the switch (``touched_old_target`` counts the episodes that did);
* ``instruction_to_motion_ms`` (p50, p99, max): from the publish of the new instruction to the first
  moment the TCP moves toward the blue cube: its velocity (measured, the finite difference of
  ``/ee_pose`` over :data:`VELOCITY_WINDOW_S`, taken at the window's middle) has a component toward
  the blue cube above :data:`MOTION_MARGIN_MPS` that exceeds its component toward the red cube by
  that margin too. An episode whose TCP already met that test just before the switch (its path to
  red happened to head toward blue) says nothing about turning: it is counted in
  ``motion_undetermined`` and left out, as is one that never met it;
* ``stop_distance_mm`` (p50, p99, max): how far the TCP went on toward the red cube after the
  switch: the largest projection of its displacement since the switch onto the direction from
  where it was at the switch to the red cube, up to the moment it moved toward blue (episodes
  without that moment are left out);
* ``switch_at_s`` and ``old_target_distance_at_switch_mm`` (p50, min): when the switch came and how
  far the TCP then was from the red cube;
* ``min_old_target_distance_mm``: the closest the TCP came to the red cube after the switch (p50, min);
* from the fast path's diagnostics (interruption side): ``instruction_to_first_chunk_ms`` (receive of
  the instruction → the first chunk computed from a latent for it merged) and
  ``instruction_to_latent_ms``, p50/p99.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["SIDES", "bench_interrupt", "instruction_to_motion_s", "stop_distance_m"]

#: Each side's extra action_chunk_node parameters.
SIDES: dict[str, dict] = {"interrupt": {"interrupt": True}, "no_interrupt": {"interrupt": False}}
SWITCH_AFTER_S = 0.7
#: ... or once the TCP has covered this fraction of its distance to the old target, if that comes first.
MID_REACH_FRACTION = 0.5
FROM_COLOUR, TO_COLOUR = "red", "blue"
#: The TCP's velocity is the finite difference of /ee_pose over this window (s).
VELOCITY_WINDOW_S = 0.04
#: Toward the new target, and by this much more than toward the old one (m/s).
MOTION_MARGIN_MPS = 0.02
#: How long before the switch the motion test must NOT hold for an episode to count (s).
BEFORE_SWITCH_S = 0.1


def _velocities(ts: np.ndarray, ps: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mid times, positions at the window's end, velocities) over sliding windows of ``window_s``."""
    j = np.searchsorted(ts, ts - window_s, side="right") - 1
    ok = (j >= 0) & (ts - ts[np.maximum(j, 0)] > 0.5 * window_s)
    k = np.nonzero(ok)[0]
    j = j[ok]
    dt = (ts[k] - ts[j])[:, None]
    return 0.5 * (ts[k] + ts[j]), ps[k], (ps[k] - ps[j]) / dt


def _toward(p: np.ndarray, v: np.ndarray, target: np.ndarray) -> np.ndarray:
    d = np.asarray(target, float) - p
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.sum(v * d / np.maximum(n, 1e-9), axis=1)


def instruction_to_motion_s(ts: Sequence[float], tcp: np.ndarray, t_switch: float, old_target: Sequence[float],
                            new_target: Sequence[float], window_s: float = VELOCITY_WINDOW_S,
                            margin_mps: float = MOTION_MARGIN_MPS,
                            before_s: float = BEFORE_SWITCH_S) -> tuple[float | None, bool]:
    """When the TCP first moves toward the new target after ``t_switch`` (see the module docstring).

    Args:
        ts: Sample times (s, ascending), including some before the switch.
        tcp: (n, 3) TCP positions.
        t_switch: When the new instruction was published (same clock).
        old_target, new_target: The two targets' positions.
        window_s: Finite-difference window.
        margin_mps: Required speed toward the new target, and its lead over the speed toward the old one.
        before_s: The test must not hold in the ``before_s`` before the switch.

    Returns:
        (seconds from the switch, or None when it never happens or is undetermined; undetermined:
        the test already held just before the switch).
    """
    t = np.asarray(ts, float)
    p = np.asarray(tcp, float)
    if len(t) < 3:
        return None, False
    tm, pe, v = _velocities(t, p, window_s)
    to_new, to_old = _toward(pe, v, new_target), _toward(pe, v, old_target)
    moving = (to_new > margin_mps) & (to_new - to_old > margin_mps)
    before = (tm >= t_switch - before_s) & (tm < t_switch)
    if moving[before].any():
        return None, True
    after = np.nonzero(moving & (tm >= t_switch))[0]
    return (float(tm[after[0]] - t_switch), False) if len(after) else (None, False)


def stop_distance_m(ts: Sequence[float], tcp: np.ndarray, t_switch: float, old_target: Sequence[float],
                    until: float | None = None) -> float:
    """How far the TCP went on toward ``old_target`` after ``t_switch`` (up to ``until``), in metres (≥ 0)."""
    t = np.asarray(ts, float)
    p = np.asarray(tcp, float)
    sel = (t >= t_switch) & (t <= (math.inf if until is None else until))
    if not sel.any():
        return 0.0
    i0 = int(np.argmax(sel))
    p0 = p[i0]
    d = np.asarray(old_target, float) - p0
    u = d / max(float(np.linalg.norm(d)), 1e-9)
    return float(max(0.0, np.max((p[sel] - p0) @ u)))


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def _num(kv: dict, key: str) -> float | None:
    try:
        x = float(kv.get(key, "nan"))
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _episode(s, seed: int, switch_after_s: float, interrupt: bool) -> dict:
    from vla_runtime.core.contract import DIAG_FAST_PATH, SERVICE_RESUME
    from vla_runtime.sim.tasks import instruction_for, is_success, tcp_from_hand

    g = s.g
    spec, want = s.prepare("touch", seed, colour=FROM_COLOUR)
    old_name, new_name = f"{FROM_COLOUR}_cube", f"{TO_COLOUR}_cube"
    ok, msg = g.trigger(SERVICE_RESUME)
    if not ok:
        raise RuntimeError(f"bench interrupt: /vla/resume refused: {msg}")
    t0 = time.monotonic()
    tcp0 = s._tcp()[0]
    d0 = float(np.linalg.norm(tcp0 - want[old_name])) if tcp0 is not None else math.inf
    t_switch = None
    d_switch = math.nan
    success_t = None
    touched_old = False
    min_old = math.inf
    while True:
        now = time.monotonic()
        if now - t0 > spec.time_limit_s:
            break
        tcp, tcp_mono = s._tcp()
        objects = s.objects.positions
        old, new = objects.get(old_name, want[old_name]), objects.get(new_name, want[new_name])
        d_old = float(np.linalg.norm(tcp - old)) if tcp is not None else math.inf
        if t_switch is None and (now - t0 >= switch_after_s or d_old <= (1.0 - MID_REACH_FRACTION) * d0):
            s.instruction_pub.publish(s._String(data=instruction_for(TO_COLOUR)))
            t_switch, d_switch = time.monotonic(), d_old
            continue
        if tcp is not None and t_switch is not None and tcp_mono >= t_switch:
            min_old = min(min_old, float(np.linalg.norm(tcp - old)))
            touched_old = touched_old or is_success(tcp, old)
            if is_success(tcp, new):
                success_t = tcp_mono - t_switch
                break
        g.check_alive("an interruption episode")
        time.sleep(0.005)
    t_end = time.monotonic()
    if t_switch is None:  # the time limit is shorter than the switch time: a bad argument, caught earlier
        raise RuntimeError("bench interrupt: the episode ended before the switch")
    samples = [(t, tcp_from_hand(p, q)) for t, p, q in s.pose.since(t_switch - 0.5) if t <= t_end]
    ts = np.array([t for t, _ in samples])
    ps = np.array([p for _, p in samples]).reshape(-1, 3)
    motion_s, undetermined = instruction_to_motion_s(ts, ps, t_switch, old, new)
    stop = None if motion_s is None else stop_distance_m(ts, ps, t_switch, old, t_switch + motion_s)
    # The fast path's own figures for this interruption: a diagnostics entry from after it.
    fresh = t_switch + 0.1
    if interrupt:
        g.wait(lambda: any(_num(kv, "instruction_to_first_chunk_ms") is not None
                           for _, kv in s.diag.since(DIAG_FAST_PATH, fresh)), 2.5)
    kv = next((kv for _, kv in s.diag.since(DIAG_FAST_PATH, fresh)
               if _num(kv, "instruction_to_first_chunk_ms") is not None), {})
    return {
        "seed": seed,
        "success": success_t is not None and not touched_old,
        "reached_new_target": success_t is not None,
        "touched_old_target": touched_old,
        "time_to_new_target_s": None if success_t is None else round(success_t, 3),
        "instruction_to_motion_ms": None if motion_s is None else round(motion_s * 1e3, 1),
        "motion_undetermined": undetermined or motion_s is None,
        "stop_distance_mm": None if stop is None else round(stop * 1e3, 1),
        "switch_at_s": round(t_switch - t0, 3),
        "old_target_distance_at_switch_mm": round(d_switch * 1e3, 1) if math.isfinite(d_switch) else None,
        "min_old_target_distance_mm": round(min_old * 1e3, 1) if math.isfinite(min_old) else None,
        "instruction_to_first_chunk_ms": _num(kv, "instruction_to_first_chunk_ms"),
        "instruction_to_latent_ms": _num(kv, "instruction_to_latent_ms"),
        "fast_stop_s": _num(kv, "last_stop_s"),
    }


def _side(name: str, config: Path, episodes: int, seed0: int, switch_after_s: float,
          say: Callable[[str], None]) -> dict:
    from vla_runtime.commands.evaluation import _GraphSession

    rows = []
    with _GraphSession("async", None, config, say, params={"action_chunk_node": SIDES[name]}) as s:
        for i in range(episodes):
            r = _episode(s, seed0 + i, switch_after_s, SIDES[name]["interrupt"])
            rows.append(r)
            say(f"bench interrupt: {name} episode {i + 1}/{episodes}: "
                f"{'success' if r['success'] else 'FAIL'}, motion toward blue after "
                f"{r['instruction_to_motion_ms']} ms, stop distance {r['stop_distance_mm']} mm")
        kv = s.diag.fast_path()

    def vals(key: str) -> list[float]:
        return [r[key] for r in rows if r[key] is not None]

    motion, stops, at_switch = vals("instruction_to_motion_ms"), vals("stop_distance_mm"), \
        vals("old_target_distance_at_switch_mm")
    first, latent, closest = vals("instruction_to_first_chunk_ms"), vals("instruction_to_latent_ms"), \
        vals("min_old_target_distance_mm")
    return {
        "side": name,
        "episodes": len(rows),
        "success_rate": sum(r["success"] for r in rows) / len(rows),
        "reached_new_target": sum(r["reached_new_target"] for r in rows),
        "touched_old_target": sum(r["touched_old_target"] for r in rows),
        "instruction_to_motion_ms": {"p50": _pct(motion, 50), "p99": _pct(motion, 99),
                                     "max": max(motion) if motion else None, "n": len(motion)},
        "motion_undetermined": sum(r["motion_undetermined"] for r in rows),
        "stop_distance_mm": {"p50": _pct(stops, 50), "p99": _pct(stops, 99), "max": max(stops) if stops else None},
        "min_old_target_distance_mm": {"p50": _pct(closest, 50), "min": min(closest) if closest else None},
        "switch_at_s": {"p50": _pct([r["switch_at_s"] for r in rows], 50), "min": min(r["switch_at_s"] for r in rows)},
        "old_target_distance_at_switch_mm": {"p50": _pct(at_switch, 50), "min": min(at_switch) if at_switch else None},
        "instruction_to_first_chunk_ms": {"p50": _pct(first, 50), "p99": _pct(first, 99), "n": len(first)},
        "instruction_to_latent_ms": {"p50": _pct(latent, 50), "p99": _pct(latent, 99)},
        "fast_interruptions": _num(kv, "interruptions"),
        "per_episode": rows,
    }


def bench_interrupt(episodes: int = 20, config: str | None = None, seed: int = 0,
                    switch_after_s: float = SWITCH_AFTER_S, sides: Sequence[str] = tuple(SIDES),
                    log: Callable[[str], None] | None = None) -> dict:
    """Run both sides; returns ``sides`` (one row each, see the module docstring), ``targets``, ``passed``.

    Args:
        episodes: Episodes per side (≥ 20 for the targets to count).
        config: Base config (default ``config/sim_panda_reach.yaml``).
        seed: Episode seed (seeds ``seed * 1000 + i``, as ``vla-runtime eval``).
        switch_after_s: When the new instruction is published, after the run starts (s).
        sides: Names from :data:`SIDES`.
        log: Progress lines (None: quiet).
    """
    from vla_runtime.commands.evaluation import DEFAULT_CONFIG, EPISODE_SEED_STRIDE
    from vla_runtime.sim.tasks import TIME_LIMIT_S

    bad = [x for x in sides if x not in SIDES]
    if bad:
        raise ValueError(f"unknown sides {bad}; choose from {list(SIDES)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 < switch_after_s < TIME_LIMIT_S["touch"]:
        raise ValueError(f"switch_after_s must be in (0, {TIME_LIMIT_S['touch']}) s, got {switch_after_s}")
    base = Path(config) if config else DEFAULT_CONFIG
    say = log or (lambda _s: None)
    t_start = time.monotonic()
    rows = [_side(name, base, episodes, seed * EPISODE_SEED_STRIDE, switch_after_s, say) for name in sides]
    targets: dict[str, bool] = {}
    on = next((r for r in rows if r["side"] == "interrupt"), None)
    if on is not None:
        targets["success_ge_90pct_over_20"] = on["success_rate"] >= 0.9 and on["episodes"] >= 20
        targets["motion_toward_new_target_measured"] = on["instruction_to_motion_ms"]["n"] > 0
    return {"benchmark": "interrupt", "config": str(base), "episodes_per_side": episodes,
            "switch_after_s": switch_after_s, "from": FROM_COLOUR, "to": TO_COLOUR,
            "wall_s": round(time.monotonic() - t_start, 1), "sides": rows, "targets": targets,
            "passed": all(targets.values())}
