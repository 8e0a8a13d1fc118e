"""core/rotation against MuJoCo's own conversions, on random rotations and on the edge cases."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from vla_runtime.core.kinematics import pose_error
from vla_runtime.core.rotation import (
    IDENTITY_QUATERNION,
    from_mujoco_wxyz,
    homogeneous,
    matrix_to_quaternion,
    matrix_to_rotvec,
    normalize_quaternion,
    quaternion_angle,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_slerp,
    quaternion_to_matrix,
    quaternion_to_rotvec,
    rotation_error,
    rotvec_to_matrix,
    rotvec_to_quaternion,
    to_mujoco_wxyz,
)

N = 200


def random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random unit quaternions (x, y, z, w), both signs of w."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def mj_mat(q_xyzw: np.ndarray) -> np.ndarray:
    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, to_mujoco_wxyz(q_xyzw))
    return r.reshape(3, 3)


def mj_quat(r: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r).reshape(9))
    return from_mujoco_wxyz(q)


def same_rotation(a: np.ndarray, b: np.ndarray, atol: float = 1e-12) -> bool:
    """Unit quaternions a and b are the same rotation (a = ±b)."""
    return abs(abs(float(np.dot(a, b))) - 1.0) < atol


# 180° turns about the axes and about axes whose components have mixed signs.
HALF_TURN_AXES = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, -1, 0), (0, 1, -1), (-1, 0, 1), (1, -2, 3), (-1, -1, 1)]


def half_turn(axis) -> tuple[np.ndarray, np.ndarray]:
    """(unit axis, quaternion) of a 180° rotation."""
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    return u, np.array([*u, 0.0])


# -------------------------------------------------------------------------------------- convention
def test_mujoco_order_converters_move_w_and_only_w() -> None:
    q = np.array([0.1, 0.2, 0.3, 0.9])
    np.testing.assert_array_equal(to_mujoco_wxyz(q), [0.9, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(from_mujoco_wxyz(to_mujoco_wxyz(q)), q)
    batch = random_quaternions(5)
    np.testing.assert_array_equal(from_mujoco_wxyz(to_mujoco_wxyz(batch)), batch)
    np.testing.assert_array_equal(to_mujoco_wxyz(batch)[:, 0], batch[:, 3])
    with pytest.raises(ValueError, match="4 values"):
        to_mujoco_wxyz([1.0, 0.0, 0.0])


def test_identity() -> None:
    np.testing.assert_array_equal(quaternion_to_matrix(IDENTITY_QUATERNION), np.eye(3))
    np.testing.assert_array_equal(matrix_to_quaternion(np.eye(3)), IDENTITY_QUATERNION)
    np.testing.assert_array_equal(quaternion_to_rotvec(IDENTITY_QUATERNION), np.zeros(3))
    np.testing.assert_array_equal(rotvec_to_quaternion(np.zeros(3)), IDENTITY_QUATERNION)
    np.testing.assert_array_equal(rotvec_to_matrix(np.zeros(3)), np.eye(3))
    np.testing.assert_array_equal(rotation_error(np.eye(3), np.eye(3)), np.zeros(3))
    assert quaternion_angle(IDENTITY_QUATERNION, IDENTITY_QUATERNION) == 0.0
    np.testing.assert_array_equal(homogeneous([1, 2, 3], IDENTITY_QUATERNION)[:3, :3], np.eye(3))


# -------------------------------------------------------------------------------- normalisation
def test_normalize_scales_to_unit_length_and_broadcasts() -> None:
    np.testing.assert_allclose(normalize_quaternion([0, 0, 2.0, 2.0]), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    q = random_quaternions(10) * np.arange(1, 11)[:, None]
    np.testing.assert_allclose(np.linalg.norm(normalize_quaternion(q), axis=1), 1.0, atol=1e-15)
    for bad in ([0, 0, 0, 0], [math.nan, 0, 0, 1], [0, math.inf, 0, 1], [1e-9, 0, 0, 0]):
        with pytest.raises(ValueError, match=r"quaternion \(x, y, z, w\) must be finite") as e:
            normalize_quaternion(bad)
        assert str([float(v) for v in bad]) in str(e.value)  # names the value
    batch = np.array([[0, 0, 0, 1.0], [0, 0, 0, 0], [1.0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"got \[0.0, 0.0, 0.0, 0.0\] at index \(1,\)"):
        normalize_quaternion(batch)
    np.testing.assert_array_equal(normalize_quaternion(batch, degenerate_to_identity=True),
                                  [[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]])
    nan_row = np.array([[math.nan, 0, 0, 1], [0, 3.0, 0, 0]])
    np.testing.assert_array_equal(normalize_quaternion(nan_row, degenerate_to_identity=True), [[0, 0, 0, 1],
                                                                                                [0, 1, 0, 0]])
    with pytest.raises(ValueError, match="4 values"):
        normalize_quaternion([0.0, 0.0, 1.0])


def test_conversions_refuse_a_quaternion_without_direction() -> None:
    for fn in (quaternion_to_matrix, quaternion_to_rotvec):
        with pytest.raises(ValueError, match=r"got \[0.0, 0.0, 0.0, 0.0\]"):
            fn([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="must be finite"):
        homogeneous([0, 0, 0], [math.nan, 0, 0, 1])
    with pytest.raises(ValueError, match="finite 3x3"):
        matrix_to_quaternion(np.full((3, 3), math.nan))
    with pytest.raises(ValueError, match="finite 3x3"):
        matrix_to_quaternion(np.eye(4))


# ---------------------------------------------------------------------------- against MuJoCo
def test_product_and_conjugate_match_mujoco() -> None:
    a, b = random_quaternions(N, 1), random_quaternions(N, 2)
    ours = quaternion_multiply(a, b)
    for i in range(N):
        res = np.zeros(4)
        mujoco.mju_mulQuat(res, to_mujoco_wxyz(a[i]), to_mujoco_wxyz(b[i]))
        np.testing.assert_allclose(ours[i], from_mujoco_wxyz(res), atol=1e-15)
        mujoco.mju_negQuat(res, to_mujoco_wxyz(a[i]))
        np.testing.assert_allclose(quaternion_conjugate(a[i]), from_mujoco_wxyz(res), atol=0)
    # composition order: a ⊗ b is "b first, then a", i.e. R_a @ R_b
    np.testing.assert_allclose(quaternion_to_matrix(ours), quaternion_to_matrix(a) @ quaternion_to_matrix(b),
                               atol=1e-14)
    np.testing.assert_allclose(quaternion_multiply(a, quaternion_conjugate(a)), np.tile(IDENTITY_QUATERNION, (N, 1)),
                               atol=1e-15)


def test_quaternion_to_matrix_matches_mujoco() -> None:
    q = random_quaternions(N, 3)
    ours = quaternion_to_matrix(q)
    assert ours.shape == (N, 3, 3)
    for i in range(N):
        np.testing.assert_allclose(ours[i], mj_mat(q[i]), atol=1e-15)
        np.testing.assert_allclose(ours[i] @ ours[i].T, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(quaternion_to_matrix(3.0 * q[0]), ours[0], atol=1e-15)  # normalised first


def test_matrix_to_quaternion_matches_mujoco_up_to_sign_and_keeps_w_non_negative() -> None:
    for q in random_quaternions(N, 4):
        r = mj_mat(q)
        ours = matrix_to_quaternion(r)
        assert ours[3] >= 0.0
        assert same_rotation(ours, mj_quat(r)) and same_rotation(ours, q)
        np.testing.assert_allclose(quaternion_to_matrix(ours), r, atol=1e-14)


def test_rotvec_to_quaternion_matches_mujoco_axis_angle() -> None:
    rng = np.random.default_rng(5)
    for _ in range(N):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(-2 * math.pi, 2 * math.pi)
        res = np.zeros(4)
        mujoco.mju_axisAngle2Quat(res, axis, angle)
        np.testing.assert_allclose(rotvec_to_quaternion(axis * angle), from_mujoco_wxyz(res), atol=1e-15)
        np.testing.assert_allclose(rotvec_to_matrix(axis * angle), mj_mat(from_mujoco_wxyz(res)), atol=1e-14)
    rv = rng.normal(size=(7, 3))  # broadcasts
    np.testing.assert_allclose(rotvec_to_quaternion(rv), [rotvec_to_quaternion(v) for v in rv], atol=0)
    np.testing.assert_allclose(rotvec_to_matrix(rv), [rotvec_to_matrix(v) for v in rv], atol=0)


def test_quaternion_to_rotvec_matches_mujoco_quat2vel_for_q_and_minus_q() -> None:
    q = random_quaternions(N, 6)
    ours = quaternion_to_rotvec(q)
    np.testing.assert_allclose(quaternion_to_rotvec(-q), ours, atol=1e-15)  # q and -q: one rotation
    assert np.all(np.linalg.norm(ours, axis=1) <= math.pi + 1e-15)  # the shorter way round
    for i in range(N):
        res = np.zeros(3)
        mujoco.mju_quat2Vel(res, to_mujoco_wxyz(q[i]), 1.0)
        np.testing.assert_allclose(ours[i], res, atol=1e-14)
        np.testing.assert_allclose(rotvec_to_quaternion(ours[i]), q[i] if q[i, 3] >= 0 else -q[i], atol=1e-14)
    np.testing.assert_allclose(matrix_to_rotvec(mj_mat(q[0])), ours[0], atol=1e-14)


def test_rotation_error_matches_mujoco_subquat() -> None:
    """mju_subQuat(qa, qb) is the error in qb's frame; ours is in the common (base) frame."""
    qa, qb = random_quaternions(N, 7), random_quaternions(N, 8)
    for a, b in zip(qa, qb):
        res = np.zeros(3)
        mujoco.mju_subQuat(res, to_mujoco_wxyz(b), to_mujoco_wxyz(a))  # target b, current a
        err = rotation_error(mj_mat(a), mj_mat(b))
        np.testing.assert_allclose(err, mj_mat(a) @ res, atol=1e-13)
        # applying the error to the current orientation reaches the target
        np.testing.assert_allclose(rotvec_to_matrix(err) @ mj_mat(a), mj_mat(b), atol=1e-13)
        assert np.linalg.norm(err) == pytest.approx(quaternion_angle(a, b), abs=1e-13)


