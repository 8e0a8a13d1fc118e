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

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_runtime.core.arbiter import (
    CAUSE_CONTROLLERS,
    CAUSE_JOINT_STATE,
    CAUSE_OPERATOR,
    CAUSE_POLICY,
    CAUSE_REJECTED,
    Arbiter,
    Decision,
    Mode,
    Transition,
)
from vla_runtime.core.command_mapping import (
    CommandMapper,
    GripperCommand,
    GroupCommand,
    JointCommand,
    MappingError,
    PoseCommand,
    TwistCommand,
    hold_commands,
)
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
from vla_runtime.core.kinematics import kinematics_for
from vla_runtime.core.rotation import homogeneous, rotvec_to_quaternion
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.core.teleop import TeleopIntegrator, TeleopLimits
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    load_node_config,
    ns_to_stamp,
    run_node,
    stamp_to_ns,
)

#: Cartesian impedance targets must stream at least this fast.
MIN_CARTESIAN_RATE_HZ = 50.0
#: Time a hold trajectory gives a joint_trajectory_controller to settle on the held position.
HOLD_TRAJECTORY_S = 0.05
#: A joint_trajectory group in HOLD re-sends its hold point this often (idempotent).
HOLD_REPUBLISH_S = 1.0
CONTROLLER_RETRY_S = 1.0
SUPERVISE_HZ = 20.0
#: An operator command older than this no longer moves the teleop target (it stops, still TELEOP).
TELEOP_INPUT_FRESH_S = 0.15
#: Silence of the operator stream that ends teleop under a halt (the arbiter's timeout in TELEOP).
TELEOP_TIMEOUT_S = 0.5
#: Teleop trajectories for joint_trajectory groups reach their point this many command periods ahead.
TELEOP_LEAD_PERIODS = 2.0
#: After teleop, the policy's commands are offset onto the resumed-from state; the offset fades out
#: linearly over this many seconds.
REBASE_S = 0.3
#: Engage/intervention events: reliable, none lost, not replayed to late joiners.
QOS_EVENT = QOS_DIAGNOSTICS

_LEVEL = {
    Mode.POLICY: DiagnosticStatus.OK,
    Mode.TELEOP: DiagnosticStatus.OK,
    Mode.HOLD: DiagnosticStatus.WARN,
    Mode.HALTED: DiagnosticStatus.ERROR,
}


@dataclass
class _Chunk:
    """A validated policy chunk: point times (s), values (H, A) and its dim mapping."""

    stamp_s: float
    times: np.ndarray
    values: np.ndarray
    mapper: CommandMapper


@dataclass
class _PendingCall:
    """An in-flight service call with its deadline (checked in the supervision timer)."""

    what: str
    deadline: float
    future: object | None = None
    activate: tuple[str, ...] = ()
    deactivate: tuple[str, ...] = ()


class _GroupRuntime:
    """Per-group state: the one publisher, the policy trajectory, the hold and teleop targets."""

    def __init__(self, name: str, spec: ControllerGroup, period_s: float) -> None:
        self.name = name
        self.spec = spec
        self.period_s = period_s
        self.pub = None
        self.stiffness_pub = None
        self.policy: tuple[np.ndarray, np.ndarray] | None = None  # (times, (H, k) values)
        self.policy_stiffness: np.ndarray | None = None
        self.published: tuple[np.ndarray, np.ndarray] | None = None  # last JT sent (times, filtered)
        self.hold: GroupCommand | None = None
        self.hold_dirty = True
        self.hold_sent_at = -math.inf
        self.teleop: GroupCommand | None = None

    @property
    def streaming(self) -> bool:
        return self.spec.controller != "joint_trajectory"


