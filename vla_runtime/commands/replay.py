"""Offline replay: recorded observations → the model's engines → where its chunks differ from the run.

:func:`replay` reads a bag written by the recorder, and for every recorded plan
(``/vla/action_chunk`` with points) rebuilds the policy's input as of that moment — the measured
state from the ``/joint_states`` (and, for Cartesian layouts, ``/ee_pose``) received before it,
measured as the robot config says, the newest camera image and the current ``/vla/instruction`` —
runs the policy's own slow step (once per distinct image) and fast step (core/policy, as the nodes
do) on CPU and compares the absolute chunk, resampled at the plan's point times, with what was
recorded.

What is not reproduced, by design, and so shows up as difference: the live latent came from the
slow path's last completed step (possibly an older frame than the newest one), the live chunk
was conditioned on the executing prefix (RTC) and cross-faded with the previous chunk by the
scheduler. A model whose chunks differ much more than that from the recording (a different
export, a changed normalisation, a different engine precision) shows up as ticks over tolerance.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vla_runtime.core.config import PROJECT_ROOT, RuntimeConfig, load_config
from vla_runtime.core.contract import (
    TOPIC_ACTION_CHUNK,
    TOPIC_EE_POSE,
    TOPIC_INSTRUCTION,
    TOPIC_JOINT_STATES,
    camera_topic,
)
from vla_runtime.data.recording import read_bag

#: The robot a bag comes from when ``replay`` is not told: the simulated Panda (the robot of the
#: default model, ``models/timing_reference``).
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "sim_panda.yaml"


def _image_array(msg) -> np.ndarray:
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {msg.encoding!r} not supported (rgb8/bgr8)")
    img = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    img = img.reshape(msg.height, msg.width, 3)
    return img[..., ::-1] if msg.encoding == "bgr8" else img


def _stamp_s(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def _latest(series: list[tuple[int, object]], t_ns: int):
    """The last item at or before ``t_ns`` of a time-sorted list (None when there is none)."""
    lo, hi = 0, len(series)
    while lo < hi:
        mid = (lo + hi) // 2
        if series[mid][0] <= t_ns:
            lo = mid + 1
        else:
            hi = mid
    return series[lo - 1][1] if lo else None


def replay(
    bag_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    tolerance: float = 0.05,
    camera_topics: dict[str, str] | None = None,
    config: str | os.PathLike | RuntimeConfig | None = None,
    max_ticks: int | None = None,
) -> dict:
    """Feed a recording's observations to the model's engines; report where the chunks differ.

    Args:
        bag_dir: A bag written by the recorder (its closed parts).
        model_dir: The model package (``models/<name>``).
        tolerance: A tick is flagged when its max abs difference exceeds this (action units:
            rad, m, gripper opening).
        camera_topics: Camera name → image topic (default ``/camera/<name>/image_raw``).
        config: The runtime config of the robot the bag was recorded on (a path or a loaded
            config; default :data:`DEFAULT_CONFIG`): its groups say which joint measures a gripper
            dim and which groups are Cartesian, as on the robot.
        max_ticks: Stop after this many plans.

    Returns:
        ``ticks`` compared, ``skipped`` (no state/image yet) with reasons, ``per_tick`` list of
        ``{t, max_abs_diff, dim}``, ``over_tolerance`` (the ticks above ``tolerance``),
        ``max_abs_diff``, ``mean_max_abs_diff`` and ``per_dim_max``.

    Raises:
        vla_runtime.data.recording.RecordingError: The bag has no closed part.
        vla_runtime.engines.model_package.ModelPackageError: The model package does not load.
        vla_runtime.core.config.ConfigError: The config does not load.
        ValueError: The model's output is non-finite or has the wrong shape.
    """
    from vla_runtime.core.policy import FastStep, SlowStep
    from vla_runtime.engines.model_package import load_model_package

    cfg = config if isinstance(config, RuntimeConfig) else load_config(config or DEFAULT_CONFIG)
    package = load_model_package(model_dir)
    try:
        spec = package.spec
        cams = [t.camera or "scene" for t in spec.slow.inputs if t.role == "image"]
        topics_by_cam = {c: (camera_topics or {}).get(c, camera_topic(c)) for c in cams}
        slow = SlowStep.from_package(package, cams)
        # The live chunk was conditioned on the executing prefix; the replay has none (see the module doc).
        fast = FastStep.from_package(package, use_prefix=False)
        measured = fast.measured_state(cfg.robot)
        state_idx = measured.index(fast.state_layout)
        js: list[tuple[int, tuple[str, ...], np.ndarray]] = []
        poses: list[tuple[int, tuple[float, ...]]] = []
        images: dict[str, list[tuple[int, tuple[int, object]]]] = {c: [] for c in cams}
        instructions: list[tuple[int, str]] = []
        plans: list[tuple[int, object]] = []
        wanted = [TOPIC_ACTION_CHUNK, TOPIC_JOINT_STATES, TOPIC_INSTRUCTION, *topics_by_cam.values()]
        if measured.needs_pose:
            wanted.append(TOPIC_EE_POSE)
        cam_of = {v: k for k, v in topics_by_cam.items()}
        for topic, t_ns, msg in read_bag(bag_dir, wanted):
            if topic == TOPIC_JOINT_STATES:
                js.append((t_ns, tuple(msg.name), np.array(msg.position, dtype=np.float64)))
            elif topic == TOPIC_EE_POSE:
                p, q = msg.pose.position, msg.pose.orientation
                poses.append((t_ns, (p.x, p.y, p.z, q.x, q.y, q.z, q.w)))
            elif topic == TOPIC_ACTION_CHUNK:
                if len(msg.points):
                    plans.append((t_ns, msg))
            elif topic == TOPIC_INSTRUCTION:
                instructions.append((t_ns, msg.data))
            else:
                images[cam_of[topic]].append((t_ns, (t_ns, msg)))
        space = package.action_space
        dims = list(space.dim_names)
        latent_cache: dict[tuple, np.ndarray] = {}
        per_tick: list[dict] = []
        skipped: dict[str, int] = {}
        per_dim = np.zeros(len(dims))
        n_js = n_pose = 0  # messages taken into ``measured`` so far (plans come in time order)
        for t_ns, plan in plans:
            if max_ticks is not None and len(per_tick) >= max_ticks:
                break
            # The measured state as the fast path had it: every state message up to the plan.
            while n_js < len(js) and js[n_js][0] <= t_ns:
                _, names, positions = js[n_js]
                if len(names) == len(positions) and np.isfinite(positions).all():  # as the node takes them
                    measured.update_joints(names, positions)
                n_js += 1
            while n_pose < len(poses) and poses[n_pose][0] <= t_ns:
                measured.update_pose(poses[n_pose][1])
                n_pose += 1
            frames = {c: _latest(images[c], t_ns) for c in cams}
            if n_js == 0 or any(f is None for f in frames.values()):
                why = "no joint state yet" if n_js == 0 else "no image yet"
                skipped[why] = skipped.get(why, 0) + 1
                continue
            if not measured.complete:
                why = f"proprio: measured state lacks {measured.missing()}"
                skipped[why] = skipped.get(why, 0) + 1
                continue
            text = _latest(instructions, t_ns) or ""
            key = (tuple(f[0] for f in frames.values()), text)
            latent = latent_cache.get(key)
            if latent is None:
                latent = slow.run({c: _image_array(f[1]) for c, f in frames.items()}, text).latent
                latent_cache.clear()
                latent_cache[key] = latent
            chunk = fast.run(measured.values[state_idx], latent=latent).chunk  # (H, A)
            # Compare on the plan's own times, with the replayed chunk starting at the plan's first point.
            t0 = _stamp_s(plan.header.stamp)
            tfs = np.array([_stamp_s(p.time_from_start) for p in plan.points])
            chunk_t = np.arange(chunk.shape[0]) / spec.control_rate_hz
            cols = [(i, dims.index(n)) for i, n in enumerate(plan.joint_names) if n in dims]
            rec = np.array([list(p.positions) for p in plan.points], dtype=np.float64)
            diffs = np.zeros((len(tfs), len(cols)))
            for k, (ri, ci) in enumerate(cols):
                diffs[:, k] = np.abs(rec[:, ri] - np.interp(tfs, chunk_t, chunk[:, ci]))
            col_max = diffs.max(axis=0) if len(tfs) else np.zeros(len(cols))
            for k, (_, ci) in enumerate(cols):
                per_dim[ci] = max(per_dim[ci], col_max[k])
            worst = int(np.argmax(col_max)) if len(cols) else 0
            per_tick.append({"t": round(t0, 6), "max_abs_diff": round(float(col_max.max()) if len(cols) else 0.0, 6),
                             "dim": dims[cols[worst][1]] if cols else ""})
        values = np.array([p["max_abs_diff"] for p in per_tick]) if per_tick else np.zeros(0)
        return {
            "bag": str(Path(bag_dir)),
            "model": spec.name,
            "ticks": len(per_tick),
            "skipped": skipped,
            "tolerance": tolerance,
            "max_abs_diff": round(float(values.max()), 6) if values.size else None,
            "mean_max_abs_diff": round(float(values.mean()), 6) if values.size else None,
            "over_tolerance": [p for p in per_tick if p["max_abs_diff"] > tolerance],
            "per_dim_max": {d: round(float(v), 6) for d, v in zip(dims, per_dim)},
            "per_tick": per_tick,
        }
    finally:
        package.close()
