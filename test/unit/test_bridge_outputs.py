"""One output per controller kind: the exact message each would put on the wire (no ROS graph).

Outputs are built with a publish callable per topic that appends to a list, so each test reads
what would have been sent: message type, joint names, values, stamps, time_from_start, frame_id.
"""

from __future__ import annotations

import numpy as np
import pytest
from controller_manager_msgs.srv import SwitchController
from geometry_msgs.msg import PoseStamped, Twist
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.bridge.chunks import ChunkValidator, PolicyTrack, ValidChunk
from vla_runtime.core.bridge.groups import GroupState, Taken
from vla_runtime.core.command_mapping import (
    GripperCommand,
    JointCommand,
    PoseCommand,
    TwistCommand,
)
from vla_runtime.core.config import load_config
from vla_runtime.core.rotation import rotvec_to_quaternion
from vla_runtime.core.safety_filter import SafetyFilter
from vla_runtime.core.teleop import TeleopIntegrator, TeleopLimits
from vla_runtime.nodes.bridge_outputs import (
    HOLD_TRAJECTORY_S,
    OUTPUTS,
    TELEOP_FRAME_ID,
    TELEOP_LEAD_PERIODS,
    BaseTwistOutput,
    CartesianImpedanceOutput,
    ForwardPositionOutput,
    ForwardVelocityOutput,
    GripperOutput,
    JointImpedanceOutput,
    JointTrajectoryOutput,
    RclpyControllerManager,
    build_output,
)

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
PERIOD = 0.01
T0 = 1234.5  # a stamp with a fractional second
POSE = ("x", "y", "z", "qx", "qy", "qz", "qw")
PANDA_LINK0 = "panda_link0"


class Wire:
    """Stands in for the node's publishers: one list per topic."""

    def __init__(self) -> None:
        self.types: dict[str, type] = {}
        self.sent: dict[str, list] = {}

    def advertise(self, msg_type: type, topic: str):
        self.types[topic] = msg_type
        return self.sent.setdefault(topic, []).append

    def only(self, topic: str):
        assert len(self.sent[topic]) == 1, self.sent[topic]
        msg = self.sent[topic][0]
        assert type(msg) is self.types[topic]
        return msg


def secs(t) -> float:
    return t.sec + t.nanosec * 1e-9


ARM_VARIANTS = {
    "joint_trajectory": {},
    "forward_position": {"controller": "forward_position"},
    "forward_velocity": {"controller": "forward_velocity"},
    "joint_impedance": {"controller": "joint_impedance", "stiffness_limits": [0.0, 600.0]},
    "cartesian_impedance": {"controller": "cartesian_impedance", "frame_id": PANDA_LINK0,
                            "stiffness_limits": [10.0, 1000.0]},
}


@pytest.fixture
def make(write_config):
    """``make(kind)`` → (config, safety, wire, {group: (GroupState, output)}) with the arm of that kind."""

    def _make(kind: str):
        groups = {"arm": ARM_VARIANTS.get(kind, {}),
                  "base": {"controller": "base_twist", "controller_name": "base_controller"}}
        cfg = load_config(write_config("sim_panda.yaml", {"robot": {"groups": groups}}))
        safety = SafetyFilter(cfg.robot, cfg.safety, command_period_s=PERIOD)
        wire = Wire()
        built = {}
        for name, spec in cfg.robot.groups.items():
            out = build_output(name, spec, PERIOD, safety, wire.advertise)
            built[name] = (GroupState(name, spec, PERIOD, out), out)
        return cfg, safety, wire, built

    return _make


def twin(cfg) -> SafetyFilter:
    """A second filter from the same config: what the output's filter call must give."""
    return SafetyFilter(cfg.robot, cfg.safety, command_period_s=PERIOD)


def chunk(cfg, safety, names, rows, dt: float = PERIOD, stamp: float = T0) -> ValidChunk:
    c = ChunkValidator(cfg.robot, safety).validate(tuple(names), stamp, [list(r) for r in rows],
                                                   [k * dt for k in range(len(rows))])
    assert isinstance(c, ValidChunk), c
    return c


