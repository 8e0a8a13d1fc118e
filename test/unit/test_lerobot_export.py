"""LeRobotDataset v3.0 export of recorded bags, checked with pyarrow and PyAV alone (no LeRobot here).

The bags are written with the recorder's own :class:`BagRecorder` from messages serialised by
rosbags' typestore: a scripted run of the simulated Panda's config whose every value is known, so
each exported frame can be compared with what the bag held at that frame's time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from rosbags.typesys import Stores, get_typestore

from test.conftest import ROOT
from vla_runtime.cli import main
from vla_runtime.core.config import load_config
from vla_runtime.data.lerobot_export import (
    MODES,
    ExportError,
    ExportOptions,
    export_lerobot,
    image_to_rgb,
    layout_from_config,
    realtime_permitted,
)
from vla_runtime.data.recording import BagRecorder, TopicSpec

S = 1_000_000_000
TS = get_typestore(Stores.ROS2_HUMBLE)
M = TS.types
CONFIG = ROOT / "config" / "sim_panda.yaml"
ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGER = "panda_finger_joint1"
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
CAM_TOPIC = "/camera/scene/image_raw"
TOPICS = [
    TopicSpec("/joint_states", "sensor_msgs/msg/JointState"),
    TopicSpec(CAM_TOPIC, "sensor_msgs/msg/Image"),
    TopicSpec("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
    TopicSpec("/gripper_controller/commands", "std_msgs/msg/Float64MultiArray"),
    TopicSpec("/vla/action_chunk", "trajectory_msgs/msg/JointTrajectory"),
    TopicSpec("/vla/safety_state", "diagnostic_msgs/msg/DiagnosticStatus", latched=True),
    TopicSpec("/vla/instruction", "std_msgs/msg/String", latched=True),
    TopicSpec("/vla/intervention", "std_msgs/msg/String"),
]


# ------------------------------------------------------------------------------ messages
def _time(t: int):
    return M["builtin_interfaces/msg/Time"](sec=t // S, nanosec=t % S)


def _header(t: int = 0, frame: str = ""):
    return M["std_msgs/msg/Header"](stamp=_time(t), frame_id=frame)


def _ser(msg) -> bytes:
    return bytes(TS.serialize_cdr(msg, msg.__msgtype__))


def joint_state(t: int, names: list[str], pos) -> bytes:
    return _ser(M["sensor_msgs/msg/JointState"](header=_header(t), name=names, position=np.asarray(pos, float),
                                                velocity=np.zeros(0), effort=np.zeros(0)))


def trajectory(stamp: int, names: list[str], tfs: list[int], rows, frame: str = "") -> bytes:
    pts = [M["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(r, float), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=M["builtin_interfaces/msg/Duration"](sec=d // S, nanosec=d % S)) for d, r in zip(tfs, rows)]
    return _ser(M["trajectory_msgs/msg/JointTrajectory"](header=_header(stamp, frame), joint_names=names, points=pts))


def f64(values) -> bytes:
    layout = M["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return _ser(M["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, float)))


def string(text: str) -> bytes:
    return _ser(M["std_msgs/msg/String"](data=text))


def status(mode: str) -> bytes:
    return _ser(M["diagnostic_msgs/msg/DiagnosticStatus"](level=0, name="vla_runtime: controller_bridge",
                                                          message=mode, hardware_id="panda", values=[]))


def image(t: int, img: np.ndarray, encoding: str = "rgb8") -> bytes:
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    return _ser(M["sensor_msgs/msg/Image"](header=_header(t), height=h, width=w, encoding=encoding, is_bigendian=0,
                                           step=w * ch, data=np.ascontiguousarray(img).reshape(-1)))


def picture(i: int) -> np.ndarray:
    """Camera image number ``i``: flat colour blocks that differ clearly from the next image's."""
    img = np.empty((48, 64, 3), np.uint8)
    img[:] = ((i * 37) % 180 + 40, (i * 71) % 180 + 40, (i * 113) % 180 + 40)
    img[8:24, 8:32] = (250 - (i * 53) % 200, 20, (i * 29) % 255)
    return img


# ------------------------------------------------------------------------------ a scripted run
def q(t_s: float) -> np.ndarray:
    """The measured arm at ``t_s`` seconds into the run."""
    return HOME + 0.1 * np.sin(t_s + np.arange(7))


