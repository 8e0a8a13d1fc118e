"""Validated runtime configuration: one YAML file describes a whole deployment.

A config file holds the robot profile (joints, limits, controller groups), the model package and
its engines, loop rates, the latent-buffer transport, chunk scheduling, safety thresholds, teleop
mappings, the simulated robot (when used) and which nodes to start. Every node of the graph reads
the same file (``config_file`` parameter) and takes the section it needs, so ``vla-runtime up``,
``ros2 launch`` and the tests all start the same graph from one source of truth.

A file may ``include:`` another (path relative to itself); the including file's keys are merged
over the included one's, recursively for mappings.

Every model is frozen and forbids unknown keys, so a misspelled key is an error, not a silent
default. :func:`load_config` raises :class:`ConfigError` listing *every* bad field with its value
and the rule it broke.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vla_runtime.core.controller_kinds import KINDS
from vla_runtime.core.robot_ceilings import limit_problems

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: The config's ``controller`` values: the kinds in :mod:`vla_runtime.core.controller_kinds`.
ControllerType = Literal[tuple(KINDS)]  # type: ignore[valid-type] - the one table of controller kinds

NodeName = Literal[
    "sim_robot", "slow_reasoner", "action_chunk_node", "controller_bridge", "failure_detector", "teleop",
    "recorder",
]


class ConfigError(ValueError):
    """A configuration that must not be started. ``problems`` holds one line per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class JointSpec(_Frozen):
    """One joint and its limits (SI units: rad, rad/s, rad/s², N·m; m… for prismatic joints)."""

    name: str = Field(min_length=1)
    position: tuple[float, float] = Field(description="[lower, upper] position limit")
    velocity: float = Field(description="maximum |velocity|")
    acceleration: float = Field(description="maximum |acceleration|")
    effort: float = Field(description="maximum |effort|")
    home: float | None = Field(default=None, description="home/ready position")

    @field_validator("velocity", "acceleration", "effort")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        _finite(info.field_name, v)
        if v <= 0:
            raise ValueError(f"{info.field_name} limit must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _position_order(self) -> JointSpec:
        lo, hi = self.position
        _finite("position limit", lo)
        _finite("position limit", hi)
        if not lo < hi:
            raise ValueError(f"position limits must satisfy lower < upper, got [{lo}, {hi}]")
        if self.home is not None and not lo <= self.home <= hi:
            raise ValueError(f"home {self.home} lies outside the position limits [{lo}, {hi}]")
        return self


class WorkspaceBox(_Frozen):
    """Axis-aligned Cartesian box (in the robot base frame) the end effector must stay inside."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]

    @model_validator(mode="after")
    def _order(self) -> WorkspaceBox:
        for axis, lo, hi in zip("xyz", self.min, self.max):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"workspace {axis}: bounds must be finite, got min={lo}, max={hi}")
            if not lo < hi:
                raise ValueError(f"workspace {axis}: min must be < max, got min={lo}, max={hi}")
        return self


class ControllerGroup(_Frozen):
    """A set of joints driven by one ros2_control controller."""

    controller: ControllerType
    controller_name: str = Field(min_length=1, description="name in controller_manager")
    joints: list[str] = Field(default_factory=list, description="joints in the controller's order")
    topic: str | None = Field(default=None, description="override of /<controller_name>/<suffix>")
    command_rate_hz: float | None = Field(default=None, description="override of rates.command_hz")
    frame_id: str = Field(default="base", description="frame of Cartesian targets")
    ee_link: str | None = Field(default=None, description="end-effector link (Cartesian groups)")
    stiffness: list[float] | None = Field(default=None, description="default impedance stiffness")
    stiffness_limits: tuple[float, float] | None = Field(
        default=None, description="allowed [min, max] for target_stiffness; None = not commandable"
    )
    gripper_range: tuple[float, float] | None = Field(default=None, description="[closed, open]")
    cmd_timeout_s: float | None = Field(
        default=None, gt=0, le=10.0,
        description="the controller's own command timeout (ros2_controllers' cmd_timeout; CRISP's): with no new "
        "command for this long (a trajectory controller: after its trajectory's end) it holds where it is, so a "
        "dead bridge ends in a hold at the controller. Set it in the controller's own parameters on a real robot; "
        "the simulated controllers honour it")

    @property
    def resolved_topic(self) -> str:
        """The controller's command topic."""
        return self.topic or f"/{self.controller_name}/{KINDS[self.controller].topic_suffix}"

    @model_validator(mode="after")
    def _shape(self) -> ControllerGroup:
        if KINDS[self.controller].needs_joints and not self.joints:
            raise ValueError(f"a {self.controller} group needs at least one joint")
        if len(set(self.joints)) != len(self.joints):
            raise ValueError(f"joints listed twice in one group: {self.joints}")
        if self.command_rate_hz is not None and self.command_rate_hz <= 0:
            raise ValueError(f"command_rate_hz must be > 0, got {self.command_rate_hz}")
        if self.controller == "cartesian_impedance" and not self.ee_link:
            raise ValueError("a cartesian_impedance group needs ee_link")
        if self.controller == "cartesian_impedance" and self.command_rate_hz is not None:
            if self.command_rate_hz < 50:
                raise ValueError(
                    f"cartesian_impedance targets must stream at >= 50 Hz, got {self.command_rate_hz}"
                )
        if self.stiffness_limits is not None and not 0 <= self.stiffness_limits[0] < self.stiffness_limits[1]:
            raise ValueError(f"stiffness_limits must be 0 <= min < max, got {list(self.stiffness_limits)}")
        return self


def joint_reference_problems(joint_names: list[str], group_joints: dict[str, list[str]]) -> list[str]:
    """Problems with the joints the groups name: unknown (with a close match) or in two groups."""
    known = set(joint_names)
    problems = []
    owner: dict[str, str] = {}
    for gname, joints in group_joints.items():
        for j in joints:
            if j not in known:
                close = difflib.get_close_matches(str(j), joint_names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"robot.groups.{gname}.joints: unknown joint {j!r}{hint}")
            elif j in owner:
                problems.append(f"robot.groups.{gname}.joints: joint {j!r} is also in group {owner[j]!r}")
            else:
                owner[j] = gname
    return problems


def _raw_margin_problems(data: dict[str, Any]) -> list[str]:
    """The margin check on unvalidated data, so it is reported beside other field errors."""
    try:
        margin = float(data["safety"]["position_margin_rad"])
        joints = [(str(j["name"]), float(j["position"][0]), float(j["position"][1])) for j in data["robot"]["joints"]]
        groups = data["robot"]["groups"].values()
        ranged = {str(j) for g in groups if g.get("controller") == "gripper" and g.get("gripper_range")
                  for j in g.get("joints", [])}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return []
    return margin_problems(margin, [j for j in joints if j[0] not in ranged])


def _raw_joint_reference_problems(data: dict[str, Any]) -> list[str]:
    """The same check on unvalidated data, so it is reported beside other field errors."""
    robot = data.get("robot")
    if not isinstance(robot, dict):
        return []
    joints = robot.get("joints")
    groups = robot.get("groups")
    if not isinstance(joints, list) or not isinstance(groups, dict):
        return []
    names = [j["name"] for j in joints if isinstance(j, dict) and isinstance(j.get("name"), str)]
    group_joints = {
        str(g): [str(j) for j in grp.get("joints", []) or []]
        for g, grp in groups.items()
        if isinstance(grp, dict) and isinstance(grp.get("joints", []), list)
    }
    return joint_reference_problems(names, group_joints)


class RobotProfile(_Frozen):
    """What the runtime must know about a robot: joints, limits and how its controllers are driven."""

    name: str = Field(min_length=1)
    description: str = ""
    base_frame: str = "base"
    joints: list[JointSpec] = Field(min_length=1)
    groups: dict[str, ControllerGroup] = Field(min_length=1)
    hold_controller: str | None = Field(
        default=None, description="controller switched in on halt (None: hold by commanding position)"
    )
    workspace: WorkspaceBox | None = None

    @property
    def joint_names(self) -> list[str]:
        """All joint names in profile order."""
        return [j.name for j in self.joints]

    def joint(self, name: str) -> JointSpec:
        """The spec of a joint by name (KeyError naming it if unknown)."""
        for j in self.joints:
            if j.name == name:
                return j
        raise KeyError(f"unknown joint {name!r}")

    @property
    def controller_names(self) -> list[str]:
        """The controllers that must be active before the policy may drive the robot."""
        return [g.controller_name for g in self.groups.values()]

    @model_validator(mode="after")
    def _consistent(self) -> RobotProfile:
        names = self.joint_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"joint names listed twice: {dupes}")
        problems = joint_reference_problems(names, {g: grp.joints for g, grp in self.groups.items()})
        problems += limit_problems(self.name, self.joints)
        for gname, group in self.groups.items():
            if group.stiffness is not None and group.controller == "joint_impedance":
                if len(group.stiffness) != len(group.joints):
                    problems.append(
                        f"group {gname!r}: stiffness has {len(group.stiffness)} values for "
                        f"{len(group.joints)} joints"
                    )
        topics = [g.resolved_topic for g in self.groups.values()]
        for t in sorted({t for t in topics if topics.count(t) > 1}):
            problems.append(f"two groups publish on {t!r}: one publisher per controller topic")
        if problems:
            raise ValueError("; ".join(problems))
        return self


