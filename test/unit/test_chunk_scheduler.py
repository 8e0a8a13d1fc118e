"""ChunkScheduler with an injected clock (all times are arguments)."""

from __future__ import annotations

import numpy as np
import pytest

from vla_runtime.core.chunk_scheduler import ChunkScheduler, ChunkSchedulerConfig, SchedulerStatus


def _ramp(h: int, a: int = 2, start: float = 0.0) -> np.ndarray:
    """Chunk whose action i equals start + i in every dimension."""
    return np.repeat((start + np.arange(h, dtype=float))[:, None], a, axis=1)


def test_chunk_arriving_two_steps_late_starts_at_its_third_action() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.0))
    skipped = s.submit(_ramp(8), obs_time_s=1.0, now_s=1.2)
    assert skipped == 2
    np.testing.assert_allclose(s.sample(1.2), [2.0, 2.0])
    np.testing.assert_allclose(s.sample(1.25), [2.5, 2.5])
    assert s.status is SchedulerStatus.RUNNING
    assert s.delay_estimate_s == pytest.approx(0.2)
    assert s.delay_percentile_s(50) == pytest.approx(0.2)


def test_a_chunk_computed_while_the_robot_held_starts_at_its_first_action() -> None:
    """Stop-and-go: the arm stood still for the 0.3 s inference, so no action of the chunk has passed."""
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.0))
    assert s.submit(_ramp(8), obs_time_s=1.0, now_s=1.3, start_s=1.3) == 0
    np.testing.assert_allclose(s.sample(1.3), [0.0, 0.0])
    np.testing.assert_allclose(s.sample(1.45), [1.5, 1.5])
    np.testing.assert_allclose(s.sample(2.0), [7.0, 7.0])  # the whole chunk runs, to its last action
    assert s.sample(2.01) is None
    assert s.delay_estimate_s == pytest.approx(0.3)  # the delay is still the observation's age
    # A start between the observation and now skips what passed since the start.
    s2 = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.0))
    assert s2.submit(_ramp(8), obs_time_s=1.0, now_s=1.3, start_s=1.1) == 2
    np.testing.assert_allclose(s2.sample(1.3), [2.0, 2.0])
    for bad in (0.9, 1.4):
        with pytest.raises(ValueError, match=rf"start_s must lie in \[obs_time_s, now_s\] = \[1.0, 1.3\], got {bad}"):
            s2.submit(_ramp(8), obs_time_s=1.0, now_s=1.3, start_s=bad)


def test_blending_makes_the_switch_continuous() -> None:
    def run(blend_s: float) -> float:
        s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=blend_s, blend_shape="smoothstep"))
        dt = 1 / 30
        s.submit(_ramp(30) * dt, obs_time_s=0.0, now_s=0.0)  # unit-slope ramp in time
        t = np.arange(0.0, 0.8, 0.01)
        out = []
        for tk in t:
            if abs(tk - 0.3) < 1e-9:
                # New chunk: same slope but offset by +1.0 (model bias), 2 ticks late.
                obs = 0.3 - 2 * dt
                s.submit(_ramp(30) * dt + obs + 1.0, obs_time_s=obs, now_s=0.3)
            out.append(s.sample(float(tk))[0])
        return float(np.abs(np.diff(out)).max())

    hard = run(0.0)
    smooth = run(0.2)
    assert hard > 0.9  # the bias shows up as a jump
    # Motion is 0.01 per 10 ms; the 1.0 offset is spread over 20 samples (smoothstep peak 1.5×).
    assert smooth < 0.01 + 1.0 * 1.5 / 20 + 1e-6
    assert smooth < 0.2 * hard


def test_value_at_switch_equals_previous_command() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.3, blend_shape="cosine"))
    s.submit(_ramp(10), 0.0, 0.0)
    before = s.sample(0.35)
    s.submit(_ramp(10) + 5.0, 0.3, 0.35)
    np.testing.assert_allclose(s.sample(0.35), before)
    np.testing.assert_allclose(s.sample(0.65), _ramp(10)[0] + 5.0 + 3.5)  # blend over: pure new chunk


