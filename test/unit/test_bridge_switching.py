"""The bridge's controller_manager state machine against a fake service (no ROS graph).

The fake answers with controller_manager_msgs' own response types, as rclpy would hand them over.
"""

from __future__ import annotations

import pytest
from controller_manager_msgs.msg import ControllerState
from controller_manager_msgs.srv import ListControllers, SwitchController

from vla_runtime.core.arbiter import CAUSE_CONTROLLERS, Arbiter, Mode
from vla_runtime.core.bridge.controller_switching import (
    CONTROLLER_RETRY_S,
    TO_HOLD,
    TO_POLICY,
    TO_TELEOP,
    ControllerSwitching,
)

POLICY_CONTROLLERS = ("arm_controller", "gripper_controller")
TIMEOUT_S = 2.0
RECHECK_S = 5.0


class Future:
    """What the service hands back: done() once answered."""

    def __init__(self) -> None:
        self._done = False
        self._result = None
        self._error: Exception | None = None

    def done(self) -> bool:
        return self._done

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result

    def answer(self, result=None, error: Exception | None = None) -> None:
        self._done, self._result, self._error = True, result, error


class FakeControllerManager:
    """Records every request; the test answers them."""

    def __init__(self) -> None:
        self.ready = True
        self.lists: list[Future] = []
        self.switches: list[tuple[tuple[str, ...], tuple[str, ...], float, Future]] = []
        self.forgotten: list[Future] = []

    def list_controllers(self):
        if not self.ready:
            return None
        self.lists.append(Future())
        return self.lists[-1]

    def switch_controllers(self, activate, deactivate, timeout_s):
        if not self.ready:
            return None
        self.switches.append((tuple(activate), tuple(deactivate), timeout_s, Future()))
        return self.switches[-1][3]

    def forget(self, future) -> None:
        self.forgotten.append(future)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


def listing(**states: str) -> ListControllers.Response:
    return ListControllers.Response(controller=[ControllerState(name=n, state=s) for n, s in states.items()])


def switched(ok: bool, message: str = "") -> SwitchController.Response:
    r = SwitchController.Response(ok=ok)
    if hasattr(r, "message"):
        r.message = message
    return r