EngineBackend = Literal["onnxruntime", "tensorrt", "null", "openpi_remote"]
EngineProvider = Literal["cpu", "cuda", "tensorrt"]


class InjectedDelay(_Frozen):
    """Extra latency added to every inference of one engine, to emulate a slower policy (testing only).

    Each call sleeps ``fixed_ms + U(0, jitter_ms)`` after the real inference; the jitter comes from a
    generator seeded with ``seed``, so a run's delays are reproducible. ``hang_after`` makes the engine
    hang for good after that many inferences (the fast path must then hold and the detector halt).
    """

    fixed_ms: float = Field(default=0.0, ge=0, le=60000, description="added to every call")
    jitter_ms: float = Field(default=0.0, ge=0, le=60000, description="plus a uniform draw in [0, jitter_ms]")
    seed: int = Field(default=0, ge=0, description="seed of the jitter's generator")
    hang_after: int | None = Field(
        default=None, ge=0, description="fault injection: after this many inferences every call blocks (a hung driver)")

    @property
    def is_zero(self) -> bool:
        """No delay and no hang at all."""
        return self.fixed_ms == 0 and self.jitter_ms == 0 and self.hang_after is None


class EngineConfig(_Frozen):
    """How to run one ONNX graph (the engines layer takes this model as it is).

    Attributes:
        backend: ``onnxruntime``, ``tensorrt`` (native), ``null`` (zeros; overhead measurement) or
            ``openpi_remote`` (the fast part is a whole policy behind an openpi-protocol server at ``url``,
            e.g. ``vla-runtime serve`` or openpi's ``serve_policy``; our scheduler, safety filter, arbiter
            and detector stay in the loop).
        provider: ONNX Runtime execution provider: ``cpu``, ``cuda`` or ``tensorrt``. The engine
            refuses to run on any other provider than the one asked for.
        device_id: GPU index for GPU providers / native TensorRT.
        intra_op_threads: ORT intra-op threads (0 = ORT default; 1 is steadiest on a busy CPU).
        inter_op_threads: ORT inter-op threads (0 = ORT default).
        graph_optimization: ORT graph optimisation level.
        io_binding: ORT: bind inputs/outputs with preallocated output buffers.
        fp16: TensorRT (EP or native): allow FP16 kernels.
        int8: Native TensorRT: INT8, calibrated from ``calibration_dir``.
        calibration_dir: Directory of ``.npz`` files, one feed dict each (no pickle).
        trt_cache_dir: Where TensorRT engines are cached (None: beside the ONNX file in ``.trt_cache``).
        latency_window: Size of each engine's latency ring buffer.
        url: ``openpi_remote``: the server, ``ws://host:port`` or ``wss://``.
        api_key_file: ``openpi_remote``: a file holding the token sent as ``Authorization: Api-Key <token>``.
        timeout_s: ``openpi_remote``: connect and reply timeout; a server that does not answer in time fails
            the call (the fast path holds), never blocks it.
        inject_delay_ms: Testing only, off by default: extra latency on every inference, either a number
            of milliseconds or ``{fixed_ms, jitter_ms, seed}`` (:class:`InjectedDelay`). The engine then
            reports ``INJECTED DELAY`` in its provider, so diagnostics show it.
    """

    backend: EngineBackend = "onnxruntime"
    provider: EngineProvider = "cpu"
    device_id: int = Field(default=0, ge=0)
    intra_op_threads: int = Field(default=1, ge=0, le=64)
    inter_op_threads: int = Field(default=1, ge=0, le=64)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    io_binding: bool = False
    fp16: bool = False
    int8: bool = False
    calibration_dir: str | None = None
    trt_cache_dir: str | None = None
    latency_window: int = Field(default=1000, ge=1)
    url: str | None = None
    api_key_file: str | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=600)
    inject_delay_ms: InjectedDelay | None = None

    @field_validator("inject_delay_ms", mode="before")
    @classmethod
    def _delay_shorthand(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"inject_delay_ms must be milliseconds or {{fixed_ms, jitter_ms, seed}}, got {v!r}")
        if isinstance(v, (int, float)):
            return {"fixed_ms": v}
        return v

    @field_validator("inject_delay_ms")
    @classmethod
    def _zero_is_off(cls, v: InjectedDelay | None) -> InjectedDelay | None:
        return None if v is not None and v.is_zero else v

    @model_validator(mode="after")
    def _combo(self) -> EngineConfig:
        if self.backend == "tensorrt" and self.provider == "cpu":
            raise ValueError("backend 'tensorrt' runs on the GPU: provider must be 'tensorrt' or 'cuda', got 'cpu'")
        if self.int8 and self.calibration_dir is None:
            raise ValueError("int8 needs calibration_dir (a directory of .npz feed dicts)")
        if self.backend == "openpi_remote":
            if not self.url or not self.url.startswith(("ws://", "wss://")):
                raise ValueError(f"backend 'openpi_remote' needs url: ws://host:port or wss://..., got {self.url!r}")
        elif self.url is not None or self.api_key_file is not None:
            raise ValueError(f"'url'/'api_key_file' apply to backend 'openpi_remote' only, got backend "
                             f"{self.backend!r}")
        return self


