"""Recorded bags → a LeRobotDataset (format v3.0, as LeRobot 0.6 reads it) — no rclpy, no LeRobot.

The recorder (:mod:`vla_runtime.data.recording`) keeps what a run did; this module turns it into
what LeRobot trains on. Every bag is read twice with ``rosbags``: once for the small topics (joint
states, commands, plans, modes, instructions, interventions), once streaming the camera images into
the video encoders, so memory does not grow with the recording.

What a frame holds (``fps`` frames per second of the bag's receive-time axis; frame ``k`` of an
episode is the state of the run at ``episode start + k / fps``, its ``timestamp`` is ``k / fps``):

* ``observation.state`` — the newest ``/joint_states`` value of each robot joint, in the config's
  joint order; a gripper group's joint is named ``<group>/gripper`` as model packages name it.
* ``observation.images.<camera>`` — the newest image of each config camera (video, RGB).
* ``action`` — what the bridge really commanded after its safety filter: the newest message on each
  controller topic, a ``JointTrajectory`` sampled at the frame's time, mapped back onto the action
  dims of every group (joints, ``<group>/x … qw``, ``<group>/gripper``, ``<group>/vx, vy, wz``).
* ``policy_action`` — the policy's plan (``/vla/action_chunk``) at that instant, on the same dims.
  Not named ``action.*``: LeRobot takes every ``action*`` feature as a policy output.
  Where there is no plan value (the policy asked for HOLD with an empty plan, had no plan yet, or
  does not drive a dim) it holds ``action``'s value instead, and ``policy_held`` says so for a
  frame without any plan value. No NaN: LeRobot's own tools (``aggregate_datasets``, through
  pandas) turn a NaN inside a vector into a null that its loader then cannot read.
* ``policy_held`` — the frame has no plan value (see above).
* ``intervention`` — the operator was in control: inside an intervention of the bag (its metadata
  and ``/vla/intervention``) or while ``/vla/safety_state`` says TELEOP.
* ``safety_mode`` — the bridge's mode: 0 POLICY, 1 TELEOP, 2 HOLD, 3 HALTED, -1 not known yet.

Episodes: every bag is at least one. A new episode starts at each new ``/vla/instruction`` text
and where the bridge leaves HALTED (a reset). An episode starts once every stream it needs has
spoken (joint states for every joint, a command on every controller topic, an image from every
camera) and ends at the next boundary or at the last joint state of the bag. The task of an
episode is its instruction (or the config's ``instruction`` before the first message).

Layout written (``meta/info.json`` describes it; paths follow its templates): ``data/chunk-XXX/
file-XXX.parquet`` (one row per frame, one row group per episode), ``videos/<key>/chunk-XXX/
file-XXX.mp4`` (episodes back to back; ``meta/episodes`` says where each starts),
``meta/episodes/chunk-000/file-000.parquet``, ``meta/tasks.parquet``, ``meta/stats.json``
(min/max/mean/std/count and the q01/q10/q50/q90/q99 quantiles LeRobot 0.6 normalises with), and
``meta/vla_runtime_export.json`` (which bag and time range each episode came from).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml

from vla_runtime.core.command_mapping import (
    CommandMapper,
    GripperCommand,
    JointCommand,
    MappingError,
    PoseCommand,
    TwistCommand,
    group_dims,
)
from vla_runtime.core.config import RobotProfile, RuntimeConfig
from vla_runtime.core.contract import (
    TOPIC_ACTION_CHUNK,
    TOPIC_INSTRUCTION,
    TOPIC_INTERVENTION,
    TOPIC_JOINT_STATES,
    TOPIC_SAFETY_STATE,
)
from vla_runtime.data.recording import METADATA, bag_interventions

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
TASKS_PATH = "meta/tasks.parquet"
PROVENANCE_PATH = "meta/vla_runtime_export.json"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
#: ``safety_mode`` codes (``-1``: no ``/vla/safety_state`` seen yet).
MODES = {"POLICY": 0, "TELEOP": 1, "HOLD": 2, "HALTED": 3}
VIDEO_CODECS = ("h264", "libsvtav1")
IMAGE_KEY_PREFIX = "observation.images."
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
#: Most pixels per frame that go into the image statistics (larger frames are strided).
_STATS_PIXELS = 20_000


class ExportError(ValueError):
    """A bag, config or option that cannot be exported; the message names the bad value."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        fps: Frames per second of the dataset (LeRobot stores an integer rate).
        repo_id: The name to load the dataset under (``LeRobotDataset(repo_id, root=out)``).
        task_from: ``instruction`` (``/vla/instruction``, the config's ``instruction`` before the
            first message) or ``config`` (the config's ``instruction`` for every frame).
        vcodec: ``h264`` or ``libsvtav1`` (AV1, what LeRobot records; refused where SVT-AV1 could
            put its threads on SCHED_FIFO 99, see :func:`realtime_permitted`).
        crf: Encoder quality (lower is better and bigger).
        gop: Keyframe interval in frames (small: fast random access while training).
        min_frames: Episodes shorter than this are left out (and reported).
        chunks_size: Files per ``chunk-XXX`` directory.
        data_files_size_in_mb: A data parquet file is closed once it holds about this much.
        video_files_size_in_mb: A video file is closed once it is this large.
    """

    fps: int = 30
    repo_id: str = "local/vla_runtime"
    task_from: str = "instruction"
    vcodec: str = "h264"
    crf: int = 30
    gop: int = 2
    min_frames: int = 2
    chunks_size: int = 1000
    data_files_size_in_mb: float = 100
    video_files_size_in_mb: float = 200

    def __post_init__(self) -> None:
        if isinstance(self.fps, bool) or not isinstance(self.fps, int) or not 1 <= self.fps <= 1000:
            raise ExportError(f"fps must be an integer in [1, 1000], got {self.fps!r}")
        if not _REPO_ID.fullmatch(self.repo_id):
            raise ExportError(f"repo_id must look like 'owner/name' (letters, digits, . _ -), got {self.repo_id!r}")
        if self.task_from not in ("instruction", "config"):
            raise ExportError(f"task_from must be 'instruction' or 'config', got {self.task_from!r}")
        if self.vcodec not in VIDEO_CODECS:
            raise ExportError(f"vcodec must be one of {list(VIDEO_CODECS)}, got {self.vcodec!r}")
        if not 0 <= self.crf <= 63:
            raise ExportError(f"crf must be in [0, 63], got {self.crf}")
        if self.gop < 1:
            raise ExportError(f"gop must be >= 1, got {self.gop}")
        if self.min_frames < 1:
            raise ExportError(f"min_frames must be >= 1, got {self.min_frames}")
        for name in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb"):
            if not getattr(self, name) > 0:
                raise ExportError(f"{name} must be > 0, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class _Group:
    name: str
    controller: str
    topic: str
    joints: tuple[str, ...]
    dims: tuple[str, ...]


@dataclass(frozen=True)
class DatasetLayout:
    """Which dims and streams a config's recordings export to.

    Attributes:
        state_names: ``observation.state`` dims (robot joints; ``<group>/gripper`` for a gripper).
        state_joints: The ``/joint_states`` joint each state dim reads.
        action_names: ``action`` / ``policy_action`` dims, every group's in config order.
        groups: Controller groups with their topic and dims.
        cameras: Camera name → image topic.
    """

    state_names: tuple[str, ...]
    state_joints: tuple[str, ...]
    action_names: tuple[str, ...]
    groups: tuple[_Group, ...]
    cameras: dict[str, str]
    robot: RobotProfile


def layout_from_config(cfg: RuntimeConfig) -> DatasetLayout:
    """The dims of a config: state from the robot's joints, action from its controller groups."""
    alias: dict[str, str] = {}
    dropped: set[str] = set()
    for gname, g in cfg.robot.groups.items():
        if g.controller == "gripper":
            alias[g.joints[0]] = f"{gname}/gripper"
            dropped.update(g.joints[1:])  # mimic fingers follow the first joint
    joints = [j.name for j in cfg.robot.joints if j.name not in dropped]
    groups = tuple(_Group(gname, g.controller, g.resolved_topic, tuple(g.joints), tuple(group_dims(gname, g)))
                   for gname, g in cfg.robot.groups.items())
    return DatasetLayout(
        state_names=tuple(alias.get(j, j) for j in joints),
        state_joints=tuple(joints),
        action_names=tuple(d for g in groups for d in g.dims),
        groups=groups,
        cameras={c.name: c.topic for c in cfg.cameras},
        robot=cfg.robot,
    )


# ---------------------------------------------------------------------------------- bag pass 1
@dataclass
class _Plans:
    """Time-stamped piecewise-linear trajectories: one per message (a command or a plan)."""

    t_recv: list[int] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    tfs: list[np.ndarray] = field(default_factory=list)  # ns from start, (P,)
    values: list[np.ndarray] = field(default_factory=list)  # (P, k)
    names: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, t_recv: int, start: int, tfs: np.ndarray, values: np.ndarray, names: tuple[str, ...] = ()) -> None:
        self.t_recv.append(t_recv)
        self.start.append(start)
        self.tfs.append(tfs)
        self.values.append(values)
        self.names.append(names)

    def newest(self, ts: np.ndarray) -> np.ndarray:
        """Index of the newest message received at or before each time (-1: none yet)."""
        return np.searchsorted(np.asarray(self.t_recv, dtype=np.int64), ts, side="right") - 1

    def sample(self, i: int, ts: np.ndarray) -> np.ndarray:
        """Message ``i``'s trajectory at times ``ts`` (held at its first and last points)."""
        vals, tfs = self.values[i], self.tfs[i]
        if len(tfs) == 1:
            return np.repeat(vals[:1], len(ts), axis=0)
        rel = (ts - self.start[i]).astype(np.float64)
        return np.stack([np.interp(rel, tfs, vals[:, j]) for j in range(vals.shape[1])], axis=1)


