"""Stand-ins for the policy and the operator of a teleop graph, on a probe node.

``bench teleop`` and the teleop and recording integration tests run ``sim_robot``,
``controller_bridge`` and ``teleop`` (gamepad mapping, deadman button 4) and drive them from
:class:`TeleopRig`: a stand-in policy streams ``/vla/action_chunk`` at 30 Hz that holds the arm
where it was when the policy (re)gained control — the ideal "first command starts from the current
state" policy, so any end-effector motion at a switch is the switch's own transient — and a
stand-in operator publishes ``sensor_msgs/Joy`` at 50 Hz, as a joystick driver does.
:func:`run_trial` is one takeover → move → handback cycle.
"""

from __future__ import annotations

import time

import numpy as np

from vla_runtime.graph.harness import PoseWatch, SafetyWatch
from vla_runtime.graph.probe import Probe, wait_for
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec

__all__ = ["GAMEPAD_TELEOP", "TeleopRig", "run_trial", "teleop_graph"]

#: The teleop section the bench and the integration tests run with.
GAMEPAD_TELEOP = {"device": "gamepad", "deadman_button": 4, "group": "arm", "linear_axes": [0, 1, 2],
                  "angular_axes": [3, 4, 5], "max_linear_mps": 0.1, "max_angular_rps": 0.5,
                  "teleop_only_after_halt": True}
ARM = [f"panda_joint{i}" for i in range(1, 8)]
JT_TOPIC = "/arm_controller/joint_trajectory"
#: How long after a switch the hand's motion counts as the switch's transient.
WINDOW_S = 0.4


def teleop_graph(config_file: str) -> list[NodeSpec]:
    """``sim_robot``, ``controller_bridge`` and ``teleop`` reading ``config_file`` (no placement)."""
    return [NodeSpec(n, NODE_MODULES[n], str(config_file)) for n in ("sim_robot", "controller_bridge", "teleop")]


class TeleopRig:
    """Stand-in policy and operator on a probe node, plus what they observe.

    Args:
        probe: A :class:`vla_runtime.graph.probe.Probe` on the graph's domain.
        arm: The arm group's joints.
        chunk_hz: Policy chunk rate.
        joy_hz: Joy publish rate.
    """

    def __init__(self, probe: Probe, arm: list[str] = ARM, chunk_hz: float = 30.0, joy_hz: float = 50.0) -> None:
        from sensor_msgs.msg import JointState, Joy
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from vla_runtime.core.contract import (
            TOPIC_ACTION_CHUNK,
            TOPIC_HALT,
            TOPIC_INTERVENTION,
            TOPIC_JOINT_STATES,
            TOPIC_JOY,
        )
        from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_SENSOR

        self._Joy, self._JT = Joy, JointTrajectory
        self.node = probe.node
        self.arm = list(arm)
        self.q: dict[str, float] = {}
        self.pose = PoseWatch(probe)
        self.safety = SafetyWatch(probe)
        self.jt: list[tuple[float, str]] = []  # (receive time, frame_id)
        self.interventions = probe.collect(String, TOPIC_INTERVENTION, 10)
        self.policy_enabled = True
        self.policy_target: np.ndarray | None = None
        self.joy_axes = [0.0] * 6
        self.joy_buttons = [0] * 8
        self.joy_enabled = True
        n = self.node
        n.create_subscription(JointState, TOPIC_JOINT_STATES, self._on_js, QOS_SENSOR)
        n.create_subscription(JointTrajectory, JT_TOPIC, self._on_jt, QOS_COMMAND)
        self.chunk_pub = n.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        self.joy_pub = n.create_publisher(Joy, TOPIC_JOY, QOS_SENSOR)
        self.halt_pub = n.create_publisher(String, TOPIC_HALT, QOS_LATCHED)
        n.create_timer(1.0 / chunk_hz, self._stream_chunk)
        n.create_timer(1.0 / joy_hz, self._stream_joy)

    # ------------------------------------------------------------------ callbacks
    def _on_js(self, msg) -> None:
        for name, p in zip(msg.name, msg.position):
            self.q[name] = p

    def _on_jt(self, msg) -> None:
        self.jt.append((time.monotonic(), msg.header.frame_id))

    def teleop_ready(self) -> bool:
        """The teleop node is up: it subscribes to our Joy and publishes the engage topic."""
        from vla_runtime.core.contract import TOPIC_TELEOP_ENGAGE

        return self.joy_pub.get_subscription_count() >= 1 and self.node.count_publishers(TOPIC_TELEOP_ENGAGE) >= 1

    def mode(self) -> str:
        """The bridge's last reported mode ("" before the first report)."""
        return self.safety.mode()

    def _stream_chunk(self) -> None:
        from trajectory_msgs.msg import JointTrajectoryPoint

        from vla_runtime.nodes.common import ns_to_stamp

        if not self.policy_enabled or not all(j in self.q for j in self.arm):
            return
        if self.mode() != "POLICY" or self.policy_target is None:
            self.policy_target = np.array([self.q[j] for j in self.arm])  # start from the current state
        msg = self._JT()
        now_ns = self.node.get_clock().now().nanoseconds
        msg.header.stamp = ns_to_stamp(now_ns)
        msg.joint_names = list(self.arm)
        for k in range(10):
            pt = JointTrajectoryPoint(positions=[float(x) for x in self.policy_target])
            pt.time_from_start.nanosec = k * 10_000_000
            msg.points.append(pt)
        self.chunk_pub.publish(msg)

    def _stream_joy(self) -> None:
        if self.joy_enabled:
            self.publish_joy()

    def publish_joy(self, axes: list[float] | None = None, buttons: list[int] | None = None) -> float:
        """Set (and publish now) the operator's stick state; returns the publish time (monotonic)."""
        if axes is not None:
            self.joy_axes = list(axes)
        if buttons is not None:
            self.joy_buttons = list(buttons)
        msg = self._Joy(axes=[float(a) for a in self.joy_axes], buttons=[int(b) for b in self.joy_buttons])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        t = time.monotonic()
        self.joy_pub.publish(msg)
        return t

    def deadman(self, pressed: bool, axes: list[float] | None = None) -> float:
        """Press/release the deadman (button 4)."""
        b = [0] * 8
        b[4] = int(pressed)
        return self.publish_joy(axes if axes is not None else [0.0] * 6, b)

    # ------------------------------------------------------------------ measurements
    def ee_at(self, t: float) -> np.ndarray | None:
        """The last /ee_pose position received at or before ``t``."""
        return self.pose.at(t)

    def max_displacement_mm(self, t0: float, t1: float) -> float:
        """Largest distance of /ee_pose samples in (t0, t1] from the pose at t0 (mm; NaN without samples)."""
        d = self.pose.max_displacement_mm(t0, t1)
        return float("nan") if d is None else d

    def first_teleop_command_after(self, t: float) -> float | None:
        """Receive time of the first teleop trajectory after ``t``."""
        for ts, frame in list(self.jt):
            if ts >= t and frame == "teleop":
                return ts
        return None