def test_hold_when_chunk_runs_out_without_extrapolation() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.0))
    s.submit(_ramp(5), 0.0, 0.0)  # last point at t = 0.4
    np.testing.assert_allclose(s.sample(0.4), [4.0, 4.0])
    assert s.sample(0.41) is None
    assert s.status is SchedulerStatus.HOLD
    np.testing.assert_allclose(s.hold_value, [4.0, 4.0])  # not 4.1: no extrapolation
    times, values = s.window(0.41, 5, 0.1)
    assert times.size == 0 and values.shape == (0, 2)
    # The next chunk blends in from the held value.
    s2 = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.2))
    s2.submit(_ramp(5), 0.0, 0.0)
    s2.sample(0.4)
    assert s2.sample(0.5) is None
    s2.submit(_ramp(5) + 10.0, 0.5, 0.5)
    np.testing.assert_allclose(s2.sample(0.5), [4.0, 4.0])


def test_stale_and_out_of_order_chunks_rejected() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, max_delay_s=1.0))
    assert s.submit(_ramp(5), 1.0, 1.0) == 0
    assert s.submit(_ramp(5), 0.9, 1.1) == -1  # older observation than the executing chunk
    assert s.submit(_ramp(5), 2.0, 3.5) == -1  # over max_delay_s
    assert s.stats["rejected_stale"] == 1 and s.stats["rejected_delay"] == 1
    with pytest.raises(ValueError, match="obs_time_s must be ≤ now_s"):
        s.submit(_ramp(5), 5.0, 4.0)
    with pytest.raises(ValueError, match="action dim 2, got 3"):
        s.submit(_ramp(5, a=3), 1.2, 1.2)
    s2 = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0))
    assert s2.submit(_ramp(5), 0.0, 1.0) == -1  # entirely in the past


def test_interpolates_30hz_chunk_at_100hz() -> None:
    dt = 1 / 30
    t_pts = np.arange(12) * dt
    lin = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=0.0))
    lin.submit(np.stack([3 * t_pts, -t_pts], axis=1), 0.0, 0.0)
    t = np.arange(0.0, t_pts[-1], 0.01)
    got = np.array([lin.sample(float(tk)) for tk in t])
    np.testing.assert_allclose(got, np.stack([3 * t, -t], axis=1), atol=1e-12)

    cub = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=0.0, interpolation="cubic"))
    cub.submit((t_pts**2)[:, None], 0.0, 0.0)
    inner = t[(t >= dt) & (t <= t_pts[-2])]  # Catmull-Rom is exact for quadratics inside
    got = np.array([cub.peek(float(tk))[0] for tk in inner])
    np.testing.assert_allclose(got, inner**2, atol=1e-12)

    times, values = lin.window(0.0, 5, 0.01)
    np.testing.assert_allclose(times, np.arange(5) * 0.01)
    np.testing.assert_allclose(values[:, 0], 3 * times)
    times, _ = lin.window(0.3, 100, 0.01)
    assert times[-1] <= t_pts[-1] + 1e-9 and len(times) < 100  # stops at the chunk's end


def test_prefix_marks_actions_executed_during_next_inference() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.0))
    s.submit(_ramp(6), 0.0, 0.0)
    prefix, mask = s.prefix(0.2, delay_s=0.25, horizon=6)
    np.testing.assert_allclose(prefix[:, 0], [2, 3, 4, 5, 5, 5])  # hold value past the end
    np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
    empty, m = ChunkScheduler().prefix(0.0, None, 4)
    assert empty.shape == (4, 0) and not m.any()


