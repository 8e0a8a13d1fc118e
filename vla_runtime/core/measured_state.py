"""MeasuredState: the robot state the fast path reads every tick, as one array.

The fast model's proprio input and the current state that delta actions are relative to are
named values: joint positions (``panda_joint1``), a gripper dim measured by a joint
(``gripper/gripper`` → ``panda_finger_joint1``) and, for Cartesian groups, the measured hand pose
(``arm/x`` … ``arm/qw``). Messages bring them in their own order and subsets (one JointState for the
arm, another for the gripper, a PoseStamped).

Looking each name up in a dict every tick is a Python loop per tick; here each message layout is
mapped once to index arrays (cached per joint-name tuple), an update is one scatter, and a reader
takes any ordered subset with one gather (:meth:`index`, then ``values[idx]``).

Pure and not thread-safe: the caller serialises updates and reads (the node's state lock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vla_runtime.core.config import RobotProfile

__all__ = ["MeasuredState", "POSE_KEYS", "robot_aliases"]

#: The pose fields a Cartesian group's measured state has, in PoseStamped order.
POSE_KEYS = ("x", "y", "z", "qx", "qy", "qz", "qw")


def robot_aliases(robot: RobotProfile) -> tuple[dict[str, str], dict[str, str]]:
    """What measures the non-joint names of a robot's action and proprio layouts.

    A gripper group's ``<group>/gripper`` is measured by the group's first joint; a Cartesian
    (``cartesian_impedance``) group's ``<group>/x`` … ``<group>/qw`` by the measured hand pose.

    Returns:
        ``(joint_aliases, pose_keys)``, the keyword arguments of :class:`MeasuredState`.
    """
    aliases = {f"{g}/gripper": grp.joints[0] for g, grp in robot.groups.items()
               if grp.controller == "gripper" and grp.joints}
    pose_keys = {f"{g}/{k}": k for g, grp in robot.groups.items() if grp.controller == "cartesian_impedance"
                 for k in POSE_KEYS}
    return aliases, pose_keys


class MeasuredState:
    """The newest measured value of every needed name.

    Args:
        names: The names readers will ask for (each once).
        joint_aliases: name → joint that measures it (``<group>/gripper`` → its joint). A name that
            is neither an alias nor a pose key is the joint of that name.
        pose_keys: name → pose field (one of :data:`POSE_KEYS`) for Cartesian groups.

    Raises:
        ValueError: A name is listed twice, or a pose field is not one of :data:`POSE_KEYS`.
    """

    def __init__(self, names: Sequence[str], joint_aliases: Mapping[str, str] | None = None,
                 pose_keys: Mapping[str, str] | None = None) -> None:
        self.names = tuple(names)
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"names listed twice: {dup}")
        joint_aliases = dict(joint_aliases or {})
        pose_keys = {n: k for n, k in (pose_keys or {}).items() if n in self.names}
        bad = {n: k for n, k in pose_keys.items() if k not in POSE_KEYS}
        if bad:
            raise ValueError(f"pose fields must be among {POSE_KEYS}, got {bad}")
        n = len(self.names)
        #: Values in ``names`` order, then one slot that is always 0.0 (see :meth:`index`).
        self.values = np.full(n + 1, np.nan)
        self.values[n] = 0.0
        self._seen = np.zeros(n, dtype=bool)
        self._complete = n == 0
        # joint name → the slots it fills (a joint can measure several names, e.g. itself and an alias)
        self._joint_slots: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            if name in pose_keys:
                continue
            self._joint_slots.setdefault(joint_aliases.get(name, name), []).append(i)
        self._pose_dst = np.array([i for i, nm in enumerate(self.names) if nm in pose_keys], dtype=np.intp)
        self._pose_src = np.array([POSE_KEYS.index(pose_keys[nm]) for nm in self.names if nm in pose_keys],
                                  dtype=np.intp)
        self._maps: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._last_names: tuple[str, ...] | None = None
        self._last_map: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.intp), np.zeros(0, np.intp))

    @classmethod
    def for_robot(cls, names: Sequence[str], robot: RobotProfile) -> MeasuredState:
        """The measured state of ``names`` on ``robot`` (aliases from its groups, :func:`robot_aliases`)."""
        aliases, pose_keys = robot_aliases(robot)
        return cls(names, joint_aliases=aliases, pose_keys=pose_keys)

    @property
    def needs_pose(self) -> bool:
        """Some name is a field of the measured hand pose (:meth:`update_pose` must be fed)."""
        return bool(self._pose_dst.size)

    @property
    def complete(self) -> bool:
        """Every name has been measured at least once."""
        return self._complete

    def missing(self) -> list[str]:
        """Names never measured so far."""
        return [n for n, s in zip(self.names, self._seen) if not s]

    def index(self, names: Sequence[str | None]) -> np.ndarray:
        """Slots of ``names`` in :attr:`values`; ``None`` gives the constant-0.0 slot.

        Raises:
            KeyError: A name this state does not hold.
        """
        pos = {n: i for i, n in enumerate(self.names)}
        try:
            return np.array([len(self.names) if n is None else pos[n] for n in names], dtype=np.intp)
        except KeyError as e:
            raise KeyError(f"measured state does not hold {e.args[0]!r}; it holds {list(self.names)}") from None

    def _map(self, joint_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        if joint_names is self._last_names:
            return self._last_map
        m = self._maps.get(joint_names)
        if m is None:
            dst, src = [], []
            for j, jn in enumerate(joint_names):
                for slot in self._joint_slots.get(jn, ()):
                    dst.append(slot)
                    src.append(j)
            m = self._maps[joint_names] = (np.array(dst, dtype=np.intp), np.array(src, dtype=np.intp))
            if len(self._maps) > 64:  # a publisher cycling through layouts: keep the newest only
                self._maps = {joint_names: m}
        self._last_names, self._last_map = joint_names, m
        return m

    def update_joints(self, joint_names: tuple[str, ...], positions: np.ndarray) -> None:
        """Take a joint-state message's positions (``positions[i]`` measures ``joint_names[i]``).

        Joints no name needs are ignored. Pass the same tuple object for the same layout: its map
        is then found without hashing.
        """
        dst, src = self._map(joint_names)
        if dst.size:
            self.values[dst] = positions[src]
            if not self._complete:
                self._seen[dst] = True
                self._complete = bool(self._seen.all())

    def update_pose(self, pose: Sequence[float]) -> None:
        """Take the measured hand pose, in :data:`POSE_KEYS` order."""
        if self._pose_dst.size:
            self.values[self._pose_dst] = np.asarray(pose, dtype=np.float64)[self._pose_src]
            if not self._complete:
                self._seen[self._pose_dst] = True
                self._complete = bool(self._seen.all())
