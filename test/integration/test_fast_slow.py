"""The fast path keeps its rate while the slow path is slow, and holds when guidance goes stale.

Real processes over DDS: slow_reasoner and action_chunk_node from the package, the timing
reference model in ONNX Runtime, the latent through POSIX shared memory. The test process plays
the robot (joint states) and the camera.
"""

import os
import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from test.conftest import RefusingPublisher, node_logs, wait_for
from vla_runtime.graph.harness import DiagnosticsWatch
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.nodes.common import QOS_COMMAND, QOS_SENSOR

pytestmark = pytest.mark.integration

JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785, 0.04]


class FakeRobotAndCamera:
    """Publishes joint states (200 Hz) and camera images (10 Hz) from the probe's node."""

    def __init__(self, probe, camera_topic: str):
        node = probe.node
        self.js_pub = node.create_publisher(JointState, "/joint_states", QOS_SENSOR)
        self.img_pub = node.create_publisher(Image, camera_topic, QOS_SENSOR)
        self.camera_on = threading.Event()
        self.camera_on.set()
        self.joints_on = threading.Event()
        self.joints_on.set()
        self.rng = np.random.default_rng(0)
        node.create_timer(1 / 200, self._joints)
        node.create_timer(1 / 10, self._image)
        self.node = node

    def _joints(self):
        if not self.joints_on.is_set():
            return
        m = JointState(name=JOINTS, position=HOME)
        m.header.stamp = self.node.get_clock().now().to_msg()
        self.js_pub.publish(m)

    def _image(self):
        if not self.camera_on.is_set():
            return
        img = Image(height=96, width=96, encoding="rgb8", step=96 * 3)
        img.data = self.rng.integers(0, 255, 96 * 96 * 3, dtype=np.uint8).tobytes()
        img.header.stamp = self.node.get_clock().now().to_msg()
        self.img_pub.publish(img)


def test_fast_loop_keeps_rate_while_slow_path_runs_at_2hz(supervisor, probe, write_config, domain_id, tmp_path):
    cfg = write_config("sim_panda.yaml", {
        "nodes": ["slow_reasoner", "action_chunk_node"],
        "latent": {"transport": "shm", "name": f"vla_test_{domain_id}_{os.getpid()}", "max_age_s": 1.5},
        "safety": {"joint_state_timeout_s": 0.2},
    })
    plans = probe.collect(JointTrajectory, "/vla/action_chunk", QOS_COMMAND)
    diags = DiagnosticsWatch(probe)
    robot = FakeRobotAndCamera(probe, "/camera/scene/image_raw")
    supervisor.start(NodeSpec("slow_reasoner", NODE_MODULES["slow_reasoner"], str(cfg),
                              params={"extra_latency_ms": 500.0}))
    supervisor.start(NodeSpec("action_chunk_node", NODE_MODULES["action_chunk_node"], str(cfg)))
    try:
        wait_for(lambda: sum(1 for _, m in plans if m.points) >= 30, 60, what="plans from the fast path")
    except AssertionError:
        reasons = sorted({m.header.frame_id for _, m in plans})
        raise AssertionError(f"plan reasons seen: {reasons}\n{node_logs(tmp_path)}") from None

    v0 = int(diags.latest("vla/action_chunk_node").get("latent_version", 0) or 0)
    t0 = time.monotonic()
    n0 = len(plans)
    time.sleep(5.0)
    window = [m for t, m in plans[n0:] if t - t0 <= 5.0]
    tick_rate = len(window) / 5.0  # every tick publishes a plan or a HOLD request
    plan_share = sum(1 for m in window if m.points) / max(len(window), 1)
    holds = [m.header.frame_id for m in window if not m.points]
    assert 28.0 <= tick_rate <= 31.0, f"fast path ticked at {tick_rate:.1f} Hz with a 2 Hz slow path"
    # Guidance stays fresh at 2 Hz: no latent-related HOLD. (An inference starved of CPU on a
    # loaded 2-core machine may still ask for HOLD — that is the safe answer — but rarely.)
    assert not [h for h in holds if "latent" in h], f"held for latent reasons while guidance was fresh: {holds}"
    assert plan_share >= 0.95, f"only {plan_share:.0%} of ticks produced a plan: {holds[:5]}"
    wait_for(lambda: int(diags.latest("vla/action_chunk_node").get("latent_version", 0) or 0) >= v0 + 4,
             10, what="the latent version to advance")
    slow = diags.latest("vla/slow_reasoner")
    assert 1.0 <= float(slow["rate_hz"]) <= 2.5, slow

    # A plan is a command-rate trajectory for every action dim, stamped at its first point.
    last = window[-1]
    assert last.joint_names == JOINTS[:7] + ["gripper/gripper"]
    steps = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in last.points]
    assert np.allclose(np.diff(steps), 0.01, atol=1e-6)
    assert all(len(p.positions) == 8 and np.all(np.isfinite(p.positions)) for p in last.points)

    # Camera stops → latent ages past max_age_s → the fast path asks for HOLD, never extrapolates.
    robot.camera_on.clear()
    n1 = len(plans)
    wait_for(lambda: any(m.header.frame_id == "hold: stale latent" for _, m in plans[n1:]), 10,
             what="HOLD on a stale latent")
    t_hold = next(t for t, m in plans[n1:] if m.header.frame_id == "hold: stale latent")
    after = [m for t, m in plans if t > t_hold + 0.05]
    time.sleep(0.5)
    after = [m for t, m in plans if t > t_hold + 0.05]
    assert after and all(not m.points for m in after), "plans resumed on a stale latent"

    # Camera back, fresh guidance again: plans resume. Then /joint_states stops → HOLD within the
    # joint-state timeout (0.2 s here) plus a tick, however the loop takes its state in.
    robot.camera_on.set()
    n2 = len(plans)
    wait_for(lambda: sum(1 for _, m in plans[n2:] if m.points) >= 10, 20, what="plans again after the camera returned")
    t_stop = time.monotonic()
    robot.joints_on.clear()
    n3 = len(plans)
    wait_for(lambda: any(m.header.frame_id == "hold: stale joint state" for _, m in plans[n3:]), 5,
             what="HOLD on stale joint states")
    t_js_hold = next(t for t, m in plans[n3:] if m.header.frame_id == "hold: stale joint state")
    assert t_js_hold - t_stop < 0.2 + 0.1, f"HOLD came {t_js_hold - t_stop:.3f} s after the joint states stopped"
    time.sleep(0.3)
    assert all(not m.points for t, m in plans if t > t_js_hold + 0.05), "plans went on without joint states"


