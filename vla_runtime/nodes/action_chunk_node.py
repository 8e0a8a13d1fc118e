"""action_chunk_node: the 30 Hz fast path.

Every tick of a deadline loop (its own thread, absolute-time scheduling): newest joint state +
newest latent (with its version and age) → the policy step (core/policy.fast_step_for:
:class:`FastStep` for a schema-1 one-shot graph, :class:`PackageFastStep` for a flow-matching one and
for every imported package) → H×A chunk → ChunkScheduler (drops
what is already past, cross-fades with the executing chunk, interpolates to the command rate) → the
scheduled command trajectory on ``/vla/action_chunk`` for the controller bridge, the policy
features on ``/vla/policy_features`` for the failure detector, and timing in diagnostics.

Where inference runs (``scheduler.inference``):

* ``async`` (default): on a worker thread (core/async_inference.InferenceWorker; ONNX Runtime
  releases the interpreter lock while it computes, so a thread suffices). The loop never waits for
  a model: each tick it streams the current plan, merges a finished chunk (stamped with the
  observation it was computed from; the actions whose time passed while the arm moved are dropped,
  none while it held), and starts the next
  inference when the plan left falls to the execution horizon, timed from the measured delay (a
  percentile of recent observation → merge delays, :class:`HorizonTrigger`). For a flow-matching
  head the executing plan guides the new chunk (real-time chunking); a one-shot head is joined by
  the delay-aware cross-fade. An inference in flight longer than ``scheduler.max_inference_s`` is a
  stalled engine: HOLD.
* ``inline``: inference inside the tick; one over ``max_infer_overrun`` periods means HOLD.
* ``sync``: stop-and-go on the worker: the execution horizon's steps of the chunk (the whole chunk if
  unset) execute, then the robot holds while the next is computed and starts that one from its first
  action (nothing of it passed while the arm stood still); the baseline the asynchronous mode is
  measured against.

The latent is what the package's slow part writes: one K×D tensor, or several named tensors (an
imported π0/π0.5/SmolVLA's K/V prefix cache and its mask), read as one version into per-tensor
buffers (the reader opens with the slow part's layout, ``core/policy.latent_layout``). A package
without a slow part (ACT: one graph on cameras + state) has no latent: the node subscribes to the
cameras its fast part takes (``cameras[].topic``; nodes/camera_frames) and each inference gets the
newest frame of each; the frames' age then stands where the latent's does.

A latent (or, without one, a camera frame) older than ``latent.max_age_s``, a missing or stale joint
state, or a stalled inference makes the node publish a HOLD request (an empty trajectory with the
reason) instead of a plan: the robot holds, it never follows extrapolated motion; a chunk in flight
from before such a hold is dropped. Nothing in the loop logs; the loop only takes references to the
newest frames, the worker fits them to the package's size.

Interruption (core/interruption): the node subscribes to ``/vla/instruction`` (the callback only
records the text and its receive time). A *different* instruction invalidates the latent at once: on
the next tick the plan is replaced by a stop (from the commanded position and velocity to rest, every
dim within its joint's acceleration limit × ``safety.acceleration_scale``, all dims together), the
chunk in flight is dropped, and no inference starts until a latent observed AFTER the instruction's
arrival is in the buffer (an older one may have been computed for the old words). The stop is
published while it lasts, then HOLD (:data:`HOLD_NEW_INSTRUCTION`, which the detector's HOLD-streak
monitor does not count); after ``latent.max_age_s`` without such a latent it is a stale-latent HOLD.
The first valid latent starts an inference at once; its chunk cross-fades in from the stop.
Diagnostics: ``interruptions``, ``instruction_to_latent_ms``, ``instruction_to_first_chunk_ms``,
``last_stop_s``, ``last_stop_distance`` (the largest dim's travel while stopping). A package without a
slow part has no latent and is not interrupted.

State input: by default the loop thread itself takes the newest ``/joint_states`` (and, for
Cartesian layouts, ``/ee_pose``) at the start of each tick, from depth-1 subscriptions on a helper
node that no executor spins (:class:`PolledTopic`). The robot publishes joint states at hundreds
of Hz; as executor callbacks each of them would take the interpreter lock from the loop thread.
``poll_state:=false`` uses plain subscription callbacks (they copy the newest message under a
short lock) instead. Staleness is judged on the message's receive time either way.

Publishing never waits on the transport: the process uses Fast DDS's asynchronous publication
mode (:data:`PUBLICATION_MODE`), so a send is a hand-over to the middleware's thread.

Parameters: ``config_file``, ``autostart``, ``engine`` (``model`` | ``null``: the null engine
measures the runtime's own overhead), ``rate_hz`` (overrides ``rates.fast_hz``), ``lockstep``
(false; see below), ``poll_state`` (true; see above), ``interrupt`` (true; false: a new instruction
takes effect only when the slow path's next latent does, the baseline ``bench interrupt`` compares with).

Lockstep (``lockstep:=true``) is the single-frequency baseline the fast-slow design replaces: the
fast graph runs only when a NEW latent version is in the buffer, and its whole chunk is the plan,
executed open-loop until the next latent (the loop keeps re-publishing what is left of that same
chunk, so the bridge's watchdog stays fed; when it runs out the node asks for HOLD). No
re-planning happens between latents, so the robot acts at the slow path's rate. In lockstep the
node also asks for the next latent on ``/vla/sync/request`` (std_msgs/Header) whenever it has none
or its chunk has run out (again after 1 s without an answer); a slow_reasoner with
``step_on_request:=true`` answers each request with one step on a frame taken after it, which
makes the stop-and-go (synchronous) baseline: observe, infer while the robot holds, execute.
"""

