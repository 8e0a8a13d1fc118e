"""Task evaluation of a fast-slow policy: real episodes through the whole node graph.

:func:`run_eval` starts the config's graph (``sim_robot``, ``slow_reasoner``,
``action_chunk_node``, ``controller_bridge``) as separate processes on a private
``ROS_DOMAIN_ID`` (101..200) and runs episodes of a task from :mod:`vla_runtime.sim.tasks` against
it, observing it only through its public topics and services, as an operator would:

1. **Reset**: with the bridge in POLICY, ``/sim/reset`` (std_srvs/Trigger) re-homes the arm, and
   once ``/ee_pose`` shows the re-homed arm, ``/vla/hold`` makes the bridge hold it there (its hold
   target is captured from the measured state on the POLICY → HOLD transition; a hold sent before
   the bridge saw the reset captured the last episode's end pose). 0.3 s later the arm must still
   be within 2 cm of home, or the reset is tried again (3 tries, then the episode fails with that
   message). The cubes are placed at the episode seed's random poses with ``/sim/move_object`` and
   checked on ``/sim/objects``.
2. **Instruction**: "touch the <colour> cube" on ``/vla/instruction`` (latched). The episode waits
   until the fast path holds a latent computed from an image taken after the scene and the
   instruction were set (``/vla/policy_features`` carries the latent's age), so no episode starts
   on the previous episode's guidance.
3. **Run**: ``/vla/resume``; the clock starts. For ``touch_dynamic`` the target slides at a steady
   speed (``/sim/move_object`` at 30 Hz along :class:`~vla_runtime.sim.tasks.TargetMotion`).
   Success: the TCP (from ``/ee_pose``) within 3 cm of the target's centre before the time limit.

Modes: ``async`` is the fast-slow design (the fast loop re-plans at 30 Hz on the newest latent);
``sync`` is the single-frequency baseline it replaces, stop-and-go as a VLA that blocks on
inference: ``action_chunk_node`` with ``lockstep:=true`` executes one chunk per latent open-loop
and, when it has run out, asks for the next; ``slow_reasoner`` with ``step_on_request:=true`` then
takes a frame and runs one step while the robot holds. ``slow_latency_ms`` adds latency to every
slow step (slow_reasoner's ``extra_latency_ms``), emulating a heavier VLM.

``realtime=False`` runs the same episodes in simulated time in this process instead (no ROS: the
model package's ONNX graphs drive a :class:`~vla_runtime.sim.robot.SimRobot` directly, the slow
path's rate and latency emulated): a quick check of a package, not of the runtime.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

# The simulated-time path renders offscreen in this process; MuJoCo picks its GL backend when it is
# first imported (vla_runtime.sim.tasks imports it), so choose EGL here, as the sim node does.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.core.contract import DIAG_FAST_PATH
from vla_runtime.graph.harness import (
    DiagnosticsWatch,
    FeaturesWatch,
    GraphHarness,
    PoseWatch,
    SimObjects,
    node_graph,
    timing_summary,
)
from vla_runtime.sim.tasks import (
    ARM_JOINTS,
    COLOURS,
    CONTROL_HZ,
    SUCCESS_RADIUS_M,
    TASKS,
    EpisodeSpec,
    is_success,
    make_episode,
    tcp_from_hand,
)

DEFAULT_CONFIG = PROJECT_ROOT / "config" / "sim_panda_reach.yaml"
MODES = ("async", "sync")
GRAPH_NODES = ("sim_robot", "controller_bridge", "slow_reasoner", "action_chunk_node")
#: Episode seeds are ``seed * EPISODE_SEED_STRIDE + i`` (the training data uses far larger seeds).
EPISODE_SEED_STRIDE = 1000
#: How long to wait for the graph to come up (first plans), for a fresh latent, and for a reset.
STARTUP_TIMEOUT_S = 120.0
FRESH_LATENT_TIMEOUT_S = 10.0
RESET_TIMEOUT_S = 5.0
MOVE_OBJECT_HZ = 30.0
#: Re-homing before an episode: tries, how long after the hold the pose is checked, how close to home.
HOME_ATTEMPTS = 3
HOME_SETTLE_S = 0.3
HOME_TOLERANCE_M = 0.02


def _check_args(task: str, episodes: int, mode: str, slow_latency_ms: float | None, colour: str | None = None) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if slow_latency_ms is not None and not (slow_latency_ms >= 0 and math.isfinite(slow_latency_ms)):
        raise ValueError(f"slow_latency_ms must be >= 0, got {slow_latency_ms}")


def _p90(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 90)) if xs else None


def _summary(task: str, mode: str, slow_latency_ms: float | None, config: Path, rows: list[dict],
             extra: dict) -> dict:
    times = [r["time_to_success_s"] for r in rows if r["success"]]
    return {
        "task": task,
        "mode": mode,
        "slow_latency_ms": slow_latency_ms or 0.0,
        "config": str(config),
        "episodes": len(rows),
        "successes": sum(r["success"] for r in rows),
        "success_rate": sum(r["success"] for r in rows) / len(rows) if rows else 0.0,
        "time_to_success_s": {"mean": float(np.mean(times)) if times else None, "p90": _p90(times)},
        **extra,
        "per_episode": rows,
    }


# ------------------------------------------------------------------------------ graph session
class _GraphSession:
    """The node graph of an evaluation, started once for all its episodes, and what it watches."""

    def __init__(self, mode: str, slow_latency_ms: float | None, config: Path | None, log: Callable[[str], None],
                 params: dict[str, dict] | None = None):
        self.extra_params = params or {}  # node name → extra ``-p`` parameters (benchmarks)
        self.mode = mode
        self.slow_latency_ms = slow_latency_ms
        self.config = Path(config) if config else DEFAULT_CONFIG
        self.log = log

    def __enter__(self) -> _GraphSession:
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from vla_runtime.core.contract import SERVICE_HOLD, SERVICE_RESUME, SERVICE_SIM_RESET, TOPIC_INSTRUCTION
        from vla_runtime.nodes.common import QOS_LATCHED

        self.g = g = GraphHarness(name="eval")
        try:
            config_file = g.write_config(self.config)
            cfg = load_config(config_file)
            # A package without a slow part (ACT) runs without slow_reasoner: the fast node takes the camera.
            need = [n for n in GRAPH_NODES if n != "slow_reasoner" or n in cfg.nodes]
            params = {
                "slow_reasoner": {"extra_latency_ms": float(self.slow_latency_ms or 0.0),
                                  "step_on_request": self.mode == "sync"},
                "action_chunk_node": {"lockstep": self.mode == "sync"},
            }
            for node, extra in self.extra_params.items():
                params[node] = {**params.get(node, {}), **extra}
            specs = node_graph(cfg, config_file, nodes=need, params=params, require=need)
            self.pose = PoseWatch(g.probe)
            self.objects = SimObjects(g.probe)
            self.features = FeaturesWatch(g.probe)
            self.diag = DiagnosticsWatch(g.probe)
            self._String = String
            self.instruction_pub = g.probe.node.create_publisher(String, TOPIC_INSTRUCTION, QOS_LATCHED)
            self.log(f"eval: starting {[s.name for s in specs]} on ROS_DOMAIN_ID={g.domain_id} "
                     f"(mode {self.mode}, extra slow latency {self.slow_latency_ms or 0:g} ms)")
            g.start(specs)
            g.wait(lambda: self.features.count >= 5 and self.pose.latest() is not None and bool(self.objects.positions),
                   STARTUP_TIMEOUT_S, "the graph to come up (fast-path features, /ee_pose, /sim/objects)")
            g.wait_for_services(Trigger, (SERVICE_SIM_RESET, SERVICE_HOLD, SERVICE_RESUME), 30.0)  # discovered once
        except BaseException:
            g.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.g.close()

    def _tcp(self) -> tuple[np.ndarray | None, float]:
        """The newest fingertip point (the sim Panda's TCP) and its receive time."""
        sample = self.pose.latest()
        if sample is None:
            return None, 0.0
        t, p, q = sample
        return tcp_from_hand(p, q), t

    # ---------------------------------------------------------------------------- one episode
    def prepare(self, task: str, seed: int, colour: str | None = None) -> tuple[EpisodeSpec, dict[str, np.ndarray]]:
        """Steps 1-2 of an episode: reset and hold, the seed's scene, the instruction, a fresh latent.

        Returns the episode's spec and the cube positions placed (name → xyz); the bridge is left in
        HOLD (``/vla/resume`` starts the run). ``colour`` forces the target colour.
        """
        from vla_runtime.core.contract import SERVICE_HOLD, SERVICE_RESUME, SERVICE_SIM_RESET
        from vla_runtime.sim.scene import sample_cube_poses

        g = self.g
        # 1. Reset with the bridge in POLICY, then hold: the hold target is captured from the measured
        #    state, so the hold waits until the re-homed pose is seen (a hold that came first captured
        #    the last episode's end pose and drove the arm back there). In sync mode the bridge is in
        #    HOLD between chunks: wait. Checked: the arm rests at home before the episode starts.
        for attempt in range(1, HOME_ATTEMPTS + 1):
            if not g.wait(lambda: g.safety.mode() == "POLICY", 5.0):
                g.trigger(SERVICE_RESUME)
                g.wait_mode("POLICY", 5.0)
            ok, msg = g.trigger(SERVICE_SIM_RESET)
            if not ok:
                raise RuntimeError(f"eval: /sim/reset failed: {msg}")
            t_reset = time.monotonic() + 0.01  # a pose received later was published after the reset
            g.wait(lambda t=t_reset: self._tcp()[1] > t, 2.0, "an end-effector pose after /sim/reset")
            home = self._tcp()[0]
            ok, msg = g.trigger(SERVICE_HOLD)
            if not ok:
                raise RuntimeError(f"eval: /vla/hold refused: {msg}")
            t_settled = time.monotonic() + HOME_SETTLE_S
            g.wait(lambda t=t_settled: self._tcp()[1] > t, 2.0, "an end-effector pose after the hold")
            off = float(np.linalg.norm(self._tcp()[0] - home))
            if off <= HOME_TOLERANCE_M:
                break
            if attempt == HOME_ATTEMPTS:
                raise RuntimeError(f"eval: the arm did not stay home after /sim/reset + /vla/hold "
                                   f"({off * 1e3:.0f} mm off, {attempt} attempts)")
        # 2. Scene for this seed, then the instruction.
        poses = sample_cube_poses(seed, "panda")
        want = {n: p for n, (p, _) in poses.items()}
        try:
            self.objects.place(poses, RESET_TIMEOUT_S)
        except TimeoutError as e:
            raise TimeoutError(f"eval: the cube poses of seed {seed}: {e}") from None
        spec = make_episode(task, seed, poses, colour)
        self.instruction_pub.publish(self._String(data=spec.instruction))
        ready_wall = time.time() + 0.03
        g.wait(lambda: self.features.latent_obs_wall() > ready_wall,
               FRESH_LATENT_TIMEOUT_S + (self.slow_latency_ms or 0) / 1e3,
               "a latent computed after the new scene and instruction")
        return spec, want

    def episode(self, task: str, seed: int, record: bool = False, colour: str | None = None,
                before_resume: Callable[[], None] | None = None,
                after_run: Callable[[dict], None] | None = None) -> dict:
        """Reset, instruct, run one episode; its row (and traces when ``record``).

        ``colour`` forces the target cube's colour (None: the seed picks it). ``before_resume`` runs
        once the scene, instruction and a fresh latent are in place, just before ``/vla/resume``;
        ``after_run`` gets the row once the episode ended (success or time limit), the policy still
        driving (``tools/lerobot_loop.py`` records each demonstration between the two).
        """
        from vla_runtime.core.contract import SERVICE_RESUME

        g = self.g
        spec, want = self.prepare(task, seed, colour)
        tcp0, _ = self._tcp()
        if before_resume is not None:
            before_resume()
        # 3. Run.
        t_rec = time.monotonic()
        ok, msg = g.trigger(SERVICE_RESUME)
        if not ok:
            raise RuntimeError(f"eval: /vla/resume refused: {msg}")
        t0 = time.monotonic()
        static = want[spec.target]
        targets: list[tuple[float, float, float, float]] = []
        success_t = None
        min_d = float("inf")
        last_move = -1.0
        d = float("nan")
        while True:
            now = time.monotonic()
            t = now - t0
            if t > spec.time_limit_s:
                break
            if spec.motion is not None and t - last_move >= 1.0 / MOVE_OBJECT_HZ:
                self.objects.move(spec.target, spec.motion.position(t))
                last_move = t
            tcp, tcp_mono = self._tcp()
            objects = self.objects.positions
            target = spec.target_position(t, objects.get(spec.target, static)) if spec.motion is not None \
                else objects.get(spec.target, static)
            targets.append((now, *np.asarray(target, float).tolist()))
            if tcp is not None and tcp_mono >= t0:
                d = float(np.linalg.norm(tcp - target))
                min_d = min(min_d, d)
                if is_success(tcp, target):
                    success_t = tcp_mono - t0
                    break
            g.check_alive("an episode")
            time.sleep(0.005)
        t_end = time.monotonic()
        #: (resume, end) of the last episode on this process's monotonic clock (benches cut their streams by it).
        self.last_window = (t0, t_end)
        row = {
            "task": task,
            "seed": seed,
            "colour": spec.colour,
            "instruction": spec.instruction,
            "success": success_t is not None,
            "time_to_success_s": success_t,
            "min_distance_m": min_d if math.isfinite(min_d) else None,
            "final_distance_m": d if math.isfinite(d) else None,
            "start_tcp": tcp0.tolist() if tcp0 is not None else None,
        }
        if record:  # what came from just before the resume to the end of the episode
            latent = [f for f in self.features.since(t_rec) if f.t <= t_end]
            rec = {
                "ee": [(t, *tcp_from_hand(p, q).tolist()) for t, p, q in self.pose.since(t_rec) if t <= t_end],
                "latent": [(f.t, f.latent_age_s, f.infer_ms, f.hold) for f in latent],
                "fast_diag": [(t, kv) for t, kv in self.diag.since(DIAG_FAST_PATH, t_rec) if t <= t_end],
            }
            row["trace"] = _trace(rec, targets, t0)
        if after_run is not None:
            after_run(row)
        return row

    def fast_timing(self) -> dict:
        kv = self.diag.fast_path()
        timing = timing_summary(kv)
        return {"achieved_hz": timing.get("achieved_hz"), "deadline_miss_rate": timing.get("deadline_miss_rate"),
                "infer_ms": timing.get("infer_ms"), "hold_ticks": kv.get("hold_ticks"), "chunks": kv.get("chunks"),
                "provider": kv.get("provider")}


def _trace(rec: dict | None, targets: list, t0: float) -> dict:
    rec = rec or {"ee": [], "latent": [], "fast_diag": []}
    ee = np.array(rec["ee"]) if rec["ee"] else np.zeros((0, 4))
    tg = np.array(targets) if targets else np.zeros((0, 4))
    lat = np.array(rec["latent"]) if rec["latent"] else np.zeros((0, 4))
    loop = []
    for t, kv in rec["fast_diag"]:
        try:
            timing = json.loads(kv.get("timing_json", "{}") or "{}")
        except ValueError:
            timing = {}
        loop.append({"t": t - t0, "achieved_hz": timing.get("achieved_hz"),
                     "period_jitter_ms_p99": (timing.get("period_jitter_ms") or {}).get("p99"),
                     "infer_ms_p50": (timing.get("infer_ms") or {}).get("p50"),
                     "deadline_miss_rate": timing.get("deadline_miss_rate")})
    return {
        "ee": {"t": (ee[:, 0] - t0).tolist(), "xyz": ee[:, 1:].tolist()},
        "target": {"t": (tg[:, 0] - t0).tolist(), "xyz": tg[:, 1:].tolist()},
        "latent_age_s": {"t": (lat[:, 0] - t0).tolist(), "age": lat[:, 1].tolist(), "infer_ms": lat[:, 2].tolist()},
        "loop_timing": loop,
    }


# ------------------------------------------------------------------------------------ public
def run_eval(task: str, episodes: int, mode: str = "async", slow_latency_ms: float | None = None,
             config: str | os.PathLike | None = None, seed: int = 0, realtime: bool = True,
             log: Callable[[str], None] | None = print, progress: Callable[[str | None], None] | None = None,
             colour: str | None = None) -> dict:
    """Evaluate the config's policy on a task.

    Args:
        task: ``touch`` or ``touch_dynamic``.
        episodes: number of episodes (seeds ``seed * 1000 + i``: cube placement, colour, slide).
        mode: ``async`` (fast-slow) or ``sync`` (lockstep single-frequency baseline).
        slow_latency_ms: extra latency of every slow step (None: none).
        config: runtime config (default ``config/sim_panda_reach.yaml``).
        seed: evaluation seed.
        realtime: True: the real node graph as processes over DDS, in real time. False: the same
            episodes in simulated time in this process (no ROS; the package's ONNX graphs drive the
            sim directly): a fast check of the model package, not of the runtime.
        log: progress lines (None: quiet).
        progress: called once per finished episode (a :class:`~vla_runtime.commands.progress.Progress`
            bar); its result line goes to ``log``.
        colour: the target cube's colour in every episode (None: each seed picks one).

    Returns:
        ``success_rate``, ``time_to_success_s`` {``mean``, ``p90``} (over successful episodes),
        ``achieved_hz`` (fast loop), ``latent_age_s`` where measured, and ``per_episode`` rows
        (seed, colour, success, time to success, closest and final distance).

    Raises:
        ValueError: a bad argument or a config without the evaluation's nodes.
        RuntimeError / TimeoutError: the graph failed (the nodes' log tails are in the message).
    """
    _check_args(task, episodes, mode, slow_latency_ms, colour)
    say = log or (lambda _s: None)
    cfg_path = Path(config) if config else DEFAULT_CONFIG
    tick = progress or (lambda _line=None: None)
    if not realtime:
        return _run_eval_simtime(task, episodes, mode, slow_latency_ms, cfg_path, seed, say, tick, colour)
    rows = []
    t_start = time.monotonic()
    with _GraphSession(mode, slow_latency_ms, cfg_path, say) as g:
        for i in range(episodes):
            row = g.episode(task, seed * EPISODE_SEED_STRIDE + i, colour=colour)
            rows.append(row)
            say(f"eval: {task} {mode} episode {i + 1}/{episodes} ({row['colour']}): "
                f"{'success in {:.2f} s'.format(row['time_to_success_s']) if row['success'] else 'FAIL'}"
                f" (closest {row['min_distance_m'] if row['min_distance_m'] is not None else float('nan'):.3f} m)")
            tick(None)
        timing = g.fast_timing()
    extra = {"achieved_hz": timing.get("achieved_hz"), "fast_path": timing, "realtime": True,
             "wall_s": round(time.monotonic() - t_start, 1), "success_radius_m": SUCCESS_RADIUS_M}
    if colour is not None:
        extra["colour"] = colour
    return _summary(task, mode, slow_latency_ms, cfg_path, rows, extra)


def run_demo_episodes(out_dir: str | os.PathLike, config: str | os.PathLike | None = None, seed: int = 0,
                      log: Callable[[str], None] | None = print) -> dict:
    """One real-time episode of each task through the graph, with traces; writes a report.

    Writes ``report.json`` (every episode with its traces) and ``report.png`` into ``out_dir``:
    did it reach the target (distance to the target against the success radius), where did the
    hand go (top view), how late was the latent (against ``latent.max_age_s``), did the fast loop
    keep its rate, how long inference took and how much the loop period jittered.

    Returns:
        ``{"episodes": [row with "trace": {ee, target, latent_age_s, loop_timing}], "fast_path": {...},
        "json": path, "png": path}``.
    """
    from vla_runtime.commands.report import REPORT_JSON, REPORT_PNG, write_json

    say = log or (lambda _s: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = Path(config) if config else DEFAULT_CONFIG
    rows = []
    with _GraphSession("async", None, cfg_path, say) as g:
        for i, task in enumerate(TASKS):
            row = g.episode(task, seed * EPISODE_SEED_STRIDE + i, record=True)
            rows.append(row)
            say(f"demo: {task} ({row['colour']}): "
                f"{'success in {:.2f} s'.format(row['time_to_success_s']) if row['success'] else 'FAIL'}")
        timing = g.fast_timing()
    result = {"config": str(cfg_path), "episodes": rows, "fast_path": timing, "success_radius_m": SUCCESS_RADIUS_M}
    result["png"] = str(write_episodes_plot(out / REPORT_PNG, rows, load_config(cfg_path)))
    result["json"] = str(out / REPORT_JSON)
    write_json(out / REPORT_JSON, result)
    return result


def write_episodes_plot(path: str | os.PathLike, rows: list[dict], cfg) -> Path:
    """The demo's PNG from episode rows with traces (see :func:`run_demo_episodes`)."""
    from vla_runtime.commands.report import (
        infer_panel,
        jitter_panel,
        latent_age_panel,
        loop_rate_panel,
        reach_panel,
        top_view_panel,
        write_plot,
    )

    reach, paths, ages, rates, infer, jitter = [], [], [], [], [], []
    for row in rows:
        tr = row["trace"]
        label = f"{row['task']} ({row['colour']})"
        ee = np.array(tr["ee"]["xyz"], float).reshape(-1, 3)
        tg = np.array(tr["target"]["xyz"], float).reshape(-1, 3)
        te, tt = np.array(tr["ee"]["t"], float), np.array(tr["target"]["t"], float)
        keep = te >= 0.0  # the trace starts just before the resume: distance from the resume on
        if len(ee) and len(tg):
            tgt_at_ee = np.array([np.interp(te, tt, tg[:, k]) for k in range(3)]).T
            dist = np.linalg.norm(ee - tgt_at_ee, axis=1)
        else:
            dist = np.zeros(0)
        outcome = (f"reached in {row['time_to_success_s']:.1f} s" if row["success"]
                   else f"missed, closest {100 * (row['min_distance_m'] or float('nan')):.1f} cm")
        reach.append({"label": f"{label}: {outcome}", "t": te[keep] if len(dist) else te[:0],
                      "distance_m": dist[keep] if len(dist) else dist, "success_t": row["time_to_success_s"]})
        paths.append({"label": label, "xy": ee[:, :2], "target_xy": tg[:, :2] if len(tg) else None})
        lat = tr["latent_age_s"]
        ages.append({"label": label, "t": lat["t"], "age_s": lat["age"]})
        infer.append({"label": label, "t": lat["t"], "infer_ms": lat["infer_ms"]})
        loop = [x for x in tr["loop_timing"] if x["achieved_hz"] is not None]
        rates.append({"label": label, "t": [x["t"] for x in loop], "hz": [x["achieved_hz"] for x in loop]})
        jit = [x for x in tr["loop_timing"] if x.get("period_jitter_ms_p99") is not None]
        jitter.append({"label": label, "t": [x["t"] for x in jit], "p99_ms": [x["period_jitter_ms_p99"] for x in jit]})
    tick_ms = 1000.0 / cfg.rates.fast_hz
    panels = [
        reach_panel(reach, SUCCESS_RADIUS_M),
        top_view_panel(paths),
        latent_age_panel(ages, cfg.latent.max_age_s),
        loop_rate_panel(rates, cfg.rates.fast_hz),
        infer_panel(infer, tick_ms),
        jitter_panel(jitter, tick_ms),
    ]
    ok = sum(bool(r["success"]) for r in rows)
    title = f"vla-runtime demo: {ok}/{len(rows)} episodes reached the named cube ({Path(str(cfg.source)).name})"
    return write_plot(path, panels, title=title, ncols=3)


# --------------------------------------------------------------------------- simulated time
def _run_eval_simtime(task: str, episodes: int, mode: str, slow_latency_ms: float | None, config: Path, seed: int,
                      say: Callable[[str], None], tick: Callable[[str | None], None],
                      colour: str | None = None) -> dict:
    """The episodes in simulated time, no ROS (see :func:`run_eval`)."""
    rows = []
    for i in range(episodes):
        r = simtime_episode(task, seed * EPISODE_SEED_STRIDE + i, mode, slow_latency_ms, config, colour)
        rows.append(r)
        say(f"eval(sim time): {task} {mode} episode {i + 1}/{episodes}: "
            f"{'success in {:.2f} s'.format(r['time_to_success_s']) if r['success'] else 'FAIL'}")
        tick(None)
    return _summary(task, mode, slow_latency_ms, config, rows, {"achieved_hz": CONTROL_HZ, "realtime": False})


_SIM_CACHE: dict = {}


def simtime_episode(task: str, seed: int, mode: str = "async", slow_latency_ms: float | None = None,
                    config: str | os.PathLike | None = None, colour: str | None = None) -> dict:
    """One episode in simulated time: the package's graphs drive a SimRobot directly (no ROS).

    The slow graph runs on a frame every ``1 / rates.slow_hz`` (rendered at the config's camera
    size) and its latent becomes usable ``slow_latency_ms`` later; ``async`` re-plans every fast
    tick with the newest usable latent, ``sync`` only on a new latent and runs that chunk open-loop
    (pipelined: here the slow path keeps stepping meanwhile, unlike the graph's stop-and-go sync).
    """
    from vla_runtime.core.policy import FastStep, SlowStep
    from vla_runtime.engines.model_package import load_model_package
    from vla_runtime.sim.controllers import TrajectoryCommand
    from vla_runtime.sim.robot import SimRobot
    from vla_runtime.sim.scene import sample_cube_poses

    cfg = load_config(config or DEFAULT_CONFIG)
    key = str(cfg.source)
    if key not in _SIM_CACHE:
        pkg = load_model_package(cfg.model_package_path)
        # The policy's own slow and fast steps (core/policy), as the nodes run them; chunks are
        # executed whole here, so there is no executing prefix to condition on.
        _SIM_CACHE[key] = (SimRobot(cfg), pkg, SlowStep.from_package(pkg, [c.name for c in cfg.cameras]),
                           FastStep.from_package(pkg, use_prefix=False))
    robot, pkg, slow, fast = _SIM_CACHE[key]
    cam = cfg.cameras[0]
    arm_cols = [pkg.action_space.dim_names.index(j) for j in ARM_JOINTS]
    dt = 1.0 / pkg.spec.control_rate_hz
    horizon = pkg.spec.chunk_horizon
    slow_every = max(1, int(round(CONTROL_HZ / cfg.rates.slow_hz)))
    latency = (slow_latency_ms or 0.0) / 1e3
    robot.reset(seed)
    poses = sample_cube_poses(seed, "panda")
    for n, (p, q) in poses.items():
        robot.move_object(n, p, q)
    spec: EpisodeSpec = make_episode(task, seed, poses, colour)
    # The robot state as the fast node measures it (a gripper dim through the config's gripper joint).
    measured = fast.measured_state(cfg.robot)
    state_idx = measured.index(fast.state_layout)
    joint_names = tuple(robot.joint_names)
    pending: list[tuple[float, np.ndarray]] = []
    latent = None
    version = used = 0
    t0 = robot.time
    success_t, min_d = None, float("inf")
    for k in range(int(spec.time_limit_s * CONTROL_HZ)):
        t = k * dt
        target = spec.target_position(t, poses[spec.target][0])
        if spec.motion is not None:
            robot.move_object(spec.target, target)
        p, q = robot.ee_pose("arm")
        d = float(np.linalg.norm(tcp_from_hand(p, q) - target))
        min_d = min(min_d, d)
        if d <= SUCCESS_RADIUS_M:
            success_t = t
            break
        if k % slow_every == 0 and (not pending or latency <= 0):
            img = robot.render(cam.name, cam.width, cam.height)
            pending.append((t + latency, slow.run({cam.name: img}, spec.instruction).latent))
        while pending and pending[0][0] <= t + 1e-9:
            latent = pending.pop(0)[1]
            version += 1
        if latent is None or (mode == "sync" and version == used):
            robot.step(max(1, int(round((t0 + (k + 1) * dt - robot.time) / robot.model.opt.timestep))))
            continue
        used = version
        measured.update_joints(joint_names, robot.joint_state().positions)
        if not measured.complete:
            raise ValueError(f"{cfg.source}: the simulated robot does not measure {measured.missing()} "
                             f"(the proprio of {pkg.spec.name})")
        chunk = fast.run(measured.values[state_idx], latent=latent).chunk[:, arm_cols]
        robot.accept("arm_controller", TrajectoryCommand(list(ARM_JOINTS), [i * dt for i in range(horizon)],
                                                         chunk.tolist()))
        robot.step(max(1, int(round((t0 + (k + 1) * dt - robot.time) / robot.model.opt.timestep))))
    return {"task": task, "seed": seed, "colour": spec.colour, "instruction": spec.instruction,
            "success": success_t is not None, "time_to_success_s": success_t,
            "min_distance_m": min_d, "final_distance_m": d}


def main(argv: list[str] | None = None) -> int:
    """``python -m vla_runtime.commands.evaluation TASK [--episodes N] [--mode async|sync] [--slow-latency-ms L]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate the reference policy through the node graph.")
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--mode", choices=MODES, default="async")
    ap.add_argument("--slow-latency-ms", type=float, default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--colour", choices=COLOURS, default=None, help="target colour of every episode")
    ap.add_argument("--sim-time", action="store_true", help="simulated time in this process, no ROS graph")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    r = run_eval(args.task, args.episodes, args.mode, args.slow_latency_ms, args.config, args.seed,
                 realtime=not args.sim_time, colour=args.colour)
    brief = {k: v for k, v in r.items() if k != "per_episode"}
    print(json.dumps(brief, indent=2, default=float))
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
