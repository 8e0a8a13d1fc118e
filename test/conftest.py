"""Shared fixtures: a private ROS_DOMAIN_ID per test, node processes, and an in-test probe node."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

# Headless rendering for every test, whether or not it was started through the Makefile.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from vla_runtime.graph.probe import Probe, wait_for  # noqa: F401 - re-exported for tests

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()
_rng = random.Random(os.getpid() ^ int(time.time()))


@pytest.fixture
def domain_id() -> int:
    """A ROS_DOMAIN_ID no other test (or parallel run) is likely to use: 1..100."""
    return 1 + (_rng.randrange(100) + next(_counter)) % 100


@pytest.fixture
def ros_env(domain_id, monkeypatch) -> dict[str, str]:
    """Environment for node processes on the private domain (also set for this test process)."""
    from vla_runtime.graph.supervisor import ros_environment

    env = ros_environment(domain_id)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "MUJOCO_GL"):
        monkeypatch.setenv(k, env[k])
    return env


@pytest.fixture
def supervisor(ros_env, tmp_path) -> Iterator:
    """A Supervisor whose nodes are all stopped (SIGINT→SIGTERM→SIGKILL) after the test."""
    from vla_runtime.graph.supervisor import Supervisor

    sup = Supervisor(env=ros_env, log=None, log_dir=tmp_path / "logs")
    yield sup
    sup.stop(sigint_s=3.0, sigterm_s=1.0)


def node_logs(tmp_path: Path) -> str:
    """All node logs of a test, for assertion messages."""
    d = tmp_path / "logs"
    if not d.exists():
        return "<no logs>"
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(d.glob("*.log")))


@pytest.fixture
def write_config(tmp_path) -> Callable[..., Path]:
    """Write a variant of a shipped config: ``write_config('sim_panda.yaml', {'rates': {...}})``."""
    from vla_runtime.core.config import _merge, _read_yaml

    def _write(base: str, overrides: dict | None = None, name: str = "config.yaml") -> Path:
        data = _read_yaml(ROOT / "config" / base)
        data = _merge(data, overrides or {})
        model = data.get("model", {})
        if isinstance(model.get("package"), str) and not os.path.isabs(model["package"]):
            model["package"] = str(ROOT / model["package"])
        out = tmp_path / name
        out.write_text(yaml.safe_dump(data, sort_keys=False))
        return out

    return _write


@pytest.fixture
def probe(ros_env, domain_id) -> Iterator[Probe]:
    p = Probe(domain_id)
    yield p
    p.close()
