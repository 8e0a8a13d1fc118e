"""``vla-runtime bench import``: LeRobot's own inference in torch against the runtime's ONNX path, side by side.

For the tiny π0 and SmolVLA checkpoints (``make test-import`` builds them under
``build/lerobot_import/``; missing ones are built and imported here), one run measures, one after
the other on the same inputs and the same noise, with one thread each:

* ``lerobot_torch``: per-step latency of LeRobot's ``predict_action`` path with ``predict_action_chunk``
  (pre-processor, the policy in torch, post-processor), in the LeRobot environment (``.venv-lerobot``,
  where torch exists: :mod:`tools.lerobot.bench`);
* ``runtime_onnx``: per-step latency of the runtime's slow + fast path on the imported package
  (:class:`~vla_runtime.core.policy.PolicyRunner`: tokenizer, slow graph, the flow loop over the fast
  graph, de-normalisation), in this environment, with its slow and fast shares;

and the ratio (torch / runtime) of their medians, plus the largest difference between their actions
(the same computation, so ~1e-6); then ``runtime_graph``: the runtime's fast loop while the imported
package runs in the simulated Panda graph (:func:`graph_loop_timing`: achieved rate, period jitter
p99, deadline misses). Without the LeRobot environment it says why and measures nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_runtime.core.config import PROJECT_ROOT

WORK = PROJECT_ROOT / "build" / "lerobot_import"
TYPES = ("pi0", "smolvla")


def _pct(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def _run(cmd: list[str], timeout_s: float = 1800.0) -> str:
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def runtime_latency(package: Path, inputs: dict[str, np.ndarray], n: int, threads: int = 1) -> dict[str, Any]:
    """Per-step latency of :class:`PolicyRunner` on one observation (after 3 warm-up steps), and its actions."""
    from vla_runtime.core.policy import PolicyRunner
    from vla_runtime.engines.base import EngineConfig
    from vla_runtime.engines.model_package import load_model_package

    with load_model_package(package, EngineConfig(intra_op_threads=threads, inter_op_threads=1)) as pkg:
        runner = PolicyRunner(pkg)
        frames = {c: inputs[c] for c in runner.cameras}
        noise = inputs.get("noise")

        def step():
            return runner.infer(frames, str(inputs["prompt"]), inputs["state"], noise=noise)

        for _ in range(3):
            out = step()
        total, slow, fast = np.zeros(n), np.zeros(n), np.zeros(n)
        for i in range(n):
            t0 = time.perf_counter()
            o = step()
            total[i] = (time.perf_counter() - t0) * 1e3
            slow[i], fast[i] = o.slow_ms, o.fast_ms
    return {"n": n, "threads": threads, **_pct(total), "slow_p50_ms": round(float(np.median(slow)), 3),
            "fast_p50_ms": round(float(np.median(fast)), 3), "fast_calls": out.fast_calls,
            "actions": out.actions}


def graph_loop_timing(package: Path, seconds: float = 10.0) -> dict[str, Any]:
    """The fast loop's timing while ``package`` runs in the simulated Panda graph.

    sim_robot (joint states, the package's cameras at its sizes), slow_reasoner and action_chunk_node,
    placed as ``config/sim_panda.yaml`` places them; no bridge, so the arm stays where it is whatever a
    random-weight policy commands, and the fast loop streams its plans as it would on a robot. Timing is
    reset once the first chunks have come, then read after ``seconds``. The execution horizon is the
    package's ``n_action_steps`` (re-planning back to back on a 2-core machine starves the slow path).
    """
    from vla_runtime.core.config import load_config
    from vla_runtime.core.contract import DIAG_FAST_PATH
    from vla_runtime.core.model_spec import load_model_spec
    from vla_runtime.graph.harness import DiagnosticsWatch, GraphHarness, node_graph

    spec = load_model_spec(package)
    cams = [{"name": c.name, "topic": f"/camera/{c.name}/image_raw", "width": c.width, "height": c.height,
             "rate_hz": 2.5} for c in spec.cameras]
    with GraphHarness(name="bench_import") as h:
        cfg_file = h.write_config(PROJECT_ROOT / "config" / "sim_panda.yaml", {
            "model": {"package": str(package)}, "cameras": cams, "instruction": "pick up the red cube",
            "nodes": ["sim_robot", *(["slow_reasoner"] if spec.slow is not None else []), "action_chunk_node"],
            "latent": {"max_age_s": 3.0},
            "scheduler": {"execution_horizon_steps": max(1, min(spec.n_action_steps or 1, spec.chunk_horizon))},
        })
        diag = DiagnosticsWatch(h.probe)
        h.start(node_graph(load_config(cfg_file), cfg_file))
        h.wait(lambda: int(diag.fast_path().get("chunks", 0) or 0) >= 3, 120.0, "the fast path's first chunks")
        h.trigger("/action_chunk_node/reset_stats")
        time.sleep(seconds)
        seen = diag.count(DIAG_FAST_PATH)
        h.wait(lambda: diag.count(DIAG_FAST_PATH) > seen, 5.0, "fresh fast-path diagnostics")
        timing, fast = diag.fast_path_timing(), diag.fast_path()
    return {"seconds": seconds, "achieved_hz": timing.get("achieved_hz"),
            "jitter_p99_ms": (timing.get("period_jitter_ms") or {}).get("p99"),
            "deadline_miss_rate": timing.get("deadline_miss_rate"),
            "infer_ms_p50": (timing.get("infer_ms") or {}).get("p50"),
            "chunks": int(fast.get("chunks", 0) or 0), "hold_ticks": int(fast.get("hold_ticks", 0) or 0),
            "last_hold_reason": fast.get("last_hold_reason", "")}


def bench_import(n: int = 20, threads: int = 1, types: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """Both sides for each type; ``{"skipped": reason}`` without the LeRobot environment."""
    from vla_runtime.commands.import_lerobot import LeRobotImportError, import_lerobot, lerobot_python

    try:
        py = lerobot_python()
    except LeRobotImportError as e:
        return {"benchmark": "import", "skipped": str(e)}
    result: dict[str, Any] = {"benchmark": "import", "n": n, "threads": threads, "policies": {}}
    for t in types:
        ckpt, pkg = WORK / "checkpoints" / t, WORK / "packages" / t
        tok = ckpt / "paligemma_tokenizer"
        if not (ckpt / "config.json").is_file():
            _run([str(py), "-m", "tools.lerobot", "build-tiny", "--out", str(WORK / "checkpoints"), "--only", t])
        if not (pkg / "model.yaml").is_file():
            import_lerobot(ckpt, pkg, tokenizer=tok if tok.is_dir() else None, name=f"tiny_{t}", python=str(py))
        with tempfile.TemporaryDirectory() as tmp:
            inputs_path = Path(tmp) / "inputs.npz"
            cmd = [str(py), "-m", "tools.lerobot", "bench", str(ckpt), str(pkg), "--inputs-out", str(inputs_path),
                   "--n", str(n), "--threads", str(threads)] + (["--tokenizer", str(tok)] if tok.is_dir() else [])
            torch_side = json.loads(_run(cmd).strip().splitlines()[-1])
            with np.load(inputs_path, allow_pickle=False) as z:
                inputs = {k: z[k] for k in z.files}
        ours = runtime_latency(pkg, inputs, n, threads)
        diff = float(np.max(np.abs(ours.pop("actions") - inputs["lerobot_actions"])))
        result["policies"][t] = {
            "lerobot_torch": torch_side,
            "runtime_onnx": ours,
            "ratio_p50": round(torch_side["p50_ms"] / ours["p50_ms"], 2),
            "max_abs_action_diff": diff,
            "runtime_graph": graph_loop_timing(pkg),
        }
    return result
