"""What the controller bridge puts on the wire: one output per controller kind, and its
controller_manager client.

Each controller group gets ONE :class:`GroupOutput`, chosen from its ``controller`` when the bridge
builds the group (:func:`build_output`), so sending never branches on the controller type. An
output knows its controller's message type and topic, which :class:`SafetyFilter` call its values
go through, and how to build the message for

* the policy: :meth:`GroupOutput.take_policy` (a chunk arrives: a streaming group stores the track,
  a joint_trajectory group filters every point and sends the whole trajectory at once),
  :meth:`GroupOutput.filter_policy` and :meth:`GroupOutput.publish_sample` (the track sampled on
  each command tick);
* a hold (or programmatic teleop) command: :meth:`GroupOutput.publish_command`; for a
  joint_trajectory controller a one-point trajectory with zero velocities that reaches its point in
  :data:`HOLD_TRAJECTORY_S`;
* the operator's target: :meth:`GroupOutput.filter_teleop` (which also keeps the integrator on what
  is really sent) and :meth:`GroupOutput.publish_teleop`.

Outputs publish through the callable they are given (a publisher's ``publish``; in tests a list's
``append``), so what they send can be checked without a ROS graph.

=======================  ==========================  ============================================
controller               topic (message)             a policy sample is filtered with
=======================  ==========================  ============================================
``joint_trajectory``     ``joint_trajectory``        ``filter_joint`` per point (whole chunk)
                         (JointTrajectory)
``forward_position``     ``commands`` (Float64MA)    ``filter_joint``
``forward_velocity``     ``commands`` (Float64MA)    ``filter_joint_velocity``
``gripper``              ``commands`` (Float64MA)    ``filter_gripper``
``joint_impedance``      ``target_joint``            ``filter_joint``
                         (JointState)
``cartesian_impedance``  ``target_pose``             ``filter_pose``; ``target_stiffness``
                         (PoseStamped)               (Float64MA) clipped to ``stiffness_limits``
``base_twist``           ``cmd_vel`` (Twist)         ``filter_twist``
=======================  ==========================  ============================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped, Twist
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_runtime.core.bridge.chunks import PolicyTrack, ValidChunk, interp_rows
from vla_runtime.core.bridge.groups import GroupState, Taken
from vla_runtime.core.command_mapping import (
    GripperCommand,
    GroupCommand,
    JointCommand,
    PoseCommand,
    TwistCommand,
)
from vla_runtime.core.config import ControllerGroup
from vla_runtime.core.controller_kinds import KINDS
from vla_runtime.core.rotation import homogeneous, rotvec_to_quaternion
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.core.teleop import TeleopIntegrator
from vla_runtime.nodes.common import ns_to_stamp

#: Time a hold trajectory gives a joint_trajectory_controller to settle on the held position.
HOLD_TRAJECTORY_S = 0.05
#: Teleop trajectories for joint_trajectory groups reach their point this many command periods ahead.
TELEOP_LEAD_PERIODS = 2.0
#: ``header.frame_id`` of teleop trajectories (tells them apart from policy and hold trajectories).
TELEOP_FRAME_ID = "teleop"

Publish = Callable[[Any], None]


def duration(seconds: float) -> Duration:
    """Seconds → builtin_interfaces/Duration (negative → 0)."""
    ns = max(0, int(round(seconds * 1e9)))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp(t_s: float):
    """Seconds → builtin_interfaces/Time."""
    return ns_to_stamp(int(round(t_s * 1e9)))


class GroupOutput:
    """One controller group's output: message type, filter and message building (the
    :class:`vla_runtime.core.bridge.groups.GroupOutput` interface).

    Args:
        name: The group's name.
        spec: Its config.
        period_s: Its command period.
        safety: The bridge's safety filter.
        publish: Sends one message on the group's controller topic.
        publish_stiffness: Sends on ``/<controller>/target_stiffness`` (impedance groups with
            ``stiffness_limits``), else None.
    """

    #: The controller kind (``ControllerGroup.controller``).
    controller: ClassVar[str]
    #: The message type on the controller topic.
    msg_type: ClassVar[type]
    #: True when the command is re-sent every period (False: the controller executes a trajectory).
    streaming: ClassVar[bool] = True

    def __init__(self, name: str, spec: ControllerGroup, period_s: float, safety: SafetyFilter,
                 publish: Publish, publish_stiffness: Publish | None = None) -> None:
        self.name = name
        self.spec = spec
        self.joints = tuple(spec.joints)
        self.period_s = period_s
        self.safety = safety
        self.publish = publish
        self.publish_stiffness = publish_stiffness

    # ------------------------------------------------------------------ policy
    def take_policy(self, group: GroupState, chunk: ValidChunk, values: np.ndarray,
                    now: float) -> Taken | SafetyResult:
        """A validated chunk's values for this group (H, k): stored as the track the tick samples.

        Returns:
            What became of it, or the rejected result of a point the filter refused.
        """
        group.policy = PolicyTrack(chunk.times, values)
        return Taken.STORED

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """The track sampled at ``now``, through the group's filter."""
        return self.safety.filter_joint(self.joints, interp_rows(track.times, track.values, now), now)

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Send filtered values (a policy sample, a teleop target, a gripper command)."""
        self.publish(Float64MultiArray(data=[float(x) for x in values]))

    # ------------------------------------------------------------------ hold
    def publish_command(self, cmd: GroupCommand, now: float) -> None:
        """Send a hold or teleop command (already safe)."""
        if isinstance(cmd, JointCommand):
            self.publish_sample(cmd.values, now)
        elif isinstance(cmd, PoseCommand):
            self.publish_sample(np.concatenate([cmd.position, cmd.quaternion]), now)
        elif isinstance(cmd, GripperCommand):
            self.publish_sample(np.array([cmd.value]), now)
        elif isinstance(cmd, TwistCommand):
            self.publish_sample(np.array([cmd.vx, cmd.vy, cmd.wz]), now)

    # ------------------------------------------------------------------ teleop
    def filter_teleop(self, tp: TeleopIntegrator, target: np.ndarray, now: float,
                      measured: Mapping[str, float]) -> SafetyResult:
        """The integrator's new joint target through the filter; the integrator stays on what is sent."""
        r = self.safety.filter_joint(self.joints, target, now)
        if not r.rejected:
            tp.q = np.array(r.values, dtype=np.float64)
        return r

    def publish_teleop(self, values: np.ndarray, qdot: np.ndarray, now: float) -> None:
        """Send a filtered teleop target (``qdot``: the integrator's joint velocities)."""
        self.publish_sample(values, now)