@dataclass
class _BagSignals:
    path: Path
    joints: dict[str, tuple[list[int], list[float]]]
    commands: dict[str, _Plans]
    plans: _Plans
    instructions: list[tuple[int, str]]
    modes: list[tuple[int, int]]
    interventions: list[tuple[int, float]]
    first_image: dict[str, int]
    t_last_joint: int
    mappers: dict[tuple[str, ...], CommandMapper | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _traj_start(stamp_ns: int, t_recv: int) -> int:
    """A trajectory's start: its header stamp; receive time for a zero stamp ("now") or another clock."""
    if stamp_ns == 0 or abs(stamp_ns - t_recv) > 10_000_000_000:
        return t_recv
    return stamp_ns


def _bag_topics(path: Path) -> dict[str, tuple[str, int]]:
    """Topic → (type, message count) from a bag's ``metadata.yaml``."""
    meta_path = path / METADATA
    if not meta_path.exists():
        if not path.exists():
            raise ExportError(f"{path}: no such bag directory")
        raise ExportError(f"{path}: no {METADATA} — not a bag, or no part of its recording was closed")
    try:
        info = yaml.safe_load(meta_path.read_text())["rosbag2_bagfile_information"]
        return {e["topic_metadata"]["name"]: (e["topic_metadata"]["type"], int(e["message_count"]))
                for e in info["topics_with_message_count"]}
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ExportError(f"{meta_path}: not a rosbag2 metadata file ({e})") from None


def _check_bag(path: Path, layout: DatasetLayout, config_name: str) -> dict[str, tuple[str, int]]:
    topics = _bag_topics(path)
    if topics.get(TOPIC_JOINT_STATES, ("", 0))[1] == 0:
        raise ExportError(f"{path}: no {TOPIC_JOINT_STATES} messages; nothing to export")
    missing = [f"{g.topic} (group {g.name!r})" for g in layout.groups if topics.get(g.topic, ("", 0))[1] == 0]
    if missing:
        raise ExportError(f"{path}: no commands on {', '.join(missing)} — recorded with another config than "
                          f"{config_name}? pass the run's config with --config")
    return topics


def _messages(path: Path, topics: set[str]):
    """``(connection, receive time, raw CDR)`` of a bag's ``topics`` in time order; a bag rosbags cannot
    read is an :class:`ExportError` naming it."""
    from rosbags.rosbag2 import Reader, ReaderError

    try:
        with Reader(path) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            yield from reader.messages(connections=conns)
    except ReaderError as e:
        raise ExportError(f"{path}: cannot read the bag: {e}") from None


def _read_signals(path: Path, layout: DatasetLayout) -> _BagSignals:
    """Pass 1: every non-image stream of a bag, and when each camera starts."""
    from vla_runtime.data.recording import RecordingError, _typestore, deserialize

    ts = _typestore()
    group_of = {g.topic: g for g in layout.groups}
    cam_of = {t: c for c, t in layout.cameras.items()}
    wanted_joints = set(layout.state_joints)
    sig = _BagSignals(path, {j: ([], []) for j in layout.state_joints}, {g.name: _Plans() for g in layout.groups},
                      _Plans(), [], [], [], {}, -1)
    open_iv: int | None = None
    names_cache: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    wanted = {TOPIC_JOINT_STATES, TOPIC_ACTION_CHUNK, TOPIC_INSTRUCTION, TOPIC_SAFETY_STATE, TOPIC_INTERVENTION,
              *group_of, *cam_of}
    for conn, t, raw in _messages(path, wanted):
        topic = conn.topic
        if topic in cam_of:  # pass 2 decodes the images; here only when they start
            sig.first_image.setdefault(cam_of[topic], t)
            continue
        try:
            msg = deserialize(ts, raw, conn.msgtype)
        except (RecordingError, ValueError, IndexError) as e:
            raise ExportError(f"{path}: {topic} at t={t} ns does not decode as {conn.msgtype}: {e}") from None
        if topic == TOPIC_JOINT_STATES:
            names = tuple(msg.name)
            idx = names_cache.get(names)
            if idx is None:
                idx = names_cache[names] = [(i, n) for i, n in enumerate(names) if n in wanted_joints]
            pos = msg.position
            for i, n in idx:
                if i < len(pos):
                    sig.joints[n][0].append(t)
                    sig.joints[n][1].append(float(pos[i]))
            sig.t_last_joint = max(sig.t_last_joint, t)
        elif topic in group_of:
            _add_command(sig.commands[group_of[topic].name], group_of[topic], conn.msgtype, msg, t, path)
        elif topic == TOPIC_ACTION_CHUNK:
            names = tuple(msg.joint_names)
            if not len(msg.points):  # the policy asked for HOLD
                sig.plans.add(t, t, np.zeros(1), np.full((1, len(names)), np.nan), names)
                continue
            vals = np.array([p.positions for p in msg.points], dtype=np.float64)
            if vals.ndim != 2 or vals.shape[1] != len(names):
                raise ExportError(f"{path}: {topic} at t={t} ns: points do not have {len(names)} values "
                                  f"({list(names)})")
            tfs = np.array([_stamp_ns(p.time_from_start) for p in msg.points], dtype=np.float64)
            sig.plans.add(t, _traj_start(_stamp_ns(msg.header.stamp), t), tfs, vals, names)
            if names not in sig.mappers:
                try:
                    sig.mappers[names] = CommandMapper(layout.robot, names)
                except MappingError as e:  # the bridge refuses such plans: the policy held
                    sig.mappers[names] = None
                    sig.notes.append(f"{path}: plans with dims {list(names)} do not map onto the robot's groups "
                                     f"({e}); their frames count as policy_held")
        elif topic == TOPIC_INSTRUCTION:
            sig.instructions.append((t, str(msg.data)))
        elif topic == TOPIC_SAFETY_STATE:
            sig.modes.append((t, MODES.get(str(msg.message).strip(), -1)))
        elif topic == TOPIC_INTERVENTION:
            text = str(msg.data)
            if text.startswith("start") and open_iv is None:
                open_iv = t
            elif text.startswith("end") and open_iv is not None:
                sig.interventions.append((open_iv, float(t)))
                open_iv = None
    if open_iv is not None:
        sig.interventions.append((open_iv, math.inf))
    for start, end, _reason in bag_interventions(path):
        sig.interventions.append((int(start), math.inf if end is None else float(end)))
    never = [j for j, (tt, _) in sig.joints.items() if not tt]
    if never:
        raise ExportError(f"{path}: {TOPIC_JOINT_STATES} never names joint(s) {never} of the config's robot")
    silent = [f"{g.topic} (group {g.name!r})" for g in layout.groups if not sig.commands[g.name].t_recv]
    if silent:
        raise ExportError(f"{path}: no command with a target on {', '.join(silent)}")
    return sig


def _add_command(plans: _Plans, g: _Group, msgtype: str, msg, t: int, path: Path) -> None:
    """One controller message → a trajectory of the group's dim values (what the bridge sent)."""
    k = len(g.dims)
    where = f"{path}: {g.topic} at t={t} ns"
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        names = list(msg.joint_names)
        try:
            cols = [names.index(j) for j in g.joints]
        except ValueError:
            raise ExportError(f"{where}: trajectory names {names}, the group drives {list(g.joints)}") from None
        if not len(msg.points):
            return  # an empty trajectory stops the controller where it is: no new target
        vals = np.array([np.asarray(p.positions, dtype=np.float64)[cols] for p in msg.points])
        tfs = np.array([_stamp_ns(p.time_from_start) for p in msg.points], dtype=np.float64)
        plans.add(t, _traj_start(_stamp_ns(msg.header.stamp), t), tfs, vals)
        return
    if msgtype == "std_msgs/msg/Float64MultiArray":
        row = np.asarray(msg.data, dtype=np.float64)
    elif msgtype == "geometry_msgs/msg/PoseStamped":
        p, o = msg.pose.position, msg.pose.orientation
        row = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w], dtype=np.float64)
    elif msgtype == "sensor_msgs/msg/JointState":
        by_name = dict(zip(msg.name, (float(x) for x in msg.position)))
        lacking = [j for j in g.joints if j not in by_name]
        if lacking:
            raise ExportError(f"{where}: no position for {lacking}")
        row = np.array([by_name[j] for j in g.joints])
    elif msgtype == "geometry_msgs/msg/Twist":
        row = np.array([msg.linear.x, msg.linear.y, msg.angular.z], dtype=np.float64)
    else:
        raise ExportError(f"{where}: unexpected message type {msgtype}")
    if row.shape != (k,):
        raise ExportError(f"{where}: {row.size} values for the group's {k} dims {list(g.dims)}")
    plans.add(t, t, np.zeros(1), row.reshape(1, k))


