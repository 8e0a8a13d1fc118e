"""slow_reasoner: camera image(s) + instruction → latent guidance, at its own pace.

The VLM (the model package's slow graph, through core/policy.SlowStep) runs on its own thread on
the newest frame of each camera; old frames are never queued. Each result goes into the latent
buffer with the stamp of the observation it came from, so the fast path knows how old its guidance
is. A new instruction (topic ``/vla/instruction`` or the ``instruction`` parameter) takes effect
on the next slow step. A different instruction on the topic is stepped on at once (the pacing to
``slow_hz`` is skipped), on the first frames taken after it arrived: the fast path refuses a latent
observed before a new instruction (core/interruption), so a step on an older frame would be wasted.

Parameters: ``config_file`` (the runtime YAML), ``instruction`` (overrides the config's),
``extra_latency_ms`` (adds latency to each slow step: emulates a heavier VLM or a remote link),
``autostart`` (configure + activate on start), ``step_on_request`` (false).

Packages of schema 2 (imported policies) run through :class:`~vla_runtime.core.policy.LatentSlowStep`:
several cameras at the package's sizes, the policy's own tokenizer and prompt, the robot state where
the slow part takes it (SmolVLA's state token, π0.5's state prompt, Diffusion Policy's window of
``n_obs_steps`` observations: the node then also subscribes to ``/joint_states``) and a latent of
several named tensors (a K/V prefix cache), written to the buffer as one version with one
observation stamp (the oldest of the frames and the state it used).

Slow-path caching (config ``slow_cache``, off by default; logic in core/slow_cache): before each
step the frames (reduced grey images), the instruction and, where the slow part takes it, the state
are compared with those of the last COMPUTED step. Unchanged within the thresholds and younger than
``max_reuse_s``: the step is not computed; the cached latent is *re-validated* for the new frames and
written again, as a new version, with the new frames' observation stamp (so a static scene keeps the
fast path's latent fresh). No new frame → nothing is written and the latent ages as without the
cache. Diagnostics: ``steps_computed``, ``steps_reused``, ``cache_change_score`` (last score,
intensity units), ``cache_last_decision``, ``cache_compute_saved_ms``, ``cache_recompute_<reason>``.

``step_on_request:=true`` is the stop-and-go (synchronous) baseline: instead of running at its own
pace, the node waits for a request on ``/vla/sync/request`` (std_msgs/Header, stamped when the
requester's chunk ran out), takes the first frame captured AFTER that stamp, runs one step and
writes the latent. Observation, inference and execution then alternate, as in a single-frequency
VLA that blocks on inference.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String

from vla_runtime.core.contract import (
    DIAG_SLOW_PATH,
    TOPIC_DIAGNOSTICS,
    TOPIC_INSTRUCTION,
    TOPIC_JOINT_STATES,
    TOPIC_SYNC_REQUEST,
)
from vla_runtime.core.slow_cache import SlowCache
from vla_runtime.core.validation import FUTURE_STAMP, MALFORMED, Rejections, stamp_lead
from vla_runtime.engines.base import LatencyStats
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    WorkerLifecycle,
    diagnostic_status,
    guarded,
    latent_buffer_config,
    load_node_config,
    run_node,
    stamp_to_ns,
)

ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True)}


class SlowReasonerNode(WorkerLifecycle, LifecycleNode):
    """Runs the slow (VLM) graph on the newest camera frames and writes the latent buffer."""

    def __init__(self, **kwargs) -> None:
        super().__init__("slow_reasoner", **kwargs)
        self.cfg = load_node_config(self)
        self.declare_parameter("instruction", self.cfg.instruction)
        self.declare_parameter("extra_latency_ms", 0.0)
        self.declare_parameter("autostart", True)
        self.declare_parameter("step_on_request", False)
        self.step_on_request = bool(self.get_parameter("step_on_request").value)
        self._request = threading.Event()
        self._request_ns = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._frames: dict[str, tuple[np.ndarray, int]] = {}  # camera → (image, stamp_ns)
        self._new_frame = threading.Event()
        self._instruction = str(self.get_parameter("instruction").value)
        self._instruction_ns = 0  # receive time of a new instruction no step has used yet (0: none)
        self._wake = threading.Event()  # a new instruction: stop pacing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.package = None
        self.step = None  # the policy step (core/policy.SlowStep or LatentSlowStep), built in on_configure
        self.writer = None
        self.measured = None  # the robot state, when the slow part takes it (MeasuredState)
        self._state_ns = 0
        self.window = None  # the observation window (n_obs_steps > 1)
        self.waiting_for_state = 0
        self.rejected_images = 0
        self.rejections = Rejections()
        self.steps = 0
        self.latency = LatencyStats(256)
        self.step_times = LatencyStats(256)
        self.last_obs_ns = 0
        # Slow-path caching (core/slow_cache), when the config turns it on: None → every step computes.
        cc = self.cfg.slow_cache
        self.cache = SlowCache(cc.image_threshold, cc.state_tolerance_rad, cc.max_reuse_s) if cc.enabled else None
        self.add_on_set_parameters_callback(self._on_params)

    # ----------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from vla_runtime.core.latent_buffer import open_latent_writer
        from vla_runtime.core.measured_state import MeasuredState
        from vla_runtime.core.policy import LatentSlowStep, ObservationWindow, SlowStep
        from vla_runtime.engines.model_package import load_model_package

        try:
            self.package = load_model_package(
                self.cfg.model_package_path, slow=self.cfg.model.slow_engine, parts=("slow",)
            )
            spec = self.package.spec
            cams = [c.name for c in self.cfg.cameras]
            if spec.schema_version >= 2:
                self.step = LatentSlowStep.from_package(self.package, cams)
                if spec.latent.is_multi:
                    bcfg = latent_buffer_config(self.cfg, (1, 1)).with_tensors(self.step.latent_layout())
                else:
                    bcfg = latent_buffer_config(self.cfg, (spec.latent.tokens, spec.latent.dim), spec.latent.dtype)
                if self.step.needs_state:
                    self.measured = MeasuredState.for_robot(self.package.proprio.names, self.cfg.robot)
                if spec.n_obs_steps > 1:
                    self.window = ObservationWindow(spec.n_obs_steps)
            else:
                self.step = SlowStep.from_package(self.package, cams)
                shape = (spec.latent.tokens, spec.latent.dim)
                bcfg = latent_buffer_config(self.cfg, shape, spec.latent.dtype)
            self.writer = open_latent_writer(bcfg)
            self.package.slow_engine.warmup(2)
        except Exception as e:  # noqa: BLE001 - any failure to load means: do not run
            self.get_logger().fatal(f"slow_reasoner cannot configure: {e}")
            return TransitionCallbackReturn.FAILURE
        cams = {c.name: c for c in self.cfg.cameras}
        self._subs = [
            self.create_subscription(Image, cams[name].topic, guarded(self, self._image_cb(name)), QOS_SENSOR)
            for name in self.step.cameras
        ]
        self.create_subscription(String, TOPIC_INSTRUCTION, guarded(self, self._instruction_cb), QOS_LATCHED)
        if self.measured is not None:
            self.create_subscription(JointState, TOPIC_JOINT_STATES, guarded(self, self._joint_cb), QOS_SENSOR)
        if self.step_on_request:
            self.create_subscription(Header, TOPIC_SYNC_REQUEST, guarded(self, self._request_cb), QOS_COMMAND)
        self.diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"slow path ready: {self.package.spec.name} on {self.package.slow_engine.provider}, "
            f"cameras {self.step.cameras}, latent {self.cfg.latent.transport}:{self.cfg.latent.name}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="slow_reasoner", daemon=True)
        self._thread.start()
        return super().on_activate(state)

    def _stop_work(self) -> None:
        """Stop the slow loop (``WorkerLifecycle``; ``_release`` frees the engine and the latent
        buffer)."""
        self._stop.set()
        self._new_frame.set()
        self._request.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _release(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.package is not None:
            self.package.close()
            self.package = None

    # ----------------------------------------------------------------- callbacks (never block)
    def _image_cb(self, camera: str):
        def cb(msg: Image) -> None:
            enc = ENCODINGS.get(msg.encoding)
            if enc is None or msg.height == 0 or msg.width == 0 or len(msg.data) != msg.height * msg.step \
                    or msg.step < msg.width * 3:
                self.rejected_images += 1
                self.rejections(MALFORMED, f"camera {camera}: {msg.encoding} {msg.width}x{msg.height} step "
                                           f"{msg.step} with {len(msg.data)} bytes")
                return
            stamp = stamp_to_ns(msg.header.stamp)
            why = stamp_lead(stamp, time.time_ns(), self.cfg.safety.max_stamp_lead_s)
            if why is not None:  # its latent would look fresh for as long as the lead lasts
                self.rejected_images += 1
                self.rejections(FUTURE_STAMP, f"camera {camera}: {why}")
                return
            buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
            img = buf[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
            if enc[1]:
                img = img[..., ::-1]
            with self._lock:
                self._frames[camera] = (img, stamp)
            self._new_frame.set()

        return cb

    def _joint_cb(self, msg: JointState) -> None:
        if len(msg.name) != len(msg.position):
            self.rejections(MALFORMED, f"joint state with {len(msg.name)} names and {len(msg.position)} positions")
            return
        pos = np.asarray(msg.position, dtype=np.float64)
        if not np.all(np.isfinite(pos)):
            self.rejections(MALFORMED, "joint state with non-finite positions")
            return
        with self._lock:
            self.measured.update_joints(tuple(msg.name), pos)
            self._state_ns = stamp_to_ns(msg.header.stamp)

    def _state_snapshot(self) -> tuple[np.ndarray | None, int]:
        """The robot state in the package's proprio order and its stamp, or (None, 0) before it is complete."""
        with self._lock:
            if self.measured is None or not self.measured.complete:
                return None, 0
            return self.measured.values[: len(self.measured.names)].copy(), self._state_ns

    def _step_state(self, obs_ns: int) -> tuple[np.ndarray | None, int] | None:
        """The robot state this step uses (None where the slow part takes none) and the step's
        observation stamp (the oldest of the frames and the state), or None while no state has come."""
        if self.measured is None:
            return None, obs_ns
        state, state_ns = self._state_snapshot()
        if state is None:
            self.waiting_for_state += 1
            return None
        return state, (min(obs_ns, state_ns) if state_ns else obs_ns)

    def _latent(self, frames: dict[str, np.ndarray], instruction: str, state: np.ndarray | None):
        """One slow step on these frames (and state): the latent to write."""
        from vla_runtime.core.policy import LatentSlowStep

        if not isinstance(self.step, LatentSlowStep):
            return self.step.run(frames, instruction).latent
        if self.window is not None:
            frames, state = self.window.push(frames, state if state is not None else np.zeros(0))
            if self.measured is None:
                state = None
        tensors = self.step.run(frames, instruction, state).tensors
        spec = self.package.spec
        if not spec.latent.is_multi:
            return next(iter(tensors.values())).reshape(spec.latent.tokens, spec.latent.dim)
        return tensors

    def _request_cb(self, msg: Header) -> None:
        with self._lock:
            self._request_ns = max(self._request_ns, stamp_to_ns(msg.stamp))
            self.requests += 1
        self._request.set()

    def _instruction_cb(self, msg: String) -> None:
        with self._lock:
            if msg.data != self._instruction:
                self._instruction_ns = time.time_ns()
                self._wake.set()
            self._instruction = msg.data

    def _on_params(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "instruction":
                with self._lock:
                    self._instruction = str(p.value)
            elif p.name == "extra_latency_ms" and float(p.value) < 0:
                return SetParametersResult(successful=False, reason=f"extra_latency_ms must be >= 0, got {p.value}")
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- slow loop
    def _run(self) -> None:
        min_period = 1.0 / self.cfg.rates.slow_hz
        last_stamps: dict[str, int] = {}
        next_start = time.monotonic()
        while not self._stop.is_set():
            after_ns = 0
            if self.step_on_request:  # stop-and-go: one step per request, on a frame taken after it
                if not self._request.wait(timeout=0.5):
                    continue
                if self._stop.is_set():
                    return
                self._request.clear()
                with self._lock:
                    after_ns = self._request_ns
            else:
                # Pace to slow_hz first, then take the newest frames: a frame that arrived during
                # the wait is used, not the one that woke us (which would be up to a period older).
                delay = next_start - time.monotonic()
                if delay > 0 and not self._instruction_ns:
                    self._wake.wait(delay)
                if self._stop.is_set():
                    return
            with self._lock:
                instruction_ns = self._instruction_ns
            self._wake.clear()
            after_ns = max(after_ns, instruction_ns)  # a new instruction: frames taken after it
            self._new_frame.wait(timeout=0.5)
            if self._stop.is_set():
                return
            self._new_frame.clear()
            with self._lock:
                frames = dict(self._frames)
            fresh = not after_ns or all(s >= after_ns for _, s in frames.values())
            if len(frames) < len(self.step.cameras) or not fresh \
                    or all(last_stamps.get(c) == s for c, (_, s) in frames.items()):
                if self.step_on_request:
                    self._request.set()  # same request, next frame
                continue  # incomplete, or nothing new since the last step (or the request)
            with self._lock:
                instruction = self._instruction
                if self._instruction_ns == instruction_ns:  # not replaced by a newer one since
                    self._instruction_ns = 0
            t0 = time.monotonic()
            got = self._step_state(min(s for _, s in frames.values()))
            if got is None:  # the slow part takes the robot state and none has come yet
                if self.step_on_request:
                    self._request.set()
                continue
            state, obs_ns = got
            images = {c: img for c, (img, _) in frames.items()}
            if self.cache is not None and self.cache.check(images, instruction, state, obs_ns).reuse:
                # Re-validated: these frames (and state) were checked equal, within the thresholds, to
                # those the cached latent was computed from; it is written again with THEIR stamp.
                self.writer.write(self.cache.latent, obs_ns)
                self.cache.reused()
            else:
                latent = self._latent(images, instruction, state)
                extra = float(self.get_parameter("extra_latency_ms").value) / 1000.0
                if extra > 0 and self._stop.wait(extra):
                    return
                self.writer.write(latent, obs_ns)
                compute_ms = (time.monotonic() - t0) * 1e3
                self.latency.record(compute_ms)  # computed steps only: the model's latency
                if self.cache is not None:
                    self.cache.computed(_own_copy(latent), instruction, state, obs_ns, compute_ms)
            t1 = time.monotonic()
            if self.steps:
                self.step_times.record((t1 - self._last_step) * 1e3)
            self._last_step = t1
            self.steps += 1
            self.last_obs_ns = obs_ns
            last_stamps = {c: s for c, (_, s) in frames.items()}
            next_start = t0 + min_period

    def _publish_diagnostics(self) -> None:
        if self.writer is None:
            return
        period = self.step_times.percentile(50)
        age = (time.time_ns() - self.last_obs_ns) / 1e9 if self.last_obs_ns else float("nan")
        values = {
            "rate_hz": round(1000.0 / period, 2) if period and period > 0 else 0.0,
            "latency_ms_p50": round(self.latency.percentile(50), 2),
            "latency_ms_p99": round(self.latency.percentile(99), 2),
            "latent_version": self.writer.version,
            "latent_age_s": round(age, 3),
            "steps": self.steps,
            "cache_enabled": self.cache is not None,
            **(self.cache.as_diagnostics() if self.cache is not None
               else {"steps_computed": self.steps, "steps_reused": 0}),
            "sync_requests": self.requests,
            "waiting_for_state": self.waiting_for_state,
            "rejected_images": self.rejected_images,
            **self.rejections.as_diagnostics("images_rejected"),
            "provider": self.package.slow_engine.provider if self.package else "",
        }
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [diagnostic_status(DIAG_SLOW_PATH, 0, "running", values)]
        self.diag_pub.publish(arr)


def _own_copy(latent):
    """A copy of a latent (one array or name → array) that no later engine run can overwrite."""
    if isinstance(latent, np.ndarray):
        return latent.copy()
    return {name: np.array(t, copy=True) for name, t in latent.items()}


def main(argv: list[str] | None = None) -> None:
    """Console script ``slow_reasoner --config FILE`` (or ``-p config_file:=…``)."""
    run_node(SlowReasonerNode, argv)


if __name__ == "__main__":
    main()
