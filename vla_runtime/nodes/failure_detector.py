"""failure_detector: halts the robot when the policy is failing or the runtime is unhealthy.

Two kinds of judgement, both from :mod:`vla_runtime.core.failure_detection`:

* the **learned failure score** (SAFE-style MLP head on the fast path's own features, accumulated
  over the episode) against its conformal threshold δ(t), loaded from the model package's
  ``detector/`` directory (or the ``detector_dir`` parameter). Without one the node runs the hard
  monitors only and says so at start-up and in its diagnostics; a head that is there but does not
  load (or is not calibrated) stops the node at start-up, unless the config's ``detector.learned``
  is ``off``;
* **hard monitors**: stale ``/joint_states``, fast path silent, stale latent (age carried in the
  features), a streak of HOLD plans (deadline misses, non-finite output, stale latent; not
  joint-state holds: the stale ``/joint_states`` monitor escalates those at its own timeout),
  non-finite features, plans the bridge would refuse (non-finite or out-of-range values, a stamp outside the plan
  window: ``core/validation``), plans naming dims the robot does not have, the safety filter's intervention rate (from
  ``/vla/safety_state``), joint tracking error (commands on the joint-trajectory controllers'
  topics vs ``/joint_states``).

A halt is raised while an episode runs: from the bridge's first POLICY report until it reports
HALTED or TELEOP, HOLDs in between included (a HOLD inside an episode is the robot pausing on
the policy's behalf: a fault that starts or persists there must still latch, or the policy
resumes when it passes). Before that nothing is driven, and start-up hiccups (a joint-state gap
while the graph loads its models) must not latch HALTED. Causes are tracked all the time, so
entering POLICY with one standing halts at once.
A decision is published on ``/vla/halt`` from the very callback that made it (a subscription
callback for data-driven monitors, the check timer for timeouts), with the monotonic time of the
decision appended as ``[t=<CLOCK_MONOTONIC ns>]`` so the halt latency can be measured end to end
(:func:`decision_ns`). ``/vla/halt`` is latched on the bridge's side; this node publishes ``""``
once every cause it raised has cleared (hard monitors: the condition is gone; the learned score:
the bridge has latched HALTED, which ends the failed episode — the score restarts with the next
episode). It never clears a halt it did not raise.

Joint states are judged as the bridge and the fast path judge them (``core/validation``): a refused
one (NaN, out of limits, names and positions of different lengths, a future stamp) is counted in
the diagnostics and is no sign of life, so a sensor that only sends bad values escalates to HALTED
at the joint-state timeout.

Subscriptions: ``/vla/policy_features``, ``/vla/action_chunk``, ``/joint_states``,
``/vla/safety_state``, ``/vla/instruction`` (a new instruction starts a new episode) and the
command topic of every ``joint_trajectory`` group.
Publications: ``/vla/halt`` (QOS_LATCHED), ``/vla/detector_heartbeat`` (Header, ``heartbeat_hz``),
``/diagnostics`` (2 Hz: score, threshold, every monitor's state).

Parameters: ``config_file``; ``detector_dir`` ("" = the config's ``detector.dir``, else
``<model package>/detector``; ``detector.learned`` says whether the head must load); ``heartbeat_hz``
(20); ``check_hz`` (100: timeout monitors); ``joint_state_timeout_s`` (0 = 2 × the config's
``safety.joint_state_timeout_s``: the bridge already HOLDs at 1×, the detector escalates to HALTED);
``plan_timeout_periods`` (4: fast path silent for this many fast-loop periods); ``hold_streak`` (0
= ``safety.max_deadline_miss_streak``); ``max_interventions_per_s`` (0 = ``safety.max_interventions_per_s``,
20 by default); ``tracking_persist_s``
(0.3); ``episode_gap_s`` (1.0: features silent this long → the next ones start a new episode).
"""

from __future__ import annotations

