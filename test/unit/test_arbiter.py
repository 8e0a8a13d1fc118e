"""Arbiter: transition table, latched HALT, reset refusal, watchdogs, history (no ROS)."""

from __future__ import annotations

import pytest

from vla_runtime.core.arbiter import (
    CAUSE_OPERATOR,
    CAUSE_POLICY,
    CAUSE_WATCHDOG,
    TRANSITIONS,
    Arbiter,
    Mode,
    Transition,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def seen() -> list[Transition]:
    return []


def make(clock, seen, detector: float | None = None) -> Arbiter:
    return Arbiter(clock, watchdog_s=0.2, joint_state_timeout_s=0.1, detector_heartbeat_s=detector,
                   on_transition=seen.append, history=5)


def ready(a: Arbiter, clock: Clock) -> None:
    a.set_controllers_ok(True)
    a.note_joint_state(clock.t)
    a.note_policy_command(clock.t)


def test_starts_in_hold_and_policy_needs_preconditions(clock, seen):
    a = make(clock, seen)
    assert a.mode is Mode.HOLD
    d = a.request_policy()
    assert not d and "controllers not verified" in d.reason and "joint states" in d.reason
    a.set_controllers_ok(False, "controllers not active: arm_controller (inactive)")
    a.note_joint_state()
    d = a.request_policy()
    assert not d and "arm_controller" in d.reason and a.last_refusal == d.reason
    a.set_controllers_ok(True)
    assert a.request_policy() and a.mode is Mode.POLICY
    assert a.policy_allowed() and not a.teleop_allowed()


def test_transitions_are_recorded_and_reported(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy("go")
    clock.t += 0.05
    a.hold("pause", CAUSE_OPERATOR)
    assert [(t.source, t.target, t.reason) for t in seen] == [
        (Mode.HOLD, Mode.POLICY, "go"), (Mode.POLICY, Mode.HOLD, "pause")]
    assert seen[-1].t == pytest.approx(100.05)
    assert list(a.history) == seen
    for _ in range(10):  # history is bounded
        a.hold("again", CAUSE_OPERATOR)
    assert len(a.history) == 5


def test_every_recorded_transition_is_in_the_table(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    a.request_teleop()
    a.release_teleop()
    a.halt("boom")
    a.reset()
    for tr in seen:
        assert tr.target in TRANSITIONS[tr.source]


def test_halted_is_latched_and_reset_refused_while_cause_persists(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    cause = {"present": True}
    assert a.halt("collision detected", persists=lambda: cause["present"])
    assert a.mode is Mode.HALTED
    # nothing but reset leaves HALTED
    assert not a.request_policy() and not a.request_teleop() and not a.hold("x") and not a.allow_resume()
    assert a.check(clock.t + 10) is None and a.mode is Mode.HALTED
    d = a.reset("operator")
    assert not d and "cause still present" in d.reason and a.mode is Mode.HALTED
    cause["present"] = False
    d = a.reset("operator")
    assert d and a.mode is Mode.HOLD
    assert seen[-1].source is Mode.HALTED and seen[-1].target is Mode.HOLD


def test_halt_from_every_mode(clock, seen):
    for setup in (lambda a: None, lambda a: a.request_policy(), lambda a: a.request_teleop()):
        a = make(clock, seen)
        ready(a, clock)
        setup(a)
        assert a.halt("stop") and a.mode is Mode.HALTED


def test_watchdog_moves_policy_to_hold(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    clock.t += 0.15
    a.note_joint_state()
    assert a.check() is None
    clock.t += 0.1  # 0.25 s since the last policy command
    a.note_joint_state()
    tr = a.check()
    assert tr is not None and tr.target is Mode.HOLD and tr.cause == CAUSE_WATCHDOG
    assert "watchdog" in a.reason
    # a fresh command may resume from a watchdog HOLD
    assert a.can_auto_resume()
    a.note_policy_command()
    assert a.request_policy() and a.mode is Mode.POLICY


def test_stale_joint_states_move_to_hold(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    clock.t += 0.15
    a.note_policy_command()
    tr = a.check()
    assert tr is not None and tr.target is Mode.HOLD and "joint states stale" in tr.reason


def test_silent_detector_moves_to_hold_only_when_expected(clock, seen):
    a = make(clock, seen, detector=0.5)
    ready(a, clock)
    d = a.request_policy()
    assert not d and "detector" in d.reason
    a.note_detector_heartbeat()
    assert a.request_policy()
    for _ in range(6):
        clock.t += 0.1
        a.note_joint_state()
        a.note_policy_command()
        a.check()
    assert a.mode is Mode.HOLD and "detector" in a.reason
    b = make(clock, [], detector=None)
    ready(b, clock)
    assert b.request_policy()


def test_operator_hold_needs_explicit_resume(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    a.hold("operator", CAUSE_OPERATOR)
    assert not a.can_auto_resume()
    assert a.allow_resume()
    assert a.can_auto_resume() and a.request_policy()


def test_policy_hold_request_auto_resumes(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    a.hold("policy asked", CAUSE_POLICY)
    assert a.can_auto_resume()


def test_teleop_path(clock, seen):
    a = make(clock, seen)
    ready(a, clock)
    a.request_policy()
    assert a.request_teleop() and a.mode is Mode.TELEOP
    assert a.teleop_allowed() and not a.policy_allowed()
    assert not a.request_policy()  # must release first
    clock.t += 0.6
    a.note_joint_state()
    tr = a.check()
    assert tr is not None and tr.target is Mode.HOLD  # teleop input went silent
    a.request_teleop()
    assert a.release_teleop() and a.mode is Mode.HOLD


def test_reset_when_not_halted_is_a_no_op(clock, seen):
    a = make(clock, seen)
    d = a.reset()
    assert d and "not halted" in d.reason and not seen