def run_trial(rig: TeleopRig, direction: float, move_s: float = 0.4) -> dict[str, float]:
    """One takeover → move → handback cycle; returns latency (ms) and both jumps (mm).

    ``latency_ms``: the Joy message that presses the deadman is published → the first teleop
    command (``header.frame_id == "teleop"``) arrives on the arm's controller topic. ``jump_take_mm``
    / ``jump_back_mm``: the largest ``/ee_pose`` displacement within :data:`WINDOW_S` after a switch
    from the pose at the switch, with the incoming commander asking to stay put.
    """
    wait_for(lambda: rig.mode() == "POLICY", 5.0, what="POLICY before the trial")
    time.sleep(0.3)  # steady under the policy
    t_take = rig.deadman(True)
    wait_for(lambda: rig.first_teleop_command_after(t_take) is not None, 2.0, what="first teleop command")
    latency_ms = 1e3 * (rig.first_teleop_command_after(t_take) - t_take)
    time.sleep(WINDOW_S)
    jump_take = rig.max_displacement_mm(t_take, t_take + WINDOW_S)
    t_move = rig.deadman(True, [direction, 0.0, 0.0, 0.0, 0.0, 0.0])
    time.sleep(move_s)
    rig.deadman(True)
    time.sleep(0.3)  # stick centred: the target stops
    t_release = rig.deadman(False)
    p0, p1 = rig.ee_at(t_move), rig.ee_at(t_release)
    moved = (p1 - p0) * 1e3 if p0 is not None and p1 is not None else np.full(3, np.nan)
    reports = rig.safety.reports
    wait_for(lambda: rig.mode() == "POLICY" and reports[-1][0] > t_release, 3.0, what="POLICY after release")
    t_policy = reports[-1][0]
    time.sleep(WINDOW_S)
    jump_back = rig.max_displacement_mm(t_release, t_policy + WINDOW_S)
    return {"latency_ms": latency_ms, "jump_take_mm": jump_take, "jump_back_mm": jump_back,
            "moved_mm": [round(float(x), 2) for x in moved]}
