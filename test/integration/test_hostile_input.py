"""Hostile and broken input against the running sim graph (issue #12's table, one test per row).

One graph (config/sim_panda.yaml: MuJoCo Panda, slow path, fast path with the null engine — its
plans hold one pose, so the hand stands still — and the bridge) serves the module; every test
starts from POLICY, attacks through a plain rclpy publisher as a careless or hostile user would,
and checks that the node refused and counted the input, that nothing crashed, and that the hand
moved no more than the policy alone moves it. Before the fixes
each of these moved the arm, crashed the bridge or went unnoticed.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from test.conftest import ROOT, wait_for
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import (
    DIAG_FAST_PATH,
    DIAG_SLOW_PATH,
    SERVICE_RESET,
    SERVICE_RESUME,
    TOPIC_ACTION_CHUNK,
    TOPIC_EE_POSE,
    TOPIC_JOINT_STATES,
    TOPIC_SAFETY_STATE,
    TOPIC_TELEOP_ENGAGE,
    TOPIC_TELEOP_JOINT_JOG,
    camera_topic,
)
from vla_runtime.graph.harness import DiagnosticsWatch
from vla_runtime.graph.probe import Probe
from vla_runtime.graph.supervisor import Supervisor, graph_for_config, ros_environment
from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_SENSOR, ns_to_stamp

pytestmark = pytest.mark.integration

ARM = [f"panda_joint{i}" for i in range(1, 8)]
#: What an attack may move the hand beyond the policy's own motion (the null engine: ~0).
EXTRA_MOTION_M = 0.005
HOUR_NS = 3600 * 1_000_000_000


class Graph:
    """The module's graph and what the tests watch of it."""

    def __init__(self, sup: Supervisor, probe: Probe, cfg_path, log_dir) -> None:
        self.sup, self.probe, self.log_dir = sup, probe, log_dir
        self.cfg = load_config(cfg_path)
        self.states = probe.collect(DiagnosticStatus, TOPIC_SAFETY_STATE, QOS_LATCHED)
        self.ee = probe.collect(PoseStamped, TOPIC_EE_POSE, QOS_SENSOR)
        self.diags = DiagnosticsWatch(probe)
        self.pub_js = probe.node.create_publisher(JointState, TOPIC_JOINT_STATES, QOS_SENSOR)
        self.pub_plan = probe.node.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)

    def mode(self) -> str:
        return self.states[-1][1].message if self.states else ""

    def bridge(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.states[-1][1].values} if self.states else {}

    def count(self, values: dict[str, str], key: str) -> int:
        return int(values.get(key, "0") or 0)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def alive(self) -> None:
        dead = {n: c for n, c in self.sup.poll().items() if c is not None}
        assert not dead, f"node(s) died: {dead}\n{self.logs()}"
        tracebacks = [p.name for p in self.log_dir.glob("*.log") if "Traceback" in p.read_text(errors="replace")]
        assert not tracebacks, f"tracebacks in {tracebacks}\n{self.logs()}"

    def trigger(self, service: str) -> Trigger.Response:
        return self.probe.call(Trigger, service, Trigger.Request(), timeout=10.0)

    def policy(self) -> None:
        """Back to POLICY (reset a halt, resume a hold) and steady for a moment."""
        if self.mode() == "HALTED":
            self.trigger(SERVICE_RESET)
        if self.mode() != "POLICY":
            self.trigger(SERVICE_RESUME)
        try:
            wait_for(lambda: self.mode() == "POLICY", 20, what="POLICY again")
        except AssertionError as e:
            b = self.bridge()
            fast = self.diags.latest(DIAG_FAST_PATH)
            raise AssertionError(f"{e}: {b.get('reason')!r}, refused: {b.get('policy_refused')!r}, controllers: "
                                 f"{b.get('controllers')!r}, fast path: {fast.get('last_hold_reason')!r} (latent "
                                 f"{fast.get('latent_version')}, age {fast.get('latent_age_s')}), slow path: "
                                 f"{self.diags.latest(DIAG_SLOW_PATH)}\n{self.logs()}") from None
        time.sleep(1.5)  # the policy has taken over from the hold: its motion is the baseline again

    def motion(self, t0: float, t1: float) -> float:
        """Largest distance (m) of the hand from where it was at ``t0``, over [t0, t1]."""
        pts = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z]
                        for t, m in self.ee if t0 <= t <= t1])
        return float(np.linalg.norm(pts - pts[0], axis=1).max()) if len(pts) else 0.0

    def attack(self, seconds: float, send, rate_hz: float = 100.0) -> tuple[float, float]:
        """Baseline motion (the largest of three windows of ``seconds`` without the attack), then the
        motion over ``seconds`` with it (``send()`` at ``rate_hz``)."""
        windows = []
        for _ in range(3):
            t0 = time.monotonic()
            time.sleep(seconds)
            windows.append((t0, time.monotonic()))
        t1 = time.monotonic()
        while time.monotonic() - t1 < seconds:
            send()
            time.sleep(1.0 / rate_hz)
        t2 = time.monotonic()
        time.sleep(0.3)  # what the attack set in motion has landed
        return max(self.motion(a, b) for a, b in windows), self.motion(t1, t2 + 0.3)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    import random

    tmp = tmp_path_factory.mktemp("hostile")
    domain = random.Random(time.time_ns()).randrange(1, 101)
    env = ros_environment(domain)
    cfg_path = tmp / "sim_panda.yaml"
    import yaml

    from vla_runtime.core.config import _read_yaml

    data = _read_yaml(ROOT / "config" / "sim_panda.yaml")
    data["model"]["package"] = str(ROOT / data["model"]["package"])
    data["latent"]["name"] = f"vla_latent_hostile_{domain}"
    cfg_path.write_text(yaml.safe_dump(data))
    with Supervisor(env=env, log=None, log_dir=tmp / "logs") as sup, Probe(domain, "hostile") as probe:
        g = Graph(sup, probe, cfg_path, tmp / "logs")
        # The fast path runs whole (state polling, validation, scheduler, plans) with the null engine:
        # its plans hold one pose, so the hand stands still and any motion is the attack's doing.
        sup.start_graph([replace(s, params={**s.params, "engine": "null"}) if s.name == "action_chunk_node" else s
                         for s in graph_for_config(g.cfg, str(cfg_path))])
        try:
            wait_for(lambda: g.mode() == "POLICY", 90, what="POLICY")
            wait_for(lambda: len(g.ee) > 50 and bool(g.diags.latest(DIAG_FAST_PATH)), 30, what="poses and diagnostics")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{g.logs()}") from None
        yield g


