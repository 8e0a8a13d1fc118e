"""``bench cache``: slow-path caching (core/slow_cache) on and off, side by side in one run.

Two parts, each with the cache off and on:

``static_scene`` — the running graph (real node processes over DDS: sim robot, slow path, fast path,
bridge; ``config/sim_panda.yaml`` unless ``--config``) on a scene in which nothing moves. Each side
runs its own graph for ``duration`` seconds after the slow path has started; the figures are the
REAL slow node's counters from its diagnostics (steps computed and reused, compute saved, its
latency) over that window, the fast path's holds over it (a stale-latent HOLD would mean the cache
let the latent age out), and how far the hand moved (the scene must stay static for the figure to
mean what it says).

``moving_target`` — ``touch_dynamic`` (the target cube slides at a steady speed) in simulated time,
in this process: the model package's slow and fast steps (core/policy) on frames rendered from the
simulated robot, the slow step every ``1 / rates.slow_hz`` as in the eval's sim-time mode, with the
SAME :class:`~vla_runtime.core.slow_cache.SlowCache` the node runs deciding whether it computes or
re-validates. It reports success with the cache off and on, and how many slow steps the cache
reused while the target moved (a reused latent on a moving scene is what could cost success); a
third side with a deliberately loose threshold (``LOOSE_FACTOR`` × the default) shows that cost.
Default config ``config/sim_panda_reach.yaml`` (the trained reference policy).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # the sim-time part renders in this process

import numpy as np

from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.core.contract import (
    DIAG_FAST_PATH,
    DIAG_SLOW_PATH,
    HOLD_STALE_LATENT,
    TOPIC_ACTION_CHUNK,
)
from vla_runtime.core.slow_cache import SlowCache
from vla_runtime.graph.harness import DiagnosticsWatch, GraphHarness, PoseWatch, node_graph

STATIC_CONFIG = PROJECT_ROOT / "config" / "sim_panda.yaml"
MOVING_CONFIG = PROJECT_ROOT / "config" / "sim_panda_reach.yaml"
GRAPH_NODES = ("sim_robot", "controller_bridge", "slow_reasoner", "action_chunk_node")
#: The moving-target part also runs a deliberately loose threshold (this × the configured one), to
#: show what a cache that reuses on a moving scene costs.
LOOSE_FACTOR = 6.0
SLOW_COUNTERS = ("steps", "steps_computed", "steps_reused", "cache_compute_saved_ms")


def _num(kv: dict, key: str) -> float:
    try:
        return float(kv.get(key, "nan"))
    except ValueError:
        return float("nan")


def _static_side(config: Path, cache: dict, duration: float, warm_s: float, fast_engine: str = "null") -> dict:
    """One graph with ``slow_cache`` = ``cache``: the slow node's counters over ``duration`` s."""
    from trajectory_msgs.msg import JointTrajectory

    from vla_runtime.nodes.common import QOS_COMMAND

    name = "bench_cache_on" if cache.get("enabled") else "bench_cache_off"
    with GraphHarness(name=name) as g:
        diag = DiagnosticsWatch(g.probe)
        poses = PoseWatch(g.probe)
        plans = g.probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        cfg_file = g.write_config(config, {"slow_cache": cache})
        g.start_policy(node_graph(load_config(cfg_file), cfg_file, nodes=GRAPH_NODES,
                                  require=("sim_robot", "action_chunk_node"),
                                  params={"action_chunk_node": {"engine": fast_engine}}))
        g.wait(lambda: _num(diag.latest(DIAG_SLOW_PATH), "steps") >= 3, 60.0, "the slow path's first steps",
               interval=0.1)
        g.run_for(warm_s)  # the arm settles where the policy puts it
        n_seen = diag.count(DIAG_SLOW_PATH)
        g.wait(lambda: diag.count(DIAG_SLOW_PATH) > n_seen, 5.0, "fresh slow-path diagnostics", interval=0.05)
        s0, t0, n_plans = dict(diag.latest(DIAG_SLOW_PATH)), time.monotonic(), len(plans)
        g.run_for(duration)
        n_seen = diag.count(DIAG_SLOW_PATH)
        g.wait(lambda: diag.count(DIAG_SLOW_PATH) > n_seen, 5.0, "fresh slow-path diagnostics", interval=0.05)
        s1, t1 = dict(diag.latest(DIAG_SLOW_PATH)), time.monotonic()
        fast = diag.latest(DIAG_FAST_PATH)
        window = [m for _, m in plans[n_plans:]]
        moved = poses.max_displacement_mm(t0, t1)
        mode = g.safety.mode()
    d = {k: _num(s1, k) - _num(s0, k) for k in SLOW_COUNTERS}
    steps = d["steps"]
    return {
        "slow_cache": cache,
        "window_s": round(t1 - t0, 2),
        "latents_written": int(steps),
        "steps_computed": int(d["steps_computed"]),
        "steps_reused": int(d["steps_reused"]),
        "reuse_fraction": round(d["steps_reused"] / steps, 3) if steps else None,
        "compute_saved_ms": round(d["cache_compute_saved_ms"], 1) if cache.get("enabled") else 0.0,
        "compute_saved_ms_per_s": round(d["cache_compute_saved_ms"] / (t1 - t0), 1) if cache.get("enabled") else 0.0,
        "slow_latency_ms_p50": _num(s1, "latency_ms_p50"),
        "slow_rate_hz": _num(s1, "rate_hz"),
        "last_change_score": _num(s1, "cache_change_score") if cache.get("enabled") else None,
        "recompute_reasons": {k.removeprefix("cache_recompute_"): int(_num(s1, k)) for k in s1
                              if k.startswith("cache_recompute_")},
        "latent_age_s": _num(fast, "latent_age_s"),
        "fast_plans": sum(1 for m in window if m.points),
        "fast_holds": sum(1 for m in window if not m.points),
        "fast_stale_latent_holds": sum(1 for m in window if m.header.frame_id == HOLD_STALE_LATENT),
        "bridge_mode": mode,
        "hand_moved_mm": None if moved is None else round(moved, 2),
    }


