"""command_mapping: action dims → per-group commands, hold commands (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test.conftest import ROOT
from vla_runtime.core.command_mapping import (
    CommandMapper,
    GripperCommand,
    JointCommand,
    MappingError,
    PoseCommand,
    TwistCommand,
    hold_commands,
    map_action,
)
from vla_runtime.core.config import config_from_dict, load_config
from vla_runtime.core.rotation import rotvec_to_quaternion

ARM = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def panda():
    return load_config(ROOT / "config" / "sim_panda.yaml").robot


@pytest.fixture(scope="module")
def mobile():
    """A Cartesian arm, gripper and base profile."""
    cfg = load_config(ROOT / "config" / "sim_panda.yaml")
    data = cfg.model_dump(exclude={"source"})
    data["robot"]["groups"] = {
        "arm": {"controller": "cartesian_impedance", "controller_name": "cartesian_controller",
                "joints": ARM, "ee_link": "panda_hand", "frame_id": "panda_link0",
                "stiffness_limits": [0.0, 1000.0]},
        "gripper": {"controller": "gripper", "controller_name": "gripper_controller",
                    "joints": ["panda_finger_joint1"], "gripper_range": [0.0, 0.04]},
        "base": {"controller": "base_twist", "controller_name": "base_controller"},
    }
    data["teleop"]["group"] = "arm"
    return config_from_dict(data).robot


def test_joint_dims_in_any_order_map_to_controller_order(panda):
    sample = {n: float(i) for i, n in enumerate(reversed(ARM))}
    sample["gripper/gripper"] = 0.02
    cmds = map_action(panda, sample)
    arm = cmds["arm"]
    assert isinstance(arm, JointCommand) and arm.joints == tuple(ARM)
    np.testing.assert_allclose(arm.values, [6, 5, 4, 3, 2, 1, 0])
    assert cmds["gripper"] == GripperCommand("gripper", 0.02)


def test_group_not_named_is_left_alone(panda):
    m = CommandMapper(panda, ARM)
    assert m.groups == ("arm",) and m.unused_dims == ()


def test_missing_dims_are_named(panda):
    with pytest.raises(MappingError, match="panda_joint7"):
        CommandMapper(panda, ARM[:6])


def test_duplicate_dims_rejected(panda):
    with pytest.raises(MappingError, match="twice"):
        CommandMapper(panda, ARM + ["panda_joint1"])


def test_unused_dims_reported(panda):
    m = CommandMapper(panda, ARM + ["arm/stiffness"])
    assert m.unused_dims == ("arm/stiffness",)


def test_group_values_of_a_chunk(panda):
    names = list(reversed(ARM))
    chunk = np.arange(14, dtype=float).reshape(2, 7)
    m = CommandMapper(panda, names)
    np.testing.assert_allclose(m.group_values(chunk, "arm"), chunk[:, ::-1])


def test_cartesian_gripper_base(mobile):
    names = [f"arm/{d}" for d in ("x", "y", "z", "qx", "qy", "qz", "qw")] + [
        "arm/stiffness_x", "gripper/gripper", "base/vx", "base/vy", "base/wz"]
    row = np.array([0.4, 0.1, 0.3, 0, 0, 0, 1, 500.0, 0.03, 0.2, 0.0, 0.1])
    cmds = CommandMapper(mobile, names).commands(row)
    pose = cmds["arm"]
    assert isinstance(pose, PoseCommand) and pose.frame_id == "panda_link0"
    np.testing.assert_allclose(pose.position, [0.4, 0.1, 0.3])
    np.testing.assert_allclose(pose.stiffness, [500.0])
    assert cmds["gripper"].value == pytest.approx(0.03)
    assert cmds["base"] == TwistCommand("base", 0.2, 0.0, 0.1)


def test_cartesian_missing_quaternion_dim_named(mobile):
    with pytest.raises(MappingError, match="arm/qw"):
        CommandMapper(mobile, ["arm/x", "arm/y", "arm/z", "arm/qx", "arm/qy", "arm/qz"])


def test_axis_angle_layout(mobile):
    names = ["arm/x", "arm/y", "arm/z", "arm/rx", "arm/ry", "arm/rz"]
    cmd = CommandMapper(mobile, names).command("arm", [0.4, 0, 0.3, 0, 0, math.pi / 2])
    np.testing.assert_allclose(cmd.quaternion, rotvec_to_quaternion([0, 0, math.pi / 2]))
    np.testing.assert_allclose(cmd.quaternion, [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])


def test_hold_commands_from_measured_state(panda, mobile):
    measured = {n: 0.1 * i for i, n in enumerate(ARM)} | {"panda_finger_joint1": 0.035}
    cmds = hold_commands(panda, measured)
    np.testing.assert_allclose(cmds["arm"].values, [0.1 * i for i in range(7)])
    assert cmds["gripper"].value == pytest.approx(0.035)
    cmds = hold_commands(mobile, measured, {"arm": ([0.4, 0, 0.3], [0, 0, 0, 1])})
    assert isinstance(cmds["arm"], PoseCommand) and cmds["base"] == TwistCommand("base", 0, 0, 0)


def test_hold_commands_name_missing_measurements(panda, mobile):
    with pytest.raises(MappingError, match="panda_joint3"):
        hold_commands(panda, {n: 0.0 for n in ARM if n != "panda_joint3"}, groups=["arm"])
    with pytest.raises(MappingError, match="/ee_pose"):
        hold_commands(mobile, {"panda_finger_joint1": 0.0}, groups=["arm"])
