"""Real-time scheduling of a node process (core/realtime.py), in child processes: the test process
itself must never run at SCHED_FIFO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from vla_runtime.core.realtime import make_process_realtime, set_threads_fifo

CHILD = r"""
import json, sys, threading, time
from vla_runtime.core.realtime import make_process_realtime, thread_ids, thread_policy
stop = threading.Event()
before = threading.Thread(target=stop.wait, daemon=True)   # exists before: must be switched
before.start()
res = make_process_realtime(int(sys.argv[1]))
seen = {}
def later():                                                # created after: must inherit
    seen["later"] = thread_policy(0)
t = threading.Thread(target=later)
t.start(); t.join()
print(json.dumps({"ok": res.ok, "error": res.error, "threads": res.threads,
                  "policies": sorted({thread_policy(tid) for tid in thread_ids()}),
                  "later": seen["later"], "switch": sys.getswitchinterval()}))
stop.set()
"""


def _run_child(priority: int, prefix: tuple[str, ...] = (), preexec=None) -> dict:  # noqa: ANN001
    out = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(priority)], capture_output=True, text=True,
                         timeout=30, preexec_fn=preexec, check=True)
    return json.loads(out.stdout)


def _fifo_permitted() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling API")
def test_every_thread_and_every_later_thread_runs_fifo() -> None:
    if not _fifo_permitted():
        pytest.skip("this machine does not permit SCHED_FIFO (no root, CAP_SYS_NICE or RLIMIT_RTPRIO)")
    got = _run_child(7)
    assert got["ok"] and got["error"] is None
    assert got["threads"] >= 2  # the main thread and the one started before
    assert got["policies"] == [["SCHED_FIFO", 7]]
    assert got["later"] == ["SCHED_FIFO", 7]
    assert got["switch"] == pytest.approx(0.0005)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root needs setpriv (util-linux) to drop CAP_SYS_NICE")
def test_refusal_is_reported_and_the_process_keeps_its_normal_priority() -> None:
    def no_rtprio() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

    # Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0, as on a robot PC nobody configured.
    drop = ("setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice") if os.geteuid() == 0 else ()
    got = _run_child(80, prefix=drop, preexec=no_rtprio)
    assert not got["ok"]
    assert "not permitted to set SCHED_FIFO priority 80" in got["error"] and "RLIMIT_RTPRIO is 0" in got["error"]
    assert got["policies"] == [["SCHED_OTHER", 0]] and got["later"] == ["SCHED_OTHER", 0]
    assert got["switch"] == pytest.approx(0.0005)  # the GIL interval is the process's own business


@pytest.mark.parametrize("prio", [0, 99, -3])
def test_priority_out_of_range_is_named(prio: int) -> None:
    with pytest.raises(ValueError, match=f"SCHED_FIFO priority must be in 1..98, got {prio}"):
        make_process_realtime(prio)
    with pytest.raises(ValueError, match=f"got {prio}"):
        set_threads_fifo([], prio)