@pytest.mark.parametrize("kind, cls, topic, msg_type", [
    ("joint_trajectory", JointTrajectoryOutput, "/arm_controller/joint_trajectory", JointTrajectory),
    ("forward_position", ForwardPositionOutput, "/arm_controller/commands", Float64MultiArray),
    ("forward_velocity", ForwardVelocityOutput, "/arm_controller/commands", Float64MultiArray),
    ("joint_impedance", JointImpedanceOutput, "/arm_controller/target_joint", JointState),
    ("cartesian_impedance", CartesianImpedanceOutput, "/arm_controller/target_pose", PoseStamped),
])
def test_each_controller_kind_gets_its_output_and_topic(make, kind, cls, topic, msg_type):
    _, _, wire, built = make(kind)
    assert type(built["arm"][1]) is cls and OUTPUTS[kind] is cls
    assert type(built["gripper"][1]) is GripperOutput and type(built["base"][1]) is BaseTwistOutput
    expected = {topic: msg_type, "/gripper_controller/commands": Float64MultiArray,
                "/base_controller/cmd_vel": Twist}
    if kind in ("joint_impedance", "cartesian_impedance"):  # impedance groups with stiffness_limits
        expected["/arm_controller/target_stiffness"] = Float64MultiArray
    assert wire.types == expected
    assert built["arm"][0].streaming is (kind != "joint_trajectory")


# ------------------------------------------------------------------ joint_trajectory
def test_a_joint_trajectory_group_sends_the_filtered_chunk_whole(make):
    cfg, safety, wire, built = make("joint_trajectory")
    group, out = built["arm"]
    safety.reset_reference(dict(zip(ARM, HOME)))
    rows = [HOME + 0.001 * k for k in range(5)]
    c = chunk(cfg, safety, ARM, rows)
    assert out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0) is Taken.SENT
    msg = wire.only("/arm_controller/joint_trajectory")
    assert secs(msg.header.stamp) == pytest.approx(T0, abs=1e-9) and msg.header.frame_id == ""
    assert msg.joint_names == ARM
    assert [secs(p.time_from_start) for p in msg.points] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    expect = twin(cfg)
    expect.reset_reference(dict(zip(ARM, HOME)))
    for k, (p, row) in enumerate(zip(msg.points, rows)):  # each point through filter_joint, in time order
        np.testing.assert_array_equal(p.positions, expect.filter_joint(ARM, row, T0 + k * PERIOD).values)
        assert len(p.velocities) == 0
    assert np.abs(np.array([p.positions for p in msg.points]) - rows).max() < 1e-3
    np.testing.assert_array_equal(group.published[1], [p.positions for p in msg.points])
    assert not group.hold_dirty


def test_a_joint_trajectory_chunk_drops_points_in_the_past_and_filters_in_the_controllers_order(make):
    cfg, safety, wire, built = make("joint_trajectory")
    group, out = built["arm"]
    safety.reset_reference(dict(zip(ARM, HOME)))
    names = list(reversed(ARM))
    rows = [(HOME + [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5 * k])[::-1] for k in range(5)]  # joint 7 jumps
    c = chunk(cfg, safety, names, rows)
    out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0 + 0.025)
    msg = wire.only("/arm_controller/joint_trajectory")
    assert [secs(p.time_from_start) for p in msg.points] == pytest.approx([0.03, 0.04])  # relative to the stamp
    assert msg.joint_names == ARM
    step = safety.safety.max_joint_step_rad
    assert msg.points[0].positions[6] <= HOME[6] + 2 * step + 1e-9  # step-limited, not the raw jump
    assert out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0 + 1.0) is Taken.STALE
    assert len(wire.sent["/arm_controller/joint_trajectory"]) == 1


def test_a_joint_trajectory_point_the_filter_refuses_sends_nothing(make):
    cfg, safety, wire, built = make("joint_trajectory")
    group, out = built["arm"]  # no reference state: the filter refuses
    c = chunk(cfg, safety, ARM, [HOME] * 3)
    r = out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0)
    assert r.rejected and r.reason.startswith("no reference state for panda_joint1")
    assert wire.sent["/arm_controller/joint_trajectory"] == [] and group.published is None