# ---------------------------------------------------------------------------------- episodes
@dataclass
class _Episode:
    bag: Path
    task: str
    start: int
    end: int
    frame_t: np.ndarray  # int64 ns
    why_end: str


def _frame_times(start: int, end: int, fps: int, inclusive: bool) -> np.ndarray:
    n = (end - start) * fps // 1_000_000_000 + 1
    ts = start + (np.arange(n, dtype=np.int64) * 1_000_000_000) // fps
    keep = ts <= end if inclusive else ts < end
    return ts[keep]


def _segments(sig: _BagSignals, layout: DatasetLayout, opts: ExportOptions, default_task: str,
              ) -> tuple[list[_Episode], list[str]]:
    """Split a bag into episodes; the notes say what was left out and why."""
    notes: list[str] = []
    # Every stream must have spoken before a frame can be built.
    ready = [tt[0] for tt, _ in sig.joints.values()]
    ready += [p.t_recv[0] for p in sig.commands.values() if p.t_recv]
    ready += [sig.first_image[c] for c in layout.cameras if c in sig.first_image]
    data_start = max(ready)
    data_end = sig.t_last_joint
    # Boundaries: a new instruction text, leaving HALTED (a reset).
    bounds: list[tuple[int, str]] = []
    if opts.task_from == "instruction":
        prev = default_task
        for t, text in sig.instructions:
            if text != prev:
                bounds.append((t, "new instruction"))
            prev = text
    halted = False
    for t, mode in sig.modes:
        if halted and mode != MODES["HALTED"]:
            bounds.append((t, "reset after HALTED"))
        halted = mode == MODES["HALTED"]
    bounds.sort()
    cuts = [b for b in bounds if data_start < b[0] <= data_end]
    starts = [(data_start, "bag start")] + cuts
    episodes: list[_Episode] = []
    for i, (s, _why) in enumerate(starts):
        last = i + 1 == len(starts)
        e, why_end = (data_end, "bag end") if last else starts[i + 1]
        task = default_task
        if opts.task_from == "instruction":
            before = [text for t, text in sig.instructions if t <= s]
            task = before[-1] if before else default_task
        frames = _frame_times(s, e, opts.fps, inclusive=last)
        if len(frames) < opts.min_frames:
            notes.append(f"{sig.path}: left out {len(frames)} frame(s) from {s} to {e} ns "
                         f"(before {why_end}; fewer than min_frames={opts.min_frames})")
            continue
        episodes.append(_Episode(sig.path, task, s, e, frames, why_end))
    return episodes, notes


