"""controller_bridge as a real process against a fake ros2_control living in the test's probe node.

The probe serves ``/controller_manager/list_controllers`` and ``switch_controller``, publishes
``/joint_states`` at 100 Hz, streams ``/vla/action_chunk`` at 20 Hz from a test-supplied function
and listens on the controller topics, ``/vla/safety_state`` and ``/diagnostics``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest
from controller_manager_msgs.msg import ControllerState
from controller_manager_msgs.srv import ListControllers, SwitchController
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from test.conftest import ROOT, wait_for
from vla_runtime.core.contract import (
    SERVICE_LIST_CONTROLLERS,
    SERVICE_RESET,
    SERVICE_SWITCH_CONTROLLER,
    TOPIC_ACTION_CHUNK,
    TOPIC_DIAGNOSTICS,
    TOPIC_HALT,
    TOPIC_JOINT_STATES,
)
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_STATE, ns_to_stamp, stamp_to_ns

pytestmark = pytest.mark.integration

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
FINGER = "panda_finger_joint1"
SIM_PANDA = ROOT / "config" / "sim_panda.yaml"
JT_TOPIC = "/arm_controller/joint_trajectory"
STARTUP_S = 20.0


def kv(status: DiagnosticStatus) -> dict[str, str]:
    return {v.key: v.value for v in status.values}


class FakeRos2Control:
    """controller_manager services, joint states and a chunk streamer on the harness's probe node."""

    def __init__(self, harness, positions: dict[str, float], states: dict[str, str] | None = None) -> None:
        probe = harness.probe
        node = probe.node
        self.harness = harness
        self.node = node
        self.positions = dict(positions)
        self.states = states if states is not None else {
            "arm_controller": "active", "gripper_controller": "active", "hold_controller": "inactive"}
        self.switch_calls: list[SwitchController.Request] = []
        self.list_calls = 0
        self.chunk_fn: Callable[[float], JointTrajectory | None] | None = None
        node.create_service(ListControllers, SERVICE_LIST_CONTROLLERS, self._list)
        node.create_service(SwitchController, SERVICE_SWITCH_CONTROLLER, self._switch)
        self.js_pub = node.create_publisher(JointState, TOPIC_JOINT_STATES, QOS_STATE)
        self.chunk_pub = node.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        self.halt_pub = node.create_publisher(String, TOPIC_HALT, QOS_LATCHED)
        self.safety = harness.safety.reports
        self.diagnostics = probe.collect(DiagnosticArray, TOPIC_DIAGNOSTICS, 10)
        node.create_timer(0.01, self._publish_joint_states)
        node.create_timer(0.05, self._stream)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _list(self, _req, resp):
        self.list_calls += 1
        resp.controller = [ControllerState(name=n, state=s) for n, s in self.states.items()]
        return resp

    def _switch(self, req, resp):
        self.switch_calls.append(req)
        for n in req.deactivate_controllers:
            self.states[n] = "inactive"
        for n in req.activate_controllers:
            self.states[n] = "active"
        resp.ok = True
        return resp

    def _publish_joint_states(self) -> None:
        msg = JointState(name=list(self.positions), position=list(self.positions.values()))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.js_pub.publish(msg)

    def _stream(self) -> None:
        fn = self.chunk_fn
        if fn is not None:
            msg = fn(self.now())
            if msg is not None:
                self.chunk_pub.publish(msg)

    # -------------------------------------------------------------- observations
    def mode(self) -> str | None:
        return self.safety[-1][1].message if self.safety else None

    def wait_mode(self, mode: str, timeout: float) -> DiagnosticStatus:
        self.harness.wait_mode(mode, timeout)
        return self.safety[-1][1]

    def wait_controllers_ok(self) -> None:
        self.harness.wait(lambda: bool(self.safety) and kv(self.safety[-1][1]).get("controllers", "").startswith("ok"),
                          STARTUP_S, "bridge reporting its controllers verified")
        self.harness.wait(lambda: self.chunk_pub.get_subscription_count() > 0, 5, "bridge subscribed to chunks")


def chunk(names: list[str], stamp_s: float, rows: np.ndarray, period: float = 0.01) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp = ns_to_stamp(int(round(stamp_s * 1e9)))
    msg.joint_names = list(names)
    for k, row in enumerate(rows):
        ns = int(round(k * period * 1e9))
        pt = JointTrajectoryPoint(positions=[float(x) for x in row])
        pt.time_from_start.sec, pt.time_from_start.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
        msg.points.append(pt)
    return msg


def constant_chunks(values: dict[str, float], horizon: int = 20) -> Callable[[float], JointTrajectory]:
    names = list(values)
    row = np.array([values[n] for n in names])
    return lambda now: chunk(names, now, np.tile(row, (horizon, 1)))


def start_bridge(harness, config_file) -> None:
    harness.start([NodeSpec("controller_bridge", NODE_MODULES["controller_bridge"], str(config_file))])


