"""The adaptive execution horizon (core/async_inference.ConsensusTrigger): hand-checkable chunks, a simulated clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vla_runtime.core.async_inference import ConsensusTrigger, HorizonTrigger

DT = 0.1


def test_full_agreement_gives_the_longest_horizon_and_the_next_inference_waits_for_it() -> None:
    trig = ConsensusTrigger(DT, min_steps=1, max_steps=5, tolerance=0.01, margin_s=0.0)
    assert trig.steps == 1  # nothing observed yet: re-plan as soon as allowed
    plan = np.zeros((8, 2))
    assert trig.observe(plan + 0.005, plan, overlap=8) == 5
    assert (trig.agreed, trig.parted, trig.last_agreement) == (1, 0, 8)
    # chunk observed at t=0, plan runs to 10 s: due at obs + 5 steps - delay
    assert not trig.due(0.39, 0.0, 10.0, delay_s=0.1)
    assert trig.due(0.40, 0.0, 10.0, delay_s=0.1)


def test_a_disagreement_replans_where_the_chunks_part_and_never_below_min_steps() -> None:
    trig = ConsensusTrigger(DT, min_steps=2, max_steps=6, tolerance=0.01)
    plan = np.zeros((8, 2))
    new = plan.copy()
    new[3, 1] = 0.02  # they part at step 3 (one dim is enough)
    assert trig.observe(new, plan, overlap=8) == 3
    assert (trig.parted, trig.last_agreement) == (1, 3)
    new[0, 0] = -0.5  # part at once: min_steps, not 0
    assert trig.observe(new, plan, overlap=8) == 2
    new[:] = 0.0
    new[7] = 1.0  # past the overlap: not compared
    assert trig.observe(new, plan, overlap=7) == 6


def test_steps_already_past_are_not_compared_and_no_plan_means_min_steps() -> None:
    trig = ConsensusTrigger(DT, min_steps=1, max_steps=4, tolerance=0.01)
    plan = np.zeros((6, 1))
    new = plan.copy()
    new[0] = new[4] = 1.0
    assert trig.observe(new, plan, overlap=6, start=1) == 4  # parts at step 4 (= start + 3): clipped to max 4
    new[4] = 0.0
    assert trig.observe(new, plan, overlap=6, start=1) == 4 and trig.agreed == 1
    assert trig.observe(new, None, overlap=0) == 1 and trig.unplanned == 1
    assert trig.observe(new, plan, overlap=1, start=1) == 1 and trig.unplanned == 2  # nothing left to compare


def test_the_plan_end_guard_holds_whatever_the_horizon() -> None:
    trig = ConsensusTrigger(DT, min_steps=1, max_steps=30, tolerance=1.0, margin_s=0.05)
    trig.observe(np.zeros((32, 1)), np.zeros((32, 1)), 32)
    assert trig.steps == 30
    assert not trig.due(1.0, 0.0, 3.2, delay_s=0.3)
    assert trig.due(2.85, 0.0, 3.2, delay_s=0.3)  # 0.35 s of plan left ≤ delay + margin


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="max_steps must be >= min_steps \\(4\\), got 2"):
        ConsensusTrigger(DT, min_steps=4, max_steps=2)
    with pytest.raises(ValueError, match="tolerance must be finite and > 0, got 0.0"):
        ConsensusTrigger(DT, tolerance=0.0)
    trig = ConsensusTrigger(DT)
    with pytest.raises(ValueError, match="overlap and start must be >= 0"):
        trig.observe(np.zeros((4, 1)), np.zeros((4, 1)), -1)
    with pytest.raises(ValueError, match="differ"):
        trig.observe(np.zeros((4, 2)), np.zeros((4, 1)), 4)
    assert HorizonTrigger(DT, 7).steps == 7  # the fixed horizon is unchanged


def _simulate(trig: HorizonTrigger, offset, delay_s: float = 0.1, seconds: float = 10.0, horizon: int = 32,
              rate_hz: float = 30.0, seed: int = 0) -> tuple[int, int]:
    """The fast loop on a simulated clock against a model whose chunk is ``target(t) + offset(rng)``:
    returns (ticks without a plan after the first chunk, inferences started)."""
    dt = 1.0 / rate_hz
    rng = np.random.default_rng(seed)
    plan_obs = plan_end = None
    plan = None
    in_flight = None
    empty = started = 0
    for k in range(int(seconds * rate_hz)):
        now = k * dt
        if in_flight is not None and in_flight[1] <= now:
            obs, chunk = in_flight[0], in_flight[2]
            if isinstance(trig, ConsensusTrigger):
                if plan is None:
                    trig.observe(chunk, None, 0)
                else:  # the executing plan on the new chunk's grid
                    shift = int(round((obs - plan_obs) / dt))
                    on_grid = np.vstack([plan[shift:], np.repeat(plan[-1:], shift, axis=0)])
                    trig.observe(chunk, on_grid, horizon - shift, int(np.ceil((now - obs) / dt - 1e-9)))
            plan, plan_obs, plan_end = chunk, obs, obs + (horizon - 1) * dt
            in_flight = None
        if plan_end is not None and plan_end < now:
            empty += 1
        if in_flight is None and trig.due(now, plan_obs, plan_end, delay_s):
            ts = now + dt * np.arange(horizon)
            chunk = np.sin(ts)[:, None] + offset(rng)
            in_flight = (now, now + delay_s, chunk)
            started += 1
    return empty, started


def test_on_a_simulated_clock_agreeing_chunks_need_fewer_inferences_and_the_plan_never_runs_out() -> None:
    fixed_empty, fixed = _simulate(HorizonTrigger(1 / 30, 1, 1 / 60), lambda rng: 0.0)
    agree_empty, agree = _simulate(ConsensusTrigger(1 / 30, 1, 16, 0.01, 1 / 60), lambda rng: 0.0)
    flips = itertools.cycle([0.05, -0.05])  # every chunk 0.1 away from the one before
    part_empty, part = _simulate(ConsensusTrigger(1 / 30, 1, 16, 0.01, 1 / 60), lambda rng: next(flips))
    assert fixed_empty == agree_empty == part_empty == 0
    assert agree <= fixed / 3  # 16-step horizon vs back to back at 100 ms
    assert part >= 0.9 * fixed  # every chunk disagrees: re-plan as often as the fixed horizon of 1
