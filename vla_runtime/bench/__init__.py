"""Benchmarks behind ``vla-runtime bench``: each returns a JSON-ready dict with its targets."""

from __future__ import annotations

import argparse


def run_benchmark(args: argparse.Namespace) -> dict:
    """Dispatch ``vla-runtime bench WHICH``."""
    which = args.which
    if which == "loop":
        from vla_runtime.bench.graph import bench_loop

        return bench_loop(args.config, rate=args.rate, duration=args.duration)
    if which == "max-rate":
        from vla_runtime.bench.graph import bench_max_rate

        return bench_max_rate(args.config)
    if which == "handoff":
        from vla_runtime.bench.handoff import bench_handoff

        r = bench_handoff()
        targets = {"shm_p99_le_50us": (r["shm"]["p99_us"] or float("inf")) <= 50.0}
        out = {"benchmark": "handoff", **r}
        mb = getattr(args, "latent_mb", None)
        if mb:  # a K/V-cache latent of several named tensors, MBs: reported beside the target (no target)
            from vla_runtime.bench.handoff import kv_cache_layout

            out["kv_cache"] = bench_handoff(n=200, interval_s=0.05, tensors=kv_cache_layout(mb))
        return {**out, "targets": targets, "passed": all(targets.values())}
    if which == "chunks":
        from vla_runtime.bench.chunks import bench_chunks

        r = bench_chunks()
        targets = {"scheduler_le_20pct_of_naive": r["ratio"] <= 0.2}
        return {"benchmark": "chunks", **r, "targets": targets, "passed": all(targets.values())}
    if which == "engine":
        from vla_runtime.bench.engine_bench import bench_engine
        from vla_runtime.core.config import PROJECT_ROOT

        return {"benchmark": "engine", **bench_engine(args.model or PROJECT_ROOT / "models" / "timing_reference")}
    if which == "teleop":
        from vla_runtime.bench.teleop import bench_teleop

        return {"benchmark": "teleop", **bench_teleop(trials=args.trials or 50, config=args.config)}
    if which == "halt":
        from vla_runtime.bench.halt import bench_halt

        return {"benchmark": "halt", **bench_halt(trials=args.trials or 200)}
    if which == "faults":
        from vla_runtime.bench.faults import bench_faults

        return {"benchmark": "faults", **bench_faults()}
    if which == "delay":
        from vla_runtime.bench.delay import DELAYS_MS, MODES, bench_delay

        delays = [float(x) for x in args.delays.split(",")] if getattr(args, "delays", None) else DELAYS_MS
        modes = [m.strip() for m in args.modes.split(",")] if getattr(args, "modes", None) else list(MODES)
        # The speed rows (stop-and-go vs RTC on touch at 300 ms) belong to the full sweep only.
        speed = not (getattr(args, "delays", None) or getattr(args, "modes", None))
        return bench_delay(episodes=args.trials or 20, delays_ms=delays, modes=modes, config=args.config,
                           seed=args.seed, log=None if args.json else print, speed=speed)
    if which == "fuzz":
        from vla_runtime.bench.fuzz import bench_fuzz

        return bench_fuzz(config_cases=args.cases or 120, seed=args.seed, cases_per_class=args.trials or 80)
    if which == "cache":
        from vla_runtime.bench.cache import bench_cache

        return bench_cache(args.config, duration=args.duration, episodes=args.trials or 20, seed=args.seed)
    if which == "tts":
        from vla_runtime.bench.tts import bench_tts

        return bench_tts(episodes=20 if args.trials is None else args.trials, config=args.config, seed=args.seed,
                         log=None if args.json else print)
    if which == "horizon":
        from vla_runtime.bench.horizon import bench_horizon

        delay = float(args.delays.split(",")[0]) if getattr(args, "delays", None) else 100.0
        return bench_horizon(episodes=args.trials or 20, delay_ms=delay, config=args.config, seed=args.seed,
                             log=None if args.json else print)
    if which == "interrupt":
        from vla_runtime.bench.interrupt import bench_interrupt

        return bench_interrupt(episodes=args.trials or 20, config=args.config, seed=args.seed,
                               log=None if args.json else print)
    raise ValueError(f"unknown benchmark {which!r}")
