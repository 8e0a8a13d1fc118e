"""Progress bars of long commands: a bar with ETA on a terminal, nothing in --json mode or off a terminal."""

from __future__ import annotations

import io
import json

import pytest

from vla_runtime.commands.detector_tools import calibrate_detector, save_rollouts, synthetic_rollouts
from vla_runtime.commands.progress import Progress, is_terminal


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _run(bar: Progress, lines: list[str | None]) -> None:
    with bar:
        for line in lines:
            bar(line)


def test_a_terminal_gets_a_bar_with_count_and_eta_and_the_lines_above_it():
    tty = FakeTTY()
    _run(Progress("eval", total=3, unit="episode", stream=tty), ["episode 1: success", None, "episode 3: FAIL"])
    out = tty.getvalue()
    assert "eval" in out and "3/3" in out, out
    assert "<" in out and "episode/s" in out, out  # tqdm's [elapsed<ETA, rate] block
    assert "episode 1: success" in out and "episode 3: FAIL" in out


def test_not_a_terminal_no_bar_only_the_plain_lines():
    pipe = io.StringIO()
    _run(Progress("eval", total=3, unit="episode", stream=pipe), ["episode 1: success", None, "episode 3: FAIL"])
    assert pipe.getvalue() == "episode 1: success\nepisode 3: FAIL\n"


def test_json_mode_is_silent_even_on_a_terminal():
    tty = FakeTTY()
    _run(Progress("eval", total=3, quiet=True, stream=tty), ["episode 1: success", None, None])
    assert tty.getvalue() == ""


def test_log_stream_none_drops_the_lines_off_a_terminal_and_forcing_draws_the_bar():
    pipe = io.StringIO()
    _run(Progress("calibrate", total=2, stream=pipe, log_stream=None), ["loaded", "trained"])
    assert pipe.getvalue() == ""
    forced = io.StringIO()
    _run(Progress("calibrate", total=2, unit="step", stream=forced, log_stream=None, force=True), ["a", "b"])
    assert "2/2" in forced.getvalue()


def test_default_stream_is_stdout_read_when_the_bar_is_made(capsys):
    _run(Progress("export", total=2, unit="bag"), ["bag a: 1 episode", "bag b: 2 episodes"])
    out = capsys.readouterr().out
    assert out == "bag a: 1 episode\nbag b: 2 episodes\n"  # pytest's capture is not a terminal


def test_is_terminal_survives_odd_streams():
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(None) and not is_terminal(closed) and not is_terminal(object())
    assert is_terminal(FakeTTY())


def test_bad_total_is_refused():
    with pytest.raises(ValueError, match="-1"):
        Progress("x", total=-1)


def test_calibrate_detector_counts_its_steps(tmp_path):
    save_rollouts(synthetic_rollouts(24, seed=1), tmp_path / "a")
    save_rollouts(synthetic_rollouts(24, seed=2), tmp_path / "b")
    tty = FakeTTY()
    with Progress("calibrate-detector", unit="step", stream=tty) as bar:
        calibrate_detector([tmp_path / "a", tmp_path / "b"], alpha=0.2, package=tmp_path / "pkg", epochs=20,
                           progress=bar)
        assert bar.done == 2 + 3 + 1  # two directories, train, calibrate, evaluate, save
    assert "6/6" in tty.getvalue()


def test_calibrate_detector_command_prints_only_json_into_a_pipe(tmp_path, capsys):
    from vla_runtime.cli import main

    save_rollouts(synthetic_rollouts(24, seed=1), tmp_path / "roll")
    assert main(["calibrate-detector", str(tmp_path / "roll"), "--alpha", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)  # no bar, no progress lines mixed into the JSON
    assert report["rollouts"] == 24


def _fake_importer(tmp_path, body: str):
    """An executable standing in for .venv-lerobot's python (the importer child), and a checkpoint folder."""
    py = tmp_path / "fake_python"
    py.write_text("#!/bin/sh\n" + body + "\n")
    py.chmod(0o755)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    return py, ckpt


def test_import_runs_the_importer_with_the_bar_ticking_and_reports_its_failure(tmp_path):
    from vla_runtime.commands.import_lerobot import LeRobotImportError, import_lerobot

    py, ckpt = _fake_importer(tmp_path, 'sleep 1.2; echo "loading policy"; echo "boom: no such layer" >&2; exit 3')
    tty = FakeTTY()
    with Progress("import", unit="step", stream=tty) as bar, pytest.raises(LeRobotImportError) as e:
        import_lerobot(ckpt, tmp_path / "pkg", python=str(py), progress=bar)
    assert "exit code 3" in str(e.value) and "boom: no such layer" in str(e.value) and "loading policy" in str(e.value)
    assert "0/2" in tty.getvalue()


def test_import_gives_up_on_an_importer_that_hangs(tmp_path):
    import time

    from vla_runtime.commands.import_lerobot import LeRobotImportError, import_lerobot

    py, ckpt = _fake_importer(tmp_path, "sleep 30")
    t0 = time.monotonic()
    with pytest.raises(LeRobotImportError, match="did not finish within 1 s"):
        import_lerobot(ckpt, tmp_path / "pkg", python=str(py), timeout_s=1.0)
    assert time.monotonic() - t0 < 5.0, "the hung child was killed at the deadline"
