"""Rotations in one convention, pure numpy: quaternions, rotation vectors, matrices, transforms.

Convention (the only one in the runtime):

* A quaternion is ``(x, y, z, w)`` — the order of ``geometry_msgs/Quaternion``, scalar last. It
  is a unit quaternion (functions that take one normalise it first or say that they expect one);
  ``q`` and ``-q`` are the same rotation.
* Rotations are active, composed with the Hamilton product: ``quaternion_multiply(a, b)`` rotates by
  ``b`` first, then by ``a`` (the quaternion of ``R_a @ R_b``).
* A rotation vector is ``axis * angle`` (rad); converted back from a quaternion its angle is in
  ``[0, π]`` (the shorter way round).
* MuJoCo orders quaternions ``(w, x, y, z)``. That order exists only at the simulator boundary —
  a ``qpos`` slice, an ``MjSpec`` body or camera, a ``mju_*`` call — and crosses it through
  :func:`to_mujoco_wxyz` and :func:`from_mujoco_wxyz`, nowhere else.

Functions that say so broadcast over leading dimensions (``(..., 4)`` quaternions, ``(..., 3)``
rotation vectors); the others take one rotation. Normalisation refuses a zero-norm or non-finite
quaternion with a :class:`ValueError` naming it (:func:`normalize_quaternion`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "IDENTITY_QUATERNION",
    "MIN_QUATERNION_NORM",
    "from_mujoco_wxyz",
    "homogeneous",
    "matrix_to_quaternion",
    "matrix_to_rotvec",
    "normalize_quaternion",
    "quaternion_angle",
    "quaternion_conjugate",
    "quaternion_multiply",
    "quaternion_slerp",
    "quaternion_to_matrix",
    "quaternion_to_rotvec",
    "rotation_error",
    "rotvec_to_matrix",
    "rotvec_to_quaternion",
    "to_mujoco_wxyz",
]

#: The identity rotation, ``(x, y, z, w)``.
IDENTITY_QUATERNION = np.array([0.0, 0.0, 0.0, 1.0])
#: A quaternion shorter than this has no direction to normalise to.
MIN_QUATERNION_NORM = 1e-6

_SMALL_ANGLE = 1e-8  # below this, sin(a/2)/a uses its Taylor expansion
_SMALL_SIN = 1e-12  # below this |sin(a/2)|, angle/sin(a/2) is taken as its limit 2


def _as_quaternion(q: ArrayLike) -> np.ndarray:
    a = np.asarray(q, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != 4:
        raise ValueError(f"a quaternion has 4 values (x, y, z, w), got shape {a.shape}")
    return a


def normalize_quaternion(q: ArrayLike, *, degenerate_to_identity: bool = False) -> np.ndarray:
    """Unit quaternion(s) ``(..., 4)`` of ``q`` (broadcasts).

    Args:
        q: Quaternion(s) ``(x, y, z, w)``, any non-zero length.
        degenerate_to_identity: Map a quaternion that cannot be normalised (norm below
            :data:`MIN_QUATERNION_NORM`, or not finite) to the identity instead of raising — for decoded
            model outputs, where a degenerate row means "no rotation".

    Raises:
        ValueError: Wrong last dimension, or (without ``degenerate_to_identity``) a quaternion whose
            norm is below :data:`MIN_QUATERNION_NORM` or not finite; the message names it.
    """
    a = _as_quaternion(q)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    ok = np.isfinite(n) & (n >= MIN_QUATERNION_NORM)
    if np.all(ok):
        return a / n
    if not degenerate_to_identity:
        bad = np.argwhere(~ok[..., 0])[0] if a.ndim > 1 else ()
        where = f" at index {tuple(int(i) for i in bad)}" if a.ndim > 1 else ""
        raise ValueError(f"quaternion (x, y, z, w) must be finite with norm ≥ {MIN_QUATERNION_NORM:g}, "
                         f"got {a[tuple(bad)].tolist()}{where}")
    return np.where(ok, a / np.where(ok, n, 1.0), IDENTITY_QUATERNION)


def quaternion_multiply(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Hamilton product ``a ⊗ b`` (broadcasts): the rotation ``b`` followed by ``a``."""
    ax, ay, az, aw = np.moveaxis(_as_quaternion(a), -1, 0)
    bx, by, bz, bw = np.moveaxis(_as_quaternion(b), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quaternion_conjugate(q: ArrayLike) -> np.ndarray:
    """Conjugate ``(-x, -y, -z, w)`` (broadcasts); for a unit quaternion, its inverse."""
    return _as_quaternion(q) * np.array([-1.0, -1.0, -1.0, 1.0])


def rotvec_to_quaternion(rv: ArrayLike) -> np.ndarray:
    """Rotation vector(s) ``(..., 3)`` → unit quaternion(s) ``(..., 4)`` (broadcasts).

    Exact to machine precision at any angle, including tiny ones (``sin(a/2)/a`` by its Taylor
    series below 1e-8 rad). A non-finite input gives a non-finite quaternion, which every
    consumer's finiteness check then refuses.
    """
    v = np.asarray(rv, dtype=np.float64)
    if v.ndim == 0 or v.shape[-1] != 3:
        raise ValueError(f"a rotation vector has 3 values, got shape {v.shape}")
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = angle / 2.0
    with np.errstate(invalid="ignore"):  # sin/cos of inf: NaN, as documented, without a warning
        k = np.where(angle > _SMALL_ANGLE, np.sin(half) / np.maximum(angle, 1e-300), 0.5 - angle**2 / 48.0)
        return np.concatenate([v * k, np.cos(half)], axis=-1)


def quaternion_to_rotvec(q: ArrayLike) -> np.ndarray:
    """Quaternion(s) ``(..., 4)`` → rotation vector(s) ``(..., 3)``, angle in ``[0, π]`` (broadcasts).

    ``q`` and ``-q`` give the same vector (except at exactly π, where ``±axis·π`` are the same
    rotation and the sign follows the input).

    Raises:
        ValueError: A quaternion that cannot be normalised (see :func:`normalize_quaternion`).
    """
    u = normalize_quaternion(q)
    u = np.where(u[..., 3:4] < 0, -u, u)
    v = u[..., :3]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, u[..., 3:4])
    return v * np.where(s > _SMALL_SIN, angle / np.maximum(s, 1e-300), 2.0)