from __future__ import annotations

import gc
import json
import math
import os
import struct
import sys
import threading
import time
from array import array

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_runtime.core.contract import (
    DIAG_FAST_PATH,
    HOLD_AWAITING_CHUNK,
    HOLD_BAD_OUTPUT,
    HOLD_FUTURE_LATENT,
    HOLD_NEW_INSTRUCTION,
    HOLD_NO_FRAME,
    HOLD_NO_JOINT_STATE,
    HOLD_NO_LATENT,
    HOLD_OVERRUN,
    HOLD_PLAN_ENDED,
    HOLD_PROPRIO_INCOMPLETE,
    HOLD_STALE_FRAME,
    HOLD_STALE_JOINT_STATE,
    HOLD_STALE_LATENT,
    HOLD_STOPPED,
    HOLD_TICK_ERROR,
    TOPIC_ACTION_CHUNK,
    TOPIC_DIAGNOSTICS,
    TOPIC_EE_POSE,
    TOPIC_INSTRUCTION,
    TOPIC_JOINT_STATES,
    TOPIC_POLICY_FEATURES,
    TOPIC_SYNC_REQUEST,
)
from vla_runtime.core.interruption import GateVerdict, InstructionGate, acceleration_bounds, stopping_profile
from vla_runtime.core.measured_state import MeasuredState
from vla_runtime.core.realtime import DEFAULT_SWITCH_INTERVAL_S
from vla_runtime.core.validation import LENGTH_MISMATCH, JointStateCheck, Rejections
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    PolledTopic,
    WorkerLifecycle,
    diagnostic_status,
    latent_buffer_config,
    load_node_config,
    make_realtime_here,
    ns_to_stamp,
    run_node,
    stamp_to_ns,
)

#: ``builtin_interfaces/Time`` (int32 sec, uint32 nanosec), little-endian CDR.
_STAMP = struct.Struct("<iI")