class ModelConfig(_Frozen):
    """The model package and the engines for its slow and fast parts."""

    package: str = Field(min_length=1, description="models/<name> dir, relative to the project or this file")
    slow_engine: EngineConfig = EngineConfig()
    fast_engine: EngineConfig = EngineConfig()


#: Highest rates a config may ask for. The fast loop's own maximum here is 400–500 Hz with the null
#: engine (``bench max-rate``); ros2_control updates controllers at ≤ 1 kHz, so commands streamed
#: faster are never executed; a VLM step faster than 100 Hz is not a slow path.
MAX_FAST_HZ = 1000.0
MAX_COMMAND_HZ = 1000.0
MAX_SLOW_HZ = 100.0


class RatesConfig(_Frozen):
    """Loop rates in Hz."""

    fast_hz: float = Field(default=30.0, description="action-chunk loop")
    command_hz: float = Field(default=100.0, description="commands streamed to controllers")
    slow_hz: float = Field(default=5.0, description="upper bound of the slow reasoning rate")

    @model_validator(mode="after")
    def _order(self) -> RatesConfig:
        for name, ceiling in (("fast_hz", MAX_FAST_HZ), ("command_hz", MAX_COMMAND_HZ), ("slow_hz", MAX_SLOW_HZ)):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
            if v > ceiling:
                raise ValueError(f"{name} = {v} is not a physically plausible rate (at most {ceiling:g} Hz)")
        if self.command_hz < self.fast_hz:
            raise ValueError(f"command_hz ({self.command_hz}) must be >= fast_hz ({self.fast_hz})")
        if self.slow_hz > self.fast_hz:
            raise ValueError(f"slow_hz ({self.slow_hz}) must be <= fast_hz ({self.fast_hz})")
        return self