# ---------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("axis", HALF_TURN_AXES)
def test_half_turns(axis) -> None:
    u, q = half_turn(axis)
    r = quaternion_to_matrix(q)
    np.testing.assert_allclose(r, mj_mat(q), atol=1e-15)
    np.testing.assert_allclose(r, 2.0 * np.outer(u, u) - np.eye(3), atol=1e-15)
    back = matrix_to_quaternion(r)
    assert same_rotation(back, q) and same_rotation(back, mj_quat(r))
    rv = matrix_to_rotvec(r)
    assert np.linalg.norm(rv) == pytest.approx(math.pi, abs=1e-12)
    assert abs(float(np.dot(rv / math.pi, u))) == pytest.approx(1.0, abs=1e-12)  # ±axis: both the same turn
    np.testing.assert_allclose(rotvec_to_matrix(rv), r, atol=1e-14)
    # a half turn as an error: pose_error's rotation part really turns current into target
    cur = homogeneous([0.1, 0.2, 0.3], random_quaternions(1, 9)[0])
    tgt = cur.copy()
    tgt[:3, :3] = r @ cur[:3, :3]
    e = pose_error(cur, tgt)
    np.testing.assert_allclose(e[:3], 0.0, atol=0)
    np.testing.assert_allclose(rotvec_to_matrix(e[3:]) @ cur[:3, :3], tgt[:3, :3], atol=1e-12)
    assert quaternion_angle(IDENTITY_QUATERNION, q) == pytest.approx(math.pi, abs=1e-15)


