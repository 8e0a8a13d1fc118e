#!/usr/bin/env python3
"""Round trip: LeRobot itself loads a dataset from ``vla-runtime export lerobot``; every frame is
checked against the bags it came from.

Runs in a LeRobot environment, not in CI: Python >= 3.12 with ``lerobot[dataset]`` 0.6 (datasets,
pandas, pyarrow, PyAV) and ``rosbags`` (to read the bags; this script does not import vla_runtime,
so its reading of the bags is independent of the exporter's). For example::

    python3.12 -m venv .venv-lerobot && .venv-lerobot/bin/pip install "lerobot[dataset]==0.6.1" rosbags
    .venv/bin/vla-runtime export lerobot runs/bags/x --out runs/ds_x
    .venv-lerobot/bin/python tools/lerobot_roundtrip.py runs/ds_x

What it checks, for every frame (``--stride`` to thin out): ``LeRobotDataset(repo_id, root=DIR)``
loads offline; ``len(ds)`` and the episode count match ``meta/info.json``; ``ds[i]`` has the
episode, frame index and ``k / fps`` timestamp the export says; ``observation.state``, ``action``,
``policy_action`` (the sent action where the policy held), ``policy_held`` and ``intervention``
equal the bag's values at that frame's time (newest message at or before it; a trajectory sampled
at it); the task text; each camera frame decodes (PyAV, LeRobot's own timestamp tolerance) close
to the bag's image. Then a DataLoader batch with ``delta_timestamps`` action chunks, as ACT / π0
train on it.

Exit status 0 when everything matched, 1 when something did not, 2 when the environment lacks a
package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

S = 1_000_000_000


def _imports():
    try:
        import numpy as np
        import torch
        import yaml
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:
        print(f"lerobot_roundtrip: {e}\n  this needs a LeRobot environment: pip install 'lerobot[dataset]==0.6.1' "
              "rosbags", file=sys.stderr)
        raise SystemExit(2) from None
    return np, torch, yaml, LeRobotDataset, Reader, get_typestore(Stores.ROS2_HUMBLE)


np, torch, yaml, LeRobotDataset, Reader, TYPESTORE = _imports()


def _ns(stamp) -> int:
    return int(stamp.sec) * S + int(stamp.nanosec)


class Trajectories:
    """Messages of one topic as (receive time, start, times from start, values), newest-first lookup."""

    def __init__(self) -> None:
        self.t: list[int] = []
        self.items: list[tuple[int, np.ndarray, np.ndarray] | None] = []

    def add(self, t: int, item) -> None:
        self.t.append(t)
        self.items.append(item)

    def at(self, t: int, width: int) -> np.ndarray:
        i = int(np.searchsorted(np.asarray(self.t), t, side="right")) - 1
        if i < 0 or self.items[i] is None:
            return np.full(width, np.nan)
        start, tfs, vals = self.items[i]
        if len(tfs) == 1:
            return vals[0]
        return np.array([np.interp(t - start, tfs, vals[:, j]) for j in range(vals.shape[1])])


def _start(stamp: int, t: int) -> int:
    """A trajectory starts at its header stamp (receive time for a zero stamp or another clock)."""
    return t if stamp == 0 or abs(stamp - t) > 10 * S else stamp


def _rgb(msg) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[msg.encoding]
    img = np.asarray(msg.data, dtype=np.uint8)[: h * step].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    return img[..., 2::-1] if msg.encoding.startswith("bgr") else img[..., :3]


class Bag:
    """What one bag says, read with rosbags alone."""

    def __init__(self, path: Path, prov: dict, action_names: list[str]) -> None:
        self.joints: dict[str, tuple[list[int], list[float]]] = {j: ([], []) for j in prov["state_joints"]}
        self.groups = {g["topic"]: (g, Trajectories()) for g in prov["groups"]}
        self.plans = Trajectories()
        self.plan_names: list[list[str]] = []
        self.action_names = action_names
        self.cameras = {topic: cam for cam, topic in prov["cameras"].items()}
        self.images: dict[str, tuple[list[int], list]] = {c: ([], []) for c in prov["cameras"]}
        self.modes: list[tuple[int, str]] = []
        self.interventions: list[tuple[int, float]] = []
        opened = None
        with Reader(path) as reader:
            for conn, t, raw in reader.messages():
                topic = conn.topic
                known = topic in ("/joint_states", "/vla/action_chunk", "/vla/safety_state", "/vla/intervention")
                if not (known or topic in self.groups or topic in self.cameras):
                    continue
                if topic in self.cameras:  # decoded when a frame needs it
                    self.images[self.cameras[topic]][0].append(t)
                    self.images[self.cameras[topic]][1].append(raw)
                    continue
                msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                if topic == "/joint_states":
                    for n, p in zip(msg.name, msg.position):
                        if n in self.joints:
                            self.joints[n][0].append(t)
                            self.joints[n][1].append(float(p))
                elif topic == "/vla/action_chunk":
                    self._plan(t, msg)
                elif topic == "/vla/safety_state":
                    self.modes.append((t, msg.message))
                elif topic == "/vla/intervention":
                    if msg.data.startswith("start") and opened is None:
                        opened = t
                    elif msg.data.startswith("end") and opened is not None:
                        self.interventions.append((opened, t))
                        opened = None
                else:
                    self._command(self.groups[topic], conn.msgtype, t, msg)
        if opened is not None:
            self.interventions.append((opened, math.inf))
        meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        for s, e, _ in json.loads(meta.get("custom_data", {}).get("vla_runtime.interventions", "[]")):
            self.interventions.append((s, math.inf if e is None else e))

    def _plan(self, t: int, msg) -> None:
        names = list(msg.joint_names)
        if not len(msg.points):
            self.plans.add(t, None)
            return
        vals = np.array([p.positions for p in msg.points])
        out = np.full((len(vals), len(self.action_names)), np.nan)
        for j, n in enumerate(names):
            if n in self.action_names:
                out[:, self.action_names.index(n)] = vals[:, j]
        tfs = np.array([_ns(p.time_from_start) for p in msg.points], dtype=float)
        self.plans.add(t, (_start(_ns(msg.header.stamp), t), tfs, out))

    @staticmethod
    def _command(entry, msgtype: str, t: int, msg) -> None:
        g, traj = entry
        if msgtype.endswith("JointTrajectory"):
            if not len(msg.points):
                return
            cols = [list(msg.joint_names).index(j) for j in g["joints"]]
            vals = np.array([np.asarray(p.positions)[cols] for p in msg.points])
            tfs = np.array([_ns(p.time_from_start) for p in msg.points], dtype=float)
            traj.add(t, (_start(_ns(msg.header.stamp), t), tfs, vals))
            return
        if msgtype.endswith("Float64MultiArray"):
            row = np.asarray(msg.data, dtype=float)
        elif msgtype.endswith("PoseStamped"):
            p, o = msg.pose.position, msg.pose.orientation
            row = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w])
        elif msgtype.endswith("JointState"):
            row = np.array([dict(zip(msg.name, msg.position))[j] for j in g["joints"]])
        else:  # Twist
            row = np.array([msg.linear.x, msg.linear.y, msg.angular.z])
        traj.add(t, (t, np.zeros(1), row[None]))

    def state(self, t: int) -> np.ndarray:
        out = []
        for tt, vv in self.joints.values():
            i = int(np.searchsorted(np.asarray(tt), t, side="right")) - 1
            out.append(vv[i])
        return np.array(out)

    def action(self, t: int) -> np.ndarray:
        return np.concatenate([traj.at(t, len(g["dims"])) for g, traj in self.groups.values()])

    def policy(self, t: int) -> np.ndarray:
        return self.plans.at(t, len(self.action_names))

    def intervention(self, t: int) -> bool:
        mode = [m for tm, m in self.modes if tm <= t]
        return any(s <= t < e for s, e in self.interventions) or (bool(mode) and mode[-1] == "TELEOP")

    def image(self, cam: str, t: int) -> np.ndarray:
        tt, raws = self.images[cam]
        i = int(np.searchsorted(np.asarray(tt), t, side="right")) - 1
        return _rgb(TYPESTORE.deserialize_cdr(raws[i], "sensor_msgs/msg/Image"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="directory written by `vla-runtime export lerobot`")
    ap.add_argument("--repo-id", default=None, help="default: the one the export recorded")
    ap.add_argument("--video-backend", default="pyav", help="pyav or torchcodec")
    ap.add_argument("--stride", type=int, default=1, help="check every n-th frame")
    ap.add_argument("--max-image-mae", type=float, default=12.0, help="per-frame bound, in levels of 255")
    args = ap.parse_args(argv)
    root = args.dataset.resolve()
    prov = json.loads((root / "meta" / "vla_runtime_export.json").read_text())
    info = json.loads((root / "meta" / "info.json").read_text())
    repo_id = args.repo_id or prov["repo_id"]
    fps = info["fps"]
    ds = LeRobotDataset(repo_id, root=root, video_backend=args.video_backend)
    print(f"LeRobotDataset({repo_id!r}, root={str(root)!r}): len {len(ds)}, episodes {ds.num_episodes}, "
          f"fps {ds.fps}, tasks {list(ds.meta.tasks.index)}")
    print(f"features: {list(ds.meta.features)}")
    failures: list[str] = []
    if len(ds) != info["total_frames"] or ds.num_episodes != info["total_episodes"]:
        failures.append(f"len {len(ds)} / episodes {ds.num_episodes} vs info.json {info['total_frames']} / "
                        f"{info['total_episodes']}")
    action_names = info["features"]["action"]["names"]
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    bags: dict[str, Bag] = {}
    worst = {"observation.state": 0.0, "action": 0.0, "policy_action": 0.0}
    image_mae: list[float] = []
    inter_ds = inter_bag = checked = 0
    for ep in prov["episodes"]:
        bag = bags.get(ep["bag"])
        if bag is None:
            bag = bags[ep["bag"]] = Bag(Path(ep["bag"]), prov, action_names)
        first = int(ds.meta.episodes[ep["episode_index"]]["dataset_from_index"])
        for k in range(0, ep["frames"], args.stride):
            t = ep["start_ns"] + k * S // fps
            item = ds[first + k]
            where = f"episode {ep['episode_index']} frame {k}"
            if (int(item["episode_index"]), int(item["frame_index"])) != (ep["episode_index"], k):
                failures.append(f"{where}: ds says episode {int(item['episode_index'])} frame "
                                f"{int(item['frame_index'])}")
            if abs(float(item["timestamp"]) - k / fps) > 1e-4:
                failures.append(f"{where}: timestamp {float(item['timestamp'])} != {k / fps}")
            if item["task"] != ep["task"]:
                failures.append(f"{where}: task {item['task']!r} != {ep['task']!r}")
            sent, plan = bag.action(t), bag.policy(t)
            if bool(item["policy_held"]) != bool(np.isnan(plan).all()):
                failures.append(f"{where}: policy_held {bool(item['policy_held'])}, bag plan {plan}")
            plan = np.where(np.isnan(plan), sent, plan)  # no plan value: the export holds the sent action
            for key, ref in (("observation.state", bag.state(t)), ("action", sent), ("policy_action", plan)):
                got = item[key].numpy().astype(np.float64)
                if not np.array_equal(np.isnan(got), np.isnan(ref)):
                    failures.append(f"{where}: {key} NaN at {np.isnan(got).tolist()}, bag {np.isnan(ref).tolist()}")
                    continue
                ok = ~np.isnan(ref)
                err = float(np.max(np.abs(got[ok] - ref[ok]), initial=0.0))
                worst[key] = max(worst[key], err)
                if err > 1e-5:
                    failures.append(f"{where}: {key} differs by {err:.3g}")
            want = bag.intervention(t)
            got_i = bool(item["intervention"])
            inter_ds += got_i
            inter_bag += want
            if got_i != want:
                failures.append(f"{where}: intervention {got_i}, bag {want}")
            for key in video_keys:
                cam = key.removeprefix("observation.images.")
                frame = (item[key].numpy().transpose(1, 2, 0) * 255.0).astype(np.float64)
                mae = float(np.abs(frame - bag.image(cam, t).astype(np.float64)).mean())
                image_mae.append(mae)
                if mae > args.max_image_mae:
                    failures.append(f"{where}: {key} differs from the bag's image by {mae:.1f} levels (mean abs)")
            checked += 1
    # Training-style access: action chunks over delta_timestamps, batched by a DataLoader.
    horizon = 10
    chunked = LeRobotDataset(repo_id, root=root, video_backend=args.video_backend,
                             delta_timestamps={"action": [i / fps for i in range(horizon)]})
    last = len(chunked) - 1
    batch = next(iter(torch.utils.data.DataLoader(chunked, batch_size=4, shuffle=False)))
    tail = chunked[last]
    if tuple(batch["action"].shape) != (4, horizon, len(action_names)):
        failures.append(f"DataLoader action chunk shape {tuple(batch['action'].shape)}")
    if not bool(tail["action_is_pad"][1:].all()) or bool(tail["action_is_pad"][0]):
        failures.append(f"the last frame's chunk is not padded past the episode end: {tail['action_is_pad']}")
    ds0 = ds[1]["action"].numpy()
    if not np.allclose(batch["action"][0, 1].numpy(), ds0, atol=1e-7):
        failures.append("chunk step 1 of frame 0 is not frame 1's action")
    print(f"checked {checked} frames of {len(prov['episodes'])} episodes from {len(bags)} bag(s)")
    print("max |ds - bag|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print(f"intervention frames: ds {inter_ds}, bag {inter_bag}")
    if image_mae:
        print(f"video frames vs bag images: mean abs error {np.mean(image_mae):.2f}, max {np.max(image_mae):.2f} "
              f"(of 255) over {len(image_mae)} frames ({args.video_backend})")
    print(f"DataLoader batch: action {tuple(batch['action'].shape)}, "
          f"{', '.join(f'{k} {tuple(batch[k].shape)}' for k in video_keys)}; last frame's chunk padded "
          f"{int(tail['action_is_pad'].sum())}/{horizon}")
    for f in failures[:20]:
        print(f"  ✗ {f}")
    print("ROUND TRIP " + ("OK" if not failures else f"FAILED ({len(failures)} mismatches)"))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