def quaternion_to_matrix(q: ArrayLike) -> np.ndarray:
    """Quaternion(s) ``(..., 4)`` → rotation matrix(-ces) ``(..., 3, 3)``, normalised first (broadcasts).

    Raises:
        ValueError: A quaternion that cannot be normalised (see :func:`normalize_quaternion`).
    """
    return _unit_quaternion_to_matrix(normalize_quaternion(q))


def _unit_quaternion_to_matrix(u: np.ndarray) -> np.ndarray:
    x, y, z, w = np.moveaxis(u, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_quaternion(r: ArrayLike) -> np.ndarray:
    """3×3 rotation matrix → unit quaternion ``(x, y, z, w)`` with ``w ≥ 0``.

    Shepperd's method (divides by the largest of the four candidates), accurate at every angle,
    180° included.

    Raises:
        ValueError: ``r`` is not 3×3 or not finite.
    """
    m = np.asarray(r, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"rotation matrix must be a finite 3x3 array, got {m.tolist()}")
    tr = float(np.trace(m))
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rotvec_to_matrix(rv: ArrayLike) -> np.ndarray:
    """Rotation vector(s) ``(..., 3)`` → rotation matrix(-ces) ``(..., 3, 3)`` (broadcasts).

    A non-finite input gives a non-finite matrix (like :func:`rotvec_to_quaternion`).
    """
    return _unit_quaternion_to_matrix(rotvec_to_quaternion(rv))


def matrix_to_rotvec(r: ArrayLike) -> np.ndarray:
    """3×3 rotation matrix → rotation vector (axis · angle, angle in ``[0, π]``)."""
    return quaternion_to_rotvec(matrix_to_quaternion(r))


def rotation_error(current: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Rotation vector that turns ``current`` into ``target`` (both 3×3), in the frame both are in.

    ``rotation_error(R, R_d)`` is the rotation vector of ``R_d · Rᵀ``: the orientation error a
    Cartesian controller or a differential-IK step drives to zero (``ω ∝ error``), angle in ``[0, π]``.
    """
    return matrix_to_rotvec(np.asarray(target, dtype=np.float64) @ np.asarray(current, dtype=np.float64).T)


def quaternion_angle(a: ArrayLike, b: ArrayLike) -> float:
    """Angle (rad, ``[0, π]``) of the rotation between unit quaternions ``a`` and ``b``."""
    d = quaternion_multiply(quaternion_conjugate(a), b)
    return float(2.0 * np.arctan2(np.linalg.norm(d[:3]), abs(float(d[3]))))


def quaternion_slerp(a: ArrayLike, b: ArrayLike, fraction: float) -> np.ndarray:
    """Spherical interpolation from unit quaternion ``a`` (0) to ``b`` (1), the shorter way round.

    The result lies in ``a``'s hemisphere (``b`` is flipped to ``-b`` when their dot product is
    negative); nearly parallel inputs interpolate linearly and renormalise.
    """
    q0, q1 = _as_quaternion(a), _as_quaternion(b)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = float(np.arccos(min(dot, 1.0)))
    return (np.sin((1.0 - fraction) * theta) * q0 + np.sin(fraction * theta) * q1) / np.sin(theta)


def homogeneous(position: Sequence[float] | np.ndarray, quaternion: Sequence[float] | np.ndarray) -> np.ndarray:
    """Position (3,) + quaternion ``(x, y, z, w)`` → 4×4 homogeneous transform.

    Raises:
        ValueError: A quaternion that cannot be normalised (see :func:`normalize_quaternion`).
    """
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(quaternion)
    t[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    return t


def to_mujoco_wxyz(q: ArrayLike) -> np.ndarray:
    """``(x, y, z, w)`` → MuJoCo's ``(w, x, y, z)`` (broadcasts; values unchanged, not normalised)."""
    return np.roll(_as_quaternion(q), 1, axis=-1)


def from_mujoco_wxyz(q: ArrayLike) -> np.ndarray:
    """MuJoCo's ``(w, x, y, z)`` → ``(x, y, z, w)`` (broadcasts; values unchanged, not normalised)."""
    return np.roll(_as_quaternion(q), -1, axis=-1)
