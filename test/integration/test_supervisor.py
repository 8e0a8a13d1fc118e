"""The supervisor starts the graph a config describes and always stops it within bounded time."""

import signal
import subprocess
import sys
import time

import pytest

from test.conftest import ROOT, node_logs, wait_for
from vla_runtime.core.config import load_config
from vla_runtime.graph.supervisor import NodeSpec, Supervisor, graph_for_config

pytestmark = pytest.mark.integration


def test_graph_follows_config_in_start_order():
    cfg = load_config(ROOT / "config/sim_panda.yaml")
    names = [s.name for s in graph_for_config(cfg, "x.yaml")]
    assert names == ["sim_robot", "controller_bridge", "slow_reasoner", "action_chunk_node"]
    orin = load_config(ROOT / "config/jetson_orin.yaml")
    specs = {s.name: s for s in graph_for_config(orin, "x.yaml")}
    assert specs["action_chunk_node"].cpu_affinity == (4, 5)
    assert specs["action_chunk_node"].nice == -10


def test_escalates_sigint_sigterm_sigkill(ros_env, tmp_path):
    sup = Supervisor(env=ros_env, log=None, log_dir=tmp_path / "logs")
    sup.start(NodeSpec("ignores_int", "test.integration.fake_nodes.stubborn", "none.yaml"))
    sup.start(NodeSpec("ignores_both", "test.integration.fake_nodes.stubborn", "none.yaml",
                       params={"ignore_term": True}))
    wait_for(lambda: "stubborn node up" in node_logs(tmp_path).split("ignores_int")[-1]
             and node_logs(tmp_path).count("stubborn node up") == 2, 20, what="both fake nodes up")
    t0 = time.monotonic()
    how = sup.stop(sigint_s=0.5, sigterm_s=0.5)
    elapsed = time.monotonic() - t0
    assert how == {"ignores_both": "SIGKILL", "ignores_int": "SIGTERM"}
    assert elapsed < 3.0, f"stop took {elapsed:.2f}s"
    assert all(code is not None for code in sup.poll().values())


def test_up_refuses_invalid_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/sim_panda.yaml").read_text().replace("velocity: 2.1750", "velocity: -2.0", 1))
    r = subprocess.run([sys.executable, "-m", "vla_runtime.cli", "up", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "refusing to start" in r.stderr and "velocity = -2.0" in r.stderr
    assert "Traceback" not in r.stderr


def test_up_stops_graph_on_ctrl_c(ros_env, write_config, tmp_path):
    """`vla-runtime up` + Ctrl-C: every node process is gone within the escalation bound."""
    cfg = write_config("sim_panda.yaml", {"nodes": ["sim_robot"]})
    proc = subprocess.Popen([sys.executable, "-m", "vla_runtime.cli", "up", str(cfg)], env=ros_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("[sim_robot]"):
                break
        assert any(x.startswith("[sim_robot]") for x in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopped {'sim_robot':" in out