def _interp_rows(times: np.ndarray, values: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation of (H, k) rows at time t (clamped to the ends)."""
    if t <= times[0]:
        return values[0].copy()
    if t >= times[-1]:
        return values[-1].copy()
    i = int(np.searchsorted(times, t, side="right"))
    t0, t1 = times[i - 1], times[i]
    a = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
    return values[i - 1] + a * (values[i] - values[i - 1])


def _duration(seconds: float) -> Duration:
    ns = max(0, int(round(seconds * 1e9)))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class ControllerBridgeNode(Node):
    """Arbiter + SafetyFilter between the policy (and teleop) and the ros2_control controllers.

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
        status_hz = float(self.get_parameter("status_rate_hz").value)
        self._recheck_s = float(self.get_parameter("controller_recheck_s").value)

        self._lock = threading.RLock()
        self._cmd_cbg = MutuallyExclusiveCallbackGroup()
        self._io_cbg = MutuallyExclusiveCallbackGroup()
        self._client_cbg = ReentrantCallbackGroup()

        # Per-group runtime and rates.
        self._groups: dict[str, _GroupRuntime] = {}
        for gname, g in self.robot.groups.items():
            hz = g.command_rate_hz or self.cfg.rates.command_hz
            if g.controller == "cartesian_impedance":
                hz = max(hz, MIN_CARTESIAN_RATE_HZ)
            self._groups[gname] = _GroupRuntime(gname, g, 1.0 / hz)
        fastest = min(rt.period_s for rt in self._groups.values())

        self.safety = SafetyFilter(self.robot, self.cfg.safety, command_period_s=fastest)
        self._detector_expected = "failure_detector" in self.cfg.nodes
        self.arbiter = Arbiter(
            clock=self._now,
            watchdog_s=self.cfg.safety.watchdog_s,
            joint_state_timeout_s=self.cfg.safety.joint_state_timeout_s,
            detector_heartbeat_s=self.cfg.safety.detector_heartbeat_s if self._detector_expected else None,
            on_transition=self._on_transition,
        )
        self._cartesian = [n for n, g in self.robot.groups.items() if g.controller == "cartesian_impedance"]
        if self._cartesian:
            self.arbiter.add_precondition(
                lambda: None if self._ee_pose is not None else "no measured end-effector pose on /ee_pose yet"
            )

        # Measured state.
        self._joint_pos: dict[str, float] = {}
        self._ee_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._halt_signal = ""
        self._pending: _Chunk | None = None
        self._mappers: dict[tuple[str, ...], CommandMapper | MappingError] = {}

        # Statistics (published in diagnostics; never logged from the command timer).
        self._stats = {
            "chunks_received": 0, "chunks_forwarded": 0, "chunks_rejected": 0, "chunks_dropped": 0,
            "hold_requests": 0, "commands_published": 0, "ticks": 0, "hold_without_state": 0,
            "teleop_rejected": 0, "teleop_inputs": 0, "teleop_inputs_ignored": 0, "teleop_commands": 0,
            "interventions_started": 0,
        }
        self._last_reject = ""
        self._last_command_t: float | None = None
        self._rate_window = (time.monotonic(), 0)
        self._command_rate_hz = 0.0

        # controller_manager client state.
        self._controllers_status = "not checked yet"
        self._check: _PendingCall | None = None
        self._next_check_t = -math.inf
        self._switch: _PendingCall | None = None
        self._switch_queue: _PendingCall | None = None
        self._switch_status = "none"
        self._switched_to_hold = False
        self._switch_timeout_s = self.cfg.safety.controller_check_timeout_s

        self._setup_teleop()
        self._make_interfaces(status_hz)
        self.get_logger().info(
            f"controller_bridge: {len(self._groups)} group(s) "
            + ", ".join(f"{n}→{rt.spec.resolved_topic} @ {1 / rt.period_s:.0f} Hz" for n, rt in self._groups.items())
            + f"; detector heartbeat {'enforced' if self._detector_expected else 'not expected'}"
        )

    # ------------------------------------------------------------------ setup
    def _setup_teleop(self) -> None:
        """The teleop group (``teleop.group``, else the first arm-like group), its integrator, state."""
        tcfg = self.cfg.teleop
        name = tcfg.group
        if name is None:
            arm_like = [n for n, g in self.robot.groups.items() if g.controller not in ("gripper", "base_twist")]
            name = next((n for n in arm_like if self.robot.groups[n].ee_link), arm_like[0] if arm_like else None)
        self._tp_rt: _GroupRuntime | None = self._groups.get(name) if name else None
        grippers = [rt for rt in self._groups.values() if rt.spec.controller == "gripper"]
        self._tp_grip_rt: _GroupRuntime | None = grippers[0] if grippers else None
        self._tp: TeleopIntegrator | None = None
        self._tp_kinematics = "none"
        if self._tp_rt is not None and self._tp_rt.spec.controller != "base_twist":
            spec = self._tp_rt.spec
            scale = self.cfg.safety.velocity_scale
            limits = TeleopLimits(
                max_linear_mps=tcfg.max_linear_mps,
                max_angular_rps=tcfg.max_angular_rps,
                joint_velocity={j.name: j.velocity * scale for j in self.robot.joints if j.name in spec.joints},
                joint_position={j: self.safety.position_limits(j) for j in spec.joints},
            )
            chain = None
            if spec.controller != "cartesian_impedance":
                chain = kinematics_for(self.robot.name, spec.joints)
            self._tp_kinematics = ("cartesian controller" if spec.controller == "cartesian_impedance"
                                   else f"{chain.name} DH model, DLS Jacobian" if chain is not None
                                   else "none: joint jogs only")
            self._tp = TeleopIntegrator(spec.joints if spec.controller != "cartesian_impedance" else (),
                                        chain, limits)
        self._tp_twist: tuple[np.ndarray, float] | None = None  # (twist, receive time)
        self._tp_pose: tuple[np.ndarray, float] | None = None  # (4×4 target, receive time)
        self._tp_jog: tuple[dict[str, float], float] | None = None
        self._tp_gripper: float | None = None
        self._tp_last_input = -math.inf
        self._tp_last_step = -math.inf
        self._tp_started = False
        self._halt_teleop = False  # teleop while HALTED (teleop_only_after_halt)
        self._engage_wanted = False  # the operator's last engage (deadman) state
        self._engage_retry_t = -1e9
        self._tp_seen_input = -1e9  # last operator command, taken or not
        self._rebase: tuple[float, dict[str, np.ndarray]] | None = None
        self._rebase_pending = False

    def _make_interfaces(self, status_hz: float) -> None:
        from controller_manager_msgs.srv import ListControllers, SwitchController

        self._ListControllers = ListControllers
        self._SwitchController = SwitchController
        for rt in self._groups.values():
            c = rt.spec.controller
            topic = rt.spec.resolved_topic
            if c == "joint_trajectory":
                rt.pub = self.create_publisher(JointTrajectory, topic, QOS_COMMAND)
            elif c in ("forward_position", "forward_velocity", "gripper"):
                rt.pub = self.create_publisher(Float64MultiArray, topic, QOS_COMMAND)
            elif c == "cartesian_impedance":
                rt.pub = self.create_publisher(PoseStamped, topic, QOS_COMMAND)
            elif c == "joint_impedance":
                rt.pub = self.create_publisher(JointState, topic, QOS_COMMAND)
            else:
                rt.pub = self.create_publisher(Twist, topic, QOS_COMMAND)
            if c in ("cartesian_impedance", "joint_impedance") and rt.spec.stiffness_limits is not None:
                rt.stiffness_pub = self.create_publisher(
                    Float64MultiArray, f"/{rt.spec.controller_name}/target_stiffness", QOS_COMMAND
                )
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
        self._list_client = self.create_client(ListControllers, SERVICE_LIST_CONTROLLERS,
                                               callback_group=self._client_cbg)
        self._switch_client = self.create_client(
            SwitchController, SERVICE_SWITCH_CONTROLLER, callback_group=self._client_cbg
        )

        periods = sorted({rt.period_s for rt in self._groups.values()})
        for period in periods:
            members = [rt for rt in self._groups.values() if rt.period_s == period]
            self.create_timer(period, self._make_tick(members), callback_group=self._cmd_cbg)
        self.create_timer(1.0 / SUPERVISE_HZ, self._supervise, callback_group=io)
        self.create_timer(1.0 / status_hz, self._publish_status, callback_group=io)

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _mapper_for(self, names: tuple[str, ...]) -> CommandMapper:
        m = self._mappers.get(names)
        if m is None:
            try:
                m = CommandMapper(self.robot, names)
                if m.unused_dims:  # a dim no group takes is a malformed (or mis-targeted) chunk
                    m = MappingError(f"dims that are not in robot {self.robot.name!r}: {list(m.unused_dims)}")
            except MappingError as e:
                m = e
            if len(self._mappers) > 32:
                self._mappers.clear()
            self._mappers[names] = m
        if isinstance(m, MappingError):
            raise m
        return m

    @property
    def mode(self) -> Mode:
        """The arbiter's mode."""
        return self.arbiter.mode

    # ------------------------------------------------------------------ subscriptions
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
            names = tuple(msg.joint_names)
            n_dims = len(names)
            bad = [i for i, p in enumerate(msg.points) if len(p.positions) != n_dims]
            if bad:
                self._reject_policy(
                    f"chunk point {bad[0]} has {len(msg.points[bad[0]].positions)} values for {n_dims} dims")
                return
            values = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), n_dims)
            reason = self.safety.check_finite(names, values)
            if reason is not None:
                self._reject_policy(reason)
                return
            try:
                mapper = self._mapper_for(names)
            except MappingError as e:
                self._reject_policy(f"chunk layout: {e}")
                return
            stamp_s = stamp_to_ns(msg.header.stamp) * 1e-9
            times = stamp_s + np.array([stamp_to_ns(p.time_from_start) * 1e-9 for p in msg.points])
            if np.any(np.diff(times) <= 0):
                self._reject_policy("chunk time_from_start is not strictly increasing")
                return
            chunk = _Chunk(stamp_s, times, values, mapper)
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

    # ------------------------------------------------------------------ policy path
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
            if self._check is None and self._switch is None and now >= self._next_check_t:
                self._start_controller_check(now)
            return
        if self._pending.times[-1] < now:
            self._pending = None
            self._stats["chunks_dropped"] += 1
            return
        if self.arbiter.request_policy("fresh policy chunk"):
            chunk, self._pending = self._pending, None
            self._install(chunk, now)

    def _install(self, chunk: _Chunk, now: float) -> None:
        """Hand a chunk to the groups it drives (JT groups publish it at once)."""
        forwarded = False
        if self._rebase_pending:
            self._start_rebase(chunk)
        for gname in chunk.mapper.groups:
            rt = self._groups[gname]
            vals = chunk.mapper.group_values(chunk.values, gname)
            if self._rebase is not None:
                vals = self._rebased(gname, chunk.times, vals)
            c = rt.spec.controller
            if c == "joint_trajectory":
                if not self._publish_policy_trajectory(rt, chunk, vals, now):
                    return
                forwarded = True
                continue
            if c == "cartesian_impedance":
                cols = chunk.mapper.group_columns(gname)
                if len(cols) == 6:  # axis-angle layout → quaternions
                    quats = np.array([rotvec_to_quaternion(r) for r in vals[:, 3:6]])
                    vals = np.hstack([vals[:, :3], quats])
                stiff_cols = chunk.mapper._plans[gname].stiffness_columns
                rt.policy_stiffness = chunk.values[:, list(stiff_cols)] if stiff_cols else None
            rt.policy = (chunk.times, vals)
            forwarded = True
        if forwarded:
            self._stats["chunks_forwarded"] += 1

    def _publish_policy_trajectory(self, rt: _GroupRuntime, chunk: _Chunk, vals: np.ndarray, now: float) -> bool:
        """Filter a chunk point by point and send it as the controller's new trajectory."""
        joints = tuple(rt.spec.joints)
        keep = chunk.times >= now - 1e-3
        if not keep.any():
            self._stats["chunks_dropped"] += 1
            return True
        times, q = chunk.times[keep], vals[keep]
        dtp = float(times[1] - times[0]) if len(times) > 1 else rt.period_s
        t_ref = float(times[0]) - dtp
        if rt.published is not None:
            pt, pq = rt.published
            ref = _interp_rows(pt, pq, t_ref)
            vel = (ref - _interp_rows(pt, pq, t_ref - dtp)) / dtp
            self.safety.reset_reference(dict(zip(joints, ref)), t_ref, dict(zip(joints, vel)))
        out = np.empty_like(q)
        for i in range(len(times)):
            r = self.safety.filter_joint(joints, q[i], float(times[i]))
            if r.rejected:
                self._reject_policy(r.reason)
                return False
            out[i] = r.values
        msg = JointTrajectory()
        msg.header.stamp = self._stamp(chunk.stamp_s)
        msg.joint_names = list(joints)
        for t, row in zip(times, out):
            msg.points.append(JointTrajectoryPoint(positions=row.tolist(),
                                                   time_from_start=_duration(t - chunk.stamp_s)))
        rt.pub.publish(msg)
        rt.published = (times, out)
        rt.hold_dirty = False
        self._note_published(now)
        return True

    @staticmethod
    def _stamp(t_s: float):
        return ns_to_stamp(int(round(t_s * 1e9)))

    def _note_published(self, now: float) -> None:
        self._stats["commands_published"] += 1
        self._last_command_t = now

    # ------------------------------------------------------------------ command timer
    def _make_tick(self, members: list[_GroupRuntime]) -> Callable[[], None]:
        def tick() -> None:
            now = self._now()
            with self._lock:
                self._stats["ticks"] += 1
                mode = self.arbiter.mode
                for rt in members:
                    self._tick_group(rt, mode, now)

        return tick

    def _tick_group(self, rt: _GroupRuntime, mode: Mode, now: float) -> None:
        if mode is Mode.POLICY and rt.policy is not None:
            r = self._filter_policy_sample(rt, now)
            if r is None:
                return
            if r.rejected:
                self._reject_policy(r.reason)  # → HOLD; publish the hold below
                mode = self.arbiter.mode
            else:
                self._publish_values(rt, r.values, now)
                return
        if self._teleop_active(mode):
            if rt is self._tp_rt and self._tp_started:
                if now - self._tp_last_step >= 0.5 * rt.period_s:
                    self._teleop_step(now)
                return
            if rt is self._tp_grip_rt and self._tp_gripper is not None:
                r = self.safety.filter_gripper(rt.name, self._tp_gripper, now)
                if not r.rejected:
                    self._publish_values(rt, r.values, now)
                    return
        if mode is Mode.TELEOP and rt.teleop is not None:
            self._publish_command(rt, rt.teleop, now)
            return
        if mode is Mode.POLICY and rt.spec.controller == "joint_trajectory" and rt.published is not None:
            return  # the controller executes the last policy trajectory
        if rt.hold is None:
            self._capture_hold([rt])
            if rt.hold is None:
                self._stats["hold_without_state"] += 1
                return
        if rt.streaming or rt.hold_dirty or now - rt.hold_sent_at >= HOLD_REPUBLISH_S:
            self._publish_command(rt, rt.hold, now)
            rt.hold_dirty = False
            rt.hold_sent_at = now

    def _filter_policy_sample(self, rt: _GroupRuntime, now: float) -> SafetyResult | None:
        times, vals = rt.policy
        v = _interp_rows(times, vals, now)
        c = rt.spec.controller
        g = rt.name
        if c in ("forward_position", "joint_impedance"):
            return self.safety.filter_joint(rt.spec.joints, v, now)
        if c == "forward_velocity":
            return self.safety.filter_joint_velocity(rt.spec.joints, v, now, self._joint_pos)
        if c == "cartesian_impedance":
            r = self.safety.filter_pose(g, v[:3], v[3:7], now)
            if not r.rejected and rt.stiffness_pub is not None and rt.policy_stiffness is not None:
                lo, hi = rt.spec.stiffness_limits
                s = np.clip(_interp_rows(times, rt.policy_stiffness, now), lo, hi)
                rt.stiffness_pub.publish(Float64MultiArray(data=s.tolist()))
            return r
        if c == "gripper":
            return self.safety.filter_gripper(g, float(v[0]), now)
        if c == "base_twist":
            return self.safety.filter_twist(g, float(v[0]), float(v[1]), float(v[2]), now)
        return None

    def _publish_values(self, rt: _GroupRuntime, values: np.ndarray, now: float) -> None:
        """Publish filtered values of a streaming group."""
        c = rt.spec.controller
        if c in ("forward_position", "forward_velocity", "gripper"):
            rt.pub.publish(Float64MultiArray(data=[float(x) for x in values]))
        elif c == "joint_impedance":
            msg = JointState(name=list(rt.spec.joints), position=[float(x) for x in values])
            msg.header.stamp = self._stamp(now)
            rt.pub.publish(msg)
        elif c == "cartesian_impedance":
            rt.pub.publish(self._pose_msg(rt, values[:3], values[3:7], now))
        elif c == "base_twist":
            msg = Twist()
            msg.linear.x, msg.linear.y, msg.angular.z = (float(x) for x in values)
            rt.pub.publish(msg)
        self._note_published(now)

    def _pose_msg(self, rt: _GroupRuntime, p, q, now: float) -> PoseStamped:
        msg = PoseStamped()
        msg.header.stamp = self._stamp(now)
        msg.header.frame_id = rt.spec.frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(x) for x in p)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(x) for x in q)
        return msg

    def _publish_command(self, rt: _GroupRuntime, cmd: GroupCommand, now: float) -> None:
        """Publish a hold or teleop command (already safe) on the group's one publisher."""
        if isinstance(cmd, JointCommand):
            if rt.spec.controller == "joint_trajectory":
                msg = JointTrajectory()
                msg.header.stamp = self._stamp(now)
                msg.joint_names = list(cmd.joints)
                msg.points.append(JointTrajectoryPoint(
                    positions=[float(x) for x in cmd.values], velocities=[0.0] * len(cmd.joints),
                    time_from_start=_duration(HOLD_TRAJECTORY_S)))
                rt.pub.publish(msg)
                self._note_published(now)
            else:
                self._publish_values(rt, cmd.values, now)
        elif isinstance(cmd, PoseCommand):
            rt.pub.publish(self._pose_msg(rt, cmd.position, cmd.quaternion, now))
            self._note_published(now)
        elif isinstance(cmd, GripperCommand):
            self._publish_values(rt, np.array([cmd.value]), now)
        elif isinstance(cmd, TwistCommand):
            self._publish_values(rt, np.array([cmd.vx, cmd.vy, cmd.wz]), now)

    # ------------------------------------------------------------------ hold targets
    def _capture_hold(self, groups: list[_GroupRuntime], joint_states_stale: bool = False) -> None:
        """Set each group's hold target from the measured state (where it is available).

        ``joint_states_stale`` (the HOLD is BECAUSE joint states went stale): the last measurement
        is where the arm WAS, so a trajectory group holds the reference its controller is tracking
        now (the last published trajectory at this instant), which the arm is close behind, instead
        of being pulled back to the old sample.
        """
        poses = {g: self._ee_pose for g in self._cartesian} if self._ee_pose is not None else {}
        now = self._now()
        for rt in groups:
            if joint_states_stale and rt.spec.controller == "joint_trajectory" and rt.published is not None:
                pt, pq = rt.published
                rt.hold = JointCommand(rt.name, tuple(rt.spec.joints), _interp_rows(pt, pq, now), "position")
                rt.hold_dirty = True
                continue
            try:
                cmd = hold_commands(self.robot, self._joint_pos, poses, [rt.name])[rt.name]
            except MappingError:
                rt.hold = None
                continue
            if isinstance(cmd, GripperCommand):
                lo, hi = self.safety.gripper_limits(rt.name)
                cmd = GripperCommand(cmd.group, min(max(cmd.value, lo), hi))
            rt.hold = cmd
            rt.hold_dirty = True

    def _reset_references_to_hold(self) -> None:
        """Bumpless: the next policy/teleop command is limited relative to the held state."""
        for rt in self._groups.values():
            cmd = rt.hold
            if isinstance(cmd, JointCommand) and cmd.kind == "position":
                self.safety.reset_reference(dict(zip(cmd.joints, (float(x) for x in cmd.values))))
            elif isinstance(cmd, JointCommand):
                self.safety.reset_reference({j: self._joint_pos[j] for j in cmd.joints if j in self._joint_pos})
            elif isinstance(cmd, PoseCommand):
                self.safety.reset_pose_reference(rt.name, cmd.position, cmd.quaternion)

    def _on_transition(self, tr: Transition) -> None:
        """Arbiter callback (called with the lock held): hold targets, controller switch, report.

        The hold goes out first and the log line last: rclpy logging writes the console and
        publishes on /rosout, which is not the robot's business while it still moves.
        """
        if tr.source is Mode.TELEOP and tr.target is not Mode.TELEOP:
            self._end_teleop(f"{tr.target}: {tr.reason}")
            self._rebase_pending = tr.target is Mode.HOLD
        if tr.source is Mode.HALTED and self._halt_teleop:
            self._halt_teleop = False
            self._end_teleop(f"{tr.target}: {tr.reason}")
        if tr.target is not Mode.POLICY and tr.target is not Mode.HOLD:
            self._rebase_pending = False
        if tr.target is Mode.TELEOP:
            # Everything holds where it is NOW (not where it was before POLICY); the teleop group's
            # target starts at the measured state.
            for rt in self._groups.values():
                rt.policy = rt.policy_stiffness = rt.published = rt.teleop = None
            self._pending = None
            self._rebase = None
            self._capture_hold(list(self._groups.values()))
            self._reset_references_to_hold()
            self._begin_teleop(tr.reason)
        if tr.target in (Mode.HOLD, Mode.HALTED) and tr.source is not tr.target:
            if not (tr.target is Mode.HALTED and tr.source is Mode.HOLD):
                self._capture_hold(list(self._groups.values()), joint_states_stale=tr.cause == CAUSE_JOINT_STATE)
            for rt in self._groups.values():
                rt.policy = rt.policy_stiffness = rt.published = rt.teleop = None
                rt.hold_dirty = True
            self._pending = None
            # The hold goes out now, from the callback that decided it, not on the next command tick.
            now = self._now()
            for rt in self._groups.values():
                if rt.hold is not None:
                    self._publish_command(rt, rt.hold, now)
                    rt.hold_dirty = False
                    rt.hold_sent_at = now
        if tr.target is Mode.POLICY:
            self._capture_hold([rt for rt in self._groups.values() if rt.hold is None])
            self._reset_references_to_hold()
        if tr.target is Mode.HALTED:
            self._engage_wanted = False  # after a halt, only a new press takes over
            self.arbiter.set_controllers_ok(False, "HALTED: controllers must be re-verified after reset")
            if self.robot.hold_controller and self.cfg.safety.halt_switches_to_hold_controller:
                self._request_switch("to_hold", (self.robot.hold_controller,), tuple(self.robot.controller_names))
        switching_to_hold = self._switch is not None and self._switch.what == "to_hold"
        if tr.source is Mode.HALTED and (self._switched_to_hold or switching_to_hold):
            self._request_switch("to_policy", tuple(self.robot.controller_names), (self.robot.hold_controller,))
        self._publish_state()
        text = f"{tr.source} → {tr.target}: {tr.reason}"
        if tr.target in (Mode.POLICY, Mode.TELEOP):  # rclpy: one severity per call site
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ controller_manager
    def _start_controller_check(self, now: float) -> None:
        self._check = _PendingCall("list_controllers", now + self.cfg.safety.controller_check_timeout_s)
        self._send_pending(self._check, self._list_client, self._ListControllers.Request())

    @staticmethod
    def _send_pending(call: _PendingCall, client, request) -> None:
        if call.future is None and client.service_is_ready():
            call.future = client.call_async(request)

    def _poll_controller_check(self, now: float) -> None:
        c = self._check
        if c is None:
            if now >= self._next_check_t and self.arbiter.mode is not Mode.HALTED and self._switch is None:
                self._start_controller_check(now)
            return
        if c.future is None:
            self._send_pending(c, self._list_client, self._ListControllers.Request())
        if c.future is not None and c.future.done():
            self._check = None
            try:
                resp = c.future.result()
            except Exception as e:  # noqa: BLE001 - any failure of the call ends in HOLD
                self._controllers_failed(f"list_controllers failed: {e!r}", now)
                return
            if resp is None:
                self._controllers_failed("list_controllers returned no response", now)
                return
            states = {cs.name: cs.state for cs in resp.controller}
            bad = [f"{n} ({states.get(n, 'not loaded')})" for n in self.robot.controller_names
                   if states.get(n) != "active"]
            if bad:
                self._controllers_failed("controllers not active: " + ", ".join(bad), now)
                return
            if not self.arbiter.controllers_ok:
                self.get_logger().info(f"controllers active: {', '.join(self.robot.controller_names)}")
            self._controllers_status = "ok: " + ", ".join(self.robot.controller_names) + " active"
            self.arbiter.set_controllers_ok(True)
            self._next_check_t = now + self._recheck_s
            self._try_enter_policy(now)
        elif now > c.deadline:
            if c.future is not None:
                self._list_client.remove_pending_request(c.future)
                why = "no answer"
            else:
                why = "service not available"
            self._check = None
            self._controllers_failed(
                f"{SERVICE_LIST_CONTROLLERS}: {why} within {self.cfg.safety.controller_check_timeout_s} s", now)

    def _controllers_failed(self, reason: str, now: float) -> None:
        if reason != self._controllers_status:
            self.get_logger().warning(f"{reason}: POLICY refused, holding; retrying every {CONTROLLER_RETRY_S} s")
        self._controllers_status = reason
        self.arbiter.set_controllers_ok(False, reason)
        self._next_check_t = now + CONTROLLER_RETRY_S
        if self.arbiter.mode is Mode.POLICY:
            self.arbiter.hold(reason, CAUSE_CONTROLLERS)
        elif self._pending is not None:
            self.arbiter.last_refusal = "POLICY refused: " + reason
        self._publish_state()

    def _request_switch(self, what: str, activate: tuple[str, ...], deactivate: tuple[str, ...]) -> None:
        call = _PendingCall(what, self._now() + self._switch_timeout_s, activate=activate, deactivate=deactivate)
        if self._switch is not None:
            self._switch_queue = call  # sent when the one in flight finishes
            return
        self._switch = call
        self._send_switch(call)

    def _switch_request(self, call: _PendingCall):
        req = self._SwitchController.Request()
        req.activate_controllers = list(call.activate)
        req.deactivate_controllers = list(call.deactivate)
        req.strictness = self._SwitchController.Request.STRICT
        req.activate_asap = True
        req.timeout = _duration(self._switch_timeout_s)
        if hasattr(req, "start_controllers"):  # Humble field set
            req.start_controllers = list(call.activate)
            req.stop_controllers = list(call.deactivate)
            req.start_asap = True
        return req

    def _send_switch(self, call: _PendingCall) -> None:
        self._send_pending(call, self._switch_client, self._switch_request(call))

    def _poll_switch(self, now: float) -> None:
        c = self._switch
        if c is None:
            return
        if c.future is None:
            self._send_switch(c)
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
                self._switch_status = f"{c.what}: ok ({verb})"
                self._switched_to_hold = c.what == "to_hold"
                self.get_logger().info(f"switch_controller {verb}: ok")
            else:
                self._switch_status = f"{c.what}: FAILED ({verb}): {message or 'ok=false'}"
                self.get_logger().error(f"switch_controller {verb} failed: {message or 'ok=false'}; "
                                        "holding through the policy controllers")
        elif now > c.deadline:
            done = True
            if c.future is not None:
                self._switch_client.remove_pending_request(c.future)
            self._switch_status = f"{c.what}: no answer within {self._switch_timeout_s} s"
            self.get_logger().error(f"{SERVICE_SWITCH_CONTROLLER} ({c.what}): no answer within "
                                    f"{self._switch_timeout_s} s; holding through the policy controllers")
        if done:
            self._switch = None
            if c.what == "to_policy":
                self._next_check_t = now  # re-verify at once
            if self._switch_queue is not None:
                self._switch, self._switch_queue = self._switch_queue, None
                self._switch.deadline = now + self._switch_timeout_s
                self._send_switch(self._switch)
            self._publish_state()

    # ------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        now = self._now()
        with self._lock:
            self.arbiter.check(now)
            if self._halt_teleop and now - self._tp_last_input > TELEOP_TIMEOUT_S:
                self._exit_halt_teleop(f"no teleop command for more than {TELEOP_TIMEOUT_S} s")
            self._poll_controller_check(now)
            self._poll_switch(now)
            if self.arbiter.mode is Mode.HOLD and self._pending is not None:
                self._try_enter_policy(now)
            self._retry_engage(now)

    def _retry_engage(self, now: float) -> None:
        """The deadman is still held (engage True, operator commands still arriving) but the takeover
        was refused for a passing reason (e.g. no joint states yet at start-up): try again, 2 Hz.
        Not in HALTED: there a takeover needs a new press."""
        if not self._engage_wanted or self.arbiter.mode not in (Mode.HOLD, Mode.POLICY):
            return  # never after a halt: teleop under a halt takes a fresh press
        if now - self._tp_seen_input > TELEOP_TIMEOUT_S or now - self._engage_retry_t < 0.5:
            return
        self._engage_retry_t = now
        self.request_teleop("operator engaged (deadman held), retried")

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
            if d and self._teleop_active(self.arbiter.mode) and self._tp_started:
                self._teleop_step(now)  # the first teleop command goes out now: hold in place
            return d

    def release_teleop(self, reason: str = "teleop released") -> Decision:
        """Leave TELEOP to HOLD (under a halt: back to holding, still HALTED)."""
        with self._lock:
            if self._halt_teleop:
                self._exit_halt_teleop(reason)
                return Decision(True, reason)
            return self.arbiter.release_teleop(reason)

    def _teleop_active(self, mode: Mode) -> bool:
        """Whether teleop commands may move the robot now."""
        if mode is Mode.TELEOP:
            return True
        return (mode is Mode.HALTED and self._halt_teleop and not self._switched_to_hold
                and (self._switch is None or self._switch.what != "to_hold"))

    def _enter_halt_teleop(self, reason: str, now: float) -> Decision:
        if not self.cfg.teleop.teleop_only_after_halt:
            return Decision(False, "HALTED: teleop after a halt is disabled (teleop.teleop_only_after_halt)")
        if self._halt_teleop:
            return Decision(True, "already teleoperating under the halt")
        if not self.arbiter._fresh(self.arbiter._last_joint_state, self.arbiter.joint_state_timeout_s, now):
            return Decision(False, "teleop refused: no fresh joint states")
        self._halt_teleop = True
        self._capture_hold(list(self._groups.values()))
        self._reset_references_to_hold()
        if self._switched_to_hold or (self._switch is not None and self._switch.what == "to_hold"):
            self._request_switch("to_teleop", tuple(self.robot.controller_names), (self.robot.hold_controller,))
        self._begin_teleop(f"under halt: {reason}")
        self.get_logger().warning(f"HALTED: operator teleop under the latched halt ({reason}); reset still needed")
        self._publish_state()
        return Decision(True, f"teleop under the latched halt: {reason}")

    def _exit_halt_teleop(self, reason: str) -> None:
        self._halt_teleop = False
        self._end_teleop(f"HALTED: {reason}")
        self._capture_hold(list(self._groups.values()))
        if self.robot.hold_controller and self.cfg.safety.halt_switches_to_hold_controller:
            self._request_switch("to_hold", (self.robot.hold_controller,), tuple(self.robot.controller_names))
        self.get_logger().warning(f"HALTED: teleop under the halt ended ({reason}); holding")
        self._publish_state()

    def _begin_teleop(self, reason: str) -> None:
        """Start the teleop target at the measured state; mark the intervention."""
        self._tp_started = False
        self._tp_twist = self._tp_pose = self._tp_jog = None
        self._tp_gripper = None
        self._tp_last_input = self._now()  # the arbiter's teleop watchdog starts now too
        self._tp_last_step = -math.inf
        rt, tp = self._tp_rt, self._tp
        if rt is not None and tp is not None:
            try:
                if rt.spec.controller == "cartesian_impedance":
                    if self._ee_pose is None:
                        raise KeyError("no measured end-effector pose on /ee_pose")
                    tp.start_pose(*self._ee_pose)
                    self.safety.reset_pose_reference(rt.name, *self._ee_pose)
                else:
                    tp.start_joints(self._joint_pos)
                    self.safety.reset_reference({j: self._joint_pos[j] for j in rt.spec.joints})
                self._tp_started = True
            except (KeyError, ValueError) as e:
                self.get_logger().error(f"teleop cannot start group {rt.name!r}: {e}; holding it")
        self._stats["interventions_started"] += 1
        self._intervention_pub.publish(String(data=f"start: {reason}"))

    def _end_teleop(self, reason: str) -> None:
        self._tp_started = False
        self._tp_twist = self._tp_pose = self._tp_jog = None
        self._tp_gripper = None
        self._intervention_pub.publish(String(data=f"end: {reason}"))

    def _teleop_step(self, now: float) -> None:
        """Integrate the newest operator command onto the teleop target; filter; publish."""
        rt, tp = self._tp_rt, self._tp
        if rt is None or tp is None:
            return
        dt = now - self._tp_last_step if math.isfinite(self._tp_last_step) else rt.period_s
        dt = min(max(dt, 0.0), 2.0 * rt.period_s)
        self._tp_last_step = now
        twist = jog = None
        if self._tp_twist is not None and now - self._tp_twist[1] <= TELEOP_INPUT_FRESH_S:
            twist = self._tp_twist[0]
        elif self._tp_pose is not None and now - self._tp_pose[1] <= TELEOP_INPUT_FRESH_S and tp.cartesian_capable:
            twist = tp.servo_twist(self._tp_pose[0])
        if self._tp_jog is not None and now - self._tp_jog[1] <= TELEOP_INPUT_FRESH_S:
            jog = self._tp_jog[0]
        try:
            target = tp.step(dt, twist=twist, joint_velocity=jog)
        except RuntimeError:
            self._stats["teleop_inputs_ignored"] += 1
            target = tp.step(dt)
        if rt.spec.controller == "cartesian_impedance":
            r = self.safety.filter_pose(rt.name, target[:3], target[3:7], now)
            if not r.rejected:
                tp.pose = homogeneous(r.values[:3], r.values[3:7])  # stay on what is really sent
        elif rt.spec.controller == "forward_velocity":
            r = self.safety.filter_joint_velocity(rt.spec.joints, tp.qdot, now, self._joint_pos)
        else:
            r = self.safety.filter_joint(rt.spec.joints, target, now)
            if not r.rejected:
                tp.q = np.array(r.values, dtype=np.float64)
        if r.rejected:
            self._stats["teleop_rejected"] += 1
            if self.arbiter.mode is Mode.TELEOP:
                self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
            elif self._halt_teleop:
                self._exit_halt_teleop(f"teleop command rejected: {r.reason}")
            return
        self._stats["teleop_commands"] += 1
        if rt.spec.controller == "joint_trajectory":
            lead = TELEOP_LEAD_PERIODS * rt.period_s
            msg = JointTrajectory()
            msg.header.stamp = self._stamp(now)
            msg.header.frame_id = "teleop"
            msg.joint_names = list(rt.spec.joints)
            msg.points.append(JointTrajectoryPoint(
                positions=[float(x) for x in r.values], velocities=[float(x) for x in tp.qdot],
                time_from_start=_duration(lead)))
            rt.pub.publish(msg)
            self._note_published(now)
        else:
            self._publish_values(rt, r.values, now)

    def _note_teleop_input(self, now: float) -> bool:
        """An operator command arrived: feeds the watchdogs; False when teleop is not active."""
        self._stats["teleop_inputs"] += 1
        self._tp_seen_input = now
        if not self._teleop_active(self.arbiter.mode) and not self._halt_teleop:
            self._stats["teleop_inputs_ignored"] += 1
            return False
        self._tp_last_input = now
        self.arbiter.note_teleop_command(now)
        return True

    def _frame_ok(self, frame_id: str) -> bool:
        rt = self._tp_rt
        ok = frame_id in ("", self.robot.base_frame) or (rt is not None and frame_id == rt.spec.frame_id)
        if not ok:
            self._stats["teleop_inputs_ignored"] += 1
            self._last_reject = f"teleop command in frame {frame_id!r}: only the base frame is accepted"
        return ok

    def _on_engage(self, msg: Bool) -> None:
        with self._lock:
            self._engage_wanted = bool(msg.data)
            active = self._halt_teleop or self.arbiter.mode is Mode.TELEOP
            if not msg.data:
                if active:
                    self.release_teleop("operator released the deadman")
                return
            if active:
                return  # already teleoperating: a repeated engage (late-joiner resend) changes nothing
            d = self.request_teleop("operator engaged (deadman held)")
        if not d:
            self.get_logger().warning(f"teleop engage refused: {d.reason}")

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        now = self._now()
        lin, ang = msg.twist.linear, msg.twist.angular
        v = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float64)
        with self._lock:
            if not self._frame_ok(msg.header.frame_id):
                return
            if not np.all(np.isfinite(v)):
                self._stats["teleop_rejected"] += 1
                return
            if not self._note_teleop_input(now):
                return
            self._tp_twist = (v, now)
            rt = self._tp_rt
            if self._tp_started and rt is not None and now - self._tp_last_step >= 0.5 * rt.period_s:
                self._teleop_step(now)  # do not wait for the next tick

    def _on_teleop_pose(self, msg: PoseStamped) -> None:
        now = self._now()
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            if not self._frame_ok(msg.header.frame_id):
                return
            try:
                target = homogeneous((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
            except ValueError:
                self._stats["teleop_rejected"] += 1
                return
            if not np.all(np.isfinite(target)) or not self._note_teleop_input(now):
                return
            self._tp_pose = (target, now)

    def _on_teleop_jog(self, msg: JointState) -> None:
        now = self._now()
        jog = {n: float(v) for n, v in zip(msg.name, msg.velocity)}
        with self._lock:
            if not all(math.isfinite(v) for v in jog.values()) or len(jog) != len(msg.name):
                self._stats["teleop_rejected"] += 1
                return
            if self._note_teleop_input(now):
                self._tp_jog = (jog, now)

    def _on_teleop_gripper(self, msg: Float64) -> None:
        now = self._now()
        with self._lock:
            if math.isfinite(msg.data) and self._note_teleop_input(now):
                self._tp_gripper = float(msg.data)

    def _srv_teleop_take(self, _req, resp):
        d = self.request_teleop("operator take via /vla/teleop/take")
        return self._answer(resp, d)

    def _srv_teleop_release(self, _req, resp):
        with self._lock:
            self._engage_wanted = False  # an explicit release is not undone by a held deadman
            if not self._halt_teleop and self.arbiter.mode is not Mode.TELEOP:
                return self._answer(resp, Decision(False, f"not teleoperating (mode {self.arbiter.mode})"))
            d = self.release_teleop("operator release via /vla/teleop/release")
        return self._answer(resp, d)

    # ------------------------------------------------------------------ bumpless policy resume
    def _start_rebase(self, chunk: _Chunk) -> None:
        """First chunk after teleop: offsets from its first point to the held state."""
        self._rebase_pending = False
        offsets: dict[str, np.ndarray] = {}
        for gname in chunk.mapper.groups:
            rt = self._groups[gname]
            hold = rt.hold
            first = chunk.mapper.group_values(chunk.values[:1], gname)[0]
            if isinstance(hold, JointCommand) and hold.kind == "position" and len(first) == len(hold.values):
                offsets[gname] = np.asarray(hold.values, dtype=np.float64) - first
            elif isinstance(hold, PoseCommand):
                off = np.zeros(len(first))
                off[:3] = hold.position - first[:3]
                offsets[gname] = off
        self._rebase = (float(chunk.times[0]), offsets) if offsets else None

    def _rebased(self, gname: str, times: np.ndarray, vals: np.ndarray) -> np.ndarray:
        t0, offsets = self._rebase
        off = offsets.get(gname)
        if off is None:
            return vals
        w = np.clip(1.0 - (times - t0) / REBASE_S, 0.0, 1.0)
        if times[0] > t0 + REBASE_S:
            self._rebase = None  # the offset has faded out
            return vals
        return vals + w[:, None] * off[None, :]

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
            if isinstance(command, JointCommand):
                r = (self.safety.filter_joint_velocity(command.joints, command.values, now, self._joint_pos)
                     if command.kind == "velocity" else self.safety.filter_joint(command.joints, command.values, now))
                safe = JointCommand(command.group, command.joints, r.values, command.kind)
            elif isinstance(command, PoseCommand):
                r = self.safety.filter_pose(command.group, command.position, command.quaternion, now)
                safe = PoseCommand(command.group, command.frame_id, r.values[:3], r.values[3:])
            elif isinstance(command, GripperCommand):
                r = self.safety.filter_gripper(command.group, command.value, now)
                safe = GripperCommand(command.group, float(r.values[0]))
            else:
                r = self.safety.filter_twist(command.group, command.vx, command.vy, command.wz, now)
                safe = TwistCommand(command.group, *(float(x) for x in r.values))
            if r.rejected:
                self.arbiter.hold(f"teleop command rejected: {r.reason}", CAUSE_REJECTED)
                return r
            self.arbiter.note_teleop_command(now)
            rt.teleop = safe
            if rt.spec.controller == "joint_trajectory":
                self._publish_command(rt, safe, now)
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
            "controllers": self._controllers_status,
            "switch_controller": self._switch_status,
            "halt_cause_present": str(self._halt_cause_present()).lower(),
            "teleop": ("engaged" if a.mode is Mode.TELEOP else "engaged under halt" if self._halt_teleop
                       else "off"),
            "teleop_group": self._tp_rt.name if self._tp_rt is not None else "none",
            "teleop_kinematics": self._tp_kinematics,
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
