"""bench delay's splice measure on hand-built plan streams (no graph)."""

import numpy as np
import pytest

from vla_runtime.bench.delay import splice_accel_jumps

DT = 1.0 / 30.0
V = 0.3  # rad/s on both dims


def _plan(k: int, offset: float = 0.0, n: int = 16):
    """Tick k's plan: n points on the line q = V t (+ offset), the first at the tick's stamp."""
    stamp = k * DT
    ts = np.arange(n) * DT
    pts = np.stack([V * (stamp + ts) + offset] * 2, axis=1)
    return (100.0 + stamp, False, stamp, pts, ts)  # (receive t, hold, stamp, points, times)


def test_a_stream_that_continues_its_plan_has_no_splice():
    rows = [_plan(k) for k in range(20)]
    assert splice_accel_jumps(rows) == []


def test_a_chunk_that_takes_over_with_a_step_is_one_splice_of_the_expected_jump():
    # Ticks 0-9 follow one line; from tick 10 a new chunk 0.01 rad higher. The second difference of
    # the commands is +0.01/dt² at tick 9 and -0.01/dt² at tick 10: the largest change 0.02/dt².
    rows = [_plan(k) for k in range(10)] + [_plan(k, offset=0.01) for k in range(10, 20)]
    at: list[float] = []
    jumps = splice_accel_jumps(rows, at=at)
    assert jumps == [pytest.approx(0.02 / DT**2, rel=1e-6)]
    assert at == [pytest.approx(100.0 + 10 * DT)]


def test_a_hold_ends_a_run_so_the_plan_after_it_is_no_splice():
    hold = (100.0 + 10 * DT, True, 0.0, None, None)
    rows = [_plan(k) for k in range(10)] + [hold] + [_plan(k, offset=0.05) for k in range(11, 20)]
    assert splice_accel_jumps(rows) == []