def bench_static_scene(config: str | os.PathLike | None = None, duration: float = 20.0, warm_s: float = 5.0,
                       image_threshold: float = 10.0, max_reuse_s: float = 2.0) -> dict:
    """The running graph on a static scene, slow-path caching off then on."""
    path = Path(config) if config else STATIC_CONFIG
    off = _static_side(path, {"enabled": False}, duration, warm_s)
    on = _static_side(path, {"enabled": True, "image_threshold": image_threshold, "max_reuse_s": max_reuse_s},
                      duration, warm_s)
    return {"config": str(path), "duration_s": duration, "cache_off": off, "cache_on": on}


def _moving_episode(cfg, pkg, robot, slow, fast, seed: int, cache: SlowCache | None) -> dict:
    """One ``touch_dynamic`` episode in simulated time; the slow step goes through ``cache`` (None: off)."""
    from vla_runtime.sim.controllers import TrajectoryCommand
    from vla_runtime.sim.scene import sample_cube_poses
    from vla_runtime.sim.tasks import ARM_JOINTS, CONTROL_HZ, SUCCESS_RADIUS_M, make_episode, tcp_from_hand

    cam = cfg.cameras[0]
    arm_cols = [pkg.action_space.dim_names.index(j) for j in ARM_JOINTS]
    dt = 1.0 / pkg.spec.control_rate_hz
    horizon = pkg.spec.chunk_horizon
    slow_every = max(1, int(round(CONTROL_HZ / cfg.rates.slow_hz)))
    robot.reset(seed)
    poses = sample_cube_poses(seed, "panda")
    for n, (p, q) in poses.items():
        robot.move_object(n, p, q)
    spec = make_episode("touch_dynamic", seed, poses)
    measured = fast.measured_state(cfg.robot)
    state_idx = measured.index(fast.state_layout)
    joint_names = tuple(robot.joint_names)
    latent, computed, reused, compute_s = None, 0, 0, 0.0
    t0 = robot.time
    success_t, d = None, float("inf")
    for k in range(int(spec.time_limit_s * CONTROL_HZ)):
        t = k * dt
        target = spec.target_position(t, poses[spec.target][0])
        robot.move_object(spec.target, target)
        p, q = robot.ee_pose("arm")
        d = float(np.linalg.norm(tcp_from_hand(p, q) - target))
        if d <= SUCCESS_RADIUS_M:
            success_t = t
            break
        if k % slow_every == 0:
            img = robot.render(cam.name, cam.width, cam.height)
            obs_ns = int(round(t * 1e9))
            if cache is not None and cache.check({cam.name: img}, spec.instruction, None, obs_ns).reuse:
                cache.reused()
                reused += 1
            else:
                c0 = time.perf_counter()
                latent = slow.run({cam.name: img}, spec.instruction).latent
                ms = (time.perf_counter() - c0) * 1e3
                compute_s += ms / 1e3
                computed += 1
                if cache is not None:
                    cache.computed(latent.copy(), spec.instruction, None, obs_ns, ms)
            # Computed or re-validated, the latent in use is the cache's (identical when computed).
            latent = cache.latent if cache is not None else latent
        measured.update_joints(joint_names, robot.joint_state().positions)
        chunk = fast.run(measured.values[state_idx], latent=latent).chunk[:, arm_cols]
        robot.accept("arm_controller", TrajectoryCommand(list(ARM_JOINTS), [i * dt for i in range(horizon)],
                                                         chunk.tolist()))
        robot.step(max(1, int(round((t0 + (k + 1) * dt - robot.time) / robot.model.opt.timestep))))
    return {"success": success_t is not None, "time_to_success_s": success_t, "slow_computed": computed,
            "slow_reused": reused, "slow_compute_s": compute_s, "final_distance_m": d}


