"""Schema of a model package's ``models/<name>/model.yaml``.

A model package is a directory holding two ONNX graphs (the slow VLM part and the
fast action part) and a ``model.yaml`` that states everything the runtime needs to
drive them: every input/output tensor (name, shape, dtype, role), the chunk
horizon, control rate, latent shape, the tokenizer vocabulary, the proprio and
action normalisation statistics and the action layout.

This module is pure Python (pydantic + pyyaml): it never imports onnx or
onnxruntime. Checking the YAML against the graphs is done by
:mod:`vla_runtime.engines.model_package`.

Example (abridged)::

    schema_version: 1
    name: timing_reference
    trained: false
    purpose: timing only — untrained weights
    robot: panda
    control_rate_hz: 30.0
    chunk_horizon: 16
    action_dim: 8
    latent: {tokens: 8, dim: 256}
    slow:
      onnx: slow.onnx
      rate_hz: 2.0
      inputs:
        - {name: image, shape: [1, 3, 224, 224], dtype: uint8, role: image, layout: NCHW}
        - {name: instruction_ids, shape: [1, 16], dtype: int64, role: instruction_ids}
        - {name: instruction_mask, shape: [1, 16], dtype: int64, role: instruction_mask}
      outputs:
        - {name: latent, shape: [1, 8, 256], dtype: float32, role: latent}
    fast:
      onnx: fast.onnx
      inputs:
        - {name: latent, shape: [1, 8, 256], dtype: float32, role: latent}
        - {name: proprio, shape: [1, 8], dtype: float32, role: proprio}
      outputs:
        - {name: actions, shape: [1, 16, 8], dtype: float32, role: actions}
    tokenizer: {max_len: 16, vocab: ["<pad>", "<unk>", pick, up, ...]}
    proprio:
      names: [panda_joint1, ..., gripper]
      normalization: {kind: mean_std, mean: [...], std: [...]}
    action:
      head: continuous
      normalization: {kind: mean_std, mean: [...], std: [...]}
      groups:
        - {name: arm, kind: joint_position, joints: [panda_joint1, ...]}
        - {name: hand, kind: gripper}

A **flow-matching** fast part (π0-style action expert) declares ``kind: flow_matching`` and a
``flow:`` block. Its graph computes ONE velocity evaluation; the runtime runs the integration loop
(:mod:`vla_runtime.core.flow`), so the package also says how many steps, in which time convention
and on which schedule. Optionally the same graph also returns a vector-Jacobian product of the
velocity, which the runtime's real-time-chunking guidance uses::

    fast:
      onnx: fast.onnx
      kind: flow_matching
      flow: {steps: 10, time_convention: noise_at_1, schedule: uniform_euler}
      inputs:
        - {name: noisy_actions, shape: [1, 32, 8], dtype: float32, role: noisy_actions}
        - {name: flow_time, shape: [1], dtype: float32, role: flow_time}
        - {name: latent, shape: [1, 4, 64], dtype: float32, role: latent}
        - {name: proprio, shape: [1, 8], dtype: float32, role: proprio}
        - {name: cotangent, shape: [1, 32, 8], dtype: float32, role: guidance_cotangent}  # optional pair
      outputs:
        - {name: velocity, shape: [1, 32, 8], dtype: float32, role: velocity}
        - {name: vjp, shape: [1, 32, 8], dtype: float32, role: guidance_vjp}              # optional pair

``kind`` defaults to ``one_shot`` (the graph outputs the whole chunk), so packages written before
flow-matching heads existed load unchanged (``schema_version`` stays 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
#: The rates at which a policy's chunk steps can be meant to execute.
MIN_CONTROL_RATE_HZ = 1.0
MAX_CONTROL_RATE_HZ = 1000.0

DType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]

SlowInputRole = Literal["image", "instruction_ids", "instruction_mask", "proprio", "other"]
FastInputRole = Literal[
    "latent", "proprio", "prev_chunk", "prefix_mask", "noisy_actions", "flow_time", "guidance_cotangent", "other",
]
SlowOutputRole = Literal["latent", "other"]
FastOutputRole = Literal["actions", "velocity", "guidance_vjp", "other"]
TensorRole = Literal[
    "image",
    "instruction_ids",
    "instruction_mask",
    "proprio",
    "latent",
    "prev_chunk",
    "prefix_mask",
    "actions",
    "noisy_actions",
    "flow_time",
    "velocity",
    "guidance_cotangent",
    "guidance_vjp",
    "other",
]
#: Roles only a ``kind: flow_matching`` fast part has (inputs, then outputs).
FLOW_INPUT_ROLES: tuple[str, ...] = ("noisy_actions", "flow_time", "guidance_cotangent")
FLOW_OUTPUT_ROLES: tuple[str, ...] = ("velocity", "guidance_vjp")

FastKind = Literal["one_shot", "flow_matching"]
#: Where a package's flow time puts pure noise (see :class:`FlowSpec`).
FlowTimeConvention = Literal["noise_at_1", "noise_at_0"]
FlowSchedule = Literal["uniform_euler"]

GroupKind = Literal[
    "joint_position",
    "joint_delta",
    "joint_velocity",
    "cartesian_pose",
    "cartesian_delta",
    "gripper",
    "base_velocity",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One graph input or output.

    Attributes:
        name: Tensor name exactly as in the ONNX graph.
        shape: Dimensions; ``None`` (YAML ``null``) marks a dynamic dimension.
        dtype: Numpy dtype name.
        role: What the runtime feeds or reads through this tensor.
        camera: For ``role: image``: which camera stream feeds it.
        layout: For ``role: image``: ``NCHW`` (the default when omitted) or ``NHWC``.
    """

    name: str = Field(min_length=1)
    shape: tuple[int | None, ...]
    dtype: DType
    role: TensorRole = "other"
    camera: str | None = None
    layout: Literal["NCHW", "NHWC"] | None = None

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, v: tuple[int | None, ...]) -> tuple[int | None, ...]:
        for d in v:
            if d is not None and d < 1:
                raise ValueError(f"shape dims must be >= 1 or null, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _image_fields(self) -> TensorSpec:
        if self.role == "image":
            if len(self.shape) != 4:
                raise ValueError(f"image tensor {self.name!r} must be rank 4, got shape {list(self.shape)}")
        elif self.layout is not None or self.camera is not None:
            raise ValueError(f"tensor {self.name!r}: 'layout'/'camera' only apply to role 'image', got role "
                             f"{self.role!r}")
        return self


class GraphSpec(_Frozen):
    """One ONNX graph of the package (slow or fast part).

    Attributes:
        onnx: Path of the ONNX file, relative to the package directory.
        inputs: Every graph input (all are required).
        outputs: The outputs the runtime reads (the graph may have more).
        rate_hz: Nominal rate this part runs at (slow part: a few Hz).
    """

    onnx: str = Field(min_length=1)
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    rate_hz: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> GraphSpec:
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            seen: set[str] = set()
            for t in tensors:
                if t.name in seen:
                    raise ValueError(f"duplicate {kind} tensor name {t.name!r} in {self.onnx}")
                seen.add(t.name)
        return self

    def input_by_role(self, role: str) -> TensorSpec | None:
        """Return the first input with ``role``, or None."""
        return next((t for t in self.inputs if t.role == role), None)

    def output_by_role(self, role: str) -> TensorSpec | None:
        """Return the first output with ``role``, or None."""
        return next((t for t in self.outputs if t.role == role), None)


class FlowSpec(_Frozen):
    """How the runtime integrates a flow-matching fast part's velocity field.

    Attributes:
        steps: Integration steps from noise to the chunk (velocity evaluations per unguided chunk).
        time_convention: Where the package's time ``t`` puts pure noise; in both conventions the
            graph's output is the velocity ``dx/dt`` in the package's own time.

            * ``noise_at_1`` (π0, openpi, LeRobot): ``x_t = t·ε + (1 − t)·a``; sampling integrates
              from ``t = 1`` to ``t = 0`` with ``x_{t+dt} = x_t + dt·v``, ``dt = −1/steps``.
            * ``noise_at_0`` (rectified flow; the RTC paper's τ): ``x_t = t·a + (1 − t)·ε``;
              sampling integrates from ``t = 0`` to ``t = 1`` with ``dt = +1/steps``.

            The runtime itself works in the RTC paper's τ (0 = noise, 1 = data) and maps each
            package's time onto it (:class:`vla_runtime.core.flow.FlowSampler`).
        schedule: ``uniform_euler``: ``steps`` equal explicit Euler steps.
    """

    steps: int = Field(ge=1, le=1000)
    time_convention: FlowTimeConvention
    schedule: FlowSchedule = "uniform_euler"


class FastGraphSpec(GraphSpec):
    """The fast (action expert) graph: a :class:`GraphSpec` plus what kind of head it is.

    Attributes:
        kind: ``one_shot``: one call outputs the whole chunk (role ``actions``).
            ``flow_matching``: one call is ONE velocity evaluation ``v(x_t, t, latent, proprio)``
            (inputs ``noisy_actions`` and ``flow_time``, output ``velocity``); the runtime integrates.
            Such a graph may also take a ``guidance_cotangent`` ``c`` and return ``guidance_vjp``
            ``= cᵀ·∂v/∂x_t`` (the VJP of its velocity with respect to ``noisy_actions``, in its own
            time convention), which real-time-chunking guidance uses when present.
        flow: Integration settings; required for ``flow_matching``, refused for ``one_shot``.
    """

    kind: FastKind = "one_shot"
    flow: FlowSpec | None = None

    @model_validator(mode="after")
    def _flow_block(self) -> FastGraphSpec:
        if self.kind == "flow_matching" and self.flow is None:
            raise ValueError("fast kind 'flow_matching' needs a 'flow: {steps: N, time_convention: noise_at_1|"
                             "noise_at_0}' block")
        if self.kind == "one_shot" and self.flow is not None:
            raise ValueError(f"'flow' block given but fast kind is {self.kind!r} (set kind: flow_matching)")
        return self

    @property
    def is_flow(self) -> bool:
        """Whether this is a flow-matching velocity graph the runtime integrates."""
        return self.kind == "flow_matching"


class LatentSpec(_Frozen):
    """Shape of the slow→fast guidance latent (K tokens × D)."""

    tokens: int = Field(ge=1)
    dim: int = Field(ge=1)
    dtype: DType = "float32"


class TokenizerSpec(_Frozen):
    """Word-level tokenizer vocabulary (see :mod:`vla_runtime.core.text`).

    Attributes:
        max_len: Ids are padded/truncated to this length.
        vocab: Word list; a word's id is its index.
        pad_token: Token whose id pads the sequence.
        unk_token: Token whose id replaces unknown words.
        lowercase: Lower-case the text before splitting.
    """

    max_len: int = Field(ge=1)
    vocab: tuple[str, ...] = Field(min_length=2)
    pad_token: str = "<pad>"
    unk_token: str = "<unk>"
    lowercase: bool = True

    @model_validator(mode="after")
    def _check_vocab(self) -> TokenizerSpec:
        seen: set[str] = set()
        for w in self.vocab:
            if w in seen:
                raise ValueError(f"duplicate vocab entry {w!r}")
            seen.add(w)
        for tok in (self.pad_token, self.unk_token):
            if tok not in seen:
                raise ValueError(f"special token {tok!r} is not in the vocab")
        return self


class Normalization(_Frozen):
    """Per-dimension normalisation statistics.

    ``mean_std``: ``norm = (x - mean) / std``. ``min_max``: ``norm`` in [-1, 1]
    maps linearly onto [min, max]. ``none``: identity.
    """

    kind: Literal["mean_std", "min_max", "none"] = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check_stats(self) -> Normalization:
        for field_name in ("mean", "std", "min", "max"):
            values = getattr(self, field_name)
            bad = [(i, v) for i, v in enumerate(values or ()) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"normalization {field_name} must be finite, got {field_name}[{bad[0][0]}] = "
                                 f"{bad[0][1]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
        if self.kind == "mean_std":
            if self.mean is None or self.std is None:
                raise ValueError("normalization kind 'mean_std' needs 'mean' and 'std'")
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} entries but std has {len(self.std)}")
            bad = [s for s in self.std if not s > 0 or not math.isfinite(s)]
            if bad:
                raise ValueError(f"std entries must be finite and > 0, got {bad}")
        elif self.kind == "min_max":
            if self.min is None or self.max is None:
                raise ValueError("normalization kind 'min_max' needs 'min' and 'max'")
            if len(self.min) != len(self.max):
                raise ValueError(f"min has {len(self.min)} entries but max has {len(self.max)}")
            bad_pairs = [(lo, hi) for lo, hi in zip(self.min, self.max) if not hi > lo]
            if bad_pairs:
                raise ValueError(f"each max must exceed its min, got (min, max) pairs {bad_pairs}")
        return self

    @property
    def size(self) -> int | None:
        """Number of dims the stats cover, or None for ``kind: none``."""
        if self.kind == "mean_std":
            assert self.mean is not None
            return len(self.mean)
        if self.kind == "min_max":
            assert self.min is not None
            return len(self.min)
        return None


class ActionGroup(_Frozen):
    """One group of action dims (an arm, a gripper, a mobile base ...).

    Attributes:
        name: Group name; prefixes the non-joint dim names (``<name>/x``).
        kind: Layout of the group's dims.
        joints: Joint names (``joint_*`` kinds only); also the dim names.
        rotation: ``quaternion`` (qx,qy,qz,qw) or ``axis_angle`` (rx,ry,rz) for
            Cartesian kinds.
        frame: Reference frame of Cartesian targets (e.g. ``base_link``).
        gripper: Append a ``<name>/gripper`` dim after a Cartesian pose.
        cumulative: For delta kinds: step h is relative to step h-1 (True) or
            every step is relative to the current state (False).
        controller: Optional controller/topic key the bridge routes this group to.
    """

    name: str = Field(min_length=1)
    kind: GroupKind
    joints: tuple[str, ...] | None = None
    rotation: Literal["quaternion", "axis_angle"] | None = None
    frame: str | None = None
    gripper: bool = False
    cumulative: bool = False
    controller: str | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> ActionGroup:
        if "/" in self.name:
            raise ValueError(f"group name must not contain '/', got {self.name!r}")
        is_joint = self.kind.startswith("joint_")
        is_cart = self.kind.startswith("cartesian_")
        if is_joint and not self.joints:
            raise ValueError(f"group {self.name!r} of kind {self.kind!r} needs a non-empty 'joints' list")
        if not is_joint and self.joints:
            raise ValueError(f"group {self.name!r} of kind {self.kind!r} takes no 'joints', got {list(self.joints)}")
        if is_cart and self.rotation is None:
            raise ValueError(f"group {self.name!r} of kind {self.kind!r} needs 'rotation' (quaternion|axis_angle)")
        if not is_cart and (self.rotation is not None or self.gripper):
            raise ValueError(f"group {self.name!r}: 'rotation'/'gripper' only apply to cartesian kinds, got kind "
                             f"{self.kind!r}")
        if self.cumulative and self.kind not in ("joint_delta", "cartesian_delta"):
            raise ValueError(f"group {self.name!r}: 'cumulative' only applies to delta kinds, got kind {self.kind!r}")
        return self


class DiscreteHead(_Frozen):
    """Discrete-token action head: each dim is one of ``bins`` tokens.

    Bin i stands for the centre of the i-th of ``bins`` equal intervals of
    [low, high] in normalised space; the centre is then de-normalised.
    """

    bins: int = Field(ge=2)
    low: float = -1.0
    high: float = 1.0

    @model_validator(mode="after")
    def _range(self) -> DiscreteHead:
        if not self.high > self.low:
            raise ValueError(f"discrete head needs high > low, got low={self.low}, high={self.high}")
        return self


class ActionSpec(_Frozen):
    """Action layout and statistics.

    Attributes:
        head: ``continuous`` (model emits normalised values) or ``discrete``
            (model emits token ids or per-bin logits).
        discrete: Bin settings, required for ``head: discrete``.
        normalization: Stats that map the model's normalised values to physical units.
        groups: Ordered groups; their dims concatenate to the action vector.
    """

    head: Literal["continuous", "discrete"] = "continuous"
    discrete: DiscreteHead | None = None
    normalization: Normalization = Normalization()
    groups: tuple[ActionGroup, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ActionSpec:
        if self.head == "discrete" and self.discrete is None:
            raise ValueError("action head 'discrete' needs a 'discrete: {bins: N}' block")
        if self.head == "continuous" and self.discrete is not None:
            raise ValueError("'discrete' block given but action head is 'continuous'")
        names = [g.name for g in self.groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate action group names {dup}")
        n = self.dim
        size = self.normalization.size
        if size is not None and size != n:
            raise ValueError(f"action normalization has {size} entries but the groups define {n} dims")
        return self

    @property
    def dim(self) -> int:
        """Number of action dims the groups define."""
        return sum(group_dim(g) for g in self.groups)


class ProprioSpec(_Frozen):
    """Proprioceptive state fed to the fast model.

    Attributes:
        names: State names in input order (joint names, ``<group>/gripper`` ...).
        normalization: Stats applied before feeding the model.
    """

    names: tuple[str, ...] = Field(min_length=1)
    normalization: Normalization = Normalization()

    @model_validator(mode="after")
    def _check(self) -> ProprioSpec:
        size = self.normalization.size
        if size is not None and size != len(self.names):
            raise ValueError(f"proprio normalization has {size} entries but {len(self.names)} names")
        return self


class ModelSpec(_Frozen):
    """The whole ``model.yaml``.

    Attributes:
        schema_version: Must be 1.
        name: Package name.
        description: Free text.
        trained: False for random-weight packages (timing only).
        purpose: What the package is for.
        robot: Robot the action layout is for.
        control_rate_hz: Rate at which chunk steps are executed.
        chunk_horizon: H, steps per action chunk.
        action_dim: A, dims per step the fast graph emits (after discrete decoding).
        latent: K×D guidance latent shape.
        slow: Slow (VLM) graph.
        fast: Fast (action expert) graph: one-shot, or one flow-matching velocity step.
        tokenizer: Instruction tokenizer.
        proprio: Proprio layout and stats.
        action: Action layout and stats.
    """

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    description: str = ""
    trained: bool
    purpose: str = ""
    robot: str | None = None
    control_rate_hz: float = Field(gt=0)
    chunk_horizon: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    latent: LatentSpec
    slow: GraphSpec
    fast: FastGraphSpec
    tokenizer: TokenizerSpec
    proprio: ProprioSpec
    action: ActionSpec

    @model_validator(mode="after")
    def _cross_check(self) -> ModelSpec:
        if not MIN_CONTROL_RATE_HZ <= self.control_rate_hz <= MAX_CONTROL_RATE_HZ:
            raise ValueError(f"control_rate_hz = {self.control_rate_hz} is not a robot control rate "
                             f"({MIN_CONTROL_RATE_HZ:g}..{MAX_CONTROL_RATE_HZ:g} Hz)")
        if self.action.dim != self.action_dim:
            raise ValueError(f"action_dim is {self.action_dim} but action.groups define {self.action.dim} dims")
        lat_out = self.slow.output_by_role("latent")
        if lat_out is None:
            raise ValueError("slow graph needs an output with role 'latent'")
        lat_in = self.fast.input_by_role("latent")
        if lat_in is None:
            raise ValueError("fast graph needs an input with role 'latent'")
        want = (self.latent.tokens, self.latent.dim)
        for t in (lat_out, lat_in):
            if tuple(t.shape[-2:]) != want:
                raise ValueError(f"latent tensor {t.name!r} has shape {list(t.shape)}, expected trailing dims "
                                 f"{list(want)}")
        if self.fast.is_flow:
            self._check_flow_graph()
        else:
            flow_roles = [(t.name, t.role) for t in (*self.fast.inputs, *self.fast.outputs)
                          if t.role in FLOW_INPUT_ROLES + FLOW_OUTPUT_ROLES]
            if flow_roles:
                name, role = flow_roles[0]
                raise ValueError(f"fast tensor {name!r} has role {role!r}, which only a 'kind: flow_matching' fast "
                                 f"part takes (this one is kind {self.fast.kind!r})")
            acts = self.fast.output_by_role("actions")
            if acts is None:
                raise ValueError("fast graph needs an output with role 'actions'")
            self._check_actions_shape(acts)
        prev = self.fast.input_by_role("prev_chunk")
        if prev is not None and tuple(prev.shape[-2:]) != (self.chunk_horizon, self.action_dim):
            raise ValueError(
                f"prev_chunk tensor {prev.name!r} has shape {list(prev.shape)}, "
                f"expected trailing dims {[self.chunk_horizon, self.action_dim]}"
            )
        role_rules = (
            ("input", self.slow.inputs, self.slow.onnx, get_args(SlowInputRole)),
            ("output", self.slow.outputs, self.slow.onnx, get_args(SlowOutputRole)),
            ("input", self.fast.inputs, self.fast.onnx, get_args(FastInputRole)),
            ("output", self.fast.outputs, self.fast.onnx, get_args(FastOutputRole)),
        )
        for kind, tensors, onnx_file, allowed in role_rules:
            for t in tensors:
                if t.role not in allowed:
                    raise ValueError(f"{kind} {t.name!r} of {onnx_file}: role {t.role!r} is not one of {list(allowed)}")
        ids = self.slow.input_by_role("instruction_ids")
        if ids is not None and ids.shape[-1] not in (None, self.tokenizer.max_len):
            raise ValueError(
                f"instruction_ids tensor {ids.name!r} has length {ids.shape[-1]} but tokenizer.max_len is "
                f"{self.tokenizer.max_len}"
            )
        pro = self.fast.input_by_role("proprio")
        if pro is not None and pro.shape[-1] not in (None, len(self.proprio.names)):
            raise ValueError(f"proprio tensor {pro.name!r} has {pro.shape[-1]} dims but proprio.names lists "
                             f"{len(self.proprio.names)}")
        return self

    def _check_flow_graph(self) -> None:
        """The tensors of a flow-matching fast part (kind, roles, shapes, dtypes)."""
        g, h, a = self.fast, self.chunk_horizon, self.action_dim
        if self.action.head != "continuous":
            raise ValueError(f"a flow_matching fast part needs action head 'continuous', got {self.action.head!r}")
        for kind, tensors in (("input", g.inputs), ("output", g.outputs)):
            for role in (*FLOW_INPUT_ROLES, *FLOW_OUTPUT_ROLES, "latent", "proprio"):
                names = [t.name for t in tensors if t.role == role]
                if len(names) > 1:
                    raise ValueError(f"fast graph has {len(names)} {kind}s with role {role!r}: {names}")
        for t in (*g.inputs, *g.outputs):
            if t.role in ("actions", "prev_chunk", "prefix_mask"):
                raise ValueError(f"fast tensor {t.name!r}: role {t.role!r} does not apply to a flow_matching fast "
                                 "part (it outputs a 'velocity'; the runtime guides sampling towards the executing "
                                 "plan itself)")
        chunk_roles = (("input", "noisy_actions", True), ("output", "velocity", True),
                       ("input", "guidance_cotangent", False), ("output", "guidance_vjp", False))
        for kind, role, required in chunk_roles:
            t = g.input_by_role(role) if kind == "input" else g.output_by_role(role)
            if t is None:
                if required:
                    raise ValueError(f"a flow_matching fast graph needs an {kind} with role {role!r}")
                continue
            if tuple(t.shape[-2:]) != (h, a) or not t.dtype.startswith("float"):
                raise ValueError(f"{role} tensor {t.name!r} has shape {list(t.shape)} dtype {t.dtype}, expected "
                                 f"trailing dims [{h}, {a}] (chunk_horizon, action_dim) and a float dtype")
        cot, vjp = g.input_by_role("guidance_cotangent"), g.output_by_role("guidance_vjp")
        if cot is not None and vjp is None:
            raise ValueError(f"fast input {cot.name!r} (role 'guidance_cotangent') needs its pair: an output with role "
                             "'guidance_vjp' (the cotangent goes in, its vector-Jacobian product comes out)")
        if vjp is not None and cot is None:
            raise ValueError(f"fast output {vjp.name!r} (role 'guidance_vjp') needs its pair: an input with role "
                             "'guidance_cotangent' (the cotangent goes in, its vector-Jacobian product comes out)")
        t_in = g.input_by_role("flow_time")
        if t_in is None:
            raise ValueError("a flow_matching fast graph needs an input with role 'flow_time'")
        if any(d not in (1, None) for d in t_in.shape) or not t_in.dtype.startswith("float"):
            raise ValueError(f"flow_time tensor {t_in.name!r} has shape {list(t_in.shape)} dtype {t_in.dtype}, "
                             "expected one float value (shape [], [1] or [1, 1])")

    def _check_actions_shape(self, acts: TensorSpec) -> None:
        h, a = self.chunk_horizon, self.action_dim
        shape = tuple(acts.shape)
        if self.action.head == "continuous":
            ok = shape[-2:] == (h, a) and acts.dtype.startswith("float")
            want = f"trailing dims [{h}, {a}] and a float dtype"
        else:
            assert self.action.discrete is not None
            nb = self.action.discrete.bins
            as_logits = len(shape) >= 3 and shape[-3:] == (h, a, nb) and acts.dtype.startswith("float")
            as_ids = shape[-2:] == (h, a) and acts.dtype.startswith(("int", "uint"))
            ok = as_logits or as_ids
            want = f"trailing dims [{h}, {a}, {nb}] (float logits) or [{h}, {a}] (integer ids)"
        if not ok:
            raise ValueError(f"actions tensor {acts.name!r} has shape {list(shape)} dtype {acts.dtype}, expected "
                             f"{want}")

    @property
    def control_period_s(self) -> float:
        """Seconds between chunk steps (``1 / control_rate_hz``)."""
        return 1.0 / self.control_rate_hz


def group_dim(group: ActionGroup) -> int:
    """Number of action dims a group contributes."""
    if group.joints:
        return len(group.joints)
    if group.kind == "gripper":
        return 1
    if group.kind == "base_velocity":
        return 3
    rot = 4 if group.rotation == "quaternion" else 3
    return 3 + rot + (1 if group.gripper else 0)


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read and validate a ``model.yaml``.

    Args:
        path: The YAML file, or a package directory holding ``model.yaml``.

    Returns:
        The validated, frozen spec.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The YAML does not parse or does not match the schema; the
            message names the file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"model spec not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: YAML does not parse: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping at top level, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{p}: invalid model spec:\n{e}") from e
