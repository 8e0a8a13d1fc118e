"""Reference tasks: instructions, success check, target motion and the scripted expert (no ROS)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.sim.tasks import (
    COLOURS,
    SUCCESS_RADIUS_M,
    TCP_OFFSET_IN_HAND,
    TargetMotion,
    instruction_for,
    is_success,
    make_episode,
    parse_instruction,
    run_expert_episode,
    tcp_from_hand,
)


@pytest.fixture(scope="module")
def robot():
    from vla_runtime.sim.robot import SimRobot

    return SimRobot(load_config(PROJECT_ROOT / "config" / "sim_panda.yaml"))


@pytest.mark.parametrize("colour", COLOURS)
def test_instruction_round_trip(colour):
    assert parse_instruction(instruction_for(colour)) == f"{colour}_cube"


@pytest.mark.parametrize("text,cube", [("Touch the BLUE cube please", "blue_cube"),
                                       ("now touch  the green block", "green_cube")])
def test_parse_instruction_tolerates_case_and_wording(text, cube):
    assert parse_instruction(text) == cube


@pytest.mark.parametrize("text", ["", "pick up the red cube", "touch the yellow cube"])
def test_parse_instruction_rejects_other_text(text):
    with pytest.raises(ValueError, match="not a touch instruction"):
        parse_instruction(text)


def test_instruction_for_unknown_colour():
    with pytest.raises(ValueError, match="purple"):
        instruction_for("purple")


def test_success_is_a_ball_of_three_centimetres():
    target = np.array([0.5, 0.1, 0.02])
    assert is_success(target + [0, 0, SUCCESS_RADIUS_M - 1e-4], target)
    assert is_success(target + [0.02, 0.02, 0.0], target)
    assert not is_success(target + [0.0, 0.0, SUCCESS_RADIUS_M + 1e-3], target)


def test_tcp_from_hand_matches_the_model(robot):
    sid = mujoco.mj_name2id(robot.model, mujoco.mjtObj.mjOBJ_SITE, "panda_tcp")
    p, q = robot.ee_pose("arm")
    np.testing.assert_allclose(tcp_from_hand(p, q), robot.data.site_xpos[sid], atol=1e-6)
    assert TCP_OFFSET_IN_HAND[2] > 0.05


def test_target_motion_is_a_steady_back_and_forth_slide():
    m = TargetMotion((0.5, 0.0, 0.02), (0.0, 1.0, 0.0), speed=0.05, length=0.1)
    np.testing.assert_allclose(m.position(0.0), [0.5, 0.0, 0.02])
    np.testing.assert_allclose(m.position(1.0), [0.5, 0.05, 0.02])
    np.testing.assert_allclose(m.position(2.0), [0.5, 0.1, 0.02])  # turns at the far end
    np.testing.assert_allclose(m.position(3.0), [0.5, 0.05, 0.02])
    np.testing.assert_allclose(m.position(4.0), [0.5, 0.0, 0.02])
    speeds = np.linalg.norm(np.diff([m.position(t) for t in np.arange(0, 6, 0.1)], axis=0), axis=1) / 0.1
    assert np.all(speeds <= 0.05 + 1e-9)


def test_dynamic_episode_slides_clear_of_other_cubes(robot):
    for seed in range(10):
        robot.reset(seed)
        poses = robot.object_poses()
        ep = make_episode("touch_dynamic", seed, poses)
        assert ep.motion is not None and ep.target == parse_instruction(ep.instruction)
        path = np.array([ep.motion.position(t) for t in np.arange(0, 6, 0.2)])
        assert np.all((path[:, 0] >= 0.35) & (path[:, 0] <= 0.67) & (np.abs(path[:, 1]) <= 0.27))
    assert make_episode("touch", 3, poses).motion is None
    with pytest.raises(ValueError, match="task"):
        make_episode("grasp", 0, poses)


@pytest.mark.parametrize("colour", COLOURS)
def test_expert_touches_each_colour_in_sim_time(robot, colour):
    log = run_expert_episode(robot, "touch", seed=11, duration_s=4.0, colour=colour, stop_on_success=True)
    assert log.spec.target == f"{colour}_cube"
    assert log.success, f"expert missed the {colour} cube (closest {log.min_distance:.3f} m)"
    assert log.success_time_s < 3.0
    assert log.actions.shape[1:] == (16, 7)


def test_expert_follows_a_sliding_target(robot):
    log = run_expert_episode(robot, "touch_dynamic", seed=5, duration_s=5.0)
    assert log.success
    late = np.linalg.norm(log.tcp[-30:] - log.target[-30:], axis=1)
    assert np.all(late < SUCCESS_RADIUS_M), f"lost the sliding target: {late.max():.3f} m"


def test_training_labels_put_each_cube_where_the_camera_sees_it(robot):
    """tools/train_reference.py labels the slow model's heat map with the named cube's position
    projected through the scene camera: check that projection against rendered pixels."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reference", PROJECT_ROOT / "tools" / "train_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # no torch needed for the projection
    project = tool.camera_projection()
    dominant = {"red_cube": 0, "green_cube": 1, "blue_cube": 2}
    for seed in (3, 11):
        robot.reset(seed)
        img = robot.render("scene", tool.IMG, tool.IMG).astype(int)
        for name, (pos, _) in robot.object_poses().items():
            u, v = project(np.asarray(pos, float)[None])[0]
            c = dominant[name]
            others = [k for k in range(3) if k != c]
            mask = (img[..., c] > 120) & np.all(img[..., c][..., None] > img[..., others] + 60, axis=-1)
            rows, cols = np.nonzero(mask)
            assert len(rows) >= 3, f"{name} not visible in the render (seed {seed})"
            centre = np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # pixel centres
            assert np.linalg.norm(centre - [u, v]) < 1.5, (name, seed, centre, (u, v))
