"""`vla-runtime demo` runs the whole simulated stack end to end and leaves a report a person can read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_demo_runs_the_graph_and_writes_a_report(ros_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vla_runtime.cli", "demo", "--config", "config/sim_panda.yaml",
                        "--duration", "4", "--out", str(tmp_path)],
                       env=ros_env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dirs = list(tmp_path.glob("demo-*"))
    assert len(run_dirs) == 1
    report = json.loads((run_dirs[0] / "report.json").read_text())
    assert (run_dirs[0] / "report.png").stat().st_size > 10_000
    assert report["fast_path"]["achieved_hz"] == pytest.approx(30.0, rel=0.05)
    assert report["fast_path"]["plans_received_hz"] > 20
    assert "POLICY" in report["safety_modes"], report["safety_modes"]
    assert all(how in ("SIGINT", "SIGTERM") for how in report["nodes_stopped"].values()), report["nodes_stopped"]
