"""Who may move the robot: POLICY, TELEOP, HOLD or HALTED (pure logic, injected clock).

The :class:`Arbiter` owns the mode and nothing else: no ROS, no threads. The bridge feeds it
events (fresh joint states, policy commands, detector heartbeats, controller checks) and asks it
whether a command may pass. Every transition goes through one explicit table
(:data:`TRANSITIONS`), is recorded with its time and reason in a bounded history, and is reported
through the ``on_transition`` callback.

* HOLD — command the hold target (the measured state captured on entering HOLD). The start mode.
  Each HOLD carries a *cause*; the policy may resume by itself (``request_policy`` from a fresh
  command) only from causes in :data:`AUTO_RESUME_CAUSES` — an operator HOLD needs ``allow_resume``.
* POLICY — policy commands pass. Entered only when the controllers were verified active, joint
  states are fresh and (when a failure detector is expected) its heartbeat is alive.
* TELEOP — teleop commands pass; the policy's do not.
* HALTED — latched. Only :meth:`Arbiter.reset` leaves it (to HOLD), and reset is refused while the
  halt's "cause still present" predicate says the cause persists.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Mode(str, Enum):
    """Arbiter modes."""

    POLICY = "POLICY"
    TELEOP = "TELEOP"
    HOLD = "HOLD"
    HALTED = "HALTED"

    def __str__(self) -> str:
        return self.value


#: Allowed (from, to) pairs. HALTED → HOLD only through reset(); HOLD → HOLD updates the cause.
TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.HOLD: frozenset({Mode.HOLD, Mode.POLICY, Mode.TELEOP, Mode.HALTED}),
    Mode.POLICY: frozenset({Mode.HOLD, Mode.TELEOP, Mode.HALTED}),
    Mode.TELEOP: frozenset({Mode.HOLD, Mode.HALTED}),
    Mode.HALTED: frozenset({Mode.HOLD}),
}

# HOLD causes.
CAUSE_STARTUP = "startup"
CAUSE_POLICY = "policy"  # the policy asked for HOLD (empty chunk)
CAUSE_WATCHDOG = "watchdog"  # no fresh policy command
CAUSE_REJECTED = "rejected"  # the safety filter rejected a policy command
CAUSE_JOINT_STATE = "joint_state"  # stale joint states
CAUSE_DETECTOR = "detector"  # silent failure-detector heartbeat
CAUSE_CONTROLLERS = "controllers"  # a controller is not active
CAUSE_TELEOP_RELEASED = "teleop_released"
CAUSE_TELEOP_TIMEOUT = "teleop_timeout"
CAUSE_RESET = "reset"  # left HALTED through reset()
CAUSE_RESUME = "resume"  # the operator allowed the policy again
CAUSE_OPERATOR = "operator"  # /vla/hold: stays until allow_resume()
CAUSE_INTRUDER = "intruder"  # another publisher on a controller topic the bridge owns (halts)

#: HOLD causes from which a fresh, valid policy command may bring POLICY back by itself.
AUTO_RESUME_CAUSES = frozenset({
    CAUSE_STARTUP, CAUSE_POLICY, CAUSE_WATCHDOG, CAUSE_REJECTED, CAUSE_JOINT_STATE,
    CAUSE_DETECTOR, CAUSE_CONTROLLERS, CAUSE_RESET, CAUSE_RESUME, CAUSE_TELEOP_RELEASED,
    CAUSE_TELEOP_TIMEOUT,
})


@dataclass(frozen=True)
class Transition:
    """One recorded mode change."""

    t: float
    source: Mode
    target: Mode
    reason: str
    cause: str = ""


@dataclass(frozen=True)
class Decision:
    """Answer to a request: truthy when granted; ``reason`` says why (not)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


