"""Crash-safe bounded bag recording and offline replay (no ROS graph; rclpy only serialises)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import yaml
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from test.conftest import ROOT
from vla_runtime.data.recording import (
    METADATA,
    BagRecorder,
    RecorderLimits,
    RecordingError,
    TopicSpec,
    bag_interventions,
    read_bag,
    recover,
)

TOPICS = [TopicSpec("/joint_states", "sensor_msgs/msg/JointState"),
          TopicSpec("/vla/intervention", "std_msgs/msg/String"),
          TopicSpec("/vla/halt", "std_msgs/msg/String", latched=True)]
S = 1_000_000_000


def js(k: int) -> bytes:
    return serialize_message(JointState(name=["j"], position=[float(k)]))


def test_parts_close_into_one_valid_rosbag2_directory(tmp_path):
    bag = tmp_path / "run"
    rec = BagRecorder(bag, TOPICS, RecorderLimits(part_s=0.5))
    for k in range(100):
        rec.write("/joint_states", S + k * 20_000_000, js(k))
    rec.write("/vla/intervention", S + 10, serialize_message(String(data="start: operator")))
    rec.mark_intervention(S + 10, "start: operator")
    rec.mark_intervention(2 * S, "end: released")
    rec.stop()
    meta = yaml.safe_load((bag / METADATA).read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["message_count"] == 101
    assert meta["relative_file_paths"] == [f"run_{k}.mcap" for k in range(len(meta["relative_file_paths"]))]
    assert len(meta["relative_file_paths"]) >= 3
    assert not list(bag.glob(".part_*"))
    got = [m.position[0] for t, _, m in ((tp, t, m) for tp, t, m in read_bag(bag, ["/joint_states"]))]
    assert got == [float(k) for k in range(100)]
    assert bag_interventions(bag) == [[S + 10, 2 * S, "start: operator"]]
    with pytest.raises(RecordingError, match="already holds a bag"):
        BagRecorder(bag, TOPICS)


def test_a_crash_keeps_every_closed_part_readable(tmp_path):
    bag = tmp_path / "crash"
    rec = BagRecorder(bag, TOPICS, RecorderLimits(part_s=0.5))
    for k in range(60):  # 1.2 s: two closed parts, one open
        rec.write("/joint_states", S + k * 20_000_000, js(k))
    del rec  # the process "dies": the open part is never closed
    assert list(bag.glob(".part_*"))
    n = sum(1 for _ in read_bag(bag))
    assert 40 <= n < 60
    assert recover(bag) and not list(bag.glob(".part_*"))
    assert sum(1 for _ in read_bag(bag)) == n


def test_limits_stop_the_recording_cleanly(tmp_path):
    rec = BagRecorder(tmp_path / "b", TOPICS, RecorderLimits(max_bytes=2000, part_s=100.0))
    results = [rec.write("/joint_states", S + k * 1000, js(k)) for k in range(100)]
    assert not all(results) and rec.stopped and "max_bytes" in rec.status
    assert rec.total_bytes <= 2000 and rec.dropped > 0
    assert sum(1 for _ in read_bag(tmp_path / "b")) == results.count(True)
    rec2 = BagRecorder(tmp_path / "c", TOPICS, RecorderLimits(max_duration_s=1.0))
    assert rec2.write("/joint_states", S, js(0)) and not rec2.write("/joint_states", 3 * S, js(1))
    assert "max_duration_s" in rec2.status


def test_disk_full_stops_cleanly_and_keeps_closed_parts(tmp_path):
    bag = tmp_path / "full"
    rec = BagRecorder(bag, TOPICS, RecorderLimits(part_s=0.5))
    for k in range(40):
        rec.write("/joint_states", S + k * 20_000_000, js(k))
    closed = sum(1 for _ in read_bag(bag))

    def enospc(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    rec._part.writer.write = enospc
    assert not rec.write("/joint_states", 2 * S, js(99))
    assert rec.stopped and "disk full" in rec.status and "ENOSPC" in rec.status
    assert not rec.write("/joint_states", 2 * S + 1, js(100))
    assert not list(bag.glob(".part_*"))
    assert sum(1 for _ in read_bag(bag)) == closed
    meta = yaml.safe_load((bag / METADATA).read_text())["rosbag2_bagfile_information"]
    assert "disk full" in meta["custom_data"]["vla_runtime.status"]


def test_replay_reproduces_the_models_own_chunks_and_flags_changed_ones(tmp_path):
    """A bag whose plans are the model's own chunks replays to ~0; a corrupted plan is flagged."""
    from vla_runtime.commands.replay import replay
    from vla_runtime.core.policy_io import FastFeeds, SlowFeeds
    from vla_runtime.engines.model_package import load_model_package

    model = ROOT / "models" / "timing_reference"
    pkg = load_model_package(model)
    spec = pkg.spec
    arm = [f"panda_joint{i}" for i in range(1, 8)]
    state = dict(zip(arm, [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])) | {"panda_finger_joint1": 0.04}
    img = (np.arange(96 * 96 * 3) % 251).astype(np.uint8).reshape(96, 96, 3)
    tokens = pkg.tokenizer.encode("touch the red cube")
    latent = pkg.slow_engine.infer(SlowFeeds(spec.slow, ["scene"]).build({"scene": img}, tokens.ids, tokens.mask))
    ff = FastFeeds(spec)
    ff.set_prefix(None, None)
    ff.latent_view[...] = latent[spec.slow.outputs[0].name].reshape(ff.latent_view.shape)
    ff.set_proprio(pkg.proprio(state | {"gripper/gripper": 0.04}))
    raw = pkg.fast_engine.infer(ff.feeds)[ff.actions_spec.name]
    chunk = pkg.action_space.to_absolute(pkg.action_space.decode(raw), state | {"gripper/gripper": 0.04})
    dims = list(pkg.action_space.dim_names)
    pkg.close()

    topics = [TopicSpec("/joint_states", "sensor_msgs/msg/JointState"),
              TopicSpec("/camera/scene/image_raw", "sensor_msgs/msg/Image"),
              TopicSpec("/vla/instruction", "std_msgs/msg/String", latched=True),
              TopicSpec("/vla/action_chunk", "trajectory_msgs/msg/JointTrajectory")]
    rec = BagRecorder(tmp_path / "bag", topics)
    rec.write("/vla/instruction", S, serialize_message(String(data="touch the red cube")))
    rec.write("/joint_states", S + 1, serialize_message(JointState(name=list(state), position=list(state.values()))))
    rec.write("/camera/scene/image_raw", S + 2, serialize_message(Image(
        height=96, width=96, encoding="rgb8", step=288, data=img.tobytes())))
    for k, offset in enumerate((0.0, 0.0, 0.2)):  # the third plan differs by 0.2 on one joint
        plan = JointTrajectory(joint_names=dims)
        plan.header.stamp.sec = 10 + k
        for i in range(4):
            row = chunk[i].copy()
            row[2] += offset
            pt = JointTrajectoryPoint(positions=row.tolist())
            pt.time_from_start.nanosec = int(i * 1e9 / spec.control_rate_hz)
            plan.points.append(pt)
        rec.write("/vla/action_chunk", S + 10 + k, serialize_message(plan))
    rec.stop()
    report = replay(tmp_path / "bag", model, tolerance=0.05)
    assert report["ticks"] == 3, report
    assert report["per_tick"][0]["max_abs_diff"] < 1e-4 and report["per_tick"][1]["max_abs_diff"] < 1e-4
    assert [p["dim"] for p in report["over_tolerance"]] == [dims[2]]
    assert report["over_tolerance"][0]["max_abs_diff"] == pytest.approx(0.2, abs=1e-4)
    json.dumps(report)