import re
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.contract import (
    STREAK_EXEMPT_HOLDS,
    TOPIC_ACTION_CHUNK,
    TOPIC_DETECTOR_HEARTBEAT,
    TOPIC_DIAGNOSTICS,
    TOPIC_HALT,
    TOPIC_INSTRUCTION,
    TOPIC_JOINT_STATES,
    TOPIC_POLICY_FEATURES,
    TOPIC_SAFETY_STATE,
    FeatureLayout,
)
from vla_runtime.core.failure_detection import (
    FiniteMonitor,
    HoldStreakMonitor,
    InterventionRateMonitor,
    LatentAgeMonitor,
    LearnedDetector,
    MonitorResult,
    ScoreAccumulator,
    StalenessMonitor,
    TrackingErrorMonitor,
    load_for_config,
    step_features,
)
from vla_runtime.core.validation import (
    LENGTH_MISMATCH,
    MALFORMED,
    NON_FINITE,
    JointStateCheck,
    PlanCheck,
    Rejections,
)
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    diagnostic_status,
    guarded,
    load_node_config,
    run_node,
    stamp_to_ns,
)

_DECISION_RE = re.compile(r"\[t=(\d+)\]\s*$")
LEARNED = "learned"


def decision_ns(reason: str) -> int | None:
    """The detector's decision time (CLOCK_MONOTONIC ns, same host) carried by a halt reason."""
    m = _DECISION_RE.search(reason)
    return int(m.group(1)) if m else None