class JointTrajectoryOutput(GroupOutput):
    """``joint_trajectory_controller``: a chunk goes out whole; holds and teleop as one-point trajectories."""

    controller = "joint_trajectory"
    msg_type = JointTrajectory
    streaming = False

    def take_policy(self, group: GroupState, chunk: ValidChunk, values: np.ndarray,
                    now: float) -> Taken | SafetyResult:
        """Filter the chunk's future points in order (continuing from the trajectory last sent) and
        send them as the controller's new trajectory."""
        joints = self.joints
        keep = chunk.times >= now - 1e-3
        if not keep.any():
            return Taken.STALE
        times, q = chunk.times[keep], values[keep]
        dtp = float(times[1] - times[0]) if len(times) > 1 else self.period_s
        t_ref = float(times[0]) - dtp
        if group.published is not None:
            pt, pq = group.published
            ref = interp_rows(pt, pq, t_ref)
            vel = (ref - interp_rows(pt, pq, t_ref - dtp)) / dtp
            self.safety.reset_reference(dict(zip(joints, ref)), t_ref, dict(zip(joints, vel)))
        out = np.empty_like(q)
        for i in range(len(times)):
            r = self.safety.filter_joint(joints, q[i], float(times[i]))
            if r.rejected:
                return r
            out[i] = r.values
        msg = JointTrajectory()
        msg.header.stamp = stamp(chunk.stamp_s)
        msg.joint_names = list(joints)
        for t, row in zip(times, out):
            msg.points.append(JointTrajectoryPoint(positions=row.tolist(),
                                                   time_from_start=duration(t - chunk.stamp_s)))
        self.publish(msg)
        group.published = (times, out)
        group.hold_dirty = False
        return Taken.SENT

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """Not sampled: the controller executes the trajectory :meth:`take_policy` sent."""
        raise NotImplementedError("a joint_trajectory group is sent whole chunks (take_policy)")

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Not used: a joint_trajectory controller takes trajectories."""
        raise NotImplementedError("a joint_trajectory group is sent trajectories")

    def publish_command(self, cmd: GroupCommand, now: float) -> None:
        """A one-point trajectory to the held positions with zero velocities, reached in
        :data:`HOLD_TRAJECTORY_S`."""
        msg = JointTrajectory()
        msg.header.stamp = stamp(now)
        msg.joint_names = list(cmd.joints)
        msg.points.append(JointTrajectoryPoint(
            positions=[float(x) for x in cmd.values], velocities=[0.0] * len(cmd.joints),
            time_from_start=duration(HOLD_TRAJECTORY_S)))
        self.publish(msg)

    def publish_teleop(self, values: np.ndarray, qdot: np.ndarray, now: float) -> None:
        """A one-point trajectory (``frame_id`` :data:`TELEOP_FRAME_ID`) reached
        :data:`TELEOP_LEAD_PERIODS` command periods ahead, with the integrator's velocities."""
        lead = TELEOP_LEAD_PERIODS * self.period_s
        msg = JointTrajectory()
        msg.header.stamp = stamp(now)
        msg.header.frame_id = TELEOP_FRAME_ID
        msg.joint_names = list(self.joints)
        msg.points.append(JointTrajectoryPoint(
            positions=[float(x) for x in values], velocities=[float(x) for x in qdot],
            time_from_start=duration(lead)))
        self.publish(msg)


