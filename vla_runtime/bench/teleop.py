"""Teleop takeover latency and handover smoothness on the simulated robot.

`bench_teleop` starts ``sim_robot``, ``controller_bridge`` and ``teleop`` as processes on a private
ROS domain (gamepad mapping: deadman button 4) and drives them from an independent probe node:

* a stand-in policy streams ``/vla/action_chunk`` at 30 Hz that holds the arm where it was when
  the policy (re)gained control — the ideal "first command starts from the current state"
  policy, so any end-effector motion at a switch is the switch's own transient;
* a stand-in operator publishes ``sensor_msgs/Joy`` at 50 Hz (as a joystick driver does).

Each trial: press the deadman (policy → teleop), push the stick for 0.4 s, centre it, release the
deadman (→ HOLD), the policy resumes (teleop → policy).

* ``takeover_latency_ms``: the Joy message that presses the deadman is published → the first
  teleop command (``header.frame_id == "teleop"``) arrives on ``/arm_controller/joint_trajectory``
  (probe → teleop node → bridge → controller topic; both times on this host's monotonic clock).
* ``handover_jump_mm``: the largest ``/ee_pose`` displacement within 0.4 s after a switch from the
  pose at the switch, with the incoming commander asking to stay put (policy → teleop: the stick
  centred; teleop → policy: from the release until 0.4 s after POLICY resumed).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["bench_teleop", "TeleopRig", "GAMEPAD_TELEOP"]

#: The teleop section the bench (and the integration tests) run with.
GAMEPAD_TELEOP = {"device": "gamepad", "deadman_button": 4, "group": "arm", "linear_axes": [0, 1, 2],
                  "angular_axes": [3, 4, 5], "max_linear_mps": 0.1, "max_angular_rps": 0.5,
                  "teleop_only_after_halt": True}
ARM = [f"panda_joint{i}" for i in range(1, 8)]
JT_TOPIC = "/arm_controller/joint_trajectory"
FAST_PERIOD_MS = 1000.0 / 30.0
WINDOW_S = 0.4


class TeleopRig:
    """Stand-in policy and operator on a probe node, plus what they observe.

    Args:
        probe: A :class:`vla_runtime.graph.probe.Probe` on the graph's domain.
        arm: The arm group's joints.
        chunk_hz: Policy chunk rate.
        joy_hz: Joy publish rate.
    """

    def __init__(self, probe, arm: list[str] = ARM, chunk_hz: float = 30.0, joy_hz: float = 50.0) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState, Joy
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from vla_runtime.core.contract import (
            TOPIC_ACTION_CHUNK,
            TOPIC_EE_POSE,
            TOPIC_HALT,
            TOPIC_INTERVENTION,
            TOPIC_JOINT_STATES,
            TOPIC_JOY,
            TOPIC_SAFETY_STATE,
        )
        from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED, QOS_SENSOR

        self._Joy, self._JT = Joy, JointTrajectory
        self.node = probe.node
        self.arm = list(arm)
        self.q: dict[str, float] = {}
        self.ee: list[tuple[float, np.ndarray]] = []
        self.jt: list[tuple[float, str]] = []  # (receive time, frame_id)
        self.modes: list[tuple[float, str]] = []
        self.interventions = probe.collect(String, TOPIC_INTERVENTION, 10)
        self.policy_enabled = True
        self.policy_target: np.ndarray | None = None
        self.joy_axes = [0.0] * 6
        self.joy_buttons = [0] * 8
        self.joy_enabled = True
        n = self.node
        n.create_subscription(JointState, TOPIC_JOINT_STATES, self._on_js, QOS_SENSOR)
        n.create_subscription(PoseStamped, TOPIC_EE_POSE, self._on_ee, QOS_SENSOR)
        n.create_subscription(JointTrajectory, JT_TOPIC, self._on_jt, QOS_COMMAND)
        n.create_subscription(DiagnosticStatus, TOPIC_SAFETY_STATE,
                              lambda m: self.modes.append((time.monotonic(), m.message)), QOS_LATCHED)
        self.chunk_pub = n.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        self.joy_pub = n.create_publisher(Joy, TOPIC_JOY, QOS_SENSOR)
        self.halt_pub = n.create_publisher(String, TOPIC_HALT, QOS_LATCHED)
        n.create_timer(1.0 / chunk_hz, self._stream_chunk)
        n.create_timer(1.0 / joy_hz, self._stream_joy)

    # ------------------------------------------------------------------ callbacks
    def _on_js(self, msg) -> None:
        for name, p in zip(msg.name, msg.position):
            self.q[name] = p

    def _on_ee(self, msg) -> None:
        p = msg.pose.position
        self.ee.append((time.monotonic(), np.array([p.x, p.y, p.z])))
        if len(self.ee) > 20000:
            del self.ee[:10000]

    def _on_jt(self, msg) -> None:
        self.jt.append((time.monotonic(), msg.header.frame_id))

    def teleop_ready(self) -> bool:
        """The teleop node is up: it subscribes to our Joy and publishes the engage topic."""
        from vla_runtime.core.contract import TOPIC_TELEOP_ENGAGE

        return self.joy_pub.get_subscription_count() >= 1 and self.node.count_publishers(TOPIC_TELEOP_ENGAGE) >= 1

    def mode(self) -> str | None:
        """The bridge's last reported mode."""
        return self.modes[-1][1] if self.modes else None

    def _stream_chunk(self) -> None:
        from vla_runtime.nodes.common import ns_to_stamp

        if not self.policy_enabled or not all(j in self.q for j in self.arm):
            return
        if self.mode() != "POLICY" or self.policy_target is None:
            self.policy_target = np.array([self.q[j] for j in self.arm])  # start from the current state
        msg = self._JT()
        now_ns = self.node.get_clock().now().nanoseconds
        msg.header.stamp = ns_to_stamp(now_ns)
        msg.joint_names = list(self.arm)
        from trajectory_msgs.msg import JointTrajectoryPoint

        for k in range(10):
            pt = JointTrajectoryPoint(positions=[float(x) for x in self.policy_target])
            pt.time_from_start.nanosec = k * 10_000_000
            msg.points.append(pt)
        self.chunk_pub.publish(msg)

    def _stream_joy(self) -> None:
        if self.joy_enabled:
            self.publish_joy()

    def publish_joy(self, axes: list[float] | None = None, buttons: list[int] | None = None) -> float:
        """Set (and publish now) the operator's stick state; returns the publish time (monotonic)."""
        if axes is not None:
            self.joy_axes = list(axes)
        if buttons is not None:
            self.joy_buttons = list(buttons)
        msg = self._Joy(axes=[float(a) for a in self.joy_axes], buttons=[int(b) for b in self.joy_buttons])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        t = time.monotonic()
        self.joy_pub.publish(msg)
        return t

    def deadman(self, pressed: bool, axes: list[float] | None = None) -> float:
        """Press/release the deadman (button 4)."""
        b = [0] * 8
        b[4] = int(pressed)
        return self.publish_joy(axes if axes is not None else [0.0] * 6, b)

    # ------------------------------------------------------------------ measurements
    def ee_at(self, t: float) -> np.ndarray | None:
        """The last /ee_pose position received at or before ``t``."""
        best = None
        for ts, p in reversed(self.ee):
            if ts <= t:
                best = p
                break
        return best

    def max_displacement_mm(self, t0: float, t1: float) -> float:
        """Largest distance of /ee_pose samples in (t0, t1] from the pose at t0 (mm)."""
        ref = self.ee_at(t0)
        if ref is None:
            return float("nan")
        d = [np.linalg.norm(p - ref) for ts, p in list(self.ee) if t0 < ts <= t1]
        return 1e3 * float(max(d)) if d else float("nan")

    def first_teleop_command_after(self, t: float) -> float | None:
        """Receive time of the first teleop trajectory after ``t``."""
        for ts, frame in list(self.jt):
            if ts >= t and frame == "teleop":
                return ts
        return None