def test_a_joint_trajectory_hold_is_one_point_with_zero_velocities_reached_in_hold_trajectory_s(make):
    _, _, wire, built = make("joint_trajectory")
    built["arm"][1].publish_command(JointCommand("arm", tuple(ARM), HOME), T0)
    msg = wire.only("/arm_controller/joint_trajectory")
    assert secs(msg.header.stamp) == pytest.approx(T0, abs=1e-9)
    assert msg.joint_names == ARM and len(msg.points) == 1
    p = msg.points[0]
    np.testing.assert_array_equal(p.positions, HOME)
    np.testing.assert_array_equal(p.velocities, np.zeros(7))
    assert (p.time_from_start.sec, p.time_from_start.nanosec) == (0, int(HOLD_TRAJECTORY_S * 1e9))


def test_a_joint_trajectory_teleop_command_leads_by_two_periods_with_the_integrators_velocities(make):
    _, _, wire, built = make("joint_trajectory")
    qdot = np.arange(7) * 0.01
    built["arm"][1].publish_teleop(HOME + 0.001, qdot, T0)
    msg = wire.only("/arm_controller/joint_trajectory")
    assert msg.header.frame_id == TELEOP_FRAME_ID == "teleop"
    assert secs(msg.header.stamp) == pytest.approx(T0, abs=1e-9)
    (p,) = msg.points
    np.testing.assert_allclose(p.positions, HOME + 0.001)
    np.testing.assert_allclose(p.velocities, qdot)
    assert secs(p.time_from_start) == pytest.approx(TELEOP_LEAD_PERIODS * PERIOD)


# ------------------------------------------------------------------ forward commands
def test_forward_position_streams_the_filtered_sample_as_float64_array(make):
    cfg, safety, wire, built = make("forward_position")
    group, out = built["arm"]
    safety.reset_reference(dict(zip(ARM, HOME)))
    c = chunk(cfg, safety, ARM, [HOME, HOME + 0.002])
    assert out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0) is Taken.STORED
    r = out.filter_policy(group.policy, T0 + 0.005, {})  # halfway between the points
    expect = twin(cfg)
    expect.reset_reference(dict(zip(ARM, HOME)))
    np.testing.assert_allclose(r.values, expect.filter_joint(ARM, HOME + 0.001, T0 + 0.005).values, atol=1e-12)
    out.publish_sample(r.values, T0 + 0.005)
    assert wire.only("/arm_controller/commands").data.tolist() == r.values.tolist()
    out.publish_command(JointCommand("arm", tuple(ARM), HOME), T0)
    assert wire.sent["/arm_controller/commands"][1].data.tolist() == HOME.tolist()


def test_forward_position_teleop_filters_the_joint_target_and_keeps_the_integrator_on_it(make):
    cfg, safety, wire, built = make("forward_position")
    _, out = built["arm"]
    safety.reset_reference(dict(zip(ARM, HOME)))
    tp = TeleopIntegrator(ARM, None, TeleopLimits(0.1, 0.5))
    tp.start_joints(dict(zip(ARM, HOME)))
    far = HOME + 1.0  # beyond one step: the filter limits it
    r = out.filter_teleop(tp, far, T0, {})
    assert not r.rejected and np.all(r.values < far)
    np.testing.assert_array_equal(tp.q, r.values)
    out.publish_teleop(r.values, tp.qdot, T0)
    assert wire.only("/arm_controller/commands").data.tolist() == pytest.approx(r.values.tolist())


def test_forward_velocity_limits_velocities_and_holds_with_zeros(make):
    cfg, safety, wire, built = make("forward_velocity")
    group, out = built["arm"]
    track = PolicyTrack(np.array([T0, T0 + 0.1]), np.tile(np.full(7, 10.0), (2, 1)))
    measured = dict(zip(ARM, HOME))
    r = out.filter_policy(track, T0 + 0.05, measured)
    np.testing.assert_array_equal(r.values, twin(cfg).filter_joint_velocity(ARM, np.full(7, 10.0), T0 + 0.05,
                                                                            measured).values)
    assert 0.0 < r.values[0] < 10.0
    hold = JointCommand("arm", tuple(ARM), np.zeros(7), "velocity")
    out.publish_command(hold, T0)
    assert wire.only("/arm_controller/commands").data.tolist() == [0.0] * 7
    tp = TeleopIntegrator(ARM, None, TeleopLimits(0.1, 0.5))
    tp.start_joints(dict(zip(ARM, HOME)))
    tp.qdot = np.full(7, 0.01)
    r = out.filter_teleop(tp, HOME, T0 + 20.0, dict(zip(ARM, HOME)))
    np.testing.assert_allclose(r.values, 0.01)  # the integrator's velocities, not its positions


