"""Action dims → per-group controller commands, and hold commands from the measured state (pure).

An action sample is a set of named values (the ``/vla/action_chunk`` contract): joint names,
``<group>/x,y,z,qx,qy,qz,qw`` (or ``<group>/rx,ry,rz`` axis-angle) for a Cartesian pose,
``<group>/stiffness…`` for an impedance group's stiffness, ``<group>/gripper`` (or the gripper's
joint name) for a gripper and ``<group>/vx,vy,wz`` for a mobile base.

:class:`CommandMapper` is built once per dim layout (the chunk's ``joint_names``): it decides which
robot groups the layout drives — a group is driven when the layout names at least one of its dims,
and then it must name all of them (the error lists the missing ones) — and precomputes the column
indices, so mapping a row is a few numpy takes. Groups the layout does not mention are left alone
(the bridge keeps holding them). :func:`hold_commands` builds the commands that keep each group
where it is measured to be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vla_runtime.core.config import ControllerGroup, RobotProfile
from vla_runtime.core.controller_kinds import JOINT_KINDS
from vla_runtime.core.rotation import rotvec_to_quaternion

POSE_DIMS = ("x", "y", "z", "qx", "qy", "qz", "qw")
ROTVEC_POSE_DIMS = ("x", "y", "z", "rx", "ry", "rz")
TWIST_DIMS = ("vx", "vy", "wz")
JOINT_CONTROLLERS = JOINT_KINDS


class MappingError(ValueError):
    """An action layout or sample that cannot be mapped onto the robot's groups."""


@dataclass(frozen=True)
class JointCommand:
    """Joint values for one group, in the controller's joint order.

    ``kind`` is ``"position"`` or ``"velocity"`` (forward_velocity groups).
    """

    group: str
    joints: tuple[str, ...]
    values: np.ndarray
    kind: str = "position"


@dataclass(frozen=True)
class PoseCommand:
    """End-effector target of a Cartesian group: position (3,), quaternion (x, y, z, w)."""

    group: str
    frame_id: str
    position: np.ndarray
    quaternion: np.ndarray
    stiffness: np.ndarray | None = None


@dataclass(frozen=True)
class GripperCommand:
    """Gripper opening (the group's first joint's unit, e.g. metres)."""

    group: str
    value: float


@dataclass(frozen=True)
class TwistCommand:
    """Planar base twist."""

    group: str
    vx: float
    vy: float
    wz: float


GroupCommand = JointCommand | PoseCommand | GripperCommand | TwistCommand


@dataclass(frozen=True)
class _Plan:
    group: str
    controller: str
    columns: tuple[int, ...]  # value columns in the command's order
    rotvec: bool = False
    stiffness_columns: tuple[int, ...] = ()


def group_dims(name: str, group: ControllerGroup) -> list[str]:
    """The dims a layout must name to drive ``group`` (quaternion form for Cartesian groups)."""
    if group.controller in JOINT_CONTROLLERS:
        return list(group.joints)
    if group.controller == "cartesian_impedance":
        return [f"{name}/{d}" for d in POSE_DIMS]
    if group.controller == "gripper":
        return [f"{name}/gripper"]
    return [f"{name}/{d}" for d in TWIST_DIMS]