def _wait(pred, timeout: float, what: str) -> None:
    from vla_runtime.graph.probe import wait_for

    wait_for(pred, timeout, what=what)


def run_trial(rig: TeleopRig, direction: float, move_s: float = 0.4) -> dict[str, float]:
    """One takeover → move → handback cycle; returns latency (ms) and both jumps (mm)."""
    _wait(lambda: rig.mode() == "POLICY", 5.0, "POLICY before the trial")
    time.sleep(0.3)  # steady under the policy
    t_take = rig.deadman(True)
    _wait(lambda: rig.first_teleop_command_after(t_take) is not None, 2.0, "first teleop command")
    latency_ms = 1e3 * (rig.first_teleop_command_after(t_take) - t_take)
    time.sleep(WINDOW_S)
    jump_take = rig.max_displacement_mm(t_take, t_take + WINDOW_S)
    t_move = rig.deadman(True, [direction, 0.0, 0.0, 0.0, 0.0, 0.0])
    time.sleep(move_s)
    rig.deadman(True)
    time.sleep(0.3)  # stick centred: the target stops
    t_release = rig.deadman(False)
    p0, p1 = rig.ee_at(t_move), rig.ee_at(t_release)
    moved = (p1 - p0) * 1e3 if p0 is not None and p1 is not None else np.full(3, np.nan)
    _wait(lambda: rig.mode() == "POLICY" and rig.modes[-1][0] > t_release, 3.0, "POLICY after release")
    t_policy = rig.modes[-1][0]
    time.sleep(WINDOW_S)
    jump_back = rig.max_displacement_mm(t_release, t_policy + WINDOW_S)
    return {"latency_ms": latency_ms, "jump_take_mm": jump_take, "jump_back_mm": jump_back,
            "moved_mm": [round(float(x), 2) for x in moved]}


