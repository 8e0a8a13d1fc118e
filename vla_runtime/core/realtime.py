"""Real-time scheduling for a node process: SCHED_FIFO on every thread, a short GIL switch interval.

Why: on a shared machine a Linux ``SCHED_OTHER`` thread that wakes (a halt message arrived, the
loop's deadline came) waits behind whatever is running: the simulator's physics, a software
renderer, the slow model. On 2 cores that wait is milliseconds, and it is the tail of the halt
latency and of the fast loop's tick. A ``SCHED_FIFO`` thread preempts every ``SCHED_OTHER`` thread
at once when it wakes. This is what ros2_control's controller_manager does for its update thread
(``thread_priority``, default 50), and like it we ask, and say so when the OS refuses.

What :func:`make_process_realtime` does:

* every thread the process already has (rclpy's and the DDS middleware's receive/event threads
  included: a halt message is first handled by one of those) gets ``SCHED_FIFO`` at the given
  priority, read from ``/proc/self/task``; threads created afterwards inherit it from the thread
  that creates them;
* the interpreter's GIL switch interval drops from 5 ms to ``switch_interval_s``: a thread that
  wakes while another holds the GIL waits up to one interval for it, which would otherwise put a
  5 ms floor under the tail.

Only the processes that react (bridge, fast path, failure detector) should run at real-time
priority; they sleep between messages. The kernel's RT throttling (``sched_rt_runtime_us``, 95 %
by default) still leaves the rest of the machine a share if one of them ever spins.
``process.rt_priority`` in the config refuses an ONNX Runtime engine with worker threads in such a
process (they spin-wait between ops; at ``SCHED_FIFO`` they would take whole cores).

Permission: root, ``CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO`` (``ulimit -r``, set in
``/etc/security/limits.conf`` for the robot user) of at least the priority.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

__all__ = ["RealtimeResult", "make_process_realtime", "set_threads_fifo", "thread_ids", "thread_policy",
           "MIN_PRIORITY", "MAX_PRIORITY"]

#: SCHED_FIFO priorities a config may ask for. 99 is left to the kernel's own threads (watchdog,
#: migration), as the PREEMPT_RT guides advise.
MIN_PRIORITY = 1
MAX_PRIORITY = 98
#: GIL switch interval for a real-time process (CPython's default is 5 ms).
DEFAULT_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class RealtimeResult:
    """What :func:`make_process_realtime` achieved.

    Attributes:
        priority: The SCHED_FIFO priority asked for.
        threads: Threads switched to SCHED_FIFO.
        error: Why it was refused (None when every thread was switched); the process then runs at
            its normal priority, which is correct but slower to react.
    """

    priority: int
    threads: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def thread_ids() -> list[int]:
    """Kernel thread ids of this process (``/proc/self/task``; ``[0]``, the caller, without procfs)."""
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return [0]


def _refusal(priority: int) -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return (f"not permitted to set SCHED_FIFO priority {priority} (RLIMIT_RTPRIO is {limit}; needs root, "
            f"CAP_SYS_NICE or `ulimit -r {priority}`)")


def set_threads_fifo(tids: list[int], priority: int) -> str | None:
    """SCHED_FIFO at ``priority`` for the given threads of this process.

    Returns:
        None when done; otherwise why the OS refused (the threads keep their policy).

    Raises:
        ValueError: ``priority`` out of ``MIN_PRIORITY``..``MAX_PRIORITY``.
    """
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"SCHED_FIFO priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}")
    if not hasattr(os, "sched_setscheduler"):
        return f"SCHED_FIFO is not available on {sys.platform}"
    param = os.sched_param(priority)
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, param)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            return _refusal(priority)
    return None


def make_process_realtime(priority: int, switch_interval_s: float = DEFAULT_SWITCH_INTERVAL_S) -> RealtimeResult:
    """Put every thread of this process on SCHED_FIFO at ``priority``; shorten the GIL interval.

    Args:
        priority: SCHED_FIFO priority, ``MIN_PRIORITY``..``MAX_PRIORITY``.
        switch_interval_s: ``sys.setswitchinterval`` value, > 0. Applied even when the scheduler
            change is refused (it helps the process's own threads either way).

    Returns:
        A :class:`RealtimeResult`; ``error`` names what the OS refused and what would permit it.

    Raises:
        ValueError: ``priority`` or ``switch_interval_s`` out of range.
    """
    if not switch_interval_s > 0:
        raise ValueError(f"switch_interval_s must be > 0, got {switch_interval_s}")
    tids = thread_ids()
    err = set_threads_fifo(tids, priority)  # validates the priority
    sys.setswitchinterval(switch_interval_s)
    return RealtimeResult(priority, 0 if err else len(tids), err)


def thread_policy(tid: int = 0) -> tuple[str, int]:
    """(policy name, priority) of a thread of this process (0: the calling thread)."""
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    pol = os.sched_getscheduler(tid)
    return names.get(pol, str(pol)), os.sched_getparam(tid).sched_priority
