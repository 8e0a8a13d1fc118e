"""A controller group's runtime state at the bridge, and its hold target from the measured state.

The bridge keeps one :class:`GroupState` per controller group: the policy track a streaming group
samples, the trajectory last sent to a joint_trajectory group, the hold target and when it was
last sent, and a teleop command. :func:`capture_holds` sets hold targets where the robot is
measured to be; :func:`reset_references_to_holds` makes the safety filter limit the next command
relative to them (bumpless POLICY and TELEOP entry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vla_runtime.core.bridge.chunks import PolicyTrack, interp_rows
from vla_runtime.core.command_mapping import (
    GripperCommand,
    GroupCommand,
    JointCommand,
    MappingError,
    PoseCommand,
    hold_commands,
)
from vla_runtime.core.config import ControllerGroup, RobotProfile
from vla_runtime.core.safety_filter import SafetyFilter


class GroupState:
    """One controller group's state.

    Args:
        name: The group's name in the robot profile.
        spec: Its config.
        period_s: Its command period.
        streaming: True when its controller needs the command re-sent every period (everything
            but joint_trajectory, which executes the trajectory it was sent).

    Attributes:
        policy: The policy track a streaming group samples each tick (None: none installed).
        published: ``(times, filtered values)`` last sent to a joint_trajectory group.
        hold: The hold target (None: not captured, e.g. no measurement yet).
        hold_dirty: The hold target changed since it was last sent.
        hold_sent_at: When the hold was last sent (s).
        teleop: A teleop command that the command tick sends in TELEOP.
    """

    def __init__(self, name: str, spec: ControllerGroup, period_s: float, streaming: bool) -> None:
        self.name = name
        self.spec = spec
        self.period_s = period_s
        self.streaming = streaming
        self.policy: PolicyTrack | None = None
        self.published: tuple[np.ndarray, np.ndarray] | None = None
        self.hold: GroupCommand | None = None
        self.hold_dirty = True
        self.hold_sent_at = -math.inf
        self.teleop: GroupCommand | None = None


def capture_holds(
    groups: Iterable[GroupState],
    robot: RobotProfile,
    safety: SafetyFilter,
    joint_positions: Mapping[str, float],
    ee_pose: tuple[np.ndarray, np.ndarray] | None,
    cartesian_groups: Sequence[str],
    now: float,
    joint_states_stale: bool = False,
) -> None:
    """Set each group's hold target from the measured state (where it is available).

    A gripper's hold is clipped into its commandable range; a group without the measurement it
    needs gets no hold (``hold = None``).

    Args:
        groups: The groups to capture.
        robot: The robot profile.
        safety: The safety filter (gripper limits).
        joint_positions: Measured joint name → position.
        ee_pose: Measured end-effector (position, quaternion xyzw) of the Cartesian group(s).
        cartesian_groups: Names of the Cartesian groups that ``ee_pose`` belongs to.
        now: The time of the capture (s).
        joint_states_stale: The HOLD is BECAUSE joint states went stale: the last measurement is
            where the arm WAS, so a trajectory group holds the reference its controller is tracking
            now (the last published trajectory at this instant), which the arm is close behind,
            instead of being pulled back to the old sample.
    """
    poses = {g: ee_pose for g in cartesian_groups} if ee_pose is not None else {}
    for g in groups:
        if joint_states_stale and not g.streaming and g.published is not None:
            pt, pq = g.published
            g.hold = JointCommand(g.name, tuple(g.spec.joints), interp_rows(pt, pq, now), "position")
            g.hold_dirty = True
            continue
        try:
            cmd = hold_commands(robot, joint_positions, poses, [g.name])[g.name]
        except MappingError:
            g.hold = None
            continue
        if isinstance(cmd, GripperCommand):
            lo, hi = safety.gripper_limits(g.name)
            cmd = GripperCommand(cmd.group, min(max(cmd.value, lo), hi))
        g.hold = cmd
        g.hold_dirty = True


def reset_references_to_holds(groups: Iterable[GroupState], safety: SafetyFilter,
                              joint_positions: Mapping[str, float]) -> None:
    """Bumpless: the next policy/teleop command is limited relative to the held state.

    Position holds reset the joint references to the held positions, a velocity hold to the
    measured positions, a pose hold the group's pose reference.
    """
    for g in groups:
        cmd = g.hold
        if isinstance(cmd, JointCommand) and cmd.kind == "position":
            safety.reset_reference(dict(zip(cmd.joints, (float(x) for x in cmd.values))))
        elif isinstance(cmd, JointCommand):
            safety.reset_reference({j: joint_positions[j] for j in cmd.joints if j in joint_positions})
        elif isinstance(cmd, PoseCommand):
            safety.reset_pose_reference(g.name, cmd.position, cmd.quaternion)
