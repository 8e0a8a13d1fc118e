"""Inference off the loop: the worker thread and the execution-horizon trigger (injected clock)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vla_runtime.core.async_inference import HorizonTrigger, InferenceWorker


def test_the_worker_runs_one_request_at_a_time_and_hands_back_results_and_errors() -> None:
    release = threading.Event()

    def fn(x: int) -> int:
        if x < 0:
            raise ValueError(f"bad request {x}")
        release.wait(5.0)
        return 2 * x

    w = InferenceWorker(fn)
    try:
        assert w.submit(21, time.monotonic())
        assert w.busy and not w.submit(1, time.monotonic())  # one in flight: refused, not queued
        time.sleep(0.05)
        assert w.take() is None and w.in_flight_s(time.monotonic()) >= 0.05
        release.set()
        deadline = time.monotonic() + 5
        while (done := w.take()) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert done is not None and done.result == 42 and done.error is None and done.seq == 1
        assert done.finished_s >= done.started_s and not w.busy and w.take() is None
        assert w.submit(-3, time.monotonic())
        while (done := w.take()) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert isinstance(done.error, ValueError) and "bad request -3" in str(done.error) and done.seq == 2
    finally:
        release.set()
        assert w.stop()


def _simulate(delay_s, horizon: int = 32, rate_hz: float = 30.0, loop_hz: float = 30.0, min_steps: int = 1,
              seconds: float = 10.0, seed: int = 0):
    """The fast loop against a model that takes ``delay_s()`` per inference, on a simulated clock:
    returns (ticks without a plan after the first chunk arrived, inferences started)."""
    trig = HorizonTrigger(1.0 / rate_hz, min_steps)
    dt_loop = 1.0 / loop_hz
    rng = np.random.default_rng(seed)
    plan_end = chunk_obs = None
    in_flight = None  # (obs time, arrival time)
    delays: list[float] = []
    empty_ticks, started = 0, 0
    for k in range(int(seconds * loop_hz)):
        now = k * dt_loop
        if in_flight is not None and in_flight[1] <= now:  # the result is taken at the tick after it finished
            chunk_obs, plan_end = in_flight[0], in_flight[0] + (horizon - 1) / rate_hz
            delays.append(now - in_flight[0])
            in_flight = None
        if plan_end is not None and plan_end < now:
            empty_ticks += 1
        estimate = float(np.percentile(delays[-64:], 95)) if delays else 0.1
        if in_flight is None and trig.due(now, chunk_obs, plan_end, estimate):
            in_flight = (now, now + delay_s(rng))
            started += 1
    return empty_ticks, started


@pytest.mark.parametrize("delay_ms", [3, 100, 200, 300, 500])
def test_the_plan_never_runs_out_while_inference_takes_up_to_half_a_second(delay_ms) -> None:
    """A 32-step chunk at 30 Hz (1.07 s): the trigger starts each inference early enough that the
    next chunk is merged before the executing one ends, at every delay up to 500 ms."""
    d = delay_ms / 1000
    empty, started = _simulate(lambda rng: d * rng.uniform(0.7, 1.0))
    assert empty == 0
    assert started >= 10 / (d + 1 / 30) * 0.8  # back to back: the worker is never left idle for long


def test_a_fast_engine_replans_every_tick_and_a_longer_horizon_replans_less() -> None:
    _, every_tick = _simulate(lambda rng: 0.003)
    assert every_tick >= 290  # ~300 ticks in 10 s
    empty, horizon8 = _simulate(lambda rng: 0.003, min_steps=8)
    assert empty == 0 and 300 / 8 * 0.8 <= horizon8 <= 300 / 8 * 1.3


def test_a_plan_too_short_for_the_delay_does_run_out() -> None:
    """The check is not vacuous: a 16-step chunk (0.53 s) cannot cover 700 ms of inference."""
    empty, _ = _simulate(lambda rng: 0.7, horizon=16)
    assert empty > 0


def test_frozen_steps_and_bad_arguments() -> None:
    trig = HorizonTrigger(1 / 30, 1)
    assert trig.frozen_steps(0.0) == 0 and trig.frozen_steps(1 / 30) == 1 and trig.frozen_steps(0.3) == 9
    with pytest.raises(ValueError, match="min_steps must be >= 1, got 0"):
        HorizonTrigger(1 / 30, 0)
    with pytest.raises(ValueError, match="chunk_dt_s must be > 0"):
        HorizonTrigger(0.0)