def test_stop_and_go_baseline_alternates_inference_and_execution(supervisor, probe, write_config, domain_id, tmp_path):
    """sync mode: the fast path runs one chunk per latent, then holds and asks; the slow path steps
    only on a request, on a frame taken after it, so inference and motion never overlap."""
    from std_msgs.msg import Header

    from vla_runtime.core.contract import TOPIC_SYNC_REQUEST

    cfg = write_config("sim_panda.yaml", {
        "nodes": ["slow_reasoner", "action_chunk_node"],
        "latent": {"transport": "shm", "name": f"vla_sync_{domain_id}_{os.getpid()}", "max_age_s": 3.0},
    })
    plans = probe.collect(JointTrajectory, "/vla/action_chunk", QOS_COMMAND)
    requests = probe.collect(Header, TOPIC_SYNC_REQUEST, QOS_COMMAND)
    diags = DiagnosticsWatch(probe)
    FakeRobotAndCamera(probe, "/camera/scene/image_raw")
    supervisor.start(NodeSpec("slow_reasoner", NODE_MODULES["slow_reasoner"], str(cfg),
                              params={"extra_latency_ms": 300.0, "step_on_request": True}))
    supervisor.start(NodeSpec("action_chunk_node", NODE_MODULES["action_chunk_node"], str(cfg),
                              params={"lockstep": True}))
    def cycles() -> list[float]:  # requests after the first chunk (start-up re-asks every 1 s until it is up)
        first = next((t for t, m in plans if m.points), None)
        return [] if first is None else [t for t, _ in requests if t > first]

    try:
        wait_for(lambda: len(cycles()) >= 4, 60, what="four stop-and-go cycles")
    except AssertionError:
        raise AssertionError(f"{len(requests)} requests\n{node_logs(tmp_path)}") from None
    wait_for(lambda: int(diags.latest("vla/slow_reasoner").get("steps", 0) or 0) >= 3, 10,
             what="slow steps")
    slow = diags.latest("vla/slow_reasoner")
    # one slow step per request: the slow path never runs at its own pace here
    assert int(slow["steps"]) <= int(slow["sync_requests"]) + 1, slow
    # between two requests: first a wait (the robot holds while the slow path infers, >= 300 ms),
    # then one chunk plays out (16 steps at 30 Hz, ~0.5 s), then the next request
    t_req = cycles()
    for a, b in zip(t_req[:-1], t_req[1:]):
        moving = [t for t, m in plans if a <= t < b and m.points]
        assert moving, f"no chunk executed between requests at +{a - t_req[0]:.2f} s and +{b - t_req[0]:.2f} s"
        assert moving[0] - a >= 0.3, f"motion {moving[0] - a:.3f} s after the request: inference was not waited for"
        assert 0.3 <= moving[-1] - moving[0] <= 0.7, f"the chunk played for {moving[-1] - moving[0]:.3f} s"
        assert b - moving[-1] < 0.2, "the next request did not follow the end of the chunk"