# ------------------------------------------------------------------ gripper, joint impedance, base
def test_a_gripper_clips_into_its_range_and_holds_its_opening(make):
    cfg, safety, wire, built = make("joint_trajectory")
    group, out = built["gripper"]
    c = chunk(cfg, safety, ["gripper/gripper"], [[0.5], [0.5]])
    out.take_policy(group, c, c.mapper.group_values(c.values, "gripper"), T0)
    r = out.filter_policy(group.policy, T0, {})
    assert r.values.tolist() == [0.04]
    out.publish_sample(r.values, T0)
    out.publish_command(GripperCommand("gripper", 0.02), T0)
    assert [m.data.tolist() for m in wire.sent["/gripper_controller/commands"]] == [[0.04], [0.02]]


def test_joint_impedance_sends_a_stamped_named_joint_target(make):
    cfg, safety, wire, built = make("joint_impedance")
    _, out = built["arm"]
    out.publish_command(JointCommand("arm", tuple(ARM), HOME), T0)
    msg = wire.only("/arm_controller/target_joint")
    assert msg.name == ARM and list(msg.position) == HOME.tolist()
    assert secs(msg.header.stamp) == pytest.approx(T0, abs=1e-9)
    assert wire.sent["/arm_controller/target_stiffness"] == []


def test_a_base_sends_planar_twists_and_holds_with_a_stop(make):
    cfg, safety, wire, built = make("joint_trajectory")
    group, out = built["base"]
    c = chunk(cfg, safety, ["base/vx", "base/vy", "base/wz"], [[0.1, -0.05, 0.2]] * 2)
    out.take_policy(group, c, c.mapper.group_values(c.values, "base"), T0)
    r = out.filter_policy(group.policy, T0, {})
    out.publish_sample(r.values, T0)
    out.publish_command(TwistCommand("base", 0.0, 0.0, 0.0), T0)
    moving, stop = wire.sent["/base_controller/cmd_vel"]
    assert (moving.linear.x, moving.linear.y, moving.angular.z) == pytest.approx((0.1, -0.05, 0.2))
    assert (moving.linear.z, moving.angular.x, moving.angular.y) == (0.0, 0.0, 0.0)
    assert (stop.linear.x, stop.linear.y, stop.angular.z) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ cartesian impedance
def test_cartesian_sends_the_pose_in_its_frame_and_the_stiffness_clipped_to_its_limits(make):
    cfg, safety, wire, built = make("cartesian_impedance")
    group, out = built["arm"]
    q = [0.0, 1.0, 0.0, 0.0]
    safety.reset_pose_reference("arm", [0.4, 0.0, 0.4], q)
    names = [f"arm/{d}" for d in POSE] + ["arm/stiffness_trans", "arm/stiffness_rot"]
    rows = [[0.4, 0.0, 0.4, *q, 2000.0, 5.0], [0.41, 0.0, 0.4, *q, 2000.0, 5.0]]
    c = chunk(cfg, safety, names, rows)
    out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0)
    r = out.filter_policy(group.policy, T0 + 0.005, {})
    assert not r.rejected
    out.publish_sample(r.values, T0 + 0.005)
    pose = wire.only("/arm_controller/target_pose")
    assert pose.header.frame_id == PANDA_LINK0
    assert secs(pose.header.stamp) == pytest.approx(T0 + 0.005, abs=1e-9)
    p, o = pose.pose.position, pose.pose.orientation
    assert (p.x, p.y, p.z) == pytest.approx((0.405, 0.0, 0.4))
    assert (o.x, o.y, o.z, o.w) == pytest.approx(tuple(q))
    stiffness = wire.only("/arm_controller/target_stiffness")
    assert stiffness.data.tolist() == [1000.0, 10.0]  # [2000, 5] clipped to [10, 1000]