def _pct(xs: list[float]) -> dict[str, float | int]:
    a = np.asarray([x for x in xs if np.isfinite(x)], dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def bench_teleop(trials: int = 50, config: str | None = None, domain_id: int | None = None) -> dict:
    """Run ``trials`` takeover/handback cycles on the simulated Panda; returns the measurements.

    Args:
        trials: Number of cycles.
        config: Base config (default ``config/sim_panda.yaml``); its teleop section is replaced by a
            gamepad mapping with deadman button 4.
        domain_id: ROS domain (default: a random private one in 150..229).

    Returns:
        ``takeover_latency_ms`` {p50, p99, max, n}, ``handover_jump_mm`` {max, policy_to_teleop,
        teleop_to_policy}, targets and ``passed``.
    """
    import yaml

    from vla_runtime.core.config import PROJECT_ROOT, _read_yaml
    from vla_runtime.graph.probe import Probe
    from vla_runtime.graph.supervisor import NodeSpec, Supervisor, ros_environment

    base = Path(config) if config else PROJECT_ROOT / "config" / "sim_panda.yaml"
    data = _read_yaml(base)
    data["teleop"] = dict(GAMEPAD_TELEOP)
    data["cameras"] = []  # no rendering: the 2 cores go to physics, bridge and teleop
    pkg = data.get("model", {}).get("package")
    if isinstance(pkg, str) and not os.path.isabs(pkg):
        data["model"]["package"] = str(PROJECT_ROOT / pkg)
    domain = domain_id if domain_id is not None else 150 + (os.getpid() % 80)
    with tempfile.TemporaryDirectory(prefix="bench_teleop_") as tmp:
        cfg_path = Path(tmp) / "teleop.yaml"
        cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
        env = ros_environment(domain)
        saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
        os.environ["ROS_DOMAIN_ID"] = str(domain)
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
        sup = Supervisor(env=env, log=None, log_dir=Path(tmp) / "logs")
        probe = None
        try:
            for name, module in (("sim_robot", "vla_runtime.nodes.sim_robot"),
                                 ("controller_bridge", "vla_runtime.nodes.controller_bridge"),
                                 ("teleop", "vla_runtime.nodes.teleop")):
                sup.start(NodeSpec(name, module, str(cfg_path)))
            probe = Probe(domain, name="bench_teleop")
            rig = TeleopRig(probe)
            _wait(lambda: rig.mode() == "POLICY", 30.0, "the bridge in POLICY")
            _wait(rig.teleop_ready, 30.0, "the teleop node on the graph")
            results = [run_trial(rig, 1.0 if k % 2 == 0 else -1.0) for k in range(trials)]
        finally:
            if probe is not None:
                probe.close()
            sup.stop(sigint_s=3.0, sigterm_s=1.0)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    lat = _pct([r["latency_ms"] for r in results])
    take = _pct([r["jump_take_mm"] for r in results])
    back = _pct([r["jump_back_mm"] for r in results])
    moved = [abs(r["moved_mm"][0]) for r in results]
    jump_max = max(take.get("max", float("nan")), back.get("max", float("nan")))
    passed = bool(lat.get("p99", 1e9) <= FAST_PERIOD_MS and jump_max <= 2.0)
    return {
        "trials": trials,
        "takeover_latency_ms": lat,
        "handover_jump_mm": {"max": round(jump_max, 3), "policy_to_teleop": take, "teleop_to_policy": back},
        "teleop_motion_x_mm": _pct(moved),
        "targets": {"takeover_latency_ms_p99": round(FAST_PERIOD_MS, 1), "handover_jump_mm_max": 2.0},
        "passed": passed,
    }