@pytest.mark.parametrize("angle", [1e-300, 1e-15, 1e-10, 1e-8, 1.0000001e-8, 1e-6, 1e-4])
def test_tiny_angles_are_exact(angle: float) -> None:
    axis = np.array([2.0, -3.0, 6.0]) / 7.0
    rv = axis * angle
    q = rotvec_to_quaternion(rv)
    np.testing.assert_allclose(q, [*(axis * math.sin(angle / 2)), math.cos(angle / 2)], rtol=1e-15, atol=0)
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-16)
    np.testing.assert_allclose(quaternion_to_rotvec(q), rv, rtol=1e-12, atol=0)
    np.testing.assert_allclose(quaternion_to_rotvec(-q), rv, rtol=1e-12, atol=0)
    res = np.zeros(4)
    mujoco.mju_axisAngle2Quat(res, axis, angle)
    np.testing.assert_allclose(q, from_mujoco_wxyz(res), atol=1e-16)
    if angle >= 1e-10:  # mju_quat2Vel takes an axis shorter than its mjMINVAL (1e-15) as no rotation
        vel = np.zeros(3)
        mujoco.mju_quat2Vel(vel, to_mujoco_wxyz(q), 1.0)
        np.testing.assert_allclose(quaternion_to_rotvec(q), vel, rtol=1e-9, atol=0)
    # the small-angle error a controller sees is the rotation vector itself
    r = rotvec_to_matrix(rv)
    np.testing.assert_allclose(rotation_error(np.eye(3), r), rv, rtol=1e-6, atol=1e-18)