def _js(names, positions, stamp_ns: int | None = None) -> JointState:
    m = JointState()
    m.header.stamp = ns_to_stamp(time.time_ns() if stamp_ns is None else stamp_ns)
    m.name = list(names)
    m.position = [float(p) for p in positions]
    return m


HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785]


def test_nan_and_inf_joint_states_are_refused_and_the_bridge_stays_up(graph):
    """Row 1: the bridge published a NaN hold and then died in reset_reference."""
    graph.policy()
    bad = [_js(ARM, [np.nan] + HOME[1:]), _js(ARM, HOME[:6] + [np.inf])]
    k = iter(range(10**6))
    base, attacked = graph.attack(1.5, lambda: graph.pub_js.publish(bad[next(k) % 2]))
    graph.trigger("/vla/hold")  # a hold now takes its target from validated states only
    time.sleep(0.5)
    graph.alive()
    b = graph.bridge()
    assert graph.count(b, "joint_states_rejected.non_finite") > 50, b
    # The fast path takes only the newest joint state each tick (depth 1): it sees the ones that
    # were newest at a tick, and refuses them.
    wait_for(lambda: graph.count(graph.diags.latest(DIAG_FAST_PATH), "joint_states_rejected.non_finite") >= 1, 3,
             what="the fast path's refusals in its diagnostics")
    assert attacked <= base + EXTRA_MOTION_M, (base, attacked)