def multi_point(msgs) -> list[JointTrajectory]:
    return [m for _, m in msgs if len(m.points) > 1]


def home_positions(arm: np.ndarray = HOME) -> dict[str, float]:
    return {**dict(zip(ARM, arm.tolist())), FINGER: 0.04}


# ---------------------------------------------------------------------------------------- tests
def test_chunk_reaches_joint_trajectory_controller(harness, probe):
    fake = FakeRos2Control(harness, home_positions())
    traj = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)
    grip = probe.collect(Float64MultiArray, "/gripper_controller/commands", QOS_COMMAND)
    start_bridge(harness, SIM_PANDA)
    fake.wait_controllers_ok()

    vel = 0.01 * np.arange(1, 8)  # rad/s per joint: distinct, so a wrong order shows
    start = {"t0": math.inf}  # the ramp starts once POLICY is established
    names = list(reversed(ARM)) + ["gripper/gripper"]

    def expected(t: float) -> np.ndarray:
        return HOME + vel * max(0.0, t - start["t0"])

    def ramp(now: float) -> JointTrajectory:
        times = now + 0.01 * np.arange(20)
        rows = np.array([np.concatenate([expected(t)[::-1], [0.03]]) for t in times])
        return chunk(names, now, rows)

    fake.chunk_fn = ramp
    fake.wait_mode("POLICY", 10)
    start["t0"] = fake.now() + 0.1
    n0 = len(multi_point(traj))
    wait_for(lambda: len(multi_point(traj)) >= n0 + 8, 10, what="8 forwarded trajectories")
    fake.chunk_fn = None
    assert multi_point(traj)[-1].points[-1].positions[0] > 0.0, "the ramp was not forwarded"
    checked = 0
    for msg in multi_point(traj):
        assert msg.joint_names == ARM  # the controller's order, not the chunk's
        stamp = stamp_to_ns(msg.header.stamp) * 1e-9
        if stamp < start["t0"] - 0.09:  # built before the ramp was defined
            continue
        checked += 1
        tfs = [stamp_to_ns(p.time_from_start) * 1e-9 for p in msg.points]
        assert all(b > a for a, b in zip(tfs, tfs[1:]))
        assert np.allclose(np.diff(tfs), 0.01, atol=1e-6)
        for t, p in zip(tfs, msg.points):
            np.testing.assert_allclose(p.positions, expected(stamp + t), atol=1e-6)
    assert checked >= 6
    assert grip and grip[-1][1].data.tolist() == pytest.approx([0.03])
    assert kv(fake.safety[-1][1])["chunks_rejected"] == "0"


def test_forward_position_streams_at_command_rate(harness, probe, write_config):
    cfg = write_config("sim_panda.yaml", {"robot": {"groups": {"arm": {"controller": "forward_position"}}}})
    fake = FakeRos2Control(harness, home_positions())
    cmds = probe.collect(Float64MultiArray, "/arm_controller/commands", QOS_COMMAND)
    start_bridge(harness, cfg)
    fake.wait_controllers_ok()
    target = HOME + 0.0002 * np.arange(1, 8)
    fake.chunk_fn = constant_chunks(dict(zip(reversed(ARM), target[::-1].tolist())))
    fake.wait_mode("POLICY", 10)
    time.sleep(0.3)
    n0, t_start = len(cmds), time.monotonic()
    time.sleep(1.5)
    rate = (len(cmds) - n0) / (time.monotonic() - t_start)
    fake.chunk_fn = None
    assert rate >= 50.0, f"commands at {rate:.1f} Hz, expected ~100 Hz"
    last = cmds[-1][1].data.tolist()
    assert last == pytest.approx(target.tolist(), abs=1e-9)  # controller's joint order


def test_command_past_joint_limit_is_clipped(harness, probe):
    upper = 2.8973
    arm = HOME.copy()
    arm[0] = upper
    fake = FakeRos2Control(harness, home_positions(arm))
    traj = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)
    start_bridge(harness, SIM_PANDA)
    fake.wait_controllers_ok()
    wanted = dict(zip(ARM, arm.tolist()))
    wanted["panda_joint1"] = 3.5
    fake.chunk_fn = constant_chunks(wanted)
    fake.wait_mode("POLICY", 10)
    wait_for(lambda: len(multi_point(traj)) >= 3, 10, what="forwarded trajectories")
    fake.chunk_fn = None
    for _, msg in traj:
        for p in msg.points:
            assert p.positions[0] <= upper + 1e-12, "published past the joint limit"
    for msg in multi_point(traj):
        assert [p.positions[0] for p in msg.points] == pytest.approx([upper] * len(msg.points))
    wait_for(lambda: "position_limit" in kv(fake.safety[-1][1])["interventions_by_kind"], 3,
             what="position_limit intervention counted in safety_state")
    wait_for(lambda: any("panda_joint1: position_limit" in kv(s).get("interventions_by_name", "")
                         for _, a in fake.diagnostics for s in a.status), 3,
             what="per-joint counter in /diagnostics")


