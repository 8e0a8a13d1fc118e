"""``vla-runtime import lerobot``: the export runs in .venv-lerobot (never in the runtime's environment),
and the package it writes loads and runs here. Skipped where that environment was not built
(``make lerobot-env``); ``make test-import`` runs the whole import and parity of every type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_runtime.cli import main
from vla_runtime.commands import import_lerobot as imp
from vla_runtime.core.config import PROJECT_ROOT

CKPT = PROJECT_ROOT / "build" / "lerobot_import" / "checkpoints" / "act"
FIX = PROJECT_ROOT / "test" / "fixtures" / "lerobot" / "act"


def test_errors_say_what_to_do(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "ck").mkdir()
    assert main(["import", "lerobot", str(tmp_path / "ck"), "--out", str(tmp_path / "p")]) == 1
    assert "not a LeRobot save_pretrained folder (no config.json)" in capsys.readouterr().err
    (tmp_path / "ck" / "config.json").write_text("{}")
    assert main(["import", "lerobot", str(tmp_path / "ck"), "--out", str(tmp_path / "p"), "--lerobot-python",
                 str(tmp_path / "nope")]) == 1
    assert "not an executable file" in capsys.readouterr().err
    monkeypatch.setattr(imp, "LEROBOT_VENV", tmp_path / "no-venv")  # a checkout where it was never built
    assert main(["import", "lerobot", str(tmp_path / "ck"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "run `make lerobot-env`" in err and "Traceback" not in err


@pytest.mark.slow
def test_import_in_the_lerobot_environment_then_run_here(tmp_path: Path, capsys) -> None:
    if not (imp.LEROBOT_VENV / "bin" / "python").is_file():
        pytest.skip("no .venv-lerobot here (make lerobot-env builds it)")
    if not (CKPT / "config.json").is_file():
        pytest.skip(f"no tiny ACT checkpoint at {CKPT} (make test-import builds it)")
    out = tmp_path / "act"
    assert main(["import", "lerobot", str(CKPT), "--out", str(out), "--name", "tiny_act"]) == 0
    said = capsys.readouterr()
    assert "imported" in said.out and "parts ['fast']" in said.out, said
    # The same checkpoint exports to the same graph as the committed fixture, and runs to LeRobot's actions.
    assert (out / "policy.onnx").read_bytes() == (FIX / "policy.onnx").read_bytes()
    ref = np.load(FIX / "reference.npz")
    np.savez(tmp_path / "in.npz", scene=ref["in0_image_scene"], state=ref["in0_state"])
    assert main(["infer", str(out), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]) == 0
    assert np.max(np.abs(np.load(tmp_path / "o.npz")["actions"] - ref["out0_actions"])) <= 1e-4
