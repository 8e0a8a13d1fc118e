#!/usr/bin/env python3
"""The whole loop on the simulator, once: demonstrations recorded through our graph → ``vla-runtime
export lerobot`` → LeRobot's own ``lerobot-train`` (ACT) → ``vla-runtime import lerobot`` → the
imported policy touches the red cube through our graph.

Stages (``--stages``, comma-separated, default all, in this order; each writes
``<work>/<stage>.json`` with its wall time, so one stage can be rerun on the previous ones' output):

1. ``record`` — the demonstrator is the trained reference policy (``config/sim_panda_reach.yaml``,
   ``models/reference_reach``) running in the full node graph (sim_robot, slow_reasoner,
   action_chunk_node, controller_bridge) exactly as ``vla-runtime eval`` runs it: each episode resets
   the arm, places the cubes at the seed's random poses, says "touch the red cube" and resumes. The
   **recorder node** is started for each episode once the scene is set, just before the resume, and
   stopped ``--linger-s`` after the touch: one rosbag2/MCAP bag per episode. Episodes where the
   demonstrator missed are dropped. Seeds ``1000 * --record-seed + i`` (the evaluation uses
   ``0 .. 19``: no evaluation placement is in the training data).
2. ``export`` — ``vla-runtime export lerobot <bags> --out <work>/dataset --fps 30``.
3. ``train`` — LeRobot 0.6.1's ``lerobot-train`` in its own environment (``.venv-lerobot``, or
   ``--lerobot-python``): ACT, ResNet-18 from scratch (``pretrained_backbone_weights=null``: nothing is
   downloaded), no VAE (the demonstrator is deterministic), small transformer, chunk of ``--chunk-size``
   steps, on the CPU.
4. ``import`` — ``vla-runtime import lerobot <checkpoint> --out <work>/package`` (state and action
   layout: the sim Panda's 7 joints + ``gripper/gripper``, the export's names).
5. ``eval`` — ``vla-runtime eval --task touch --colour red --episodes 20`` with a config that runs the
   imported package in the fast node (no slow part: the fast node takes the camera).

Run from the repository root with the runtime's environment; graph stages (record, eval) under the
machine's integration lock::

    flock /tmp/vla_integration.lock nice -n 19 .venv/bin/python tools/lerobot_loop.py --work runs/lerobot_loop
    .venv/bin/python tools/lerobot_loop.py --work runs/lerobot_loop --stages train,import  # rerun two stages

``<work>/summary.json`` collects every stage's result and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("record", "export", "train", "import", "eval")
COLOUR = "red"
FPS = 30
REPO_ID = "local/touch_red"
#: How long the recorder may take to subscribe to everything it records.
RECORDER_READY_S = 30.0
#: An episode that starts this close to the moment the bridge left HALTED is a demonstration.
BOUNDARY_TOLERANCE_NS = 300_000_000


def _log(msg: str) -> None:
    print(f"[lerobot_loop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write(work: Path, stage: str, result: dict) -> None:
    (work / f"{stage}.json").write_text(json.dumps(result, indent=2, default=float))


def _run(cmd: list[str], log_file: Path, env: dict[str, str] | None = None, time_box_s: float | None = None,
         append: bool = False) -> bool:
    """Run a command, its output to ``log_file`` (and the tail in the error when it fails).

    With ``time_box_s`` the command is interrupted (SIGINT, then SIGKILL) when it runs longer;
    returns whether that happened.
    """
    _log("$ " + " ".join(cmd))
    stopped = False
    with open(log_file, "a" if append else "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            rc = proc.wait(timeout=time_box_s)
        except subprocess.TimeoutExpired:
            _log(f"time box of {time_box_s:.0f} s reached: stopping {cmd[0]} (the last saved checkpoint is used)")
            stopped = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return stopped
    if rc != 0:
        tail = log_file.read_text()[-3000:]
        raise SystemExit(f"lerobot_loop: {cmd[0]} ... exited {rc}; log {log_file}:\n{tail}")
    return stopped


# ----------------------------------------------------------------------------------------- record
def camera(size: int) -> list[dict]:
    """The scene camera at ``size``² (the demonstrator's slow part resizes it to its own 96²)."""
    return [{"name": "scene", "topic": "/camera/scene/image_raw", "width": size, "height": size, "rate_hz": 10.0}]


def record_config(work: Path, base: Path, camera_size: int) -> Path:
    """The demonstrator's config with the scene camera at the size the student policy will see."""
    from vla_runtime.graph.harness import write_config

    return write_config(base, work / "record_config.yaml", {"cameras": camera(camera_size)})


def record(work: Path, episodes: int, seed: int, config: Path, linger_s: float, settle_s: float) -> dict:
    """Demonstrations through the graph: one recorder bag per successful episode."""
    from std_msgs.msg import String

    from vla_runtime.commands.evaluation import EPISODE_SEED_STRIDE, _GraphSession
    from vla_runtime.core.config import load_config
    from vla_runtime.core.contract import SERVICE_RESET, TOPIC_HALT
    from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
    from vla_runtime.nodes.common import QOS_LATCHED

    bags = work / "bags"
    if bags.exists():
        shutil.rmtree(bags)
    bags.mkdir(parents=True)
    rows = []
    with _GraphSession("async", None, config, _log) as s:
        g = s.g
        cfg_file = g.work_dir / "config.yaml"  # the copy the graph's nodes read
        cfg = load_config(cfg_file)
        watched = ["/joint_states", cfg.cameras[0].topic] + [grp.resolved_topic for grp in cfg.robot.groups.values()]
        node = g.probe.node
        halt_pub = node.create_publisher(String, TOPIC_HALT, QOS_LATCHED)  # discovered during the first episode
        for i in range(episodes):
            ep_seed = seed * EPISODE_SEED_STRIDE + i
            bag = bags / f"episode_{i:03d}"
            t_ep = time.monotonic()
            marks: dict[str, int] = {}

            def start_recorder(bag=bag, marks=marks) -> None:
                before = {t: node.count_subscribers(t) for t in watched}
                g.start([NodeSpec("recorder", NODE_MODULES["recorder"], str(cfg_file),
                                  params={"bag_dir": str(bag), "part_s": 5.0})])
                g.wait(lambda: all(node.count_subscribers(t) > before[t] for t in watched), RECORDER_READY_S,
                       "the recorder to subscribe to the joint states, the camera and the controller topics")
                # The graph shows the subscriptions before every publisher has matched them (Fast DDS can
                # take one ~3 s announcement period): let the data start flowing while the arm holds.
                time.sleep(settle_s)
                # The episode starts here: a reset out of HALTED is an episode boundary of the export, so
                # the frames the recorder took while the arm held before it are a separate episode.
                halt_pub.publish(String(data="lerobot_loop: episode boundary"))
                g.wait_mode("HALTED", 5.0)
                halt_pub.publish(String(data=""))
                g.wait(lambda: g.trigger(SERVICE_RESET)[0] and g.safety.mode() == "HOLD", 5.0,
                       "the bridge out of HALTED (/vla/reset)", interval=0.05)
                marks["reset_wall_ns"] = time.time_ns()

            def stop_recorder(row: dict, i=i) -> None:
                time.sleep(linger_s)  # the demonstrator stays on the cube: the data shows where to stop
                how = g.supervisor.stop_node("recorder")
                if how != "SIGINT":
                    _log(f"  recorder of episode {i} ended by {how}")

            row = s.episode("touch", ep_seed, colour=COLOUR, before_resume=start_recorder, after_run=stop_recorder)
            row["bag"] = str(bag) if row["success"] else None
            row["reset_wall_ns"] = marks.get("reset_wall_ns")
            row["episode_wall_s"] = round(time.monotonic() - t_ep, 2)
            if not row["success"]:
                shutil.rmtree(bag, ignore_errors=True)
            rows.append(row)
            outcome = f"touched in {row['time_to_success_s']:.2f} s" if row["success"] else "MISSED (dropped)"
            _log(f"record {i + 1}/{episodes} seed {ep_seed}: {outcome} ({row['episode_wall_s']:.1f} s wall)")
    kept = [r for r in rows if r["bag"]]
    return {"episodes": episodes, "kept": len(kept), "bags": [r["bag"] for r in kept],
            "reset_wall_ns": {r["bag"]: r["reset_wall_ns"] for r in kept}, "config": str(config),
            "per_episode": rows, "demonstrator_success_rate": len(kept) / max(1, episodes)}


# ----------------------------------------------------------------------------------------- export
def export(work: Path, config: Path) -> dict:
    rec = json.loads((work / "record.json").read_text())
    out = work / "dataset"
    if out.exists():
        shutil.rmtree(out)
    _run([sys.executable, "-m", "vla_runtime.cli", "export", "lerobot", *rec["bags"], "--out", str(out),
          "--config", str(config), "--fps", str(FPS), "--repo-id", REPO_ID], work / "export.log")
    info = json.loads((out / "meta" / "info.json").read_text())
    # The demonstration of a bag: its episode that starts where the bridge left HALTED, just before the
    # resume (the other one is the arm holding while the recorder came up; when the recorder came up
    # less than the tolerance before the boundary, that one starts near it too, so take the nearest).
    eps = json.loads((out / "meta" / "vla_runtime_export.json").read_text())["episodes"]
    nearest: dict[str, tuple[int, int]] = {}  # bag -> (gap to the boundary, episode index)
    for e in eps:
        gap = abs(e["start_ns"] - rec["reset_wall_ns"][e["bag"]])
        best = nearest.get(e["bag"])
        if gap < BOUNDARY_TOLERANCE_NS and (best is None or gap < best[0]):
            nearest[e["bag"]] = (gap, e["episode_index"])
    demos = sorted(i for _, i in nearest.values())
    frames = sum(e["frames"] for e in eps if e["episode_index"] in demos)
    return {"dataset": str(out), "episodes": info["total_episodes"], "frames": info["total_frames"],
            "fps": info["fps"], "features": sorted(info["features"]), "demonstrations": demos,
            "demonstration_frames": frames, "bags_without_a_clean_start": len(rec["bags"]) - len(demos)}


# ------------------------------------------------------------------------------------------ train
def train(work: Path, python: Path, steps: int, batch_size: int, chunk_size: int, n_action_steps: int,
          dim_model: int, lr: float, seed: int, minutes: float | None, save_every: int,
          resume: bool = False) -> dict:
    """Train ACT with ``lerobot-train``; with ``resume``, go on from the last checkpoint of the
    previous train stage (LeRobot's own ``--resume``: weights, optimizer and step counter) and report
    the time and steps of both legs together."""
    out = work / "train"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    earlier_s = 0.0
    if resume:
        last = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
        if not last.is_file() or not (work / "train.json").is_file():
            raise SystemExit(f"lerobot_loop: --resume-train needs a previous train stage; {last} is missing")
        earlier_s = float(json.loads((work / "train.json").read_text())["wall_s"])
        cmd = [str(python), "-m", "lerobot.scripts.lerobot_train", f"--config_path={last}", "--resume=true",
               f"--steps={steps}"]
    else:
        if out.exists():
            shutil.rmtree(out)
        demos = json.loads((work / "export.json").read_text())["demonstrations"]
        cmd = [str(python), "-m", "lerobot.scripts.lerobot_train",  # = lerobot-train
               f"--dataset.repo_id={REPO_ID}", f"--dataset.root={work / 'dataset'}",
               "--dataset.use_imagenet_stats=false", "--dataset.video_backend=pyav",
               f"--dataset.episodes=[{','.join(map(str, demos))}]",
               "--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
               "--policy.pretrained_backbone_weights=null", "--policy.vision_backbone=resnet18",
               "--policy.use_vae=false", f"--policy.dim_model={dim_model}",
               f"--policy.dim_feedforward={4 * dim_model}",
               "--policy.n_heads=8", "--policy.n_encoder_layers=2", "--policy.n_decoder_layers=1",
               f"--policy.chunk_size={chunk_size}", f"--policy.n_action_steps={n_action_steps}",
               f"--policy.optimizer_lr={lr}", f"--policy.optimizer_lr_backbone={lr}",
               f"--batch_size={batch_size}", f"--steps={steps}", f"--save_freq={save_every}", "--log_freq=50",
               "--num_workers=1", f"--seed={seed}", "--wandb.enable=false", f"--output_dir={out}",
               "--job_name=act_touch_red"]
    # A resumed leg appends to the log, so the loss log below covers both legs.
    stopped = _run(cmd, work / "train.log", env, time_box_s=minutes * 60 if minutes else None, append=resume)
    saved = sorted(d for d in (out / "checkpoints").glob("[0-9]*")
                   if (d / "pretrained_model" / "model.safetensors").is_file())
    if not saved:
        raise SystemExit(f"lerobot_loop: lerobot-train saved no checkpoint under {out / 'checkpoints'}")
    ckpt = saved[-1] / "pretrained_model"
    log = (work / "train.log").read_text()
    losses = [f"step {m.group(1)} loss {m.group(2)}" for m in re.finditer(r"step:(\S+) .*?loss:(\S+)", log)]
    return {"checkpoint": str(ckpt), "trained_steps": int(saved[-1].name), "steps_asked": steps,
            "time_boxed": stopped, "batch_size": batch_size, "chunk_size": chunk_size,
            "dim_model": dim_model, "lr": lr, "loss_log": losses,
            "checkpoint_mb": round(sum(f.stat().st_size for f in ckpt.iterdir()) / 1e6, 2),
            "earlier_legs_s": earlier_s}


# ----------------------------------------------------------------------------------------- import
def import_(work: Path, python: Path) -> dict:
    ckpt = json.loads((work / "train.json").read_text())["checkpoint"]
    pkg = work / "package"
    _run([sys.executable, "-m", "vla_runtime.cli", "import", "lerobot", ckpt, "--out", str(pkg),
          "--name", "act_touch_red", "--control-rate-hz", str(FPS), "--lerobot-python", str(python), "--verify"],
         work / "import.log")
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    return {"package": str(pkg), "package_mb": round(size / 1e6, 2)}


# ------------------------------------------------------------------------------------------- eval
def eval_config(work: Path, package: Path, horizon_steps: int, camera_size: int) -> Path:
    """The sim Panda running the imported package in the fast node (no slow part), as the tests do."""
    from vla_runtime.graph.harness import write_config

    return write_config(ROOT / "config" / "sim_panda.yaml", work / "act_touch_red.yaml", {
        "model": {"package": str(package.resolve())},
        "cameras": camera(camera_size),
        # The camera frame's age stands for the latent's: a frame older than this → HOLD.
        "latent": {"max_age_s": 1.0},
        "instruction": f"touch the {COLOUR} cube",
        "nodes": ["sim_robot", "action_chunk_node", "controller_bridge"],
        "scheduler": {"execution_horizon_steps": horizon_steps},
    })


def evaluate(work: Path, episodes: int, horizon_steps: int, camera_size: int) -> dict:
    from vla_runtime.commands.evaluation import run_eval

    cfg = eval_config(work, work / "package", horizon_steps, camera_size)
    r = run_eval("touch", episodes, "async", None, cfg, seed=0, log=_log, colour=COLOUR)
    (work / "eval_full.json").write_text(json.dumps(r, indent=2, default=float))
    return {k: v for k, v in r.items() if k != "per_episode"} | {
        "per_episode": [{k: row[k] for k in ("seed", "success", "time_to_success_s", "min_distance_m")}
                        for row in r["per_episode"]]}


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from vla_runtime.commands.import_lerobot import lerobot_python

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "lerobot_loop", help="where everything is written")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "sim_panda_reach.yaml",
                    help="the demonstrator's config (the reference policy)")
    ap.add_argument("--record-episodes", type=int, default=70)
    ap.add_argument("--camera-size", type=int, default=128,
                    help="scene camera (square) of the recording and of the student policy; the demonstrator "
                         "resizes it to its 96x96")
    ap.add_argument("--record-seed", type=int, default=1, help="recording seeds are 1000 * this + i")
    ap.add_argument("--linger-s", type=float, default=1.0, help="recording goes on this long after the touch")
    ap.add_argument("--settle-s", type=float, default=3.0,
                    help="after the recorder subscribed, wait this long for its data to flow before the episode starts")
    ap.add_argument("--lerobot-python", default=None, help="LeRobot 0.6.1 environment (default .venv-lerobot)")
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="time box: stop lerobot-train after this long and use its last saved checkpoint")
    ap.add_argument("--resume-train", action="store_true",
                    help="train goes on from the previous train stage's last checkpoint (its time is added)")
    ap.add_argument("--save-every", type=int, default=250, help="checkpoint every this many steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=20)
    ap.add_argument("--n-action-steps", type=int, default=10)
    ap.add_argument("--dim-model", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--execution-horizon-steps", type=int, default=3,
                    help="the fast node re-plans when this many steps of the plan are left")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"--stages: unknown {bad}; choose from {list(STAGES)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = lerobot_python(args.lerobot_python) if {"train", "import"} & set(stages) else None
    summary_path = work / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for stage in STAGES:
        if stage not in stages:
            continue
        _log(f"stage {stage}")
        t0 = time.monotonic()
        if stage == "record":
            r = record(work, args.record_episodes, args.record_seed,
                       record_config(work, args.config.resolve(), args.camera_size), args.linger_s, args.settle_s)
        elif stage == "export":
            r = export(work, work / "record_config.yaml")
        elif stage == "train":
            r = train(work, python, args.train_steps, args.batch_size, args.chunk_size, args.n_action_steps,
                      args.dim_model, args.lr, args.record_seed, args.train_minutes, args.save_every,
                      args.resume_train)
        elif stage == "import":
            r = import_(work, python)
        else:
            r = evaluate(work, args.eval_episodes, args.execution_horizon_steps, args.camera_size)
        r["wall_s"] = round(time.monotonic() - t0 + r.pop("earlier_legs_s", 0.0), 1)
        _write(work, stage, r)
        summary[stage] = {k: v for k, v in r.items() if k not in ("per_episode", "bags")}
        summary_path.write_text(json.dumps(summary, indent=2, default=float))
        _log(f"stage {stage} done in {r['wall_s']:.0f} s")
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