@dataclass
class _Frames:
    state: np.ndarray
    action: np.ndarray
    policy: np.ndarray
    intervention: np.ndarray
    mode: np.ndarray


def _sample(sig: _BagSignals, layout: DatasetLayout, ts: np.ndarray) -> _Frames:
    """Every non-image feature at the frame times ``ts`` (newest value at or before each)."""
    n = len(ts)
    state = np.empty((n, len(layout.state_names)))
    for col, j in enumerate(layout.state_joints):
        tt, vv = sig.joints[j]
        i = np.searchsorted(np.asarray(tt, dtype=np.int64), ts, side="right") - 1
        state[:, col] = np.asarray(vv)[i]
    action = np.empty((n, len(layout.action_names)))
    col = 0
    for g in layout.groups:
        plans = sig.commands[g.name]
        idx = plans.newest(ts)
        for i in np.unique(idx):
            rows = idx == i
            action[rows, col:col + len(g.dims)] = plans.sample(int(i), ts[rows])
        col += len(g.dims)
    policy = np.full((n, len(layout.action_names)), np.nan)
    if sig.plans.t_recv:
        idx = sig.plans.newest(ts)
        for i in np.unique(idx[idx >= 0]):
            rows = np.nonzero(idx == i)[0]
            mapper = sig.mappers.get(sig.plans.names[int(i)])
            if mapper is None:  # a HOLD request, or a layout the robot cannot take
                continue
            raw = sig.plans.sample(int(i), ts[rows])
            for r, row in zip(rows, raw):
                if np.isnan(row).any():
                    continue
                policy[r] = _action_row(layout, mapper.commands(row), policy[r])
    mode = np.full(n, -1, dtype=np.int64)
    if sig.modes:
        mt = np.array([t for t, _ in sig.modes], dtype=np.int64)
        mv = np.array([m for _, m in sig.modes], dtype=np.int64)
        i = np.searchsorted(mt, ts, side="right") - 1
        mode = np.where(i >= 0, mv[np.maximum(i, 0)], -1)
    inter = mode == MODES["TELEOP"]
    for s, e in sig.interventions:
        inter |= (ts >= s) & (ts < e)
    return _Frames(state, action, policy, inter, mode)


