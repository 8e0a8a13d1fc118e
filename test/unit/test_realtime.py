"""Real-time scheduling of a node's reacting thread (core/realtime.py), in child processes: the test
process itself must never run at SCHED_FIFO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from vla_runtime.core.realtime import make_thread_realtime, set_threads_fifo

CHILD = r"""
import json, sys, threading
from vla_runtime.core.realtime import make_thread_realtime, thread_policy
seen = {}
stop = threading.Event()
def idle():
    seen["before_tid"] = threading.get_native_id()
    stop.wait()
before = threading.Thread(target=idle)             # exists before: must stay normal
before.start()
while "before_tid" not in seen:
    pass
res = make_thread_realtime(int(sys.argv[1]))
def later():                                       # created by the real-time thread: must be normal
    seen["later"] = thread_policy(0)
t = threading.Thread(target=later)
t.start(); t.join()
print(json.dumps({"ok": res.ok, "error": res.error, "line": res.describe(), "main": thread_policy(0),
                  "before": thread_policy(seen["before_tid"]), "later": seen["later"],
                  "switch": sys.getswitchinterval()}))
stop.set()
"""


def _run_child(priority: int, prefix: tuple[str, ...] = (), preexec=None) -> dict:
    out = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(priority)], capture_output=True, text=True,
                         timeout=30, preexec_fn=preexec)
    if out.returncode != 0 and prefix and out.stderr.startswith(f"{prefix[0]}:"):
        pytest.skip(f"cannot drop the capability here: {out.stderr.strip()[:200]}")  # e.g. no CAP_SETPCAP
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _fifo_permitted() -> bool:
    probe = subprocess.run([sys.executable, "-c",
                            "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling API")
def test_only_the_calling_thread_runs_fifo() -> None:
    if not _fifo_permitted():
        pytest.skip("this machine does not permit SCHED_FIFO (no root, CAP_SYS_NICE or RLIMIT_RTPRIO)")
    got = _run_child(7)
    assert got["ok"] and got["error"] is None and got["line"] == "SCHED_FIFO priority 7 for this thread"
    assert got["main"] == ["SCHED_FIFO", 7]
    # Neither a thread that already existed nor one the real-time thread starts later (the way the
    # middleware creates its threads) runs at real-time priority.
    assert got["before"] == ["SCHED_OTHER", 0]
    assert got["later"] == ["SCHED_OTHER", 0]
    assert got["switch"] == pytest.approx(0.0005)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root needs setpriv (util-linux) to drop CAP_SYS_NICE")
def test_refusal_is_reported_and_the_thread_keeps_its_normal_priority() -> None:
    def no_rtprio() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

    # Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0, as on a robot PC nobody configured.
    drop = ("setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice") if os.geteuid() == 0 else ()
    got = _run_child(80, prefix=drop, preexec=no_rtprio)
    assert not got["ok"]
    assert "not permitted to set SCHED_FIFO priority 80" in got["error"] and "RLIMIT_RTPRIO is 0" in got["error"]
    assert got["line"].endswith("; running at normal priority")
    assert got["main"] == ["SCHED_OTHER", 0]
    assert got["switch"] == pytest.approx(0.0005)  # the GIL interval is the process's own business


@pytest.mark.parametrize("prio", [0, 99, -3])
def test_priority_out_of_range_is_named(prio: int) -> None:
    with pytest.raises(ValueError, match=f"SCHED_FIFO priority must be in 1..98, got {prio}"):
        make_thread_realtime(prio)
    with pytest.raises(ValueError, match=f"got {prio}"):
        set_threads_fifo([], prio)


RCLPY_CHILD = r"""
import json, sys
import rclpy
from vla_runtime.core.realtime import make_thread_realtime, thread_ids, thread_name, thread_policy
ctx = rclpy.Context()
rclpy.init(context=ctx, domain_id=int(sys.argv[1]))
node = rclpy.create_node("rt_probe", context=ctx)
res = make_thread_realtime(5, with_receive_threads=True)
print(json.dumps({"ok": res.ok, "n": res.receive_threads,
                  "threads": [[thread_name(t), *thread_policy(t)] for t in thread_ids()]}))
node.destroy_node()
rclpy.try_shutdown(context=ctx)
"""


def test_with_receive_threads_switches_the_dds_receivers_and_nothing_else_of_the_middleware() -> None:
    pytest.importorskip("rclpy")
    if not _fifo_permitted():
        pytest.skip("this machine does not permit SCHED_FIFO")
    out = subprocess.run([sys.executable, "-c", RCLPY_CHILD, "231"], capture_output=True, text=True, timeout=60,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ok"] and got["n"] >= 1
    rest = got["threads"][1:]
    fifo = [name for name, pol, _ in rest if pol == "SCHED_FIFO"]
    assert got["threads"][0][1:] == ["SCHED_FIFO", 5]  # the calling (main) thread
    assert len(fifo) == got["n"] and all(n.startswith(("dds.udp.", "dds.shm.", "recv")) for n in fifo)
    # The middleware's event and asynchronous-writer threads can spin: they stay at normal priority.
    others = [(name, pol, prio) for name, pol, prio in rest if pol != "SCHED_FIFO"]
    assert others and all(pol == "SCHED_OTHER" and prio == 0 for _, pol, prio in others)
    assert "dds.shm.wdog" not in fifo
