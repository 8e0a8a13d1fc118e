"""The input validation layer: each hostile input class of issue #12 is refused, named and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_runtime.core.config import load_config
from vla_runtime.core.validation import (
    DUPLICATE_NAME,
    EMPTY,
    FUTURE_STAMP,
    LENGTH_MISMATCH,
    NON_FINITE,
    OUT_OF_LIMITS,
    OVER_LIMIT,
    STALE_STAMP,
    UNKNOWN_NAME,
    JointStateCheck,
    PlanCheck,
    Rejections,
    TeleopCheck,
    dim_bounds,
    stamp_lead,
)

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "config" / "sim_panda.yaml")
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
NOW_NS = 1_800_000_000_000_000_000


@pytest.fixture
def js() -> JointStateCheck:
    return JointStateCheck(CFG.robot, CFG.safety)


def test_a_valid_joint_state_passes_and_unknown_joints_are_allowed(js) -> None:
    names = (*ARM, "panda_finger_joint1", "panda_finger_joint2")
    assert js.check(names, np.r_[HOME, 0.04, -0.04], NOW_NS - 1_000_000, NOW_NS) is None
    assert js.rejections.total == 0


@pytest.mark.parametrize(("names", "positions", "reason", "text"), [
    (ARM, np.r_[HOME[:6], np.nan], NON_FINITE, "panda_joint7 = nan"),
    (ARM, np.r_[np.inf, HOME[1:]], NON_FINITE, "panda_joint1 = inf"),
    (ARM, HOME[:5], LENGTH_MISMATCH, "7 names and 5 positions"),
    (ARM, np.r_[1e30, HOME[1:]], OUT_OF_LIMITS, "panda_joint1 = 1e+30 outside [-2.947, 2.947]"),
    ((*ARM[:6], "panda_joint1"), HOME, DUPLICATE_NAME, "listed twice: ['panda_joint1']"),
    ((), np.zeros(0), EMPTY, "without names"),
])
def test_hostile_joint_states_are_refused_by_reason(js, names, positions, reason, text) -> None:
    why = js.check(tuple(names), np.asarray(positions, dtype=np.float64))
    assert why is not None and text in why
    assert js.rejections.counts == {reason: 1} and js.rejections.last == why


def test_a_joint_state_stamped_an_hour_ahead_is_refused_but_a_small_lead_is_tolerated(js) -> None:
    assert js.check(ARM, HOME, NOW_NS + 3600 * 1_000_000_000, NOW_NS) == "joint state stamp 3600.000 s in the " \
                                                                            "future (tolerance 0.5 s)"
    assert js.check(ARM, HOME, NOW_NS + 100_000_000, NOW_NS) is None  # 0.1 s of clock skew
    assert js.check(ARM, HOME, 0, NOW_NS) is None  # an unstamped message: nothing to judge
    assert js.rejections.counts == {FUTURE_STAMP: 1}


def test_slightly_outside_the_limits_is_measurement_not_attack(js) -> None:
    over = HOME.copy()
    over[3] = -0.0698 + 0.04  # joint 4 a little past its upper limit (within state_limit_tolerance 0.05)
    assert js.check(ARM, over) is None
    over[3] = -0.0698 + 0.06
    assert "panda_joint4" in js.check(ARM, over)


def test_the_names_cache_is_reused_and_bounded(js) -> None:
    for k in range(200):
        js.check((f"extra_{k}",), np.zeros(1))
    assert len(js._cache) <= 65


def test_a_plan_with_a_billion_is_refused_not_clipped() -> None:
    dims = (*ARM, "gripper/gripper")
    check = PlanCheck(CFG.robot, CFG.safety, dims)
    rej = Rejections()
    good = np.tile(np.r_[HOME, 0.04], (4, 1))
    assert check.check(good, 100.0, 100.0, rej) is None
    bad = good.copy()
    bad[2, 3] = 1e9
    assert check.check(bad, 100.0, 100.0, rej) == "plan point 2 panda_joint4 = 1e+09 outside [-4.072, 0.9302]"
    bad = good.copy()
    bad[0, 7] = 0.5  # over the 4 cm gripper's range, but within the tolerance: the safety filter clips it
    assert check.check(bad, 100.0, 100.0, rej) is None
    bad[0, 7] = 5.0  # a 5 m gripper opening is no overshoot
    assert "gripper/gripper = 5 outside" in check.check(bad, 100.0, 100.0, rej)
    bad[0, 7] = np.nan
    assert check.check(bad, 100.0, 100.0, rej) == "plan point 0 gripper/gripper = nan"
    assert rej.counts == {OUT_OF_LIMITS: 2, NON_FINITE: 1}


def test_a_plan_stamped_an_hour_away_is_refused() -> None:
    check = PlanCheck(CFG.robot, CFG.safety, ARM)
    rej = Rejections()
    pts = np.tile(HOME, (3, 1))
    assert check.check(pts, 100.0 + 3600, 100.0, rej).startswith("plan stamped +3600.000 s from now")
    assert check.check(pts, 100.0 - 3600, 100.0, rej).startswith("plan stamped -3600.000 s from now")
    assert check.check(pts, 100.0 + 0.2, 100.0, rej) is None  # a plan that starts a little ahead
    assert rej.counts == {FUTURE_STAMP: 1, STALE_STAMP: 1}


def test_cartesian_dims_are_bounded_by_the_workspace_and_unit_quaternions() -> None:
    cfg = load_config(ROOT / "config" / "franka_fr3.yaml")
    dims = ("arm/x", "arm/y", "arm/z", "arm/qx", "arm/qy", "arm/qz", "arm/qw")
    lo, hi = dim_bounds(cfg.robot, cfg.safety, dims)
    box = cfg.robot.workspace
    tol = cfg.safety.plan_limit_tolerance
    np.testing.assert_allclose(lo[:3], np.array(box.min) - tol)
    np.testing.assert_allclose(hi[:3], np.array(box.max) + tol)
    np.testing.assert_allclose(hi[3:], 1.001)
    check = PlanCheck(cfg.robot, cfg.safety, dims)
    pose = np.array([[0.5, 0.0, 0.4, 0.0, 1.0, 0.0, 0.0]])
    rej = Rejections()
    assert check.check(pose, 5.0, 5.0, rej) is None
    pose[0, 6] = 3.0
    assert "arm/qw = 3 outside" in check.check(pose, 5.0, 5.0, rej)


def test_stamp_lead() -> None:
    assert stamp_lead(NOW_NS + 400_000_000, NOW_NS, 0.5) is None
    assert stamp_lead(NOW_NS + 3_600_000_000_000, NOW_NS, 0.5) == "stamp 3600.000 s in the future (tolerance 0.5 s)"
    assert stamp_lead(NOW_NS - 3_600_000_000_000, NOW_NS, 0.5) is None  # old is the staleness monitor's business


def test_teleop_commands_far_over_their_limits_are_refused() -> None:
    tc = TeleopCheck(CFG.robot, CFG.teleop, CFG.safety)
    assert tc.joint_jog({"panda_joint1": 0.5}, ["panda_joint1"]) is None
    assert tc.joint_jog({"panda_joint1": 1e9}, ["panda_joint1"]) == \
        "teleop joint jog panda_joint1 = 1e+09 rad/s, far over its limit 1.087 rad/s"
    assert "unknown joint 'elbow'" in tc.joint_jog({"elbow": 0.1}, ["elbow"])
    assert tc.joint_jog({"panda_joint1": 0.1}, ["panda_joint1", "panda_joint1"]).startswith("teleop joint jog with")
    assert "= nan" in tc.joint_jog({"panda_joint2": float("nan")}, ["panda_joint2"])
    assert tc.twist(np.array([0.1, 0, 0, 0, 0, 0.3])) is None
    assert "far over the limits" in tc.twist(np.array([5.0, 0, 0, 0, 0, 0]))
    assert tc.twist(np.array([np.inf, 0, 0, 0, 0, 0])).startswith("teleop twist")
    assert tc.rejections.counts == {OVER_LIMIT: 2, UNKNOWN_NAME: 1, DUPLICATE_NAME: 1, NON_FINITE: 2}


def test_rejections_report_per_reason_for_diagnostics() -> None:
    rej = Rejections()
    rej(NON_FINITE, "a")
    rej(NON_FINITE, "b")
    rej(OUT_OF_LIMITS, "c")
    assert rej.as_diagnostics() == {"rejected.non_finite": "2", "rejected.out_of_limits": "1",
                                    "rejected_total": "3", "rejected_last": "c"}