def test_nan_chunk_holds_at_measured_position(harness, probe):
    measured = HOME + 0.01
    fake = FakeRos2Control(harness, home_positions(measured))
    traj = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)
    start_bridge(harness, SIM_PANDA)
    fake.wait_controllers_ok()
    good = dict(zip(ARM, measured.tolist()))
    fake.chunk_fn = constant_chunks(good)
    fake.wait_mode("POLICY", 10)
    fake.chunk_fn = None
    bad = dict(good)
    bad["panda_joint3"] = math.nan
    fake.chunk_pub.publish(constant_chunks(bad)(fake.now()))
    st = fake.wait_mode("HOLD", 3)
    reason = kv(st)["reason"]
    assert "panda_joint3" in reason and "nan" in reason, reason
    n = len(traj)
    wait_for(lambda: len(traj) > n or (traj and len(traj[-1][1].points) == 1), 3, what="hold trajectory")
    wait_for(lambda: len(traj[-1][1].points) == 1, 3, what="single-point hold trajectory")
    np.testing.assert_allclose(traj[-1][1].points[0].positions, measured, atol=1e-12)


def test_inactive_controller_refuses_policy(harness, probe):
    fake = FakeRos2Control(harness, home_positions(), states={
        "arm_controller": "inactive", "gripper_controller": "active", "hold_controller": "inactive"})
    traj = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)
    start_bridge(harness, SIM_PANDA)
    fake.chunk_fn = constant_chunks(dict(zip(ARM, HOME.tolist())))
    wait_for(lambda: fake.list_calls >= 2, STARTUP_S, what="two list_controllers calls (retry)")
    wait_for(lambda: bool(fake.safety) and "arm_controller" in kv(fake.safety[-1][1])["controllers"], 5,
             what="safety_state naming arm_controller")
    st = fake.safety[-1][1]
    assert st.message == "HOLD"
    assert "arm_controller (inactive)" in kv(st)["controllers"]
    assert "arm_controller" in kv(st)["policy_refused"]
    wait_for(lambda: any("arm_controller" in kv(s).get("controllers", "")
                         for _, a in fake.diagnostics for s in a.status), 3, what="/diagnostics naming it")
    assert all(s.message != "POLICY" for _, s in fake.safety)
    assert not multi_point(traj), "a chunk was forwarded with arm_controller inactive"
    # the periodic retry lets the policy in once the controller is active
    fake.states["arm_controller"] = "active"
    fake.wait_mode("POLICY", 5)
    fake.chunk_fn = None


def test_halt_latches_switches_and_reset_returns_to_hold(harness, probe):
    fake = FakeRos2Control(harness, home_positions())
    traj = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)
    start_bridge(harness, SIM_PANDA)
    fake.wait_controllers_ok()
    fake.chunk_fn = constant_chunks(dict(zip(ARM, HOME.tolist())))
    fake.wait_mode("POLICY", 10)

    t_halt = time.monotonic()
    fake.halt_pub.publish(String(data="test: collision detected"))
    fake.wait_mode("HALTED", 2)
    assert time.monotonic() - t_halt < 1.0
    assert "collision detected" in kv(fake.safety[-1][1])["reason"]
    wait_for(lambda: bool(fake.switch_calls), 3, what="switch_controller call")
    sw = fake.switch_calls[0]
    assert list(sw.activate_controllers) == ["hold_controller"]
    assert sorted(sw.deactivate_controllers) == ["arm_controller", "gripper_controller"]
    assert sw.strictness == SwitchController.Request.STRICT
    assert sw.timeout.sec > 0 or sw.timeout.nanosec > 0

    # chunks keep coming; none is forwarded while HALTED
    time.sleep(0.3)
    n_forwarded = len(multi_point(traj))
    time.sleep(1.0)
    assert len(multi_point(traj)) == n_forwarded
    assert fake.mode() == "HALTED"

    resp = probe.call(Trigger, SERVICE_RESET, Trigger.Request())
    assert not resp.success and "cause still present" in resp.message
    assert fake.mode() == "HALTED"
    fake.halt_pub.publish(String(data=""))  # the halting component clears its cause
    wait_for(lambda: kv(fake.safety[-1][1]).get("halt_cause_present") == "false", 3, what="halt cause cleared")
    fake.chunk_fn = None
    resp = probe.call(Trigger, SERVICE_RESET, Trigger.Request())
    assert resp.success, resp.message
    fake.wait_mode("HOLD", 2)
    wait_for(lambda: len(fake.switch_calls) >= 2, 3, what="switch back to the policy controllers")
    back = fake.switch_calls[1]
    assert sorted(back.activate_controllers) == ["arm_controller", "gripper_controller"]
    assert list(back.deactivate_controllers) == ["hold_controller"]
    # after the reset (and re-verification), fresh chunks drive the robot again
    fake.chunk_fn = constant_chunks(dict(zip(ARM, HOME.tolist())))
    fake.wait_mode("POLICY", 5)
    fake.chunk_fn = None
