"""Manufacturer ceilings of the robots the runtime ships profiles for, and generic physical bounds.

A config's joint limits are what the runtime enforces; they may be tighter than the robot's
datasheet, never looser. :func:`limit_problems` checks a profile against the datasheet of a known
robot (by ``robot.name``) and, for every robot, against bounds no real manipulator joint exceeds,
so a typo (or a hostile edit) such as ``velocity: 1e9`` is refused by ``vla-runtime check``
instead of disabling the safety filter's limits.

Values: Franka Emika Panda (FER) and Franka Research 3 datasheets / libfranka's limits; Universal
Robots UR5e datasheet (±360° joint ranges, 180°/s, base/shoulder/elbow 150 N·m, wrists 28 N·m);
Fourier GR-1 as modelled by robosuite's GR1 (the assets the simulator loads). Accelerations are
the limits the manufacturers' motion generators use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class JointCeiling:
    """The most a joint may be given: position range and |velocity|, |acceleration|, |effort|."""

    position: tuple[float, float]
    velocity: float
    acceleration: float
    effort: float


def _same(names: Iterable[str], ceiling: JointCeiling) -> dict[str, JointCeiling]:
    return {n: ceiling for n in names}


_PI = math.pi
_PANDA = {
    "panda_joint1": JointCeiling((-2.8973, 2.8973), 2.1750, 15.0, 87.0),
    "panda_joint2": JointCeiling((-1.7628, 1.7628), 2.1750, 7.5, 87.0),
    "panda_joint3": JointCeiling((-2.8973, 2.8973), 2.1750, 10.0, 87.0),
    "panda_joint4": JointCeiling((-3.0718, -0.0698), 2.1750, 12.5, 87.0),
    "panda_joint5": JointCeiling((-2.8973, 2.8973), 2.6100, 15.0, 12.0),
    "panda_joint6": JointCeiling((-0.0175, 3.7525), 2.6100, 20.0, 12.0),
    "panda_joint7": JointCeiling((-2.8973, 2.8973), 2.6100, 20.0, 12.0),
    # The simulated hand's finger (robosuite's PandaGripper) moves at up to 0.1 m/s; the real
    # Franka Hand's 0.05 m/s is in the FR3 profile.
    "panda_finger_joint1": JointCeiling((0.0, 0.04), 0.1, 1.0, 70.0),
}
_FR3 = {
    "fr3_joint1": JointCeiling((-2.7437, 2.7437), 2.62, 10.0, 87.0),
    "fr3_joint2": JointCeiling((-1.7837, 1.7837), 2.62, 10.0, 87.0),
    "fr3_joint3": JointCeiling((-2.9007, 2.9007), 2.62, 10.0, 87.0),
    "fr3_joint4": JointCeiling((-3.0421, -0.1518), 2.62, 10.0, 87.0),
    "fr3_joint5": JointCeiling((-2.8065, 2.8065), 5.26, 10.0, 12.0),
    "fr3_joint6": JointCeiling((0.5445, 4.5169), 4.18, 10.0, 12.0),
    "fr3_joint7": JointCeiling((-3.0159, 3.0159), 5.26, 10.0, 12.0),
    "fr3_finger_joint1": JointCeiling((0.0, 0.04), 0.05, 1.0, 70.0),
}
_UR5E = {
    **_same(("shoulder_pan_joint", "shoulder_lift_joint"), JointCeiling((-2 * _PI, 2 * _PI), _PI, 8.0, 150.0)),
    "elbow_joint": JointCeiling((-_PI, _PI), _PI, 8.0, 150.0),
    **_same(("wrist_1_joint", "wrist_2_joint", "wrist_3_joint"), JointCeiling((-2 * _PI, 2 * _PI), _PI, 8.0, 28.0)),
}
_GR1_FINGERS = [f"{s}_{f}_joint" for s in "LR" for f in (
    "thumb_proximal_yaw", "thumb_proximal_pitch", "index_proximal", "middle_proximal", "ring_proximal",
    "pinky_proximal")]
_GR1 = {
    "torso_waist_yaw": JointCeiling((-1.05, 1.05), 2.0, 10.0, 95.0),
    "torso_waist_pitch": JointCeiling((-0.52, 1.22), 2.0, 10.0, 95.0),
    "torso_waist_roll": JointCeiling((-0.7, 0.7), 2.0, 10.0, 95.0),
    "head_yaw": JointCeiling((-1.5708, 1.5708), 3.14, 10.0, 10.0),
    "head_roll": JointCeiling((-0.2618, 0.2618), 3.14, 10.0, 10.0),
    "head_pitch": JointCeiling((-0.2618, 0.2618), 3.14, 10.0, 10.0),
    **{f"{s}_{j}": JointCeiling((-3.0, 3.0), 3.14, 10.0, 95.0) for s in "lr"
       for j in ("shoulder_pitch", "shoulder_roll", "shoulder_yaw")},
    **{f"{s}_elbow_pitch": JointCeiling((-3.0, 0.0), 3.14, 10.0, 42.0) for s in "lr"},
    **{f"{s}_wrist_{j}": JointCeiling((-3.0, 3.0), 3.14, 10.0, 19.0) for s in "lr" for j in ("yaw", "roll", "pitch")},
    **_same(_GR1_FINGERS, JointCeiling((0.0, 1.74), 3.0, 10.0, 10.0)),
}

#: Robot name (``robot.name`` in a config) → joint name → its datasheet ceiling.
DATASHEETS: dict[str, dict[str, JointCeiling]] = {"panda": _PANDA, "fr3": _FR3, "ur5e": _UR5E, "gr1": _GR1}

#: Bounds for any robot, known or not: no manipulator or humanoid joint moves faster, accelerates
#: harder, pushes harder or turns further than this. Position in rad (or m), the rest per second.
GENERIC = JointCeiling((-4 * _PI, 4 * _PI), 20.0, 500.0, 5000.0)
#: Slack for rounding in a config's copy of a datasheet value.
TOLERANCE = 1e-3


def limit_problems(robot_name: str, joints: Iterable) -> list[str]:
    """Joints whose limits exceed their datasheet (known robots) or the generic bounds (every robot).

    Args:
        robot_name: ``robot.name`` of the profile.
        joints: Objects with ``name``, ``position`` (lo, hi), ``velocity``, ``acceleration``,
            ``effort`` (the config's ``JointSpec``).

    Returns:
        One line per exceeded limit, naming the joint, the value and the ceiling.
    """
    sheet = DATASHEETS.get(robot_name, {})
    problems = []
    for j in joints:
        for source, c in (("datasheet of " + repr(robot_name), sheet.get(j.name)), ("physical bound", GENERIC)):
            if c is None:
                continue
            lo, hi = j.position
            if lo < c.position[0] - TOLERANCE or hi > c.position[1] + TOLERANCE:
                problems.append(f"robot.joints.{j.name}.position = [{lo}, {hi}] exceeds the {source} "
                                f"[{c.position[0]}, {c.position[1]}]")
            for field in ("velocity", "acceleration", "effort"):
                v, cap = getattr(j, field), getattr(c, field)
                if v > cap * (1 + TOLERANCE):
                    problems.append(f"robot.joints.{j.name}.{field} = {v} exceeds the {source} ({cap})")
            if sheet.get(j.name) is not None:
                break  # a known joint is judged by its datasheet, which is tighter than the generic bounds
    return problems