def _action_row(layout: DatasetLayout, cmds: dict, out: np.ndarray) -> np.ndarray:
    """Per-group commands → one row on the action dims (dims no command names stay as they are)."""
    col = 0
    for g in layout.groups:
        c = cmds.get(g.name)
        k = len(g.dims)
        if isinstance(c, JointCommand):
            out[col:col + k] = c.values
        elif isinstance(c, PoseCommand):
            out[col:col + 3] = c.position
            out[col + 3:col + 7] = c.quaternion
        elif isinstance(c, GripperCommand):
            out[col] = c.value
        elif isinstance(c, TwistCommand):
            out[col:col + 3] = (c.vx, c.vy, c.wz)
        col += k
    return out


# ---------------------------------------------------------------------------------- statistics
def _stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count and the quantiles of each column of ``x`` (n, d)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0),
           "count": np.array([len(x)])}
    qs = np.quantile(x, QUANTILES, axis=0)
    out.update({_qkey(q): qs[i] for i, q in enumerate(QUANTILES)})
    return out


def _qkey(q: float) -> str:
    return f"q{round(q * 100):02d}"


def _hist_stats(hist: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats from 256-bin pixel histograms (3, 256), in [0, 1], shaped (3, 1, 1)."""
    levels = np.arange(256, dtype=np.float64)
    total = hist.sum(axis=1, keepdims=True).astype(np.float64)
    total[total == 0] = 1
    p = hist / total
    mean = (p * levels).sum(axis=1)
    std = np.sqrt(np.maximum(0.0, (p * levels**2).sum(axis=1) - mean**2))
    cdf = np.cumsum(p, axis=1)
    nz = hist > 0
    lo = np.where(nz.any(axis=1), nz.argmax(axis=1), 0)
    hi = np.where(nz.any(axis=1), 255 - nz[:, ::-1].argmax(axis=1), 0)
    out = {"min": lo.astype(np.float64), "max": hi.astype(np.float64), "mean": mean, "std": std}
    for q in QUANTILES:
        out[_qkey(q)] = np.array([np.searchsorted(c, q - 1e-12) for c in cdf], dtype=np.float64)
    shaped = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in out.items()}
    shaped["count"] = np.array([frames])
    return shaped


def _jsonable(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


# ---------------------------------------------------------------------------------- images, video
def realtime_permitted() -> bool:
    """Whether this process may put threads on a real-time policy (CAP_SYS_NICE, an rtprio limit).

    SVT-AV1 (``libsvtav1``) moves its encoder threads, and the thread that feeds it, to SCHED_FIFO
    priority 99 whenever it is allowed to (measured with PyAV 18's SVT-AV1 4.1 as root), and leaves
    the caller there: on a robot computer they would preempt the control loop (FIFO 80-85).
    """
    import resource

    try:
        if resource.getrlimit(resource.RLIMIT_RTPRIO)[0] != 0:
            return True
    except (AttributeError, ValueError, OSError):
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 23 & 1)  # CAP_SYS_NICE
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def image_to_rgb(msg) -> np.ndarray:
    """A ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) → (H, W, 3) uint8.

    Raises:
        ExportError: Another encoding (depth images are not exported).
    """
    enc = str(msg.encoding).lower()
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if channels is None:
        raise ExportError(f"image encoding {msg.encoding!r} is not exported (rgb8, bgr8, rgba8, bgra8, mono8)")
    h, w = int(msg.height), int(msg.width)
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if buf.size < h * int(msg.step) or int(msg.step) < w * channels:
        raise ExportError(f"image of {h}x{w} {msg.encoding} has {buf.size} bytes with step {msg.step}")
    img = buf[: h * int(msg.step)].reshape(h, int(msg.step))[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


class _Files:
    """chunk/file indices of one stream (data, or one video key): the next file when one is full."""

    def __init__(self, chunks_size: int) -> None:
        self.chunks_size = chunks_size
        self.chunk = 0
        self.file = 0

    def advance(self) -> None:
        self.file += 1
        if self.file == self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class _VideoWriter:
    """One camera's video files: episodes back to back, the next file once one is full."""

    def __init__(self, root: Path, key: str, opts: ExportOptions) -> None:
        self.root, self.key, self.opts = root, key, opts
        self.files = _Files(opts.chunks_size)
        self.container = None
        self.stream = None
        self.frames_in_file = 0
        self.ep_first = 0
        self.shape: tuple[int, int] | None = None
        self.info: dict | None = None

    @property
    def path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.files.chunk,
                                             file_index=self.files.file)

    def _open(self, h: int, w: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"g": str(self.opts.gop), "crf": str(self.opts.crf)}
        if self.opts.vcodec == "libsvtav1":
            options["preset"] = "12"
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(self.opts.vcodec, rate=self.opts.fps, options=options)
        self.stream.width, self.stream.height = w, h
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, self.opts.fps)
        self.frames_in_file = 0

    def begin_episode(self) -> None:
        self.ep_first = self.frames_in_file

    def add(self, img: np.ndarray) -> None:
        import av

        h, w = img.shape[:2]
        if self.shape is None:
            if h % 2 or w % 2:
                raise ExportError(f"{self.key}: {w}x{h} images cannot be encoded as yuv420p video (odd size)")
            self.shape = (h, w)
        elif (h, w) != self.shape:
            raise ExportError(f"{self.key}: image size changed from {self.shape[1]}x{self.shape[0]} to {w}x{h}")
        if self.container is None:
            self._open(h, w)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.frames_in_file
        frame.time_base = Fraction(1, self.opts.fps)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames_in_file += 1

    def end_episode(self) -> dict:
        """This episode's ``videos/<key>/…`` metadata; the file is closed when it is full."""
        meta = {
            f"videos/{self.key}/chunk_index": self.files.chunk,
            f"videos/{self.key}/file_index": self.files.file,
            f"videos/{self.key}/from_timestamp": self.ep_first / self.opts.fps,
            f"videos/{self.key}/to_timestamp": self.frames_in_file / self.opts.fps,
        }
        size = self.path.stat().st_size if self.path.exists() else 0  # the muxer writes once packets come
        if size >= self.opts.video_files_size_in_mb * 1024**2:
            self.close()
            self.files.advance()
        return meta

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        if self.info is None:
            self.info = _probe_video(self.path, self.opts)
        self.container = None
        self.stream = None
        self.frames_in_file = 0


