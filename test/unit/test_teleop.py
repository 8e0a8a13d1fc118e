"""Teleop mappings, kinematics and the teleop integrator (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_runtime.core.config import TeleopConfig
from vla_runtime.core.kinematics import dls_step, kinematics_for, pose_error
from vla_runtime.core.rotation import homogeneous, matrix_to_quaternion, quaternion_to_matrix, rotvec_to_matrix
from vla_runtime.core.teleop import (
    JoyMapper,
    PoseClutch,
    TeleopIntegrator,
    TeleopLimits,
    apply_deadzone,
)

HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
ARM = [f"panda_joint{i}" for i in range(1, 8)]


def test_deadzone_is_continuous_and_rescaled():
    assert apply_deadzone(0.04, 0.05) == 0.0
    assert apply_deadzone(0.0500001, 0.05) == pytest.approx(0.0, abs=1e-5)
    assert apply_deadzone(1.0, 0.05) == 1.0 and apply_deadzone(-1.0, 0.05) == -1.0
    assert apply_deadzone(3.0, 0.05) == 1.0  # clamped


def test_gamepad_deadman_gates_the_twist_and_limits_speed():
    m = JoyMapper(TeleopConfig(device="gamepad", deadman_button=4, max_linear_mps=0.1, axis_signs=(1, -1, 1, 1, 1, 1)))
    buttons = [0] * 8
    cmd = m.map([1.0, 0, 0, 0, 0, 0], buttons, 0.0)
    assert not cmd.engaged and not cmd.twist.any()
    buttons[4] = 1
    cmd = m.map([1.0, 1.0, 0, 0, 0, 0], buttons, 0.1)
    assert cmd.engaged
    assert np.linalg.norm(cmd.twist[:3]) == pytest.approx(0.1)  # diagonal: magnitude limited
    assert cmd.twist[1] < 0  # axis sign applied
    with pytest.raises(ValueError, match="axes"):
        m.map([0.0, 0.0], buttons, 0.2)


def test_spacemouse_without_deadman_engages_on_deflection_with_hang_time():
    m = JoyMapper(TeleopConfig(device="spacemouse", deadman_button=None, gripper_button=0), release_after_s=0.3)
    assert not m.map([0.0] * 6, [0, 0], 0.0).engaged
    assert m.map([0.0, 0.0, 0.5, 0, 0, 0], [0, 0], 1.0).engaged
    assert m.map([0.0] * 6, [0, 0], 1.2).engaged  # hang time
    assert not m.map([0.0] * 6, [0, 0], 1.4).engaged
    assert m.map([0.0] * 6, [1, 0], 1.5).gripper_toggled  # edge, not level
    assert not m.map([0.0] * 6, [1, 0], 1.6).gripper_toggled


def test_panda_jacobian_matches_finite_differences():
    chain = kinematics_for("panda", ARM)
    q = HOME + 0.1
    jac = chain.jacobian(q)
    t0 = chain.forward(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        t1 = chain.forward(q + dq)
        np.testing.assert_allclose(pose_error(t0, t1) / eps, jac[:, i], atol=1e-5)
    assert kinematics_for("ur5e") is None  # no model: joint jogs only
    assert kinematics_for("panda", ARM[:6]) is None


def test_dls_realises_a_twist_and_stays_bounded_at_a_singularity():
    chain = kinematics_for("panda")
    jac = chain.jacobian(HOME)
    v = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(jac @ dls_step(jac, v, damping=1e-3), v, atol=1e-4)
    q_sing = np.zeros(7)  # stretched-out arm: singular
    qd = dls_step(chain.jacobian(q_sing), v, damping=0.05)
    assert np.all(np.isfinite(qd)) and np.abs(qd).max() < 10.0


def test_quaternion_helpers_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        r = rotvec_to_matrix(rng.normal(size=3))
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-9)


def limits():
    return TeleopLimits(max_linear_mps=0.1, max_angular_rps=0.5,
                        joint_velocity={j: 1.0 for j in ARM},
                        joint_position={j: (-3.0, 3.0) for j in ARM} | {"panda_joint4": (-3.0, -0.07)})


def test_integrator_starts_at_the_measured_state_and_follows_a_twist():
    chain = kinematics_for("panda", ARM)
    tp = TeleopIntegrator(ARM, chain, limits())
    measured = dict(zip(ARM, HOME + 0.02))
    tp.start_joints(measured)
    np.testing.assert_array_equal(tp.step(0.01), HOME + 0.02)  # no command: stays exactly put
    p0 = chain.forward(tp.q)[:3, 3]
    for _ in range(50):  # 0.5 s at 0.1 m/s along +y
        tp.step(0.01, twist=[0.0, 0.1, 0.0, 0.0, 0.0, 0.0])
    d = chain.forward(tp.q)[:3, 3] - p0
    assert d[1] == pytest.approx(0.05, abs=0.003) and abs(d[0]) < 0.003 and abs(d[2]) < 0.003
    # speed limit applies to the commanded twist
    q_before = tp.q.copy()
    tp.step(0.01, twist=[5.0, 0, 0, 0, 0, 0])
    assert np.linalg.norm(chain.forward(tp.q)[:3, 3] - chain.forward(q_before)[:3, 3]) <= 0.1 * 0.01 * 1.05


def test_integrator_joint_jog_respects_limits_and_needs_a_model_for_twists():
    tp = TeleopIntegrator(ARM, None, limits())
    tp.start_joints(dict(zip(ARM, HOME)))
    for _ in range(100):
        tp.step(0.1, joint_velocity={"panda_joint4": 5.0})  # capped at 1 rad/s, clipped at -0.07
    assert tp.q[3] == pytest.approx(-0.07)
    with pytest.raises(RuntimeError, match="kinematic model"):
        tp.step(0.01, twist=[0.1, 0, 0, 0, 0, 0])
    with pytest.raises(KeyError):
        tp.start_joints({"panda_joint1": 0.0})


def test_cartesian_group_integrates_pose_and_servos_to_a_pose_target():
    tp = TeleopIntegrator((), None, limits())
    tp.start_pose([0.5, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0])
    out = tp.step(0.01)
    np.testing.assert_allclose(out, [0.5, 0.0, 0.4, 1.0, 0.0, 0.0, 0.0], atol=1e-12)
    target = homogeneous([0.6, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0])
    for _ in range(300):
        tp.step(0.01, twist=tp.servo_twist(target))
        assert True
    np.testing.assert_allclose(tp.pose[:3, 3], [0.6, 0.0, 0.4], atol=1e-3)


def test_pose_clutch_first_target_is_the_measured_pose():
    c = PoseClutch()
    ee = homogeneous([0.4, 0.1, 0.3], [1.0, 0.0, 0.0, 0.0])
    vr0 = homogeneous([1.0, 2.0, 1.5], [0.0, 0.0, math.sin(0.3), math.cos(0.3)])
    c.engage(vr0, ee)
    np.testing.assert_allclose(c.target(vr0), ee, atol=1e-12)
    moved = vr0.copy()
    moved[:3, 3] += [0.05, 0.0, -0.02]
    np.testing.assert_allclose(c.target(moved)[:3, 3], [0.45, 0.1, 0.28], atol=1e-12)


def test_keyboard_mapping_is_pure():
    from vla_runtime.commands.teleop_keyboard import KeyboardMapper

    km = KeyboardMapper(TeleopConfig(max_linear_mps=0.1, max_angular_rps=0.5), hold_s=0.15)
    assert km.feed("w", 0.0).twist[0] == pytest.approx(0.1)
    assert km.twist(0.1)[0] == pytest.approx(0.1)
    assert not km.twist(0.3).any()  # key no longer repeating: stop
    ev = km.feed(" ", 1.0)
    assert ev.engage_changed and km.engaged
    assert km.feed(" ", 1.1).engage_changed and not km.engaged
    assert km.feed("q", 2.0).quit


def test_keyboard_refuses_a_non_tty_stdin_clearly(tmp_path):
    from test.conftest import ROOT
    from vla_runtime.commands.teleop_keyboard import KeyboardTeleopError, run_keyboard
    from vla_runtime.core.config import load_config

    with open(tmp_path / "in.txt", "w+") as f, pytest.raises(KeyboardTeleopError, match="not a TTY"):
        run_keyboard(load_config(ROOT / "config" / "sim_panda.yaml"), stdin=f)