class ForwardPositionOutput(GroupOutput):
    """``forward_command_controller`` on position interfaces: ``commands`` (Float64MultiArray)."""

    controller = "forward_position"
    msg_type = Float64MultiArray


class ForwardVelocityOutput(GroupOutput):
    """``forward_command_controller`` on velocity interfaces: joint velocities on ``commands``."""

    controller = "forward_velocity"
    msg_type = Float64MultiArray

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """The sampled velocities, limited (a joint at its position limit is not pushed further out)."""
        v = interp_rows(track.times, track.values, now)
        return self.safety.filter_joint_velocity(self.joints, v, now, measured)

    def filter_teleop(self, tp: TeleopIntegrator, target: np.ndarray, now: float,
                      measured: Mapping[str, float]) -> SafetyResult:
        """The integrator's joint velocities, limited."""
        return self.safety.filter_joint_velocity(self.joints, tp.qdot, now, measured)


class GripperOutput(GroupOutput):
    """A gripper's forward command controller: the opening on ``commands``."""

    controller = "gripper"
    msg_type = Float64MultiArray

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """The sampled opening, clipped into the gripper's range."""
        v = interp_rows(track.times, track.values, now)
        return self.safety.filter_gripper(self.name, float(v[0]), now)


class JointImpedanceOutput(GroupOutput):
    """A joint impedance controller: ``target_joint`` (JointState, names and positions, stamped)."""

    controller = "joint_impedance"
    msg_type = JointState

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Send the target joint positions."""
        msg = JointState(name=list(self.joints), position=[float(x) for x in values])
        msg.header.stamp = stamp(now)
        self.publish(msg)


class CartesianImpedanceOutput(GroupOutput):
    """A (CRISP-style) Cartesian impedance controller: ``target_pose`` (PoseStamped in the group's
    frame), and ``target_stiffness`` when the layout carries stiffness and the group has limits."""

    controller = "cartesian_impedance"
    msg_type = PoseStamped

    def take_policy(self, group: GroupState, chunk: ValidChunk, values: np.ndarray,
                    now: float) -> Taken | SafetyResult:
        """Store the pose track (axis-angle layouts become quaternions) with its stiffness rows."""
        if len(chunk.mapper.group_columns(self.name)) == 6:  # axis-angle layout → quaternions
            quats = np.array([rotvec_to_quaternion(r) for r in values[:, 3:6]])
            values = np.hstack([values[:, :3], quats])
        stiff_cols = chunk.mapper.stiffness_columns(self.name)
        stiffness = chunk.values[:, list(stiff_cols)] if stiff_cols else None
        group.policy = PolicyTrack(chunk.times, values, stiffness)
        return Taken.STORED

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """The sampled pose, limited; an accepted one sends the sampled stiffness, clipped to its limits."""
        v = interp_rows(track.times, track.values, now)
        r = self.safety.filter_pose(self.name, v[:3], v[3:7], now)
        if not r.rejected and self.publish_stiffness is not None and track.stiffness is not None:
            lo, hi = self.spec.stiffness_limits
            s = np.clip(interp_rows(track.times, track.stiffness, now), lo, hi)
            self.publish_stiffness(Float64MultiArray(data=s.tolist()))
        return r

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Send ``[x, y, z, qx, qy, qz, qw]`` as the target pose."""
        self._publish_pose(values[:3], values[3:7], now)

    def publish_command(self, cmd: GroupCommand, now: float) -> None:
        """Send a pose hold (or any command, as its values)."""
        if isinstance(cmd, PoseCommand):
            self._publish_pose(cmd.position, cmd.quaternion, now)
        else:
            super().publish_command(cmd, now)

    def _publish_pose(self, p: Sequence[float], q: Sequence[float], now: float) -> None:
        msg = PoseStamped()
        msg.header.stamp = stamp(now)
        msg.header.frame_id = self.spec.frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(x) for x in p)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(x) for x in q)
        self.publish(msg)

    def filter_teleop(self, tp: TeleopIntegrator, target: np.ndarray, now: float,
                      measured: Mapping[str, float]) -> SafetyResult:
        """The integrator's pose target, limited; the integrator stays on what is sent."""
        r = self.safety.filter_pose(self.name, target[:3], target[3:7], now)
        if not r.rejected:
            tp.pose = homogeneous(r.values[:3], r.values[3:7])
        return r


