"""The command line as a user meets it: exit codes and messages, no tracebacks for user errors."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def vla(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_check_accepts_the_sim_profile():
    r = vla("check", "config/sim_panda.yaml")
    assert r.returncode == 0, r.stderr
    assert "OK config/sim_panda.yaml" in r.stdout
    assert "graphs match model.yaml" in r.stdout


def test_check_names_negative_limit_and_misspelled_joint(tmp_path):
    data = yaml.safe_load((ROOT / "config/sim_panda.yaml").read_text())
    data["robot"]["joints"][3]["velocity"] = -2.175
    data["robot"]["groups"]["arm"]["joints"][1] = "panda_joint_2"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    r = vla("check", str(bad))
    assert r.returncode == 1
    assert "robot.joints.3.velocity = -2.175" in r.stderr
    assert "unknown joint 'panda_joint_2' (did you mean 'panda_joint2'?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_refuses_a_model_that_does_not_fit_the_robot(tmp_path):
    data = yaml.safe_load((ROOT / "config/sim_panda.yaml").read_text())
    data["model"]["package"] = str(ROOT / "models/timing_reference_ur5e")
    cfg = tmp_path / "mismatch.yaml"
    cfg.write_text(yaml.safe_dump(data))
    r = vla("check", "--json", str(cfg))
    assert r.returncode == 1
    assert "model action dim 'shoulder_pan_joint' is not a joint of robot 'panda'" in r.stdout


def test_check_refuses_a_model_package_disagreeing_with_its_graph(tmp_path):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "models/timing_reference", pkg)
    text = (pkg / "model.yaml").read_text().replace(
        "  - name: proprio\n    shape: [1, 8]\n    dtype: float32",
        "  - name: proprio\n    shape: [1, 8]\n    dtype: float64")
    assert text != (pkg / "model.yaml").read_text(), "fixture edit did not apply"
    (pkg / "model.yaml").write_text(text)
    data = yaml.safe_load((ROOT / "config/sim_panda.yaml").read_text())
    data["model"]["package"] = str(pkg)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    r = vla("check", str(cfg))
    assert r.returncode == 1
    assert "'proprio'" in r.stderr and "float64" in r.stderr and "Traceback" not in r.stderr


def test_version_comes_from_package_xml():
    import xml.etree.ElementTree as ET

    want = ET.parse(ROOT / "package.xml").getroot().findtext("version")
    r = vla("--version")
    assert r.stdout.strip() == f"vla_runtime {want}"
