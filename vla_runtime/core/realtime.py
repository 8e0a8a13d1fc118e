"""Real-time scheduling for the one thread of a node that must react: SCHED_FIFO, a short GIL interval.

Why: on a shared machine a Linux ``SCHED_OTHER`` thread that wakes (a halt message arrived, the
loop's deadline came) waits behind whatever is running: the simulator's physics, a software
renderer, the slow model. On 2 cores that wait is milliseconds, and it is the tail of the halt
latency and of the fast loop's tick. A ``SCHED_FIFO`` thread preempts every ``SCHED_OTHER`` thread
at once when it wakes. This is what ros2_control's controller_manager does for its update thread
(``thread_priority``, default 50), and like it we ask, and say so when the OS refuses.

What :func:`make_thread_realtime` does, for the calling thread only:

* ``SCHED_FIFO`` at the given priority, with ``SCHED_RESET_ON_FORK``: threads it creates later run
  at normal priority;
* the interpreter's GIL switch interval drops from 5 ms to ``switch_interval_s``: a thread that
  wakes while another holds the GIL waits up to one interval for it, which would otherwise put a
  5 ms floor under the tail.

Of the middleware's threads, only the receive threads (:func:`receive_threads`) may join, for a
node whose reaction starts at a message arriving (bridge, detector): they block on their socket or
shared-memory port and hand the sample over. Never the others: the first version switched every
thread of the process, and Fast DDS's asynchronous writer thread then spun at SCHED_FIFO waiting
for a thread of equal priority on the same CPU (equal FIFO priorities never time-slice); the fast
path hung within seconds in 1 of 3 runs.

Permission: root, ``CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO`` (``ulimit -r``, set in
``/etc/security/limits.conf`` for the robot user) of at least the priority.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

__all__ = ["RealtimeResult", "make_thread_realtime", "receive_threads", "set_threads_fifo", "thread_ids",
           "thread_name", "thread_policy", "MIN_PRIORITY", "MAX_PRIORITY"]

#: SCHED_FIFO priorities a config may ask for. 99 is left to the kernel's own threads (watchdog,
#: migration), as the PREEMPT_RT guides advise.
MIN_PRIORITY = 1
MAX_PRIORITY = 98
#: GIL switch interval for a real-time process (CPython's default is 5 ms).
DEFAULT_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class RealtimeResult:
    """What :func:`make_thread_realtime` achieved.

    Attributes:
        priority: The SCHED_FIFO priority asked for.
        error: Why it was refused (None when granted); the thread then runs at its normal
            priority, which is correct but slower to react.
        receive_threads: Middleware receive threads switched with it.
    """

    priority: int
    error: str | None = None
    receive_threads: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        """One line for the node's log."""
        if self.ok:
            extra = f" and {self.receive_threads} DDS receive threads" if self.receive_threads else ""
            return f"SCHED_FIFO priority {self.priority} for this thread{extra}"
        return f"{self.error}; running at normal priority"


def thread_ids() -> list[int]:
    """Kernel thread ids of this process (``/proc/self/task``; ``[0]``, the caller, without procfs)."""
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return [0]


#: Name prefixes of DDS receive threads: Fast DDS (one per UDP / shared-memory port; ``dds.shm.wdog``
#: is its watchdog, not a receiver) and Cyclone DDS.
RECEIVE_THREAD_PREFIXES = ("dds.udp.", "dds.shm.", "recvUC", "recvMC", "recv")


def thread_name(tid: int) -> str:
    """The kernel's name (``comm``) of a thread of this process ("" if it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def receive_threads(tids: list[int] | None = None) -> list[int]:
    """The middleware's receive threads among ``tids`` (default: all of this process's threads)."""
    out = []
    for tid in thread_ids() if tids is None else tids:
        name = thread_name(tid)
        if name.startswith(RECEIVE_THREAD_PREFIXES) and name != "dds.shm.wdog":
            out.append(tid)
    return out


def _refusal(priority: int) -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return (f"not permitted to set SCHED_FIFO priority {priority} (RLIMIT_RTPRIO is {limit}; needs root, "
            f"CAP_SYS_NICE or `ulimit -r {priority}`)")


def _check_priority(priority: int) -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"SCHED_FIFO priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}")


def set_threads_fifo(tids: list[int], priority: int, reset_on_fork: bool = True) -> str | None:
    """SCHED_FIFO at ``priority`` for the given threads of this process (0: the calling thread).

    Args:
        tids: Kernel thread ids (see :func:`thread_ids`).
        priority: ``MIN_PRIORITY``..``MAX_PRIORITY``.
        reset_on_fork: Threads these threads create start at normal priority.

    Returns:
        None when done; otherwise why the OS refused (the threads keep their policy).

    Raises:
        ValueError: ``priority`` out of range.
    """
    _check_priority(priority)
    if not hasattr(os, "sched_setscheduler"):
        return f"SCHED_FIFO is not available on {sys.platform}"
    policy = os.SCHED_FIFO | (os.SCHED_RESET_ON_FORK if reset_on_fork else 0)
    param = os.sched_param(priority)
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, param)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            return _refusal(priority)
    return None


def make_thread_realtime(priority: int, switch_interval_s: float = DEFAULT_SWITCH_INTERVAL_S,
                         with_receive_threads: bool = False) -> RealtimeResult:
    """Put the calling thread on SCHED_FIFO at ``priority`` and shorten the GIL switch interval.

    Args:
        priority: SCHED_FIFO priority, ``MIN_PRIORITY``..``MAX_PRIORITY``.
        with_receive_threads: Also the middleware's receive threads (:func:`receive_threads`).
        switch_interval_s: ``sys.setswitchinterval`` value, > 0. Applied even when the scheduler
            change is refused (it helps the process's own threads either way).

    Returns:
        A :class:`RealtimeResult`; ``error`` names what the OS refused and what would permit it.

    Raises:
        ValueError: ``priority`` or ``switch_interval_s`` out of range.
    """
    _check_priority(priority)
    if not switch_interval_s > 0:
        raise ValueError(f"switch_interval_s must be > 0, got {switch_interval_s}")
    sys.setswitchinterval(switch_interval_s)
    extra = receive_threads() if with_receive_threads else []
    return RealtimeResult(priority, set_threads_fifo([0, *extra], priority), len(extra))


def thread_policy(tid: int = 0) -> tuple[str, int]:
    """(policy name, priority) of a thread of this process (0: the calling thread)."""
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    pol = os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK
    return names.get(pol, str(pol)), os.sched_getparam(tid).sched_priority
