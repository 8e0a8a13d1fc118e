"""The ``vla-runtime`` command line.

Subcommands import what they need lazily so ``vla-runtime check`` stays fast and works without
a ROS graph. User errors (bad config, bad model package, bad arguments) end with a clear message
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from vla_runtime import __version__
from vla_runtime.commands.progress import Progress


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def cmd_check(args: argparse.Namespace) -> int:
    from vla_runtime.commands.check import check_config

    rc = 0
    for path in args.configs:
        report = check_config(path, load_models=not args.no_models)
        if args.json:
            _print_json(report.to_dict())
        elif report.ok:
            print(f"OK {path}")
            for v in report.verified:
                print(f"  ✓ {v}")
        else:
            print(f"INVALID {path}", file=sys.stderr)
            for p in report.problems:
                print(f"  ✗ {p}", file=sys.stderr)
        rc = rc or (0 if report.ok else 1)
    return rc


def _load_or_exit(path: str):
    from vla_runtime.core.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(1) from None


def cmd_up(args: argparse.Namespace) -> int:
    from vla_runtime.commands.check import check_config
    from vla_runtime.graph.supervisor import run_up

    report = check_config(args.config)
    if not report.ok:
        print(f"vla-runtime up: refusing to start, {args.config} is invalid:", file=sys.stderr)
        for p in report.problems:
            print(f"  ✗ {p}", file=sys.stderr)
        return 1
    if args.inject_delay_ms is None:
        cfg = _load_or_exit(args.config)
        return run_up(cfg, str(cfg.source), duration_s=args.duration)
    with tempfile.TemporaryDirectory(prefix="vla_up_") as tmp:
        cfg = _load_or_exit(str(_with_injected_delay(args.config, args.inject_delay_ms, tmp)))
        print(f"vla-runtime up: TESTING: {args.inject_delay_ms:g} ms injected into every fast inference",
              file=sys.stderr)
        return run_up(cfg, str(cfg.source), duration_s=args.duration)


def _with_injected_delay(config: str, delay_ms: float, tmp_dir: str) -> Path:
    """``config`` with ``model.fast_engine.inject_delay_ms`` set (a testing tool: a slow GPU on this machine)."""
    from vla_runtime.graph.harness import write_config

    if not (delay_ms >= 0 and delay_ms <= 60_000):
        print(f"--inject-delay-ms must be in [0, 60000] ms, got {delay_ms}", file=sys.stderr)
        raise SystemExit(2)
    fast = _load_or_exit(config).model.fast_engine.model_dump(exclude_none=True)
    fast["inject_delay_ms"] = float(delay_ms)
    return write_config(config, Path(tmp_dir) / Path(config).name, {"model": {"fast_engine": fast}})


def cmd_keys(args: argparse.Namespace) -> int:
    from vla_runtime.commands.deploy import write_keys

    try:
        paths = write_keys(args.dir, args.names, force=args.force)
    except (FileExistsError, ValueError) as e:
        print(f"vla-runtime keys: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"wrote {p}")
    print("copy only the *.key (public) files to the other machine; *.key_secret never leaves this one")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from vla_runtime.commands.deploy import build_engines
    from vla_runtime.engines.base import EngineError

    try:
        result = build_engines(args.model, fp16=args.fp16, int8=args.int8, calib=args.calib,
                               cache_dir=args.cache_dir, parts=tuple(args.parts))
    except EngineError as e:
        print(f"vla-runtime build-engine: {e}", file=sys.stderr)
        return 1
    _print_json(result)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vla_runtime.bench import run_benchmark

    if args.which == "import":  # LeRobot in torch vs the runtime's ONNX path (needs .venv-lerobot)
        from vla_runtime.commands.bench_import import bench_import

        result = bench_import(n=args.trials or 20)
        if "skipped" in result:
            print(f"vla-runtime bench import: not measured: {result['skipped']}", file=sys.stderr)
            return 1
    else:
        result = run_benchmark(args)
    if args.json:
        _print_json(result)
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if result.get("passed", True) is not False or args.no_fail else 1


def cmd_teleop(args: argparse.Namespace) -> int:
    from vla_runtime.commands.teleop_keyboard import KeyboardTeleopError, run_keyboard

    if not args.keyboard:
        print("vla-runtime teleop: only --keyboard is built in; joysticks and SpaceMice go through the "
              "teleop node (sensor_msgs/Joy), see README 'Teleoperation'", file=sys.stderr)
        return 2
    cfg = _load_or_exit(args.config)
    try:
        return run_keyboard(cfg)
    except KeyboardTeleopError as e:
        print(f"vla-runtime teleop: {e}", file=sys.stderr)
        return 2


def cmd_replay(args: argparse.Namespace) -> int:
    from vla_runtime.commands.replay import replay
    from vla_runtime.core.config import PROJECT_ROOT

    model = args.model or str(PROJECT_ROOT / "models" / "timing_reference")
    try:
        result = replay(args.bag, model, tolerance=args.tolerance, config=args.config)
    except (FileNotFoundError, ValueError) as e:
        print(f"vla-runtime replay: {e}", file=sys.stderr)
        return 1
    if not args.per_tick:
        result = {k: v for k, v in result.items() if k != "per_tick"}
    _print_json(result)
    return 0


def cmd_record_rollouts(args: argparse.Namespace) -> int:
    from vla_runtime.commands.detector_tools import SCENARIOS, record_rollouts, save_rollouts

    _load_or_exit(args.config)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not scenarios:
        print(f"vla-runtime record-rollouts: --scenarios {args.scenarios!r}: unknown {bad}; "
              f"choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    with Progress("record-rollouts", total=args.episodes, unit="episode") as bar:
        rollouts = record_rollouts(args.config, args.out, episodes=args.episodes, episode_s=args.episode_s,
                                   scenarios=scenarios, seed=args.seed, log=None, progress=bar)
    path = save_rollouts(rollouts, args.out)
    n_ok = sum(1 for r in rollouts if r.label == 0)
    print(f"recorded {len(rollouts)} rollouts ({n_ok} successes) into {path}")
    return 0


def cmd_calibrate_detector(args: argparse.Namespace) -> int:
    from vla_runtime.commands.detector_tools import calibrate_detector

    try:
        with Progress("calibrate-detector", unit="step", log_stream=None) as bar:
            result = calibrate_detector(args.rollouts, args.alpha, package=args.package, bin_s=args.bin_s,
                                        method=args.method, labels_from_fault=args.labels == "fault", progress=bar)
    except (FileNotFoundError, ValueError) as e:
        print(f"vla-runtime calibrate-detector: {e}", file=sys.stderr)
        return 1
    _print_json(result)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vla_runtime.commands.evaluation import run_eval

    tmp = tempfile.TemporaryDirectory(prefix="vla_eval_")
    config = args.config
    if args.inject_delay_ms is not None:
        from vla_runtime.commands.evaluation import DEFAULT_CONFIG

        config = str(_with_injected_delay(config or str(DEFAULT_CONFIG), args.inject_delay_ms, tmp.name))
    try:
        with Progress("eval", total=args.episodes, unit="episode", quiet=args.json) as bar:
            result = run_eval(args.task, args.episodes, mode=args.mode, slow_latency_ms=args.slow_latency_ms,
                              config=config, seed=args.seed, realtime=not args.simtime,
                              log=None if args.json else bar.log, progress=bar, colour=args.colour)
    except ValueError as e:
        print(f"vla-runtime eval: {e}", file=sys.stderr)
        return 1
    finally:
        tmp.cleanup()
    if args.json:
        _print_json(result)
    else:
        print(f"{args.task} ({args.mode}): success {result['success_rate']:.0%} over {args.episodes} episodes, "
              f"time to success {result['time_to_success_s']}, fast loop {result.get('achieved_hz')} Hz")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vla_runtime.core.config import PROJECT_ROOT
    from vla_runtime.data.lerobot_export import ExportError, ExportOptions, export_lerobot

    cfg = _load_or_exit(args.config or str(PROJECT_ROOT / "config" / "sim_panda.yaml"))
    try:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(args.out).resolve().name).lstrip("._-") or "dataset"
        options = ExportOptions(fps=args.fps, repo_id=args.repo_id or f"local/{name}",
                                task_from=args.task_from, vcodec=args.vcodec)
        with Progress("export", total=len(args.bags), unit="bag", log_stream=sys.stderr) as bar:
            result = export_lerobot(args.bags, args.out, cfg, options, progress=bar)
    except ImportError as e:  # pyarrow / PyAV: the export's own requirements, no node needs them
        print(f"vla-runtime export: {e.name or e} is not installed; pip install -r requirements/export.txt",
              file=sys.stderr)
        return 2
    except (ExportError, OSError) as e:
        print(f"vla-runtime export: {e}", file=sys.stderr)
        return 1
    _print_json(result.to_dict())
    print(f"load it with LeRobotDataset({result.repo_id!r}, root={str(result.root)!r})", file=sys.stderr)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from vla_runtime.commands.infer import cmd_infer as run

    return run(args.package, args.inputs, args.out, threads=args.threads)


def cmd_import(args: argparse.Namespace) -> int:
    from vla_runtime.commands.import_lerobot import LeRobotImportError, import_lerobot

    try:
        names = {k: getattr(args, k).split(",") if getattr(args, k) else None for k in ("state_names", "action_names")}
        with Progress("import", unit="step", log_stream=sys.stderr) as bar:
            summary = import_lerobot(args.pretrained_dir, args.out, tokenizer=args.tokenizer, name=args.name,
                                     control_rate_hz=args.control_rate_hz, verify=args.verify,
                                     python=args.lerobot_python, robot=args.robot, progress=bar, **names)
    except LeRobotImportError as e:
        print(f"vla-runtime import: {e}", file=sys.stderr)
        return 1
    print(f"imported {summary}")
    print("next: vla-runtime infer <package> --inputs IN.npz --out OUT.npz, then vla-runtime check <config> "
          "(docs/bring-your-own-policy.md)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vla_runtime.commands.serve import cmd_serve as run

    return run(args.package, args.host, args.port, args.allow_remote, args.token_file, args.max_message_mb, args.seed,
               args.threads)


def cmd_demo(args: argparse.Namespace) -> int:
    from vla_runtime.commands.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vla_runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate config(s) and the model packages they name")
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--no-models", action="store_true", help="validate the YAML only")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("up", help="start the node graph of a config as processes (Ctrl-C stops it)")
    p.add_argument("config")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--inject-delay-ms", type=float, default=None,
                   help="TESTING: add this latency to every fast inference (a slow GPU or a Jetson, emulated)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("keys", help="generate CURVE key pairs for the remote latent link")
    p.add_argument("names", nargs="+", help="key names, e.g. slow_path fast_path")
    p.add_argument("--dir", default="keys", help="directory to write into (created 0700)")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("build-engine", help="build TensorRT engines for a model package (cached by GPU + TRT version)")
    p.add_argument("model", help="model package directory, e.g. models/timing_reference")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    p.add_argument("--int8", action="store_true", help="INT8, calibrated from --calib")
    p.add_argument("--calib", default=None, help="directory of .npz feed dicts for INT8 calibration")
    p.add_argument("--cache-dir", default=None, help="engine cache (default: beside the ONNX files)")
    p.add_argument("--parts", nargs="+", default=["slow", "fast"], choices=["slow", "fast"])
    p.set_defaults(func=cmd_build_engine)

    p = sub.add_parser("bench", help="benchmarks; each prints JSON with --json")
    p.add_argument("which", choices=["loop", "handoff", "max-rate", "chunks", "engine", "teleop", "halt", "faults",
                                     "fuzz", "import", "delay", "cache", "tts", "horizon", "interrupt"])
    p.add_argument("--trials", type=int, default=None,
                   help="trials (teleop, halt; fuzz: cases per input class; import: steps per side; delay: "
                        "episodes per row)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", default=None, help="config for graph benchmarks (default: sim_panda)")
    p.add_argument("--rate", type=float, default=30.0, help="loop rate in Hz (loop)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measurement (loop)")
    p.add_argument("--model", default=None, help="model package (engine; default: timing_reference)")
    p.add_argument("--cases", type=int, default=None, help="generated cases (fuzz: config/model cases)")
    p.add_argument("--seed", type=int, default=0, help="seed of generated cases (fuzz)")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    p.add_argument("--latent-mb", type=float, default=8.0,
                   help="handoff: also measure a K/V-cache latent of this many MB (0: skip)")
    p.add_argument("--delays", default=None,
                   help="delay: injected fast-inference delays, ms (default 0,100,200,300,500)")
    p.add_argument("--modes", default=None, help="delay: modes (default sync,async_crossfade,async_rtc)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("teleop", help="operator takeover from this terminal")
    p.add_argument("--keyboard", action="store_true", help="drive with the keyboard (needs a TTY)")
    p.add_argument("--config", default="config/sim_panda.yaml")
    p.set_defaults(func=cmd_teleop)

    p = sub.add_parser("replay", help="feed a recorded bag to the engines and report where chunks differ")
    p.add_argument("bag", help="rosbag2 directory written by the recorder node")
    p.add_argument("--model", default=None, help="model package (default: timing_reference)")
    p.add_argument("--tolerance", type=float, default=0.05, help="per-dim difference that counts as a deviation")
    p.add_argument("--config", default=None,
                   help="runtime config of the robot the bag was recorded on (default: config/sim_panda.yaml)")
    p.add_argument("--per-tick", action="store_true", help="include every tick in the JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("record-rollouts", help="run episodes (nominal and induced failures) and record features")
    p.add_argument("config", help="e.g. config/sim_panda_reach.yaml")
    p.add_argument("out", help="output directory")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--episode-s", type=float, default=8.0)
    p.add_argument("--scenarios", default="nominal,target_moved,arm_blocked,wrong_object",
                   help="comma list cycled over the episodes; repeat 'nominal' for more successes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_record_rollouts)

    p = sub.add_parser("calibrate-detector",
                       help="train the failure score on recorded rollouts and calibrate its conformal threshold")
    p.add_argument("rollouts", nargs="+", help="directories of recorded rollouts (successes and failures), pooled")
    p.add_argument("--alpha", type=float, default=0.2, help="allowed false-alarm rate on successful episodes")
    p.add_argument("--package", default=None, help="model package to write detector/ into")
    p.add_argument("--bin-s", type=float, default=0.5, help="time-bin width of the threshold")
    p.add_argument("--method", choices=["functional", "per_bin"], default="functional")
    p.add_argument("--labels", choices=["fault", "episode"], default="fault",
                   help="per-step training targets: a failed episode fails from its induced fault on "
                        "(fault, the default) or throughout (episode)")
    p.set_defaults(func=cmd_calibrate_detector)

    p = sub.add_parser("eval", help="run task episodes through the whole node graph and score them")
    p.add_argument("--task", choices=["touch", "touch_dynamic"], required=True)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--mode", choices=["async", "sync"], default="async",
                   help="async: fast-slow; sync: the stop-and-go single-frequency baseline (observe, infer while "
                        "the robot holds, execute the chunk)")
    p.add_argument("--slow-latency-ms", type=float, default=None, help="extra latency of every slow step")
    p.add_argument("--inject-delay-ms", type=float, default=None,
                   help="TESTING: add this latency to every fast inference (model.fast_engine.inject_delay_ms)")
    p.add_argument("--config", default=None, help="default: config/sim_panda_reach.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--colour", choices=["red", "green", "blue"], default=None,
                   help="the target cube's colour in every episode (default: each episode's seed picks one)")
    p.add_argument("--simtime", action="store_true",
                   help="run the episodes in simulated time in-process (checks the model, not the runtime)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="turn recorded bags into a training dataset")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = fmt.add_parser("lerobot", help="a LeRobotDataset (v3.0, what LeRobot 0.6 reads): parquet + mp4")
    q.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories written by the recorder node")
    q.add_argument("--out", required=True, help="dataset directory to create (must not exist or be empty)")
    q.add_argument("--config", default=None, help="the config the bags were recorded with (default: sim_panda)")
    q.add_argument("--fps", type=int, default=30, help="frames per second of the dataset")
    q.add_argument("--repo-id", default=None, help="dataset name, owner/name (default: local/<out dir name>)")
    q.add_argument("--task-from", choices=["instruction", "config"], default="instruction",
                   help="task text: /vla/instruction (episodes split where it changes) or the config's instruction")
    q.add_argument("--vcodec", choices=["h264", "libsvtav1"], default="h264",
                   help="video codec (libsvtav1: AV1 as LeRobot records; refused where SVT-AV1 could run its "
                        "threads at SCHED_FIFO 99: root, CAP_SYS_NICE, an rtprio limit)")
    q.set_defaults(func=cmd_export)

    p = sub.add_parser("infer", help="run a model package once on given inputs (.npz) and write its actions")
    p.add_argument("package", help="model package directory, e.g. models/my_pi0")
    p.add_argument("--inputs", required=True, help=".npz: one uint8 HxWx3 frame per camera name, prompt, state "
                   "[, noise, step_noise, seed]")
    p.add_argument("--out", required=True, help=".npz to write: actions [H, A] in robot units, and more")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("import", help="turn a trained policy into a model package")
    src = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    q = src.add_parser("lerobot", help="a LeRobot 0.6 checkpoint (pi0, pi05, smolvla, act, diffusion); runs in "
                       ".venv-lerobot (make lerobot-env), never in the runtime's environment")
    q.add_argument("pretrained_dir", help="the policy's save_pretrained folder (with its processor configs)")
    q.add_argument("--out", required=True, help="package folder to (re)create, e.g. models/my_policy")
    q.add_argument("--tokenizer", default=None, help="folder with the prompt tokenizer's tokenizer.json "
                   "(pi0/pi05 name google/paligemma-3b-pt-224: needed when it is not in the local HF cache)")
    q.add_argument("--name", default=None, help="package name (default: the --out folder name)")
    q.add_argument("--control-rate-hz", type=float, default=30.0, help="rate the chunk steps run at (dataset fps)")
    q.add_argument("--verify", action="store_true", help="also compare the package with LeRobot on two inputs")
    q.add_argument("--lerobot-python", default=None, help="the importer environment's python (default: "
                   ".venv-lerobot/bin/python)")
    q.add_argument("--robot", default="panda", help="the robot the action layout is for")
    q.add_argument("--state-names", default=None, help="comma-separated names of the checkpoint's state dims, in its "
                   "order: robot joints and '<group>/gripper' (default: the Panda's 7 joints + gripper/gripper)")
    q.add_argument("--action-names", default=None, help="comma-separated names of its action dims (same default)")
    q.set_defaults(func=cmd_import)

    p = sub.add_parser("serve", help="serve a model package over openpi's policy-server protocol (openpi-client)")
    p.add_argument("package", help="model package directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true",
                   help="permit binding beyond loopback (then an auth token is required)")
    p.add_argument("--token-file", default=None, help="file holding the auth token clients send as "
                   "'Authorization: Api-Key <token>' (openpi-client's api_key); default $VLA_SERVE_TOKEN")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="largest request accepted")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise drawn for requests that send none")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the simulated-robot demo, end to end")
    p.add_argument("--config", default=None,
                   help="default: config/sim_panda_reach.yaml (the trained reference policy)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds to run a config without task episodes (timing-only demo)")
    p.add_argument("--out", default="runs", help="run directory root")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON instead of a table")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