class FailureDetectorNode(Node):
    """Hard monitors + the learned failure score; halts through ``/vla/halt``."""

    def __init__(self, node_name: str = "failure_detector") -> None:
        super().__init__(node_name)
        self.cfg = load_node_config(self)
        safety = self.cfg.safety
        p = {
            "detector_dir": "", "heartbeat_hz": 20.0, "check_hz": 100.0, "joint_state_timeout_s": 0.0,
            "plan_timeout_periods": 4.0, "hold_streak": 0, "max_interventions_per_s": 0.0,
            "tracking_persist_s": 0.3, "episode_gap_s": 1.0,
        }
        for k, v in p.items():
            self.declare_parameter(k, v)

        def get(k: str):
            return self.get_parameter(k).value

        js_timeout = float(get("joint_state_timeout_s")) or 2.0 * safety.joint_state_timeout_s
        plan_timeout = float(get("plan_timeout_periods")) / self.cfg.rates.fast_hz
        self.monitors = {
            "joint_states": StalenessMonitor(TOPIC_JOINT_STATES, js_timeout),
            "fast_path": StalenessMonitor("fast path plans", plan_timeout),
            "latent": LatentAgeMonitor(self.cfg.latent.max_age_s),
            # Holds for missing/stale joint states are the joint_states monitor's to escalate, at
            # 2× the timeout at which the bridge and the fast path already HOLD: counted here too,
            # a 0.1 s sensor hiccup would latch HALTED after 3 ticks (it did, on a cold CI machine).
            "hold_streak": HoldStreakMonitor(int(get("hold_streak")) or safety.max_deadline_miss_streak,
                                             ignore=STREAK_EXEMPT_HOLDS),
            "features_finite": FiniteMonitor("policy features"),
            "plan_valid": FiniteMonitor("action plan"),
            "interventions": InterventionRateMonitor(
                float(get("max_interventions_per_s")) or safety.max_interventions_per_s),
            "tracking": TrackingErrorMonitor(safety.max_tracking_error_rad, float(get("tracking_persist_s"))),
        }
        # Plan dims the runtime can command: joints and "<group>/<dim>" names.
        self._known_joints = set(self.cfg.robot.joint_names)
        self._groups = set(self.cfg.robot.groups)
        # Inputs are judged as their consumers judge them (core/validation): a refused joint state is
        # no sign of life (the joint-state monitor escalates), a refused plan is a fault.
        self._js_check = JointStateCheck(self.cfg.robot, self.cfg.safety)
        self._plan_checks: dict[tuple[str, ...], PlanCheck] = {}
        self.callback_errors = 0
        self.last_callback_error = ""
        self.plan_rejections = Rejections()
        self.feature_rejections = Rejections()
        self._active: dict[str, str] = {}  # cause → reason, for every cause currently present
        self._halt_out = False  # a halt of ours is standing on /vla/halt
        self.halts_published = 0
        self.last_decision = ""
        self.bridge_mode = ""
        self._armed = False  # an episode runs: POLICY seen since the last HALTED / TELEOP
        self._episode_gap_s = float(get("episode_gap_s"))

        # Learned part.
        self.learned: LearnedDetector | None = None
        self.learned_status = ""
        d = str(get("detector_dir")) or str(self.cfg.detector_path)
        try:
            self.learned, self.learned_status = load_for_config(self.cfg.detector.learned, d)
        except ValueError as e:  # a broken head never silently becomes "hard monitors only"
            self.get_logger().fatal(f"failure_detector cannot start: {e}")
            raise SystemExit(2) from None
        self._acc: ScoreAccumulator | None = None
        self._episode_t0 = 0.0
        self._last_feature_t = -1e9
        self._prev_chunk: np.ndarray | None = None
        self._new_episode = True
        self.score = float("nan")
        self.learned_steps = 0  # feature messages the learned head has scored
        self.threshold = float("nan")
        self._layouts: dict[str, FeatureLayout | None] = {}

        self._halt_pub = self.create_publisher(String, TOPIC_HALT, QOS_LATCHED)
        self._hb_pub = self.create_publisher(Header, TOPIC_DETECTOR_HEARTBEAT, QOS_SENSOR)
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        self._subscribe(Float32MultiArray, TOPIC_POLICY_FEATURES, self._on_features, QOS_SENSOR)
        self._subscribe(JointTrajectory, TOPIC_ACTION_CHUNK, self._on_plan, QOS_COMMAND)
        self._subscribe(JointState, TOPIC_JOINT_STATES, self._on_joint_state, QOS_SENSOR)
        self._subscribe(DiagnosticStatus, TOPIC_SAFETY_STATE, self._on_safety_state, QOS_LATCHED)
        self._subscribe(String, TOPIC_INSTRUCTION, self._on_instruction, QOS_LATCHED)
        for g in self.cfg.robot.groups.values():
            if g.controller == "joint_trajectory":
                self._subscribe(JointTrajectory, g.resolved_topic, self._on_command, QOS_COMMAND)
        self._measured: dict[str, float] = {}
        self.create_timer(1.0 / float(get("check_hz")), self._check_timeouts)
        self.create_timer(1.0 / float(get("heartbeat_hz")), self._heartbeat)
        self.create_timer(0.5, self._publish_diagnostics)
        self.get_logger().info(
            f"failure_detector: {self.learned_status}; joint_states timeout {js_timeout * 1e3:.0f} ms, fast path "
            f"timeout {plan_timeout * 1e3:.0f} ms, heartbeat {get('heartbeat_hz')} Hz")

    # ------------------------------------------------------------------ decisions
    def _judge(self, cause: str, result: MonitorResult) -> None:
        """Record one monitor's verdict and publish at once when the halt state changes."""
        if result.ok:
            if cause not in self._active:
                return
            del self._active[cause]
        elif cause in self._active:
            return
        else:
            self._active[cause] = result.reason
        self._sync_halt()

    def _sync_halt(self) -> None:
        # Halts are raised while an episode runs (see the module docstring). A cause present when
        # the bridge enters POLICY halts from that safety_state callback.
        if self._active and not self._halt_out and self._armed:
            cause, reason = next(iter(self._active.items()))
            text = f"failure_detector: {cause}: {reason} [t={time.monotonic_ns()}]"
            self._halt_pub.publish(String(data=text))
            self._halt_out = True
            self.halts_published += 1
            self.last_decision = text
            self.get_logger().error(f"HALT: {text}")
        elif not self._active and self._halt_out:
            self._halt_pub.publish(String(data=""))
            self._halt_out = False
            self.get_logger().info("halt causes cleared: published '' on /vla/halt (reset may proceed)")

    # ------------------------------------------------------------------ callbacks
    def _subscribe(self, msg_type: type, topic: str, callback, qos) -> None:
        self.create_subscription(msg_type, topic, guarded(self, callback, self._callback_failed), qos)

    def _callback_failed(self, what: str) -> None:
        """A callback raised on a message: counted (the monitors judge what the node did not see)."""
        self.callback_errors += 1
        self.last_callback_error = what

    def _layout(self, msg: Float32MultiArray) -> FeatureLayout | None:
        label = msg.layout.dim[0].label if msg.layout.dim else ""
        if label not in self._layouts:
            if len(self._layouts) > 16:  # a publisher that makes up labels: bounded memory and log
                self._layouts.clear()
            try:
                self._layouts[label] = FeatureLayout.parse(label)
            except ValueError:
                self._layouts[label] = None
                self.get_logger().warning(f"policy features with unknown layout {label!r}: learned score off for them")
        return self._layouts[label]

    def _on_features(self, msg: Float32MultiArray) -> None:
        now = time.monotonic()
        vec = np.asarray(msg.data, dtype=np.float32)
        r = self.monitors["features_finite"].note(vec)
        self._judge("features_finite", r)
        if not r.ok:
            self.feature_rejections(NON_FINITE, r.reason)
            return
        layout = self._layout(msg)
        if layout is None:
            self.feature_rejections(MALFORMED, "policy features with an unknown layout label")
            return
        if vec.shape != (layout.size,):
            self.feature_rejections(LENGTH_MISMATCH, f"policy features: {vec.size} values for {layout.size}")
            return
        latent_age = float(vec[layout.size - 3])
        self.monitors["latent"].note(latent_age)
        self._judge("latent", self.monitors["latent"].check())
        if self.learned is None or layout != self.learned.layout:
            return
        if self._new_episode or now - self._last_feature_t > self._episode_gap_s:
            self._acc = self.learned.scorer.new_episode()
            self._episode_t0 = now
            self._prev_chunk = None
            self._new_episode = False
        self._last_feature_t = now
        x = step_features(layout, vec, self._prev_chunk)
        self._prev_chunk = layout.split(vec)[1].copy()
        self.score = self._acc.update(x)
        self.learned_steps += 1
        self.threshold = self.learned.threshold.at(now - self._episode_t0)
        if self.score > self.threshold and LEARNED not in self._active:
            self._judge(LEARNED, MonitorResult(
                False, f"failure score {self.score:.3f} > δ({now - self._episode_t0:.1f} s) = {self.threshold:.3f} "
                       f"(alpha {self.learned.threshold.alpha})"))

    def _on_plan(self, msg: JointTrajectory) -> None:
        now = time.monotonic()
        self.monitors["fast_path"].note(now)
        self._judge("fast_path", MonitorResult(True))
        streak: HoldStreakMonitor = self.monitors["hold_streak"]
        if not msg.points:
            streak.note_hold(msg.header.frame_id or "hold (no reason)")
        else:
            unknown = [n for n in msg.joint_names
                       if n not in self._known_joints and n.split("/", 1)[0] not in self._groups]
            self._judge("plan_layout", MonitorResult(not unknown, f"plan names unknown dims {unknown[:3]}"))
            r = self.monitors["plan_valid"].note_verdict(self._plan_verdict(msg))
            self._judge("plan_valid", r)
            if r.ok:
                streak.note_plan()
        self._judge("hold_streak", streak.check())

    def _plan_verdict(self, msg: JointTrajectory) -> str | None:
        """Why a plan is refused (its values and stamp, as the bridge judges them), or None."""
        names = tuple(msg.joint_names)
        n = len(names)
        if any(len(p.positions) != n for p in msg.points):
            return self.plan_rejections(LENGTH_MISMATCH, f"plan points without {n} values")
        check = self._plan_checks.get(names)
        if check is None:
            if len(self._plan_checks) > 16:
                self._plan_checks.clear()
            check = self._plan_checks[names] = PlanCheck(self.cfg.robot, self.cfg.safety, names)
        values = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), n)
        return check.check(values, stamp_to_ns(msg.header.stamp) * 1e-9, self.get_clock().now().nanoseconds * 1e-9,
                           self.plan_rejections)

    def _on_joint_state(self, msg: JointState) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if self._js_check.check(tuple(msg.name), np.asarray(msg.position, dtype=np.float64),
                                stamp_to_ns(msg.header.stamp), now_ns) is not None:
            return  # refused and counted: it is no sign of life for the joint-state monitor
        self.monitors["joint_states"].note(time.monotonic())
        for n, q in zip(msg.name, msg.position):
            self._measured[n] = q
        t = self.get_clock().now().nanoseconds * 1e-9
        self._judge("tracking", self.monitors["tracking"].note_measured(self._measured, t))

    def _on_command(self, msg: JointTrajectory) -> None:
        if not msg.points:
            return
        start = stamp_to_ns(msg.header.stamp) * 1e-9 or self.get_clock().now().nanoseconds * 1e-9
        tfs = [stamp_to_ns(p.time_from_start) * 1e-9 for p in msg.points]
        try:
            pos = np.array([p.positions for p in msg.points], dtype=np.float64)
            self.monitors["tracking"].note_command(start, tfs, list(msg.joint_names), pos)
        except ValueError:
            pass  # malformed command: the controller rejects it, nothing to track

    def _on_safety_state(self, msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        mode = values.get("mode", msg.message)
        prev, self.bridge_mode = self.bridge_mode, mode
        if mode == "POLICY":
            self._armed = True
        elif mode != "HOLD":  # HALTED (the episode is over) or TELEOP (the operator drives)
            self._armed = False
        now = time.monotonic()
        try:
            self._judge("interventions", self.monitors["interventions"].note_total(int(values.get("interventions", 0)),
                                                                                   now))
        except ValueError:
            pass
        if mode == "HALTED" and LEARNED in self._active:
            # The failed episode is over (the bridge latched it): the learned cause is spent.
            self._new_episode = True
            self._judge(LEARNED, MonitorResult(True))
        if prev == "HALTED" and mode != "HALTED":
            self._new_episode = True  # reset: a new episode begins
            self.monitors["tracking"].clear_command()
        if mode != prev:
            self._sync_halt()

    def _on_instruction(self, _msg: String) -> None:
        self._new_episode = True

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        self._judge("joint_states", self.monitors["joint_states"].check(now))
        self._judge("fast_path", self.monitors["fast_path"].check(now))
        self._judge("tracking", self.monitors["tracking"].check(self.get_clock().now().nanoseconds * 1e-9))

    def _heartbeat(self) -> None:
        h = Header()
        h.stamp = self.get_clock().now().to_msg()
        h.frame_id = "halting" if self._active else "ok"
        self._hb_pub.publish(h)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        values: dict[str, object] = {
            "learned": self.learned_status,
            "score": round(self.score, 4),
            "learned_steps": self.learned_steps,
            "threshold": round(self.threshold, 4),
            "episode_t_s": round(now - self._episode_t0, 2) if self._acc is not None else "",
            "causes": "; ".join(f"{k}: {v}" for k, v in self._active.items()) or "none",
            "halt_standing": str(self._halt_out).lower(),
            "halts_published": self.halts_published,
            "last_decision": self.last_decision,
            "bridge_mode": self.bridge_mode,
            "episode_armed": str(self._armed).lower(),
        }
        for name, m in self.monitors.items():
            r = m.check(now) if name not in ("tracking",) else m.check(self.get_clock().now().nanoseconds * 1e-9)
            values[f"monitor.{name}"] = "ok" if r.ok else r.reason
        values.update(self._js_check.rejections.as_diagnostics("joint_states_rejected"))
        values.update(self.plan_rejections.as_diagnostics("plans_rejected"))
        values.update(self.feature_rejections.as_diagnostics("features_rejected"))
        values.update(callback_errors=self.callback_errors, last_callback_error=self.last_callback_error)
        level = 2 if self._active else 0
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [diagnostic_status("vla/failure_detector", level,
                                        "HALT requested" if self._active else "ok", values)]
        self._diag_pub.publish(arr)


def main(args: list[str] | None = None) -> None:
    """Console script ``failure_detector --config FILE`` (or ``-p config_file:=…``)."""
    run_node(FailureDetectorNode, args)


if __name__ == "__main__":
    main()
