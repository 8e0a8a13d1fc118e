"""Process supervisor: start the node graph a config describes, forward logs, stop with escalation.

``vla-runtime up CONFIG`` uses this where ``ros2 launch`` is not installed (tests, CI, the demo);
the launch files build the same graph from the same config through :func:`graph_for_config`.
Every node is a separate OS process on the current ``ROS_DOMAIN_ID``. Stopping sends SIGINT,
then SIGTERM, then SIGKILL, each after its own bounded wait, so a wedged node never outlives
the supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from vla_runtime.core.config import RuntimeConfig

#: Node name → module whose ``main()`` runs it.
NODE_MODULES: dict[str, str] = {
    "sim_robot": "vla_runtime.nodes.sim_robot",
    "slow_reasoner": "vla_runtime.nodes.slow_reasoner",
    "action_chunk_node": "vla_runtime.nodes.action_chunk_node",
    "controller_bridge": "vla_runtime.nodes.controller_bridge",
    "failure_detector": "vla_runtime.nodes.failure_detector",
    "teleop": "vla_runtime.nodes.teleop",
    "recorder": "vla_runtime.nodes.recorder",
}

#: What the supervisor does when a node dies (``vla-runtime up``; :class:`RestartPolicy`):
#: ``restart`` it; ``restart_held``: restart it with ``start_held:=true`` (the bridge comes back in
#: HOLD and the policy drives again only after an operator's ``/vla/resume``: a bridge is never
#: restarted into POLICY; meanwhile the controllers hold on their own command timeout); ``stop``
#: the graph (the simulated robot is the robot).
NODE_ON_DEATH: dict[str, str] = {
    "sim_robot": "stop",
    "controller_bridge": "restart_held",
    "slow_reasoner": "restart",
    "action_chunk_node": "restart",
    "failure_detector": "restart",
    "teleop": "restart",
    "recorder": "restart",
}

#: Start order: the robot first, the things that command it last.
START_ORDER = [
    "sim_robot", "recorder", "controller_bridge", "failure_detector", "slow_reasoner", "action_chunk_node", "teleop",
]


@dataclass(frozen=True)
class NodeSpec:
    """One node process.

    ``remaps`` are ROS remappings (``-r from:=to``), e.g. to put a relay between a node and a topic.
    """

    name: str
    module: str
    config_file: str
    params: dict[str, str | int | float | bool] = field(default_factory=dict)
    cpu_affinity: tuple[int, ...] = ()
    nice: int | None = None
    remaps: tuple[tuple[str, str], ...] = ()

    def argv(self) -> list[str]:
        """Command line that runs the node with this interpreter."""
        args = [sys.executable, "-u", "-m", self.module, "--ros-args", "-r", f"__node:={self.name}"]
        args += ["-p", f"config_file:={self.config_file}"]
        for k, v in self.params.items():
            val = str(v).lower() if isinstance(v, bool) else str(v)
            args += ["-p", f"{k}:={val}"]
        for a, b in self.remaps:
            args += ["-r", f"{a}:={b}"]
        return args


def graph_for_config(cfg: RuntimeConfig, config_file: str) -> list[NodeSpec]:
    """The node processes a config asks for, in start order."""
    names = sorted(cfg.nodes, key=START_ORDER.index)
    return [
        NodeSpec(
            n, NODE_MODULES[n], config_file,
            cpu_affinity=tuple(cfg.process.cpu_affinity.get(n, ())),
            nice=cfg.process.nice.get(n),
        )
        for n in names
    ]


def ros_environment(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for node processes: localhost-only discovery, unbuffered output, EGL rendering."""
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    # Mesa's software rasteriser would take every core for a 96x96 frame; one is plenty.
    env.setdefault("LP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Proc:
    def __init__(self, spec: NodeSpec, popen: subprocess.Popen, pump: threading.Thread | None):
        self.spec = spec
        self.popen = popen
        self.pump = pump


class Supervisor:
    """Starts node processes and stops them all, escalating signals within bounded time.

    Args:
        env: environment for the children (see :func:`ros_environment`).
        log: where to forward children's output, each line prefixed with ``[node]``; None keeps
            each child's output in ``log_dir/<node>.log`` only.
        log_dir: directory for per-node log files (always written when given).
    """

    def __init__(self, env: dict[str, str] | None = None, log: IO[str] | None = sys.stdout,
                 log_dir: str | os.PathLike | None = None):
        self.env = env if env is not None else ros_environment()
        self.log = log
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()

    @property
    def specs(self) -> list[NodeSpec]:
        return [p.spec for p in self._procs]

    def start(self, spec: NodeSpec) -> subprocess.Popen:
        """Start one node process; its output is pumped by a daemon thread."""
        logfile = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            logfile = open(self.log_dir / f"{spec.name}.log", "a", buffering=1)
        popen = subprocess.Popen(
            spec.argv(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True,
        )
        self._place(spec, popen.pid)
        pump = threading.Thread(target=self._pump, args=(spec.name, popen, logfile), daemon=True)
        pump.start()
        with self._lock:
            self._procs.append(_Proc(spec, popen, pump))
        return popen

    def _place(self, spec: NodeSpec, pid: int) -> None:
        """Apply CPU affinity and niceness; say so (never fail the start) where the OS refuses."""
        if spec.cpu_affinity:
            usable = sorted(set(spec.cpu_affinity) & os.sched_getaffinity(0))
            if usable:
                os.sched_setaffinity(pid, usable)
            dropped = sorted(set(spec.cpu_affinity) - set(usable))
            if dropped and self.log is not None:
                self.log.write(f"[supervisor] {spec.name}: CPUs {dropped} do not exist here, using {usable or 'all'}\n")
        if spec.nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, spec.nice)
            except PermissionError:
                if self.log is not None:
                    self.log.write(f"[supervisor] {spec.name}: not permitted to set nice {spec.nice}\n")

    def _pump(self, name: str, popen: subprocess.Popen, logfile: IO[str] | None) -> None:
        assert popen.stdout is not None
        try:
            for line in popen.stdout:
                if logfile is not None:
                    logfile.write(line)
                if self.log is not None:
                    try:
                        self.log.write(f"[{name}] {line}")
                        self.log.flush()
                    except ValueError:  # the log was closed under us
                        pass
        finally:
            if logfile is not None:
                logfile.close()

    def start_graph(self, specs: list[NodeSpec]) -> None:
        for s in specs:
            self.start(s)

    def poll(self) -> dict[str, int | None]:
        """Exit code of every node (None while running)."""
        return {p.spec.name: p.popen.poll() for p in self._procs}

    def process(self, name: str) -> subprocess.Popen:
        for p in self._procs:
            if p.spec.name == name:
                return p.popen
        raise KeyError(f"no node named {name!r}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one node (fault injection)."""
        self.process(name).send_signal(sig)

    def stop_node(self, name: str, sigint_s: float = 5.0, sigterm_s: float = 2.0) -> str:
        """Stop one node with the same escalation and forget it (so it can be started again)."""
        with self._lock:
            procs = [p for p in self._procs if p.spec.name == name]
            self._procs = [p for p in self._procs if p.spec.name != name]
        if not procs:
            raise KeyError(f"no node named {name!r}")
        return self._stop_procs(procs, sigint_s, sigterm_s)[name]

    def stop(self, sigint_s: float = 5.0, sigterm_s: float = 2.0) -> dict[str, str]:
        """Stop every node: SIGINT, then SIGTERM, then SIGKILL. Returns how each one ended."""
        with self._lock:
            procs = list(reversed(self._procs))
        return self._stop_procs(procs, sigint_s, sigterm_s)

    def _stop_procs(self, procs: list[_Proc], sigint_s: float, sigterm_s: float) -> dict[str, str]:
        how: dict[str, str] = {}
        for sig, wait_s, label in ((signal.SIGINT, sigint_s, "SIGINT"), (signal.SIGTERM, sigterm_s, "SIGTERM")):
            alive = [p for p in procs if p.popen.poll() is None]
            for p in alive:
                self._signal_group(p.popen, sig)
            deadline = time.monotonic() + wait_s
            for p in alive:
                try:
                    p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                    how.setdefault(p.spec.name, label)
                except subprocess.TimeoutExpired:
                    pass
        for p in procs:
            if p.popen.poll() is None:
                self._signal_group(p.popen, signal.SIGKILL)
                p.popen.wait(timeout=5)
                how[p.spec.name] = "SIGKILL"
            how.setdefault(p.spec.name, f"exited {p.popen.returncode}")
        for p in procs:
            if p.pump is not None:
                p.pump.join(timeout=1.0)
        return how

    @staticmethod
    def _signal_group(popen: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RestartPolicy:
    """Decides what happens when a node of the graph dies (:data:`NODE_ON_DEATH`), with a bound.

    A node that keeps dying is not restarted for ever: more than ``max_restarts`` deaths within
    ``window_s`` stop the graph. Restarts back off (``backoff_s``, doubling per recent death).

    Args:
        on_death: Node name → ``restart`` | ``restart_held`` | ``stop`` (unknown names stop).
        max_restarts, window_s, backoff_s: The bound and the backoff.
    """

    def __init__(self, on_death: dict[str, str] | None = None, max_restarts: int = 3, window_s: float = 60.0,
                 backoff_s: float = 0.5) -> None:
        self.on_death = dict(NODE_ON_DEATH if on_death is None else on_death)
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self._deaths: dict[str, list[float]] = {}

    def decide(self, name: str, now: float) -> tuple[str, float]:
        """(``restart`` | ``restart_held`` | ``stop``, seconds to wait before restarting)."""
        action = self.on_death.get(name, "stop")
        recent = [t for t in self._deaths.get(name, []) if now - t <= self.window_s] + [now]
        self._deaths[name] = recent
        if action == "stop" or len(recent) > self.max_restarts:
            return "stop", 0.0
        return action, self.backoff_s * 2 ** (len(recent) - 1)


def supervise_deaths(sup: Supervisor, policy: RestartPolicy, now: float,
                     log: IO[str] | None = sys.stderr) -> str | None:
    """Apply ``policy`` to the nodes that died since the last call: restart them (after their
    backoff) or say why the graph must stop.

    Returns:
        None while the graph may go on, else the reason to stop it.
    """
    for name, code in sup.poll().items():
        if code is None:
            continue
        action, wait_s = policy.decide(name, now)
        spec = next(s for s in sup.specs if s.name == name)
        if action == "stop":
            return f"node {name} exited ({code}); " + (
                "it is not restarted" if policy.on_death.get(name, "stop") == "stop"
                else f"it died more than {policy.max_restarts} times in {policy.window_s:g} s")
        sup.stop_node(name, sigint_s=0.5, sigterm_s=0.5)  # reap it (and its process group)
        if log is not None:
            log.write(f"[supervisor] {name} exited ({code}): {action} in {wait_s:.1f} s\n")
        time.sleep(wait_s)
        if action == "restart_held":
            spec = replace(spec, params={**spec.params, "start_held": True})
        sup.start(spec)
    return None


def run_up(cfg: RuntimeConfig, config_file: str, duration_s: float | None = None) -> int:
    """``vla-runtime up``: start the graph, forward logs, restart nodes that die as
    :data:`NODE_ON_DEATH` says, stop on Ctrl-C or when the policy says the graph must stop."""
    sup = Supervisor()
    policy = RestartPolicy()
    stop = threading.Event()

    def _on_signal(signum, _frame):
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    try:
        sup.start_graph(graph_for_config(cfg, config_file))
        end = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set():
            if end is not None and time.monotonic() >= end:
                break
            why = supervise_deaths(sup, policy, time.monotonic())
            if why is not None:
                print(f"vla-runtime up: {why}; stopping the graph", file=sys.stderr)
                rc = 1
                break
            stop.wait(0.2)
    finally:
        how = sup.stop()
        for s, h in old.items():
            signal.signal(s, h)
        print(f"vla-runtime up: stopped {how}", file=sys.stderr)
    return rc
