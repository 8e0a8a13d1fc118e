"""Shared fixtures: a private ROS_DOMAIN_ID per test, node processes, and an in-test probe node.

They are the pieces of one :class:`vla_runtime.graph.harness.GraphHarness` per test (``harness``):
``supervisor`` and ``probe`` are its node processes and its probe node, ``write_config`` writes
into the test's ``tmp_path`` through it, and node logs go to ``tmp_path/logs``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Headless rendering for every test, whether or not it was started through the Makefile.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from vla_runtime.graph.harness import GraphHarness, log_tails, private_domain_id
from vla_runtime.graph.probe import Probe, wait_for  # noqa: F401 - wait_for re-exported for tests

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def domain_id() -> int:
    """A ROS_DOMAIN_ID no other test (or parallel run) is likely to use: 1..100 (tools use 101..200)."""
    return private_domain_id(1, 100)


@pytest.fixture
def ros_env(domain_id, monkeypatch) -> dict[str, str]:
    """Environment for node processes on the private domain (also set for this test process)."""
    from vla_runtime.graph.supervisor import ros_environment

    env = ros_environment(domain_id)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "MUJOCO_GL"):
        monkeypatch.setenv(k, env[k])
    return env


@pytest.fixture
def harness(ros_env, domain_id, tmp_path) -> Iterator[GraphHarness]:
    """The test's graph harness on the private domain; every node it started is stopped
    (SIGINT→SIGTERM→SIGKILL) and its probe closed after the test."""
    with GraphHarness(domain_id=domain_id, work_dir=tmp_path, name="probe", sigint_s=3.0, sigterm_s=1.0) as h:
        yield h


@pytest.fixture
def supervisor(harness):
    """The harness's Supervisor: node logs in ``tmp_path/logs``."""
    return harness.supervisor


@pytest.fixture
def probe(harness) -> Probe:
    """The harness's probe node."""
    return harness.probe


def node_logs(tmp_path: Path) -> str:
    """All node logs of a test, for assertion messages."""
    return log_tails(tmp_path / "logs", tail=3000)


@pytest.fixture
def write_config(harness) -> Callable[..., Path]:
    """Write a variant of a shipped config: ``write_config('sim_panda.yaml', {'rates': {...}})``
    (absolute model path, a latent name private to the test)."""

    def _write(base: str, overrides: dict | None = None, name: str = "config.yaml") -> Path:
        return harness.write_config(ROOT / "config" / base, overrides, name)

    return _write


class RefusingPublisher:
    """A real publisher that refuses its next ``n`` publishes the way rclpy reports Fast DDS's
    refusal (``RCLError: Failed to publish: cannot publish data``)."""

    def __init__(self, real, n: int):
        self.real, self.left = real, n

    def publish(self, msg) -> None:
        from rclpy._rclpy_pybind11 import RCLError

        if self.left > 0:
            self.left -= 1
            raise RCLError("Failed to publish: cannot publish data, at rmw_publish.cpp")
        self.real.publish(msg)

    def __getattr__(self, name):
        return getattr(self.real, name)


@contextmanager
def node_in_this_process(node_cls, config_file: Path, stop: Callable[[object], None]) -> Iterator[object]:
    """One of the runtime's nodes in the test's own process (to reach into it: swap a publisher for a
    :class:`RefusingPublisher`, read its threads), on its own context, spun on a daemon thread.

    On exit: ``stop(node)`` (what ends its own threads), the executor, the node, the context.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-p", f"config_file:={config_file}"])
    node = node_cls(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node
    finally:
        try:
            stop(node)
        finally:
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)
