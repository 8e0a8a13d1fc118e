"""A controller group at the bridge: its output interface, runtime state and hold target.

The bridge keeps one :class:`GroupState` per controller group: its :class:`GroupOutput`, the
policy track a streaming group samples, the trajectory last sent to a joint_trajectory group, the
hold target and when it was last sent, and a teleop command. :func:`capture_holds` sets hold targets where the robot is
measured to be; :func:`reset_references_to_holds` makes the safety filter limit the next command
relative to them (bumpless POLICY and TELEOP entry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Protocol

import numpy as np

from vla_runtime.core.bridge.chunks import PolicyTrack, ValidChunk, interp_rows
from vla_runtime.core.command_mapping import (
    GripperCommand,
    GroupCommand,
    JointCommand,
    MappingError,
    PoseCommand,
    hold_commands,
)
from vla_runtime.core.config import ControllerGroup, RobotProfile
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.core.teleop import TeleopIntegrator


class Taken(Enum):
    """What became of a chunk a group was given (:meth:`GroupOutput.take_policy`)."""

    STORED = "stored"  # a streaming group samples it from the next tick on
    SENT = "sent"  # a joint_trajectory group sent it to its controller
    STALE = "stale"  # every point was in the past: nothing sent


class GroupOutput(Protocol):
    """A group's output: what its controller takes, which filter its values go through, and the
    message that goes on the wire (one implementation per controller kind, chosen once from the
    config: :mod:`vla_runtime.nodes.bridge_outputs`)."""

    #: True when the command is re-sent every period (False: the controller executes a trajectory).
    streaming: bool

    def take_policy(self, group: GroupState, chunk: ValidChunk, values: np.ndarray,
                    now: float) -> Taken | SafetyResult:
        """A validated chunk's (H, k) values for this group: stored as ``group.policy`` (streaming)
        or filtered and sent whole; a rejected result names the point the filter refused."""

    def filter_policy(self, track: PolicyTrack, now: float, measured: Mapping[str, float]) -> SafetyResult:
        """A streaming group's policy track sampled at ``now``, through its filter."""

    def publish_sample(self, values: np.ndarray, now: float) -> None:
        """Send filtered values."""

    def publish_command(self, cmd: GroupCommand, now: float) -> None:
        """Send a hold (or programmatic teleop) command, already safe."""

    def filter_teleop(self, tp: TeleopIntegrator, target: np.ndarray, now: float,
                      measured: Mapping[str, float]) -> SafetyResult:
        """The teleop target through the filter; the integrator stays on what is sent."""

    def publish_teleop(self, values: np.ndarray, qdot: np.ndarray, now: float) -> None:
        """Send a filtered teleop target (``qdot``: the integrator's joint velocities)."""


class GroupState:
    """One controller group's state.

    Args:
        name: The group's name in the robot profile.
        spec: Its config.
        period_s: Its command period.
        out: Its output (``out.streaming``: the controller needs the command re-sent every period;
            everything but joint_trajectory, which executes the trajectory it was sent).

    Attributes:
        policy: The policy track a streaming group samples each tick (None: none installed).
        published: ``(times, filtered values)`` last sent to a joint_trajectory group.
        hold: The hold target (None: not captured, e.g. no measurement yet).
        hold_dirty: The hold target changed since it was last sent.
        hold_sent_at: When the hold was last sent (s).
        teleop: A teleop command that the command tick sends in TELEOP.
    """

    def __init__(self, name: str, spec: ControllerGroup, period_s: float, out: GroupOutput) -> None:
        self.name = name
        self.spec = spec
        self.period_s = period_s
        self.out = out
        self.streaming = out.streaming
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