def test_spoofed_joint_states_never_become_state_or_hold_targets(graph):
    """Rows 2–3: a name/position length mismatch was silently truncated and became the hold target
    (the arm jumped 382 mm); 1e30 values or names twice were valid proprio (joint 1 moved 3 rad)."""
    graph.policy()
    spoofs = [
        _js(ARM, [1.5, 1.0, 1.0]),  # 7 names, 3 positions
        _js(ARM, [1e30] * 7),
        _js(["panda_joint1"] * 7, [2.0] * 7),
    ]
    k = iter(range(10**6))

    def send() -> None:
        graph.pub_js.publish(spoofs[next(k) % 3])

    base, attacked = graph.attack(1.5, send)
    t_hold = time.monotonic()
    graph.trigger("/vla/hold")
    for _ in range(30):  # go on spoofing while the hold target is captured
        send()
        time.sleep(0.01)
    time.sleep(0.5)
    graph.alive()
    b = graph.bridge()
    for reason in ("length_mismatch", "out_of_limits", "duplicate_name"):
        assert graph.count(b, f"joint_states_rejected.{reason}") > 10, (reason, b)
    wait_for(lambda: graph.count(graph.diags.latest(DIAG_FAST_PATH), "joint_states_rejected_total") >= 1, 3,
             what="the fast path's refusals in its diagnostics")
    assert attacked <= base + EXTRA_MOTION_M, (base, attacked)
    held = graph.motion(t_hold, time.monotonic())
    assert held <= EXTRA_MOTION_M, f"the hold moved the hand {held * 1e3:.1f} mm (a spoofed target jumped 382 mm)"


def test_joint_states_from_the_future_are_refused(graph):
    graph.policy()
    future = _js(ARM, HOME, time.time_ns() + HOUR_NS)
    base, attacked = graph.attack(1.0, lambda: graph.pub_js.publish(future))
    graph.alive()
    assert graph.count(graph.bridge(), "joint_states_rejected.future_stamp") > 20
    assert attacked <= base + EXTRA_MOTION_M


def _plan(values, stamp_ns: int) -> JointTrajectory:
    msg = JointTrajectory()
    msg.joint_names = [*ARM, "gripper/gripper"]
    msg.header.stamp = ns_to_stamp(stamp_ns)
    for k in range(5):
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in values]))
        msg.points[-1].time_from_start.nanosec = k * 10_000_000
    return msg


def test_plans_with_absurd_values_or_stamps_are_refused_not_executed(graph):
    """Rows 4–5: a plan of 1e9 with valid names was clipped and executed (21 mm); a plan stamped
    an hour ahead was forwarded (89 mm jerk). Now each is refused: the bridge holds, and stays held
    while refused plans keep coming between the fast path's valid ones (REJECT_HOLDOFF_S)."""
    graph.policy()
    arm_topic = graph.cfg.robot.groups["arm"].resolved_topic
    sent = graph.probe.collect(JointTrajectory, arm_topic, QOS_COMMAND)
    absurd = [*HOME, 0.04]
    absurd[3] = 1e9
    plans = [lambda: _plan(absurd, time.time_ns()), lambda: _plan([*HOME, 0.04], time.time_ns() + HOUR_NS)]
    k = iter(range(10**6))
    t1 = time.monotonic()
    graph.attack(1.5, lambda: graph.pub_plan.publish(plans[next(k) % 2]()), rate_hz=30)
    graph.alive()
    b = graph.bridge()
    assert graph.count(b, "plans_rejected.out_of_limits") > 5 and graph.count(b, "plans_rejected.future_stamp") > 5, b
    held_at = next(t for t, st in graph.states if t > t1 and st.message == "HOLD")
    t_end = held_at + 1.2
    moved = graph.motion(held_at + 0.3, t_end)
    assert moved <= EXTRA_MOTION_M, f"the hand moved {moved * 1e3:.1f} mm while held under the attack"
    limits = {j.name: j.position for j in graph.cfg.robot.joints}
    for _, msg in sent:
        now_s = time.time()
        assert msg.header.stamp.sec < now_s + 60, "a plan from the future reached the controller"
        for pt in msg.points:
            for name, q in zip(msg.joint_names, pt.positions):
                assert limits[name][0] - 1e-6 <= q <= limits[name][1] + 1e-6, (name, q)