class LatentConfig(_Frozen):
    """Where the slow path's latent guidance travels to the fast path."""

    transport: Literal["inproc", "shm", "zmq"] = "shm"
    name: str = Field(default="vla_latent", pattern=r"^[A-Za-z0-9_.-]+$")
    endpoint: str = Field(default="tcp://127.0.0.1:5557", description="zmq endpoint")
    bind: Literal["writer", "reader"] = "writer"
    server_key: str | None = Field(default=None, description="CURVE key pair base path of the writer")
    client_key: str | None = Field(default=None, description="CURVE key pair base path of the reader")
    authorized_clients_dir: str | None = Field(default=None, description="public keys allowed to subscribe")
    max_age_s: float = Field(default=1.0, gt=0, description="older latent → HOLD")
    max_message_bytes: int = Field(default=1 << 20, gt=0)

    @model_validator(mode="after")
    def _zmq(self) -> LatentConfig:
        if self.transport == "zmq":
            missing = [k for k in ("server_key", "client_key") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"zmq transport needs CURVE keys: set {missing} (see `vla-runtime keys`)")
            if "0.0.0.0" in self.endpoint or self.endpoint.startswith("tcp://*"):
                pass  # explicit wildcard bind is allowed, but only when written out in the config
        return self


class SchedulerConfig(_Frozen):
    """Delay-aware chunk execution."""

    blend_s: float = Field(default=0.1, ge=0, description="cross-fade window at chunk switches")
    interpolation: Literal["linear", "cubic"] = "linear"
    rtc_prefix: bool = Field(default=True, description="condition on the executing prefix when the model allows")
    plan_horizon_periods: float = Field(
        default=3.0, ge=1.0, description="how far ahead each published plan reaches, in fast-loop periods"
    )
    max_infer_overrun: float = Field(
        default=2.0, gt=0, description="inline inference: budget in fast-loop periods; a longer inference → HOLD"
    )
    inference: Literal["async", "inline", "sync"] = Field(
        default="async",
        description="async: inference on a worker thread, started by the execution horizon, the loop never "
                    "waits for it; inline: inference inside each tick (over max_infer_overrun → HOLD); sync: "
                    "stop-and-go on the worker (execute the horizon's steps, the whole chunk if unset; hold while the "
                    "next is computed; start it from its first action)",
    )
    execution_horizon_steps: int = Field(
        default=1, ge=1, le=10000,
        description="async: actions of each chunk executed before the next may take over (1: re-plan as often "
                    "as inference allows)",
    )
    execution_horizon_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="async: the same as a fraction of the chunk (LeRobot's chunk_size_threshold); the larger wins",
    )
    delay_percentile: float = Field(
        default=90.0, ge=50.0, le=100.0,
        description="async: the inference delay the horizon plans for, a percentile of the recent ones",
    )
    max_inference_s: float = Field(
        default=1.0, gt=0, le=30.0,
        description="async/sync: an inference in flight longer than this is a stalled engine → HOLD",
    )
    rtc_jacobian: Literal["auto", "exact", "identity"] = Field(
        default="auto",
        description="flow heads: RTC guidance through the graph's VJP (exact, the paper's), on the clean-chunk "
                    "estimate itself (identity), or exact where the graph exports a VJP (auto)",
    )
    rtc_max_guidance: float = Field(
        default=5.0, ge=0.0, le=100.0,
        description="flow-matching heads: real-time chunking's largest guidance weight (beta); 0 samples "
                    "unguided and merges with the cross-fade",
    )
    candidates: int = Field(
        default=1, ge=1, le=64,
        description="test-time chunk selection: candidate chunks drawn per inference (different noise), of which "
                    "the verifier keeps one; 1 is a single chunk (no selection). Needs a head that samples noise "
                    "(flow matching, diffusion, a one-shot graph with a noise input)",
    )
    verifier: Literal["consistency", "detector", "value"] = Field(
        default="consistency",
        description="candidates > 1: consistency (closest to the executing plan over the overlap), detector "
                    "(lowest learned failure score; the package's detector/ must fit its feature layout), value "
                    "(highest model output with role value; the fast graph must declare one)",
    )
    horizon_policy: Literal["fixed", "consensus"] = Field(
        default="fixed",
        description="async: fixed execution horizon (execution_horizon_steps/fraction), or consensus: execute a "
                    "chunk while successive chunks agree within consensus_tolerance over their overlap "
                    "(up to consensus_max_steps) and re-plan early (consensus_min_steps) when they disagree",
    )
    consensus_tolerance: float = Field(
        default=0.02, gt=0.0, le=1.0,
        description="consensus: largest |difference| (robot units: rad, m) between a new chunk and the executing "
                    "plan at one step for the two to agree there",
    )
    consensus_min_steps: int = Field(default=1, ge=1, le=10000,
                                     description="consensus: execution horizon after a disagreement")
    consensus_max_steps: int = Field(default=16, ge=1, le=10000,
                                     description="consensus: execution horizon while chunks agree")

    @model_validator(mode="after")
    def _consensus_steps(self) -> SchedulerConfig:
        if self.consensus_min_steps > self.consensus_max_steps:
            raise ValueError(f"scheduler.consensus_min_steps ({self.consensus_min_steps}) must be <= "
                             f"consensus_max_steps ({self.consensus_max_steps})")
        if self.horizon_policy == "consensus" and self.inference != "async":
            raise ValueError(f"scheduler.horizon_policy consensus needs inference async, got {self.inference!r}")
        return self