class CommandMapper:
    """Maps rows of one action layout onto per-group commands.

    Args:
        robot: The robot profile.
        dim_names: The layout (column names of the samples).

    Raises:
        MappingError: Duplicate dims, or a group named only in part (the message lists the missing
            dims); dims that belong to no group are kept in :attr:`unused_dims`.
    """

    def __init__(self, robot: RobotProfile, dim_names: Sequence[str]) -> None:
        self.robot = robot
        self.dim_names: tuple[str, ...] = tuple(dim_names)
        index = {n: i for i, n in enumerate(self.dim_names)}
        if len(index) != len(self.dim_names):
            dupes = sorted({n for n in self.dim_names if self.dim_names.count(n) > 1})
            raise MappingError(f"action dims named twice: {dupes}")
        used: set[str] = set()
        plans: dict[str, _Plan] = {}
        problems: list[str] = []
        for gname, g in robot.groups.items():
            prefix = f"{gname}/"
            if g.controller in JOINT_CONTROLLERS:
                want = list(g.joints)
                present = [d for d in want if d in index]
                if not present:
                    continue
                missing = [d for d in want if d not in index]
                if missing:
                    problems.append(f"group {gname!r} ({g.controller}) is missing dims {missing}")
                    continue
                plans[gname] = _Plan(gname, g.controller, tuple(index[d] for d in want))
                used.update(want)
            elif g.controller == "cartesian_impedance":
                mine = [d for d in self.dim_names if d.startswith(prefix)]
                pose_like = [d for d in mine if d[len(prefix):] in POSE_DIMS + ROTVEC_POSE_DIMS]
                if not pose_like:
                    continue
                rotvec = any(d[len(prefix):] in ("rx", "ry", "rz") for d in mine)
                want = [prefix + d for d in (ROTVEC_POSE_DIMS if rotvec else POSE_DIMS)]
                missing = [d for d in want if d not in index]
                if missing:
                    problems.append(f"group {gname!r} (cartesian_impedance) is missing dims {missing}")
                    continue
                stiff = tuple(index[d] for d in mine if d[len(prefix):].startswith("stiffness"))
                plans[gname] = _Plan(gname, g.controller, tuple(index[d] for d in want), rotvec, stiff)
                used.update(want)
                used.update(d for d in mine if d[len(prefix):].startswith("stiffness"))
            elif g.controller == "gripper":
                for cand in (f"{gname}/gripper", g.joints[0]):
                    if cand in index:
                        plans[gname] = _Plan(gname, g.controller, (index[cand],))
                        used.add(cand)
                        break
            else:  # base_twist
                want = [prefix + d for d in TWIST_DIMS]
                present = [d for d in want if d in index]
                if not present:
                    continue
                missing = [d for d in want if d not in index]
                if missing:
                    problems.append(f"group {gname!r} (base_twist) is missing dims {missing}")
                    continue
                plans[gname] = _Plan(gname, g.controller, tuple(index[d] for d in want))
                used.update(want)
        if problems:
            raise MappingError("; ".join(problems))
        self._plans = plans
        self.groups: tuple[str, ...] = tuple(plans)
        self.unused_dims: tuple[str, ...] = tuple(d for d in self.dim_names if d not in used)

    def group_columns(self, group: str) -> tuple[int, ...]:
        """Column indices of a driven group's values, in command order.

        Raises:
            MappingError: The layout does not drive ``group``.
        """
        if group not in self._plans:
            raise MappingError(f"the action layout does not drive group {group!r} (drives {list(self.groups)})")
        return self._plans[group].columns

    def stiffness_columns(self, group: str) -> tuple[int, ...]:
        """Column indices of a driven Cartesian group's ``stiffness…`` dims (empty: none)."""
        self.group_columns(group)  # raises for a group the layout does not drive
        return self._plans[group].stiffness_columns

    def group_values(self, chunk: np.ndarray, group: str) -> np.ndarray:
        """``(H, A)`` chunk → ``(H, k)`` values of one group, in command order."""
        return np.asarray(chunk, dtype=np.float64)[:, list(self.group_columns(group))]

    def command(self, group: str, row: np.ndarray | Sequence[float]) -> GroupCommand:
        """One ``(A,)`` sample → the command for one driven group."""
        plan = self._plans.get(group)
        if plan is None:
            raise MappingError(f"the action layout does not drive group {group!r} (drives {list(self.groups)})")
        row = np.asarray(row, dtype=np.float64).reshape(-1)
        if row.shape[0] != len(self.dim_names):
            raise MappingError(f"sample has {row.shape[0]} values, layout has {len(self.dim_names)} dims")
        g = self.robot.groups[group]
        vals = row[list(plan.columns)]
        if plan.controller in JOINT_CONTROLLERS:
            kind = "velocity" if plan.controller == "forward_velocity" else "position"
            return JointCommand(group, tuple(g.joints), vals, kind)
        if plan.controller == "cartesian_impedance":
            quat = rotvec_to_quaternion(vals[3:6]) if plan.rotvec else vals[3:7]
            stiff = row[list(plan.stiffness_columns)] if plan.stiffness_columns else None
            return PoseCommand(group, g.frame_id, vals[:3], quat, stiff)
        if plan.controller == "gripper":
            return GripperCommand(group, float(vals[0]))
        return TwistCommand(group, float(vals[0]), float(vals[1]), float(vals[2]))

    def commands(self, row: np.ndarray | Sequence[float]) -> dict[str, GroupCommand]:
        """One ``(A,)`` sample → a command for every group the layout drives."""
        return {g: self.command(g, row) for g in self.groups}


def map_action(robot: RobotProfile, sample: Mapping[str, float]) -> dict[str, GroupCommand]:
    """Map one named sample (dim name → value) onto per-group commands.

    Raises:
        MappingError: A group is named only in part; the message lists the missing dims.
    """
    names = list(sample)
    mapper = CommandMapper(robot, names)
    return mapper.commands(np.array([sample[n] for n in names], dtype=np.float64))


def hold_commands(
    robot: RobotProfile,
    joint_positions: Mapping[str, float],
    ee_poses: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, GroupCommand]:
    """Commands that keep each group where it is measured to be.

    Joint groups hold their measured positions (velocity groups command zero), Cartesian groups
    hold the measured end-effector pose, a gripper holds its measured opening and a base stops.

    Args:
        robot: The robot profile.
        joint_positions: Measured joint name → position.
        ee_poses: Measured group → (position (3,), quaternion xyzw) of Cartesian groups.
        groups: Which groups (default: all).

    Raises:
        MappingError: A needed measurement is missing (named in the message).
    """
    out: dict[str, GroupCommand] = {}
    missing: list[str] = []
    for gname in (robot.groups if groups is None else groups):
        g = robot.groups[gname]
        if g.controller == "forward_velocity":
            out[gname] = JointCommand(gname, tuple(g.joints), np.zeros(len(g.joints)), "velocity")
        elif g.controller in JOINT_CONTROLLERS:
            lacking = [j for j in g.joints if j not in joint_positions]
            if lacking:
                missing.append(f"group {gname!r}: no measured position for {lacking}")
                continue
            out[gname] = JointCommand(gname, tuple(g.joints), np.array([joint_positions[j] for j in g.joints]))
        elif g.controller == "cartesian_impedance":
            pose = None if ee_poses is None else ee_poses.get(gname)
            if pose is None:
                missing.append(f"group {gname!r}: no measured end-effector pose (/ee_pose)")
                continue
            out[gname] = PoseCommand(gname, g.frame_id, np.asarray(pose[0], dtype=np.float64).reshape(3),
                                     np.asarray(pose[1], dtype=np.float64).reshape(4))
        elif g.controller == "gripper":
            j = g.joints[0]
            if j not in joint_positions:
                missing.append(f"group {gname!r}: no measured position for {[j]}")
                continue
            out[gname] = GripperCommand(gname, float(joint_positions[j]))
        else:
            out[gname] = TwistCommand(gname, 0.0, 0.0, 0.0)
    if missing:
        raise MappingError("; ".join(missing))
    return out
