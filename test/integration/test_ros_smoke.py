"""The venv's ROS 2 really works: two OS processes exchange messages and call services over DDS."""

import subprocess
import sys
import textwrap

import pytest
from sensor_msgs.msg import JointState

from test.conftest import wait_for

pytestmark = pytest.mark.integration

TALKER = textwrap.dedent(
    """
    import rclpy, sys
    from sensor_msgs.msg import JointState
    rclpy.init()
    node = rclpy.create_node("smoke_talker")
    pub = node.create_publisher(JointState, "/smoke/joint_states", 10)
    count = [0]
    def tick():
        m = JointState(name=["j1", "j2"], position=[0.1 * count[0], -1.0])
        m.header.stamp = node.get_clock().now().to_msg()
        pub.publish(m)
        count[0] += 1
    node.create_timer(1 / 30, tick)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    """
)


def test_joint_states_cross_process(ros_env, probe):
    got = probe.collect(JointState, "/smoke/joint_states")
    proc = subprocess.Popen([sys.executable, "-c", TALKER], env=ros_env)
    try:
        wait_for(lambda: len(got) >= 10, timeout=20, what="10 JointState messages from another process")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    msgs = [m for _, m in got]
    assert msgs[-1].name == ["j1", "j2"]
    assert msgs[-1].position[1] == -1.0
    positions = [m.position[0] for m in msgs]
    assert positions == sorted(positions), "messages arrived out of order"


def test_generated_controller_manager_types_roundtrip(probe):
    """The generated controller_manager_msgs types serve and answer across processes."""
    from controller_manager_msgs.srv import ListControllers

    server = textwrap.dedent(
        """
        import rclpy
        from controller_manager_msgs.srv import ListControllers
        from controller_manager_msgs.msg import ControllerState
        rclpy.init()
        node = rclpy.create_node("controller_manager")
        def cb(req, resp):
            resp.controller = [ControllerState(name="arm_controller", state="active",
                type="joint_trajectory_controller/JointTrajectoryController")]
            return resp
        node.create_service(ListControllers, "/controller_manager/list_controllers", cb)
        try:
            rclpy.spin(node)
        except KeyboardInterrupt:
            pass
        """
    )
    import os

    proc = subprocess.Popen([sys.executable, "-c", server], env=dict(os.environ))
    try:
        resp = probe.call(ListControllers, "/controller_manager/list_controllers", ListControllers.Request(), 20)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [(c.name, c.state) for c in resp.controller] == [("arm_controller", "active")]
