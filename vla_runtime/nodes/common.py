"""What every node shares: QoS profiles as named constants, config loading, spinning, polling.

The names of topics and services, the HOLD reasons and the feature layout are the rclpy-free
contract in :mod:`vla_runtime.core.contract`; the QoS profiles that go with them are rclpy objects
and live here.
"""

from __future__ import annotations

import contextlib
import faulthandler
import sys
import threading
import time
from collections.abc import Callable, Iterator

from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from vla_runtime.core.config import ConfigError, RuntimeConfig, load_config

#: Cameras, joint states, features: newest sample wins, a lost one is not resent.
QOS_SENSOR = qos_profile_sensor_data
#: Commands: reliable, only the newest matters.
QOS_COMMAND = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: Safety state, halt and instruction: a late joiner must still see the latest value.
QOS_LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
#: Joint states on the robot side: reliable so the controllers' consumers see every sample.
QOS_STATE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
QOS_DIAGNOSTICS = QoSProfile(depth=10)


class WorkerLifecycle:
    """The lifecycle transitions of a node that runs its own work thread (mixed in before
    ``LifecycleNode``): deactivating stops the work, cleaning up releases what the node holds
    (engines, latent buffers), shutting down and :meth:`close` do both. The node says how with
    ``_stop_work`` and ``_release``; activation, which differs, stays the node's own."""

    def _stop_work(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop the work and release what the node holds (outside a lifecycle transition)."""
        self._stop_work()
        self._release()


@contextlib.contextmanager
def ros_session(args: list[str] | None = None) -> Iterator[None]:
    """``rclpy.init`` … ``shutdown`` as a context manager on every distro (on Humble ``rclpy.init``
    returns None, so ``with rclpy.init():`` only works from Iron on)."""
    import rclpy

    rclpy.init(args=args)
    try:
        yield
    finally:
        if rclpy.ok():
            rclpy.try_shutdown()


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> None:
    """The body of every node's console script: init, spin, and stop cleanly on Ctrl-C.

    One ``SingleThreadedExecutor`` serves the node: its callbacks only copy or hand over data (the
    real work has its own thread), so arrival order is all they need — and rclpy's
    MultiThreadedExecutor busy-polls at ~100 % of a core under this graph's message rates. A
    lifecycle node whose ``autostart`` parameter is true is configured and activated first (exit
    code 1 when configuring fails); a node's ``close()``, if it has one, runs on the way out.

    Python's fault handler is on: a node that dies of SIGSEGV, SIGBUS, SIGFPE or SIGABRT (in rcl,
    the middleware, a C extension: not a Python exception) writes every thread's traceback to its
    stderr, which the supervisor and ``ros2 launch`` keep in its log.
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    try:
        with ros_session(ros_args_config(argv)):
            node = make_node()
            if getattr(node, "REALTIME_THREAD", "executor") == "executor":
                # This thread spins the executor: every message is handled here, after the receive threads.
                make_realtime_here(node, with_receive_threads=True)
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                if isinstance(node, LifecycleNode) and node.get_parameter("autostart").value:
                    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                        raise SystemExit(1)
                    node.trigger_activate()
                executor.spin()
            finally:
                close = getattr(node, "close", None)
                if callable(close):
                    close()
                executor.shutdown(timeout_sec=1.0)
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def realtime_priority(node: Node) -> int | None:
    """The SCHED_FIFO priority the node's config asks for (``process.rt_priority.<node name>``)."""
    cfg = getattr(node, "cfg", None)
    return cfg.process.rt_priority.get(node.get_name()) if isinstance(cfg, RuntimeConfig) else None


def make_realtime_here(node: Node, with_receive_threads: bool = False) -> None:
    """SCHED_FIFO for the calling thread when the node's config asks; the outcome goes to the log.

    Args:
        node: The node (its config and logger).
        with_receive_threads: Also the middleware's receive threads (a node that reacts to messages).

    A refusal by the OS is a warning, not a failure: the node runs correctly at normal priority,
    only reacts later. Called once per thread, never from a hot loop.
    """
    from vla_runtime.core.realtime import make_thread_realtime

    prio = realtime_priority(node)
    if prio is None:
        return
    res = make_thread_realtime(prio, with_receive_threads=with_receive_threads)
    text = f"real-time: {res.describe()} ({threading.current_thread().name})"
    if res.ok:
        node.get_logger().info(text)
    else:
        node.get_logger().warning(text)


#: A polled state topic keeps only the newest sample: the loop never reads an old one.
QOS_NEWEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


