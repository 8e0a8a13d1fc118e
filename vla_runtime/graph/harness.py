"""Start a node graph on a private ROS domain from a tool or test process, and watch and poke it.

One harness for every tool that runs the graph and looks at it from outside (benchmarks, the
evaluation, the demo, rollout recording, the integration tests): a private ``ROS_DOMAIN_ID``, a
temporary copy of the config (a private latent-buffer name, an absolute model path, overrides),
the node processes under a :class:`~vla_runtime.graph.supervisor.Supervisor` with a log file per
node, and a :class:`~vla_runtime.graph.probe.Probe` node in this process. Waits fail with the
nodes' log tails, and at once (naming it) when a node has exited.

It is a library, not a framework: plain classes and functions with explicit arguments.
:class:`GraphHarness` is a context manager that always stops the processes (SIGINT → SIGTERM →
SIGKILL, as the Supervisor does) and closes the probe within its deadline. The observers
(:class:`SafetyWatch`, :class:`DiagnosticsWatch`, :class:`PoseWatch`, :class:`SimObjects`,
:class:`FeaturesWatch`) each take a probe and subscribe when built; build them before starting
the graph to see its first messages. Their callbacks run on the probe's executor thread and only
append to lists or replace whole objects, so readers in the calling thread need no lock.

The harness runs in tool and test processes, never inside a node.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import yaml

from vla_runtime.core.config import LatentConfig, RuntimeConfig, _merge, _read_yaml, load_config
from vla_runtime.core.contract import DIAG_FAST_PATH, FeatureLayout
from vla_runtime.graph.probe import Probe
from vla_runtime.graph.supervisor import NodeSpec, Supervisor, graph_for_config, ros_environment

#: Failure-detector parameters for graphs driven by the UNTRAINED timing policy
#: (``models/timing_reference``): the safety filter clips it ~70 times/s on sim_panda, so the
#: detector's intervention-rate monitor is set out of reach; every other monitor keeps its defaults.
TIMING_POLICY_DETECTOR_PARAMS: dict[str, float] = {"max_interventions_per_s": 1e6}


# ============================================================================ errors
class GraphError(RuntimeError):
    """The graph under a harness failed; the message carries the nodes' log tails."""


class GraphTimeout(GraphError, TimeoutError):
    """A wait or a service call on the graph ran past its deadline."""


class NodeExited(GraphError):
    """A node process of the graph exited while the harness waited on it.

    Attributes:
        dead: Node name → exit code of every node that has exited.
    """

    def __init__(self, message: str, dead: dict[str, int]) -> None:
        super().__init__(message)
        self.dead = dead


# ============================================================================ setup pieces
def private_domain_id(first: int = 101, last: int = 200) -> int:
    """A ``ROS_DOMAIN_ID`` in ``first..last`` that a parallel run is unlikely to use.

    Tools use 101..200, the integration tests 1..100, so a test run and a tool never meet.
    """
    return random.Random(os.getpid() ^ time.time_ns()).randint(first, last)


