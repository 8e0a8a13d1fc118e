"""controller_bridge: the only node that commands the robot's ros2_control controllers.

It takes the scheduled action chunks of the policy (``/vla/action_chunk``), lets an
:class:`~vla_runtime.core.arbiter.Arbiter` decide who may move the robot (POLICY, TELEOP, HOLD,
HALTED), passes every command through the :class:`~vla_runtime.core.safety_filter.SafetyFilter`
and publishes what is really sent on exactly one publisher per controller topic.

Subscriptions:
    ``/vla/action_chunk`` (JointTrajectory, QOS_COMMAND) — policy chunks; no points = HOLD request.
    ``/joint_states`` (JointState, best effort: matches reliable and best-effort publishers).
    ``/ee_pose`` (PoseStamped, best effort) — measured end-effector pose of the Cartesian group(s).
    ``/vla/halt`` (String, QOS_LATCHED) — a non-empty string halts (latched); the halt cause is
    considered present until an empty string is published on the same topic.
    ``/vla/detector_heartbeat`` (Header, best effort) — enforced only when the config's ``nodes``
    lists ``failure_detector``.

Publications:
    one per group on its controller topic: ``/<c>/joint_trajectory`` (JointTrajectory),
    ``/<c>/commands`` (Float64MultiArray), ``/<c>/target_pose`` (PoseStamped),
    ``/<c>/target_joint`` (JointState), ``/<c>/cmd_vel`` (Twist); ``/<c>/target_stiffness``
    (Float64MultiArray) for Cartesian groups with ``stiffness_limits``;
    ``/vla/safety_state`` (DiagnosticStatus, QOS_LATCHED) on every transition and at 2 Hz;
    ``/diagnostics`` (DiagnosticArray) at 2 Hz.

Teleoperation (topics named in :mod:`vla_runtime.core.teleop`):
    ``/vla/teleop/engage`` (Bool, reliable) — True: the operator takes over (→ TELEOP, from POLICY
    or HOLD; from HALTED only when ``teleop.teleop_only_after_halt``: the halt stays latched and
    teleop is the only thing that moves the robot until ``/vla/reset``); False: → HOLD.
    ``/vla/teleop/twist`` (TwistStamped, base frame), ``/vla/teleop/pose`` (PoseStamped, absolute
    target, servoed at the teleop speed limits), ``/vla/teleop/joint_jog`` (JointState velocities),
    ``/vla/teleop/gripper`` (Float64). Every command tick integrates the newest operator command
    onto the ``teleop.group`` target, which starts at the MEASURED state when teleop engages; a
    Cartesian command on a joint group goes through the damped-least-squares Jacobian of the
    robot's kinematic model (:mod:`vla_runtime.core.kinematics`; a robot without one takes joint
    jogs only). The result goes through the same SafetyFilter and the same publisher as the
    policy's commands. An operator stream silent for ``TELEOP_INPUT_FRESH_S`` stops the target;
    silent for the arbiter's teleop timeout → HOLD. When the policy resumes after teleop, its
    commands are rebased onto the state it resumes from (the offset fades out over
    ``REBASE_S``), so neither switch jumps.
    ``/vla/intervention`` (String, reliable) — ``start: …`` / ``end: …`` whenever the operator
    takes over or hands back (HG-DAgger labels for the recorder).

Services: ``/vla/reset``, ``/vla/hold``, ``/vla/resume``, ``/vla/teleop/take``,
``/vla/teleop/release`` (std_srvs/Trigger).
Clients: ``/controller_manager/list_controllers``, ``/controller_manager/switch_controller`` —
always asynchronous, with deadlines checked in the supervision timer.

Parameters: ``config_file`` (the runtime YAML), ``status_rate_hz`` (2.0),
``controller_recheck_s`` (2.0: re-verify active controllers; 1 s retry after a failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.arbiter import (
    CAUSE_JOINT_STATE,
    CAUSE_OPERATOR,
    CAUSE_POLICY,
    CAUSE_REJECTED,
    Arbiter,
    Decision,
    Mode,
    Transition,
)
from vla_runtime.core.bridge.chunks import ChunkRejection, ChunkValidator, ResumeRebase, ValidChunk
from vla_runtime.core.bridge.controller_switching import TO_POLICY, TO_TELEOP, ControllerSwitching
from vla_runtime.core.bridge.groups import GroupState, capture_holds, reset_references_to_holds
from vla_runtime.core.bridge.teleop_session import (
    TELEOP_TIMEOUT_S,
    EngageAction,
    TeleopSession,
    filter_group_command,
)
from vla_runtime.core.command_mapping import GroupCommand
from vla_runtime.core.config import ControllerGroup, RuntimeConfig
from vla_runtime.core.contract import (
    SERVICE_HOLD,
    SERVICE_LIST_CONTROLLERS,
    SERVICE_RESET,
    SERVICE_RESUME,
    SERVICE_SWITCH_CONTROLLER,
    SERVICE_TELEOP_RELEASE,
    SERVICE_TELEOP_TAKE,
    TOPIC_ACTION_CHUNK,
    TOPIC_DETECTOR_HEARTBEAT,
    TOPIC_DIAGNOSTICS,
    TOPIC_EE_POSE,
    TOPIC_HALT,
    TOPIC_INTERVENTION,
    TOPIC_JOINT_STATES,
    TOPIC_SAFETY_STATE,
    TOPIC_TELEOP_ENGAGE,
    TOPIC_TELEOP_GRIPPER,
    TOPIC_TELEOP_JOINT_JOG,
    TOPIC_TELEOP_POSE,
    TOPIC_TELEOP_TWIST,
)
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.nodes.bridge_outputs import OUTPUTS, GroupOutput, RclpyControllerManager, Taken, build_output
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    load_node_config,
    run_node,
    stamp_to_ns,
)

#: A joint_trajectory group in HOLD re-sends its hold point this often (idempotent).
HOLD_REPUBLISH_S = 1.0
SUPERVISE_HZ = 20.0
#: Engage/intervention events: reliable, none lost, not replayed to late joiners.
QOS_EVENT = QOS_DIAGNOSTICS

_LEVEL = {
    Mode.POLICY: DiagnosticStatus.OK,
    Mode.TELEOP: DiagnosticStatus.OK,
    Mode.HOLD: DiagnosticStatus.WARN,
    Mode.HALTED: DiagnosticStatus.ERROR,
}


class _Group(GroupState):
    """A controller group's state and its one output."""

    def __init__(self, name: str, spec: ControllerGroup, period_s: float, out: GroupOutput) -> None:
        super().__init__(name, spec, period_s, out.streaming)
        self.out = out