class SafetyConfig(_Frozen):
    """Limits applied before any command leaves the process, and fault thresholds."""

    velocity_scale: float = Field(default=1.0, gt=0, le=1, description="fraction of the joint velocity limits")
    acceleration_scale: float = Field(default=1.0, gt=0, le=1)
    max_joint_step_rad: float = Field(default=0.05, gt=0, le=0.5, description="largest change per command")
    max_cartesian_step_m: float = Field(default=0.01, gt=0, le=0.1)
    position_margin_rad: float = Field(default=0.0, ge=0, description="kept clear of the position limits")
    watchdog_s: float = Field(default=0.2, gt=0, le=2.0, description="no fresh policy command → HOLD")
    joint_state_timeout_s: float = Field(default=0.1, gt=0, le=1.0, description="stale /joint_states → HOLD")
    max_deadline_miss_streak: int = Field(default=3, ge=1)
    max_tracking_error_rad: float = Field(default=0.3, gt=0, le=math.pi)
    max_interventions_per_s: float = Field(
        default=20.0, gt=0, description="safety-filter interventions per second above which the detector halts"
    )
    detector_heartbeat_s: float = Field(default=0.5, gt=0, le=5.0, description="silent detector → HOLD")
    halt_switches_to_hold_controller: bool = True
    controller_check_timeout_s: float = Field(default=2.0, gt=0, le=30.0)
    state_limit_tolerance: float = Field(
        default=0.05, ge=0, le=0.5,
        description="a measured joint position this far outside its limits (rad or m) is still accepted; "
        "farther, the joint state is refused")
    plan_limit_tolerance: float = Field(
        default=1.0, ge=0, le=5.0,
        description="plan values this far outside the range their dim can mean (rad, m) are still accepted and "
        "limited by the safety filter, as a policy near a limit overshoots; farther, the plan is nonsense: "
        "refused, not clipped")
    max_stamp_lead_s: float = Field(
        default=0.5, gt=0, le=5.0, description="a header stamp this far ahead of the receiver's clock is refused")
    plan_window_s: tuple[float, float] = Field(
        default=(1.0, 0.5), description="[past, future]: a plan stamped outside now - past .. now + future is refused")

    @field_validator("plan_window_s")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= 10 and 0 < v[1] <= 5):
            raise ValueError(f"plan_window_s must be [past in (0, 10], future in (0, 5]] seconds, got {list(v)}")
        return v


