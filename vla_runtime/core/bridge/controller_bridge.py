"""The controller bridge's logic without ROS: who may command the robot, and what is sent.

:class:`ControllerBridge` is what :class:`~vla_runtime.nodes.controller_bridge.ControllerBridgeNode`
runs under its lock: each event the node receives (a chunk, a joint state, a halt, an operator
input, a command tick, the supervision timer) is one method call here with the time passed in, and
everything it sends goes through the groups' outputs and the callables it was given. It wires the
pieces of this package together around the :class:`~vla_runtime.core.arbiter.Arbiter`:

* policy chunks: validated (:class:`~.chunks.ChunkValidator`); a chunk that arrives in HOLD waits
  for POLICY (controllers verified, fresh joint states, detector alive); a chunk handed to the
  groups is rebased after teleop (:class:`~.chunks.ResumeRebase`);
* the command tick: per group, the policy sample, the teleop target, or the hold (captured from
  the measured state; re-sent every tick by streaming groups, when it changed or every
  :data:`HOLD_REPUBLISH_S` by joint_trajectory groups);
* inputs: every joint state, end-effector pose, plan and operator command is judged first
  (:mod:`vla_runtime.core.validation`); a refused one changes nothing — hold targets come only from
  validated measurements — and is counted per reason in the diagnostics;
* intruders: another publisher on a controller topic the bridge owns (found by the node's graph
  check) latches HALTED, naming it; reset is refused while it is there;
* mode transitions: on HOLD/HALTED the hold goes out at once from the callback that decided it
  (the log line last); on TELEOP every group holds where it is now and the teleop target starts at
  the measured state; on HALTED the hold controller takes over (:class:`~.controller_switching.ControllerSwitching`);
* teleop (:class:`~.teleop_session.TeleopSession`): takeover and release, teleop under a latched
  halt, the engage retry; shared autonomy (``teleop.policy_keeps``): in TELEOP the operator drives
  every group except those, which go on taking the policy's chunks (bumpless on both sides: the
  policy's groups never stop, the operator's start where the arm is and are rebased on handback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vla_runtime.core.arbiter import (
    CAUSE_JOINT_STATE,
    CAUSE_POLICY,
    CAUSE_REJECTED,
    CAUSE_TELEOP_TIMEOUT,
    Arbiter,
    Decision,
    Mode,
    Transition,
)
from vla_runtime.core.bridge.chunks import ChunkRejection, ChunkValidator, ResumeRebase, ValidChunk
from vla_runtime.core.bridge.controller_switching import (
    TO_POLICY,
    TO_TELEOP,
    ControllerManagerClient,
    ControllerSwitching,
    Logger,
)
from vla_runtime.core.bridge.groups import GroupOutput, GroupState, Taken, capture_holds, reset_references_to_holds
from vla_runtime.core.bridge.teleop_session import (
    TELEOP_TIMEOUT_S,
    EngageAction,
    TeleopSession,
    filter_group_command,
)
from vla_runtime.core.command_mapping import GroupCommand
from vla_runtime.core.config import ControllerGroup, RuntimeConfig
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.core.validation import NON_FINITE, OUT_OF_LIMITS, JointStateCheck, PlanCheck, Rejections

#: Cartesian impedance targets must stream at least this fast.
MIN_CARTESIAN_RATE_HZ = 50.0
#: A joint_trajectory group in HOLD re-sends its hold point this often (idempotent).
HOLD_REPUBLISH_S = 1.0
#: After a refused policy command, valid chunks bring POLICY back only once no command has been
#: refused for this long: a stream that mixes refused and valid commands (a broken policy, a second
#: publisher on /vla/action_chunk) keeps the robot in HOLD instead of switching at its rate (each
#: switch re-captures the hold from the measured state: measured the arm sagging 43 mm in 1.5 s
#: of hold/resume at 20 Hz).
REJECT_HOLDOFF_S = 0.5

OutputFactory = Callable[[str, ControllerGroup, float, SafetyFilter], GroupOutput]


class ControllerBridge:
    """Arbiter, safety filter and groups between the policy (and teleop) and the controllers.

    Not thread-safe: the node calls it under one lock.

    Args:
        cfg: The validated runtime config.
        clock: The time (s), in the time base of every ``now`` passed in.
        make_output: ``(group name, spec, period_s, safety filter)`` → the group's output.
        controller_manager: The controller_manager services.
        logger: Where transitions and failures are reported (info/warning/error).
        on_state_change: Called after a transition or a change of the controllers' state (the
            node publishes its safety state).
        mark_intervention: Called with ``start: …`` / ``end: …`` when the operator takes over or
            hands back.
        recheck_s: Interval of the controller re-verification.
    """

    def __init__(self, cfg: RuntimeConfig, clock: Callable[[], float], make_output: OutputFactory,
                 controller_manager: ControllerManagerClient, logger: Logger,
                 on_state_change: Callable[[], None], mark_intervention: Callable[[str], None],
                 recheck_s: float = 2.0) -> None:
        self.cfg = cfg
        self.robot = robot = cfg.robot
        self.clock = clock
        self.log = logger
        self.on_state_change = on_state_change
        self.mark_intervention = mark_intervention
        periods = {}
        for n, g in robot.groups.items():
            hz = g.command_rate_hz or cfg.rates.command_hz
            if g.controller == "cartesian_impedance":
                hz = max(hz, MIN_CARTESIAN_RATE_HZ)
            periods[n] = 1.0 / hz
        self.safety = SafetyFilter(robot, cfg.safety, command_period_s=min(periods.values()))
        self.detector_expected = "failure_detector" in cfg.nodes
        self.arbiter = Arbiter(
            clock=clock,
            watchdog_s=cfg.safety.watchdog_s,
            joint_state_timeout_s=cfg.safety.joint_state_timeout_s,
            detector_heartbeat_s=cfg.safety.detector_heartbeat_s if self.detector_expected else None,
            on_transition=self._on_transition,
        )
        self.cartesian = [n for n, g in robot.groups.items() if g.controller == "cartesian_impedance"]
        if self.cartesian:
            self.arbiter.add_precondition(
                lambda: None if self.ee_pose is not None else "no measured end-effector pose on /ee_pose yet"
            )
        # Measured state and the policy's chunks.
        self.joint_pos: dict[str, float] = {}
        self.ee_pose: tuple[np.ndarray, np.ndarray] | None = None
        self.halt_signal = ""
        self.pending: ValidChunk | None = None  # a chunk waiting for POLICY
        self.chunks = ChunkValidator(robot, self.safety)
        # Validation of what enters (core/validation): refused inputs change nothing and are counted.
        self.joint_states = JointStateCheck(robot, cfg.safety)
        self.pose_rejections = Rejections()
        self.plan_rejections = Rejections()
        self._plan_checks: dict[tuple[str, ...], PlanCheck] = {}
        #: Other publishers on the controller topics this bridge owns (``topic: node`` lines).
        self.intruders: tuple[str, ...] = ()
        self.rebase = ResumeRebase()
        #: Counters for diagnostics (never logged from the command tick); the teleop session adds its own.
        self.stats = {
            "chunks_received": 0, "chunks_forwarded": 0, "chunks_rejected": 0, "chunks_dropped": 0,
            "hold_requests": 0, "commands_published": 0, "ticks": 0, "hold_without_state": 0,
        }
        self.last_reject = ""
        self.last_reject_t = -np.inf
        self.last_command_t: float | None = None
        self.switching = ControllerSwitching(
            controller_manager, self.arbiter, robot.controller_names,
            robot.hold_controller if cfg.safety.halt_switches_to_hold_controller else None,
            timeout_s=cfg.safety.controller_check_timeout_s, recheck_s=recheck_s, logger=logger,
            on_change=on_state_change)
        self.teleop = TeleopSession(robot, cfg.teleop, self.safety, self.arbiter, periods,
                                    self.switching.hold_controller_engaged, self.stats)
        self.groups = {n: GroupState(n, g, periods[n], make_output(n, g, periods[n], self.safety))
                       for n, g in robot.groups.items()}
        #: Shared autonomy: the groups the policy keeps in TELEOP (not under a latched halt).
        self.policy_keeps = frozenset(cfg.teleop.policy_keeps)
        self._tp_group = self.groups.get(self.teleop.group or "")
        gripper = self.teleop.gripper_group or ""
        self._tp_gripper = self.groups.get(gripper) if gripper not in self.policy_keeps else None

    # ------------------------------------------------------------------ measured state, halt
    def note_joint_state(self, names: Sequence[str], positions: Sequence[float], now: float,
                         stamp_ns: int | None = None, now_ns: int | None = None) -> str | None:
        """A joint state arrived: validated first; a refused one changes nothing (no hold target, no
        sign of life for the joint-state watchdog).

        Returns:
            Why it was refused (counted), or None.
        """
        names = tuple(names)
        pos = np.asarray(positions, dtype=np.float64)
        why = self.joint_states.check(names, pos, stamp_ns, now_ns)
        if why is not None:
            return why
        jp = self.joint_pos
        for n, p in zip(names, pos.tolist()):
            jp[n] = p
        self.arbiter.note_joint_state(now)
        return None

    def note_ee_pose(self, position: np.ndarray, quaternion: np.ndarray) -> str | None:
        """The measured end-effector pose of the Cartesian group(s) arrived: finite, a unit-able
        quaternion, else refused and counted (returns why)."""
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quaternion))):
            return self.pose_rejections(NON_FINITE, f"/ee_pose {position.tolist()} {quaternion.tolist()}")
        if not 0.5 < float(np.linalg.norm(quaternion)) < 1.5:
            return self.pose_rejections(OUT_OF_LIMITS, f"/ee_pose orientation {quaternion.tolist()} is not a "
                                                       "unit quaternion")
        self.ee_pose = (position, quaternion)
        return None

    def internal_error(self, what: str) -> None:
        """A message made the node's handling fail (a bug or an input no check foresaw): counted,
        and whoever drives the robot stops — POLICY and TELEOP go to HOLD; HALTED stays."""
        self.stats["internal_errors"] = self.stats.get("internal_errors", 0) + 1
        self.last_reject = f"internal error: {what}"
        if self.arbiter.mode in (Mode.POLICY, Mode.TELEOP):
            self.arbiter.hold(f"internal error handling a message: {what}", CAUSE_REJECTED)

    def note_intruders(self, intruders: Sequence[str]) -> None:
        """The node's graph check: other publishers on the controller topics this bridge owns.

        One is a second source of commands the safety filter never sees (a stray script, a second
        bridge): the bridge latches HALTED — the hold controller takes over, so the intruder's
        commands reach no active controller — and names it; reset is refused until it is gone.
        """
        intruders = tuple(sorted(intruders))
        if intruders == self.intruders:
            return
        self.intruders = intruders
        if intruders:
            self.arbiter.halt(f"other publisher(s) on controller topics: {'; '.join(intruders)}",
                              persists=lambda: bool(self.intruders))
        else:
            self.log.info("no other publisher on the controller topics any more: /vla/reset may leave HALTED")
            self.on_state_change()

    def halt_cause_present(self) -> bool:
        """Whether the last ``/vla/halt`` message named a cause (an empty one clears it)."""
        return bool(self.halt_signal.strip())

    def halt(self, text: str) -> None:
        """A ``/vla/halt`` message: a cause latches HALTED (hold out at once); an empty one clears it."""
        self.halt_signal = text
        if text.strip():
            self.arbiter.halt(f"halt requested: {text.strip()}", persists=self.halt_cause_present)
        else:
            self.log.info("halt cause cleared on /vla/halt: /vla/reset may now leave HALTED")
            self.on_state_change()

    # ------------------------------------------------------------------ policy path
    def hold_request(self, reason: str) -> None:
        """The policy sent a chunk without points: it asks for HOLD."""
        self.stats["chunks_received"] += 1
        self.stats["hold_requests"] += 1
        self.pending = None
        if self.arbiter.mode is Mode.POLICY:
            self.arbiter.hold(f"policy requested HOLD: {reason or 'no reason given'}", CAUSE_POLICY)

    def chunk(self, names: tuple[str, ...], stamp_s: float, rows: Sequence[Sequence[float]],
              offsets_s: Sequence[float], now: float) -> None:
        """A policy chunk with points arrived (see :meth:`ChunkValidator.validate`)."""
        self.stats["chunks_received"] += 1
        chunk = self.chunks.validate(names, stamp_s, rows, offsets_s)
        if isinstance(chunk, ChunkRejection):
            self.plan_rejections(chunk.kind, chunk.reason)
            self._reject_policy(chunk.reason)
            return
        check = self._plan_checks.get(names)
        if check is None:
            if len(self._plan_checks) > 16:  # a publisher that changes layouts: bounded memory
                self._plan_checks.clear()
            check = self._plan_checks[names] = PlanCheck(self.robot, self.cfg.safety, names)
        why = check.check(chunk.values, chunk.stamp_s, now, self.plan_rejections)
        if why is not None:  # out of range or out of its time window: refused, never clipped
            self._reject_policy(why)
            return
        mode = self.arbiter.mode
        if mode is Mode.TELEOP and self.policy_keeps:  # shared autonomy: the policy's groups take it
            self.arbiter.note_policy_command(now)
            self._install(chunk, now, only=self.policy_keeps)
            return
        if mode in (Mode.HALTED, Mode.TELEOP):
            self.stats["chunks_dropped"] += 1
            return
        self.arbiter.note_policy_command(now)
        if mode is Mode.HOLD:
            if not self.arbiter.can_auto_resume():
                self.stats["chunks_dropped"] += 1
                return
            self.pending = chunk
            self._try_enter_policy(now)
            return
        self._install(chunk, now)

    def _reject_policy(self, reason: str) -> None:
        """A policy command that must not be sent: HOLD (when driving), count, remember why."""
        self.stats["chunks_rejected"] += 1
        self.last_reject = reason
        self.last_reject_t = self.clock()
        self.pending = None
        if self.arbiter.mode is Mode.POLICY:
            self.arbiter.hold(f"policy command rejected: {reason}", CAUSE_REJECTED)

    def _try_enter_policy(self, now: float) -> None:
        if self.pending is None:
            return
        if not self.arbiter.controllers_ok:
            self.switching.check_if_due(now)
            return
        if self.pending.times[-1] < now:
            self.pending = None
            self.stats["chunks_dropped"] += 1
            return
        if self.arbiter.cause == CAUSE_REJECTED and now - self.last_reject_t < REJECT_HOLDOFF_S:
            return  # the chunk waits; the supervision timer tries again
        if self.arbiter.request_policy("fresh policy chunk"):
            chunk, self.pending = self.pending, None
            self._install(chunk, now)

    def _install(self, chunk: ValidChunk, now: float, only: frozenset[str] | None = None) -> None:
        """Hand a chunk to the groups it drives (rebased after teleop; JT groups send it at once);
        ``only``: to these groups alone (shared autonomy in TELEOP)."""
        if self.rebase.pending and only is None:
            self.rebase.start(chunk, {g: self.groups[g].hold for g in chunk.mapper.groups})
        forwarded = False
        for gname in chunk.mapper.groups:
            if only is not None and gname not in only:
                continue
            g = self.groups[gname]
            vals = self.rebase.apply(gname, chunk.times, chunk.mapper.group_values(chunk.values, gname))
            taken = g.out.take_policy(g, chunk, vals, now)
            if isinstance(taken, SafetyResult):
                if only is not None:  # shared autonomy: the policy's group holds, the operator drives on
                    self._hold_policy_group(g, taken.reason, now)
                    continue
                self._reject_policy(taken.reason)
                return
            if taken is Taken.STALE:
                self.stats["chunks_dropped"] += 1
            elif taken is Taken.SENT:
                self._note_published(now)
            forwarded = True
        if forwarded:
            self.stats["chunks_forwarded"] += 1

    def _note_published(self, now: float) -> None:
        self.stats["commands_published"] += 1
        self.last_command_t = now

    # ------------------------------------------------------------------ command tick
    def tick(self, members: Iterable[GroupState], now: float) -> None:
        """One command period of these groups: policy sample, teleop target or hold, per group."""
        self.stats["ticks"] += 1
        mode = self.arbiter.mode
        for g in members:
            self._tick_group(g, mode, now)

    def _hold_policy_group(self, g: GroupState, reason: str, now: float) -> None:
        """Shared autonomy: a policy command for one of the policy's groups was refused: that group
        holds (where it is now) until the next valid chunk; the operator's groups are unaffected."""
        self.stats["chunks_rejected"] += 1
        self.last_reject, self.last_reject_t = reason, now
        g.policy = g.published = None
        self._capture_hold([g])
        if g.hold is not None:
            self._send_hold(g, now)

    def _tick_group(self, g: GroupState, mode: Mode, now: float) -> None:
        out, tp = g.out, self.teleop
        if mode is Mode.TELEOP and g.name in self.policy_keeps and not tp.under_halt:
            if g.policy is not None:  # shared autonomy: this group stays with the policy
                r = out.filter_policy(g.policy, now, self.joint_pos)
                if not r.rejected:
                    out.publish_sample(r.values, now)
                    self._note_published(now)
                    return
                self._hold_policy_group(g, r.reason, now)
                return
            if not g.streaming and g.published is not None:
                return  # its controller executes the policy's last trajectory
        if mode is Mode.POLICY and g.policy is not None:
            r = out.filter_policy(g.policy, now, self.joint_pos)
            if not r.rejected:
                out.publish_sample(r.values, now)
                self._note_published(now)
                return
            self._reject_policy(r.reason)  # → HOLD; publish the hold below
            mode = self.arbiter.mode
        if tp.moves_robot(mode):
            if g is self._tp_group and tp.started:
                if tp.step_due(now):
                    self._teleop_step(now)
                return
            if g is self._tp_gripper and tp.gripper is not None:
                r = self.safety.filter_gripper(g.name, tp.gripper, now)
                if not r.rejected:
                    out.publish_sample(r.values, now)
                    self._note_published(now)
                    return
        if mode is Mode.TELEOP and g.teleop is not None:
            out.publish_command(g.teleop, now)
            self._note_published(now)
            return
        if mode is Mode.POLICY and not g.streaming and g.published is not None:
            return  # the controller executes the last policy trajectory
        if g.hold is None:
            self._capture_hold([g])
            if g.hold is None:
                self.stats["hold_without_state"] += 1
                return
        if g.streaming or g.hold_dirty or now - g.hold_sent_at >= HOLD_REPUBLISH_S:
            self._send_hold(g, now)

    def _send_hold(self, g: GroupState, now: float) -> None:
        g.out.publish_command(g.hold, now)
        self._note_published(now)
        g.hold_dirty = False
        g.hold_sent_at = now

    # ------------------------------------------------------------------ holds and transitions
    def _capture_hold(self, groups: Iterable[GroupState], joint_states_stale: bool = False) -> None:
        capture_holds(groups, self.robot, self.safety, self.joint_pos, self.ee_pose, self.cartesian,
                      self.clock(), joint_states_stale)

    def _on_transition(self, tr: Transition) -> None:
        """Arbiter callback: hold targets, controller switch, report.

        The hold goes out first and the log line last: the node's logging writes the console and
        publishes on /rosout, which is not the robot's business while it still moves.
        """
        groups = self.groups.values()
        if tr.source is Mode.TELEOP and tr.target is not Mode.TELEOP:
            self._end_teleop(f"{tr.target}: {tr.reason}")
            self.rebase.pending = tr.target is Mode.HOLD
        if tr.source is Mode.HALTED and self.teleop.under_halt:
            self.teleop.under_halt = False
            self._end_teleop(f"{tr.target}: {tr.reason}")
        if tr.target is not Mode.POLICY and tr.target is not Mode.HOLD:
            self.rebase.pending = False
        if tr.target is Mode.TELEOP:
            # The operator's groups hold where they are NOW (not where they were before POLICY); the
            # teleop group's target starts at the measured state. Shared autonomy: the policy's groups
            # go on with their chunks, untouched.
            operator = [g for g in groups if g.name not in self.policy_keeps]
            for g in operator:
                g.policy = g.published = g.teleop = None
            self.pending = None
            self.rebase.stop()
            self._capture_hold(operator)
            reset_references_to_holds(operator, self.safety, self.joint_pos)
            self._begin_teleop(tr.reason)
        if tr.target in (Mode.HOLD, Mode.HALTED) and tr.source is not tr.target:
            if not (tr.target is Mode.HALTED and tr.source is Mode.HOLD):
                self._capture_hold(groups, joint_states_stale=tr.cause == CAUSE_JOINT_STATE)
            for g in groups:
                g.policy = g.published = g.teleop = None
                g.hold_dirty = True
            self.pending = None
            # The hold goes out now, from the callback that decided it, not on the next command tick.
            now = self.clock()
            for g in groups:
                if g.hold is not None:
                    self._send_hold(g, now)
        if tr.target is Mode.POLICY:
            self._capture_hold([g for g in groups if g.hold is None])
            reset_references_to_holds(groups, self.safety, self.joint_pos)
        if tr.cause == CAUSE_TELEOP_TIMEOUT:
            # An operator stream that went silent (or was refused as out of bounds) never re-engages
            # by itself on a deadman left latched: only a new press takes over.
            self.teleop.engage_wanted = False
        if tr.target is Mode.HALTED:
            self.teleop.engage_wanted = False  # after a halt, only a new press takes over
            self.switching.on_halted(self.clock())
        if tr.source is Mode.HALTED:
            self.switching.back_from_hold(TO_POLICY, self.clock())
        self.on_state_change()
        text = f"{tr.source} → {tr.target}: {tr.reason}"
        if tr.target in (Mode.POLICY, Mode.TELEOP):  # rclpy: one severity per call site
            self.log.info(text)
        else:
            self.log.warning(text)

    # ------------------------------------------------------------------ supervision, operator
    def supervise(self, now: float) -> None:
        """The supervision timer: watchdogs, controller checks and switches, waiting chunk, engage retry."""
        self.arbiter.check(now)
        if self.teleop.halt_input_timed_out(now):
            self._exit_halt_teleop(f"no teleop command for more than {TELEOP_TIMEOUT_S} s")
        if self.switching.poll_check(now, policy_waiting=self.pending is not None):
            self._try_enter_policy(now)
        self.switching.poll_switch(now)
        if self.arbiter.mode is Mode.HOLD and self.pending is not None:
            self._try_enter_policy(now)
        if self.teleop.retry_due(now, self.arbiter.mode):
            self.request_teleop("operator engaged (deadman held), retried")

    # ------------------------------------------------------------------ teleop
    def request_teleop(self, reason: str = "teleop requested") -> Decision:
        """The operator takes over: TELEOP from POLICY/HOLD; from HALTED, teleop under the latched
        halt when ``teleop.teleop_only_after_halt`` allows it. The first command goes out at once."""
        now = self.clock()
        if self.arbiter.mode is Mode.HALTED:
            d = self._enter_halt_teleop(reason, now)
        else:
            d = self.arbiter.request_teleop(reason)
        if d and self.teleop.moves_robot(self.arbiter.mode) and self.teleop.started:
            self._teleop_step(now)  # the first teleop command goes out now: hold in place
        return d

    def release_teleop(self, reason: str = "teleop released") -> Decision:
        """Leave TELEOP to HOLD (under a halt: back to holding, still HALTED)."""
        if self.teleop.under_halt:
            self._exit_halt_teleop(reason)
            return Decision(True, reason)
        return self.arbiter.release_teleop(reason)

    def operator_release(self, reason: str) -> Decision:
        """An explicit release (not undone by a deadman still held); refused when not teleoperating."""
        self.teleop.engage_wanted = False
        if not self.teleop.under_halt and self.arbiter.mode is not Mode.TELEOP:
            return Decision(False, f"not teleoperating (mode {self.arbiter.mode})")
        return self.release_teleop(reason)

    def _enter_halt_teleop(self, reason: str, now: float) -> Decision:
        if self.teleop.under_halt:
            return Decision(True, "already teleoperating under the halt")
        d = self.teleop.start_under_halt(now)
        if not d:
            return d
        groups = self.groups.values()
        self._capture_hold(groups)
        reset_references_to_holds(groups, self.safety, self.joint_pos)
        self.switching.back_from_hold(TO_TELEOP, now)
        self._begin_teleop(f"under halt: {reason}")
        self.log.warning(f"HALTED: operator teleop under the latched halt ({reason}); reset still needed")
        self.on_state_change()
        return Decision(True, f"teleop under the latched halt: {reason}")

    def _exit_halt_teleop(self, reason: str) -> None:
        self.teleop.under_halt = False
        self._end_teleop(f"HALTED: {reason}")
        self._capture_hold(self.groups.values())
        self.switching.to_hold(self.clock())
        self.log.warning(f"HALTED: teleop under the halt ended ({reason}); holding")
        self.on_state_change()

    def _begin_teleop(self, reason: str) -> None:
        """Start the teleop target at the measured state; mark the intervention (with the groups the
        operator takes, under shared autonomy)."""
        error = self.teleop.begin(self.clock(), self.joint_pos, self.ee_pose)
        if error:
            self.log.error(error)
        self.mark_intervention(f"start: {reason}{self._operator_groups_text()}")

    def _operator_groups_text(self) -> str:
        if not self.policy_keeps or self.teleop.under_halt:
            return ""
        ops = [n for n in self.groups if n not in self.policy_keeps]
        return f" [operator: {', '.join(ops)}; policy: {', '.join(sorted(self.policy_keeps))}]"

    def _end_teleop(self, reason: str) -> None:
        self.teleop.end()
        self.mark_intervention(f"end: {reason}")

    def _teleop_step(self, now: float) -> None:
        """Integrate the newest operator command onto the teleop target; filter; publish."""
        tp, g = self.teleop, self._tp_group
        target = tp.advance(now)
        if target is None or g is None:
            return
        r = g.out.filter_teleop(tp.integrator, target, now, self.joint_pos)
        if r.rejected:
            self.stats["teleop_rejected"] += 1
            if self.arbiter.mode is Mode.TELEOP:
                self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
            elif tp.under_halt:
                self._exit_halt_teleop(f"teleop command rejected: {r.reason}")
            return
        self.stats["teleop_commands"] += 1
        g.out.publish_teleop(r.values, tp.integrator.qdot, now)
        self._note_published(now)

    def engage(self, pressed: bool) -> Decision | None:
        """The deadman's state: a press takes over, a release hands back (a repeat does nothing).

        Returns:
            The answer to a takeover it asked for, else None.
        """
        action = self.teleop.engage(pressed, self.arbiter.mode)
        if action is EngageAction.RELEASE:
            self.release_teleop("operator released the deadman")
        if action is not EngageAction.TAKE:
            return None
        return self.request_teleop("operator engaged (deadman held)")

    def _frame_ok(self, frame_id: str) -> bool:
        error = self.teleop.frame_error(frame_id)
        if error:
            self.last_reject = error
        return error is None

    def teleop_twist(self, twist: np.ndarray, frame_id: str, now: float) -> None:
        """An operator twist (base frame): taken, and integrated at once when a step is due."""
        if (self._frame_ok(frame_id) and self.teleop.twist_input(twist, now, self.arbiter.mode)
                and self.teleop.step_due(now)):
            self._teleop_step(now)  # do not wait for the next tick

    def teleop_pose(self, position: Sequence[float], quaternion: Sequence[float], frame_id: str,
                    now: float) -> None:
        """An operator pose target (base frame), servoed by the next ticks."""
        if self._frame_ok(frame_id):
            self.teleop.pose_input(position, quaternion, now, self.arbiter.mode)

    def teleop_jog(self, names: Sequence[str], velocities: Sequence[float], now: float) -> None:
        """An operator joint jog (velocities by name)."""
        self.teleop.jog_input(names, velocities, now, self.arbiter.mode)

    def teleop_gripper(self, value: float, now: float) -> None:
        """An operator gripper opening (sent by the next ticks)."""
        self.teleop.gripper_input(value, now, self.arbiter.mode)

    def teleop_command(self, command: GroupCommand, now: float) -> SafetyResult | None:
        """Filter a programmatic teleop command and make it the group's target (sent by the command
        tick; a joint_trajectory group's at once).

        Returns:
            What will really be sent, or None when teleop commands may not pass now (not TELEOP).
        """
        if not self.arbiter.teleop_allowed():
            self.stats["teleop_rejected"] += 1
            return None
        g = self.groups[command.group]
        r, safe = filter_group_command(self.safety, command, now, self.joint_pos)
        if r.rejected:
            self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
            return r
        self.arbiter.note_teleop_command(now)
        g.teleop = safe
        if not g.streaming:
            g.out.publish_command(safe, now)
            self._note_published(now)
        return r

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, now: float, command_rate_hz: float) -> dict[str, str]:
        """The key-values of the bridge's safety state and diagnostics."""
        a, counters = self.arbiter, self.safety.counters
        age = "never" if self.last_command_t is None else f"{now - self.last_command_t:.3f}"
        return {
            "mode": str(a.mode),
            "mode_since_s": f"{a.history[-1].t:.6f}" if a.history else "",  # the bridge's clock
            "reason": a.reason,
            "cause": a.cause,
            "policy_refused": a.last_refusal,
            "controllers": self.switching.status,
            "switch_controller": self.switching.switch_status,
            "halt_cause_present": str(self.halt_cause_present()).lower(),
            "teleop": ("engaged" + self._operator_groups_text() if a.mode is Mode.TELEOP
                       else "engaged under halt" if self.teleop.under_halt else "off"),
            "teleop_group": self.teleop.group or "none",
            "teleop_kinematics": self.teleop.kinematics,
            "interventions": str(self.safety.total_interventions),
            "interventions_by_kind": ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "none",
            "interventions_by_name": "; ".join(
                f"{n}: " + ",".join(f"{k}={v}" for k, v in sorted(d.items()))
                for n, d in sorted(self.safety.counters_by_name.items())) or "none",
            "command_rate_hz": f"{command_rate_hz:.1f}",
            "last_command_age_s": age,
            "last_rejected": self.last_reject,
            "intruders": "; ".join(self.intruders) or "none",
            **self.joint_states.rejections.as_diagnostics("joint_states_rejected"),
            **self.pose_rejections.as_diagnostics("ee_pose_rejected"),
            **self.plan_rejections.as_diagnostics("plans_rejected"),
            **self.teleop.check.rejections.as_diagnostics("teleop_rejected_by"),
            **{k: str(v) for k, v in self.stats.items()},
        }