def write_config(base: str | os.PathLike, out: str | os.PathLike, overrides: Mapping | None = None,
                 latent_tag: str | None = None) -> Path:
    """Write ``base`` (its ``include:`` chain merged) with ``overrides`` merged over it to ``out``.

    A relative model package becomes absolute (resolved as ``base`` resolves it), so the written
    file works from any directory. With ``latent_tag``, ``_<latent_tag>`` is appended to the latent
    buffer's name unless ``overrides`` name it: graphs that run side by side never share a
    shared-memory segment.

    Args:
        base: A runtime config YAML.
        out: Where to write the result (its directory is created).
        overrides: Nested mapping merged over the config (mappings recursively, the rest replaced).
        latent_tag: Suffix that makes the latent buffer's name private.

    Returns:
        ``out`` as a Path.
    """
    base = Path(base)
    over = dict(overrides or {})
    data = _merge(_read_yaml(base), over)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("package"), str):
        model["package"] = str(load_config(base).resolve_path(model["package"]))
    if latent_tag is not None and "name" not in dict(over.get("latent") or {}):
        latent = dict(data.get("latent") or {})
        latent["name"] = f"{latent.get('name', LatentConfig.model_fields['name'].default)}_{latent_tag}"
        data["latent"] = latent
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def node_graph(cfg: RuntimeConfig, config_file: str | os.PathLike, nodes: Collection[str] | None = None,
               params: Mapping[str, Mapping[str, str | int | float | bool]] | None = None,
               require: Collection[str] = ()) -> list[NodeSpec]:
    """The config's node processes in start order (placement included), reading ``config_file``.

    Args:
        cfg: The config (its ``nodes`` and ``process`` sections).
        config_file: The file the nodes read (usually the one :func:`write_config` wrote).
        nodes: Keep only these nodes (None: all the config lists).
        params: Extra ``-p`` parameters per node name.
        require: Nodes that must be in the result.

    Raises:
        ValueError: a required node is not in the config's ``nodes`` (or was filtered out).
    """
    specs = [s for s in graph_for_config(cfg, str(config_file)) if nodes is None or s.name in nodes]
    missing = sorted(set(require) - {s.name for s in specs})
    if missing:
        raise ValueError(f"this graph needs node(s) {missing}, but the config's `nodes` lists {list(cfg.nodes)}")
    extra = params or {}
    return [replace(s, params={**s.params, **extra[s.name]}) if s.name in extra else s for s in specs]


def log_tails(log_dir: str | os.PathLike, tail: int = 2000) -> str:
    """The last ``tail`` characters of every node log in ``log_dir``, for error messages."""
    d = Path(log_dir)
    if not d.exists():
        return "<no logs>"
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(d.glob("*.log")))