class Rig:
    def __init__(self, hold_controller: str | None = "hold_controller") -> None:
        self.t = 100.0
        self.arbiter = Arbiter(lambda: self.t, watchdog_s=0.2, joint_state_timeout_s=0.1)
        self.cm = FakeControllerManager()
        self.log = Log()
        self.changes = 0
        self.sw = ControllerSwitching(self.cm, self.arbiter, POLICY_CONTROLLERS, hold_controller,
                                      timeout_s=TIMEOUT_S, recheck_s=RECHECK_S, logger=self.log,
                                      on_change=self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def poll(self, dt: float = 0.05, policy_waiting: bool = False) -> bool:
        self.t += dt
        ok = self.sw.poll_check(self.t, policy_waiting)
        self.sw.poll_switch(self.t)
        return ok


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_a_check_that_finds_every_controller_active_sets_controllers_ok(rig):
    assert not rig.poll()  # sends the first list request
    assert len(rig.cm.lists) == 1
    rig.cm.lists[0].answer(listing(arm_controller="active", gripper_controller="active", hold_controller="inactive"))
    assert rig.poll() is True  # the bridge may enter POLICY now
    assert rig.arbiter.controllers_ok
    assert rig.sw.status == "ok: arm_controller, gripper_controller active"
    assert rig.log.lines == [("info", "controllers active: arm_controller, gripper_controller")]
    rig.poll(RECHECK_S - 0.2)
    assert len(rig.cm.lists) == 1  # re-verified every recheck_s, not before
    rig.poll(0.3)
    assert len(rig.cm.lists) == 2


def test_a_controller_not_active_refuses_policy_naming_it_and_retries(rig):
    rig.poll()
    rig.cm.lists[0].answer(listing(arm_controller="active", gripper_controller="inactive"))
    assert rig.poll(policy_waiting=True) is False
    reason = "controllers not active: gripper_controller (inactive)"
    assert rig.sw.status == reason and not rig.arbiter.controllers_ok
    assert rig.arbiter.last_refusal == "POLICY refused: " + reason  # a chunk waits: the refusal says why
    rig.arbiter.note_joint_state(rig.t)
    d = rig.arbiter.request_policy()
    assert not d and "gripper_controller (inactive)" in d.reason
    assert rig.log.lines == [("warning", f"{reason}: POLICY refused, holding; retrying every {CONTROLLER_RETRY_S} s")]
    assert rig.changes == 1
    rig.poll(CONTROLLER_RETRY_S - 0.1)
    assert len(rig.cm.lists) == 1
    rig.poll(0.15)
    assert len(rig.cm.lists) == 2
    rig.cm.lists[1].answer(listing(arm_controller="active"))  # the same refusal is logged once only
    rig.poll()
    assert rig.sw.status == "controllers not active: gripper_controller (not loaded)"
    assert len(rig.log.lines) == 2


def test_a_failed_check_while_driving_holds(rig):
    rig.poll()
    rig.cm.lists[0].answer(listing(arm_controller="active", gripper_controller="active"))
    rig.poll()
    rig.arbiter.note_joint_state(rig.t)
    assert rig.arbiter.request_policy() and rig.arbiter.mode is Mode.POLICY
    rig.poll(RECHECK_S)
    rig.cm.lists[1].answer(listing(arm_controller="unconfigured", gripper_controller="active"))
    rig.poll()
    assert rig.arbiter.mode is Mode.HOLD and rig.arbiter.cause == CAUSE_CONTROLLERS
    assert rig.arbiter.reason == "controllers not active: arm_controller (unconfigured)"


def test_no_answer_before_the_deadline_is_a_failure_and_the_call_is_dropped(rig):
    rig.poll()
    rig.poll(TIMEOUT_S - 0.1)
    assert rig.sw.status == "not checked yet"
    rig.poll(0.2)
    assert rig.cm.forgotten == [rig.cm.lists[0]]
    assert rig.sw.status == f"/controller_manager/list_controllers: no answer within {TIMEOUT_S} s"
    assert not rig.arbiter.controllers_ok


def test_a_service_that_never_appears_fails_at_the_deadline(rig):
    rig.cm.ready = False
    rig.poll()
    rig.poll(TIMEOUT_S + 0.1)
    assert rig.sw.status == f"/controller_manager/list_controllers: service not available within {TIMEOUT_S} s"
    assert rig.cm.forgotten == []


def test_a_call_that_raises_or_answers_nothing_is_a_failure(rig):
    rig.poll()
    rig.cm.lists[0].answer(error=RuntimeError("context invalid"))
    rig.poll()
    assert rig.sw.status == "list_controllers failed: RuntimeError('context invalid')"
    rig.poll(CONTROLLER_RETRY_S)
    rig.cm.lists[1].answer(None)
    rig.poll()
    assert rig.sw.status == "list_controllers returned no response"


def test_a_switch_while_one_is_in_flight_is_queued_and_sent_after(rig):
    rig.poll()
    rig.cm.lists[0].answer(listing(arm_controller="active", gripper_controller="active"))
    assert rig.poll()  # verified: the next check is due only in RECHECK_S
    rig.sw.on_halted(rig.t)
    assert not rig.arbiter.controllers_ok
    assert rig.sw.switch.what == TO_HOLD
    assert rig.sw.hold_controller_engaged()  # switching to the hold controller already counts
    assert [s[:3] for s in rig.cm.switches] == [(("hold_controller",), POLICY_CONTROLLERS, TIMEOUT_S)]
    rig.sw.back_from_hold(TO_TELEOP, rig.t)
    rig.sw.back_from_hold(TO_POLICY, rig.t)  # replaces the queued to_teleop
    assert len(rig.cm.switches) == 1
    rig.poll(1.9)  # the queued call's deadline only starts when it is sent
    rig.cm.switches[0][3].answer(switched(True))
    rig.poll()
    assert rig.sw.switch_status == "to_hold: ok (activate ['hold_controller'], deactivate " \
                                   "['arm_controller', 'gripper_controller'])"
    assert rig.sw.switched_to_hold
    assert [s[:2] for s in rig.cm.switches] == [(("hold_controller",), POLICY_CONTROLLERS),
                                                (POLICY_CONTROLLERS, ("hold_controller",))]
    assert rig.sw.switch.what == TO_POLICY and rig.sw.switch.deadline == pytest.approx(rig.t + TIMEOUT_S)
    rig.poll(1.9)
    assert rig.sw.switch is not None  # still in time
    rig.cm.switches[1][3].answer(switched(True))
    assert rig.poll() is False
    assert not rig.sw.switched_to_hold and not rig.sw.hold_controller_engaged()
    assert rig.t < 100.0 + RECHECK_S
    rig.poll(0.001)
    assert len(rig.cm.lists) == 2  # to_policy done: the controllers are re-verified on the next poll


def test_no_check_while_a_switch_is_in_flight_or_while_halted(rig):
    rig.sw.to_hold(rig.t)
    rig.poll()
    assert rig.cm.lists == []
    rig.arbiter.halt("test")
    rig.cm.switches[0][3].answer(switched(True))
    rig.poll()
    rig.poll(10.0)
    assert rig.cm.lists == []


def test_a_failed_or_unanswered_switch_is_reported_and_holds_through_the_policy_controllers(rig):
    rig.sw.to_hold(rig.t)
    rig.cm.switches[0][3].answer(switched(False, "hold_controller is not loaded"))
    rig.poll()
    assert rig.sw.switch_status.startswith("to_hold: FAILED (activate ['hold_controller']")
    assert not rig.sw.switched_to_hold and not rig.sw.hold_controller_engaged()
    assert rig.log.lines[-1][0] == "error"
    rig.sw.to_hold(rig.t)
    rig.poll(TIMEOUT_S + 0.1)
    assert rig.sw.switch_status == f"to_hold: no answer within {TIMEOUT_S} s"
    assert rig.cm.forgotten == [rig.cm.switches[1][3]]
    assert rig.changes == 2


def test_a_switch_waits_for_the_service(rig):
    rig.cm.ready = False
    rig.sw.to_hold(rig.t)
    rig.poll()
    assert rig.cm.switches == []
    rig.cm.ready = True
    rig.poll()
    assert len(rig.cm.switches) == 1


def test_without_a_hold_controller_a_halt_switches_nothing():
    r = Rig(hold_controller=None)
    r.sw.on_halted(r.t)
    r.sw.back_from_hold(TO_POLICY, r.t)
    assert r.cm.switches == [] and not r.arbiter.controllers_ok
    assert "HALTED: controllers must be re-verified after reset" in r.arbiter.policy_blockers(r.t)