def bench_moving_target(config: str | os.PathLike | None = None, episodes: int = 20, seed: int = 0,
                        image_threshold: float = 10.0, max_reuse_s: float = 2.0) -> dict:
    """``touch_dynamic`` in simulated time, slow-path caching off and on, same episodes."""
    from vla_runtime.core.policy import FastStep, SlowStep
    from vla_runtime.engines.model_package import load_model_package
    from vla_runtime.sim.robot import SimRobot

    path = Path(config) if config else MOVING_CONFIG
    cfg = load_config(path)
    pkg = load_model_package(cfg.model_package_path)
    robot = SimRobot(cfg)
    slow = SlowStep.from_package(pkg, [c.name for c in cfg.cameras])
    fast = FastStep.from_package(pkg, use_prefix=False)
    out = {"config": str(path), "task": "touch_dynamic", "episodes": episodes, "simulated_time": True,
           "image_threshold": image_threshold, "loose_image_threshold": LOOSE_FACTOR * image_threshold}
    sides = {"cache_off": None, "cache_on": image_threshold, "cache_on_loose": LOOSE_FACTOR * image_threshold}
    for side, threshold in sides.items():
        rows = []
        for i in range(episodes):
            cache = None if threshold is None else SlowCache(threshold, max_reuse_s=max_reuse_s)
            rows.append(_moving_episode(cfg, pkg, robot, slow, fast, seed * 1000 + i, cache))
        times = [r["time_to_success_s"] for r in rows if r["success"]]
        computed = sum(r["slow_computed"] for r in rows)
        reused = sum(r["slow_reused"] for r in rows)
        out[side] = {
            "success_rate": round(sum(r["success"] for r in rows) / episodes, 3),
            "time_to_success_s_p50": round(float(np.median(times)), 3) if times else None,
            "slow_steps_computed": computed,
            "slow_steps_reused": reused,
            "reuse_fraction": round(reused / (computed + reused), 3) if computed + reused else None,
            "slow_compute_s": round(sum(r["slow_compute_s"] for r in rows), 3),
        }
    pkg.close()
    return out


def bench_cache(config: str | os.PathLike | None = None, duration: float = 20.0, episodes: int = 20,
                seed: int = 0) -> dict:
    """Both parts; ``config`` applies to the static-scene graph."""
    static = bench_static_scene(config, duration=duration)
    moving = bench_moving_target(episodes=episodes, seed=seed)
    on = static["cache_on"]
    targets = {
        "static_scene_reuses_most_steps": (on["reuse_fraction"] or 0.0) >= 0.5,
        "static_scene_no_stale_latent_hold": on["fast_stale_latent_holds"] == 0,
        "moving_target_success_within_10pct": moving["cache_on"]["success_rate"]
        >= moving["cache_off"]["success_rate"] - 0.1,
    }
    return {"benchmark": "cache", "static_scene": static, "moving_target": moving, "targets": targets,
            "passed": all(targets.values())}
