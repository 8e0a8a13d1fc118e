"""The ros2_control controller kinds the runtime can drive: ONE table, read by everything else.

Each kind says the topic it listens on (relative to ``/<controller_name>/``), the ROS message type
on that topic, the kind of command it takes (:data:`Command`), whether it also takes a
``target_stiffness``, and the action dims a model may send it. The config's ``controller`` field,
the command mapping, ``vla-runtime check``, the recorder and the input validation all read this
table; the message each kind is sent is built by its output adapter in
:mod:`vla_runtime.nodes.bridge_outputs` (rclpy types live there, not here), and the simulated robot
has a controller per kind in :mod:`vla_runtime.sim.controllers`.

Adding a kind: a row here, its output adapter, and (to try it in simulation) its sim controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What a kind of controller is commanded with.
Command = Literal["joint_position", "joint_velocity", "pose", "gripper", "twist"]


@dataclass(frozen=True)
class ControllerKind:
    """One controller kind.

    Attributes:
        name: The config's ``controller`` value.
        topic_suffix: Its command topic is ``/<controller_name>/<topic_suffix>``.
        msgtype: The ROS message type on that topic (``pkg/msg/Type``).
        command: What it is commanded with.
        stiffness: It takes ``target_stiffness`` (Float64MultiArray) too (CRISP impedance controllers).
        dims: For non-joint commands, the component names of its action dims (``<group>/<dim>``).
        needs_joints: A group of this kind must list its joints.
    """

    name: str
    topic_suffix: str
    msgtype: str
    command: Command
    stiffness: bool = False
    dims: tuple[str, ...] = ()
    needs_joints: bool = True


KINDS: dict[str, ControllerKind] = {k.name: k for k in (
    # joint_trajectory_controller: ~/joint_trajectory
    ControllerKind("joint_trajectory", "joint_trajectory", "trajectory_msgs/msg/JointTrajectory", "joint_position"),
    # forward_command_controller (position / velocity): ~/commands
    ControllerKind("forward_position", "commands", "std_msgs/msg/Float64MultiArray", "joint_position"),
    ControllerKind("forward_velocity", "commands", "std_msgs/msg/Float64MultiArray", "joint_velocity"),
    # CRISP-style impedance controllers: ~/target_pose, ~/target_joint, ~/target_stiffness
    ControllerKind("cartesian_impedance", "target_pose", "geometry_msgs/msg/PoseStamped", "pose", stiffness=True,
                   dims=("x", "y", "z", "qx", "qy", "qz", "qw", "rx", "ry", "rz")),
    ControllerKind("joint_impedance", "target_joint", "sensor_msgs/msg/JointState", "joint_position", stiffness=True),
    # a position-commanded gripper: ~/commands
    ControllerKind("gripper", "commands", "std_msgs/msg/Float64MultiArray", "gripper", dims=("gripper",)),
    # a mobile base: ~/cmd_vel
    ControllerKind("base_twist", "cmd_vel", "geometry_msgs/msg/Twist", "twist", dims=("vx", "vy", "wz"),
                   needs_joints=False),
)}

#: Kinds whose commands are the group's joints, one dim per joint.
JOINT_KINDS = frozenset(k.name for k in KINDS.values() if k.command in ("joint_position", "joint_velocity"))


def kind(name: str) -> ControllerKind:
    """The kind called ``name`` (KeyError naming the known ones)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown controller kind {name!r}; known: {sorted(KINDS)}") from None
