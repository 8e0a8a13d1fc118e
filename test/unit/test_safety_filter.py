"""SafetyFilter: limits, rejections, counters and bumpless references (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test.conftest import ROOT
from vla_runtime.core.config import load_config
from vla_runtime.core.safety_filter import (
    ACCELERATION_LIMIT,
    CARTESIAN_STEP,
    GRIPPER_RANGE,
    NO_REFERENCE,
    NON_FINITE,
    POSITION_LIMIT,
    STEP_LIMIT,
    TWIST_LIMIT,
    UNKNOWN_JOINT,
    VELOCITY_LIMIT,
    WORKSPACE,
    SafetyFilter,
)

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785]
DT = 0.01


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config" / "sim_panda.yaml")


def make(cfg, **safety) -> SafetyFilter:
    s = cfg.safety.model_copy(update=safety)
    f = SafetyFilter(cfg.robot, s, command_period_s=DT)
    f.reset_reference(dict(zip(ARM, HOME)), now_s=0.0)
    return f


def test_passes_a_small_command_unchanged(cfg):
    f = make(cfg)
    q = np.array(HOME) + 0.0005
    r = f.filter_joint(ARM, q, DT)
    assert not r.rejected and not r.interventions
    np.testing.assert_allclose(r.values, q)
    assert f.total_interventions == 0


def test_clips_at_the_position_limit_and_counts(cfg):
    f = make(cfg)
    upper = 2.8973
    f.reset_reference({"panda_joint1": upper}, now_s=0.0)
    r = f.filter_joint(["panda_joint1"], [3.5], DT)
    assert not r.rejected
    assert r.values[0] == pytest.approx(upper)
    assert r.values[0] <= upper
    assert POSITION_LIMIT in r.interventions
    assert f.counters[POSITION_LIMIT] == 1
    assert f.counters_by_name["panda_joint1"][POSITION_LIMIT] == 1


def test_position_margin_is_kept_clear(cfg):
    f = make(cfg, position_margin_rad=0.1)
    f.reset_reference({"panda_joint1": 2.7973}, now_s=0.0)
    r = f.filter_joint(["panda_joint1"], [2.85], DT)
    assert r.values[0] == pytest.approx(2.8973 - 0.1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_rejected_naming_joint_and_value(cfg, bad):
    f = make(cfg)
    q = list(HOME)
    q[2] = bad
    r = f.filter_joint(ARM, q, DT)
    assert r.rejected and r.hold
    assert "panda_joint3" in r.reason and str(bad) in r.reason
    assert f.counters[NON_FINITE] == 1
    # a rejected command does not move the reference
    assert f.reference("panda_joint3") == pytest.approx(HOME[2])


def test_unknown_joint_is_rejected(cfg):
    f = make(cfg)
    r = f.filter_joint(["panda_joint1", "elbow_jont"], [0.0, 0.0], DT)
    assert r.rejected and "elbow_jont" in r.reason
    assert f.counters[UNKNOWN_JOINT] == 1


def test_no_reference_is_rejected(cfg):
    f = SafetyFilter(cfg.robot, cfg.safety, command_period_s=DT)
    r = f.filter_joint(["panda_joint1"], [0.0], 0.0)
    assert r.rejected and f.counters[NO_REFERENCE] == 1


def test_step_limit(cfg):
    # acceleration and velocity generous, so the per-command step cap binds
    f = make(cfg, max_joint_step_rad=0.02)
    f.reset_reference({"panda_joint1": 0.0}, now_s=0.0, velocities={"panda_joint1": 2.0})
    r = f.filter_joint(["panda_joint1"], [0.5], 0.02)
    assert r.values[0] == pytest.approx(0.02)
    assert STEP_LIMIT in r.interventions


def test_velocity_limit_scales_with_dt(cfg):
    f = make(cfg, max_joint_step_rad=1.0)  # velocity_scale 0.5 → 1.0875 rad/s for joint1
    f.reset_reference({"panda_joint1": 0.0}, now_s=0.0, velocities={"panda_joint1": 1.0875})
    r = f.filter_joint(["panda_joint1"], [0.5], DT)
    assert r.values[0] == pytest.approx(2.175 * 0.5 * DT)
    assert VELOCITY_LIMIT in r.interventions


def test_acceleration_limit_from_rest(cfg):
    f = make(cfg)
    r = f.filter_joint(["panda_joint1"], [0.01], DT)  # 1 rad/s from rest in 10 ms
    assert r.values[0] == pytest.approx(15.0 * DT * DT)
    assert ACCELERATION_LIMIT in r.interventions


def test_ramp_converges_without_exceeding_limits(cfg):
    f = make(cfg)
    prev, prev_v = HOME[0], 0.0
    for k in range(1, 200):
        r = f.filter_joint(["panda_joint1"], [1.0], k * DT)
        v = (r.values[0] - prev) / DT
        assert abs(v) <= 2.175 * 0.5 + 1e-9
        assert abs(v - prev_v) <= 15.0 * DT + 1e-9
        prev, prev_v = r.values[0], v
    assert prev > 0.5


def test_reset_reference_is_bumpless(cfg):
    f = make(cfg)
    f.filter_joint(["panda_joint1"], [0.001], DT)
    f.reset_reference({"panda_joint1": 0.3}, now_s=1.0)
    r = f.filter_joint(["panda_joint1"], [0.3], 1.0 + DT)
    assert r.values[0] == pytest.approx(0.3) and not r.interventions


def test_joint_velocity_command(cfg):
    f = make(cfg)
    r = f.filter_joint_velocity(["panda_joint1"], [5.0], DT)
    assert r.values[0] == pytest.approx(15.0 * DT)  # accel-limited from zero
    f.reset_reference({"panda_joint1": 2.8973}, now_s=0.0)
    r = f.filter_joint_velocity(["panda_joint1"], [0.1], DT, measured_positions={"panda_joint1": 2.8973})
    assert r.values[0] == 0.0


def test_pose_workspace_clip_and_step(cfg):
    f = make(cfg, max_cartesian_step_m=0.01)
    f.reset_pose_reference("arm", [0.5, 0.0, 0.95], [0, 0, 0, 1], 0.0)
    r = f.filter_pose("arm", [0.5, 0.0, 1.5], [0, 0, 0, 2.0], DT)
    assert not r.rejected
    assert r.values[2] <= 0.9 + 1e-12  # workspace max z
    assert WORKSPACE in r.interventions
    np.testing.assert_allclose(r.values[3:], [0, 0, 0, 1])  # normalised
    r = f.filter_pose("arm", [0.5, 0.3, 0.9], [0, 0, 0, 1], 2 * DT)
    assert r.values[1] == pytest.approx(0.01)
    assert f.counters[CARTESIAN_STEP] >= 1


@pytest.mark.parametrize("quat", [[0, 0, 0, 0], [math.nan, 0, 0, 1]])
def test_pose_bad_quaternion_rejected(cfg, quat):
    f = make(cfg)
    f.reset_pose_reference("arm", [0.5, 0.0, 0.5], [0, 0, 0, 1], 0.0)
    r = f.filter_pose("arm", [0.5, 0.0, 0.5], quat, DT)
    assert r.rejected and "arm" in r.reason


def test_gripper_and_twist(cfg):
    f = make(cfg)
    r = f.filter_gripper("gripper", 0.08, 0.0)
    assert r.values[0] == pytest.approx(0.04) and f.counters[GRIPPER_RANGE] == 1
    assert f.filter_gripper("gripper", math.nan, 0.0).rejected
    r = f.filter_twist("base", 3.0, 4.0, -9.0, 0.0)
    assert math.hypot(r.values[0], r.values[1]) == pytest.approx(0.5 * 0.5)
    assert r.values[2] == pytest.approx(-1.0 * 0.5)
    assert f.counters[TWIST_LIMIT] == 2
