"""`vla-runtime demo` runs the whole simulated stack end to end and leaves a report a person can read."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vla_runtime.commands.report import REPORT_JSON, REPORT_PNG

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def readme_demo_files() -> set[str]:
    """The files the README's "What `make demo` does" section says the demo writes into its run directory."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## What `make demo` does", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `([\w.]+\.(?:png|json))`", section, flags=re.M))


def test_readme_names_the_files_the_demo_writes():
    assert readme_demo_files() == {REPORT_JSON, REPORT_PNG}


def test_demo_runs_the_graph_and_writes_a_report(ros_env, tmp_path):
    import cv2

    r = subprocess.run([sys.executable, "-m", "vla_runtime.cli", "demo", "--config", "config/sim_panda.yaml",
                        "--duration", "4", "--out", str(tmp_path)],
                       env=ros_env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dirs = list(tmp_path.glob("demo-*"))
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    # Every file the README names is there and is what its name says.
    for name in readme_demo_files():
        path = run_dir / name
        held = sorted(p.name for p in run_dir.iterdir())
        assert path.is_file(), f"the README says the demo writes {name}; {run_dir} holds {held}"
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            img = cv2.imread(str(path))
            assert img is not None, f"{name} does not decode as an image"
            assert img.shape[0] >= 600 and img.shape[1] >= 1000, (name, img.shape)
        else:
            json.loads(path.read_text())
    report = json.loads((run_dir / REPORT_JSON).read_text())
    assert report["fast_path"]["achieved_hz"] == pytest.approx(30.0, rel=0.05)
    assert report["fast_path"]["plans_received_hz"] > 20
    assert "POLICY" in report["safety_modes"], report["safety_modes"]
    assert all(how in ("SIGINT", "SIGTERM") for how in report["nodes_stopped"].values()), report["nodes_stopped"]
    # The terminal gets a short summary and the report's path, not a JSON dump.
    assert f"report: {run_dir / REPORT_PNG}" in r.stdout, r.stdout
    assert not any(line.startswith(("{", "[")) for line in r.stdout.splitlines()), r.stdout
    assert re.search(r"fast loop\s+\d+(\.\d+)? Hz", r.stdout), r.stdout
