"""recorder: every tick of the runtime into a crash-safe rosbag2 (MCAP) directory.

Subscribes (serialised, never deserialised: ``raw=True``) to what it takes to replay and to learn
from a run, and hands the bytes to a writer thread (:class:`~vla_runtime.data.recording.BagRecorder`):

* observations: ``/joint_states``, ``/ee_pose``, the config's camera topics (their header stamps
  are the observation references; ``record_images:=false`` keeps only joint states);
* the policy: ``/vla/action_chunk`` (the plan), ``/vla/policy_features`` (latent summary, latent
  age, inference time), ``/diagnostics`` (latent version, rates), ``/vla/instruction``;
* what was really sent: every controller topic of the config, ``/vla/safety_state`` (arbiter mode
  and safety interventions), ``/vla/halt``;
* the operator: ``/joy``, ``/vla/teleop/{twist,pose,joint_jog,gripper,engage}`` and
  ``/vla/intervention`` (interventions are also listed in the bag's metadata).

Each topic is recorded with the reliability its publishers offer, as ``ros2 bag record`` does: a
topic is subscribed once its first publisher appears, reliably when every publisher offers
reliable delivery (samples lost on the way are repaired), best effort otherwise; a best-effort
publisher that joins later turns a reliable subscription into a best-effort one (logged and
counted). Latched topics are subscribed at start, reliable and transient-local. On a loaded
machine the recorder can discover a publisher seconds after it started publishing; what was
published before is not in the bag, and the diagnostics say while publishers remain unmatched.

Parameters: ``config_file``, ``bag_dir`` (default ``runs/bags/<UTC time>``), ``max_bytes``
(2 GiB), ``max_duration_s`` (3600), ``part_s`` (5.0), ``record_images`` (true).
Diagnostics (``/diagnostics``, 1 Hz): status (ERROR with the reason when the disk is full),
parts closed, bytes, messages, queue drops, topics still without a publisher, publishers matched,
publishers on the graph not yet matched (nonzero: the recording is incomplete), topics recorded
best effort, QoS downgrades.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription

from vla_runtime.core.config import PROJECT_ROOT, RuntimeConfig
from vla_runtime.core.contract import (
    DIAG_RECORDER,
    TOPIC_ACTION_CHUNK,
    TOPIC_DIAGNOSTICS,
    TOPIC_EE_POSE,
    TOPIC_HALT,
    TOPIC_INSTRUCTION,
    TOPIC_INTERVENTION,
    TOPIC_JOINT_STATES,
    TOPIC_JOY,
    TOPIC_POLICY_FEATURES,
    TOPIC_SAFETY_STATE,
    TOPIC_TELEOP_ENGAGE,
    TOPIC_TELEOP_GRIPPER,
    TOPIC_TELEOP_JOINT_JOG,
    TOPIC_TELEOP_POSE,
    TOPIC_TELEOP_TWIST,
)
from vla_runtime.core.controller_kinds import KINDS
from vla_runtime.data.recording import BagRecorder, RecorderLimits, RecordingError, TopicSpec
from vla_runtime.nodes.common import (
    QOS_DIAGNOSTICS,
    diagnostic_status,
    load_node_config,
    run_node,
)

QUEUE_SIZE = 4096
#: Samples a recording subscription holds while the recorder's executor is busy (0.4 s of 250 Hz).
SUBSCRIPTION_DEPTH = 100
#: How often the recorder looks for new publishers and their QoS.
DISCOVERY_PERIOD_S = 0.25


def recorded_topics(cfg: RuntimeConfig, record_images: bool = True) -> list[TopicSpec]:
    """Every topic the recorder records (``latched`` ones are subscribed transient-local at start)."""
    out = [
        TopicSpec(TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState"),
        TopicSpec(TOPIC_EE_POSE, "geometry_msgs/msg/PoseStamped"),
        TopicSpec(TOPIC_ACTION_CHUNK, "trajectory_msgs/msg/JointTrajectory"),
        TopicSpec(TOPIC_POLICY_FEATURES, "std_msgs/msg/Float32MultiArray"),
        TopicSpec(TOPIC_DIAGNOSTICS, "diagnostic_msgs/msg/DiagnosticArray"),
        TopicSpec(TOPIC_SAFETY_STATE, "diagnostic_msgs/msg/DiagnosticStatus", latched=True),
        TopicSpec(TOPIC_HALT, "std_msgs/msg/String", latched=True),
        TopicSpec(TOPIC_INSTRUCTION, "std_msgs/msg/String", latched=True),
        TopicSpec(TOPIC_INTERVENTION, "std_msgs/msg/String"),
        TopicSpec(TOPIC_JOY, "sensor_msgs/msg/Joy"),
        TopicSpec(TOPIC_TELEOP_TWIST, "geometry_msgs/msg/TwistStamped"),
        TopicSpec(TOPIC_TELEOP_POSE, "geometry_msgs/msg/PoseStamped"),
        TopicSpec(TOPIC_TELEOP_JOINT_JOG, "sensor_msgs/msg/JointState"),
        TopicSpec(TOPIC_TELEOP_GRIPPER, "std_msgs/msg/Float64"),
        TopicSpec(TOPIC_TELEOP_ENGAGE, "std_msgs/msg/Bool"),
    ]
    for g in cfg.robot.groups.values():
        out.append(TopicSpec(g.resolved_topic, KINDS[g.controller].msgtype))
        if KINDS[g.controller].stiffness and g.stiffness_limits is not None:
            out.append(TopicSpec(f"/{g.controller_name}/target_stiffness", "std_msgs/msg/Float64MultiArray"))
    if record_images:
        out += [TopicSpec(c.topic, "sensor_msgs/msg/Image") for c in cfg.cameras]
    return out


def recording_qos(reliable: bool, latched: bool = False) -> QoSProfile:
    """The QoS a recording subscription uses: deep (a latched topic's every change, not only its
    last), reliable only when every publisher is, transient-local for latched topics."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SUBSCRIPTION_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def _msg_class(msgtype: str):
    import importlib

    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