def finger(t_s: float) -> float:
    return 0.02 + 0.01 * np.sin(t_s)


@dataclass
class Run:
    """What a scripted bag holds, as plain Python data (the test's reference)."""

    t0: int
    joints: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    images: list[tuple[int, np.ndarray]] = field(default_factory=list)
    arm_cmds: list[tuple[int, int, list[int], np.ndarray]] = field(default_factory=list)  # t, stamp, tfs, rows
    grip_cmds: list[tuple[int, float]] = field(default_factory=list)
    plans: list[tuple[int, int, list[int], np.ndarray | None]] = field(default_factory=list)
    modes: list[tuple[int, str]] = field(default_factory=list)
    instructions: list[tuple[int, str]] = field(default_factory=list)
    interventions: list[tuple[int, str]] = field(default_factory=list)

    def at(self, s: float) -> int:
        return self.t0 + round(s * S)


def scripted_run(t0: int, duration_s: float, instructions: list[tuple[float, str]], *, teleop=(2.0, 3.0),
                 halt=(4.0, 4.5), split_joint_states: bool = True) -> Run:
    """Joint states 100 Hz, camera 10 Hz, policy plans and trajectories 30 Hz, gripper 100 Hz; an operator
    takeover during ``teleop``, a halt during ``halt`` (a reset at its end)."""
    r = Run(t0)
    for k in range(int(duration_s * 100) + 1):
        s = k / 100
        if split_joint_states:  # arm and gripper in separate messages, the gripper at half the rate
            r.joints.append((r.at(s), dict(zip(ARM, q(s)))))
            if k % 2 == 0:
                r.joints.append((r.at(s) + 1000, {FINGER: finger(s)}))
        else:
            r.joints.append((r.at(s), dict(zip(ARM, q(s))) | {FINGER: finger(s)}))
    for i in range(int((duration_s - 0.03) * 10) + 1):
        r.images.append((r.at(0.03 + i / 10), picture(i + t0 // S)))
    r.arm_cmds.append((r.at(0.02), r.at(0.02), [int(0.5 * S)], q(0.02)[None]))  # the bridge's first hold
    halted = halt is not None
    k = 0
    while (s := 0.1 + k / 30) < duration_s:
        t = r.at(s)
        tfs = [j * 10_000_000 for j in range(5)]
        if teleop and teleop[0] <= s < teleop[1]:
            r.arm_cmds.append((t, t, [30_000_000], (q(s) - 0.05)[None]))
        elif halted and halt[0] <= s < halt[1]:
            r.arm_cmds.append((t, t, [int(0.5 * S)], q(halt[0])[None]))
        else:
            r.arm_cmds.append((t, t, tfs, np.array([q(s + d / S) + 0.05 for d in tfs])))
        k += 1
    for k in range(int((duration_s - 0.05) * 100) + 1):
        r.grip_cmds.append((r.at(0.05 + k / 100), 0.03 + 0.001 * (k % 7)))
    k = 0
    while (s := 0.08 + k / 30) < duration_s:
        t = r.at(s)
        tfs = [j * 10_000_000 for j in range(4)]
        if halted and halt[0] <= s < halt[1]:
            r.plans.append((t, t, [], None))  # the policy asks for HOLD
        else:
            rows = np.array([np.r_[q(s + d / S) + 0.07, 0.035] for d in tfs])
            r.plans.append((t, t + 5_000_000, tfs, rows))
        k += 1
    r.modes = [(r.at(0.01), "HOLD"), (r.at(0.09), "POLICY")]
    if teleop:
        r.modes += [(r.at(teleop[0]), "TELEOP"), (r.at(teleop[1]), "POLICY")]
        r.interventions = [(r.at(teleop[0]), "start: operator took over"), (r.at(teleop[1]), "end: released")]
    if halted:
        r.modes += [(r.at(halt[0]), "HALTED"), (r.at(halt[1]), "HOLD"), (r.at(halt[1] + 0.05), "POLICY")]
    r.instructions = [(r.at(s), text) for s, text in instructions]
    return r


def write_bag(path, run: Run, images: bool = True, encoding: str = "rgb8") -> None:
    rec = BagRecorder(path, TOPICS)
    events: list[tuple[int, str, bytes]] = []
    events += [(t, "/joint_states", joint_state(t, list(v), list(v.values()))) for t, v in run.joints]
    events += [(t, CAM_TOPIC, image(t, img, encoding)) for t, img in run.images] if images else []
    events += [(t, "/arm_controller/joint_trajectory", trajectory(st, ARM, tfs, rows)) for t, st, tfs, rows in
               run.arm_cmds]
    events += [(t, "/gripper_controller/commands", f64([v])) for t, v in run.grip_cmds]
    events += [(t, "/vla/action_chunk", trajectory(st, ARM + ["gripper/gripper"], tfs, [] if rows is None else rows,
                                                   "" if rows is not None else "hold: stale latent"))
               for t, st, tfs, rows in run.plans]
    events += [(t, "/vla/safety_state", status(m)) for t, m in run.modes]
    events += [(t, "/vla/instruction", string(x)) for t, x in run.instructions]
    events += [(t, "/vla/intervention", string(x)) for t, x in run.interventions]
    labels = dict(run.interventions)
    for t, topic, data in sorted(events, key=lambda e: e[0]):
        if topic == "/vla/intervention":  # as the recorder node does
            rec.mark_intervention(t, labels[t])
        rec.write(topic, t, data)
    rec.stop()


# ------------------------------------------------------------------------------ the reference
def latest(series, t):
    """The last (time, value) entry at or before ``t``, or None."""
    best = None
    for ts, v in series:
        if ts <= t:
            best = (ts, v)
        else:
            break
    return best


def ref_state(run: Run, t: int) -> np.ndarray:
    arm = latest([(ts, v) for ts, v in run.joints if ARM[0] in v], t)[1]
    fin = latest([(ts, v) for ts, v in run.joints if FINGER in v], t)[1]
    return np.r_[[arm[j] for j in ARM], fin[FINGER]]


def ref_traj(stamp: int, tfs: list[int], rows: np.ndarray, t: int) -> np.ndarray:
    if len(tfs) == 1:
        return rows[0]
    return np.array([np.interp(t - stamp, tfs, rows[:, j]) for j in range(rows.shape[1])])


def ref_action(run: Run, t: int) -> np.ndarray:
    _, (stamp, tfs, rows) = latest([(tt, (st, tf, rw)) for tt, st, tf, rw in run.arm_cmds], t)
    return np.r_[ref_traj(stamp, tfs, rows, t), latest(run.grip_cmds, t)[1]]


def ref_policy(run: Run, t: int) -> np.ndarray:
    hit = latest([(tt, (st, tf, rw)) for tt, st, tf, rw in run.plans], t)
    if hit is None or hit[1][2] is None:
        return np.full(8, np.nan)
    stamp, tfs, rows = hit[1]
    return ref_traj(stamp, tfs, rows, t)


def ref_mode(run: Run, t: int) -> int:
    hit = latest(run.modes, t)
    return -1 if hit is None else MODES[hit[1]]


def ref_intervention(run: Run, t: int) -> bool:
    start = [ts for ts, x in run.interventions if x.startswith("start")]
    end = [ts for ts, x in run.interventions if x.startswith("end")]
    return any(s <= t < e for s, e in zip(start, end))


def ref_image(run: Run, t: int) -> np.ndarray:
    return latest(run.images, t)[1]


# ------------------------------------------------------------------------------ fixtures
FPS = 10
RUN1_INSTR = [(0.0, "pick up the red cube"), (5.0, "touch the blue cube")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two bags: the first with a takeover, a halt + reset and an instruction change; the second short."""
    tmp = tmp_path_factory.mktemp("export")
    run1 = scripted_run(100 * S, 6.0, RUN1_INSTR)
    run2 = scripted_run(500 * S, 1.5, [(0.0, "pick up the red cube")], teleop=None, halt=None,
                        split_joint_states=False)
    write_bag(tmp / "bag1", run1)
    write_bag(tmp / "bag2", run2)
    cfg = load_config(CONFIG)
    policy = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    result = export_lerobot([tmp / "bag1", tmp / "bag2"], tmp / "ds", cfg,
                            ExportOptions(fps=FPS, repo_id="test/panda_runs"))
    # The encoder leaves the exporting thread's scheduling as it was (SVT-AV1 would not: see below).
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == policy
    return tmp / "ds", result, [run1, run1, run1, run2]


def episode_table(root):
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()


def data_rows(root, ep: dict) -> dict[str, np.ndarray]:
    path = root / f"data/chunk-{ep['data/chunk_index']:03d}/file-{ep['data/file_index']:03d}.parquet"
    table = pq.read_table(path)
    idx = np.asarray(table.column("index"))
    keep = (idx >= ep["dataset_from_index"]) & (idx < ep["dataset_to_index"])
    return {name: np.array(table.column(name).to_pylist())[keep] for name in table.column_names}


# ------------------------------------------------------------------------------ tests
def test_episodes_split_at_reset_and_new_instruction_and_bags(exported):
    root, result, runs = exported
    eps = episode_table(root)
    assert [e["episode_index"] for e in eps] == [0, 1, 2, 3]
    run1 = runs[0]
    # Episode 0 starts once every stream has spoken (the gripper's first command, 0.05 s) and ends at
    # the reset that leaves HALTED (4.5 s); episode 1 runs to the new instruction (5.0 s); episode 2 to
    # the bag's last joint state (6.0 s, inclusive); the second bag is episode 3.
    starts = [run1.at(0.05), run1.at(4.5), run1.at(5.0), runs[3].at(0.05)]
    ends = [run1.at(4.5), run1.at(5.0), run1.at(6.0) + 1000, runs[3].at(1.5)]
    expect_len = [45, 5, 11, 15]
    assert [e["length"] for e in eps] == expect_len
    for e, s, end, n in zip(result.episodes, starts, ends, expect_len):
        assert (e["start_ns"], e["end_ns"], e["frames"]) == (s, end, n)
    assert [e["tasks"] for e in eps] == [["pick up the red cube"], ["pick up the red cube"],
                                         ["touch the blue cube"], ["pick up the red cube"]]
    assert [e["ends_at"] for e in result.episodes] == ["reset after HALTED", "new instruction", "bag end", "bag end"]
    assert eps[0]["dataset_from_index"] == 0
    for a, b in zip(eps, eps[1:]):
        assert b["dataset_from_index"] == a["dataset_to_index"]
    assert eps[-1]["dataset_to_index"] == sum(expect_len)


def test_frames_hold_the_bag_values_at_their_times(exported):
    root, result, runs = exported
    for ep, prov, run in zip(episode_table(root), result.episodes, runs):
        rows = data_rows(root, ep)
        n = ep["length"]
        assert list(rows["frame_index"]) == list(range(n))
        np.testing.assert_allclose(rows["timestamp"], np.arange(n) / FPS, atol=1e-6)
        assert set(rows["episode_index"]) == {ep["episode_index"]}
        assert list(rows["index"]) == list(range(ep["dataset_from_index"], ep["dataset_to_index"]))
        for k in range(n):
            t = prov["start_ns"] + k * S // FPS
            np.testing.assert_allclose(rows["observation.state"][k], ref_state(run, t), atol=1e-6)
            np.testing.assert_allclose(rows["action"][k], ref_action(run, t), atol=1e-6)
            plan = ref_policy(run, t)  # NaN: no plan value; the export then holds the sent action
            np.testing.assert_allclose(rows["policy_action"][k], np.where(np.isnan(plan), ref_action(run, t), plan),
                                       atol=1e-6)
            assert bool(rows["policy_held"][k]) == bool(np.isnan(plan).all())
            assert rows["safety_mode"][k] == ref_mode(run, t)
            assert bool(rows["intervention"][k]) == (ref_intervention(run, t) or ref_mode(run, t) == MODES["TELEOP"])


def test_interventions_and_policy_holds_are_where_the_bag_has_them(exported):
    root, result, runs = exported
    eps = episode_table(root)
    rows = data_rows(root, eps[0])
    t = result.episodes[0]["start_ns"] + np.arange(eps[0]["length"]) * S // FPS
    run = runs[0]
    inside = (t >= run.at(2.0)) & (t < run.at(3.0))
    assert inside.sum() == 10
    np.testing.assert_array_equal(rows["intervention"], inside)
    # The operator's commands (measured - 0.05) are the action there; the policy's plan (measured +
    # 0.07) goes on beside them, as HG-DAgger needs.
    gap = rows["policy_action"][inside][:, :7] - rows["action"][inside][:, :7]
    assert np.isfinite(gap).all() and (np.abs(gap) > 0.08).all()
    # HALTED: the policy asked for HOLD (empty plans), the bridge held the arm; the frames say the
    # policy held, and its plan column holds the hold that was sent (never NaN).
    halted = rows["safety_mode"] == MODES["HALTED"]
    assert halted.sum() == 5
    np.testing.assert_allclose(rows["action"][halted][:, :7], np.tile(q(4.0), (5, 1)), atol=1e-6)
    np.testing.assert_array_equal(rows["policy_action"][halted], rows["action"][halted])
    # The first frame (0.05 s) comes before the first plan (0.08 s): no plan value there either.
    np.testing.assert_array_equal(np.nonzero(rows["policy_held"])[0], [0] + list(np.nonzero(halted)[0]))
    for e in eps:
        for name, col in data_rows(root, e).items():
            assert np.isfinite(col.astype(float)).all(), name
    assert result.episodes[0]["intervention_frames"] == 10 and result.episodes[0]["policy_held_frames"] == 6
    assert not any(data_rows(root, e)["intervention"].any() for e in eps[1:])


def test_videos_decode_to_the_recorded_images(exported):
    root, result, runs = exported
    info = json.loads((root / "meta/info.json").read_text())
    key = "observation.images.scene"
    vinfo = info["features"][key]["info"]
    assert (vinfo["video.codec"], vinfo["video.pix_fmt"], vinfo["video.fps"]) == ("h264", "yuv420p", FPS)
    eps = episode_table(root)
    path = root / f"videos/{key}/chunk-000/file-000.mp4"
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        decoded = {round(float(f.pts * s.time_base) * FPS): f.to_ndarray(format="rgb24") for f in c.decode(s)}
    assert len(decoded) == sum(e["length"] for e in eps) == info["total_frames"]
    errors = []
    for ep, prov, run in zip(eps, result.episodes, runs):
        assert ep[f"videos/{key}/chunk_index"] == 0 and ep[f"videos/{key}/file_index"] == 0
        first = ep[f"videos/{key}/from_timestamp"] * FPS
        assert ep[f"videos/{key}/to_timestamp"] * FPS == pytest.approx(first + ep["length"])
        for k in range(ep["length"]):
            t = prov["start_ns"] + k * S // FPS
            want = ref_image(run, t).astype(float)
            got = decoded[round(first) + k].astype(float)
            err = np.abs(got - want).mean()
            errors.append(err)
            # The decoded frame is nearer to the image the bag held at that time than to any other.
            others = [np.abs(got - img.astype(float)).mean() for tt, img in run.images if img is not ref_image(run, t)]
            assert err < min(others) / 1.5, (ep["episode_index"], k, err, min(others))
    # Lossy (crf 30) on small frames with sharp edges: a few levels of 255.
    assert np.mean(errors) < 4.0 and max(errors) < 12.0, (np.mean(errors), max(errors))


def test_info_tasks_and_stats_are_consistent(exported):
    root, result, runs = exported
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "panda"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, 76, 2)
    assert info["splits"] == {"train": "0:4"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    names = ARM + ["gripper/gripper"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [8], "names": names}
    assert feats["action"]["names"] == names and feats["policy_action"]["names"] == names
    assert feats["observation.images.scene"]["shape"] == [48, 64, 3]
    assert feats["observation.images.scene"]["names"] == ["height", "width", "channels"]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[k]["shape"] == [1]
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick up the red cube", "touch the blue cube"]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    eps = episode_table(root)
    for ep in eps:
        rows = data_rows(root, ep)
        assert set(rows["task_index"]) == {tasks.column("task").to_pylist().index(ep["tasks"][0])}
    # Columns of every data file are exactly the non-video features.
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert set(table.column_names) == {k for k, f in feats.items() if f["dtype"] != "video"}
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(feats)
    state = np.array(table.column("observation.state").to_pylist())
    s = stats["observation.state"]
    np.testing.assert_allclose(s["min"], state.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(s["max"], state.max(axis=0), atol=1e-6)
    np.testing.assert_allclose(s["mean"], state.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(s["std"], state.std(axis=0), atol=1e-6)
    np.testing.assert_allclose(s["q50"], np.quantile(state, 0.5, axis=0), atol=1e-6)
    assert s["count"] == [76] and set(s) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    pol = np.array(table.column("policy_action").to_pylist(), dtype=float)
    np.testing.assert_allclose(stats["policy_action"]["q99"], np.quantile(pol, 0.99, axis=0), atol=1e-6)
    held = np.array(table.column("policy_held").to_pylist())
    assert stats["policy_held"]["mean"] == pytest.approx([held.mean()])
    img = stats["observation.images.scene"]
    assert np.array(img["mean"]).shape == (3, 1, 1) and img["count"] == [76]
    assert 0 <= np.min(img["min"]) <= np.max(img["max"]) <= 1
    # Per-episode stats sit in the episodes table, as LeRobot's writer puts them.
    assert eps[1]["stats/observation.state/count"] == [5]
    np.testing.assert_allclose(eps[1]["stats/observation.state/max"], data_rows(root, eps[1])["observation.state"]
                               .max(axis=0), atol=1e-6)


def test_files_roll_over_at_their_size_limits(tmp_path):
    run = scripted_run(100 * S, 6.0, RUN1_INSTR)
    write_bag(tmp_path / "bag", run)
    tiny = 1e-6  # every episode fills a file
    result = export_lerobot([tmp_path / "bag"], tmp_path / "ds", load_config(CONFIG),
                            ExportOptions(fps=FPS, chunks_size=2, data_files_size_in_mb=tiny,
                                          video_files_size_in_mb=tiny))
    root = result.root
    eps = episode_table(root)
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in eps] == [(0, 0), (0, 1), (1, 0)]
    key = "observation.images.scene"
    assert [(e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"]) for e in eps] == [(0, 0), (0, 1), (1, 0)]
    for ep, prov in zip(eps, result.episodes):
        assert len(data_rows(root, ep)["index"]) == ep["length"]
        assert ep[f"videos/{key}/from_timestamp"] == 0.0
        path = root / f"videos/{key}/chunk-{ep[f'videos/{key}/chunk_index']:03d}/" \
                      f"file-{ep[f'videos/{key}/file_index']:03d}.mp4"
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
            assert c.streams.video[0].codec_context.codec.canonical_name == "h264"
        assert len(frames) == ep["length"]
        want = ref_image(run, prov["start_ns"]).astype(float)
        assert np.abs(frames[0].astype(float) - want).mean() < 4.0


def test_av1_only_where_svt_av1_cannot_take_real_time_priority(tmp_path):
    write_bag(tmp_path / "bag", scripted_run(100 * S, 1.5, RUN1_INSTR[:1], teleop=None, halt=None))
    opts = ExportOptions(fps=FPS, vcodec="libsvtav1")
    if realtime_permitted():  # root, CAP_SYS_NICE or an rtprio limit (this machine's CI runs as root)
        with pytest.raises(ExportError, match="SCHED_FIFO 99 .* use h264"):
            export_lerobot([tmp_path / "bag"], tmp_path / "ds", load_config(CONFIG), opts)
        assert not (tmp_path / "ds").exists()
        return
    result = export_lerobot([tmp_path / "bag"], tmp_path / "ds", load_config(CONFIG), opts)
    assert json.loads((result.root / "meta/info.json").read_text())["features"]["observation.images.scene"][
        "info"]["video.codec"] == "av1"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_task_from_config_ignores_instructions_and_splits_only_at_resets(tmp_path):
    write_bag(tmp_path / "bag", scripted_run(100 * S, 6.0, RUN1_INSTR))
    cfg = load_config(CONFIG)
    result = export_lerobot([tmp_path / "bag"], tmp_path / "ds", cfg, ExportOptions(fps=FPS, task_from="config"))
    assert [(e["task"], e["frames"], e["ends_at"]) for e in result.episodes] == [
        (cfg.instruction, 45, "reset after HALTED"), (cfg.instruction, 16, "bag end")]


def test_a_bag_without_images_exports_without_video_but_not_mixed_with_one_that_has_them(tmp_path):
    write_bag(tmp_path / "with", scripted_run(100 * S, 1.5, RUN1_INSTR[:1], teleop=None, halt=None))
    write_bag(tmp_path / "without", scripted_run(200 * S, 1.5, RUN1_INSTR[:1], teleop=None, halt=None), images=False)
    cfg = load_config(CONFIG)
    with pytest.raises(ExportError, match=r"camera 'scene' .* is recorded in .*with'\] but not in .*without'\]"):
        export_lerobot([tmp_path / "with", tmp_path / "without"], tmp_path / "mixed", cfg)
    result = export_lerobot([tmp_path / "without"], tmp_path / "ds", cfg, ExportOptions(fps=FPS))
    assert any("no images on /camera/scene/image_raw" in n for n in result.notes)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["video_path"] is None and "observation.images.scene" not in info["features"]
    assert not (tmp_path / "ds/videos").exists()
    # Without a camera the episode starts with the first gripper command (0.05 s), not an image.
    assert result.episodes[0]["start_ns"] == 200 * S + 50_000_000 and result.episodes[0]["frames"] == 15


def test_bags_that_do_not_fit_are_refused_by_name(tmp_path):
    cfg = load_config(CONFIG)
    with pytest.raises(ExportError, match="no such bag directory"):
        export_lerobot([tmp_path / "nope"], tmp_path / "ds", cfg)
    rec = BagRecorder(tmp_path / "js_only", TOPICS[:1])
    rec.write("/joint_states", S, joint_state(S, ARM + [FINGER], np.zeros(8)))
    rec.stop()
    with pytest.raises(ExportError, match=r"no commands on /arm_controller/joint_trajectory \(group 'arm'\).*"
                                          r"/gripper_controller/commands"):
        export_lerobot([tmp_path / "js_only"], tmp_path / "ds", cfg)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_lerobot([tmp_path / "js_only"], tmp_path / "full", cfg)
    with pytest.raises(ExportError, match="fps must be an integer"):
        ExportOptions(fps=0)
    with pytest.raises(ExportError, match="repo_id must look like"):
        ExportOptions(repo_id="a b")
    short = scripted_run(100 * S, 1.5, RUN1_INSTR[:1], teleop=None, halt=None)
    write_bag(tmp_path / "depth", short, encoding="32FC1")
    with pytest.raises(ExportError, match=r"depth: /camera/scene/image_raw: image encoding '32FC1' is not exported"):
        export_lerobot([tmp_path / "depth"], tmp_path / "ds", cfg)
    write_bag(tmp_path / "cut", short)
    part = next((tmp_path / "cut").glob("*.mcap"))
    part.write_bytes(part.read_bytes()[:5000])  # a part cut short (not one the recorder closed)
    with pytest.raises(ExportError, match="cut: cannot read the bag"):
        export_lerobot([tmp_path / "cut"], tmp_path / "ds", cfg)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.partial"))


def test_cli_exports_and_reports_errors_without_a_traceback(tmp_path, capsys):
    run = scripted_run(100 * S, 1.2, [(0.0, "pick up the red cube")], teleop=None, halt=None)
    write_bag(tmp_path / "bag", run)
    rc = main(["export", "lerobot", str(tmp_path / "bag"), "--out", str(tmp_path / "ds"), "--fps", "15",
               "--config", str(CONFIG)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads(out.out)
    assert summary["repo_id"] == "local/ds" and summary["total_episodes"] == 1
    assert summary["total_frames"] == 18  # 0.05 s … 1.2 s at 15 fps, the last joint state included
    assert "LeRobotDataset('local/ds'" in out.err
    rc = main(["export", "lerobot", str(tmp_path / "bag"), "--out", str(tmp_path / "ds")])
    out = capsys.readouterr()
    assert rc == 1 and "exists and is not an empty directory" in out.err and "Traceback" not in out.err
    rc = main(["export", "lerobot", str(tmp_path / "missing"), "--out", str(tmp_path / "ds2")])
    assert rc == 1 and "no such bag directory" in capsys.readouterr().err
    gr1 = ROOT / "config" / "sim_gr1.yaml"
    rc = main(["export", "lerobot", str(tmp_path / "bag"), "--out", str(tmp_path / "ds3"), "--config", str(gr1)])
    err = capsys.readouterr().err
    assert rc == 1 and "pass the run's config with --config" in err


def test_layout_names_the_gripper_as_model_packages_do():
    layout = layout_from_config(load_config(CONFIG))
    assert layout.state_names == tuple(ARM) + ("gripper/gripper",)
    assert layout.state_joints == tuple(ARM) + (FINGER,)
    assert layout.action_names == tuple(ARM) + ("gripper/gripper",)
    assert layout.cameras == {"scene": CAM_TOPIC}


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_image_encodings_become_rgb(encoding):
    rgb = picture(3)
    raw = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
           "mono8": rgb[..., 0]}[encoding]
    msg = TS.deserialize_cdr(image(0, raw, encoding), "sensor_msgs/msg/Image")
    want = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(image_to_rgb(msg), want)
    msg.encoding = "32FC1"
    with pytest.raises(ExportError, match="'32FC1' is not exported"):
        image_to_rgb(msg)