def test_sign_of_q_never_matters() -> None:
    for q in random_quaternions(50, 10):
        np.testing.assert_allclose(quaternion_to_matrix(-q), quaternion_to_matrix(q), atol=0)
        np.testing.assert_allclose(quaternion_to_rotvec(-q), quaternion_to_rotvec(q), atol=1e-15)
        assert quaternion_angle(q, -q) == pytest.approx(0.0, abs=1e-7)
        np.testing.assert_array_equal(matrix_to_quaternion(quaternion_to_matrix(-q)),
                                      matrix_to_quaternion(quaternion_to_matrix(q)))
        np.testing.assert_allclose(homogeneous([0, 0, 0], -q), homogeneous([0, 0, 0], q), atol=0)


def test_non_finite_rotation_vector_gives_non_finite_output() -> None:
    """Consumers' finiteness checks (the safety filter) see a NaN command rather than a raise here."""
    assert np.all(np.isnan(rotvec_to_quaternion([math.nan, 0.0, 0.0])))
    assert not np.all(np.isfinite(rotvec_to_matrix([0.0, math.inf, 0.0])))
    with pytest.raises(ValueError, match="3 values"):
        rotvec_to_quaternion([0.0, 1.0])


# ------------------------------------------------------------------------------ angle, slerp
def test_quaternion_angle_and_slerp() -> None:
    a, b = random_quaternions(N, 11), random_quaternions(N, 12)
    for qa, qb in zip(a, b):
        ang = quaternion_angle(qa, qb)
        assert ang == pytest.approx(np.linalg.norm(quaternion_to_rotvec(quaternion_multiply(qb, quaternion_conjugate(
            qa)))), abs=1e-12)
        assert ang == pytest.approx(quaternion_angle(qa, -qb), abs=1e-15)
        np.testing.assert_allclose(quaternion_slerp(qa, qb, 0.0), qa, atol=1e-15)
        assert same_rotation(quaternion_slerp(qa, qb, 1.0), qb, atol=1e-12)
        for frac in (0.25, 0.5):
            mid = quaternion_slerp(qa, qb, frac)
            assert np.linalg.norm(mid) == pytest.approx(1.0, abs=1e-14)
            assert float(np.dot(mid, qa)) >= 0  # stays in a's hemisphere (the shorter way)
            assert quaternion_angle(qa, mid) == pytest.approx(frac * ang, abs=1e-12)
            assert quaternion_angle(mid, qb) == pytest.approx((1 - frac) * ang, abs=1e-12)
            np.testing.assert_allclose(quaternion_slerp(qa, -qb, frac), mid, atol=1e-14)
    q0 = IDENTITY_QUATERNION
    q1 = rotvec_to_quaternion([0.0, 0.0, 1e-3])  # nearly parallel: the linear branch
    assert quaternion_angle(q0, quaternion_slerp(q0, q1, 0.5)) == pytest.approx(5e-4, rel=1e-6)


def test_homogeneous_transform() -> None:
    q = random_quaternions(1, 13)[0]
    t = homogeneous([1.0, -2.0, 0.5], 2.0 * q)
    np.testing.assert_allclose(t[:3, :3], mj_mat(q), atol=1e-15)
    np.testing.assert_array_equal(t[:3, 3], [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(t[3], [0, 0, 0, 1])
