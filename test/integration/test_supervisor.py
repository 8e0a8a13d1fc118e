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


def test_restart_policy_restarts_bounded_and_never_restarts_the_robot():
    from vla_runtime.graph.supervisor import RestartPolicy

    p = RestartPolicy(max_restarts=3, window_s=60.0, backoff_s=0.5)
    assert p.decide("sim_robot", 0.0) == ("stop", 0.0)
    assert p.decide("controller_bridge", 0.0) == ("restart_held", 0.5)
    assert [p.decide("action_chunk_node", t) for t in (0.0, 1.0, 2.0)] == [
        ("restart", 0.5), ("restart", 1.0), ("restart", 2.0)]
    assert p.decide("action_chunk_node", 3.0) == ("stop", 0.0)  # a fourth death within the window
    assert p.decide("slow_reasoner", 0.0)[0] == "restart" and p.decide("slow_reasoner", 100.0)[0] == "restart"
    assert p.decide("something_else", 0.0)[0] == "stop"


def test_a_node_that_segfaults_leaves_its_threads_tracebacks_in_its_log(ros_env, tmp_path):
    """A crash in native code (rcl, the middleware, a C extension) is not a Python exception: without
    the fault handler run_node turns on, the log ends mid-line and only the exit code says what
    happened (make test here has seen such crashes in librcl.so and Fast DDS, with no traceback)."""
    sup = Supervisor(env=ros_env, log=None, log_dir=tmp_path / "logs")
    sup.start(NodeSpec("crasher", "test.integration.fake_nodes.crasher", "none.yaml"))
    try:
        wait_for(lambda: sup.poll()["crasher"] is not None, 20, what="the crash")
    finally:
        sup.stop(sigint_s=0.5, sigterm_s=0.5)
    assert sup.poll()["crasher"] == -signal.SIGSEGV
    log = node_logs(tmp_path)
    assert "Fatal Python error: Segmentation fault" in log, log
    assert "in crash_here" in log and "crasher.py" in log, log  # the crashing thread's own frames


def test_a_killed_bridge_leaves_the_arm_held_and_comes_back_in_hold_until_resume(supervisor, probe, write_config,
                                                                                 tmp_path):
    """kill -9 of the bridge: no final hold can be sent, so the controllers' own command timeout
    holds the arm; the supervisor restarts the bridge held, and the policy drives again only after
    an operator's /vla/resume (it used to stop the whole graph, its last state still saying POLICY)."""
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticStatus
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    from vla_runtime.core.contract import SERVICE_RESUME, TOPIC_EE_POSE, TOPIC_JOINT_STATES, TOPIC_SAFETY_STATE
    from vla_runtime.graph.supervisor import RestartPolicy, supervise_deaths
    from vla_runtime.graph.teleop_rig import JT_TOPIC
    from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_SENSOR

    cfg_path = write_config("sim_panda.yaml")
    states = probe.collect(DiagnosticStatus, TOPIC_SAFETY_STATE, QOS_LATCHED)
    ee = probe.collect(PoseStamped, TOPIC_EE_POSE, QOS_SENSOR)
    sent = probe.collect(JointTrajectory, JT_TOPIC, QOS_COMMAND)  # what the bridge sent the arm's controller
    joints = probe.collect(JointState, TOPIC_JOINT_STATES, QOS_SENSOR)
    supervisor.start_graph(graph_for_config(load_config(cfg_path), str(cfg_path)))

    def mode() -> str:
        return states[-1][1].message if states else ""

    try:
        wait_for(lambda: mode() == "POLICY", 60, what="POLICY")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{node_logs(tmp_path)}") from None
    time.sleep(1.0)
    t_kill = time.monotonic()
    supervisor.kill("controller_bridge", signal.SIGKILL)
    policy = RestartPolicy(backoff_s=0.2)
    wait_for(lambda: supervise_deaths(supervisor, policy, time.monotonic(), log=None) is None
             and supervisor.poll().get("controller_bridge") is None
             and any(t > t_kill and "restarted after the bridge died" in {kv.key: kv.value for kv in s.values}["reason"]
                     for t, s in states if s.message == "HOLD"), 30,
             what="the bridge restarted in HOLD")
    time.sleep(2.0)  # chunks keep coming from the fast path: no POLICY without the operator
    after = [(t, s.message) for t, s in states if t > t_kill]
    assert all(m != "POLICY" for _, m in after), after
    # The controller finishes the last trajectory the bridge checked and sent (or stops on it at its
    # own cmd_timeout, 0.25 s), then holds: the hand comes to rest and stays there. Judged over the
    # last second before /vla/resume, ≥ 2 s after the restart: by the wall clock the last chunk can
    # end later than chunk + timeout when the simulator runs slower than real time (make test here:
    # 11.8 mm of motion 0.3 s after that).
    track = [(t, np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])) for t, m in ee if t > t_kill]
    still = np.array([p for t, p in track if t > track[-1][0] - 1.0])
    assert len(still) > 20, "no end-effector poses in the last second before /vla/resume"
    drift = float(np.linalg.norm(still - still[0], axis=1).max())
    assert drift < 0.002, f"the hand moved {drift * 1e3:.1f} mm in the last second, held by its controllers"
    # Nothing unplanned moved it: it came to rest on the path of the dead bridge's last policy
    # trajectory (the untrained policy's chunk can be long: 10 mm here, 68 mm once in CI; a bound on
    # the distance judged the policy, not the runtime). The restarted bridge holds where it is.
    finishing = np.array([p for _, p in track])
    travel = float(np.linalg.norm(finishing - finishing[0], axis=1).max())
    t_back = next(t for t, s in states if t > t_kill and s.message == "HOLD")  # the restarted bridge's first report
    policy_sent = [(t, m) for t, m in sent if len(m.points) > 1]  # its holds are one-point trajectories
    assert all(t < t_back for t, _ in policy_sent), "the restarted bridge sent a policy trajectory in HOLD"
    last = policy_sent[-1][1]
    path = np.array([pt.positions for pt in last.points])
    _, js = joints[-1]
    q = np.array([dict(zip(js.name, js.position))[j] for j in last.joint_names])
    off_path = min(_distance_to_segment(q, a, b) for a, b in zip(path[:-1], path[1:]))
    assert off_path < 0.02, (f"the arm came to rest {off_path:.3f} rad from the path of the last trajectory the "
                             f"bridge sent before it died (the hand moved {travel * 1e3:.1f} mm)")
    resp = probe.call(Trigger, SERVICE_RESUME, Trigger.Request(), timeout=10.0)
    assert resp.success, resp.message
    wait_for(lambda: mode() == "POLICY", 10, what="POLICY after /vla/resume")


def _distance_to_segment(q, a, b) -> float:
    """Largest joint deviation of ``q`` from the closest point of the joint-space segment a→b (rad)."""
    import numpy as np

    d = b - a
    u = float(np.clip(np.dot(q - a, d) / max(float(np.dot(d, d)), 1e-12), 0.0, 1.0))
    return float(np.abs(q - (a + u * d)).max())
