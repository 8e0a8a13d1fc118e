"""The recorder as a real process: a teleop intervention is recorded; SIGKILL keeps closed parts."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from test.conftest import node_logs, wait_for
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import DIAG_RECORDER
from vla_runtime.data.recording import read_bag, recover
from vla_runtime.graph.harness import DiagnosticsWatch, recorder_matched
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, TeleopRig, teleop_graph
from vla_runtime.nodes.recorder import recorded_topics

pytestmark = pytest.mark.integration


def test_recorder_survives_sigkill_with_closed_parts_and_interventions(harness, write_config, tmp_path):
    cfg = write_config("sim_panda.yaml", {"teleop": GAMEPAD_TELEOP, "cameras": []})
    bag = tmp_path / "bag"
    rig = TeleopRig(harness.probe)
    harness.start(teleop_graph(str(cfg)) + [NodeSpec("recorder", NODE_MODULES["recorder"], str(cfg),
                                                     params={"bag_dir": str(bag), "part_s": 0.5})])
    harness.wait(lambda: rig.mode() == "POLICY", 30, "POLICY")
    harness.wait(rig.teleop_ready, 30, "the teleop node on the graph")
    harness.wait(lambda: (bag / "metadata.yaml").exists(), 10, "a first closed part")

    def closed() -> dict:
        return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]

    def closed_counts() -> dict[str, int]:
        return {t["topic_metadata"]["name"]: t["message_count"] for t in closed()["topics_with_message_count"]}

    # On a loaded machine the recorder has matched the simulator's publishers seconds after the
    # rest of the graph (CI once killed it with 53 joint states recorded; here once with none, and
    # once before the teleop node's engage was matched): the recording is judged from the moment
    # its diagnostics say every publisher on the graph is matched and it holds the robot's state.
    probe, supervisor = harness.probe, harness.supervisor
    diags = DiagnosticsWatch(probe)

    topics = [spec.name for spec in recorded_topics(load_config(cfg), record_images=False)]
    harness.wait(lambda: recorder_matched(probe, diags, topics), 20, "the recorder matched with every publisher",
                 interval=0.2, detail=lambda: str(diags.latest(DIAG_RECORDER)))
    harness.wait(lambda: min(closed_counts().get(t, 0) for t in ("/joint_states", "/ee_pose")) > 0,
                 15, "closed parts holding joint states and poses", interval=0.1)
    rig.deadman(True, [1.0, 0, 0, 0, 0, 0])
    wait_for(lambda: rig.mode() == "TELEOP", 5, what="TELEOP")
    time.sleep(0.4)
    rig.deadman(False)
    wait_for(lambda: rig.mode() == "POLICY", 3, what="POLICY again")
    t_back = probe.node.get_clock().now().nanoseconds
    time.sleep(1.0)

    def closed_until() -> int:
        meta = closed()
        return meta["starting_time"]["nanoseconds_since_epoch"] + meta["duration"]["nanoseconds"]

    # the writer may lag on a loaded machine: kill once the handback lies in closed parts
    wait_for(lambda: closed_until() > t_back + 500_000_000, 15, what="closed parts covering the handback")
    supervisor.kill("recorder", signal.SIGKILL)
    supervisor.process("recorder").wait(timeout=5)

    recover(bag)
    seen: dict[str, int] = {}
    interventions, teleop_cmds, modes = [], 0, set()
    for topic, _t, msg in read_bag(bag):
        seen[topic] = seen.get(topic, 0) + 1
        if topic == "/vla/intervention":
            interventions.append(msg.data)
        elif topic == "/arm_controller/joint_trajectory" and msg.header.frame_id == "teleop":
            teleop_cmds += 1
        elif topic == "/vla/safety_state":
            modes.add(msg.message)
    assert seen.get("/joint_states", 0) > 100 and seen.get("/ee_pose", 0) > 50, seen
    assert seen.get("/vla/action_chunk", 0) > 10, seen
    assert seen.get("/joy", 0) > 10 and seen.get("/vla/teleop/twist", 0) > 5, seen
    assert teleop_cmds > 10, seen
    assert {"POLICY", "TELEOP", "HOLD"} <= modes, modes
    assert any(s.startswith("start") for s in interventions) and any(s.startswith("end") for s in interventions)


def test_a_recorded_bag_decodes_message_by_message_with_rosbags_and_mcap(supervisor, probe, write_config, tmp_path):
    """Every message of every recorded topic is exactly its CDR message: rosbags' strict reader
    (it refuses trailing bytes) and mcap's ROS 2 decoder read all of them, the fast path's plans
    included (they are written from a preallocated template: nodes/cdr.py)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    from trajectory_msgs.msg import JointTrajectory

    from vla_runtime.core.contract import TOPIC_ACTION_CHUNK
    from vla_runtime.graph.supervisor import graph_for_config

    cfg_path = write_config("sim_panda.yaml", {"nodes": ["sim_robot", "slow_reasoner", "action_chunk_node",
                                                         "controller_bridge", "recorder"]})
    bag = tmp_path / "bag"
    plans = probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, 10)
    for spec in graph_for_config(load_config(cfg_path), str(cfg_path)):
        if spec.name == "recorder":
            spec = NodeSpec(spec.name, spec.module, spec.config_file, params={"bag_dir": str(bag), "part_s": 1.0})
        supervisor.start(spec)
    try:
        wait_for(lambda: sum(1 for _, m in plans if m.points) >= 60, 60, what="60 plans from the fast path")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{node_logs(tmp_path)}") from None
    assert supervisor.stop_node("recorder") == "SIGINT"  # a clean stop closes the open part

    ts = get_typestore(Stores.ROS2_HUMBLE)
    strict: dict[str, int] = {}
    with Reader(bag) as reader:
        for conn, _t, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)  # raises on a single trailing byte beyond alignment
            strict[conn.topic] = strict.get(conn.topic, 0) + 1
            if conn.topic == TOPIC_ACTION_CHUNK and msg.points:
                strict["plans with points"] = strict.get("plans with points", 0) + 1
    assert strict.get("plans with points", 0) >= 30, strict
    via_mcap: dict[str, int] = {}
    for part in sorted(bag.glob("*.mcap")):
        with open(part, "rb") as f:
            for _schema, channel, _message, _decoded in make_reader(f, decoder_factories=[DecoderFactory()]) \
                    .iter_decoded_messages():
                via_mcap[channel.topic] = via_mcap.get(channel.topic, 0) + 1
    assert via_mcap == {k: v for k, v in strict.items() if k != "plans with points"}


