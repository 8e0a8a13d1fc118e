"""controller_bridge: the only node that commands the robot's ros2_control controllers.

It takes the scheduled action chunks of the policy (``/vla/action_chunk``), lets an
:class:`~vla_runtime.core.arbiter.Arbiter` decide who may move the robot (POLICY, TELEOP, HOLD,
HALTED), passes every command through the :class:`~vla_runtime.core.safety_filter.SafetyFilter`
and publishes what is really sent on exactly one publisher per controller topic.

This module is the rclpy shell: parameters, QoS, publishers, subscriptions, services, timers, the
lock and diagnostics. What the bridge decides is
:class:`~vla_runtime.core.bridge.controller_bridge.ControllerBridge` and the pieces around it in
:mod:`vla_runtime.core.bridge` (chunk validation and the resume rebase, the teleop session, the
controller_manager state machine), driven without ROS; the message each controller kind takes is
built by its output in :mod:`vla_runtime.nodes.bridge_outputs`, chosen once per group.

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
    (Float64MultiArray) for impedance groups with ``stiffness_limits`` (sent by Cartesian groups
    whose chunk layout carries stiffness dims, clipped to the limits);
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
    policy's commands. An operator stream silent for ``TELEOP_INPUT_FRESH_S`` (0.15 s,
    :mod:`~vla_runtime.core.bridge.teleop_session`) stops the target; silent for the arbiter's
    teleop timeout → HOLD. When the policy resumes after teleop, its commands are rebased onto the
    state it resumes from (the offset fades out over ``REBASE_S``, 0.3 s,
    :mod:`~vla_runtime.core.bridge.chunks`), so neither switch jumps.
    ``/vla/intervention`` (String, reliable) — ``start: …`` / ``end: …`` whenever the operator
    takes over or hands back (HG-DAgger labels for the recorder).

Services: ``/vla/reset``, ``/vla/hold``, ``/vla/resume``, ``/vla/teleop/take``,
``/vla/teleop/release`` (std_srvs/Trigger).
Clients: ``/controller_manager/list_controllers``, ``/controller_manager/switch_controller`` —
always asynchronous, with deadlines checked in the supervision timer.

Hostile input: every message is judged before it changes anything (``core/validation``): joint
states (finite, within the limits, names once, not from the future), poses, plans (values in the
range their dims can mean, stamped within a window around now: refused, never clipped) and operator
commands; refusals are counted per reason in the diagnostics. A callback that fails anyway is
counted and holds; no message takes the node down. A graph check on a normal-priority thread
(never the real-time executor) looks for other publishers on the controller topics this node owns,
at start and every ``intruder_check_s``; one latches HALTED and is named.

Parameters: ``config_file`` (the runtime YAML), ``status_rate_hz`` (2.0),
``controller_recheck_s`` (2.0: re-verify active controllers; 1 s retry after a failure),
``intruder_check_s`` (0.5: the graph check's interval), ``start_held`` (false; true when the
supervisor restarts a bridge that died: it starts in HOLD that only ``/vla/resume`` lifts).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.arbiter import CAUSE_OPERATOR, Decision, Mode
from vla_runtime.core.bridge.controller_bridge import ControllerBridge
from vla_runtime.core.bridge.groups import GroupState
from vla_runtime.core.command_mapping import GroupCommand
from vla_runtime.core.config import RuntimeConfig
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
from vla_runtime.core.safety_filter import SafetyResult
from vla_runtime.nodes.bridge_outputs import RclpyControllerManager, build_output
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    guarded,
    load_node_config,
    run_node,
    stamp_to_ns,
)

SUPERVISE_HZ = 20.0
#: Engage/intervention events: reliable, none lost, not replayed to late joiners.
QOS_EVENT = QOS_DIAGNOSTICS

_LEVEL = {
    Mode.POLICY: DiagnosticStatus.OK,
    Mode.TELEOP: DiagnosticStatus.OK,
    Mode.HOLD: DiagnosticStatus.WARN,
    Mode.HALTED: DiagnosticStatus.ERROR,
}


class ControllerBridgeNode(Node):
    """Arbiter + SafetyFilter between the policy (and teleop) and the ros2_control controllers.

    The logic is :class:`~vla_runtime.core.bridge.controller_bridge.ControllerBridge` (``bridge``),
    called under one lock; this node turns messages, timers and services into its calls.

    Args:
        config: A validated runtime config; None reads the ``config_file`` parameter.
        node_name: The ROS node name.
    """

    def __init__(self, config: RuntimeConfig | None = None, node_name: str = "controller_bridge") -> None:
        super().__init__(node_name)
        self.cfg = config if config is not None else load_node_config(self)
        self.robot = self.cfg.robot
        self.declare_parameter("status_rate_hz", 2.0)
        self.declare_parameter("controller_recheck_s", 2.0)
        self.declare_parameter("intruder_check_s", 0.5)
        self.declare_parameter("start_held", False)
        status_hz = float(self.get_parameter("status_rate_hz").value)
        self._owned_topics: list[str] = []
        self.callback_errors = 0

        self._lock = threading.RLock()
        self._cmd_cbg = MutuallyExclusiveCallbackGroup()
        self._io_cbg = MutuallyExclusiveCallbackGroup()
        self._rate_window = (time.monotonic(), 0)
        self._command_rate_hz = 0.0
        self._state_pub = self.create_publisher(DiagnosticStatus, TOPIC_SAFETY_STATE, QOS_LATCHED)
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        self._intervention_pub = self.create_publisher(String, TOPIC_INTERVENTION, QOS_EVENT)
        self.bridge = ControllerBridge(
            self.cfg, self._now, functools.partial(build_output, advertise=self._advertise),
            self._controller_manager(), self.get_logger(), on_state_change=self._publish_state,
            mark_intervention=lambda text: self._intervention_pub.publish(String(data=text)),
            recheck_s=float(self.get_parameter("controller_recheck_s").value))
        self.arbiter = self.bridge.arbiter
        self.safety = self.bridge.safety
        if self.get_parameter("start_held").value:  # the supervisor restarted us after a bridge died
            self.arbiter.hold("restarted after the bridge died: the policy drives again after /vla/resume",
                              CAUSE_OPERATOR)
        self._make_interfaces(status_hz)
        # The graph check runs on its own thread, created here on the main thread before run_node
        # makes the executor's thread real-time: a graph query waits on the middleware's locks, which
        # a SCHED_FIFO thread must never do (it hung the bridge once).
        self._stop_checks = threading.Event()
        self._intruder_thread = threading.Thread(target=self._watch_publishers, name="bridge_graph_check",
                                                 daemon=True)
        self._intruder_thread.start()
        self.get_logger().info(
            f"controller_bridge: {len(self.bridge.groups)} group(s) "
            + ", ".join(f"{n}→{g.spec.resolved_topic} @ {1 / g.period_s:.0f} Hz" for n, g in self.bridge.groups.items())
            + f"; detector heartbeat {'enforced' if self.bridge.detector_expected else 'not expected'}"
        )

    # ------------------------------------------------------------------ setup
    def _advertise(self, msg_type: type, topic: str) -> Callable[[object], None]:
        self._owned_topics.append(topic)
        return self.create_publisher(msg_type, topic, QOS_COMMAND).publish

    def _watch_publishers(self) -> None:
        """Every ``intruder_check_s``: who else publishes on the controller topics this node owns."""
        period = float(self.get_parameter("intruder_check_s").value)
        me = f"{self.get_namespace().rstrip('/')}/{self.get_name()}"
        while True:
            try:
                found = []
                for topic in self._owned_topics:
                    if self.count_publishers(topic) <= 1:  # ours alone: the cheap query, every time
                        continue
                    names = [f"{i.node_namespace.rstrip('/')}/{i.node_name}"
                             for i in self.get_publishers_info_by_topic(topic)]
                    if me in names:
                        names.remove(me)  # our own publisher; a second node of our name stays listed
                    found += [f"{topic} ← {n}" for n in names]
                with self._lock:
                    self.bridge.note_intruders(found)
            except Exception as e:  # noqa: BLE001 - the context is going down, or the graph query failed
                if self._stop_checks.is_set():
                    return
                self.get_logger().warning(f"graph check failed: {e!r}", throttle_duration_sec=5.0)
            if self._stop_checks.wait(period):
                return

    def close(self) -> None:
        """Stop the graph check (run_node calls this on the way out)."""
        self._stop_checks.set()
        self._intruder_thread.join(timeout=2.0)

    def _subscribe(self, msg_type: type, topic: str, callback: Callable[[object], None], qos: object,
                   group: object) -> None:
        self.create_subscription(msg_type, topic, guarded(self, callback, self._callback_failed), qos,
                                 callback_group=group)

    def _callback_failed(self, what: str) -> None:
        """A callback raised on a message: counted, and whoever drives the robot holds."""
        with self._lock:
            self.callback_errors += 1
            self.bridge.internal_error(what)

    def _controller_manager(self) -> RclpyControllerManager:
        from controller_manager_msgs.srv import ListControllers, SwitchController

        cbg = ReentrantCallbackGroup()
        return RclpyControllerManager(
            self.create_client(ListControllers, SERVICE_LIST_CONTROLLERS, callback_group=cbg),
            self.create_client(SwitchController, SERVICE_SWITCH_CONTROLLER, callback_group=cbg))

    def _make_interfaces(self, status_hz: float) -> None:
        io = self._io_cbg
        self._subscribe(JointTrajectory, TOPIC_ACTION_CHUNK, self._on_chunk, QOS_COMMAND, io)
        self._subscribe(JointState, TOPIC_JOINT_STATES, self._on_joint_state, QOS_SENSOR, io)
        self._subscribe(PoseStamped, TOPIC_EE_POSE, self._on_ee_pose, QOS_SENSOR, io)
        self._subscribe(String, TOPIC_HALT, self._on_halt, QOS_LATCHED, io)
        if self.bridge.detector_expected:
            self._subscribe(Header, TOPIC_DETECTOR_HEARTBEAT, self._on_heartbeat, QOS_SENSOR, io)
        self.create_service(Trigger, SERVICE_RESET, self._srv_reset, callback_group=io)
        self.create_service(Trigger, SERVICE_HOLD, self._srv_hold, callback_group=io)
        self.create_service(Trigger, SERVICE_RESUME, self._srv_resume, callback_group=io)
        # Teleop: operator intent and commands share the command group with the timers, so an
        # arriving command is integrated and sent at once (takeover latency ≈ one DDS hop).
        cmd = self._cmd_cbg
        self._subscribe(Bool, TOPIC_TELEOP_ENGAGE, self._on_engage, QOS_EVENT, cmd)
        self._subscribe(TwistStamped, TOPIC_TELEOP_TWIST, self._on_teleop_twist, QOS_COMMAND, cmd)
        self._subscribe(PoseStamped, TOPIC_TELEOP_POSE, self._on_teleop_pose, QOS_COMMAND, cmd)
        self._subscribe(JointState, TOPIC_TELEOP_JOINT_JOG, self._on_teleop_jog, QOS_COMMAND, cmd)
        self._subscribe(Float64, TOPIC_TELEOP_GRIPPER, self._on_teleop_gripper, QOS_COMMAND, cmd)
        self.create_service(Trigger, SERVICE_TELEOP_TAKE, self._srv_teleop_take, callback_group=io)
        self.create_service(Trigger, SERVICE_TELEOP_RELEASE, self._srv_teleop_release, callback_group=io)
        # One command timer per distinct group rate, in the command group.
        groups = list(self.bridge.groups.values())
        for period in sorted({g.period_s for g in groups}):
            self.create_timer(period, self._make_tick([g for g in groups if g.period_s == period]), callback_group=cmd)
        self.create_timer(1.0 / SUPERVISE_HZ, self._supervise, callback_group=io)
        self.create_timer(1.0 / status_hz, self._publish_status, callback_group=io)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def mode(self) -> Mode:
        """The arbiter's mode."""
        return self.arbiter.mode

    # ------------------------------------------------------------------ subscriptions
    def _on_joint_state(self, msg: JointState) -> None:
        now_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self.bridge.note_joint_state(msg.name, msg.position, now_ns * 1e-9, stamp_to_ns(msg.header.stamp), now_ns)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            self.bridge.note_ee_pose(np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))

    def _on_heartbeat(self, _msg: Header) -> None:
        with self._lock:
            self.arbiter.note_detector_heartbeat(self._now())

    def _on_halt(self, msg: String) -> None:
        with self._lock:
            self.bridge.halt(msg.data)

    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._now()
        with self._lock:
            if not msg.points:
                self.bridge.hold_request(msg.header.frame_id)
                return
            self.bridge.chunk(tuple(msg.joint_names), stamp_to_ns(msg.header.stamp) * 1e-9,
                              [p.positions for p in msg.points],
                              [stamp_to_ns(p.time_from_start) * 1e-9 for p in msg.points], now)

    # ------------------------------------------------------------------ timers
    def _make_tick(self, members: list[GroupState]) -> Callable[[], None]:
        tick = self.bridge.tick

        def on_timer() -> None:
            now = self._now()
            with self._lock:
                tick(members, now)

        return on_timer

    def _supervise(self) -> None:
        now = self._now()
        with self._lock:
            self.bridge.supervise(now)

    # ------------------------------------------------------------------ services
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

    def _srv_teleop_take(self, _req, resp):
        return self._answer(resp, self.request_teleop("operator take via /vla/teleop/take"))

    def _srv_teleop_release(self, _req, resp):
        with self._lock:
            d = self.bridge.operator_release("operator release via /vla/teleop/release")
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
            return self.bridge.request_teleop(reason)

    def release_teleop(self, reason: str = "teleop released") -> Decision:
        """Leave TELEOP to HOLD (under a halt: back to holding, still HALTED)."""
        with self._lock:
            return self.bridge.release_teleop(reason)

    def teleop_command(self, command: GroupCommand) -> SafetyResult | None:
        """Filter a teleop command and make it the group's target (sent by the command timer).

        Returns:
            What will really be sent, or None when teleop commands may not pass now (not TELEOP).
        """
        now = self._now()
        with self._lock:
            return self.bridge.teleop_command(command, now)

    def _on_engage(self, msg: Bool) -> None:
        with self._lock:
            d = self.bridge.engage(bool(msg.data))
        if d is not None and not d:
            self.get_logger().warning(f"teleop engage refused: {d.reason}")

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        now = self._now()
        lin, ang = msg.twist.linear, msg.twist.angular
        v = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float64)
        with self._lock:
            self.bridge.teleop_twist(v, msg.header.frame_id, now)

    def _on_teleop_pose(self, msg: PoseStamped) -> None:
        now = self._now()
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            self.bridge.teleop_pose((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), msg.header.frame_id, now)

    def _on_teleop_jog(self, msg: JointState) -> None:
        now = self._now()
        with self._lock:
            self.bridge.teleop_jog(msg.name, msg.velocity, now)

    def _on_teleop_gripper(self, msg: Float64) -> None:
        now = self._now()
        with self._lock:
            self.bridge.teleop_gripper(msg.data, now)

    # ------------------------------------------------------------------ status
    def _status(self) -> DiagnosticStatus:
        kv = self.bridge.diagnostics(self._now(), self._command_rate_hz)
        st = DiagnosticStatus()
        st.level = _LEVEL[self.arbiter.mode]
        st.name = f"vla_runtime: {self.get_name()}"
        st.message = str(self.arbiter.mode)
        st.hardware_id = self.robot.name
        st.values = [KeyValue(key=k, value=v) for k, v in kv.items()]
        return st

    def _publish_state(self) -> None:
        self._state_pub.publish(self._status())

    def _publish_status(self) -> None:
        with self._lock:
            t, n = self._rate_window
            now_m, ticks = time.monotonic(), self.bridge.stats["ticks"]
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