def test_cartesian_without_stiffness_dims_sends_no_stiffness_and_converts_axis_angle(make):
    cfg, safety, wire, built = make("cartesian_impedance")
    group, out = built["arm"]
    rv = [0.0, 0.0, 0.3]
    c = chunk(cfg, safety, [f"arm/{d}" for d in ("x", "y", "z", "rx", "ry", "rz")], [[0.4, 0.0, 0.4, *rv]] * 2)
    out.take_policy(group, c, c.mapper.group_values(c.values, "arm"), T0)
    assert group.policy.stiffness is None
    np.testing.assert_allclose(group.policy.values[0], [0.4, 0.0, 0.4, *rotvec_to_quaternion(rv)])
    safety.reset_pose_reference("arm", [0.4, 0.0, 0.4], rotvec_to_quaternion(rv))
    out.filter_policy(group.policy, T0, {})
    assert wire.sent["/arm_controller/target_stiffness"] == []


def test_cartesian_hold_is_the_measured_pose(make):
    _, _, wire, built = make("cartesian_impedance")
    built["arm"][1].publish_command(
        PoseCommand("arm", PANDA_LINK0, np.array([0.3, 0.1, 0.5]), np.array([1.0, 0.0, 0.0, 0.0])), T0)
    msg = wire.only("/arm_controller/target_pose")
    p, o = msg.pose.position, msg.pose.orientation
    assert (p.x, p.y, p.z, o.x, o.y, o.z, o.w) == (0.3, 0.1, 0.5, 1.0, 0.0, 0.0, 0.0)
    assert msg.header.frame_id == PANDA_LINK0 and secs(msg.header.stamp) == pytest.approx(T0, abs=1e-9)


# ------------------------------------------------------------------ controller_manager client
class FakeClient:
    def __init__(self, srv_type, ready: bool = True) -> None:
        self.srv_type = srv_type
        self.ready = ready
        self.requests: list = []
        self.removed: list = []

    def service_is_ready(self) -> bool:
        return self.ready

    def call_async(self, request):
        self.requests.append(request)
        return ("future", len(self.requests))

    def remove_pending_request(self, future) -> None:
        self.removed.append(future)


def test_the_rclpy_controller_manager_sends_a_strict_switch_with_a_timeout():
    from controller_manager_msgs.srv import ListControllers

    lst, sw = FakeClient(ListControllers), FakeClient(SwitchController, ready=False)
    cm = RclpyControllerManager(lst, sw)
    assert cm.list_controllers() == ("future", 1) and isinstance(lst.requests[0], ListControllers.Request)
    assert cm.switch_controllers(("hold_controller",), ("arm_controller",), 2.5) is None  # not available yet
    sw.ready = True
    assert cm.switch_controllers(("hold_controller",), ("arm_controller",), 2.5) == ("future", 1)
    req = sw.requests[0]
    assert list(req.activate_controllers) == ["hold_controller"]
    assert list(req.deactivate_controllers) == ["arm_controller"]
    assert req.strictness == SwitchController.Request.STRICT and req.activate_asap
    assert (req.timeout.sec, req.timeout.nanosec) == (2, 500_000_000)
    cm.forget(("future", 1))
    assert lst.removed == sw.removed == [("future", 1)]



def test_every_controller_kind_has_its_output_and_its_simulated_controller() -> None:
    """core/controller_kinds is the one table: each kind's output adapter sends the message type the
    table names, and the simulator has a controller for it (so a new kind is not half added)."""
    from vla_runtime.core.controller_kinds import KINDS
    from vla_runtime.nodes.bridge_outputs import OUTPUTS
    from vla_runtime.sim.controllers import CONTROLLER_TYPES

    assert set(OUTPUTS) == set(KINDS)
    for name, k in KINDS.items():
        t = OUTPUTS[name].msg_type
        assert f"{t.__module__.split('.')[0]}/msg/{t.__name__}" == k.msgtype, name
        assert name in CONTROLLER_TYPES, name