class ControllerBridgeNode(Node):
    """Arbiter + SafetyFilter between the policy (and teleop) and the ros2_control controllers.

    Args:
        config: A validated runtime config; None reads the ``config_file`` parameter.
        node_name: The ROS node name.
    """

    def __init__(self, config: RuntimeConfig | None = None, node_name: str = "controller_bridge") -> None:
        super().__init__(node_name)
        self.cfg = config if config is not None else load_node_config(self)
        self.robot = robot = self.cfg.robot
        self.declare_parameter("status_rate_hz", 2.0)
        self.declare_parameter("controller_recheck_s", 2.0)
        status_hz = float(self.get_parameter("status_rate_hz").value)

        self._lock = threading.RLock()
        self._cmd_cbg = MutuallyExclusiveCallbackGroup()
        self._io_cbg = MutuallyExclusiveCallbackGroup()

        periods = {n: 1.0 / max(g.command_rate_hz or self.cfg.rates.command_hz, OUTPUTS[g.controller].min_rate_hz)
                   for n, g in robot.groups.items()}
        self.safety = SafetyFilter(robot, self.cfg.safety, command_period_s=min(periods.values()))
        self._detector_expected = "failure_detector" in self.cfg.nodes
        self.arbiter = Arbiter(
            clock=self._now,
            watchdog_s=self.cfg.safety.watchdog_s,
            joint_state_timeout_s=self.cfg.safety.joint_state_timeout_s,
            detector_heartbeat_s=self.cfg.safety.detector_heartbeat_s if self._detector_expected else None,
            on_transition=self._on_transition,
        )
        self._cartesian = [n for n, g in robot.groups.items() if g.controller == "cartesian_impedance"]
        if self._cartesian:
            self.arbiter.add_precondition(
                lambda: None if self._ee_pose is not None else "no measured end-effector pose on /ee_pose yet"
            )

        # Measured state and the policy's chunks.
        self._joint_pos: dict[str, float] = {}
        self._ee_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._halt_signal = ""
        self._pending: ValidChunk | None = None  # a chunk waiting for POLICY
        self._chunks = ChunkValidator(robot, self.safety)
        self._rebase = ResumeRebase()

        # Statistics (published in diagnostics; never logged from the command timer). The teleop
        # session adds its counters after these.
        self._stats = {
            "chunks_received": 0, "chunks_forwarded": 0, "chunks_rejected": 0, "chunks_dropped": 0,
            "hold_requests": 0, "commands_published": 0, "ticks": 0, "hold_without_state": 0,
        }
        self._last_reject = ""
        self._last_command_t: float | None = None
        self._rate_window = (time.monotonic(), 0)
        self._command_rate_hz = 0.0

        self.switching = ControllerSwitching(
            self._controller_manager(), self.arbiter, robot.controller_names,
            robot.hold_controller if self.cfg.safety.halt_switches_to_hold_controller else None,
            timeout_s=self.cfg.safety.controller_check_timeout_s,
            recheck_s=float(self.get_parameter("controller_recheck_s").value),
            logger=self.get_logger(), on_change=self._publish_state)
        self.teleop = TeleopSession(robot, self.cfg.teleop, self.safety, self.arbiter, periods,
                                    self.switching.hold_controller_engaged, self._stats)
        self._groups = {n: _Group(n, g, periods[n], build_output(n, g, periods[n], self.safety, self._advertise))
                        for n, g in robot.groups.items()}
        self._tp_group = self._groups.get(self.teleop.group or "")
        self._tp_gripper = self._groups.get(self.teleop.gripper_group or "")
        self._make_interfaces(status_hz)
        self.get_logger().info(
            f"controller_bridge: {len(self._groups)} group(s) "
            + ", ".join(f"{n}→{rt.spec.resolved_topic} @ {1 / rt.period_s:.0f} Hz" for n, rt in self._groups.items())
            + f"; detector heartbeat {'enforced' if self._detector_expected else 'not expected'}"
        )

    # ------------------------------------------------------------------ setup
    def _advertise(self, msg_type: type, topic: str) -> Callable[[object], None]:
        return self.create_publisher(msg_type, topic, QOS_COMMAND).publish

    def _controller_manager(self) -> RclpyControllerManager:
        from controller_manager_msgs.srv import ListControllers, SwitchController

        cbg = ReentrantCallbackGroup()
        return RclpyControllerManager(
            self.create_client(ListControllers, SERVICE_LIST_CONTROLLERS, callback_group=cbg),
            self.create_client(SwitchController, SERVICE_SWITCH_CONTROLLER, callback_group=cbg))

    def _make_interfaces(self, status_hz: float) -> None:
        self._state_pub = self.create_publisher(DiagnosticStatus, TOPIC_SAFETY_STATE, QOS_LATCHED)
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        io = self._io_cbg
        self.create_subscription(JointTrajectory, TOPIC_ACTION_CHUNK, self._on_chunk, QOS_COMMAND, callback_group=io)
        self.create_subscription(JointState, TOPIC_JOINT_STATES, self._on_joint_state, QOS_SENSOR, callback_group=io)
        self.create_subscription(PoseStamped, TOPIC_EE_POSE, self._on_ee_pose, QOS_SENSOR, callback_group=io)
        self.create_subscription(String, TOPIC_HALT, self._on_halt, QOS_LATCHED, callback_group=io)
        if self._detector_expected:
            self.create_subscription(Header, TOPIC_DETECTOR_HEARTBEAT, self._on_heartbeat, QOS_SENSOR,
                                     callback_group=io)
        self.create_service(Trigger, SERVICE_RESET, self._srv_reset, callback_group=io)
        self.create_service(Trigger, SERVICE_HOLD, self._srv_hold, callback_group=io)
        self.create_service(Trigger, SERVICE_RESUME, self._srv_resume, callback_group=io)
        # Teleop: operator intent and commands share the command group with the timers, so an
        # arriving command is integrated and sent at once (takeover latency ≈ one DDS hop).
        cmd = self._cmd_cbg
        self.create_subscription(Bool, TOPIC_TELEOP_ENGAGE, self._on_engage, QOS_EVENT, callback_group=cmd)
        self.create_subscription(TwistStamped, TOPIC_TELEOP_TWIST, self._on_teleop_twist, QOS_COMMAND,
                                 callback_group=cmd)
        self.create_subscription(PoseStamped, TOPIC_TELEOP_POSE, self._on_teleop_pose, QOS_COMMAND, callback_group=cmd)
        self.create_subscription(JointState, TOPIC_TELEOP_JOINT_JOG, self._on_teleop_jog, QOS_COMMAND,
                                 callback_group=cmd)
        self.create_subscription(Float64, TOPIC_TELEOP_GRIPPER, self._on_teleop_gripper, QOS_COMMAND,
                                 callback_group=cmd)
        self.create_service(Trigger, SERVICE_TELEOP_TAKE, self._srv_teleop_take, callback_group=io)
        self.create_service(Trigger, SERVICE_TELEOP_RELEASE, self._srv_teleop_release, callback_group=io)
        self._intervention_pub = self.create_publisher(String, TOPIC_INTERVENTION, QOS_EVENT)
        for period in sorted({rt.period_s for rt in self._groups.values()}):
            members = [rt for rt in self._groups.values() if rt.period_s == period]
            self.create_timer(period, self._make_tick(members), callback_group=cmd)
        self.create_timer(1.0 / SUPERVISE_HZ, self._supervise, callback_group=io)
        self.create_timer(1.0 / status_hz, self._publish_status, callback_group=io)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def mode(self) -> Mode:
        """The arbiter's mode."""
        return self.arbiter.mode

    # ------------------------------------------------------------------ measured state, halt
    def _on_joint_state(self, msg: JointState) -> None:
        now = self._now()
        with self._lock:
            for n, p in zip(msg.name, msg.position):
                self._joint_pos[n] = p
            self.arbiter.note_joint_state(now)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            self._ee_pose = (np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))

    def _on_heartbeat(self, _msg: Header) -> None:
        with self._lock:
            self.arbiter.note_detector_heartbeat(self._now())

    def _halt_cause_present(self) -> bool:
        return bool(self._halt_signal.strip())

    def _on_halt(self, msg: String) -> None:
        with self._lock:
            self._halt_signal = msg.data
            if msg.data.strip():
                self.arbiter.halt(f"halt requested: {msg.data.strip()}", persists=self._halt_cause_present)
            else:
                self.get_logger().info("halt cause cleared on /vla/halt: /vla/reset may now leave HALTED")
                self._publish_state()

    # ------------------------------------------------------------------ policy path
    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._now()
        with self._lock:
            self._stats["chunks_received"] += 1
            if not msg.points:
                self._stats["hold_requests"] += 1
                self._pending = None
                if self.arbiter.mode is Mode.POLICY:
                    self.arbiter.hold(f"policy requested HOLD: {msg.header.frame_id or 'no reason given'}",
                                      CAUSE_POLICY)
                return
            chunk = self._chunks.validate(tuple(msg.joint_names), stamp_to_ns(msg.header.stamp) * 1e-9,
                                          [p.positions for p in msg.points],
                                          [stamp_to_ns(p.time_from_start) * 1e-9 for p in msg.points])
            if isinstance(chunk, ChunkRejection):
                self._reject_policy(chunk.reason)
                return
            mode = self.arbiter.mode
            if mode in (Mode.HALTED, Mode.TELEOP):
                self._stats["chunks_dropped"] += 1
                return
            self.arbiter.note_policy_command(now)
            if mode is Mode.HOLD:
                if not self.arbiter.can_auto_resume():
                    self._stats["chunks_dropped"] += 1
                    return
                self._pending = chunk
                self._try_enter_policy(now)
                return
            self._install(chunk, now)

    def _reject_policy(self, reason: str) -> None:
        """A policy command that must not be sent: HOLD (when driving), count, remember why."""
        self._stats["chunks_rejected"] += 1
        self._last_reject = reason
        self._pending = None
        if self.arbiter.mode is Mode.POLICY:
            self.arbiter.hold(f"policy command rejected: {reason}", CAUSE_REJECTED)

    def _try_enter_policy(self, now: float) -> None:
        if self._pending is None:
            return
        if not self.arbiter.controllers_ok:
            self.switching.check_if_due(now)
            return
        if self._pending.times[-1] < now:
            self._pending = None
            self._stats["chunks_dropped"] += 1
            return
        if self.arbiter.request_policy("fresh policy chunk"):
            chunk, self._pending = self._pending, None
            self._install(chunk, now)

    def _install(self, chunk: ValidChunk, now: float) -> None:
        """Hand a chunk to the groups it drives (rebased after teleop; JT groups send it at once)."""
        if self._rebase.pending:
            self._rebase.start(chunk, {g: self._groups[g].hold for g in chunk.mapper.groups})
        forwarded = False
        for gname in chunk.mapper.groups:
            rt = self._groups[gname]
            vals = self._rebase.apply(gname, chunk.times, chunk.mapper.group_values(chunk.values, gname))
            taken = rt.out.take_policy(rt, chunk, vals, now)
            if isinstance(taken, SafetyResult):
                self._reject_policy(taken.reason)
                return
            if taken is Taken.STALE:
                self._stats["chunks_dropped"] += 1
            elif taken is Taken.SENT:
                self._note_published(now)
            forwarded = True
        if forwarded:
            self._stats["chunks_forwarded"] += 1

    def _note_published(self, now: float) -> None:
        self._stats["commands_published"] += 1
        self._last_command_t = now

    # ------------------------------------------------------------------ command timer
    def _make_tick(self, members: list[_Group]) -> Callable[[], None]:
        def tick() -> None:
            now = self._now()
            with self._lock:
                self._stats["ticks"] += 1
                mode = self.arbiter.mode
                for rt in members:
                    self._tick_group(rt, mode, now)

        return tick

    def _tick_group(self, rt: _Group, mode: Mode, now: float) -> None:
        out, tp = rt.out, self.teleop
        if mode is Mode.POLICY and rt.policy is not None:
            r = out.filter_policy(rt.policy, now, self._joint_pos)
            if not r.rejected:
                out.publish_sample(r.values, now)
                self._note_published(now)
                return
            self._reject_policy(r.reason)  # → HOLD; publish the hold below
            mode = self.arbiter.mode
        if tp.moves_robot(mode):
            if rt is self._tp_group and tp.started:
                if tp.step_due(now):
                    self._teleop_step(now)
                return
            if rt is self._tp_gripper and tp.gripper is not None:
                r = self.safety.filter_gripper(rt.name, tp.gripper, now)
                if not r.rejected:
                    out.publish_sample(r.values, now)
                    self._note_published(now)
                    return
        if mode is Mode.TELEOP and rt.teleop is not None:
            out.publish_command(rt.teleop, now)
            self._note_published(now)
            return
        if mode is Mode.POLICY and not rt.streaming and rt.published is not None:
            return  # the controller executes the last policy trajectory
        if rt.hold is None:
            self._capture_hold([rt])
            if rt.hold is None:
                self._stats["hold_without_state"] += 1
                return
        if rt.streaming or rt.hold_dirty or now - rt.hold_sent_at >= HOLD_REPUBLISH_S:
            self._send_hold(rt, now)

    def _send_hold(self, rt: _Group, now: float) -> None:
        rt.out.publish_command(rt.hold, now)
        self._note_published(now)
        rt.hold_dirty = False
        rt.hold_sent_at = now

    # ------------------------------------------------------------------ holds and transitions
    def _capture_hold(self, groups: Iterable[_Group], joint_states_stale: bool = False) -> None:
        capture_holds(groups, self.robot, self.safety, self._joint_pos, self._ee_pose, self._cartesian,
                      self._now(), joint_states_stale)

    def _reset_references_to_hold(self) -> None:
        reset_references_to_holds(self._groups.values(), self.safety, self._joint_pos)

    def _on_transition(self, tr: Transition) -> None:
        """Arbiter callback (called with the lock held): hold targets, controller switch, report.

        The hold goes out first and the log line last: rclpy logging writes the console and
        publishes on /rosout, which is not the robot's business while it still moves.
        """
        groups = self._groups.values()
        if tr.source is Mode.TELEOP and tr.target is not Mode.TELEOP:
            self._end_teleop(f"{tr.target}: {tr.reason}")
            self._rebase.pending = tr.target is Mode.HOLD
        if tr.source is Mode.HALTED and self.teleop.under_halt:
            self.teleop.under_halt = False
            self._end_teleop(f"{tr.target}: {tr.reason}")
        if tr.target is not Mode.POLICY and tr.target is not Mode.HOLD:
            self._rebase.pending = False
        if tr.target is Mode.TELEOP:
            # Everything holds where it is NOW (not where it was before POLICY); the teleop group's
            # target starts at the measured state.
            for rt in groups:
                rt.policy = rt.published = rt.teleop = None
            self._pending = None
            self._rebase.stop()
            self._capture_hold(groups)
            self._reset_references_to_hold()
            self._begin_teleop(tr.reason)
        if tr.target in (Mode.HOLD, Mode.HALTED) and tr.source is not tr.target:
            if not (tr.target is Mode.HALTED and tr.source is Mode.HOLD):
                self._capture_hold(groups, joint_states_stale=tr.cause == CAUSE_JOINT_STATE)
            for rt in groups:
                rt.policy = rt.published = rt.teleop = None
                rt.hold_dirty = True
            self._pending = None
            # The hold goes out now, from the callback that decided it, not on the next command tick.
            now = self._now()
            for rt in groups:
                if rt.hold is not None:
                    self._send_hold(rt, now)
        if tr.target is Mode.POLICY:
            self._capture_hold([rt for rt in groups if rt.hold is None])
            self._reset_references_to_hold()
        if tr.target is Mode.HALTED:
            self.teleop.engage_wanted = False  # after a halt, only a new press takes over
            self.switching.on_halted(self._now())
        if tr.source is Mode.HALTED:
            self.switching.back_from_hold(TO_POLICY, self._now())
        self._publish_state()
        text = f"{tr.source} → {tr.target}: {tr.reason}"
        if tr.target in (Mode.POLICY, Mode.TELEOP):  # rclpy: one severity per call site
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ supervision, services
    def _supervise(self) -> None:
        now = self._now()
        with self._lock:
            self.arbiter.check(now)
            if self.teleop.halt_input_timed_out(now):
                self._exit_halt_teleop(f"no teleop command for more than {TELEOP_TIMEOUT_S} s")
            if self.switching.poll_check(now, policy_waiting=self._pending is not None):
                self._try_enter_policy(now)
            self.switching.poll_switch(now)
            if self.arbiter.mode is Mode.HOLD and self._pending is not None:
                self._try_enter_policy(now)
            if self.teleop.retry_due(now, self.arbiter.mode):
                self.request_teleop("operator engaged (deadman held), retried")

    def _srv_reset(self, _req, resp):
        with self._lock:
            d = self.arbiter.reset("reset via /vla/reset")
        return self._answer(resp, d)

    def _srv_hold(self, _req, resp):
        with self._lock:
            d = self.arbiter.hold("operator HOLD via /vla/hold", CAUSE_OPERATOR)
        return self._answer(resp, d)

    def _srv_resume(self, _req, resp):
        with self._lock:
            d = self.arbiter.allow_resume("operator resume via /vla/resume: POLICY on the next valid chunk")
        return self._answer(resp, d)

    @staticmethod
    def _answer(resp, d: Decision):
        resp.success = d.ok
        resp.message = d.reason
        return resp

    # ------------------------------------------------------------------ teleop
    def request_teleop(self, reason: str = "teleop requested") -> Decision:
        """The operator takes over: TELEOP from POLICY/HOLD; from HALTED, teleop under the latched
        halt when ``teleop.teleop_only_after_halt`` allows it."""
        with self._lock:
            now = self._now()
            if self.arbiter.mode is Mode.HALTED:
                d = self._enter_halt_teleop(reason, now)
            else:
                d = self.arbiter.request_teleop(reason)
            if d and self.teleop.moves_robot(self.arbiter.mode) and self.teleop.started:
                self._teleop_step(now)  # the first teleop command goes out now: hold in place
            return d

    def release_teleop(self, reason: str = "teleop released") -> Decision:
        """Leave TELEOP to HOLD (under a halt: back to holding, still HALTED)."""
        with self._lock:
            if self.teleop.under_halt:
                self._exit_halt_teleop(reason)
                return Decision(True, reason)
            return self.arbiter.release_teleop(reason)

    def _enter_halt_teleop(self, reason: str, now: float) -> Decision:
        if self.teleop.under_halt:
            return Decision(True, "already teleoperating under the halt")
        d = self.teleop.start_under_halt(now)
        if not d:
            return d
        self._capture_hold(self._groups.values())
        self._reset_references_to_hold()
        self.switching.back_from_hold(TO_TELEOP, now)
        self._begin_teleop(f"under halt: {reason}")
        self.get_logger().warning(f"HALTED: operator teleop under the latched halt ({reason}); reset still needed")
        self._publish_state()
        return Decision(True, f"teleop under the latched halt: {reason}")

    def _exit_halt_teleop(self, reason: str) -> None:
        self.teleop.under_halt = False
        self._end_teleop(f"HALTED: {reason}")
        self._capture_hold(self._groups.values())
        self.switching.to_hold(self._now())
        self.get_logger().warning(f"HALTED: teleop under the halt ended ({reason}); holding")
        self._publish_state()

    def _begin_teleop(self, reason: str) -> None:
        """Start the teleop target at the measured state; mark the intervention."""
        error = self.teleop.begin(self._now(), self._joint_pos, self._ee_pose)
        if error:
            self.get_logger().error(error)
        self._intervention_pub.publish(String(data=f"start: {reason}"))

    def _end_teleop(self, reason: str) -> None:
        self.teleop.end()
        self._intervention_pub.publish(String(data=f"end: {reason}"))

    def _teleop_step(self, now: float) -> None:
        """Integrate the newest operator command onto the teleop target; filter; publish."""
        tp, rt = self.teleop, self._tp_group
        target = tp.advance(now)
        if target is None or rt is None:
            return
        r = rt.out.filter_teleop(tp.integrator, target, now, self._joint_pos)
        if r.rejected:
            self._stats["teleop_rejected"] += 1
            if self.arbiter.mode is Mode.TELEOP:
                self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
            elif tp.under_halt:
                self._exit_halt_teleop(f"teleop command rejected: {r.reason}")
            return
        self._stats["teleop_commands"] += 1
        rt.out.publish_teleop(r.values, tp.integrator.qdot, now)
        self._note_published(now)

    def _on_engage(self, msg: Bool) -> None:
        with self._lock:
            action = self.teleop.engage(bool(msg.data), self.arbiter.mode)
            if action is EngageAction.RELEASE:
                self.release_teleop("operator released the deadman")
            if action is not EngageAction.TAKE:
                return
            d = self.request_teleop("operator engaged (deadman held)")
        if not d:
            self.get_logger().warning(f"teleop engage refused: {d.reason}")

    def _frame_ok(self, frame_id: str) -> bool:
        error = self.teleop.frame_error(frame_id)
        if error:
            self._last_reject = error
        return error is None

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        now = self._now()
        lin, ang = msg.twist.linear, msg.twist.angular
        v = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float64)
        with self._lock:
            if (self._frame_ok(msg.header.frame_id) and self.teleop.twist_input(v, now, self.arbiter.mode)
                    and self.teleop.step_due(now)):
                self._teleop_step(now)  # do not wait for the next tick

    def _on_teleop_pose(self, msg: PoseStamped) -> None:
        now = self._now()
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            if self._frame_ok(msg.header.frame_id):
                self.teleop.pose_input((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), now, self.arbiter.mode)

    def _on_teleop_jog(self, msg: JointState) -> None:
        now = self._now()
        with self._lock:
            self.teleop.jog_input(msg.name, msg.velocity, now, self.arbiter.mode)

    def _on_teleop_gripper(self, msg: Float64) -> None:
        now = self._now()
        with self._lock:
            self.teleop.gripper_input(msg.data, now, self.arbiter.mode)

    def _srv_teleop_take(self, _req, resp):
        d = self.request_teleop("operator take via /vla/teleop/take")
        return self._answer(resp, d)

    def _srv_teleop_release(self, _req, resp):
        with self._lock:
            self.teleop.engage_wanted = False  # an explicit release is not undone by a held deadman
            if not self.teleop.under_halt and self.arbiter.mode is not Mode.TELEOP:
                return self._answer(resp, Decision(False, f"not teleoperating (mode {self.arbiter.mode})"))
            d = self.release_teleop("operator release via /vla/teleop/release")
        return self._answer(resp, d)

    def teleop_command(self, command: GroupCommand) -> SafetyResult | None:
        """Filter a teleop command and make it the group's target (sent by the command timer).

        Returns:
            What will really be sent, or None when teleop commands may not pass now (not TELEOP).
        """
        now = self._now()
        with self._lock:
            if not self.arbiter.teleop_allowed():
                self._stats["teleop_rejected"] += 1
                return None
            rt = self._groups[command.group]
            r, safe = filter_group_command(self.safety, command, now, self._joint_pos)
            if r.rejected:
                self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
                return r
            self.arbiter.note_teleop_command(now)
            rt.teleop = safe
            if not rt.streaming:
                rt.out.publish_command(safe, now)
                self._note_published(now)
            return r

    # ------------------------------------------------------------------ status
    def _status(self) -> DiagnosticStatus:
        now = self._now()
        a = self.arbiter
        age = "never" if self._last_command_t is None else f"{now - self._last_command_t:.3f}"
        counters = self.safety.counters
        kv = {
            "mode": str(a.mode),
            "reason": a.reason,
            "cause": a.cause,
            "policy_refused": a.last_refusal,
            "controllers": self.switching.status,
            "switch_controller": self.switching.switch_status,
            "halt_cause_present": str(self._halt_cause_present()).lower(),
            "teleop": ("engaged" if a.mode is Mode.TELEOP else "engaged under halt" if self.teleop.under_halt
                       else "off"),
            "teleop_group": self.teleop.group or "none",
            "teleop_kinematics": self.teleop.kinematics,
            "interventions": str(self.safety.total_interventions),
            "interventions_by_kind": ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "none",
            "interventions_by_name": "; ".join(
                f"{n}: " + ",".join(f"{k}={v}" for k, v in sorted(d.items()))
                for n, d in sorted(self.safety.counters_by_name.items())) or "none",
            "command_rate_hz": f"{self._command_rate_hz:.1f}",
            "last_command_age_s": age,
            "last_rejected": self._last_reject,
            **{k: str(v) for k, v in self._stats.items()},
        }
        st = DiagnosticStatus()
        st.level = _LEVEL[a.mode]
        st.name = f"vla_runtime: {self.get_name()}"
        st.message = str(a.mode)
        st.hardware_id = self.robot.name
        st.values = [KeyValue(key=k, value=v) for k, v in kv.items()]
        return st

    def _publish_state(self) -> None:
        self._state_pub.publish(self._status())

    def _publish_status(self) -> None:
        with self._lock:
            t, n = self._rate_window
            now_m, ticks = time.monotonic(), self._stats["ticks"]
            if now_m > t:
                self._command_rate_hz = (ticks - n) / (now_m - t)
            self._rate_window = (now_m, ticks)
            st = self._status()
        self._state_pub.publish(st)
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def main(args: list[str] | None = None) -> None:
    """Console script: ``controller_bridge --config sim_panda.yaml`` (or ``-p config_file:=…``)."""
    run_node(ControllerBridgeNode, args)


if __name__ == "__main__":
    main()
