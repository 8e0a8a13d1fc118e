"""Controller semantics of the simulated robot, on the real Panda/GR1 MuJoCo models (no ROS)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from vla_runtime.core.config import _merge, _read_yaml, config_from_dict
from vla_runtime.core.robot_ceilings import DATASHEETS
from vla_runtime.sim.controllers import (
    JointTargetCommand,
    PoseCommand,
    StiffnessCommand,
    TrajectoryCommand,
)
from vla_runtime.sim.robot import SimRobot
from vla_runtime.sim.scene import GR1_GROUPS, build_gr1, build_panda

ROOT = Path(__file__).resolve().parents[2]
ARM = [f"panda_joint{i}" for i in range(1, 8)]
DQ = np.array([0.3, 0.2, -0.2, 0.3, 0.3, -0.3, 0.4])


@pytest.fixture(scope="module")
def panda_scene():
    return build_panda(seed=0)


def _robot(scene, arm: dict | None = None, timeout: float | None = None, **top) -> SimRobot:
    """The sim Panda; ``timeout``: every group's ``cmd_timeout_s`` (None: off, so a single command is
    followed for as long as a test watches)."""
    data = _read_yaml(ROOT / "config" / "sim_panda.yaml")
    over: dict = _merge(dict(top), {"robot": {"groups": {g: {"cmd_timeout_s": timeout} for g in ("arm", "gripper")}}})
    if arm:
        over = _merge(over, {"robot": {"groups": {"arm": arm}}})
    cfg = config_from_dict(_merge(data, over))
    return SimRobot(cfg, scene=scene)


def _q(robot: SimRobot) -> np.ndarray:
    return robot.joint_state().positions[:7]


def _run(robot: SimRobot, seconds: float) -> None:
    robot.step(int(round(seconds / robot.model.opt.timestep)))


def test_jtc_tracks_trajectory_in_message_joint_order(panda_scene):
    r = _robot(panda_scene)
    q0 = _q(r)
    q1 = q0 + DQ
    rev = ARM[::-1]
    assert r.accept("arm_controller", TrajectoryCommand(rev, [1.0, 2.0], [(0.5 * (q0 + q1))[::-1], q1[::-1]]))
    jtc = r.controllers["arm_controller"]
    errs = []
    for _ in range(1100):
        r.step(2)
        errs.append(np.abs(_q(r) - jtc.desired(r.time)[0]).max())
    assert max(errs) < 0.005, f"tracking error {max(errs)} rad"
    assert np.abs(_q(r) - q1).max() < 1e-3
    _run(r, 1.0)  # holds the last point
    assert np.abs(_q(r) - q1).max() < 1e-3


def test_jtc_replacement_mid_trajectory_is_continuous(panda_scene):
    r = _robot(panda_scene)
    q0 = _q(r)
    jtc = r.controllers["arm_controller"]
    assert r.accept("arm_controller", TrajectoryCommand(ARM, [2.0], [q0 + DQ]))
    _run(r, 1.0)
    before_q, before_v, _ = jtc.desired(r.time)
    assert r.accept("arm_controller", TrajectoryCommand(ARM, [1.5], [q0 - DQ]))
    after_q, after_v, _ = jtc.desired(r.time)
    np.testing.assert_allclose(after_q, before_q, atol=1e-9)
    np.testing.assert_allclose(after_v, before_v, atol=1e-9)
    # The reference stays smooth after the splice: no jumps between steps.
    prev = jtc.desired(r.time)[0]
    dt = r.model.opt.timestep
    for _ in range(300):
        r.step(1)
        cur = jtc.desired(r.time)[0]
        assert np.abs(cur - prev).max() < 3.0 * dt  # below ~3 rad/s
        prev = cur
    _run(r, 1.5)
    assert np.abs(_q(r) - (q0 - DQ)).max() < 2e-3


def test_jtc_rejects_malformed_and_past_trajectories(panda_scene):
    r = _robot(panda_scene)
    q0 = _q(r)
    c = r.controllers["arm_controller"]
    bad = [
        TrajectoryCommand(ARM[:6], [1.0], [q0[:6]]),  # missing joint
        TrajectoryCommand(ARM[:6] + ["elbow"], [1.0], [q0]),  # unknown joint
        TrajectoryCommand(ARM, [1.0], [np.r_[q0[:6], math.nan]]),  # NaN
        TrajectoryCommand(ARM, [1.0], [q0[:5]]),  # wrong length
        TrajectoryCommand(ARM, [1.0, 0.5], [q0, q0]),  # time going backwards
        TrajectoryCommand(ARM, [1.0], [q0], start_time=r.time - 5.0),  # entirely in the past
    ]
    for cmd in bad:
        assert not r.accept("arm_controller", cmd)
    assert c.rejected == len(bad)
    _run(r, 0.5)
    assert np.abs(_q(r) - q0).max() < 1e-3, "a rejected command moved the arm"


def test_inactive_controller_rejects_and_counts(panda_scene):
    r = _robot(panda_scene)
    ok, msg = r.switch_controller([], ["arm_controller"])
    assert ok, msg
    q0 = _q(r)
    assert not r.accept("arm_controller", TrajectoryCommand(ARM, [0.5], [q0 + DQ]))
    c = r.controllers["arm_controller"]
    assert c.rejected == 1 and "inactive" in c.last_rejection
    _run(r, 1.0)
    assert np.abs(_q(r) - q0).max() < 2e-3, "an unclaimed arm must be held by the brakes"


def test_hold_controller_keeps_position_within_2mm_over_5s(panda_scene):
    r = _robot(panda_scene)
    assert r.accept("arm_controller", TrajectoryCommand(ARM, [1.0], [_q(r) + DQ]))
    _run(r, 0.5)  # moving when the hold takes over
    ok, msg = r.switch_controller(["hold_controller"], ["arm_controller", "gripper_controller"])
    assert ok, msg
    hand0 = r.ee_pose("arm")[0]
    drift = 0.0
    for _ in range(50):
        _run(r, 0.1)
        drift = max(drift, float(np.linalg.norm(r.ee_pose("arm")[0] - hand0)))
    assert drift < 0.002, f"hand drifted {drift * 1e3:.2f} mm under the hold controller"


def test_switch_controller_mutual_exclusion(panda_scene):
    r = _robot(panda_scene)
    ok, msg = r.switch_controller(["hold_controller"], [])
    assert not ok and "panda_joint1" in msg and "arm_controller" in msg
    assert r.controllers["arm_controller"].active and not r.controllers["hold_controller"].active
    ok, msg = r.switch_controller(["hold_controller"], ["arm_controller"])  # gripper still claims its joint
    assert not ok and "gripper_controller" in msg
    ok, msg = r.switch_controller(["hold_controller"], ["arm_controller"], strict=False)
    assert ok and not r.controllers["hold_controller"].active and not r.controllers["arm_controller"].active
    ok, msg = r.switch_controller(["nope"], [])
    assert not ok and "nope" in msg
    ok, msg = r.switch_controller(["hold_controller"], ["gripper_controller"])
    assert ok, msg
    states = {c.name: c.state for c in r.list_controllers()}
    assert states == {"arm_controller": "inactive", "gripper_controller": "inactive", "hold_controller": "active"}
    hold = next(c for c in r.list_controllers() if c.name == "hold_controller")
    assert "panda_finger_joint1/position" in hold.claimed_interfaces


def test_forward_position_moves_arm(panda_scene):
    r = _robot(panda_scene, arm={"controller": "forward_position", "controller_name": "fwd"})
    target = _q(r) + DQ
    assert r.accept("fwd", target)
    _run(r, 1.5)
    assert np.abs(_q(r) - target).max() < 2e-3
    assert not r.accept("fwd", target[:3])


def test_forward_velocity_integrates_and_times_out(panda_scene):
    r = _robot(panda_scene, arm={"controller": "forward_velocity", "controller_name": "vel"})
    q0 = _q(r)
    v = np.array([0.2, 0, 0, 0, 0, 0, -0.2])
    assert r.accept("vel", v)
    _run(r, 0.4)
    moved = _q(r) - q0
    assert moved[0] == pytest.approx(0.08, abs=0.01) and moved[6] == pytest.approx(-0.08, abs=0.01)
    _run(r, 0.5)  # command timed out (0.5 s) → stops
    stopped = _q(r)
    _run(r, 0.5)
    assert np.abs(_q(r) - stopped).max() < 1e-3


@pytest.mark.parametrize("arm", [
    {"controller": "forward_position", "controller_name": "fwd"},
    {"controller": "joint_impedance", "controller_name": "fwd"},
    {"controller": "forward_velocity", "controller_name": "fwd"},
], ids=["forward_position", "joint_impedance", "forward_velocity"])
def test_a_silent_command_stream_ends_in_a_hold_at_the_controller(panda_scene, arm):
    """cmd_timeout (ros2_controllers' and CRISP's): a controller whose commands stop — its bridge was
    killed mid-motion — holds where it is after the timeout instead of finishing the last command."""
    r = _robot(panda_scene, arm=arm, timeout=0.25)
    q0 = _q(r)
    if arm["controller"] == "joint_impedance":
        command = JointTargetCommand(ARM, q0 + 3 * DQ)
    elif arm["controller"] == "forward_velocity":
        command = np.array([1.0, 0, 0, 0, 0, 0, -1.0])
    else:
        command = q0 + 3 * DQ  # far: ~0.6 s at the joints' velocity limits
    assert r.accept("fwd", command)
    _run(r, 0.25)
    c = r.controllers["fwd"]
    assert c.timeouts == 0
    _run(r, 0.1)
    assert c.timeouts == 1
    _run(r, 1.0)  # settle onto the hold (an impedance controller springs back from where it was caught)
    held = _q(r)
    _run(r, 1.0)
    assert np.abs(_q(r) - held).max() < 2e-3, "kept moving after the command timed out"
    if arm["controller"] == "forward_velocity":
        assert not c.command.any()
    else:  # the stale target was replaced by where the arm was caught
        target = c.target if arm["controller"] == "joint_impedance" else c.command
        assert np.abs(target - (q0 + 3 * DQ)).max() > 0.1
    assert r.accept("fwd", command)  # a new command is followed again
    assert not c._expired


def test_a_trajectory_controller_times_out_after_its_trajectory_ends(panda_scene):
    r = _robot(panda_scene, timeout=0.25)
    q0 = _q(r)
    jtc = r.controllers["arm_controller"]
    assert r.accept("arm_controller", TrajectoryCommand(ARM, [0.5], [q0 + DQ]))
    _run(r, 0.7)  # the trajectory ends at 0.5 s: no timeout before 0.75 s
    assert jtc.timeouts == 0
    _run(r, 0.1)
    assert jtc.timeouts == 1
    np.testing.assert_allclose(jtc.desired(r.time)[0], q0 + DQ, atol=1e-9)  # holds its last reference


def test_joint_impedance_moves_toward_target(panda_scene):
    r = _robot(panda_scene, arm={"controller": "joint_impedance", "controller_name": "jimp",
                                 "stiffness": [600, 600, 600, 600, 250, 150, 50], "stiffness_limits": [0, 1000]})
    target = _q(r) + 0.5 * DQ
    assert r.accept("jimp", JointTargetCommand(ARM[::-1], target[::-1]))
    _run(r, 2.0)
    assert np.abs(_q(r) - target).max() < 0.01
    assert not r.accept("jimp", StiffnessCommand([5000] * 7))
    assert r.accept("jimp", StiffnessCommand([100] * 7))


def test_cartesian_impedance_reaches_target_pose(panda_scene):
    r = _robot(panda_scene, arm={"controller": "cartesian_impedance", "controller_name": "cart",
                                 "stiffness_limits": [0, 3000]})
    p0, q0 = r.ee_pose("arm")
    target = p0 + np.array([0.05, 0.10, -0.10])
    assert r.accept("cart", PoseCommand(target, q0))
    _run(r, 2.0)
    p, q = r.ee_pose("arm")
    assert np.linalg.norm(p - target) < 0.01
    assert abs(abs(float(np.dot(q, q0))) - 1.0) < 1e-3
    assert not r.accept("cart", StiffnessCommand([500] * 5))
    assert not r.accept("cart", StiffnessCommand([5000] * 6))
    assert r.accept("cart", StiffnessCommand([800, 800, 800, 40, 40, 40]))
    assert not r.accept("cart", PoseCommand([0.4, 0.0, math.inf], q0))


def test_gripper_closes_at_limited_speed(panda_scene):
    r = _robot(panda_scene)
    assert r.joint_state().positions[7] == pytest.approx(0.04, abs=1e-3)
    assert r.accept("gripper_controller", np.array([0.0]))
    _run(r, 0.1)
    assert r.joint_state().positions[7] > 0.025, "faster than the 0.1 m/s limit"
    _run(r, 0.6)
    assert r.joint_state().positions[7] < 0.003
    assert not r.accept("gripper_controller", np.array([0.01, 0.02]))


def test_objects_and_reset(panda_scene):
    r = _robot(panda_scene)
    poses = r.object_poses()
    assert set(poses) == {"red_cube", "green_cube", "blue_cube"}
    for p, _ in poses.values():
        assert 0.3 < p[0] < 0.7 and abs(p[1]) < 0.3 and p[2] == pytest.approx(0.02, abs=2e-3)
    r.move_object("red_cube", [0.3, 0.35, 0.03])
    _run(r, 0.5)
    assert r.object_poses()["red_cube"][0] == pytest.approx([0.3, 0.35, 0.02], abs=3e-3)
    r.reset(seed=3)
    moved = r.object_poses()
    assert any(np.linalg.norm(moved[n][0] - poses[n][0]) > 0.01 for n in poses)
    np.testing.assert_allclose(_q(r), [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785], atol=1e-9)


def test_render_scene_camera(panda_scene):
    r = _robot(panda_scene)
    img = r.render("scene", 96, 64)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and img.std() > 5


def test_gr1_loads_with_expected_joint_groups():
    scene = build_gr1(seed=0)
    m = scene.model
    names = {m.joint(i).name for i in range(m.njnt)}
    for group, joints in GR1_GROUPS.items():
        assert set(joints) <= names, f"{group}: missing {set(joints) - names}"
    assert scene.hands_attached
    assert not any(m.jnt_type[i] == 0 and m.joint(i).name not in {f"{c}_joint" for c in scene.cubes}
                   for i in range(m.njnt)), "the humanoid must have no free joint"
    cfg = config_from_dict({
        "robot": {
            "name": "gr1", "base_frame": "base",
            "joints": [{"name": j, "position": [float(m.joint(j).range[0]) - 1e-3, float(m.joint(j).range[1]) + 1e-3],
                        "velocity": 2.0, "acceleration": 10.0, "effort": DATASHEETS["gr1"][j].effort}
                       for g in ("left_arm", "right_arm", "waist") for j in GR1_GROUPS[g]],
            "groups": {
                "left_arm": {"controller": "joint_trajectory", "controller_name": "left_arm_controller",
                             "joints": GR1_GROUPS["left_arm"], "ee_link": "left_eef"},
                "right_arm": {"controller": "cartesian_impedance", "controller_name": "right_arm_controller",
                              "joints": GR1_GROUPS["right_arm"], "ee_link": "right_eef"},
                "waist": {"controller": "forward_position", "controller_name": "waist_controller",
                          "joints": GR1_GROUPS["waist"]},
            },
            "hold_controller": "hold_controller",
        },
        "model": {"package": "models/none"},
        "sim": {"robot": "gr1"},
        "nodes": [],
    })
    r = SimRobot(cfg, scene=scene)
    assert {c.name for c in r.list_controllers()} >= {"left_arm_controller", "right_arm_controller",
                                                     "waist_controller", "hold_controller"}
    base0 = r.data.xpos[r.base_body].copy()
    q0 = r.joint_state().positions
    _run(r, 1.0)
    np.testing.assert_allclose(r.data.xpos[r.base_body], base0, atol=1e-9)  # welded pelvis
    assert np.abs(r.joint_state().positions - q0).max() < 0.01
    la = np.array(r.joint_state().positions[:7])
    assert r.accept("left_arm_controller", TrajectoryCommand(GR1_GROUPS["left_arm"], [1.0],
                                                             [la + np.array([-0.3, 0.2, 0, -0.4, 0, 0, 0])]))
    _run(r, 1.5)
    assert np.abs(r.joint_state().positions[:7] - la - np.array([-0.3, 0.2, 0, -0.4, 0, 0, 0])).max() < 0.01