def _probe_video(path: Path, opts: ExportOptions) -> dict:
    """The ``info`` LeRobot keeps for a video feature, read back from the written file."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"video.height": s.height, "video.width": s.width,
                "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.fps": opts.fps, "video.channels": 3, "has_audio": False}
    info.update({"video.g": opts.gop, "video.crf": opts.crf, "is_depth_map": False})
    return info


def _write_videos(sig: _BagSignals, layout: DatasetLayout, cams: list[str], episodes: list[_Episode],
                  writers: dict[str, _VideoWriter]) -> tuple[list[dict], list[dict[str, np.ndarray]]]:
    """Pass 2: stream a bag's images into the video writers, frame by frame of its episodes.

    Returns:
        Per episode: its ``videos/…`` metadata and each camera's pixel histograms (3, 256).
    """
    from vla_runtime.data.recording import RecordingError, _typestore, deserialize

    ts = _typestore()
    frame_t = np.concatenate([e.frame_t for e in episodes])
    ep_of = np.concatenate([np.full(len(e.frame_t), i) for i, e in enumerate(episodes)])
    first_of = {int(np.nonzero(ep_of == i)[0][0]) for i in range(len(episodes))}
    last_of = {int(np.nonzero(ep_of == i)[0][-1]) for i in range(len(episodes))}
    metas: list[dict] = [{} for _ in episodes]
    hists = [{c: np.zeros((3, 256), dtype=np.int64) for c in cams} for _ in episodes]
    nxt = dict.fromkeys(cams, 0)
    current: dict[str, list] = {c: [None, None] for c in cams}  # [raw message, decoded image]
    cam_of = {layout.cameras[c]: c for c in cams}

    def emit(cam: str, upto: int | None) -> None:
        w = writers[cam]
        while nxt[cam] < len(frame_t) and (upto is None or frame_t[nxt[cam]] < upto):
            k = nxt[cam]
            cur = current[cam]
            if cur[1] is None:
                try:
                    cur[1] = image_to_rgb(deserialize(ts, cur[0], "sensor_msgs/msg/Image"))
                except ExportError as e:
                    raise ExportError(f"{sig.path}: {layout.cameras[cam]}: {e}") from None
                except (RecordingError, ValueError, IndexError) as e:
                    raise ExportError(f"{sig.path}: {layout.cameras[cam]}: an image does not decode: {e}") from None
            img = cur[1]
            if k in first_of:
                w.begin_episode()
            w.add(img)
            step = max(1, int(math.ceil(math.sqrt(img.shape[0] * img.shape[1] / _STATS_PIXELS))))
            sub = img[::step, ::step].reshape(-1, 3)
            h = hists[ep_of[k]][cam]
            for ch in range(3):
                h[ch] += np.bincount(sub[:, ch], minlength=256)
            if k in last_of:
                metas[ep_of[k]].update(w.end_episode())
            nxt[cam] = k + 1

    for conn, t, raw in _messages(sig.path, set(cam_of)):
        cam = cam_of[conn.topic]
        if current[cam][0] is not None:
            emit(cam, t)  # the frames before this image; a frame at exactly t shows this one
        current[cam] = [raw, None]
    for cam in cams:
        emit(cam, None)
    return metas, [{c: h[c] for c in cams} for h in hists]


# ---------------------------------------------------------------------------------- parquet
def _table(columns: dict[str, np.ndarray]):
    import pyarrow as pa

    arrays, names = [], []
    for name, v in columns.items():
        if v.ndim == 2:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]))
        else:
            arrays.append(pa.array(v))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _write_tasks(root: Path, tasks: dict[str, int]) -> None:
    """``meta/tasks.parquet``: the task text as a pandas index named ``task`` and ``task_index``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(tasks, key=tasks.get)
    table = pa.table({"task_index": pa.array([tasks[n] for n in names], pa.int64()),
                      "task": pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, root / TASKS_PATH)


def _flatten_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, list]:
    return {f"stats/{key}/{name}": np.asarray(v).tolist() for key, s in stats.items() for name, v in s.items()}