class ActionChunkNode(WorkerLifecycle, LifecycleNode):
    """Runs the fast graph at a fixed rate and streams a delay-compensated command plan."""

    #: ``process.rt_priority`` applies to the deadline loop's thread (the executor's stays normal).
    REALTIME_THREAD = "loop"

    def __init__(self, **kwargs) -> None:
        super().__init__("action_chunk_node", **kwargs)
        self.cfg = load_node_config(self)
        self.declare_parameter("autostart", True)
        self.declare_parameter("engine", "model")
        self.declare_parameter("rate_hz", 0.0)
        self.declare_parameter("lockstep", False)
        self.declare_parameter("poll_state", True)
        self.declare_parameter("interrupt", True)
        self._io_node: Node | None = None
        self._polled: list[tuple[PolledTopic, object]] = []
        self._state_lock = threading.Lock()
        self.measured: MeasuredState | None = None  # built in on_configure (needs the package)
        self.step = None  # the policy step (core/policy.FastStep), built in on_configure
        self._joint_recv_mono = 0.0
        self.loop = None
        self.package = None
        self.reader = None  # LatentReader; None for a package without a slow part
        self.cameras = None  # CameraFrames, for a fast part that takes cameras
        self.frame_rejections = Rejections()
        self.counters = {"ticks": 0, "hold_ticks": 0, "chunks": 0, "bad_joint_states": 0, "overruns": 0,
                         "sync_requests": 0, "inferences": 0, "chunks_dropped": 0, "inference_errors": 0,
                         "tick_errors": 0, "hold_publish_errors": 0, "skipped_actions": 0}
        self.worker = None  # InferenceWorker (inference async / sync), built in on_activate
        self.selector = None  # ChunkSelector (scheduler.candidates > 1), built in on_configure
        self._consensus = False  # scheduler.horizon_policy consensus (a ConsensusTrigger)
        self.last_hold_reason = ""
        self.last_tick_error: Exception | None = None  # the loop's; the diagnostics timer logs it
        self._tick_errors_logged = 0
        self._loop_death_logged = False
        self.last_latent_version = 0
        self.last_latent_age_s = float("nan")
        # Interruption (core/interruption): the instruction callback only hands (text, wall ns, monotonic s)
        # over under this lock; the loop thread acts on it.
        self._instr_lock = threading.Lock()
        self._instr_new: tuple[str, int, float] | None = None
        self.gate = InstructionGate(self.cfg.instruction, self.cfg.latent.max_age_s)
        self._accepted_at_valid = 0
        self.last_stop_s = 0.0
        self.last_stop_distance = 0.0

    # ----------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from vla_runtime.core.async_inference import HorizonTrigger
        from vla_runtime.core.chunk_scheduler import ChunkScheduler, ChunkSchedulerConfig
        from vla_runtime.core.latent_buffer import open_latent_reader
        from vla_runtime.core.policy import fast_step_for
        from vla_runtime.engines import make_engine
        from vla_runtime.engines.model_package import load_model_package

        cfg = self.cfg
        try:
            self.package = load_model_package(cfg.model_package_path, fast=cfg.model.fast_engine, parts=("fast",))
            spec = self.package.spec
            self.engine = self.package.fast_engine
            if self.get_parameter("engine").value == "null":
                self.engine = make_engine(self.package.fast_onnx, backend="null")
            self.step = fast_step_for(self.package, self.engine, use_prefix=cfg.scheduler.rtc_prefix,
                                      max_guidance=cfg.scheduler.rtc_max_guidance,
                                      camera_names=[c.name for c in cfg.cameras], instruction=cfg.instruction,
                                      jacobian=cfg.scheduler.rtc_jacobian)
            if self.step.latent_tensors is not None:  # several named tensors: the slow part's layout
                bcfg = latent_buffer_config(cfg, (1, 1)).with_tensors(self.step.latent_tensors)
            elif self.step.has_latent:
                bcfg = latent_buffer_config(cfg, (spec.latent.tokens, spec.latent.dim), spec.latent.dtype)
            elif self.get_parameter("lockstep").value:
                raise ValueError(f"lockstep runs one chunk per latent; {spec.name!r} has no slow part")
            else:
                bcfg = None  # no slow part: the fast part takes the cameras
            self.reader = open_latent_reader(bcfg) if bcfg is not None else None
            self.selector = self._chunk_selector(cfg.scheduler)
            self.engine.warmup(5)
        except Exception as e:  # noqa: BLE001 - any failure to load means: do not run
            self.get_logger().fatal(f"action_chunk_node cannot configure: {e}")
            return TransitionCallbackReturn.FAILURE
        self.dim_names = list(self.step.space.dim_names)
        # What the tick reads of the measured state, in one gather: the step's state vector (proprio,
        # then the delta dims' current values; gripper dims and Cartesian poses measured as the
        # robot config says, see core/measured_state and core/policy).
        self.measured = self.step.measured_state(cfg.robot)
        self._state_idx = self.measured.index(self.step.state_layout)
        self.horizon = spec.chunk_horizon
        self.chunk_rate = spec.control_rate_hz
        rate = float(self.get_parameter("rate_hz").value) or cfg.rates.fast_hz
        self.rate_hz = rate
        self.period_s = 1.0 / rate
        self.infer_budget_s = cfg.scheduler.max_infer_overrun * self.period_s
        self.dt_cmd = 1.0 / cfg.rates.command_hz
        # Each plan reaches a few periods ahead, not the whole chunk: the next plan replaces it one
        # period later, a stalled loop leaves the bridge at the plan's end (where it holds), and a
        # short message keeps the loop's own overhead low.
        chunk_points = int(math.ceil(self.horizon / self.chunk_rate / self.dt_cmd)) + 1
        window_points = int(math.ceil(cfg.scheduler.plan_horizon_periods * self.period_s / self.dt_cmd)) + 1
        self.max_points = max(2, min(chunk_points, window_points))
        self.lockstep = bool(self.get_parameter("lockstep").value)
        sched = cfg.scheduler
        # Lockstep is its own baseline (one chunk per latent, inference in the tick).
        self.inference = "inline" if self.lockstep else sched.inference
        dt_chunk = 1.0 / self.chunk_rate
        steps = min(max(1, sched.execution_horizon_steps, math.ceil(sched.execution_horizon_fraction * self.horizon)),
                    self.horizon)
        if self.inference == "sync":  # stop-and-go: the horizon's steps (the whole chunk if unset), then the next
            self.trigger = HorizonTrigger(dt_chunk, min_steps=self.horizon if steps == 1 else steps, margin_s=0.0)
        elif sched.horizon_policy == "consensus":  # adaptive: as long as successive chunks agree
            from vla_runtime.core.async_inference import ConsensusTrigger

            self.trigger = ConsensusTrigger(dt_chunk, min(sched.consensus_min_steps, self.horizon),
                                            min(sched.consensus_max_steps, self.horizon), sched.consensus_tolerance,
                                            margin_s=0.5 * self.period_s)
        else:
            self.trigger = HorizonTrigger(dt_chunk, min_steps=steps, margin_s=0.5 * self.period_s)
        self._consensus = sched.horizon_policy == "consensus" and self.inference == "async"
        self.max_inference_s = sched.max_inference_s
        # Where the reader copies the latent: inline, a single tensor goes straight into the step's feed;
        # otherwise (the worker owns the step's feeds; several tensors) into the loop's own buffers,
        # which each inference request snapshots.
        self._latent_in_feeds = self.inference == "inline" and self.step.latent_tensors is None \
            and self.step.has_latent
        if self._latent_in_feeds:
            self._latent_view = self.step.latent_view
        elif self.step.latent_tensors is not None:
            self._latent_view = {n: np.zeros(shape, dtype) for n, shape, dtype in self.step.latent_tensors}
        elif self.step.has_latent:
            self._latent_view = np.zeros_like(self.step.latent_view)
        else:
            self._latent_view = None
        self.delay_percentile = sched.delay_percentile
        self._chunk_obs: float | None = None  # observation time of the chunk executing now
        self._drop_before = -math.inf  # chunks observed before the last hold are not merged
        self._stalled = False
        self._delay_plan_s = 0.0
        self._lockstep_version = -1
        self._requested_version = -2
        self._request_t = -1e9
        self.request_pub = self.create_publisher(Header, TOPIC_SYNC_REQUEST, QOS_COMMAND) if self.lockstep else None
        if self.lockstep:  # the plan is the whole chunk, not a few periods of it
            self.max_points = max(2, chunk_points)
        self.scheduler = ChunkScheduler(
            ChunkSchedulerConfig(
                chunk_rate_hz=self.chunk_rate,
                blend_s=cfg.scheduler.blend_s,
                interpolation=cfg.scheduler.interpolation,
            ),
            action_dim=len(self.dim_names),
        )
        self.use_prefix = self.step.uses_prefix
        # Preallocated outgoing messages: the loop fills them in place.
        self.plan_msg = JointTrajectory()
        self.plan_msg.joint_names = self.dim_names
        self._points = []
        for k in range(self.max_points):
            pt = JointTrajectoryPoint()
            t = k * self.dt_cmd
            pt.time_from_start.sec = int(t)
            pt.time_from_start.nanosec = int(round((t - int(t)) * 1e9))
            self._points.append(pt)
        self.features_msg = Float32MultiArray()
        feature_layout = self.step.feature_layout
        n_feat = feature_layout.size
        self.features_msg.layout.dim = [MultiArrayDimension(label=feature_layout.label, size=n_feat, stride=n_feat)]
        self._features = np.zeros(n_feat, dtype=np.float32)
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()

        self.plan_pub = self.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        self.features_pub = self.create_publisher(Float32MultiArray, TOPIC_POLICY_FEATURES, QOS_SENSOR)
        self.diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        from vla_runtime.nodes.cdr import JointStateDecoder, PlanEncoder

        try:  # the plan as serialized bytes (nodes/cdr.py); a middleware layout it cannot map: messages
            self._plan_encoder: PlanEncoder | None = PlanEncoder(self.dim_names, "plan", self.max_points, self.dt_cmd)
        except RuntimeError as e:
            self._plan_encoder = None
            self.get_logger().warning(f"plans go out as messages: {e}")
        self._js_decoder = JointStateDecoder()
        # Every joint state is judged before it becomes proprio (core/validation): NaN, 1e30, names
        # twice or a stamp from the future are counted per reason and change nothing.
        self._js_check = JointStateCheck(cfg.robot, cfg.safety)
        state_topics = [(JointState, TOPIC_JOINT_STATES, self._joint_state_cb)]
        if self.measured.needs_pose:  # only Cartesian layouts need the measured pose (saves ~125 msgs/s)
            state_topics.append((PoseStamped, TOPIC_EE_POSE, self._ee_cb))
        if bool(self.get_parameter("poll_state").value):
            self._io_node = Node(f"{self.get_name()}_loop_io", context=self.context,
                                 start_parameter_services=False, enable_rosout=False)
            # Joint states arrive serialized and only their positions are read (nodes/cdr.py).
            self._polled = [(PolledTopic(self._io_node, JointState, TOPIC_JOINT_STATES, raw=True),
                             self._raw_joint_state)]
            self._polled += [(PolledTopic(self._io_node, t, topic), cb) for t, topic, cb in state_topics[1:]]
        else:
            for t, topic, cb in state_topics:
                self.create_subscription(t, topic, cb, QOS_SENSOR)
        if self.step.cameras:  # no slow part: the fast part takes the newest frames itself
            from vla_runtime.nodes.camera_frames import CameraFrames

            topics = {c.name: c.topic for c in cfg.cameras}
            self.cameras = CameraFrames(self, {c: topics[c] for c in self.step.cameras}, cfg.safety.max_stamp_lead_s,
                                        self.frame_rejections)
        self._accel_bounds = acceleration_bounds(self.dim_names, cfg.robot.joints, cfg.safety.acceleration_scale)
        if self.reader is not None and bool(self.get_parameter("interrupt").value):
            # A latent to invalidate: a new instruction interrupts (_take_instruction).
            self.create_subscription(String, TOPIC_INSTRUCTION, self._instruction_cb, QOS_LATCHED)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_service(Trigger, "~/reset_stats", self._reset_stats)
        self.get_logger().info(
            f"fast path ready: {spec.name} on {self.engine.provider}, {rate:g} Hz, H={self.horizon}, "
            f"{'LOCKSTEP (one chunk per latent), ' if self.lockstep else ''}inference {self.inference}"
            f"{f' (execution horizon {self.trigger.min_steps} steps)' if self.inference == 'async' else ''}, "
            f"A={len(self.dim_names)}, prefix conditioning {'on' if self.use_prefix else 'off'}, "
            f"{self._input_summary()}, "
            f"plan sampling {'in C' if self.scheduler.kernel else 'in numpy (the C kernel is not built)'}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _chunk_selector(self, sched):
        """Test-time chunk selection (core/chunk_selection) when ``scheduler.candidates`` > 1, else None."""
        if sched.candidates == 1:
            return None
        from vla_runtime.core.chunk_selection import ChunkSelector

        detector = None
        if sched.verifier == "detector" and (self.package.path / "detector").is_dir():
            from vla_runtime.core.failure_detection import LearnedDetector

            detector = LearnedDetector.load(self.package.path)
        return ChunkSelector(sched.candidates, sched.verifier, self.step, detector)

    def _run_step(self, state: np.ndarray, prefix, latent, exec_steps: int, frames, age: float):
        """One chunk: the step's, or the verifier's choice among ``scheduler.candidates`` of them."""
        if self.selector is None:
            return self.step.run(state, prefix, latent, exec_steps, frames)
        return self.selector.run(state, prefix, latent, exec_steps, frames, age).result

    def _input_summary(self) -> str:
        step = self.step
        if step.latent_tensors is not None:
            what = f"latent of {len(step.latent_tensors)} tensors"
        else:
            what = "latent K×D" if step.has_latent else "no latent"
        return what + (f", cameras {step.cameras}" if step.cameras else "")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from vla_runtime.core.deadline_loop import DeadlineLoop

        self._tick_fn = self._tick if self.inference == "inline" else self._tick_worker
        self.loop = DeadlineLoop(self._guarded_tick, self.rate_hz, name="action_chunk_loop",
                                 thread_init=lambda: make_realtime_here(self))
        if self.inference != "inline" and self.worker is None:
            from vla_runtime.core.async_inference import InferenceWorker

            self.worker = InferenceWorker(self._infer_request, name="action_chunk_inference")
        # Everything allocated so far (rclpy, numpy, onnxruntime, pydantic: ~10^5 objects) lives
        # for the whole process; freezing it keeps the cyclic GC's full passes, which would walk
        # all of it, from stalling a tick for milliseconds.
        gc.collect()
        gc.freeze()
        self.loop.start()
        return super().on_activate(state)

    def _stop_work(self) -> None:
        """Stop the loop with a last HOLD request (``WorkerLifecycle``; ``_release`` frees the engine
        and the latent reader)."""
        if self.loop is not None:
            self.loop.stop(timeout_s=2.0)
            if self.plan_pub is not None and rclpy.ok(context=self.context):
                self._publish_hold(HOLD_STOPPED, time.monotonic())
        if self.worker is not None:
            self.worker.stop(timeout_s=1.0)  # a stalled engine keeps its daemon thread; nothing waits on it
            self.worker = None

    def _release(self) -> None:
        if self._io_node is not None:
            self._polled = []
            self._io_node.destroy_node()
            self._io_node = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.package is not None:
            self.package.close()
            self.package = None

    plan_pub = None

    # ----------------------------------------------------------------- callbacks (copy only)
    def _joint_state_cb(self, msg: JointState, recv_mono: float | None = None) -> None:
        names = tuple(msg.name)
        pos = np.array(msg.position, dtype=np.float64)
        if self._js_check.check(names, pos, stamp_to_ns(msg.header.stamp), time.time_ns()) is not None:
            self.counters["bad_joint_states"] += 1
            return
        with self._state_lock:
            self.measured.update_joints(names, pos)
            self._joint_recv_mono = time.monotonic() if recv_mono is None else recv_mono

    def _raw_joint_state(self, raw: bytes, recv_mono: float) -> None:
        try:
            names, pos = self._js_decoder.decode(raw)
        except ValueError as e:
            self._js_check.rejections(LENGTH_MISMATCH, str(e))
            self.counters["bad_joint_states"] += 1
            return
        sec, nsec = _STAMP.unpack_from(raw, 4)  # header.stamp, right after the CDR encapsulation
        if self._js_check.check(names, pos, sec * 1_000_000_000 + nsec, time.time_ns()) is not None:
            self.counters["bad_joint_states"] += 1
            return
        with self._state_lock:
            self.measured.update_joints(names, pos)  # the decoder's same names tuple per layout
            self._joint_recv_mono = recv_mono

    def _instruction_cb(self, msg: String) -> None:
        with self._instr_lock:
            self._instr_new = (msg.data, time.time_ns(), time.monotonic())

    def _ee_cb(self, msg: PoseStamped, recv_mono: float | None = None) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        with self._state_lock:
            self.measured.update_pose((p.x, p.y, p.z, q.x, q.y, q.z, q.w))

    # ----------------------------------------------------------------- the fast loop
    def _poll_state(self, now: float) -> None:
        """Take the newest state messages (loop thread; see the module docstring)."""
        for topic, handler in self._polled:
            got = topic.take_newest()
            if got is not None:
                msg, recv_wall_ns = got
                handler(msg, now - max(0.0, (time.time_ns() - recv_wall_ns) / 1e9))

    def _observe(self, now: float):
        """The tick's inputs: (latent, its age, state vector, frames), or None after publishing a HOLD.

        ``latent`` is the loop's latent buffer (one array, or a dict by tensor name; None without a
        slow part); ``frames`` the newest frame of each camera the fast part takes (None when it takes
        none), and then ``age`` is the oldest frame's when there is no latent. In lockstep, a tick that
        only re-publishes the rest of the same chunk also returns None.
        """
        if self._instr_new is not None:
            self._take_instruction(now)
        if self._polled:
            self._poll_state(now)
        recv = self._joint_recv_mono
        if recv == 0.0:
            return self._publish_hold(HOLD_NO_JOINT_STATE, now)
        if now - recv > self.cfg.safety.joint_state_timeout_s:
            return self._publish_hold(HOLD_STALE_JOINT_STATE, now)
        age = 0.0
        if self.reader is not None:
            sample = self.reader.read_into(self._latent_view)
            if sample is None:
                if self.lockstep:
                    self._request_latent(now, -1)
                return self._publish_hold(HOLD_NO_LATENT, now)
            age = sample.age_s(time.time_ns())
            self.last_latent_version = sample.version
            self.last_latent_age_s = age
            if age < -self.cfg.safety.max_stamp_lead_s:
                return self._publish_hold(HOLD_FUTURE_LATENT, now)
            if age > self.cfg.latent.max_age_s:
                if self.lockstep:
                    self._request_latent(now, sample.version)
                return self._publish_hold(HOLD_STALE_LATENT, now)
            if self.gate.pending:  # a new instruction: only a latent observed after it may drive
                verdict = self.gate.judge(sample.obs_stamp_ns, now)
                if verdict is not GateVerdict.VALID:
                    if self.lockstep:
                        self._request_latent(now, sample.version)
                    if verdict is GateVerdict.STALE:
                        return self._publish_hold(HOLD_STALE_LATENT, now)
                    return self._publish_stopping(now)
                self._accepted_at_valid = self.scheduler.stats["accepted"]
        frames = None
        if self.cameras is not None:
            got = self.cameras.snapshot()
            if len(got) < len(self.step.cameras):
                return self._publish_hold(HOLD_NO_FRAME, now)
            frame_age = (time.time_ns() - min(stamp for _, stamp, _ in got.values())) / 1e9
            if self.reader is None:
                age = self.last_latent_age_s = frame_age
            if frame_age > self.cfg.latent.max_age_s:  # the frames stand where a latent would
                return self._publish_hold(HOLD_STALE_FRAME, now)
            frames = {c: img for c, (img, _, _) in got.items()}
        if self.lockstep:
            if sample.version == self._lockstep_version:
                # The rest of the same chunk, no re-planning; when it has run out, ask for the next.
                if not self._publish_plan(now):
                    self._request_latent(now, sample.version)
                return None
            self._lockstep_version = sample.version
        with self._state_lock:
            complete = self.measured.complete
            state = self.measured.values[self._state_idx]
        if not complete:
            return self._publish_hold(HOLD_PROPRIO_INCOMPLETE, now)
        return self._latent_view, age, state, frames

    def _guarded_tick(self, tick: int, scheduled_s: float) -> None:
        """One tick; an exception in it is counted and turned into a HOLD instead of ending the loop.

        The middleware may refuse a publish: Fast DDS's asynchronous writer gives up after its
        blocking time (rclpy raises ``RCLError: cannot publish data``), most likely when its sender
        thread was preempted while holding the writer (seen in CI and in loaded runs on 2 cores; a
        publish that blocks 20–70 ms without failing is more common). The HOLD request then often fails too;
        that is counted and the loop goes on: the bridge holds on its watchdog meanwhile, and the
        next tick publishes again. (An exception leaving this method would end the loop thread and
        leave a node that is up but silent.)
        """
        try:
            self._tick_fn(tick, scheduled_s)
        except Exception as e:  # noqa: BLE001 - the loop must outlive any one tick; the hold says why
            self.counters["tick_errors"] += 1
            self.last_tick_error = e
            try:
                self._publish_hold(HOLD_TICK_ERROR, time.monotonic())
            except Exception:  # noqa: BLE001 - the same refusal, most likely; see above
                self.counters["hold_publish_errors"] += 1

    def _tick(self, tick: int, scheduled_s: float) -> None:
        """``scheduler.inference: inline``: inference inside the tick."""
        now = time.monotonic()
        self.counters["ticks"] += 1
        seen = self._observe(now)
        if seen is None:
            return None
        latent, age, state, frames = seen
        prefix = self.scheduler.prefix(now, None, self.horizon) if self.use_prefix or self.selector else None
        try:  # decode refuses non-finite values and a wrong shape (ValueError)
            res = self._run_step(state, prefix, None if self._latent_in_feeds else latent, 0, frames, age)
        except (KeyError, ValueError):
            return self._publish_hold(HOLD_BAD_OUTPUT, time.monotonic())
        self.loop.stats.report_inference_ns(res.infer_ns)
        if res.infer_ns / 1e9 > self.infer_budget_s:
            self.counters["overruns"] += 1
            return self._publish_hold(HOLD_OVERRUN, time.monotonic())
        after = time.monotonic()
        try:
            self.scheduler.submit(res.chunk, obs_time_s=now, now_s=after)
        except ValueError:
            return self._publish_hold(HOLD_BAD_OUTPUT, after)
        self.counters["chunks"] += 1
        self._publish_plan(after)
        if self.features_pub.get_subscription_count() > 0:  # the detector listens; skip the work otherwise
            self._publish_features(latent, res.raw, age, res.infer_ns / 1e6, hold=False)

    # ----------------------------------------------------------------- inference off the tick
    def _tick_worker(self, tick: int, scheduled_s: float) -> None:
        """``scheduler.inference: async | sync``: the loop streams the plan; the worker infers."""
        now = time.monotonic()
        self.counters["ticks"] += 1
        worker = self.worker
        seen = self._observe(now)  # a hold there also drops what is in flight (observed before it)
        if seen is None:
            return None
        latent, age, state, frames = seen
        done = worker.take()
        if done is not None:
            self._merge(done, now)
        if worker.busy:
            if worker.in_flight_s(now) > self.max_inference_s:
                if not self._stalled:
                    self._stalled = True
                    self.counters["overruns"] += 1
                return self._publish_hold(HOLD_OVERRUN, now)
        else:
            self._stalled = False
            sched = self.scheduler
            plan_end = sched.active_until()
            if self.inference == "sync":
                delay = 0.0
            else:
                delay = sched.delay_percentile_s(self.delay_percentile) or 0.0
            self._delay_plan_s = delay
            if self.trigger.due(now, self._chunk_obs if plan_end is not None else None, plan_end, delay):
                self._start_inference(now, latent, age, state, frames, plan_end, delay)
        if self.scheduler.active_until() is None or self.scheduler.active_until() < now:
            return self._publish_hold(HOLD_AWAITING_CHUNK if worker.busy else HOLD_PLAN_ENDED, now, drop=False)
        self._publish_plan(now)
        return None

    def _start_inference(self, now: float, latent, age: float, state: np.ndarray, frames: dict | None,
                         plan_end: float | None, delay: float) -> None:
        """Hand a snapshot of the observation (and the executing plan, for RTC) to the worker.

        The latent is copied (every tensor: the reader overwrites the loop's buffers on the next tick);
        the frames are references to received messages, which nothing changes.
        """
        prefix, exec_steps = None, 0
        if (self.use_prefix or self.selector is not None) and plan_end is not None:  # RTC; the verifier's plan
            prefix = self.scheduler.prefix(now, delay, self.horizon)
            # RTC's s: steps of the executing plan already run (H minus the steps it has left).
            left = int(math.floor((plan_end - now) * self.chunk_rate + 1e-9)) + 1
            exec_steps = max(0, self.horizon - left)
        if isinstance(latent, dict):
            latent = {name: t.copy() for name, t in latent.items()}
        elif latent is not None:
            latent = latent.copy()
        # Until when the arm moves while this inference runs: to the executing plan's end (None: it holds,
        # as in stop-and-go, which holds from now on). The merge starts the chunk by it (_merge).
        moving_until = None if self.inference == "sync" else plan_end
        request = (now, state.copy(), latent, prefix, exec_steps, age, frames, moving_until)
        if self.worker.submit(request, now):
            self.counters["inferences"] += 1
            if self.inference == "sync":  # stop-and-go: the robot waits for the inference
                self.scheduler.hold()

    def _infer_request(self, request):
        """The worker's function (its thread): one chunk from a snapshot; errors go back to the loop."""
        obs, state, latent, prefix, exec_steps, age, frames, moving_until = request
        res = self._run_step(state, prefix, latent, exec_steps, frames, age)
        return obs, res, latent, age, moving_until

    def _merge(self, done, now: float) -> None:
        """A finished inference: merge its chunk unless a hold came after its observation."""
        if done.error is not None:
            self.counters["inference_errors"] += 1
            return self._publish_hold(HOLD_BAD_OUTPUT, now)
        obs, res, latent, age, moving_until = done.result
        self.loop.stats.report_inference_ns(res.infer_ns, in_step=False)  # the worker's: the tick's overhead stays
        if obs <= self._drop_before:
            self.counters["chunks_dropped"] += 1
            return None
        if self._consensus:  # the plan this chunk replaces, on its grid, before the merge
            end = self.scheduler.active_until()
            plan = None if end is None else self.scheduler.prefix(obs, 0.0, self.horizon)[0]
            overlap = 0 if end is None else max(0, int(math.floor((end - obs) * self.chunk_rate + 1e-9)) + 1)
            self.trigger.observe(res.chunk, plan, overlap, max(0, math.ceil((now - obs) * self.chunk_rate - 1e-9)))
        try:
            # Only the time the arm moved since the observation used up actions of the chunk. While it
            # held (stop-and-go, the first chunk after a HOLD, a plan that ended during the inference)
            # none passed: skipping them would jump the held arm ahead along the path in the blend.
            moved = 0.0 if moving_until is None else min(max(moving_until, obs), now) - obs
            skipped = self.scheduler.submit(res.chunk, obs_time_s=obs, now_s=now, start_s=now - moved)
            if skipped < 0:
                self.counters["chunks_dropped"] += 1
                return None
        except ValueError:  # non-finite chunk
            return self._publish_hold(HOLD_BAD_OUTPUT, now)
        self._chunk_obs = obs
        self.counters["chunks"] += 1
        self.counters["skipped_actions"] += skipped  # actions whose time the arm spent moving during inference
        if self.features_pub.get_subscription_count() > 0:
            self._publish_features(latent, res.raw, age + (now - obs), res.infer_ns / 1e6, hold=False)
        return None

    def _request_latent(self, now: float, version: int) -> None:
        """Lockstep: ask the slow path for a step (once per latent version; again after 1 s)."""
        if version == self._requested_version and now - self._request_t < 1.0:
            return
        self._requested_version, self._request_t = version, now
        msg = Header()
        msg.stamp = ns_to_stamp(time.time_ns())
        msg.frame_id = str(version)
        self.request_pub.publish(msg)
        self.counters["sync_requests"] += 1

    def _publish_plan(self, now: float) -> bool:
        """Publish the plan window from ``now``; False (and a HOLD request) when the plan has ended."""
        if self.gate.awaiting_first_chunk and self.scheduler.stats["accepted"] > self._accepted_at_valid:
            self.gate.chunk_merged(now)  # the new instruction's first chunk is in this plan
        times, values = self.scheduler.window(now, self.max_points, self.dt_cmd)
        n = len(times)
        if n == 0:
            self._publish_hold(HOLD_PLAN_ENDED, now)
            return False
        stamp_ns = int(times[0] * 1e9) + self.mono_to_wall_ns
        if self._plan_encoder is not None:
            self.plan_pub.publish(self._plan_encoder.encode(stamp_ns, values))
            return True
        msg = self.plan_msg
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.header.frame_id = "plan"
        # Points are preallocated with fixed time_from_start (k · dt_cmd); only positions change.
        # array('d') is the type rclpy's setter takes without a per-element check.
        for pt, row in zip(self._points, values):
            buf = array("d")
            buf.frombytes(row.tobytes())
            pt.positions = buf
        msg.points = self._points[:n]
        self.plan_pub.publish(msg)
        return True

    def _take_instruction(self, now: float) -> None:
        """A message came on /vla/instruction: a different instruction interrupts the plan at once.

        The latent stops being valid (:class:`InstructionGate`), inference in flight (observed before
        now) is dropped, and the executing plan is replaced by a stop: from the commanded position
        and velocity (the plan sampled now and one command period later) to rest within the joints'
        acceleration limits × ``safety.acceleration_scale`` (core/interruption.stopping_profile).
        """
        with self._instr_lock:
            got, self._instr_new = self._instr_new, None
        if got is None or not self.gate.instruction_arrived(*got):
            return
        self._drop_before = max(self._drop_before, now)
        self._chunk_obs = None  # the next valid latent starts an inference at once
        times, values = self.scheduler.window(now, 2, self.dt_cmd)
        if len(times) < 2:  # holding, or the plan ends now: nothing to stop
            self.last_stop_s, self.last_stop_distance = 0.0, 0.0
            return
        velocity = (values[1] - values[0]) / (times[1] - times[0])
        stop = stopping_profile(values[0], velocity, self._accel_bounds, self.dt_cmd)
        self.scheduler.replace(stop.points, now, stop.dt_s)
        self.last_stop_s = stop.duration_s
        self.last_stop_distance = float(stop.stop_distance.max())

    def _publish_stopping(self, now: float) -> None:
        """While a new instruction waits for its latent: the stop while it lasts, then HOLD."""
        end = self.scheduler.active_until()
        if end is not None and end >= now and self._publish_plan(now):
            return None
        return self._publish_hold(HOLD_NEW_INSTRUCTION, now)

    def _publish_hold(self, reason: str, now: float, drop: bool = True) -> None:
        """Ask for HOLD; ``drop``: a chunk in flight (observed before now) is not merged afterwards."""
        self.counters["hold_ticks"] += 1
        self.last_hold_reason = reason
        if drop:
            self._drop_before = now
        self.scheduler.hold()
        msg = JointTrajectory()
        msg.joint_names = self.dim_names
        msg.header.stamp = ns_to_stamp(int(now * 1e9) + self.mono_to_wall_ns)
        msg.header.frame_id = reason
        self.plan_pub.publish(msg)

    def _publish_features(self, latent, raw: np.ndarray, age: float, infer_ms: float, hold: bool) -> None:
        f = self.step.features_into(self._features, latent, raw, age, infer_ms, hold)
        buf = array("f")
        buf.frombytes(f.tobytes())
        self.features_msg.data = buf
        self.features_pub.publish(self.features_msg)

    def _reset_stats(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Start timing statistics afresh (benchmarks call this once the graph is warm)."""
        if self.loop is None:
            response.success, response.message = False, "loop not running"
            return response
        self.loop.stats.reset()
        for k in self.counters:
            self.counters[k] = 0
        self._tick_errors_logged = 0
        response.success, response.message = True, "timing statistics reset"
        return response

    def _publish_diagnostics(self) -> None:
        if self.loop is None:
            return
        s = self.loop.stats.summary()
        values = {
            "achieved_hz": s.get("achieved_hz"),
            "period_jitter_ms_p99": (s.get("period_jitter_ms") or {}).get("p99"),
            "deadline_miss_rate": s.get("deadline_miss_rate"),
            "infer_ms_p50": (s.get("infer_ms") or {}).get("p50"),
            "infer_ms_p99": (s.get("infer_ms") or {}).get("p99"),
            "overhead_ms_p99": (s.get("overhead_ms") or {}).get("p99"),
            "latent_version": self.last_latent_version,
            "latent_age_s": round(self.last_latent_age_s, 3),
            "delay_estimate_s": self.scheduler.delay_estimate_s,
            "inference": self.inference,
            "execution_horizon_steps": self.trigger.steps,
            "horizon_policy": "consensus" if self._consensus else "fixed",
            **({"consensus_agreed": self.trigger.agreed, "consensus_parted": self.trigger.parted}
               if self._consensus else {}),
            "candidates": self.selector.n if self.selector is not None else 1,
            **({"candidates_changed": self.selector.changed,
                "candidate_spread": round(self.selector.last.spread, 6) if self.selector.last else 0.0}
               if self.selector is not None else {}),
            "delay_planned_s": round(self._delay_plan_s, 4),
            "inference_in_flight_s": round(self.worker.in_flight_s(time.monotonic()), 3) if self.worker else 0.0,
            "rtc_guided_chunks": getattr(self.step, "guided", 0),
            "last_hold_reason": self.last_hold_reason,
            "interruptions": self.gate.interruptions,
            "instruction_to_latent_ms": self.gate.last_instruction_to_latent_ms,
            "instruction_to_first_chunk_ms": self.gate.last_instruction_to_first_chunk_ms,
            "last_stop_s": round(self.last_stop_s, 3),
            "last_stop_distance": round(self.last_stop_distance, 4),
            "provider": self.engine.provider,
            **self.counters,
            **self._js_check.rejections.as_diagnostics("joint_states_rejected"),
            **(self.frame_rejections.as_diagnostics("images_rejected") if self.cameras is not None else {}),
            "last_tick_error": "" if self.last_tick_error is None else repr(self.last_tick_error),
            "timing_json": json.dumps(s),
        }
        level, message = (0 if self.scheduler.status.name == "RUNNING" else 1), self.scheduler.status.name
        errors = self.counters["tick_errors"]
        if errors > self._tick_errors_logged:  # the loop never logs; this 1 Hz timer says it for it
            self.get_logger().warning(f"fast loop: {errors - self._tick_errors_logged} tick(s) failed and held "
                                      f"({self.counters['hold_publish_errors']} HOLD request(s) could not be "
                                      f"published either); last: {self.last_tick_error!r}")
            self._tick_errors_logged = errors
        if self.loop.error is not None:  # the loop thread ended: nothing is published any more
            level, message = 2, f"fast loop stopped: {self.loop.error!r}"
            if not self._loop_death_logged:
                self._loop_death_logged = True
                self.get_logger().error(f"{message}; the bridge holds on its watchdog; restart the node")
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [diagnostic_status(DIAG_FAST_PATH, level, message, values)]
        self.diag_pub.publish(arr)


#: Fast DDS publication mode of this process. SYNCHRONOUS (rmw_fastrtps' default) sends from the
#: publishing thread, so the loop would wait on every subscriber's transport: measured on a 2-core
#: machine, plan publish p99 2.9 ms synchronous vs 0.25 ms asynchronous (the middleware's own
#: thread sends). An explicit RMW_FASTRTPS_PUBLICATION_MODE in the environment wins.
PUBLICATION_MODE = "ASYNCHRONOUS"


def main(argv: list[str] | None = None) -> None:
    """Console script ``action_chunk_node --config FILE`` (or ``-p config_file:=…``)."""
    # The interpreter offers the GIL to another thread every 0.5 ms (the default 5 ms would let the
    # executor's callback thread delay the deadline loop by up to 5 ms), real-time or not.
    sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL_S)
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", PUBLICATION_MODE)
    run_node(ActionChunkNode, argv)


if __name__ == "__main__":
    main()