def test_reset_and_hold() -> None:
    s = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=10.0, blend_s=0.2))
    s.reset(np.array([1.0, 2.0]))
    assert s.status is SchedulerStatus.HOLD and s.sample(0.0) is None
    np.testing.assert_allclose(s.hold_value, [1.0, 2.0])
    s.submit(_ramp(10), 0.0, 0.1)
    np.testing.assert_allclose(s.sample(0.1), [1.0, 2.0])  # blends in from the measured state
    s.sample(0.2)
    s.hold()
    assert s.status is SchedulerStatus.HOLD and s.sample(0.25) is None
    with pytest.raises(ValueError, match="action dim 2, got 3"):
        s.reset(np.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"blend_s": -1}, "blend_s must be ≥ 0, got -1"),
        ({"chunk_rate_hz": 0}, "chunk_rate_hz must be > 0, got 0"),
        ({"blend_shape": "step"}, "got 'step'"),
        ({"delay_ema_alpha": 0}, "delay_ema_alpha must be in"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ChunkSchedulerConfig(**kwargs)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
@pytest.mark.parametrize("shape", ["linear", "smoothstep", "cosine"])
def test_window_equals_pointwise_samples_through_nested_blends(interpolation, shape):
    """The vectorised window() is the same plan as sampling point by point (blends within blends)."""
    from vla_runtime.core.chunk_scheduler import ChunkScheduler, ChunkSchedulerConfig

    rng = np.random.default_rng(3)
    sch = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=0.2, blend_shape=shape,
                                              interpolation=interpolation), action_dim=3)
    t = 0.0
    for _ in range(4):  # chunks every 1.5 periods: the 0.2 s blends overlap and nest
        sch.submit(np.cumsum(rng.normal(0, 0.02, (16, 3)), axis=0) + rng.normal(0, 0.1, 3), t, t + 0.01)
        t += 0.05
    times, values = sch.window(t, 60, 0.005)
    assert len(times) > 10
    for tk, v in zip(times, values):
        np.testing.assert_allclose(v, sch.peek(float(tk)), atol=1e-12)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_prefix_equals_pointwise_samples_through_nested_blends(interpolation):
    """The vectorised prefix() is the plan point by point, then the plan's last point (never extrapolated)."""
    rng = np.random.default_rng(4)
    sch = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=30.0, blend_s=0.2, interpolation=interpolation),
                         action_dim=2)
    t = 0.0
    for _ in range(4):
        sch.submit(np.cumsum(rng.normal(0, 0.02, (16, 2)), axis=0), t, t + 0.01)
        t += 0.05
    end = sch.active_until()
    prefix, mask = sch.prefix(t, delay_s=0.1, horizon=40)  # reaches past the plan's end
    for i, row in enumerate(prefix):
        ti = t + i / 30.0
        np.testing.assert_allclose(row, sch.peek(min(ti, end)), atol=1e-12)
    np.testing.assert_array_equal(mask, np.arange(40) / 30.0 < 0.1 - 1e-9)


# ------------------------------------------------------------------ the C kernel (core/_fastpath.c)
def test_the_c_kernel_is_built_here():
    """The bootstrap (pip install -e .) builds it; the loop's timing targets are measured with it."""
    from vla_runtime.core import chunk_scheduler

    assert chunk_scheduler.KERNEL, "vla_runtime/core/_fastpath.c was not built: the fast path runs on numpy"
    assert ChunkScheduler().kernel and not ChunkScheduler(kernel=False).kernel


def _twins(rng, **cfg):
    a = int(rng.integers(1, 9))
    conf = ChunkSchedulerConfig(**cfg)
    return ChunkScheduler(conf, action_dim=a, kernel=True), ChunkScheduler(conf, action_dim=a, kernel=False), a