class Arbiter:
    """The mode state machine with its watchdogs.

    Args:
        clock: Returns the current time in seconds (monotonic in the caller's time base).
        watchdog_s: POLICY → HOLD when no policy command arrived for this long.
        joint_state_timeout_s: Joint states older than this are stale (POLICY/TELEOP → HOLD).
        detector_heartbeat_s: Failure-detector heartbeat timeout; None when no detector is expected.
        teleop_timeout_s: TELEOP → HOLD when no teleop command arrived for this long.
        on_transition: Called with each :class:`Transition` after it happened.
        history: Number of transitions kept.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        watchdog_s: float,
        joint_state_timeout_s: float,
        detector_heartbeat_s: float | None = None,
        teleop_timeout_s: float = 0.5,
        on_transition: Callable[[Transition], None] | None = None,
        history: int = 100,
    ) -> None:
        for name, v in (("watchdog_s", watchdog_s), ("joint_state_timeout_s", joint_state_timeout_s),
                        ("teleop_timeout_s", teleop_timeout_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        if detector_heartbeat_s is not None and not detector_heartbeat_s > 0:
            raise ValueError(f"detector_heartbeat_s must be > 0 or None, got {detector_heartbeat_s}")
        self._clock = clock
        self.watchdog_s = float(watchdog_s)
        self.joint_state_timeout_s = float(joint_state_timeout_s)
        self.detector_heartbeat_s = detector_heartbeat_s
        self.teleop_timeout_s = float(teleop_timeout_s)
        self.on_transition = on_transition
        self.history: deque[Transition] = deque(maxlen=history)
        self._mode = Mode.HOLD
        self._reason = "startup: waiting for controllers, joint states and a policy command"
        self._cause = CAUSE_STARTUP
        self._halt_persists: Callable[[], bool] | None = None
        self._last_joint_state: float | None = None
        self._last_policy_cmd: float | None = None
        self._last_teleop_cmd: float | None = None
        self._last_heartbeat: float | None = None
        self._controllers_ok = False
        self._controllers_reason = "controllers not verified yet"
        self._extra_preconditions: list[Callable[[], str | None]] = []
        self.last_refusal = ""

    # ------------------------------------------------------------------ state
    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def reason(self) -> str:
        """Reason of the last transition (or of the initial mode)."""
        return self._reason

    @property
    def cause(self) -> str:
        """Cause of the current HOLD/HALTED ("" in POLICY/TELEOP)."""
        return self._cause

    @property
    def controllers_ok(self) -> bool:
        """Whether the last controller check found every controller active."""
        return self._controllers_ok

    def last_policy_command_age(self, now: float | None = None) -> float | None:
        """Seconds since the last policy command (None: never)."""
        if self._last_policy_cmd is None:
            return None
        return (self._clock() if now is None else now) - self._last_policy_cmd

    def policy_allowed(self) -> bool:
        """Whether policy commands may pass now."""
        return self._mode is Mode.POLICY

    def teleop_allowed(self) -> bool:
        """Whether teleop commands may pass now."""
        return self._mode is Mode.TELEOP

    def joint_states_fresh(self, now: float | None = None) -> bool:
        """Whether the last joint state is at most ``joint_state_timeout_s`` old."""
        return self._fresh(self._last_joint_state, self.joint_state_timeout_s, self._clock() if now is None else now)

    def can_auto_resume(self) -> bool:
        """Whether a fresh policy command may bring POLICY back by itself."""
        return self._mode is Mode.HOLD and self._cause in AUTO_RESUME_CAUSES

    # ------------------------------------------------------------------ inputs
    def note_joint_state(self, t: float | None = None) -> None:
        """A joint state arrived."""
        self._last_joint_state = self._clock() if t is None else t

    def note_policy_command(self, t: float | None = None) -> None:
        """A valid policy command arrived (feeds the watchdog)."""
        self._last_policy_cmd = self._clock() if t is None else t

    def note_teleop_command(self, t: float | None = None) -> None:
        """A teleop command arrived (feeds the teleop watchdog)."""
        self._last_teleop_cmd = self._clock() if t is None else t

    def note_detector_heartbeat(self, t: float | None = None) -> None:
        """The failure detector is alive."""
        self._last_heartbeat = self._clock() if t is None else t

    def set_controllers_ok(self, ok: bool, reason: str = "") -> None:
        """Result of the last controller check (the reason names the missing controllers)."""
        self._controllers_ok = bool(ok)
        self._controllers_reason = "" if ok else (reason or "controllers not active")

    def add_precondition(self, check: Callable[[], str | None]) -> None:
        """An extra POLICY precondition: returns None when met, else the reason it is not."""
        self._extra_preconditions.append(check)

    # ------------------------------------------------------------------ transitions
    def _go(self, target: Mode, reason: str, cause: str = "") -> Transition:
        source = self._mode
        if target not in TRANSITIONS[source]:
            raise RuntimeError(f"transition {source} → {target} is not allowed ({reason})")
        tr = Transition(self._clock(), source, target, reason, cause)
        self._mode, self._reason, self._cause = target, reason, cause
        if target is Mode.POLICY:
            self.last_refusal = ""
        self.history.append(tr)
        if self.on_transition is not None:
            self.on_transition(tr)
        return tr

    def _refuse(self, reason: str) -> Decision:
        self.last_refusal = reason
        return Decision(False, reason)

    def _fresh(self, last: float | None, timeout: float, now: float) -> bool:
        return last is not None and now - last <= timeout

    def policy_blockers(self, now: float | None = None) -> list[str]:
        """Why POLICY may not be entered now (empty list: preconditions hold)."""
        now = self._clock() if now is None else now
        out = []
        if not self._controllers_ok:
            out.append(self._controllers_reason)
        if not self._fresh(self._last_joint_state, self.joint_state_timeout_s, now):
            out.append("no fresh joint states" if self._last_joint_state is not None else "no joint states yet")
        if self.detector_heartbeat_s is not None and not self._fresh(
            self._last_heartbeat, self.detector_heartbeat_s, now
        ):
            out.append("failure detector heartbeat missing")
        for check in self._extra_preconditions:
            r = check()
            if r:
                out.append(r)
        return out

    def request_policy(self, reason: str = "policy command") -> Decision:
        """HOLD → POLICY when the preconditions hold (controllers active, fresh state, detector)."""
        if self._mode is Mode.POLICY:
            return Decision(True, "already in POLICY")
        if self._mode is not Mode.HOLD:
            return self._refuse(f"cannot enter POLICY from {self._mode}")
        blockers = self.policy_blockers()
        if blockers:
            return self._refuse("POLICY refused: " + "; ".join(blockers))
        self._go(Mode.POLICY, reason)
        return Decision(True, reason)

    def hold(self, reason: str, cause: str = CAUSE_OPERATOR) -> Decision:
        """Go to (or stay in, with a new cause) HOLD. Refused in HALTED."""
        if self._mode is Mode.HALTED:
            return self._refuse("HALTED: hold does not leave HALTED, reset does")
        self._go(Mode.HOLD, reason, cause)
        return Decision(True, reason)

    def allow_resume(self, reason: str = "operator resume") -> Decision:
        """Turn an operator HOLD into one the policy may leave with its next fresh command."""
        if self._mode is Mode.POLICY:
            return Decision(True, "already in POLICY")
        if self._mode is not Mode.HOLD:
            return self._refuse("cannot resume from "
                                f"{self._mode}" + (": call reset" if self._mode is Mode.HALTED else ""))
        if self._cause != CAUSE_RESUME:
            self._go(Mode.HOLD, reason, CAUSE_RESUME)
        return Decision(True, reason)

    def request_teleop(self, reason: str = "teleop requested") -> Decision:
        """HOLD/POLICY → TELEOP (needs fresh joint states). Refused in HALTED."""
        if self._mode is Mode.TELEOP:
            return Decision(True, "already in TELEOP")
        if self._mode is Mode.HALTED:
            return self._refuse("HALTED: reset before teleop")
        if not self._fresh(self._last_joint_state, self.joint_state_timeout_s, self._clock()):
            return self._refuse("TELEOP refused: no fresh joint states")
        self._last_teleop_cmd = self._clock()
        self._go(Mode.TELEOP, reason)
        return Decision(True, reason)

    def release_teleop(self, reason: str = "teleop released") -> Decision:
        """TELEOP → HOLD."""
        if self._mode is not Mode.TELEOP:
            return self._refuse(f"not in TELEOP (mode {self._mode})")
        self._go(Mode.HOLD, reason, CAUSE_TELEOP_RELEASED)
        return Decision(True, reason)

    def halt(self, reason: str, persists: Callable[[], bool] | None = None) -> Decision:
        """Latch HALTED from any mode.

        Args:
            reason: Why (recorded and reported).
            persists: "Cause still present" predicate; reset is refused while it returns True.
                A second halt while HALTED adds its predicate (both must clear).
        """
        if self._mode is Mode.HALTED:
            if persists is not None and persists is not self._halt_persists:
                prev = self._halt_persists
                self._halt_persists = persists if prev is None else (lambda: prev() or persists())
            return Decision(True, "already HALTED")
        self._halt_persists = persists
        self._go(Mode.HALTED, reason, "halt")
        return Decision(True, reason)

    def halt_cause_persists(self) -> bool:
        """Whether the registered halt cause is still present."""
        return bool(self._halt_persists is not None and self._halt_persists())

    def reset(self, reason: str = "reset") -> Decision:
        """HALTED → HOLD, refused while the halt cause persists. Not halted: nothing to do."""
        if self._mode is not Mode.HALTED:
            return Decision(True, f"not halted (mode {self._mode})")
        if self.halt_cause_persists():
            return self._refuse(f"reset refused: halt cause still present ({self._reason})")
        self._halt_persists = None
        self._go(Mode.HOLD, reason, CAUSE_RESET)
        return Decision(True, reason)

    def check(self, now: float | None = None) -> Transition | None:
        """Watchdogs: stale joint states, silent detector, no fresh policy/teleop command → HOLD.

        Returns:
            The transition made, or None.
        """
        now = self._clock() if now is None else now
        if self._mode not in (Mode.POLICY, Mode.TELEOP):
            return None
        if not self._fresh(self._last_joint_state, self.joint_state_timeout_s, now):
            age = "never" if self._last_joint_state is None else f"{now - self._last_joint_state:.3f} s ago"
            return self._go(Mode.HOLD, f"joint states stale (last {age}, timeout {self.joint_state_timeout_s} s)",
                            CAUSE_JOINT_STATE)
        if self._mode is Mode.POLICY:
            if self.detector_heartbeat_s is not None and not self._fresh(
                self._last_heartbeat, self.detector_heartbeat_s, now
            ):
                return self._go(Mode.HOLD, f"failure detector silent for more than {self.detector_heartbeat_s} s",
                                CAUSE_DETECTOR)
            if not self._fresh(self._last_policy_cmd, self.watchdog_s, now):
                age = "never" if self._last_policy_cmd is None else f"{now - self._last_policy_cmd:.3f} s"
                return self._go(Mode.HOLD, f"watchdog: no fresh policy command for {age} (limit {self.watchdog_s} s)",
                                CAUSE_WATCHDOG)
        elif not self._fresh(self._last_teleop_cmd, self.teleop_timeout_s, now):
            return self._go(Mode.HOLD, f"no teleop command for more than {self.teleop_timeout_s} s",
                            CAUSE_TELEOP_TIMEOUT)
        return None
