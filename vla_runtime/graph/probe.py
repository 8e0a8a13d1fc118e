"""An rclpy node that lives inside a tool or test process: observe and poke a running graph.

Benchmarks and integration tests use it to subscribe, publish and call services on the node
processes they started, without a global ``rclpy.init()``: it owns its own context, on the
domain it is given, spun by its own executor thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01, what: str = "") -> bool:
    """Poll until ``predicate()`` is true. On timeout: raise AssertionError naming ``what``, or return False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    if what:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return False


def run_with_deadline(fn: Callable[[], None], timeout: float, what: str) -> bool:
    """Run ``fn`` on a daemon thread and wait at most ``timeout`` for it (for rclpy teardowns, which
    have hung for good; see :meth:`Probe.close`). False, said on stderr, when it has not ended."""
    t = threading.Thread(target=fn, name="teardown", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        print(f"{what} did not finish within {timeout} s; leaving it", file=sys.stderr)
        return False
    return True


class Probe:
    """An rclpy node in this process with its own context and executor thread.

    Args:
        domain_id: ROS domain to join.
        name: Node name (made unique with the pid).
    """

    def __init__(self, domain_id: int, name: str = "probe"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{name}_spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if self._stop.is_set() or not self.context.ok():
                    return
                raise

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe; return the live list of (monotonic receive time, msg)."""
        got: list = []
        self.node.create_subscription(msg_type, topic, lambda m: got.append((time.monotonic(), m)), qos)
        return got

    def client(self, srv_type, name: str):
        """The client of service ``name``: created on first use and kept, so later calls skip discovery."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        return client

    def call(self, srv_type, name: str, request, timeout: float = 5.0):
        """Call a service with a deadline (through its kept client); AssertionError naming it on timeout."""
        client = self.client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {name} not available within {timeout}s")
        fut = client.call_async(request)
        wait_for(fut.done, timeout, interval=0.001, what=f"response of {name}")
        return fut.result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop spinning and tear the node and context down, waiting at most ``timeout`` for it.

        Tearing down has once hung for good inside rclpy (``Publisher.destroy`` waiting on a handle
        no thread used any more, after the graph's processes had ended), which left a finished
        benchmark without its output. The teardown runs on a daemon thread; if it has not ended in
        time this says so on stderr and returns, and the process can exit.
        """
        import rclpy

        self._stop.set()
        self._thread.join(timeout=2.0)

        def teardown() -> None:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
            if self.context.ok():
                rclpy.shutdown(context=self.context)

        run_with_deadline(teardown, timeout, "probe: rclpy teardown")

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