class DetectorConfig(_Frozen):
    """The failure detector's learned head (the hard monitors always run).

    ``learned``: ``if_present`` (default) — the model package's ``detector/`` head is loaded when the
    package has one, and a head that is there but does not load refuses the start; a package
    without one runs the hard monitors only (said in the log and the diagnostics).
    ``required`` — a head must load. ``off`` — hard monitors only, a head is never loaded.
    """

    learned: Literal["required", "if_present", "off"] = "if_present"
    dir: str | None = Field(default=None, description="head directory (default: <model package>/detector)")


class TeleopConfig(_Frozen):
    """Operator input mapping."""

    device: Literal["none", "spacemouse", "gamepad", "keyboard", "pose"] = "keyboard"
    deadman_button: int | None = Field(default=None, ge=0)
    linear_axes: tuple[int, int, int] = (0, 1, 2)
    angular_axes: tuple[int, int, int] = (3, 4, 5)
    axis_signs: tuple[float, float, float, float, float, float] = (1, 1, 1, 1, 1, 1)
    deadzone: float = Field(default=0.05, ge=0, lt=1)
    max_linear_mps: float = Field(default=0.1, gt=0, le=1.0)
    max_angular_rps: float = Field(default=0.5, gt=0, le=3.0)
    gripper_button: int | None = Field(default=None, ge=0)
    teleop_only_after_halt: bool = True
    group: str | None = Field(default=None, description="controller group teleop drives")
    policy_keeps: list[str] = Field(
        default_factory=list,
        description="shared autonomy: groups the policy keeps driving while the operator has the others "
        "(e.g. [gripper] while the operator moves the arm); empty: the operator takes the whole robot")


class CameraConfig(_Frozen):
    """An image source for the slow path."""

    name: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    width: int = Field(default=224, ge=16, le=4096)
    height: int = Field(default=224, ge=16, le=4096)
    rate_hz: float = Field(default=10.0, gt=0, le=120)