@pytest.mark.parametrize("poll_state", [True, False], ids=["polled", "callbacks"])
def test_state_merged_from_split_joint_state_messages(supervisor, probe, write_config, domain_id, tmp_path,
                                                      poll_state):
    """The arm and the gripper publish their joint states separately (as many robots do): the fast
    path HOLDs while the gripper's measurement is missing from its proprio, and plans once both
    have arrived, whether the loop polls its state or takes it in callbacks."""
    cfg = write_config("sim_panda.yaml", {
        "nodes": ["slow_reasoner", "action_chunk_node"],
        "latent": {"transport": "shm", "name": f"vla_test_{domain_id}_{os.getpid()}", "max_age_s": 1.5},
    })
    plans = probe.collect(JointTrajectory, "/vla/action_chunk", QOS_COMMAND)
    node = probe.node
    js_pub = node.create_publisher(JointState, "/joint_states", QOS_SENSOR)
    img_pub = node.create_publisher(Image, "/camera/scene/image_raw", QOS_SENSOR)
    gripper_on = threading.Event()

    def joints():
        js_pub.publish(JointState(name=JOINTS[:7], position=HOME[:7]))
        if gripper_on.is_set():
            js_pub.publish(JointState(name=["panda_finger_joint1", "panda_finger_joint2"], position=[0.04, 0.04]))

    def image():
        img = Image(height=96, width=96, encoding="rgb8", step=96 * 3)
        img.data = bytes(96 * 96 * 3)
        img.header.stamp = node.get_clock().now().to_msg()
        img_pub.publish(img)

    node.create_timer(1 / 200, joints)
    node.create_timer(1 / 10, image)
    supervisor.start(NodeSpec("slow_reasoner", NODE_MODULES["slow_reasoner"], str(cfg)))
    supervisor.start(NodeSpec("action_chunk_node", NODE_MODULES["action_chunk_node"], str(cfg),
                              params={"poll_state": poll_state}))
    try:
        wait_for(lambda: sum(1 for _, m in plans if m.header.frame_id == "hold: proprio incomplete") >= 10, 60,
                 what="HOLD for the missing gripper measurement")
    except AssertionError:
        raise AssertionError(f"plan reasons seen: {sorted({m.header.frame_id for _, m in plans})}\n"
                             f"{node_logs(tmp_path)}") from None
    assert not any(m.points for _, m in plans), "planned without the gripper's measurement"
    gripper_on.set()
    wait_for(lambda: sum(1 for _, m in plans if m.points) >= 10, 10, what="plans once the gripper reports")
    last = next(m for _, m in reversed(plans) if m.points)
    assert last.joint_names == JOINTS[:7] + ["gripper/gripper"]
    assert all(np.all(np.isfinite(p.positions)) for p in last.points)


def test_fast_loop_outlives_publishes_the_middleware_refuses(probe, write_config, monkeypatch):
    """Fast DDS's asynchronous writer refuses a publish (rclpy ``RCLError: cannot publish data``)
    when its sender thread was preempted holding the writer past its blocking time. CI lost the fast
    path this way once: the tick's publish was refused, so was the HOLD request after it, the
    exception ended the loop thread, and the node stayed up but silent (reproduced here in 2 of ~25
    loaded runs of the recording test). The refusal cannot be provoked on demand (a SCHED_FIFO
    spinner on the sender threads' CPU did not do it), so the node runs in this process with its
    real loop, engine and DDS publisher, and the publisher refuses the next 6 publishes: the loop
    must count the refused ticks and HOLD requests, go on, and be heard again."""
    from test.conftest import node_in_this_process
    from vla_runtime.core.contract import DIAG_FAST_PATH, HOLD_NO_JOINT_STATE, TOPIC_ACTION_CHUNK
    from vla_runtime.nodes.action_chunk_node import PUBLICATION_MODE, ActionChunkNode

    cfg = write_config("sim_panda.yaml")
    monkeypatch.setenv("RMW_FASTRTPS_PUBLICATION_MODE", PUBLICATION_MODE)  # read when the participant is made
    plans = probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
    diags = DiagnosticsWatch(probe)
    with node_in_this_process(ActionChunkNode, cfg, stop=lambda n: n.trigger_deactivate()) as node:
        node.trigger_configure()
        node.trigger_activate()
        wait_for(lambda: len(plans) >= 10, 20, what="HOLD requests from the fast path before the refusals")
        refusing = node.plan_pub = RefusingPublisher(node.plan_pub, 6)
        wait_for(lambda: refusing.left == 0, 5, what="six refused publishes")
        n_after = len(plans)
        wait_for(lambda: len(plans) >= n_after + 30, 10, what="HOLD requests again after the refusals")
        assert node.loop.running and node.loop.error is None
        # each refused tick is followed by a refused HOLD request: 3 + 3
        assert (node.counters["tick_errors"], node.counters["hold_publish_errors"]) == (3, 3), node.counters
        assert plans[-1][1].header.frame_id == HOLD_NO_JOINT_STATE
        wait_for(lambda: diags.latest(DIAG_FAST_PATH).get("tick_errors") == "3", 5,
                 what="the refusals in the fast path's diagnostics")
        assert "cannot publish data" in diags.latest(DIAG_FAST_PATH)["last_tick_error"]
