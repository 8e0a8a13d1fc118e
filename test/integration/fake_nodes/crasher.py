"""A node run by the runtime's own ``run_node`` whose worker thread dies of SIGSEGV (a read of
address 0, as a bug in rcl, the middleware or a C extension would)."""

import ctypes
import threading
import time

from rclpy.node import Node

from vla_runtime.nodes.common import run_node


def crash_here() -> None:
    time.sleep(0.3)
    ctypes.string_at(0)


def make_node() -> Node:
    node = Node("crasher")
    threading.Thread(target=crash_here, name="worker", daemon=True).start()
    print("crasher up", flush=True)
    return node


run_node(make_node)