class SlowCacheConfig(_Frozen):
    """Slow-path caching (core/slow_cache): reuse the last latent while frames, instruction and state stand still.

    A reuse re-validates the latent: the new frames were checked against those it was computed from,
    and it is written again with the new frames' stamp (see core/slow_cache). Off by default.
    """

    enabled: bool = Field(default=False, description="reuse the last latent on an unchanged scene")
    image_threshold: float = Field(
        default=10.0, description="largest tolerated change of one grey cell (~1/32 of the long side), 0..255 units"
    )
    state_tolerance_rad: float = Field(
        default=0.01, description="largest tolerated change of one state value, where the slow part takes the state"
    )
    max_reuse_s: float = Field(default=2.0, description="compute again at the latest this long after the observation")

    @model_validator(mode="after")
    def _ranges(self) -> SlowCacheConfig:
        problems = []
        for name, lo, hi, lo_ok in (("image_threshold", 0.0, 255.0, False), ("state_tolerance_rad", 0.0, math.pi, True),
                                    ("max_reuse_s", 0.0, 3600.0, False)):
            v = getattr(self, name)
            if not (math.isfinite(v) and (v >= lo if lo_ok else v > lo) and v <= hi):
                problems.append(f"{name} must be in {'[' if lo_ok else '('}{lo:g}, {hi:g}], got {v}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SimConfig(_Frozen):
    """The MuJoCo robot that stands in for hardware."""

    robot: Literal["panda", "gr1"] = "panda"
    realtime: bool = True
    physics_dt: float = Field(default=0.002, gt=0, le=0.01)
    joint_state_hz: float = Field(default=250.0, gt=0)
    seed: int = 0
    initially_active: list[str] | None = Field(
        default=None, description="controllers active at start (None: every group's controller)"
    )


class ProcessConfig(_Frozen):
    """How the supervisor places node processes on the machine (Jetson: keep the fast path alone)."""

    cpu_affinity: dict[NodeName, list[int]] = Field(
        default_factory=dict, description="node → CPU ids it may run on"
    )
    nice: dict[NodeName, int] = Field(default_factory=dict, description="node → nice value (-20..19)")
    rt_priority: dict[NodeName, int] = Field(
        default_factory=dict,
        description="node → SCHED_FIFO priority (1..98) of its reacting threads: the deadline loop in "
        "action_chunk_node, the executor and DDS receive threads elsewhere (see core/realtime.py)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> ProcessConfig:
        for node, cpus in self.cpu_affinity.items():
            if not cpus or any(c < 0 for c in cpus):
                raise ValueError(f"cpu_affinity.{node} must list CPU ids >= 0, got {cpus}")
        for node, n in self.nice.items():
            if not -20 <= n <= 19:
                raise ValueError(f"nice.{node} must be in -20..19, got {n}")
        for node, prio in self.rt_priority.items():
            if not 1 <= prio <= 98:
                raise ValueError(f"rt_priority.{node} must be in 1..98 (99 is the kernel's), got {prio}")
        return self


#: The fraction of each joint's range a position margin must leave commandable.
MIN_RANGE_LEFT = 0.25


def margin_problems(margin: float, joints: list[tuple[str, float, float]]) -> list[str]:
    """A position margin must leave every position-limited joint (name, lower, upper) at least
    ``MIN_RANGE_LEFT`` of its range: a wider one pins the joint to mid-range, so the policy could
    not move it. (Gripper joints with a ``gripper_range`` are limited by that range instead.)"""
    out = []
    for name, lo, hi in joints:
        left = (hi - lo) - 2 * margin
        if margin > 0 and left < MIN_RANGE_LEFT * (hi - lo):
            out.append(f"safety.position_margin_rad = {margin} leaves joint {name!r} {max(0.0, left):.4g} of its "
                       f"range [{lo}, {hi}] (at least {MIN_RANGE_LEFT:.0%} must stay commandable)")
    return out


class RuntimeConfig(_Frozen):
    """A whole deployment."""

    robot: RobotProfile
    model: ModelConfig
    rates: RatesConfig = RatesConfig()
    latent: LatentConfig = LatentConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    safety: SafetyConfig = SafetyConfig()
    detector: DetectorConfig = DetectorConfig()
    teleop: TeleopConfig = TeleopConfig()
    cameras: list[CameraConfig] = Field(default_factory=list)
    slow_cache: SlowCacheConfig = SlowCacheConfig()
    instruction: str = Field(default="", description="initial instruction")
    sim: SimConfig | None = None
    process: ProcessConfig = ProcessConfig()
    nodes: list[NodeName] = Field(
        default_factory=lambda: ["slow_reasoner", "action_chunk_node", "controller_bridge"]
    )
    source: str = Field(default="", description="file this config was loaded from (set by the loader)")

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, v: list[str]) -> list[str]:
        dupes = sorted({n for n in v if v.count(n) > 1})
        if dupes:
            raise ValueError(f"nodes listed twice: {dupes} (two controller_bridge processes would both "
                             "command the robot)")
        return v

    @model_validator(mode="after")
    def _cross(self) -> RuntimeConfig:
        problems = self._margin_problems()
        for gname, g in self.robot.groups.items():
            period = 1.0 / (g.command_rate_hz or self.rates.command_hz)
            if g.cmd_timeout_s is not None and g.cmd_timeout_s < 3 * period:
                problems.append(f"robot.groups.{gname}.cmd_timeout_s = {g.cmd_timeout_s}: shorter than 3 command "
                                f"periods ({3 * period:.3g} s): the controller would hold between commands")
        if problems:
            raise ValueError("; ".join(problems))
        if "sim_robot" in self.nodes and self.sim is None:
            raise ValueError("nodes include sim_robot but there is no sim: section")
        if self.teleop.group is not None and self.teleop.group not in self.robot.groups:
            raise ValueError(
                f"teleop.group {self.teleop.group!r} is not a robot group ({sorted(self.robot.groups)})"
            )
        unknown = [g for g in self.teleop.policy_keeps if g not in self.robot.groups]
        if unknown:
            raise ValueError(f"teleop.policy_keeps names groups the robot does not have: {unknown}")
        if self.teleop.group is not None and self.teleop.group in self.teleop.policy_keeps:
            raise ValueError(f"teleop.policy_keeps lists {self.teleop.group!r}, the group the operator drives")
        hc = self.robot.hold_controller
        if hc is not None and hc in self.robot.controller_names:
            raise ValueError(f"hold_controller {hc!r} must differ from the policy's controllers")
        # The real-time thread runs inference; it would spin-wait at SCHED_FIFO for ONNX Runtime worker
        # threads of normal priority, which then never get its CPU.
        for node, engine_key in (("action_chunk_node", "fast_engine"), ("slow_reasoner", "slow_engine")):
            eng = getattr(self.model, engine_key)
            if node in self.process.rt_priority and eng.backend == "onnxruntime" and (
                eng.intra_op_threads != 1 or eng.inter_op_threads != 1
            ):
                raise ValueError(
                    f"process.rt_priority.{node} needs model.{engine_key}.intra_op_threads and inter_op_threads "
                    f"= 1 (got {eng.intra_op_threads} and {eng.inter_op_threads}): a SCHED_FIFO thread that "
                    "spin-waits for ONNX Runtime's normal-priority worker threads starves them"
                )
        return self

    @model_validator(mode="after")
    def _slow_cache_period(self) -> RuntimeConfig:
        period = 1.0 / self.rates.slow_hz
        if self.slow_cache.enabled and self.slow_cache.max_reuse_s < period:
            raise ValueError(f"slow_cache.max_reuse_s = {self.slow_cache.max_reuse_s} is shorter than one slow period "
                             f"({period:.3g} s at rates.slow_hz {self.rates.slow_hz}): nothing would be reused")
        return self

    def _margin_problems(self) -> list[str]:
        by_range = {j for g in self.robot.groups.values() if g.controller == "gripper" and g.gripper_range
                    for j in g.joints}
        return margin_problems(self.safety.position_margin_rad,
                               [(j.name, *j.position) for j in self.robot.joints if j.name not in by_range])

    def resolve_path(self, p: str) -> Path:
        """Resolve a path from the config.

        Absolute paths stand. A relative one is looked up beside the config file, then one level
        up (an installed ``share/vla_runtime/config/x.yaml`` finds ``share/vla_runtime/models``),
        then in the source checkout; if none exists, the source-checkout path is returned.
        """
        path = Path(os.path.expanduser(p))
        if path.is_absolute():
            return path
        if self.source:
            here = Path(self.source).resolve().parent
            for base in (here, here.parent):
                if (base / path).exists():
                    return base / path
        return PROJECT_ROOT / path

    @property
    def model_package_path(self) -> Path:
        """Directory of the model package."""
        return self.resolve_path(self.model.package)

    @property
    def detector_path(self) -> Path:
        """Directory of the learned failure detector's head."""
        return self.resolve_path(self.detector.dir) if self.detector.dir else self.model_package_path / "detector"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(str(path), [f"include cycle: {' -> '.join(str(p) for p in (*seen, path))}"])
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read file: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not a text file: byte {e.start} is {raw[e.start:e.start + 1]!r}, "
                                      "not UTF-8 (a YAML config is text)"]) from None
    if "\x00" in text:
        raise ConfigError(str(path), [f"not a text file: NUL byte at offset {text.index(chr(0))}"])
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    inc = data.pop("include", None)
    if inc is None:
        return data
    if not isinstance(inc, str):
        raise ConfigError(str(path), [f"include must be a file path, got {inc!r}"])
    return _merge(_read_yaml(path.parent / inc, (*seen, path)), data)


