"""A bag recorded from the real graph (simulated Panda, fast-slow policy, bridge, teleop, recorder)
exports to a LeRobotDataset whose frames are what the bag held: the operator's takeover is the
intervention, the commands the bridge sent are the action, the camera frames decode to the images."""

from __future__ import annotations

import json
import time

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from test.conftest import node_logs, wait_for
from vla_runtime.core.config import load_config
from vla_runtime.data.lerobot_export import ExportOptions, export_lerobot, image_to_rgb
from vla_runtime.data.recording import bag_interventions, read_bag
from vla_runtime.graph.harness import DiagnosticsWatch, recorder_matched
from vla_runtime.graph.supervisor import NodeSpec, graph_for_config
from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, TeleopRig
from vla_runtime.nodes.recorder import recorded_topics

pytestmark = pytest.mark.integration
FPS = 30
S = 1_000_000_000
ARM_TOPIC = "/arm_controller/joint_trajectory"


def _latest(series: list[tuple[int, object]], t: int):
    """The newest value at or before ``t`` of a time-ordered list."""
    i = np.searchsorted(np.array([s for s, _ in series]), t, side="right") - 1
    return series[i][1] if i >= 0 else None


def test_a_real_run_with_a_takeover_exports_frame_for_frame(supervisor, probe, write_config, tmp_path):
    nodes = ["sim_robot", "slow_reasoner", "action_chunk_node", "controller_bridge", "teleop", "recorder"]
    cfg_path = write_config("sim_panda.yaml", {"teleop": GAMEPAD_TELEOP, "nodes": nodes})
    bag = tmp_path / "bag"
    rig = TeleopRig(probe)
    rig.policy_enabled = False  # the real fast path plans
    diags = DiagnosticsWatch(probe)
    for spec in graph_for_config(load_config(cfg_path), str(cfg_path)):
        if spec.name == "recorder":
            spec = NodeSpec(spec.name, spec.module, spec.config_file, params={"bag_dir": str(bag), "part_s": 1.0})
        supervisor.start(spec)
    try:
        wait_for(lambda: rig.mode() == "POLICY", 60, what="POLICY")
        wait_for(rig.teleop_ready, 30, what="the teleop node on the graph")
        # The episode starts when every stream it needs is in the bag: on a loaded machine the
        # recorder matched a publisher late once and the episode was 2.5 s long instead of > 3 s.
        topics = [spec.name for spec in recorded_topics(load_config(cfg_path))]
        wait_for(lambda: recorder_matched(probe, diags, topics), 20, what="the recorder matched with every publisher")
        time.sleep(1.5)  # the policy drives
        rig.deadman(True, [1.0, 0, 0, 0, 0, 0])
        wait_for(lambda: rig.mode() == "TELEOP", 5, what="TELEOP")
        time.sleep(1.0)  # the operator drives
        rig.deadman(False)
        wait_for(lambda: rig.mode() == "POLICY", 5, what="POLICY again")
        time.sleep(1.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{node_logs(tmp_path)}") from None
    assert supervisor.stop_node("recorder") == "SIGINT"

    cfg = load_config(cfg_path)
    result = export_lerobot([bag], tmp_path / "ds", cfg, ExportOptions(fps=FPS, repo_id="test/real_run"))
    root = result.root
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == len(result.episodes) == 1, result.notes  # no instruction change, no reset
    ep = result.episodes[0]

    # The bag, read on its own.
    js: dict[str, list[tuple[int, float]]] = {}
    arm_cmds, grip_cmds, plans, images = [], [], [], []
    for topic, t, msg in read_bag(bag):
        if topic == "/joint_states":
            for n, p in zip(msg.name, msg.position):
                js.setdefault(n, []).append((t, float(p)))
        elif topic == ARM_TOPIC and len(msg.points):
            arm_cmds.append((t, msg))
        elif topic == "/gripper_controller/commands":
            grip_cmds.append((t, float(msg.data[0])))
        elif topic == "/vla/action_chunk":
            plans.append((t, len(msg.points)))
        elif topic == cfg.cameras[0].topic:
            images.append((t, msg))
    first = max(js[j][0][0] for j in js if j.startswith("panda_")) if js else 0
    start = max(first, arm_cmds[0][0], grip_cmds[0][0], images[0][0])
    last_js = max(s[-1][0] for s in js.values())
    n = (last_js - start) * FPS // S + 1
    assert (ep["start_ns"], ep["frames"]) == (start, n)
    assert n >= 3 * FPS

    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    col = {c: np.array(table.column(c).to_pylist()) for c in table.column_names}
    t = start + np.arange(n) * S // FPS
    names = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
    for k in range(n):
        np.testing.assert_allclose(col["observation.state"][k], [_latest(js[j], t[k]) for j in names], atol=1e-6)
        assert col["action"][k][7] == pytest.approx(_latest(grip_cmds, t[k]), abs=1e-6)
        assert bool(col["policy_held"][k]) == (_latest(plans, t[k]) in (None, 0))

    # The takeover: the intervention frames are the bag's intervention, and there the arm's action
    # is the operator's command (one-point "teleop" trajectories) the bridge sent.
    ivs = bag_interventions(bag)
    assert len(ivs) == 1 and ivs[0][1] is not None, ivs
    inside = (t >= ivs[0][0]) & (t < ivs[0][1])
    assert 0.6 * FPS <= inside.sum() <= 2.0 * FPS
    np.testing.assert_array_equal(col["intervention"], inside | (col["safety_mode"] == 1))
    assert (col["safety_mode"][inside] == 1).mean() > 0.9
    teleop_frames = 0
    for k in np.nonzero(inside)[0]:
        cmd = _latest(arm_cmds, t[k])
        if cmd.header.frame_id == "teleop":
            np.testing.assert_allclose(col["action"][k][:7], cmd.points[0].positions, atol=1e-6)
            teleop_frames += 1
    assert teleop_frames >= 0.8 * inside.sum()
    assert not col["intervention"][t < ivs[0][0] - S // 2].any()

    # The camera: one decoded frame per frame, close to the image the bag held at its time.
    path = root / "videos/observation.images.scene/chunk-000/file-000.mp4"
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(c.streams.video[0])]
    assert len(frames) == n
    errors = [np.abs(frames[k] - image_to_rgb(_latest(images, t[k])).astype(float)).mean() for k in range(n)]
    assert np.mean(errors) < 4.0 and max(errors) < 12.0, (np.mean(errors), max(errors))
