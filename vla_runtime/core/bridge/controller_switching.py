"""The bridge's controller_manager client: verify the controllers, switch to and from the hold one.

:class:`ControllerSwitching` never blocks. It sends a request through an injected
:class:`ControllerManagerClient` (the node gives it rclpy clients; tests give it a fake service),
keeps the future with a deadline, and the bridge's supervision timer polls it:

* ``list_controllers`` — before POLICY every profile controller must be ``active``. A check that
  finds them so sets the arbiter's ``controllers_ok`` and is repeated every ``recheck_s``; one that
  does not (or fails, or gets no answer before its deadline) refuses POLICY naming the
  controllers (HOLD when the policy was driving) and is retried every ``retry_s``.
* ``switch_controller`` — on a halt the policy's controllers hand over to the hold controller
  (``to_hold``), and back when the halt is reset (``to_policy``, after which the controllers are
  re-verified at once) or when the operator teleoperates under the halt (``to_teleop``). One call
  is in flight at a time; a request made meanwhile is queued (a newer one replaces it) and sent
  when the one in flight ends.

Status strings (:attr:`ControllerSwitching.status`, :attr:`~ControllerSwitching.switch_status`)
go into the bridge's diagnostics as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vla_runtime.core.arbiter import CAUSE_CONTROLLERS, Arbiter, Mode
from vla_runtime.core.contract import SERVICE_LIST_CONTROLLERS, SERVICE_SWITCH_CONTROLLER

#: After a failed controller check, the next one comes this much later (s).
CONTROLLER_RETRY_S = 1.0

#: What a switch is for (:attr:`PendingCall.what`).
TO_HOLD = "to_hold"
TO_POLICY = "to_policy"
TO_TELEOP = "to_teleop"


class CallFuture(Protocol):
    """What an asynchronous service call returns (rclpy's ``Future`` is one)."""

    def done(self) -> bool:
        """Whether the call ended (answered or failed)."""

    def result(self) -> Any:
        """The response (``None``: none); raises what the call raised."""


class ControllerManagerClient(Protocol):
    """The two controller_manager services, asynchronous.

    A ``list_controllers`` response has ``controller``: items with ``name`` and ``state``; a
    ``switch_controller`` response has ``ok`` (and on newer distros ``message``).
    """

    def list_controllers(self) -> CallFuture | None:
        """Send a list request; None when the service is not available (yet)."""

    def switch_controllers(self, activate: Sequence[str], deactivate: Sequence[str],
                           timeout_s: float) -> CallFuture | None:
        """Send a strict switch request; None when the service is not available (yet)."""

    def forget(self, future: CallFuture) -> None:
        """Drop a call whose deadline passed (its late answer is ignored)."""


class Logger(Protocol):
    """Where transitions of the controllers' state are reported (an rclpy logger is one)."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


@dataclass
class PendingCall:
    """A service call with its deadline (checked in the supervision timer)."""

    what: str
    deadline: float
    future: CallFuture | None = None
    activate: tuple[str, ...] = ()
    deactivate: tuple[str, ...] = ()


class ControllerSwitching:
    """Controller checks and switches with deadlines, polled from the bridge's supervision timer.

    Args:
        client: The controller_manager services.
        arbiter: The bridge's arbiter (controllers_ok, HOLD on a failed check, the refusal text).
        controllers: The policy's controllers (every group's), which must all be active.
        hold_controller: The controller to switch to on a halt; None: a halt switches nothing.
        timeout_s: Deadline of each call (and the ``timeout`` of a switch request).
        recheck_s: Interval of the checks while the controllers are fine.
        logger: Reports changes (info/warning/error).
        on_change: Called when a status changed (the bridge publishes its safety state).
        retry_s: Interval of the checks after a failure.
    """

    def __init__(self, client: ControllerManagerClient, arbiter: Arbiter, controllers: Sequence[str],
                 hold_controller: str | None, timeout_s: float, recheck_s: float, logger: Logger,
                 on_change: Callable[[], None], retry_s: float = CONTROLLER_RETRY_S) -> None:
        self.client = client
        self.arbiter = arbiter
        self.controllers = tuple(controllers)
        self.hold_controller = hold_controller
        self.timeout_s = float(timeout_s)
        self.recheck_s = float(recheck_s)
        self.retry_s = float(retry_s)
        self.log = logger
        self.on_change = on_change
        self.status = "not checked yet"
        self.switch_status = "none"
        self.switched_to_hold = False
        self.check: PendingCall | None = None
        self.switch: PendingCall | None = None
        self.queued: PendingCall | None = None
        self.next_check_t = -math.inf

    # ------------------------------------------------------------------ list_controllers
    def hold_controller_engaged(self) -> bool:
        """Whether the hold controller is active or being switched to (the policy's are not)."""
        return self.switched_to_hold or (self.switch is not None and self.switch.what == TO_HOLD)

    def check_if_due(self, now: float) -> None:
        """Start a check now if none is in flight, no switch is, and one is due."""
        if self.check is None and self.switch is None and now >= self.next_check_t:
            self._start_check(now)

    def _start_check(self, now: float) -> None:
        self.check = PendingCall("list_controllers", now + self.timeout_s)
        self.check.future = self.client.list_controllers()

    def poll_check(self, now: float, policy_waiting: bool) -> bool:
        """Advance the check: start one when due (not while HALTED or switching), read its answer.

        Args:
            now: The time (s).
            policy_waiting: A valid chunk waits for POLICY (a refusal is then recorded as such).

        Returns:
            True when this poll verified the controllers (the bridge may enter POLICY now).
        """
        c = self.check
        if c is None:
            if now >= self.next_check_t and self.arbiter.mode is not Mode.HALTED and self.switch is None:
                self._start_check(now)
            return False
        if c.future is None:
            c.future = self.client.list_controllers()
        if c.future is not None and c.future.done():
            self.check = None
            try:
                resp = c.future.result()
            except Exception as e:  # noqa: BLE001 - any failure of the call ends in HOLD
                self._failed(f"list_controllers failed: {e!r}", now, policy_waiting)
                return False
            if resp is None:
                self._failed("list_controllers returned no response", now, policy_waiting)
                return False
            states = {cs.name: cs.state for cs in resp.controller}
            bad = [f"{n} ({states.get(n, 'not loaded')})" for n in self.controllers if states.get(n) != "active"]
            if bad:
                self._failed("controllers not active: " + ", ".join(bad), now, policy_waiting)
                return False
            if not self.arbiter.controllers_ok:
                self.log.info(f"controllers active: {', '.join(self.controllers)}")
            self.status = "ok: " + ", ".join(self.controllers) + " active"
            self.arbiter.set_controllers_ok(True)
            self.next_check_t = now + self.recheck_s
            return True
        if now > c.deadline:
            if c.future is not None:
                self.client.forget(c.future)
                why = "no answer"
            else:
                why = "service not available"
            self.check = None
            self._failed(f"{SERVICE_LIST_CONTROLLERS}: {why} within {self.timeout_s} s", now, policy_waiting)
        return False

    def _failed(self, reason: str, now: float, policy_waiting: bool) -> None:
        if reason != self.status:
            self.log.warning(f"{reason}: POLICY refused, holding; retrying every {self.retry_s} s")
        self.status = reason
        self.arbiter.set_controllers_ok(False, reason)
        self.next_check_t = now + self.retry_s
        if self.arbiter.mode is Mode.POLICY:
            self.arbiter.hold(reason, CAUSE_CONTROLLERS)
        elif policy_waiting:
            self.arbiter.last_refusal = "POLICY refused: " + reason
        self.on_change()

    # ------------------------------------------------------------------ switch_controller
    def on_halted(self, now: float) -> None:
        """HALTED: the controllers must be re-verified after reset; switch to the hold controller."""
        self.arbiter.set_controllers_ok(False, "HALTED: controllers must be re-verified after reset")
        self.to_hold(now)

    def to_hold(self, now: float) -> None:
        """Hand the robot to the hold controller (when one is configured)."""
        if self.hold_controller:
            self.request(TO_HOLD, (self.hold_controller,), self.controllers, now)

    def back_from_hold(self, what: str, now: float) -> None:
        """Give the robot back to the policy's controllers if the hold controller has (or gets) it."""
        if self.hold_controller_engaged():
            self.request(what, self.controllers, (self.hold_controller,), now)

    def request(self, what: str, activate: tuple[str, ...], deactivate: tuple[str, ...], now: float) -> None:
        """Switch controllers: sent now, or queued behind the call in flight (replacing a queued one)."""
        call = PendingCall(what, now + self.timeout_s, activate=activate, deactivate=deactivate)
        if self.switch is not None:
            self.queued = call  # sent when the one in flight finishes
            return
        self.switch = call
        self._send(call)

    def _send(self, call: PendingCall) -> None:
        if call.future is None:
            call.future = self.client.switch_controllers(call.activate, call.deactivate, self.timeout_s)

    def poll_switch(self, now: float) -> None:
        """Advance the switch in flight: send it once the service is there, read its answer or
        give up at its deadline (holding through the policy's controllers), then send the queued one."""
        c = self.switch
        if c is None:
            return
        if c.future is None:
            self._send(c)
        done = False
        if c.future is not None and c.future.done():
            done = True
            try:
                resp = c.future.result()
                ok = bool(resp is not None and resp.ok)
                message = getattr(resp, "message", "") if resp is not None else "no response"
            except Exception as e:  # noqa: BLE001 - any failure of the call is a failed switch
                ok, message = False, repr(e)
            verb = f"activate {list(c.activate)}, deactivate {list(c.deactivate)}"
            if ok:
                self.switch_status = f"{c.what}: ok ({verb})"
                self.switched_to_hold = c.what == TO_HOLD
                self.log.info(f"switch_controller {verb}: ok")
            else:
                self.switch_status = f"{c.what}: FAILED ({verb}): {message or 'ok=false'}"
                self.log.error(f"switch_controller {verb} failed: {message or 'ok=false'}; "
                               "holding through the policy controllers")
        elif now > c.deadline:
            done = True
            if c.future is not None:
                self.client.forget(c.future)
            self.switch_status = f"{c.what}: no answer within {self.timeout_s} s"
            self.log.error(f"{SERVICE_SWITCH_CONTROLLER} ({c.what}): no answer within "
                           f"{self.timeout_s} s; holding through the policy controllers")
        if done:
            self.switch = None
            if c.what == TO_POLICY:
                self.next_check_t = now  # re-verify at once
            if self.queued is not None:
                self.switch, self.queued = self.queued, None
                self.switch.deadline = now + self.timeout_s
                self._send(self.switch)
            self.on_change()