def _trim(samples: list, keep: int | None) -> None:
    """Bound a sample list: past ``keep`` entries drop the older half (None: keep everything)."""
    if keep is not None and len(samples) > keep:
        del samples[: keep // 2]


# ============================================================================ observers
class SafetyWatch:
    """The bridge's ``/vla/safety_state`` and the latched ``/vla/halt``, each message with its
    receive time (``time.monotonic()``).

    Attributes:
        reports: ``(t, DiagnosticStatus)`` of every safety-state report.
        halts: ``(t, String)`` of every halt message ("" says the halting component cleared it).
    """

    def __init__(self, probe: Probe) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus
        from std_msgs.msg import String

        from vla_runtime.core.contract import TOPIC_HALT, TOPIC_SAFETY_STATE
        from vla_runtime.nodes.common import QOS_LATCHED

        self.reports: list = probe.collect(DiagnosticStatus, TOPIC_SAFETY_STATE, QOS_LATCHED)
        self.halts: list = probe.collect(String, TOPIC_HALT, QOS_LATCHED)

    def state(self) -> dict[str, str]:
        """The newest report's key/values ({} before the first)."""
        return {kv.key: kv.value for kv in self.reports[-1][1].values} if self.reports else {}

    def mode(self) -> str:
        """The bridge's newest mode (POLICY, TELEOP, HOLD, HALTED; "" before the first report)."""
        return self.reports[-1][1].message if self.reports else ""

    @staticmethod
    def value(msg, key: str) -> str:
        """The value of ``key`` in one report ("" when absent)."""
        return next((kv.value for kv in msg.values if kv.key == key), "")

    @classmethod
    def reason(cls, msg) -> str:
        """The ``reason`` of one report."""
        return cls.value(msg, "reason")

    def halt_signal(self) -> str | None:
        """The newest ``/vla/halt`` text (None before any)."""
        return self.halts[-1][1].data if self.halts else None

    def modes_since(self, t0: float) -> list[tuple[float, str, str]]:
        """``(seconds after t0, mode, reason)`` of every report received at or after ``t0`` (for
        failure messages: what the bridge went through)."""
        return [(round(t - t0, 3), msg.message, self.reason(msg)) for t, msg in list(self.reports) if t >= t0]

    def safe_transition_after(self, t0: float) -> float | None:
        """The bridge's own time (its clock: system time outside simulated time) of the transition
        reported by the first HOLD/HALTED report received after ``t0``; None before one."""
        for t, msg in list(self.reports):
            if t >= t0 and msg.message in ("HOLD", "HALTED"):
                since = self.value(msg, "mode_since_s")
                return float(since) if since else None
        return None

    def safe_after(self, t0: float) -> tuple[float | None, str]:
        """(receive time of the first HOLD/HALTED report after ``t0``, the worst mode seen after it)."""
        first, worst = None, ""
        for t, msg in list(self.reports):
            if t < t0 or msg.message not in ("HOLD", "HALTED"):
                continue
            if first is None:
                first = t
            if msg.message == "HALTED" or not worst:
                worst = msg.message
        return first, worst


class DiagnosticsWatch:
    """``/diagnostics`` by status name: the newest key/values of each, how many came, their history.

    Args:
        probe: The probe node.
        keep: Bound on the history (None: everything).
    """

    def __init__(self, probe: Probe, keep: int | None = 20000) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from vla_runtime.core.contract import TOPIC_DIAGNOSTICS

        self.history: list[tuple[float, str, dict[str, str]]] = []
        self._latest: dict[str, dict[str, str]] = {}
        self._count: dict[str, int] = {}
        self._keep = keep

        def on_diag(msg: DiagnosticArray) -> None:
            now = time.monotonic()
            for st in msg.status:
                kv = {v.key: v.value for v in st.values}
                self._latest[st.name] = kv
                self._count[st.name] = self._count.get(st.name, 0) + 1
                self.history.append((now, st.name, kv))
            _trim(self.history, self._keep)

        probe.node.create_subscription(DiagnosticArray, TOPIC_DIAGNOSTICS, on_diag, 50)

    def latest(self, name: str) -> dict[str, str]:
        """The newest key/values of status ``name`` ({} before the first, or after :meth:`forget`)."""
        return self._latest.get(name, {})

    def count(self, name: str) -> int:
        """How many statuses named ``name`` have come."""
        return self._count.get(name, 0)

    def since(self, name: str, t0: float) -> list[tuple[float, dict[str, str]]]:
        """``(receive time, key/values)`` of status ``name`` received at or after ``t0``."""
        return [(t, kv) for t, n, kv in list(self.history) if n == name and t >= t0]

    def forget(self, name: str) -> None:
        """Drop the newest values of ``name`` (e.g. before the node is restarted)."""
        self._latest.pop(name, None)

    def fast_path(self) -> dict[str, str]:
        """The fast path's newest key/values (``chunks``, ``hold_ticks``, ``provider``, ``timing_json`` …)."""
        return self.latest(DIAG_FAST_PATH)

    def fast_path_chunks(self) -> int:
        """How many chunks the fast path says it has produced."""
        return int(self.fast_path().get("chunks", "0") or 0)

    def fast_path_timing(self) -> dict:
        """The fast path's timing summary (achieved rate, jitter, misses, inference, overhead; {} before one)."""
        return timing_summary(self.fast_path())


def recorder_matched(probe: Probe, diags: DiagnosticsWatch, topics: Iterable[str]) -> bool:
    """Whether the recorder has matched every publisher this probe sees on ``topics`` (its
    diagnostics' ``publishers_matched``). On a loaded machine it can match a publisher seconds after
    the rest of the graph, and it records nothing from one it has not matched."""
    from vla_runtime.core.contract import DIAG_RECORDER

    on_graph = sum(probe.node.count_publishers(t) for t in topics)
    return int(diags.latest(DIAG_RECORDER).get("publishers_matched", -1)) >= on_graph


def timing_summary(kv: Mapping[str, str]) -> dict:
    """The timing summary in a fast-path diagnostics entry (``timing_json``); {} when absent or bad."""
    try:
        return json.loads(kv.get("timing_json", "{}") or "{}")
    except ValueError:
        return {}


class PoseWatch:
    """``/ee_pose`` as received: ``(t, position xyz, orientation (x, y, z, w))`` per message.

    Args:
        probe: The probe node.
        keep: Bound on the samples (None: everything).
    """

    def __init__(self, probe: Probe, keep: int | None = 20000) -> None:
        from geometry_msgs.msg import PoseStamped

        from vla_runtime.core.contract import TOPIC_EE_POSE
        from vla_runtime.nodes.common import QOS_SENSOR

        self.samples: list[tuple[float, np.ndarray, tuple[float, float, float, float]]] = []
        self._keep = keep

        def on_pose(msg: PoseStamped) -> None:
            p, o = msg.pose.position, msg.pose.orientation
            self.samples.append((time.monotonic(), np.array([p.x, p.y, p.z]), (o.x, o.y, o.z, o.w)))
            _trim(self.samples, self._keep)

        probe.node.create_subscription(PoseStamped, TOPIC_EE_POSE, on_pose, QOS_SENSOR)

    def latest(self) -> tuple[float, np.ndarray, tuple[float, float, float, float]] | None:
        """The newest sample (None before the first)."""
        return self.samples[-1] if self.samples else None

    def since(self, t0: float) -> list[tuple[float, np.ndarray, tuple[float, float, float, float]]]:
        """The samples received at or after ``t0``."""
        return [s for s in list(self.samples) if s[0] >= t0]

    def at(self, t: float) -> np.ndarray | None:
        """The last position received at or before ``t``."""
        return next((p for ts, p, _ in reversed(list(self.samples)) if ts <= t), None)

    def max_displacement_mm(self, t0: float, t1: float) -> float | None:
        """Largest distance of the positions in (t0, t1] from the one at ``t0``, in mm (None: no
        position at ``t0`` or none in the window)."""
        ref = self.at(t0)
        d = [np.linalg.norm(p - ref) for ts, p, _ in list(self.samples) if t0 < ts <= t1] if ref is not None else []
        return 1e3 * float(max(d)) if d else None


class SimObjects:
    """The simulated scene's objects: ``/sim/objects`` (newest positions) and ``/sim/move_object``."""

    def __init__(self, probe: Probe) -> None:
        from std_msgs.msg import String

        from vla_runtime.core.contract import TOPIC_SIM_MOVE_OBJECT, TOPIC_SIM_OBJECTS
        from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED

        #: Object name → position, from the newest well-formed ``/sim/objects`` message.
        self.positions: dict[str, np.ndarray] = {}
        #: Receive time (monotonic) of that message.
        self.stamp = 0.0
        self._String = String

        def on_objects(msg: String) -> None:
            try:
                parsed = {n: np.asarray(v["position"], float) for n, v in json.loads(msg.data)["objects"].items()}
            except (ValueError, KeyError, TypeError):
                return
            self.positions, self.stamp = parsed, time.monotonic()

        probe.node.create_subscription(String, TOPIC_SIM_OBJECTS, on_objects, QOS_LATCHED)
        self._move = probe.node.create_publisher(String, TOPIC_SIM_MOVE_OBJECT, QOS_COMMAND)

    def move(self, name: str, position: Iterable[float], orientation: Iterable[float] | None = None) -> None:
        """Ask the sim to put object ``name`` there, orientation (x, y, z, w) (the topic keeps only the
        newest request)."""
        req: dict = {"name": name, "position": [float(v) for v in position]}
        if orientation is not None:
            req["orientation"] = [float(v) for v in orientation]
        self._move.publish(self._String(data=json.dumps(req)))

    def shows(self, want: Mapping[str, Iterable[float]], tol_m: float = 0.01) -> bool:
        """Whether the newest ``/sim/objects`` has every object of ``want`` within ``tol_m`` of it in x and y."""
        objs = self.positions
        return all(n in objs and np.linalg.norm(objs[n][:2] - np.asarray(p, float)[:2]) < tol_m
                   for n, p in want.items())

    def place(self, poses: Mapping[str, tuple[Iterable[float], Iterable[float] | None]], timeout: float) -> None:
        """Move objects (name → (position, orientation or None)) and wait until ``/sim/objects`` shows them.

        The requests go again every 0.25 s until it does: the topic keeps only the newest request, and one
        sent before the sim matched this publisher is lost.

        Raises:
            TimeoutError: ``/sim/objects`` does not show them within ``timeout`` (both named).
        """
        want = {n: p for n, (p, _) in poses.items()}
        deadline = time.monotonic() + timeout
        while not self.shows(want):
            if time.monotonic() > deadline:
                raise TimeoutError(f"/sim/objects does not show {want}: {self.positions}")
            for name, (pos, quat) in poses.items():  # one at a time: the topic keeps only the newest request
                self.move(name, pos, quat)
                time.sleep(0.02)
            end = time.monotonic() + 0.25  # /sim/objects comes at 10 Hz
            while time.monotonic() < end and not self.shows(want):
                time.sleep(0.01)


class FeatureSample(NamedTuple):
    """The tail of one ``/vla/policy_features`` message, as received."""

    t: float                #: receive time, ``time.monotonic()``
    latent_obs_wall: float  #: wall time of the observation behind the latent (receive wall time − age)
    latent_age_s: float
    infer_ms: float
    hold: float


class FeaturesWatch:
    """The fast path's ``/vla/policy_features``: its layout, a count and each message's tail.

    Args:
        probe: The probe node.
        keep: Bound on the samples (None: everything).
    """

    def __init__(self, probe: Probe, keep: int | None = 20000) -> None:
        from std_msgs.msg import Float32MultiArray

        from vla_runtime.core.contract import TOPIC_POLICY_FEATURES
        from vla_runtime.nodes.common import QOS_SENSOR

        #: The layout label and vector size of the first message ("" / 0 before it).
        self.label = ""
        self.size = 0
        self.count = 0
        self.samples: list[FeatureSample] = []
        self._keep = keep

        def on_features(msg: Float32MultiArray) -> None:
            if not self.label and msg.layout.dim:
                self.label, self.size = msg.layout.dim[0].label, len(msg.data)
            if len(msg.data) < 3:
                return
            age, infer_ms, hold = FeatureLayout.tail(msg.data)
            self.samples.append(FeatureSample(time.monotonic(), time.time() - age, age, infer_ms, hold))
            self.count += 1
            _trim(self.samples, self._keep)

        probe.node.create_subscription(Float32MultiArray, TOPIC_POLICY_FEATURES, on_features, QOS_SENSOR)

    def latent_obs_wall(self) -> float:
        """Wall time of the observation behind the newest latent the fast path used (0.0 before any)."""
        return self.samples[-1].latent_obs_wall if self.samples else 0.0

    def since(self, t0: float) -> list[FeatureSample]:
        """The samples received at or after ``t0``."""
        return [s for s in list(self.samples) if s.t >= t0]

    def poisoned(self, index: int, value: float):
        """A features message with the fast path's own layout and ``value`` (e.g. NaN) at ``index``."""
        from array import array

        from std_msgs.msg import Float32MultiArray, MultiArrayDimension

        if not self.size:
            raise ValueError("no features message seen yet: the layout is unknown")
        msg = Float32MultiArray()
        msg.layout.dim = [MultiArrayDimension(label=self.label, size=self.size, stride=self.size)]
        bad = np.zeros(self.size, np.float32)
        bad[index] = value
        msg.data = array("f", bad.tobytes())
        return msg


# ============================================================================ the harness
class GraphHarness:
    """A private ROS domain, its node processes and a probe node in this process.

    Args:
        domain_id: ROS domain (None: :func:`private_domain_id`).
        work_dir: Where configs are written (None: a temporary directory, removed on close).
        log_dir: Per-node log files (None: ``work_dir/logs``).
        log: Also forward the nodes' output here, each line prefixed ``[node]`` (None: files only).
        name: The probe node's name (made unique with the pid) and the private latent tag's prefix.
        sigint_s: On close, how long each node gets after SIGINT before SIGTERM.
        sigterm_s: … and after SIGTERM before SIGKILL.

    Attributes:
        supervisor: The node processes.
        probe: The probe node (own context and executor thread) on ``domain_id``.
        safety: The bridge's safety state and the halt topic, watched from the start.
    """

    def __init__(self, *, domain_id: int | None = None, work_dir: str | os.PathLike | None = None,
                 log_dir: str | os.PathLike | None = None, log: IO[str] | None = None, name: str = "harness",
                 sigint_s: float = 5.0, sigterm_s: float = 2.0) -> None:
        self.name = name
        self._closed = False
        self.domain_id = private_domain_id() if domain_id is None else int(domain_id)
        self.sigint_s, self.sigterm_s = sigint_s, sigterm_s
        self._tmp = tempfile.TemporaryDirectory(prefix=f"vla_{name}_") if work_dir is None else None
        self.work_dir = Path(self._tmp.name if self._tmp is not None else work_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.work_dir / "logs"
        self.supervisor = Supervisor(env=ros_environment(self.domain_id), log=log, log_dir=self.log_dir)
        try:
            self.probe = Probe(self.domain_id, name)
        except BaseException:
            self._cleanup()
            raise
        try:
            self.safety = SafetyWatch(self.probe)
        except BaseException:
            self.probe.close()
            self._cleanup()
            raise

    # ------------------------------------------------------------------ config and processes
    def write_config(self, base: str | os.PathLike, overrides: Mapping | None = None,
                     name: str = "config.yaml") -> Path:
        """:func:`write_config` into the work directory, with a latent name private to this harness."""
        return write_config(base, self.work_dir / name, overrides,
                            latent_tag=f"{self.name}{os.getpid()}_{self.domain_id}")

    def start(self, specs: Iterable[NodeSpec]) -> None:
        """Start node processes, in the given order."""
        for spec in specs:
            self.supervisor.start(spec)

    def restart(self, name: str, sigint_s: float = 1.0, sigterm_s: float = 1.0) -> None:
        """Stop node ``name`` (escalating) and start it again from the spec it was started with."""
        spec = next((s for s in self.supervisor.specs if s.name == name), None)
        if spec is None:
            raise KeyError(f"no node named {name!r}")
        self.supervisor.stop_node(name, sigint_s=sigint_s, sigterm_s=sigterm_s)
        self.supervisor.start(spec)

    def dead(self) -> dict[str, int]:
        """Exit code of every node that has exited."""
        return {n: c for n, c in self.supervisor.poll().items() if c is not None}

    def logs(self, tail: int = 2000) -> str:
        """The nodes' log tails."""
        return log_tails(self.log_dir, tail)

    def check_alive(self, during: str = "") -> None:
        """Raise :class:`NodeExited` (naming the nodes and with their log tails) if a node has exited."""
        dead = self.dead()
        if dead:
            raise NodeExited(f"node(s) exited{' during ' + during if during else ''}: {dead}\n{self.logs()}", dead)

    # ------------------------------------------------------------------ waits
    def wait(self, predicate: Callable[[], bool], timeout: float, what: str | None = None, interval: float = 0.01,
             detail: Callable[[], str] | None = None) -> bool:
        """Poll until ``predicate()`` is true.

        Raises :class:`NodeExited` as soon as a node has exited. On timeout: :class:`GraphTimeout`
        naming ``what`` (plus ``detail()``, computed then) with the log tails, or False when
        ``what`` is None.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            self.check_alive(f"the wait for {what}" if what else "a wait")
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        if what is None:
            return False
        extra = f"; {detail()}" if detail is not None else ""
        raise GraphTimeout(f"timed out after {timeout:g} s waiting for {what}{extra}\n{self.logs()}")

    def run_for(self, seconds: float, interval: float = 0.05) -> None:
        """Let the graph run for ``seconds``; :class:`NodeExited` as soon as a node exits."""
        self.wait(lambda: False, seconds, None, interval)

    def wait_mode(self, mode: str, timeout: float) -> None:
        """Wait until the bridge reports ``mode``."""
        self.wait(lambda: self.safety.mode() == mode, timeout, f"the bridge in {mode}",
                  detail=lambda: f"last state {self.safety.state()}")

    # ------------------------------------------------------------------ services
    def call(self, srv_type, name: str, request, timeout: float = 5.0):
        """Call a service through its kept client; :class:`GraphTimeout` past ``timeout``."""
        try:
            return self.probe.call(srv_type, name, request, timeout)
        except AssertionError as e:
            raise GraphTimeout(f"{e}; exited nodes: {self.dead() or 'none'}") from None

    def trigger(self, name: str, timeout: float = 5.0) -> tuple[bool, str]:
        """Call a ``std_srvs/Trigger`` service; (success, message)."""
        from std_srvs.srv import Trigger

        resp = self.call(Trigger, name, Trigger.Request(), timeout)
        return bool(resp.success), str(resp.message)

    def wait_for_services(self, srv_type, names: Iterable[str], timeout: float) -> None:
        """Discover services up front (their clients are kept for :meth:`call`)."""
        for name in names:
            if not self.probe.client(srv_type, name).wait_for_service(timeout_sec=timeout):
                raise GraphTimeout(f"service {name} did not appear within {timeout:g} s\n{self.logs()}")

    # ------------------------------------------------------------------ the bridge's modes
    def reset_cleared_halt(self) -> None:
        """One step of an operator's recovery: HALTED with its cause cleared (``""`` on
        ``/vla/halt``) → call ``/vla/reset``; otherwise nothing."""
        from vla_runtime.core.contract import SERVICE_RESET

        if self.safety.mode() == "HALTED" and not (self.safety.halt_signal() or "").strip():
            self.trigger(SERVICE_RESET)

    def recover(self, timeout: float = 30.0) -> None:
        """Back to POLICY: wait for a halt's cause to clear, call ``/vla/reset``
        (:meth:`reset_cleared_halt`), wait for POLICY."""

        def in_policy_else_reset() -> bool:
            if self.safety.mode() == "POLICY":
                return True
            self.reset_cleared_halt()
            return False

        self.wait(in_policy_else_reset, timeout, "the graph back in POLICY", interval=0.05,
                  detail=lambda: f"state {self.safety.state()}")

    def steady_policy(self, settle_s: float = 0.5, timeout: float = 30.0) -> None:
        """Back to POLICY (:meth:`recover`), and POLICY without a break for ``settle_s``: what
        happens next starts from a running policy, not from the tail of the last recovery."""
        deadline = time.monotonic() + timeout
        while True:
            self.recover(max(1.0, deadline - time.monotonic()))
            n = len(self.safety.reports)
            if not self.wait(lambda n=n: any(m.message != "POLICY" for _, m in self.safety.reports[n:]), settle_s):
                return
            if time.monotonic() > deadline:
                raise GraphTimeout(f"no steady POLICY for {settle_s} s within {timeout} s; "
                                   f"state {self.safety.state()}\n{self.logs()}")

    def start_policy(self, specs: Iterable[NodeSpec], timeout: float = 120.0) -> list[str]:
        """Start the graph and bring it to POLICY.

        A halt raised while the graph comes up (a cold machine can stall a node past a detector
        timeout) is reset once its cause has cleared, as an operator would.

        Returns:
            The reasons of such start-up halts, sorted.
        """
        self.start(specs)
        self.recover(timeout)
        return sorted({self.safety.reason(m) for _, m in list(self.safety.reports) if m.message == "HALTED"})

    # ------------------------------------------------------------------ teardown
    def stop(self, sigint_s: float | None = None, sigterm_s: float | None = None) -> dict[str, str]:
        """Stop every node (SIGINT → SIGTERM → SIGKILL); how each one ended."""
        return self.supervisor.stop(sigint_s=self.sigint_s if sigint_s is None else sigint_s,
                                    sigterm_s=self.sigterm_s if sigterm_s is None else sigterm_s)

    def close(self) -> None:
        """Stop the nodes, close the probe within its deadline, remove the temporary work directory
        (once: a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            try:
                self.probe.close()
            finally:
                self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> GraphHarness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