def _lookup(data: Any, loc: tuple) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def format_validation_error(err: ValidationError, data: dict[str, Any]) -> list[str]:
    """One line per error: ``field.path = value: rule``."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field (misspelled?), value {e.get('input')!r}")
        else:
            value = _lookup(data, loc)
            if isinstance(value, (dict, list)) or not loc:
                # A rule over a whole section: its own message names the fields and values, one per "; ".
                lines.extend(f"{where}: {part}" if loc else part for part in msg.split("; "))
            else:
                lines.append(f"{where} = {value!r}: {msg}")
    return lines


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RuntimeConfig:
    """Validate a config mapping; raise ConfigError listing every problem."""
    try:
        return RuntimeConfig.model_validate({**data, "source": source})
    except ValidationError as err:
        problems = format_validation_error(err, data)
        # Cross-reference checks run only once every field is valid; report them anyway.
        for p in _raw_joint_reference_problems(data) + _raw_margin_problems(data):
            if not any(p in line for line in problems):
                problems.append(p)
        raise ConfigError(source, problems) from None


def load_config(path: str | os.PathLike) -> RuntimeConfig:
    """Load and validate a runtime config YAML (following ``include:``)."""
    p = Path(path)
    return config_from_dict(_read_yaml(p), source=str(p.resolve()))
