"""Shared fixtures: a private ROS_DOMAIN_ID per test, node processes, and an in-test probe node."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()
_rng = random.Random(os.getpid() ^ int(time.time()))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01, what: str = "") -> bool:
    """Poll until predicate() is true; raise AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    if what:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return False


@pytest.fixture
def domain_id() -> int:
    """A ROS_DOMAIN_ID no other test (or parallel run) is likely to use: 1..100."""
    return 1 + (_rng.randrange(100) + next(_counter)) % 100


@pytest.fixture
def ros_env(domain_id, monkeypatch) -> dict[str, str]:
    """Environment for node processes on the private domain (also set for this test process)."""
    from vla_runtime.supervisor import ros_environment

    env = ros_environment(domain_id)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "MUJOCO_GL"):
        monkeypatch.setenv(k, env[k])
    return env


@pytest.fixture
def supervisor(ros_env, tmp_path) -> Iterator:
    """A Supervisor whose nodes are all stopped (SIGINT→SIGTERM→SIGKILL) after the test."""
    from vla_runtime.supervisor import Supervisor

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


class Probe:
    """An rclpy node inside the test process, spun by its own executor thread."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_probe_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                if self._stop.is_set():
                    return
                raise

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return the (live) list of (receive_time, msg)."""
        got: list = []
        self.node.create_subscription(msg_type, topic, lambda m: got.append((time.monotonic(), m)), qos)
        return got

    def call(self, srv_type, name: str, request, timeout: float = 5.0):
        """Call a service with a deadline; AssertionError on timeout."""
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {name} not available within {timeout}s")
        fut = client.call_async(request)
        wait_for(fut.done, timeout, what=f"response of {name}")
        return fut.result()

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def probe(ros_env, domain_id) -> Iterator[Probe]:
    p = Probe(domain_id)
    yield p
    p.close()