def test_future_stamped_camera_frames_are_refused_and_a_frozen_slow_path_still_holds(graph):
    """Row 6: frames stamped an hour ahead made the latent's age negative, so with the slow path
    frozen the fast path stayed in POLICY (it held after 1.4 s with honest stamps)."""
    graph.policy()
    cam = graph.cfg.cameras[0]
    pub = graph.probe.node.create_publisher(Image, cam.topic or camera_topic(cam.name), QOS_SENSOR)
    img = Image(height=cam.height, width=cam.width, encoding="rgb8", step=cam.width * 3,
                data=bytes(cam.height * cam.width * 3))
    for _ in range(40):
        img.header.stamp = ns_to_stamp(time.time_ns() + HOUR_NS)
        pub.publish(img)
        time.sleep(0.025)
    wait_for(lambda: graph.count(graph.diags.latest(DIAG_SLOW_PATH), "images_rejected.future_stamp") >= 10, 5,
             what="future-stamped frames counted by the slow path")
    assert float(graph.diags.latest(DIAG_FAST_PATH).get("latent_age_s", "nan")) >= -0.5
    graph.sup.kill("slow_reasoner", signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        wait_for(lambda: graph.mode() == "HOLD", graph.cfg.latent.max_age_s + 3.0, what="HOLD on the stale latent")
        assert "stale latent" in graph.bridge().get("reason", "")
        assert time.monotonic() - t_stop <= graph.cfg.latent.max_age_s + 3.0
    finally:
        graph.sup.kill("slow_reasoner", signal.SIGCONT)
    graph.probe.node.destroy_publisher(pub)
    graph.alive()


def test_teleop_commands_far_over_the_limits_are_refused_and_a_timeout_does_not_reengage(graph):
    """Row 17: a joint jog of 1e9 rad/s moved the hand 502 mm in 1 s (5× the teleop limit), and
    after the teleop timeout the bridge re-engaged TELEOP by itself."""
    graph.policy()
    engage = graph.probe.node.create_publisher(Bool, TOPIC_TELEOP_ENGAGE, QOS_COMMAND)
    jog = graph.probe.node.create_publisher(JointState, TOPIC_TELEOP_JOINT_JOG, QOS_COMMAND)
    engage.publish(Bool(data=True))
    wait_for(lambda: graph.mode() == "TELEOP", 5, what="TELEOP")
    time.sleep(0.3)  # the takeover stops the arm where it is
    t0 = time.monotonic()
    for _ in range(100):
        jog.publish(JointState(name=["panda_joint1"], velocity=[1e9]))
        time.sleep(0.01)
    b = graph.bridge()
    assert graph.count(b, "teleop_rejected_by.over_limit") > 50, b
    assert graph.motion(t0, time.monotonic()) <= EXTRA_MOTION_M
    wait_for(lambda: graph.mode() != "TELEOP", 3, what="teleop to end at its timeout (no valid command)")
    time.sleep(1.5)  # the deadman is still "pressed": without a new press, no takeover
    assert graph.mode() != "TELEOP", graph.bridge()
    # Every joint at its velocity limit is within each joint's bound but not within the Cartesian one.
    engage.publish(Bool(data=False))
    time.sleep(0.1)
    engage.publish(Bool(data=True))
    wait_for(lambda: graph.mode() == "TELEOP", 5, what="TELEOP after a new press")
    limits = {j.name: j.velocity * graph.cfg.safety.velocity_scale for j in graph.cfg.robot.joints}
    t1 = time.monotonic()
    while time.monotonic() - t1 < 1.0:
        jog.publish(JointState(name=ARM, velocity=[limits[j] for j in ARM]))
        time.sleep(0.01)
    engage.publish(Bool(data=False))
    moved = graph.motion(t1, time.monotonic())
    assert moved <= 1.2 * graph.cfg.teleop.max_linear_mps * 1.0 + 0.01, f"hand moved {moved * 1e3:.0f} mm in 1 s"
    graph.probe.node.destroy_publisher(jog)
    graph.probe.node.destroy_publisher(engage)
    graph.alive()


def test_a_second_publisher_on_a_controller_topic_halts_and_is_named(graph):
    """Row 7: another publisher on /arm_controller/joint_trajectory moved the arm 107 mm in POLICY
    and 166 mm in HOLD, and nothing logged or counted it. (Last: it latches HALTED.)"""
    graph.policy()
    topic = graph.cfg.robot.groups["arm"].resolved_topic
    intruder = graph.probe.node.create_publisher(JointTrajectory, topic, QOS_COMMAND)
    t0 = time.monotonic()
    wait_for(lambda: graph.mode() == "HALTED", 5, what="HALTED on the intruder")
    assert time.monotonic() - t0 < 3.0
    reason = graph.bridge().get("reason", "")
    assert topic in reason and graph.probe.node.get_name() in reason, reason
    assert not graph.trigger(SERVICE_RESET).success  # refused while the intruder is there
    graph.probe.node.destroy_publisher(intruder)
    wait_for(lambda: graph.bridge().get("intruders") == "none", 10, what="the intruder gone from the graph")
    assert graph.trigger(SERVICE_RESET).success
    graph.policy()
    graph.alive()