@pytest.mark.parametrize("seed", range(24))
def test_kernel_window_and_prefix_equal_the_numpy_reference(seed):
    """Random streams of chunks (nested blends, 1-point chunks, late and rejected chunks, holds,
    resets): at every step the C kernel's window and prefix equal numpy's, bit for bit up to 1e-12."""
    rng = np.random.default_rng(seed)
    interpolation = ["linear", "cubic"][seed % 2]
    shape = ["linear", "smoothstep", "cosine"][seed % 3]
    c, py, a = _twins(rng, chunk_rate_hz=float(rng.choice([10.0, 30.0, 50.0])),
                      blend_s=float(rng.choice([0.0, 0.05, 0.2, 0.5])), blend_shape=shape, interpolation=interpolation)
    t = 0.0
    compared = 0
    for step in range(40):
        t += float(rng.uniform(0.005, 0.08))
        event = rng.random()
        if event < 0.55:
            h = int(rng.choice([1, 2, 3, 16]))
            chunk = np.cumsum(rng.normal(0, 0.05, (h, a)), axis=0) + rng.normal(0, 0.3, a)
            obs = t - float(rng.uniform(0.0, 0.12))
            assert c.submit(chunk, obs, t) == py.submit(chunk, obs, t)
        elif event < 0.65:
            c.sample(t), py.sample(t)
        elif event < 0.7:
            c.hold(), py.hold()
        elif event < 0.73:
            state = rng.normal(0, 0.3, a)
            c.reset(state), py.reset(state)
        n, dt = int(rng.integers(0, 40)), float(rng.choice([0.002, 0.01, 0.0333]))
        tw = t + float(rng.uniform(-0.05, 0.1))
        tc, vc = c.window(tw, n, dt)
        tp, vp = py.window(tw, n, dt)
        np.testing.assert_array_equal(tc, tp)
        np.testing.assert_allclose(vc, vp, rtol=0, atol=1e-12)
        h = int(rng.integers(1, 40))
        delay = None if step % 3 else float(rng.uniform(0, 0.2))
        pc, mc = c.prefix(tw, delay, h)
        pp, mp = py.prefix(tw, delay, h)
        np.testing.assert_allclose(pc, pp, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(mc, mp)
        assert mc.dtype == mp.dtype == bool
        compared += len(tc) + h
    assert compared > 200


def test_kernel_refuses_bad_input_by_name():
    from vla_runtime.core import _fastpath as k

    pts = np.zeros((3, 2))
    out = np.empty((4, 2))
    with pytest.raises(ValueError, match="only the last level may be a chunk"):
        k.sample(((0, pts, 0.0, 0.1, False), (1, np.zeros(2))), np.zeros(4), out)
    with pytest.raises(ValueError, match="a blend needs a level to blend from"):
        k.sample(((2, pts, 0.0, 0.1, False, 0.0, 0.1, 0),), np.zeros(4), out)
    with pytest.raises(ValueError, match="level 1 has action dim 3, level 0 has 2"):
        k.sample(((2, pts, 0.0, 0.1, False, 0.0, 0.1, 0), (1, np.zeros(3))), np.zeros(4), out)
    with pytest.raises(ValueError, match="chunk points must be a C-contiguous float64"):
        k.sample(((0, pts.astype(np.float32), 0.0, 0.1, False),), np.zeros(4), out)
    with pytest.raises(ValueError, match="dt must be > 0"):
        k.sample(((0, pts, 0.0, 0.0, False),), np.zeros(4), out)
    with pytest.raises(ValueError, match=r"out must be a writable C-contiguous float64 array of shape \(4, A\)"):
        k.sample(((0, pts, 0.0, 0.1, False),), np.zeros(4), np.empty((4, 3)))
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        k.window(((0, pts, 0.0, 0.1, False),), 0.0, 0.01, -1, np.empty(1), np.empty((1, 2)))
    with pytest.raises(ValueError, match="fallback must be a float64 array of shape"):
        k.prefix(((0, pts, 0.0, 0.1, False),), 0.0, 0.1, 4, 0.0, np.zeros(5), out, np.empty(4))
