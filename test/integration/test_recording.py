"""The recorder as a real process: a teleop intervention is recorded; SIGKILL keeps closed parts."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from test.conftest import wait_for
from vla_runtime.data.recording import read_bag, recover
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, TeleopRig, teleop_graph

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
    probe, supervisor = harness.probe, harness.supervisor
    rig.deadman(True, [1.0, 0, 0, 0, 0, 0])
    wait_for(lambda: rig.mode() == "TELEOP", 5, what="TELEOP")
    time.sleep(0.4)
    rig.deadman(False)
    wait_for(lambda: rig.mode() == "POLICY", 3, what="POLICY again")
    t_back = probe.node.get_clock().now().nanoseconds
    time.sleep(1.0)

    def closed_until() -> int:
        meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
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