# ---------------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        root: The dataset directory.
        repo_id: The name to load it under.
        info: ``meta/info.json``.
        episodes: Per episode: source bag, start/end (ns), task, frames, intervention frames.
        notes: What was left out, and why.
    """

    root: Path
    repo_id: str
    info: dict
    episodes: list[dict]
    notes: list[str]

    def to_dict(self) -> dict:
        """A JSON summary (what the CLI prints)."""
        return {"root": str(self.root), "repo_id": self.repo_id,
                **{k: self.info[k] for k in ("total_episodes", "total_frames", "total_tasks", "fps")},
                "episodes": self.episodes, "notes": self.notes}


def _state_feature(names: Sequence[str]) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


def export_lerobot(
    bags: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cfg: RuntimeConfig,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export recorded bags into a new LeRobotDataset v3.0 directory.

    Args:
        bags: rosbag2 directories written by the recorder node (their closed parts), in order.
        out: The dataset directory to create (must not exist, or be empty).
        cfg: The config the bags were recorded with (joints, controller groups, cameras).
        options: fps, codec, task source, file sizes.
        progress: Called once per bag with a line saying what it gave (a
            :class:`~vla_runtime.commands.progress.Progress` bar, or ``print``).

    Returns:
        What was written (``info.json`` included).

    Raises:
        ExportError: A bag that does not fit the config, bad options, an existing ``out``.
        ImportError: pyarrow or PyAV is not installed (``pip install -r requirements/export.txt``).
    """
    import av  # noqa: F401 - fail before any work when PyAV is missing
    import pyarrow.parquet as pq

    opts = options or ExportOptions()
    if not bags:
        raise ExportError("no bags given")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose a new --out")
    layout = layout_from_config(cfg)
    if opts.vcodec == "libsvtav1" and layout.cameras and realtime_permitted():
        raise ExportError("vcodec libsvtav1: SVT-AV1 puts its encoder threads on SCHED_FIFO 99 when this process "
                          "may (root, CAP_SYS_NICE or an rtprio limit), ahead of a robot's real-time threads; use "
                          "h264, or export as a user without real-time rights")
    config_name = Path(cfg.source).name or "the config"
    bag_paths = [Path(b) for b in bags]
    checked = [_check_bag(p, layout, config_name) for p in bag_paths]
    with_images = {c: [p for p, t in zip(bag_paths, checked) if t.get(topic, ("", 0))[1] > 0]
                   for c, topic in layout.cameras.items()}
    notes: list[str] = []
    cams: list[str] = []
    for c, have in with_images.items():
        if len(have) == len(bag_paths):
            cams.append(c)
        elif have:
            lacking = [str(p) for p in bag_paths if p not in have]
            raise ExportError(f"camera {c!r} ({layout.cameras[c]}) is recorded in {[str(p) for p in have]} but not "
                              f"in {lacking}; every episode needs the same features: export them separately")
        else:
            notes.append(f"camera {c!r}: no images on {layout.cameras[c]} in any bag (recorded with "
                         "record_images:=false?); the dataset has no video for it")
    default_task = cfg.instruction

    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "meta").mkdir(parents=True)
    if opts.vcodec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level
    writers = {c: _VideoWriter(staging, IMAGE_KEY_PREFIX + c, opts) for c in cams}
    data_files = _Files(opts.chunks_size)
    data_writer = None
    data_bytes = 0
    tasks: dict[str, int] = {}
    ep_rows: list[dict] = []
    provenance: list[dict] = []
    all_cols: dict[str, list[np.ndarray]] = {}
    image_hist = {c: np.zeros((3, 256), dtype=np.int64) for c in cams}
    image_frames = dict.fromkeys(cams, 0)
    total = 0
    try:
        for path in bag_paths:
            sig = _read_signals(path, layout)
            episodes, bag_notes = _segments(sig, layout, opts, default_task)
            notes += sig.notes + bag_notes
            if not episodes:
                notes.append(f"{path}: no episode of at least {opts.min_frames} frames")
                if progress is not None:  # one call per bag, so a bar counts bags
                    progress(notes[-1])
                continue
            video_meta, hists = (_write_videos(sig, layout, cams, episodes, writers) if cams
                                 else ([{} for _ in episodes], [{} for _ in episodes]))
            for ep, vmeta, hist in zip(episodes, video_meta, hists):
                e = len(ep_rows)
                n = len(ep.frame_t)
                fr = _sample(sig, layout, ep.frame_t)
                task_index = tasks.setdefault(ep.task, len(tasks))
                held = np.isnan(fr.policy).all(axis=1)
                cols = {
                    "observation.state": fr.state.astype(np.float32),
                    "action": fr.action.astype(np.float32),
                    "policy_action": np.where(np.isnan(fr.policy), fr.action, fr.policy).astype(np.float32),
                    "policy_held": held,
                    "intervention": fr.intervention,
                    "safety_mode": fr.mode,
                    "timestamp": (np.arange(n) / opts.fps).astype(np.float32),
                    "frame_index": np.arange(n, dtype=np.int64),
                    "episode_index": np.full(n, e, dtype=np.int64),
                    "index": np.arange(total, total + n, dtype=np.int64),
                    "task_index": np.full(n, task_index, dtype=np.int64),
                }
                table = _table(cols)
                if data_writer is None:
                    dpath = staging / DATA_PATH.format(chunk_index=data_files.chunk, file_index=data_files.file)
                    dpath.parent.mkdir(parents=True, exist_ok=True)
                    data_writer = pq.ParquetWriter(str(dpath), table.schema, compression="snappy")
                data_writer.write_table(table)
                row = {"episode_index": e, "tasks": [ep.task], "length": n,
                       "data/chunk_index": data_files.chunk, "data/file_index": data_files.file,
                       "dataset_from_index": total, "dataset_to_index": total + n}
                data_bytes += table.nbytes
                if data_bytes >= opts.data_files_size_in_mb * 1024**2:
                    data_writer.close()
                    data_writer, data_bytes = None, 0
                    data_files.advance()
                row.update(vmeta)
                ep_stats = {k: _stats(v) for k, v in cols.items()}
                for c in cams:
                    ep_stats[IMAGE_KEY_PREFIX + c] = _hist_stats(hist[c], n)
                    image_hist[c] += hist[c]
                    image_frames[c] += n
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                row.update(_flatten_stats(ep_stats))
                ep_rows.append(row)
                for k, v in cols.items():
                    all_cols.setdefault(k, []).append(v)
                total += n
                provenance.append({"episode_index": e, "bag": str(path.resolve()), "start_ns": int(ep.start),
                                   "end_ns": int(ep.end), "ends_at": ep.why_end, "task": ep.task, "frames": n,
                                   "intervention_frames": int(fr.intervention.sum()),
                                   "policy_held_frames": int(held.sum())})
            if progress is not None:
                progress(f"{path}: {len(episodes)} episode(s), {sum(len(e.frame_t) for e in episodes)} frames")
        if not ep_rows:
            raise ExportError("no episode to export: " + "; ".join(notes))
        if data_writer is not None:
            data_writer.close()
        for w in writers.values():
            w.close()
        features: dict[str, dict] = {"observation.state": _state_feature(layout.state_names)}
        for c in cams:
            w = writers[c]
            h, wd = w.shape
            features[IMAGE_KEY_PREFIX + c] = {"dtype": "video", "shape": [h, wd, 3],
                                              "names": ["height", "width", "channels"], "info": w.info}
        features.update({
            "action": _state_feature(layout.action_names),
            "policy_action": _state_feature(layout.action_names),
            "policy_held": {"dtype": "bool", "shape": [1], "names": None},
            "intervention": {"dtype": "bool", "shape": [1], "names": None},
            "safety_mode": {"dtype": "int64", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        })
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": layout.robot.name,
            "total_episodes": len(ep_rows),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": opts.chunks_size,
            "data_files_size_in_mb": opts.data_files_size_in_mb,
            "video_files_size_in_mb": opts.video_files_size_in_mb,
            "fps": opts.fps,
            "splits": {"train": f"0:{len(ep_rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cams else None,
            "features": features,
        }
        stats = {k: _stats(np.concatenate(v)) for k, v in all_cols.items()}
        for c in cams:
            stats[IMAGE_KEY_PREFIX + c] = _hist_stats(image_hist[c], image_frames[c])
        _write_json(staging / "meta" / "info.json", info)
        _write_json(staging / "meta" / "stats.json", {k: _jsonable(s) for k, s in stats.items()})
        _write_tasks(staging, tasks)
        epath = staging / EPISODES_PATH.format(chunk_index=0, file_index=0)
        epath.parent.mkdir(parents=True, exist_ok=True)
        _write_episodes(epath, ep_rows)
        _write_json(staging / PROVENANCE_PATH, {
            "repo_id": opts.repo_id, "config": cfg.source, "fps": opts.fps, "state_joints": list(layout.state_joints),
            "groups": [{"name": g.name, "controller": g.controller, "topic": g.topic, "joints": list(g.joints),
                        "dims": list(g.dims)} for g in layout.groups],
            "cameras": {c: layout.cameras[c] for c in cams}, "safety_mode_codes": MODES, "episodes": provenance,
            "notes": notes})
    except BaseException:
        if data_writer is not None:
            data_writer.close()
        for w in writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - cleaning up after the error being raised
                pass
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(staging, out)
    return ExportResult(out, opts.repo_id, info, provenance, notes)


def _write_episodes(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    pq.write_table(table, str(path))


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, allow_nan=False) + "\n")


__all__ = ["DatasetLayout", "ExportError", "ExportOptions", "ExportResult", "export_lerobot", "image_to_rgb",
           "layout_from_config", "realtime_permitted"]