class RecorderNode(Node):
    """Records the runtime's topics into a bounded, crash-safe rosbag2 directory."""

    def __init__(self, config: RuntimeConfig | None = None, node_name: str = "recorder") -> None:
        super().__init__(node_name)
        self.cfg = config if config is not None else load_node_config(self)
        self.declare_parameter("bag_dir", "")
        self.declare_parameter("max_bytes", 2 * 1024**3)
        self.declare_parameter("max_duration_s", 3600.0)
        self.declare_parameter("part_s", 5.0)
        self.declare_parameter("record_images", True)
        bag_dir = str(self.get_parameter("bag_dir").value) or str(
            PROJECT_ROOT / "runs" / "bags" / time.strftime("%Y%m%d_%H%M%S", time.gmtime()))
        limits = RecorderLimits(
            max_bytes=int(self.get_parameter("max_bytes").value),
            max_duration_s=float(self.get_parameter("max_duration_s").value),
            part_s=float(self.get_parameter("part_s").value),
        )
        topics = recorded_topics(self.cfg, bool(self.get_parameter("record_images").value))
        try:
            self.bag = BagRecorder(Path(bag_dir), topics, limits)
        except (RecordingError, OSError) as e:
            self.get_logger().fatal(f"cannot record into {bag_dir}: {e}")
            raise SystemExit(2) from None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.queue_drops = 0
        self.qos_downgrades = 0
        self._topics = topics
        # topic -> subscription; a non-latched topic enters once a publisher shows up
        self._subs: dict[str, Subscription] = {}
        # topic -> publishers on the graph, as the last discovery pass saw them
        self._on_graph: dict[str, int] = {}
        for spec in topics:
            if spec.latched:
                self._subscribe(spec, recording_qos(True, latched=True))
        self._discover()
        self.create_timer(DISCOVERY_PERIOD_S, self._discover)
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        self.create_timer(1.0, self._publish_diagnostics)
        self._last_status = self.bag.status
        self._writer = threading.Thread(target=self._write_loop, name="bag_writer", daemon=True)
        self._writer.start()
        self.get_logger().info(f"recording {len(topics)} topics into {bag_dir} "
                               f"(parts of {limits.part_s:g} s, ≤ {limits.max_bytes} bytes)")

    def _subscribe(self, spec: TopicSpec, qos: QoSProfile) -> None:
        self._subs[spec.name] = self.create_subscription(_msg_class(spec.msgtype), spec.name,
                                                         self._make_cb(spec.name), qos, raw=True)

    @staticmethod
    def _reliable(sub: Subscription) -> bool:
        return sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE

    def _discover(self) -> None:
        """Count each topic's publishers; subscribe to topics whose first publisher appeared;
        downgrade to best effort when a publisher needs it."""
        for spec in self._topics:
            pubs = self.get_publishers_info_by_topic(spec.name)
            self._on_graph[spec.name] = len(pubs)
            if spec.latched or not pubs:
                continue
            reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
            current = self._subs.get(spec.name)
            if current is None:
                self._subscribe(spec, recording_qos(reliable))
            elif self._reliable(current) and not reliable:
                # A reliable reader does not match a best-effort writer: record that writer too,
                # at the cost of repair for the others.
                self.destroy_subscription(current)
                self._subscribe(spec, recording_qos(False))
                self.qos_downgrades += 1
                self.get_logger().warning(f"{spec.name}: a publisher offers best effort; recording it best effort")

    def _make_cb(self, topic: str):
        def cb(data: bytes) -> None:
            t = self.get_clock().now().nanoseconds
            try:
                self._queue.put_nowait((topic, t, data))
            except queue.Full:
                self.queue_drops += 1

        return cb

    def _write_loop(self) -> None:
        from vla_runtime.data.recording import _typestore, deserialize

        ts = _typestore()
        while True:
            item = self._queue.get()
            if item is None:
                break
            topic, t, data = item
            if topic == TOPIC_INTERVENTION:
                try:
                    self.bag.mark_intervention(t, deserialize(ts, data, "std_msgs/msg/String").data)
                except Exception:  # noqa: BLE001 - a bad label must not stop the recording
                    pass
            self.bag.write(topic, t, data)

    def _publish_diagnostics(self) -> None:
        s = self.bag.summary()
        s["queue_drops"] = self.queue_drops
        s["topics_without_publisher"] = sum(1 for spec in self._topics
                                            if not spec.latched and spec.name not in self._subs)
        # publishers on the graph whose samples do not reach the recorder yet (endpoint discovery
        # lags on a loaded machine): nonzero means the recording is still incomplete
        matched = {name: sub.get_publisher_count() for name, sub in self._subs.items()}
        s["publishers_matched"] = sum(matched.values())
        s["unmatched_publishers"] = sum(max(0, self._on_graph.get(name, 0) - n) for name, n in matched.items())
        s["topics_best_effort"] = sum(1 for sub in self._subs.values() if not self._reliable(sub))
        s["qos_downgrades"] = self.qos_downgrades
        failed = str(s["status"]).startswith("FAILED")
        if s["status"] != self._last_status:
            self._last_status = s["status"]
            if failed:
                self.get_logger().error(f"recording: {s['status']}")
            else:
                self.get_logger().info(f"recording: {s['status']}")
        level = 2 if failed else 0  # DiagnosticStatus ERROR / OK
        arr = DiagnosticArray(status=[diagnostic_status(DIAG_RECORDER, level, str(s["status"]), s)])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    def close(self) -> None:
        """Write what is queued, close the open part (bounded wait)."""
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._writer.join(timeout=5.0)
        self.bag.stop("stopped: recorder shut down")


def main(args: list[str] | None = None) -> None:
    """Console script: ``recorder --config sim_panda.yaml --ros-args -p bag_dir:=runs/bags/x``."""
    run_node(RecorderNode, args)


if __name__ == "__main__":
    main()