def test_recorder_records_each_topic_with_its_publishers_reliability(supervisor, probe, write_config, tmp_path):
    """A topic is recorded reliably while every publisher offers reliable delivery; a best-effort
    publisher that joins later is recorded too (the subscription turns best effort, counted)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from vla_runtime.core.contract import TOPIC_JOINT_STATES

    cfg = write_config("sim_panda.yaml", {"cameras": []})
    bag = tmp_path / "bag"
    diags = DiagnosticsWatch(probe)
    reliable = probe.node.create_publisher(JointState, TOPIC_JOINT_STATES,
                                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    supervisor.start(NodeSpec("recorder", NODE_MODULES["recorder"], str(cfg), params={"bag_dir": str(bag)}))

    def publish(pub, name: str, n: int) -> None:
        for i in range(n):
            pub.publish(JointState(name=[name], position=[float(i)]))
            time.sleep(0.01)

    wait_for(lambda: reliable.get_subscription_count() >= 1, 15, what="the recorder subscribed to /joint_states")
    publish(reliable, "reliable", 50)
    best_effort = probe.node.create_publisher(JointState, TOPIC_JOINT_STATES,
                                              QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    wait_for(lambda: diags.latest(DIAG_RECORDER).get("qos_downgrades") == "1", 10, what="the recorder's QoS downgrade")
    wait_for(lambda: best_effort.get_subscription_count() >= 1, 10, what="the best-effort publisher matched")
    publish(best_effort, "best_effort", 50)
    publish(reliable, "reliable_after", 50)
    time.sleep(0.3)
    assert supervisor.stop_node("recorder") == "SIGINT"

    got: dict[str, int] = {}
    for topic, _t, msg in read_bag(bag):
        if topic == TOPIC_JOINT_STATES:
            got[msg.name[0]] = got.get(msg.name[0], 0) + 1
    assert got.get("reliable", 0) == 50, got  # reliable: every sample
    assert got.get("best_effort", 0) >= 40 and got.get("reliable_after", 0) >= 40, got
