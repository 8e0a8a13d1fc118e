"""``vla-runtime import lerobot <pretrained_dir> --out models/<name>``: a LeRobot checkpoint → a model package.

The export needs torch and lerobot, which the runtime never imports: it runs ``tools/lerobot`` in its
own Python ≥ 3.12 environment, ``.venv-lerobot`` (``make lerobot-env``; or the interpreter given with
``--lerobot-python``), as a child process. The package it writes is then checked here, in the
runtime's environment, against the runtime's own schema and graphs (:func:`validate_package`), so
what the command prints as done is what ``vla-runtime check``/``up`` will load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vla_runtime.commands.progress import Progress
from vla_runtime.core.config import PROJECT_ROOT

#: Where ``make lerobot-env`` puts the importer's environment.
LEROBOT_VENV = PROJECT_ROOT / ".venv-lerobot"

HOW_TO_GET_IT = (
    "the LeRobot importer runs in its own Python >= 3.12 environment, .venv-lerobot, which does not exist: "
    f"run `make lerobot-env` in {PROJECT_ROOT} (about 3 minutes, 5.5 GB; it finds a Python >= 3.12 or says what "
    "to install), or pass --lerobot-python /path/to/a/python/with/lerobot-0.6.1"
)


class LeRobotImportError(RuntimeError):
    """The import could not run or did not produce a valid package (the message says why)."""


def lerobot_python(explicit: str | None = None) -> Path:
    """The importer environment's interpreter.

    Raises:
        LeRobotImportError: None found (the message says how to make one).
    """
    if explicit:
        p = Path(explicit)
        if not p.is_file() or not os.access(p, os.X_OK):
            raise LeRobotImportError(f"--lerobot-python {explicit}: not an executable file")
        return p
    p = LEROBOT_VENV / "bin" / "python"
    if not p.is_file():
        raise LeRobotImportError(HOW_TO_GET_IT)
    return p


def import_lerobot(pretrained_dir: str | Path, out: str | Path, *, tokenizer: str | Path | None = None,
                   name: str | None = None, control_rate_hz: float = 30.0, verify: bool = False,
                   python: str | None = None, timeout_s: float = 3600.0, robot: str = "panda",
                   state_names: list[str] | None = None, action_names: list[str] | None = None,
                   progress: Progress | None = None) -> str:
    """Export a LeRobot ``save_pretrained`` folder into ``out`` and check the package in this environment.

    Args:
        pretrained_dir: The checkpoint folder (``config.json``, ``model.safetensors``, processor configs).
        out: Package folder to (re)create (e.g. ``models/<name>``).
        tokenizer: Folder with the prompt tokenizer's ``tokenizer.json`` (π0/π0.5 name a Hub tokenizer).
        name: Package name (default: the folder name).
        control_rate_hz: The rate the chunk's steps are executed at (the dataset's fps).
        verify: Also compare the package with LeRobot on two inputs (tol 1e-4).
        robot: The robot the action layout is for.
        state_names: Names of the state dims in the checkpoint's order: the robot's joints, ``<group>/gripper``
            (default: the Panda's 7 joints + ``gripper/gripper`` for an 8-D state, else ``state_<i>``).
        action_names: Names of the action dims (same default).
        python: The importer environment's interpreter (default: ``.venv-lerobot``).
        timeout_s: Give up after this long.
        progress: A bar that counts the steps (the export in the importer's environment, the check
            here); its elapsed time ticks while the importer runs.

    Returns:
        A one-line summary of the package.

    Raises:
        LeRobotImportError: No importer environment, the importer failed (its last output lines are in the
            message), or the package it wrote does not load here.
    """
    from vla_runtime.engines.model_package import ModelPackageError, validate_package

    src = Path(pretrained_dir).absolute()
    if not (src / "config.json").is_file():
        raise LeRobotImportError(f"{src}: not a LeRobot save_pretrained folder (no config.json)")
    py = lerobot_python(python)
    dst = Path(out).absolute()
    cmd = [str(py), "-m", "tools.lerobot", "import", str(src), "--out", str(dst),
           "--control-rate-hz", str(float(control_rate_hz))]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(Path(tokenizer).absolute())]
    if name is not None:
        cmd += ["--name", name]
    if verify:
        cmd.append("--verify")
    cmd += ["--robot", robot]
    for flag, names in (("--state-names", state_names), ("--action-names", action_names)):
        if names:
            bad = [n for n in names if not n or "," in n]
            if bad:
                raise LeRobotImportError(f"{flag}: empty or comma-containing names {bad}")
            cmd += [flag, ",".join(names)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if progress is not None:
        progress.set_total(2)
        progress.status(f"exporting{' and verifying' if verify else ''} in {py.parent.parent.name}")
    returncode, output = _run_importer(cmd, env, timeout_s, progress)
    out_lines = output.strip().splitlines()
    if returncode != 0:
        tail = "\n  ".join(line for line in out_lines[-15:])
        raise LeRobotImportError(f"the importer ({py}) failed with exit code {returncode}:\n  {tail}")
    report = [line for line in out_lines if line.startswith(("exported ", "verify "))]
    if progress is not None:
        progress("\n".join(report) or None)
        progress.status("checking the package in the runtime's environment")
    else:
        for line in report:
            print(line, file=sys.stderr)
    try:
        spec = validate_package(dst)
    except ModelPackageError as e:
        raise LeRobotImportError(f"the importer wrote {dst}, but the runtime refuses it: {e}") from e
    if progress is not None:
        progress(None)
    cams = ", ".join(f"{c.name} {c.height}x{c.width}" for c in spec.cameras)
    return (f"{dst}: {spec.name} ({spec.source.policy_type if spec.source else '?'}, {spec.fast.kind}, parts "
            f"{list(spec.parts)}), cameras {cams or 'none'}, chunk {spec.chunk_horizon}x{spec.action_dim}, state "
            f"{list(spec.proprio.names)}")


def _run_importer(cmd: list[str], env: dict[str, str], timeout_s: float, progress: Progress | None) -> tuple[int, str]:
    """Run the importer child to the end (its combined output); the bar's clock ticks meanwhile."""
    # Its own process group, so that at the deadline (or on Ctrl-C here, which no longer reaches it
    # from the terminal) the importer goes with anything it started, which would otherwise keep the
    # output pipe open and the wait going.
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                return proc.returncode, out or ""
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise LeRobotImportError(f"the importer did not finish within {timeout_s:.0f} s") from None
                if progress is not None:
                    progress.refresh()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
