"""teleop: operator devices → teleop commands and intent for the controller bridge.

The node owns the device mappings; the bridge owns the robot (it integrates the commands into a
target that starts at the measured state, filters them and is the only publisher on the
controller topics). Three device kinds, chosen by what arrives:

* ``/joy`` (sensor_msgs/Joy) — SpaceMouse or gamepad, mapped by the config's ``teleop`` section
  (:class:`~vla_runtime.core.teleop.JoyMapper`): the deadman button engages, axes give an
  end-effector twist within ``max_linear_mps`` / ``max_angular_rps``, the gripper button toggles
  the gripper. A Joy stream silent for ``input_timeout_s`` counts as a released deadman.
* ``/vla/teleop/input/twist`` (geometry_msgs/TwistStamped, base frame) — servo-style velocity
  commands (e.g. from a GUI or a servo front end); engaged while the stream is fresh.
* ``/vla/teleop/input/pose`` (geometry_msgs/PoseStamped) — VR controller or leader arm: an absolute
  pose, clutched (:class:`~vla_runtime.core.teleop.PoseClutch`) onto the measured ``/ee_pose`` at
  the moment the stream starts, so the first target is where the robot is; engaged while fresh.

Publications (to the bridge): ``/vla/teleop/engage`` (std_msgs/Bool, reliable: True when the
deadman is pressed / a stream starts, False when released / silent; True again to a subscriber that
matches while engaged, so a bridge that starts late still learns of the press), ``/vla/teleop/twist``
(TwistStamped) and ``/vla/teleop/pose`` (PoseStamped) at ``rate_hz`` while engaged (a zero twist
when the device is centred, so the bridge's teleop watchdog stays fed only while the operator is
really there), ``/vla/teleop/gripper`` (std_msgs/Float64) on gripper toggles.

Parameters: ``config_file``, ``rate_hz`` (50.0), ``input_timeout_s`` (0.3).
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64

from vla_runtime.core.config import RuntimeConfig
from vla_runtime.core.contract import (
    TOPIC_EE_POSE,
    TOPIC_JOY,
    TOPIC_TELEOP_ENGAGE,
    TOPIC_TELEOP_GRIPPER,
    TOPIC_TELEOP_IN_POSE,
    TOPIC_TELEOP_IN_TWIST,
    TOPIC_TELEOP_POSE,
    TOPIC_TELEOP_TWIST,
)
from vla_runtime.core.rotation import homogeneous, matrix_to_quaternion
from vla_runtime.core.teleop import JoyMapper, PoseClutch
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_SENSOR,
    load_node_config,
    run_node,
)

#: Engage events: reliable, none lost.
QOS_EVENT = QOS_DIAGNOSTICS


class TeleopNode(Node):
    """Maps operator devices onto the bridge's teleop topics (see the module docstring).

    Args:
        config: A validated runtime config; None reads the ``config_file`` parameter.
        node_name: The ROS node name.
    """

    def __init__(self, config: RuntimeConfig | None = None, node_name: str = "teleop") -> None:
        super().__init__(node_name)
        self.cfg = config if config is not None else load_node_config(self)
        self.declare_parameter("rate_hz", 50.0)
        self.declare_parameter("input_timeout_s", 0.3)
        self.rate_hz = float(self.get_parameter("rate_hz").value)
        self.timeout_s = float(self.get_parameter("input_timeout_s").value)
        tcfg = self.cfg.teleop
        if tcfg.device == "gamepad" and tcfg.deadman_button is None:
            self.get_logger().fatal("teleop.device gamepad needs teleop.deadman_button: a gamepad must have a deadman")
            raise SystemExit(2)
        self.mapper = JoyMapper(tcfg)
        self.clutch = PoseClutch()
        grippers = [g for g in self.cfg.robot.groups.values() if g.controller == "gripper"]
        self._gripper_range = grippers[0].gripper_range if grippers and grippers[0].gripper_range else None
        self._gripper_open = True
        self.frame_id = self.cfg.robot.base_frame

        self._engaged = False
        self._engage_subscribers = 0
        self._joy: tuple[bool, np.ndarray, float] | None = None  # (deadman, twist, receive time)
        self._twist_in: tuple[np.ndarray, float] | None = None
        self._pose_in: tuple[np.ndarray, float] | None = None
        self._ee: np.ndarray | None = None
        self.counters = {"joy": 0, "joy_bad": 0, "twist_in": 0, "pose_in": 0, "engages": 0, "published": 0}

        self.engage_pub = self.create_publisher(Bool, TOPIC_TELEOP_ENGAGE, QOS_EVENT)
        self.twist_pub = self.create_publisher(TwistStamped, TOPIC_TELEOP_TWIST, QOS_COMMAND)
        self.pose_pub = self.create_publisher(PoseStamped, TOPIC_TELEOP_POSE, QOS_COMMAND)
        self.gripper_pub = self.create_publisher(Float64, TOPIC_TELEOP_GRIPPER, QOS_COMMAND)
        self.create_subscription(Joy, TOPIC_JOY, self._on_joy, QOS_SENSOR)
        self.create_subscription(TwistStamped, TOPIC_TELEOP_IN_TWIST, self._on_twist_in, QOS_COMMAND)
        self.create_subscription(PoseStamped, TOPIC_TELEOP_IN_POSE, self._on_pose_in, QOS_COMMAND)
        self.create_subscription(PoseStamped, TOPIC_EE_POSE, self._on_ee_pose, QOS_SENSOR)
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.get_logger().info(
            f"teleop: device {tcfg.device}, deadman button {tcfg.deadman_button}, group {tcfg.group}, "
            f"≤ {tcfg.max_linear_mps} m/s, ≤ {tcfg.max_angular_rps} rad/s, {self.rate_hz:g} Hz")

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _fresh(self, item, now: float) -> bool:
        return item is not None and now - item[-1] <= self.timeout_s

    def _wanted_engaged(self, now: float) -> bool:
        joy = self._joy is not None and self._joy[0] and self._fresh(self._joy, now)
        return joy or self._fresh(self._twist_in, now) or (self._fresh(self._pose_in, now) and self.clutch.engaged)

    def close(self) -> None:
        """Tell the bridge the operator is gone (the console script calls this on the way out)."""
        if self._engaged:
            self.engage_pub.publish(Bool(data=False))

    def _set_engaged(self, engaged: bool) -> None:
        if engaged == self._engaged:
            return
        self._engaged = engaged
        if engaged:
            self.counters["engages"] += 1
        else:
            self.clutch.release()
        self.engage_pub.publish(Bool(data=engaged))

    def _publish(self, now: float) -> None:
        """Send the current command (called on input arrival and from the timer)."""
        stamp = self.get_clock().now().to_msg()
        if self._fresh(self._pose_in, now) and self.clutch.engaged:
            t = self.clutch.target(self._pose_in[0])
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t[:3, 3])
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in matrix_to_quaternion(t[:3, :3]))
            self.pose_pub.publish(msg)
        else:
            if self._fresh(self._twist_in, now):
                v = self._twist_in[0]
            elif self._joy is not None and self._fresh(self._joy, now):
                v = self._joy[1]
            else:
                v = np.zeros(6)
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            tw = msg.twist
            tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z = (float(x) for x in v)
            self.twist_pub.publish(msg)
        self.counters["published"] += 1

    def _update(self, now: float) -> None:
        want = self._wanted_engaged(now)
        self._set_engaged(want)
        if want:
            self._publish(now)

    # ------------------------------------------------------------------ inputs
    def _on_joy(self, msg: Joy) -> None:
        now = self._now()
        try:
            cmd = self.mapper.map(msg.axes, msg.buttons, now)
        except ValueError as e:
            self.counters["joy_bad"] += 1
            self.get_logger().warning(f"Joy ignored: {e}", throttle_duration_sec=2.0)
            return
        self.counters["joy"] += 1
        self._joy = (cmd.engaged, cmd.twist, now)
        if cmd.gripper_toggled and self._gripper_range is not None:
            self._gripper_open = not self._gripper_open
            closed, opened = self._gripper_range
            self.gripper_pub.publish(Float64(data=float(opened if self._gripper_open else closed)))
        self._update(now)

    def _on_twist_in(self, msg: TwistStamped) -> None:
        now = self._now()
        if msg.header.frame_id not in ("", self.frame_id):
            self.get_logger().warning(f"twist in frame {msg.header.frame_id!r} ignored: send the base frame "
                                      f"{self.frame_id!r}", throttle_duration_sec=2.0)
            return
        t = msg.twist
        v = np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z], dtype=np.float64)
        if not np.all(np.isfinite(v)):
            return
        c = self.cfg.teleop
        lin, ang = float(np.linalg.norm(v[:3])), float(np.linalg.norm(v[3:]))
        if lin > c.max_linear_mps:
            v[:3] *= c.max_linear_mps / lin
        if ang > c.max_angular_rps:
            v[3:] *= c.max_angular_rps / ang
        self.counters["twist_in"] += 1
        self._twist_in = (v, now)
        self._update(now)

    def _on_pose_in(self, msg: PoseStamped) -> None:
        now = self._now()
        p, o = msg.pose.position, msg.pose.orientation
        try:
            pose = homogeneous((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        except ValueError:
            return
        if not np.all(np.isfinite(pose)):
            return
        self.counters["pose_in"] += 1
        if not self.clutch.engaged or not self._fresh(self._pose_in, now):
            if self._ee is None:
                self.get_logger().warning("pose input ignored: no /ee_pose yet to clutch onto",
                                          throttle_duration_sec=2.0)
                return
            self.clutch.engage(pose, self._ee)
        self._pose_in = (pose, now)
        self._update(now)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        try:
            self._ee = homogeneous((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        except ValueError:
            pass

    def _tick(self) -> None:
        # Engage is an event on a volatile topic (any publisher QoS can match the bridge), so a
        # subscriber that matched after the press never saw it: tell late joiners the current state.
        n = self.engage_pub.get_subscription_count()
        if n > self._engage_subscribers and self._engaged:
            self.engage_pub.publish(Bool(data=True))
        self._engage_subscribers = n
        self._update(self._now())


def main(args: list[str] | None = None) -> None:
    """Console script: ``teleop --config sim_panda.yaml`` (or ``-p config_file:=…``)."""
    run_node(TeleopNode, args)


if __name__ == "__main__":
    main()
