"""The MuJoCo robot node as a real process: ros2_control interfaces over DDS."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from controller_manager_msgs.srv import ListControllers, SwitchController
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from test.conftest import node_logs, wait_for
from vla_runtime.graph.supervisor import NodeSpec
from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_SENSOR

pytestmark = pytest.mark.integration

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
DQ = np.array([0.3, 0.2, -0.2, 0.3, 0.3, -0.3, 0.4])
STARTUP_S = 20.0


def _start(supervisor, cfg_path, probe, tmp_path) -> list:
    """Start the node; return the live /joint_states list once messages flow."""
    js = probe.collect(JointState, "/joint_states", 50)
    supervisor.start(NodeSpec("sim_robot", "vla_runtime.nodes.sim_robot", str(cfg_path)))
    if not wait_for(lambda: len(js) > 10, STARTUP_S):
        raise AssertionError(f"no /joint_states from sim_robot within {STARTUP_S}s\n{node_logs(tmp_path)}")
    return js


def _arm(js: list) -> np.ndarray:
    msg = js[-1][1]
    return np.array([msg.position[list(msg.name).index(j)] for j in ARM])


def _publisher(probe, msg_type, topic):
    pub = probe.node.create_publisher(msg_type, topic, QOS_COMMAND)
    wait_for(lambda: pub.get_subscription_count() > 0, 10.0, what=f"sim_robot subscribed to {topic}")
    return pub


def _trajectory(q: np.ndarray, t: float, names=ARM) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(names))
    msg.points = [JointTrajectoryPoint(positions=[float(v) for v in q])]
    msg.points[0].time_from_start.sec = int(t)
    msg.points[0].time_from_start.nanosec = int((t - int(t)) * 1e9)
    return msg


def test_state_rates_images_and_controllers(supervisor, probe, write_config, tmp_path):
    cfg = write_config("sim_panda.yaml", {})
    images = probe.collect(Image, "/camera/scene/image_raw", QOS_SENSOR)
    poses = probe.collect(PoseStamped, "/ee_pose", 50)
    objects = probe.collect(String, "/sim/objects", QOS_LATCHED)
    js = _start(supervisor, cfg, probe, tmp_path)
    wait_for(lambda: len(images) > 0, 10.0, what="a camera image")
    time.sleep(0.5)
    n_js, n_img, n_pose, t0 = len(js), len(images), len(poses), time.monotonic()
    time.sleep(2.0)
    window = [t for t, _ in js[n_js:] if t <= t0 + 2.0]
    js_rate = (len(window) - 1) / (window[-1] - window[0])
    img_rate = (len(images) - n_img) / (time.monotonic() - t0)
    pose_rate = (len(poses) - n_pose) / (time.monotonic() - t0)
    print(f"joint_states {js_rate:.1f} Hz, ee_pose {pose_rate:.1f} Hz, images {img_rate:.1f} Hz")
    assert js_rate >= 245.0, f"/joint_states at {js_rate:.1f} Hz"
    assert len(window) >= 490, f"{len(window)} joint states in 2 s"
    assert pose_rate >= 90.0, f"/ee_pose at {pose_rate:.1f} Hz"
    assert 7.0 <= img_rate <= 11.0, f"images at {img_rate:.1f} Hz, configured 10"
    img = images[-1][1]
    assert (img.width, img.height, img.encoding, img.step) == (96, 96, "rgb8", 288)
    assert len(img.data) == 96 * 96 * 3
    msg = js[-1][1]
    assert list(msg.name) == ARM + ["panda_finger_joint1"]
    np.testing.assert_allclose(_arm(js), HOME, atol=2e-3)
    assert poses[-1][1].header.frame_id == "panda_link0"
    wait_for(lambda: len(objects) > 0, 5.0, what="/sim/objects")
    assert set(json.loads(objects[-1][1].data)["objects"]) == {"red_cube", "green_cube", "blue_cube"}

    resp = probe.call(ListControllers, "/controller_manager/list_controllers", ListControllers.Request())
    states = {c.name: (c.state, c.type) for c in resp.controller}
    assert states["arm_controller"] == ("active", "joint_trajectory_controller/JointTrajectoryController")
    assert states["gripper_controller"][0] == "active"
    assert states["hold_controller"][0] == "inactive"
    arm = next(c for c in resp.controller if c.name == "arm_controller")
    assert list(arm.claimed_interfaces) == [f"{j}/position" for j in ARM]


def test_trajectory_moves_arm_and_switch_makes_commands_ignored(supervisor, probe, write_config, tmp_path):
    cfg = write_config("sim_panda.yaml", {})
    js = _start(supervisor, cfg, probe, tmp_path)
    pub = _publisher(probe, JointTrajectory, "/arm_controller/joint_trajectory")
    target = HOME + DQ
    pub.publish(_trajectory(target[::-1], 1.0, ARM[::-1]))  # joint order differs from the controller's
    wait_for(lambda: np.abs(_arm(js) - target).max() < 0.01, 8.0,
             what=f"arm at the trajectory's end point (last {_arm(js).round(3).tolist()})")
    time.sleep(0.3)
    err = np.abs(_arm(js) - target).max()
    print(f"JTC final error {err * 1e3:.3f} mrad")
    assert err < 0.002

    req = SwitchController.Request(deactivate_controllers=["arm_controller"],
                                   strictness=SwitchController.Request.STRICT)
    resp = probe.call(SwitchController, "/controller_manager/switch_controller", req)
    assert resp.ok, resp.message
    # Activating the hold controller while the gripper still claims its joint fails in STRICT mode.
    req = SwitchController.Request(activate_controllers=["hold_controller"], strictness=SwitchController.Request.STRICT)
    resp = probe.call(SwitchController, "/controller_manager/switch_controller", req)
    assert not resp.ok and "gripper_controller" in resp.message
    held = _arm(js)
    pub.publish(_trajectory(HOME, 0.5))
    time.sleep(1.5)
    assert np.abs(_arm(js) - held).max() < 0.003, "an inactive controller moved the arm"
    resp = probe.call(ListControllers, "/controller_manager/list_controllers", ListControllers.Request())
    assert {c.name: c.state for c in resp.controller}["arm_controller"] == "inactive"


def test_forward_position_controller(supervisor, probe, write_config, tmp_path):
    cfg = write_config("sim_panda.yaml", {"robot": {"groups": {"arm": {
        "controller": "forward_position", "controller_name": "arm_position_controller"}}}})
    js = _start(supervisor, cfg, probe, tmp_path)
    pub = _publisher(probe, Float64MultiArray, "/arm_position_controller/commands")
    pub.publish(Float64MultiArray(data=[1.0, 2.0]))  # malformed: ignored
    target = HOME - 0.5 * DQ
    pub.publish(Float64MultiArray(data=[float(v) for v in target]))
    wait_for(lambda: np.abs(_arm(js) - target).max() < 0.003, 8.0,
             what=f"arm at the forward position command (last {_arm(js).round(3).tolist()})")


def test_cartesian_impedance_moves_hand_toward_target(supervisor, probe, write_config, tmp_path):
    cfg = write_config("sim_panda.yaml", {"robot": {"groups": {"arm": {
        "controller": "cartesian_impedance", "controller_name": "cartesian_controller",
        "stiffness_limits": [0.0, 3000.0]}}}})
    poses = probe.collect(PoseStamped, "/ee_pose", 50)
    _start(supervisor, cfg, probe, tmp_path)
    wait_for(lambda: len(poses) > 0, 5.0, what="/ee_pose")
    start = poses[-1][1].pose
    p0 = np.array([start.position.x, start.position.y, start.position.z])
    goal = p0 + np.array([0.05, 0.08, -0.08])
    pub = _publisher(probe, PoseStamped, "/cartesian_controller/target_pose")
    msg = PoseStamped()
    msg.header.frame_id = "panda_link0"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in goal)
    msg.pose.orientation = start.orientation
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # streamed like a real Cartesian target (50 Hz)
        msg.header.stamp = probe.node.get_clock().now().to_msg()
        pub.publish(msg)
        time.sleep(0.02)
    p = poses[-1][1].pose.position
    dist = float(np.linalg.norm(np.array([p.x, p.y, p.z]) - goal))
    print(f"Cartesian impedance: {np.linalg.norm(goal - p0) * 1e3:.0f} mm away at start, {dist * 1e3:.1f} mm after 3 s")
    assert dist < 0.01


def test_physics_and_cameras_outlive_publishes_the_middleware_refuses(probe, write_config):
    """The simulator's twin of the fast path's refused publish: Fast DDS may refuse a publish under
    load (rclpy ``RCLError: cannot publish data``). The physics loop used to re-raise it and stop
    (the robot frozen, its joint states gone). The node runs in this process with its real physics
    and render threads and DDS publishers; the joint-state publisher refuses its next 5 publishes and
    the camera's its next 2: physics and rendering go on, joint states and frames arrive again, and
    the refusals are counted in diagnostics."""
    from test.conftest import RefusingPublisher, node_in_this_process
    from vla_runtime.graph.harness import DiagnosticsWatch
    from vla_runtime.nodes.sim_robot import SimRobotNode

    cfg = write_config("sim_panda.yaml", {})
    js = probe.collect(JointState, "/joint_states", 50)
    images = probe.collect(Image, "/camera/scene/image_raw", QOS_SENSOR)
    diags = DiagnosticsWatch(probe)
    with node_in_this_process(SimRobotNode, cfg, stop=lambda n: n.shutdown()) as node:
        wait_for(lambda: len(js) > 10 and len(images) > 2, STARTUP_S, what="joint states and frames from sim_robot")
        js_refusing = node._js_pub = RefusingPublisher(node._js_pub, 5)
        cam_refusing = node._img_pubs[0] = RefusingPublisher(node._img_pubs[0], 2)
        wait_for(lambda: js_refusing.left == 0 and cam_refusing.left == 0, 5, what="the refused publishes")
        n_js, n_img, sim_t = len(js), len(images), node.robot.time
        wait_for(lambda: len(js) >= n_js + 50 and len(images) >= n_img + 3, 10,
                 what="joint states and frames again after the refusals")
        assert node._physics.error is None and node._physics.running
        assert node._render.is_alive()
        assert node.robot.time > sim_t
        wait_for(lambda: diags.latest("sim_robot: physics").get("state_publish_errors") == "5", 5,
                 what="the refused joint states in sim_robot's diagnostics")
        assert "cannot publish data" in diags.latest("sim_robot: physics")["last_publish_error"]
        assert diags.latest("sim_robot: cameras")["frame_publish_errors"] == "2"
