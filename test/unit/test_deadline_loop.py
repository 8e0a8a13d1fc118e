"""DeadlineLoop and TimingStats: deterministic with a fake clock, plus one loose real run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vla_runtime.core.deadline_loop import DeadlineLoop
from vla_runtime.core.timing import TimingStats

PERIOD = 10_000_000  # 100 Hz


class FakeClock:
    """Integer-ns clock that only moves when told to."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now = start_ns
        self.sleeps: list[int] = []

    def __call__(self) -> int:
        return self.now

    def sleep_until(self, deadline_ns: int) -> None:
        self.sleeps.append(deadline_ns)
        self.now = max(self.now, deadline_ns)

    def advance(self, ns: int) -> None:
        self.now += int(ns)


def test_absolute_schedule_does_not_drift_with_variable_step_times() -> None:
    clock = FakeClock()
    rng = np.random.default_rng(0)
    scheduled: list[float] = []

    def step(k: int, t_s: float) -> None:
        scheduled.append(t_s)
        clock.advance(rng.integers(0, PERIOD * 9 // 10))  # always finishes before the deadline

    loop = DeadlineLoop(step, 100.0, clock_ns=clock, sleep_until_ns=clock.sleep_until)
    start = clock.now
    loop.run(max_ticks=1000)
    expected = (start + PERIOD * np.arange(1000)) / 1e9
    np.testing.assert_allclose(scheduled, expected, rtol=0, atol=1e-12)
    s = loop.stats.summary()
    assert s["ticks"] == 1000 and s["misses"] == 0 and s["skipped"] == 0
    assert s["period_jitter_ms"]["max"] == 0.0
    assert s["achieved_hz"] == pytest.approx(100.0)


def test_overrun_counted_and_skipped_ahead_not_burst() -> None:
    clock = FakeClock()
    ticks: list[int] = []
    overruns: list[tuple[int, int]] = []

    def step(k: int, t_s: float) -> None:
        ticks.append(k)
        if k == 3:
            clock.advance(int(3.5 * PERIOD))  # loses more than one period
        elif k == 8:
            clock.advance(int(1.5 * PERIOD))  # ends half a period after its deadline
        else:
            clock.advance(PERIOD // 10)

    loop = DeadlineLoop(
        step, 100.0, clock_ns=clock, sleep_until_ns=clock.sleep_until, on_overrun=lambda k, late: overruns.append((k,
                                                                                                                   late))
    )
    start = clock.now
    loop.run(max_ticks=10)
    # Tick 3 ran from 3P to 6.5P: ticks 4..6 are skipped, 7 runs on time at 7P.
    assert ticks == [0, 1, 2, 3, 7, 8, 9, 10, 11, 12]
    assert overruns == [(3, int(2.5 * PERIOD)), (8, PERIOD // 2)]
    s = loop.stats.summary()
    assert s["misses"] == 2 and s["skipped"] == 3
    assert s["deadline_miss_rate"] == pytest.approx(0.2)
    # After the short overrun, tick 9 starts late (no skip); later ticks are back on the grid.
    assert clock.sleeps[-1] == start + 12 * PERIOD


def test_max_lag_catches_up_back_to_back_then_skips_beyond_it() -> None:
    """A simulator keeps simulated time on the wall clock: after a hiccup shorter than max_lag_ns
    it runs the missed ticks at once (late, each counted as a miss) instead of skipping them."""
    clock = FakeClock()
    ticks: list[int] = []
    starts: list[int] = []
    scheduled: list[float] = []

    def step(k: int, t_s: float) -> None:
        ticks.append(k)
        starts.append(clock.now)
        scheduled.append(t_s)
        if k == 3:
            clock.advance(int(3.5 * PERIOD))  # 2.5 periods behind: within the lag, caught up
        elif k == 12:
            clock.advance(7 * PERIOD)  # 6 periods behind: beyond the lag, skipped
        else:
            clock.advance(PERIOD // 10)

    loop = DeadlineLoop(step, 100.0, clock_ns=clock, sleep_until_ns=clock.sleep_until, max_lag_ns=5 * PERIOD)
    start = clock.now
    loop.run(max_ticks=16)
    assert ticks == [*range(13), 19, 20, 21]
    y = loop.overrun_yield_ns
    # ticks 4 and 5 run at once after 3 (each after its overrun yield), 6 ends before its deadline
    assert starts[4:7] == [start + int(6.5 * PERIOD) + y, start + int(6.6 * PERIOD) + 2 * y,
                           start + int(6.7 * PERIOD) + 3 * y]
    assert starts[7] == start + 7 * PERIOD  # back on the grid
    np.testing.assert_allclose(scheduled[:13], (start + PERIOD * np.arange(13)) / 1e9, rtol=0, atol=1e-12)
    s = loop.stats.summary()
    assert s["misses"] == 4 and s["skipped"] == 6  # 3, 4, 5 (catching up) and 12; 13..18 skipped
    with pytest.raises(ValueError, match="max_lag_ns must be ≥ 0, got -1"):
        DeadlineLoop(step, 100.0, max_lag_ns=-1)


def test_default_max_lag_is_one_period() -> None:
    assert DeadlineLoop(lambda k, t: None, 100.0).max_lag_ns == PERIOD


def test_unpaced_loop_runs_ticks_back_to_back_without_deadlines() -> None:
    clock = FakeClock()
    seen: list[tuple[int, float, int]] = []

    def step(k: int, t_s: float) -> None:
        seen.append((k, t_s, clock.now))
        clock.advance(PERIOD * (3 if k % 2 else 1))  # slower than the rate: still no miss

    loop = DeadlineLoop(step, 100.0, clock_ns=clock, sleep_until_ns=clock.sleep_until, paced=False)
    loop.run(max_ticks=6)
    assert [k for k, _, _ in seen] == list(range(6))
    assert all(t_s == now / 1e9 for _, t_s, now in seen)  # scheduled = its own start
    assert clock.sleeps == []
    s = loop.stats.summary()
    assert s["ticks"] == 6 and s["misses"] == 0 and s["period_jitter_ms"]["max"] == 0.0

    count = [0]

    def count_step(k: int, t_s: float) -> None:
        count[0] += 1

    free = DeadlineLoop(count_step, 1.0, paced=False)  # 1 Hz if it were paced
    free.start()
    time.sleep(0.2)
    assert free.stop(timeout_s=1.0)
    assert count[0] > 100


def test_permanently_late_loop_still_sleeps_after_every_miss() -> None:
    """A step that always overruns must not keep the thread busy (at SCHED_FIFO that would starve
    its CPU): after each miss the loop sleeps its overrun yield before the next tick."""
    clock = FakeClock()
    ends: list[int] = []

    def step(k: int, t_s: float) -> None:
        clock.advance(int(1.2 * PERIOD))
        ends.append(clock.now)

    loop = DeadlineLoop(step, 100.0, clock_ns=clock, sleep_until_ns=clock.sleep_until)
    assert loop.overrun_yield_ns == 200_000  # 2 % of 10 ms is less than the 200 µs floor
    loop.run(max_ticks=20)
    assert loop.stats.summary()["misses"] == 20
    for end in ends:
        assert end + loop.overrun_yield_ns in clock.sleeps
    with pytest.raises(ValueError, match="overrun_yield_ns must be ≥ 0, got -1"):
        DeadlineLoop(step, 100.0, overrun_yield_ns=-1)


def test_thread_init_runs_once_in_the_loop_thread_before_the_first_tick() -> None:
    events: list[tuple[str, str]] = []
    first = threading.Event()

    def step(k: int, t_s: float) -> None:
        events.append(("step", threading.current_thread().name))
        first.set()

    loop = DeadlineLoop(step, 200.0, name="rt_loop",
                        thread_init=lambda: events.append(("init", threading.current_thread().name)))
    loop.start()
    assert first.wait(2.0)
    assert loop.stop(2.0)
    assert events[0] == ("init", "rt_loop") and events.count(("init", "rt_loop")) == 1
    assert events[1] == ("step", "rt_loop")


def test_stop_honours_its_deadline() -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking_step(k: int, t_s: float) -> None:
        entered.set()
        release.wait(5.0)

    loop = DeadlineLoop(blocking_step, 50.0)
    loop.start()
    assert entered.wait(2.0)
    t0 = time.monotonic()
    assert loop.stop(timeout_s=0.2) is False  # still inside the step
    assert time.monotonic() - t0 < 1.0
    release.set()
    assert loop.stop(timeout_s=2.0) is True

    quick = DeadlineLoop(lambda k, t: None, 10.0)  # long sleeps are interrupted by stop()
    quick.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert quick.stop(timeout_s=1.0) is True
    assert time.monotonic() - t0 < 0.5


def test_step_exception_is_kept_and_ends_the_thread() -> None:
    def bad(k: int, t: float) -> None:
        raise RuntimeError("boom")

    loop = DeadlineLoop(bad, 100.0)
    loop.start()
    assert loop.stop(timeout_s=2.0)
    assert isinstance(loop.error, RuntimeError)


def test_real_time_run_loose_bounds() -> None:
    stats = TimingStats()

    def step(k: int, t_s: float) -> None:
        t0 = time.perf_counter_ns()
        sum(range(200))
        stats.report_inference_ns(time.perf_counter_ns() - t0)

    loop = DeadlineLoop(step, 100.0, stats=stats)
    loop.start()
    time.sleep(1.0)
    assert loop.stop(timeout_s=1.0)
    s = stats.summary()
    assert 70 <= s["ticks"] <= 110
    assert 80 <= s["achieved_hz"] <= 105
    assert s["infer_ms"]["p50"] is not None and s["overhead_ms"]["p50"] >= 0
    assert s["period_jitter_ms"]["p50"] < 20  # loose: CI machines are noisy


def test_timing_stats_summary_and_validation() -> None:
    st = TimingStats(capacity=4)
    for i in range(6):  # wraps the ring
        st.report_inference_ns(2_000_000)
        st.record_tick(scheduled_ns=i * 10_000_000, start_ns=i * 10_000_000 + 100_000,
                       end_ns=i * 10_000_000 + 3_100_000)
    s = st.summary()
    assert s["ticks"] == 6 and s["window"] == 4
    assert s["infer_ms"]["p50"] == pytest.approx(2.0)
    assert s["overhead_ms"]["p99"] == pytest.approx(1.0)
    assert s["period_jitter_ms"]["max"] == pytest.approx(0.1)
    assert s["achieved_hz"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="capacity must be ≥ 2, got 1"):
        TimingStats(capacity=1)
    with pytest.raises(ValueError, match="rate_hz must be > 0, got 0"):
        DeadlineLoop(lambda k, t: None, 0)


def test_an_inference_that_ran_on_a_worker_is_reported_but_not_taken_off_the_ticks_overhead() -> None:
    """Off the tick, a merged chunk's 300 ms inference must not make the 0.2 ms tick's overhead negative."""
    st = TimingStats()
    st.report_inference_ns(5_000_000)  # inline: 5 ms of a 6 ms step is inference
    st.record_tick(0, 0, 6_000_000)
    st.report_inference_ns(300_000_000, in_step=False)  # worker: finished by this 0.2 ms tick
    st.record_tick(33_333_333, 33_333_333, 33_533_333)
    st.record_tick(66_666_666, 66_666_666, 66_866_666)  # nothing reported: in_step is back to its default
    s = st.summary()
    assert s["infer_ms"]["p50"] == pytest.approx(152.5)  # both inferences are in the inference stats
    assert s["overhead_ms"]["p50"] == pytest.approx(0.2)  # not 0.2 - 300 ms
    assert s["overhead_ms"]["p99"] == pytest.approx(0.984)  # the inline tick's 1 ms, interpolated
