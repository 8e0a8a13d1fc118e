"""Serial-arm kinematics in pure numpy: forward kinematics, geometric Jacobian, damped least squares.

The controller bridge has no simulator and no URDF parser, yet a servo-style Cartesian teleop
command (a twist of the end effector) must become joint motion for a ``joint_trajectory`` (or
any joint-space) group. This module holds the small amount of kinematics that takes: a chain of
modified (Craig) Denavit–Hartenberg links, its forward kinematics and geometric Jacobian, and the
damped-least-squares step ``dq = Jᵀ (J Jᵀ + λ² I)⁻¹ v`` that stays bounded near singularities.

Models are looked up by robot name (:func:`kinematics_for`); a robot without a model here is
still teleoperable in joint space (joint-jog commands) or through a Cartesian controller group.
Shipped: the Franka Emika Panda / FR3 (Franka's published DH parameters, tool = the flange turned
-45° about z, i.e. the hand's mounting frame; the sim's ``panda_hand`` body is that frame to 0.5 mm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_runtime.core.rotation import rotation_error, rotvec_to_matrix


@dataclass(frozen=True)
class DHLink:
    """One revolute joint in modified DH convention (``a``, ``d`` in m, ``alpha`` in rad).

    The link transform is ``RotX(alpha) · TransX(a) · RotZ(q + offset) · TransZ(d)``.
    """

    a: float
    d: float
    alpha: float
    offset: float = 0.0


def _link_transform(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    ca, sa = math.cos(alpha), math.sin(alpha)
    ct, st = math.cos(theta), math.sin(theta)
    return np.array([
        [ct, -st, 0.0, a],
        [st * ca, ct * ca, -sa, -d * sa],
        [st * sa, ct * sa, ca, d * ca],
        [0.0, 0.0, 0.0, 1.0],
    ])


@dataclass(frozen=True)
class SerialChain:
    """A revolute serial chain with a fixed tool transform.

    Attributes:
        name: Model name (for messages).
        joints: The chain's joint names, base to tip (the order of every ``q``).
        links: One :class:`DHLink` per joint.
        tool: 4×4 transform from the last link frame to the end-effector frame.
    """

    name: str
    joints: tuple[str, ...]
    links: tuple[DHLink, ...]
    tool: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        if len(self.joints) != len(self.links):
            raise ValueError(f"{self.name}: {len(self.joints)} joint names for {len(self.links)} links")

    @property
    def dof(self) -> int:
        """Number of joints."""
        return len(self.links)

    def _frames(self, q: Sequence[float]) -> list[np.ndarray]:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.dof:
            raise ValueError(f"{self.name}: expected {self.dof} joint values, got {q.shape[0]}")
        t = np.eye(4)
        out = []
        for link, qi in zip(self.links, q):
            t = t @ _link_transform(link.a, link.d, link.alpha, qi + link.offset)
            out.append(t)
        return out

    def forward(self, q: Sequence[float]) -> np.ndarray:
        """End-effector pose as a 4×4 homogeneous transform in the base frame."""
        return self._frames(q)[-1] @ self.tool

    def jacobian(self, q: Sequence[float]) -> np.ndarray:
        """Geometric Jacobian (6×n): rows ``[v; ω]`` of the end effector in the base frame."""
        frames = self._frames(q)
        p_ee = (frames[-1] @ self.tool)[:3, 3]
        jac = np.empty((6, self.dof))
        for i, f in enumerate(frames):
            z, p = f[:3, 2], f[:3, 3]  # modified DH: joint i turns about z of its own frame
            jac[:3, i] = np.cross(z, p_ee - p)
            jac[3:, i] = z
        return jac


def dls_step(jacobian: np.ndarray, twist: Sequence[float], damping: float = 0.05) -> np.ndarray:
    """Joint velocities that realise ``twist`` (6,) in the least-squares sense, damped.

    ``dq = Jᵀ (J Jᵀ + λ² I)⁻¹ v``: exact far from singularities, bounded near them (the damping
    trades tracking accuracy for small joint speeds there).
    """
    j = np.asarray(jacobian, dtype=np.float64)
    v = np.asarray(twist, dtype=np.float64).reshape(6)
    jjt = j @ j.T + (damping * damping) * np.eye(6)
    return j.T @ np.linalg.solve(jjt, v)


def pose_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """6-vector ``[Δp; Δθ]`` from pose ``current`` to ``target`` (4×4, base frame; rotation vector)."""
    return np.concatenate([target[:3, 3] - current[:3, 3], rotation_error(current[:3, :3], target[:3, :3])])


def _panda() -> SerialChain:
    h = math.pi / 2
    links = (
        DHLink(0.0, 0.333, 0.0),
        DHLink(0.0, 0.0, -h),
        DHLink(0.0, 0.316, h),
        DHLink(0.0825, 0.0, h),
        DHLink(-0.0825, 0.384, -h),
        DHLink(0.0, 0.0, h),
        DHLink(0.088, 0.0, h),
    )
    # Flange: 0.107 m along z of link 7; the hand is mounted turned -45° about z.
    tool = np.eye(4)
    tool[:3, :3] = rotvec_to_matrix([0.0, 0.0, -math.pi / 4])
    tool[2, 3] = 0.107
    return SerialChain("panda", tuple(f"panda_joint{i}" for i in range(1, 8)), links, tool)


#: Robot name → chain factory. FR3 shares the Panda's kinematics.
_MODELS = {"panda": _panda, "fr3": _panda, "franka_fr3": _panda, "franka": _panda}


def kinematics_for(robot_name: str, joints: Sequence[str] | None = None) -> SerialChain | None:
    """The kinematic model of a robot, or None when none is shipped.

    Args:
        robot_name: ``robot.name`` of the profile (case-insensitive).
        joints: The group's joints; when given they must be the model's joints in number, and the
            returned chain carries these names (a profile may name the joints differently, e.g.
            ``fr3_joint1``).
    """
    factory = _MODELS.get(robot_name.lower())
    if factory is None:
        return None
    chain = factory()
    if joints is not None:
        joints = tuple(joints)
        if len(joints) != chain.dof:
            return None
        chain = SerialChain(chain.name, joints, chain.links, chain.tool)
    return chain