class PolledTopic:
    """A subscription drained by the thread that calls :meth:`take_newest` / :meth:`take_all`.

    No executor is involved: the messages wait in the middleware until taken, each with the time
    the middleware received it (``received_timestamp``, stamped by the DDS receive thread, not by a
    Python callback that may run milliseconds later).

    Args:
        node: A node that no executor spins (an executor would take the messages first).
        msg_type, topic: What to subscribe to.
        qos: Subscription QoS (default :data:`QOS_NEWEST`).
        raw: Take the serialized bytes instead of a message object (see ``nodes/cdr.py``).
    """

    def __init__(self, node: Node, msg_type, topic: str, qos: QoSProfile = QOS_NEWEST,
                 raw: bool = False) -> None:
        self.sub = node.create_subscription(msg_type, topic, lambda _msg: None, qos, raw=raw)
        # A reader that keeps one sample holds at most one: a single take is the newest.
        self._one = qos.history == HistoryPolicy.KEEP_LAST and qos.depth == 1

    def _take(self):
        sub = self.sub
        got = sub.handle.take_message(sub.msg_type, sub.raw)
        if got is None:
            return None
        msg, info = got
        recv = info.get("received_timestamp") if isinstance(info, dict) else None
        return msg, int(recv) if recv else time.time_ns()

    def take_newest(self):
        """The newest message not yet taken and its receive time (wall ns), or None."""
        with self.sub.handle:
            if self._one:
                return self._take()
            newest = None
            while (got := self._take()) is not None:
                newest = got
        return newest

    def take_all(self) -> list:
        """Every message not yet taken, oldest first, as (message, receive time in wall ns)."""
        out = []
        with self.sub.handle:
            while (got := self._take()) is not None:
                out.append(got)
        return out


def guarded(node: Node, callback: Callable[[object], None],
            on_error: Callable[[str], None] | None = None) -> Callable[[object], None]:
    """A subscription callback no message can make raise out of the executor (which would end the
    node): an exception is handed to ``on_error`` (what it means for this node: the bridge holds)
    and logged, throttled; the node goes on with the next message."""
    name = getattr(callback, "__name__", "callback")

    def run(msg: object) -> None:
        try:
            callback(msg)
        except Exception as e:  # noqa: BLE001 - counted and handled by on_error; the node must keep running
            if on_error is not None:
                on_error(f"{name}: {type(e).__name__}: {e}")
            node.get_logger().error(f"{name} failed on a message: {e!r}", throttle_duration_sec=1.0)

    return run


def load_node_config(node: Node) -> RuntimeConfig:
    """Read the node's ``config_file`` parameter and validate it; exit clearly when it is bad."""
    node.declare_parameter("config_file", "")
    path = node.get_parameter("config_file").get_parameter_value().string_value
    if not path:
        node.get_logger().fatal("parameter config_file is not set: pass -p config_file:=<yaml>")
        raise SystemExit(2)
    try:
        return load_config(path)
    except ConfigError as e:
        node.get_logger().fatal(str(e))
        raise SystemExit(2) from None


def ros_args_config(argv: list[str] | None = None) -> list[str]:
    """argv for rclpy.init: our console scripts accept ``--config X`` as a shortcut for the param."""
    argv = list(sys.argv if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a path")
        path = argv[i + 1]
        del argv[i : i + 2]
        argv += ["--ros-args", "-p", f"config_file:={path}"]
    return argv


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, msg_type=None):
    """Integer nanoseconds → builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    t = Time() if msg_type is None else msg_type()
    t.sec = int(ns // 1_000_000_000)
    t.nanosec = int(ns % 1_000_000_000)
    return t


def latent_buffer_config(cfg: RuntimeConfig, shape: tuple[int, int], dtype: str = "float32"):
    """The latent-buffer transport settings of a config, for a latent of ``shape``.

    Key paths in the config are base names (``keys/slow_path``): ``.key`` is the public half and
    ``.key_secret`` the secret half, as written by ``vla-runtime keys``.
    """
    from vla_runtime.core.latent_buffer import LatentBufferConfig

    lat = cfg.latent

    def key(base: str | None, suffix: str):
        return None if base is None else cfg.resolve_path(base + suffix)

    allowed: tuple = ()
    if lat.authorized_clients_dir is not None:
        allowed = (cfg.resolve_path(lat.authorized_clients_dir),)
    elif lat.client_key is not None:
        allowed = (key(lat.client_key, ".key"),)
    return LatentBufferConfig(
        transport=lat.transport,
        name=lat.name,
        shape=shape,
        dtype=dtype,
        endpoint=lat.endpoint,
        writer_binds=lat.bind == "writer",
        curve=lat.transport == "zmq",
        server_secret_key=key(lat.server_key, ".key_secret"),
        server_public_key=key(lat.server_key, ".key"),
        client_secret_key=key(lat.client_key, ".key_secret"),
        allowed_client_keys=allowed,
        max_message_bytes=max(lat.max_message_bytes, 64),
    )


def diagnostic_status(name: str, level: int, message: str, values: dict[str, object], hardware_id: str = ""):
    """A diagnostic_msgs/DiagnosticStatus from plain values."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    st = DiagnosticStatus()
    st.name = name
    st.level = bytes([level])
    st.message = message
    st.hardware_id = hardware_id
    st.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
    return st