class BaseTwistOutput(GroupOutput):
    """A mobile base: ``cmd_vel`` (Twist: linear x, y and angular z)."""

    controller = "base_twist"
    msg_type = Twist

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """The sampled twist, limited in planar speed and yaw rate."""
        v = interp_rows(track.times, track.values, now)
        return self.safety.filter_twist(self.name, float(v[0]), float(v[1]), float(v[2]), now)

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Send ``[vx, vy, wz]``."""
        msg = Twist()
        msg.linear.x, msg.linear.y, msg.angular.z = (float(x) for x in values)
        self.publish(msg)


#: The output of each controller kind.
OUTPUTS: dict[str, type[GroupOutput]] = {
    cls.controller: cls
    for cls in (JointTrajectoryOutput, ForwardPositionOutput, ForwardVelocityOutput, GripperOutput,
                JointImpedanceOutput, CartesianImpedanceOutput, BaseTwistOutput)
}


def build_output(name: str, spec: ControllerGroup, period_s: float, safety: SafetyFilter,
                 advertise: Callable[[type, str], Publish]) -> GroupOutput:
    """The output of one group, with its publisher(s).

    Args:
        name: The group's name.
        spec: Its config (``controller`` picks the output).
        period_s: Its command period.
        safety: The bridge's safety filter.
        advertise: ``(message type, topic) → publish callable`` (the node creates a publisher).
    """
    cls = OUTPUTS[spec.controller]
    publish = advertise(cls.msg_type, spec.resolved_topic)
    stiffness = None
    if KINDS[spec.controller].stiffness and spec.stiffness_limits is not None:
        stiffness = advertise(Float64MultiArray, f"/{spec.controller_name}/target_stiffness")
    return cls(name, spec, period_s, safety, publish, stiffness)


class RclpyControllerManager:
    """controller_manager's ``list_controllers`` / ``switch_controller`` through rclpy clients
    (:class:`~vla_runtime.core.bridge.controller_switching.ControllerManagerClient`).

    Args:
        list_client: A client of ``ListControllers``.
        switch_client: A client of ``SwitchController``.
    """

    def __init__(self, list_client, switch_client) -> None:
        self._list = list_client
        self._switch = switch_client

    def list_controllers(self):
        """Send a list request; None while the service is not available."""
        if not self._list.service_is_ready():
            return None
        return self._list.call_async(self._list.srv_type.Request())

    def switch_controllers(self, activate: Sequence[str], deactivate: Sequence[str], timeout_s: float):
        """Send a STRICT, activate-asap switch request (Humble's field names too); None while the
        service is not available."""
        srv = self._switch.srv_type
        req = srv.Request()
        req.activate_controllers = list(activate)
        req.deactivate_controllers = list(deactivate)
        req.strictness = srv.Request.STRICT
        req.activate_asap = True
        req.timeout = duration(timeout_s)
        if hasattr(req, "start_controllers"):  # Humble field set
            req.start_controllers = list(activate)
            req.stop_controllers = list(deactivate)
            req.start_asap = True
        if not self._switch.service_is_ready():
            return None
        return self._switch.call_async(req)

    def forget(self, future) -> None:
        """Drop a timed-out call (each client ignores a future that is not its own)."""
        self._list.remove_pending_request(future)
        self._switch.remove_pending_request(future)
