"""Interruption (core/interruption): the stopping profile and the latent-validity rule, injected clock."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from vla_runtime.core.chunk_scheduler import KERNEL, ChunkScheduler, ChunkSchedulerConfig
from vla_runtime.core.interruption import (
    GateVerdict,
    InstructionGate,
    acceleration_bounds,
    stopping_profile,
)

DT_CMD = 0.01


def _kinematics(points: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.diff(points, axis=0) / dt
    return v, np.diff(v, axis=0) / dt


# ------------------------------------------------------------------------------ stopping profile
@pytest.mark.parametrize("seed", range(20))
def test_stop_reaches_rest_within_the_bounds_and_starts_where_the_plan_is(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = 7 if seed % 2 else 8
    p0 = rng.uniform(-2, 2, a)
    v0 = rng.uniform(-1.5, 1.5, a)
    bound = rng.uniform(2.0, 20.0, a)
    stop = stopping_profile(p0, v0, bound, DT_CMD)
    pts = stop.points
    np.testing.assert_array_equal(pts[0], p0)  # position continuous at the switch
    assert stop.dt_s <= DT_CMD + 1e-12
    assert stop.duration_s == pytest.approx((len(pts) - 1) * stop.dt_s)
    v, acc = _kinematics(pts, stop.dt_s)
    # The first segment leaves with the plan's velocity, less half a step of deceleration.
    np.testing.assert_allclose(v[0], v0 - 0.5 * stop.deceleration * np.sign(v0) * stop.dt_s, atol=1e-9)
    # Velocity falls to rest: the last segment is half a step of deceleration, then nothing moves.
    np.testing.assert_allclose(v[-1], 0.5 * v0 / stop.duration_s * stop.dt_s, atol=1e-9)
    assert np.all(np.abs(v[-1]) <= np.abs(v0) * stop.dt_s / stop.duration_s + 1e-9)
    # Deceleration never exceeds the bound (and one dim uses all of it: the stop is as short as it can be).
    assert np.all(np.abs(acc) <= bound * (1 + 1e-6))
    assert np.all(stop.deceleration <= bound * (1 + 1e-9))
    assert np.max(stop.deceleration / bound) == pytest.approx(1.0)
    # Every dim slows monotonically, never reverses, and all stop together on the line of motion.
    assert np.all(v * np.sign(v0) >= -1e-12)
    travel = pts[-1] - p0
    np.testing.assert_allclose(travel, 0.5 * v0 * stop.duration_s, atol=1e-12)
    np.testing.assert_allclose(stop.stop_distance, np.abs(travel))


def test_stop_sampled_by_the_scheduler_at_the_command_rate_keeps_the_bound() -> None:
    """What the node publishes: the stop installed in the scheduler, windows sampled at dt_cmd, off-grid."""
    p0, v0 = np.array([0.3, -1.0, 0.5]), np.array([0.8, -0.6, 0.0])
    bound = np.array([5.0, 4.0, 10.0])
    stop = stopping_profile(p0, v0, bound, DT_CMD)
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=0.1), action_dim=3)
    s.replace(stop.points, t0_s=10.0, dt_s=stop.dt_s)
    times, values = s.window(10.0037, 100, DT_CMD)
    assert times[-1] <= 10.0 + stop.duration_s + 1e-9  # no extrapolation past rest
    _, acc = _kinematics(values, DT_CMD)
    assert np.all(np.abs(acc) <= bound * (1 + 1e-6))
    assert s.active_until() == pytest.approx(10.0 + stop.duration_s)


def test_nothing_moving_stops_at_once() -> None:
    stop = stopping_profile([1.0, 2.0], [0.0, 0.0], [5.0, 5.0], DT_CMD)
    assert stop.duration_s == 0.0
    np.testing.assert_array_equal(stop.points, [[1.0, 2.0], [1.0, 2.0]])


def test_dims_without_a_bound_stop_together_with_the_joints() -> None:
    # dim 1 (a gripper, no bound) moves; dim 0 (a joint) sets the time to rest.
    stop = stopping_profile([0.0, 0.02], [1.0, 0.05], [4.0, math.inf], DT_CMD)
    assert stop.duration_s == pytest.approx(0.25)
    np.testing.assert_allclose(stop.points[-1], [0.125, 0.02 + 0.5 * 0.05 * 0.25])
    # Only unbounded dims move: they take unbounded_stop_s.
    stop = stopping_profile([0.0, 0.02], [0.0, 0.05], [4.0, math.inf], DT_CMD, unbounded_stop_s=0.2)
    assert stop.duration_s == pytest.approx(0.2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"position": [0.0, math.nan]}, "finite"),
    ({"velocity": [0.0]}, "one shape"),
    ({"accel_bound": [1.0, 0.0]}, "accel_bound must be > 0"),
    ({"accel_bound": [1.0, math.nan]}, "accel_bound must be > 0"),
    ({"dt_s": 0.0}, "dt_s must be > 0, got 0.0"),
])
def test_bad_stop_inputs_are_named(kwargs: dict, match: str) -> None:
    args = {"position": [0.0, 0.0], "velocity": [1.0, 1.0], "accel_bound": [1.0, 1.0], "dt_s": DT_CMD, **kwargs}
    with pytest.raises(ValueError, match=match):
        stopping_profile(**args)


def test_acceleration_bounds_are_the_scaled_joint_limits() -> None:
    joints = [SimpleNamespace(name="j1", acceleration=10.0), SimpleNamespace(name="j2", acceleration=4.0)]
    b = acceleration_bounds(["j2", "arm/gripper", "j1"], joints, 0.5)
    np.testing.assert_array_equal(b, [2.0, math.inf, 5.0])
    with pytest.raises(ValueError, match="acceleration_scale"):
        acceleration_bounds(["j1"], joints, 0.0)


# ------------------------------------------------------------------------------ scheduler.replace
@pytest.mark.parametrize("kernel", [False, True] if KERNEL else [False])
def test_a_new_chunk_blends_in_from_the_stop(kernel: bool) -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.2), action_dim=1, kernel=kernel)
    s.submit(np.arange(20.0)[:, None] * 0.1, obs_time_s=0.0, now_s=0.0)  # 1 unit/s
    stop = stopping_profile(s.peek(0.5), [1.0], [4.0], DT_CMD)
    s.replace(stop.points, 0.5, stop.dt_s)
    _, vals = s.window(0.5, 5, DT_CMD)
    np.testing.assert_allclose(vals[:, 0], stopping_profile([0.5], [1.0], [4.0], DT_CMD).points[:5, 0])
    before = s.peek(0.6)
    assert s.submit(np.full((10, 1), 3.0), obs_time_s=0.55, now_s=0.6) >= 0  # the new target's chunk
    _, vals = s.window(0.6, 40, DT_CMD)
    assert vals[0, 0] == pytest.approx(before[0])  # continuous: the cross-fade starts from the stop
    assert vals[-1, 0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="non-finite"):
        s.replace(np.array([[math.nan]]), 1.0, DT_CMD)
    with pytest.raises(ValueError, match="dt_s must be > 0"):
        s.replace(np.zeros((2, 1)), 1.0, 0.0)


# ------------------------------------------------------------------------------ latent validity
def test_a_new_instruction_refuses_latents_observed_before_it() -> None:
    g = InstructionGate("touch the red cube", max_wait_s=2.0)
    assert g.judge(obs_stamp_ns=5, now_s=1.0) is GateVerdict.VALID  # nothing pending
    assert not g.instruction_arrived("touch the red cube", 100, 1.0)  # the same words: no interruption
    assert g.instruction_arrived("touch the blue cube", recv_wall_ns=1_000, recv_mono_s=10.0)
    assert g.pending and g.interruptions == 1
    assert g.judge(999, 10.1) is GateVerdict.WAIT
    assert g.judge(1_000, 10.2) is GateVerdict.WAIT  # at the arrival: not after it
    assert g.judge(1_001, 10.25) is GateVerdict.VALID
    assert not g.pending
    assert g.last_instruction_to_latent_ms == pytest.approx(250.0)
    assert g.judge(500, 10.3) is GateVerdict.VALID  # once valid, the gate is open (the age rule judges age)
    # The first chunk merged after the valid latent is timed, once.
    assert g.awaiting_first_chunk
    g.chunk_merged(10.3)
    g.chunk_merged(10.5)
    assert g.last_instruction_to_first_chunk_ms == pytest.approx(300.0)
    assert not g.awaiting_first_chunk


def test_chunks_merged_while_pending_are_not_the_first_for_the_new_instruction() -> None:
    g = InstructionGate("a", max_wait_s=2.0)
    g.instruction_arrived("b", 1_000, 1.0)
    g.chunk_merged(1.1)  # an old chunk (the node drops those; the gate does not count one anyway)
    assert g.last_instruction_to_first_chunk_ms is None
    assert g.judge(2_000, 1.2) is GateVerdict.VALID
    g.chunk_merged(1.25)
    assert g.last_instruction_to_first_chunk_ms == pytest.approx(250.0)


def test_an_interruption_without_a_valid_latent_becomes_stale_after_max_wait() -> None:
    g = InstructionGate("a", max_wait_s=1.0)
    g.instruction_arrived("b", 1_000, 5.0)
    assert g.judge(10, 5.99) is GateVerdict.WAIT
    assert g.judge(10, 6.01) is GateVerdict.STALE
    assert g.pending  # still refused: a later valid latent ends it
    assert g.judge(1_001, 6.5) is GateVerdict.VALID


def test_a_newer_instruction_while_pending_moves_the_bar() -> None:
    g = InstructionGate("a", max_wait_s=2.0)
    g.instruction_arrived("b", 1_000, 1.0)
    g.instruction_arrived("c", 2_000, 1.1)
    assert g.interruptions == 2
    assert g.judge(1_500, 1.2) is GateVerdict.WAIT  # computed after "b" but before "c"
    assert g.judge(2_001, 1.3) is GateVerdict.VALID
    assert g.last_instruction_to_latent_ms == pytest.approx(200.0)
    # Back to an earlier instruction is a change too.
    assert g.instruction_arrived("a", 3_000, 2.0)


def test_the_first_instruction_of_an_unknown_start_is_not_an_interruption() -> None:
    g = InstructionGate(None, max_wait_s=1.0)
    assert not g.instruction_arrived("a", 1_000, 1.0)
    assert not g.pending and g.instruction == "a"
    assert g.instruction_arrived("b", 2_000, 2.0)
    with pytest.raises(ValueError, match="max_wait_s must be > 0, got 0"):
        InstructionGate("a", max_wait_s=0)


# ------------------------------------------------------------------------------ the detector
def test_the_hold_streak_monitor_ignores_the_wait_for_a_new_instructions_latent_but_not_a_stale_one() -> None:
    from vla_runtime.core.contract import HOLD_NEW_INSTRUCTION, HOLD_STALE_LATENT, STREAK_EXEMPT_HOLDS
    from vla_runtime.core.failure_detection import HoldStreakMonitor

    m = HoldStreakMonitor(3, ignore=STREAK_EXEMPT_HOLDS)
    m.note_plan()
    for _ in range(30):
        m.note_hold(HOLD_NEW_INSTRUCTION)
    assert m.check().ok
    for _ in range(3):
        m.note_hold(HOLD_STALE_LATENT)
    assert not m.check().ok


# ------------------------------------------------------------------------------ bench interrupt's measures
def _path(old, new, t_switch=1.0, turn_at=1.2, speed=0.2, dt=0.008):
    """A TCP moving toward ``old`` at ``speed``, still from t_switch+0.05 until ``turn_at``, then toward ``new``."""
    ts = np.arange(0.0, 2.0, dt)
    p = np.zeros(3)
    out = []
    for t in ts:
        out.append(p.copy())
        if t < t_switch + 0.05:
            d = old - p
        elif t < turn_at:
            continue
        else:
            d = new - p
        p = p + speed * dt * d / np.linalg.norm(d)
    return ts, np.array(out)


def test_motion_toward_the_new_target_is_timed_from_the_switch() -> None:
    from vla_runtime.bench.interrupt import instruction_to_motion_s, stop_distance_m

    old, new = np.array([0.5, 0.0, 0.0]), np.array([0.0, 0.5, 0.0])
    ts, tcp = _path(old, new)
    t, undetermined = instruction_to_motion_s(ts, tcp, 1.0, old, new)
    assert not undetermined
    assert t == pytest.approx(0.2, abs=0.03)  # the turn at 1.2 s, seen within the 40 ms window
    # The stop distance: 50 ms more at 0.2 m/s toward the old target.
    assert stop_distance_m(ts, tcp, 1.0, old, until=1.0 + t) == pytest.approx(0.01, abs=0.002)


def test_a_path_already_heading_toward_the_new_target_is_undetermined() -> None:
    from vla_runtime.bench.interrupt import instruction_to_motion_s

    old, new = np.array([0.5, 0.0, 0.0]), np.array([0.0, 0.5, 0.0])
    ts, tcp = _path(new, new)  # moving toward "new" all along
    t, undetermined = instruction_to_motion_s(ts, tcp, 1.0, old, new)
    assert t is None and undetermined
