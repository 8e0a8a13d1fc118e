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

**Schema version 2** adds what real policies (LeRobot's π0, π0.5, SmolVLA, ACT, Diffusion Policy;
``tools/lerobot``) need and version 1 cannot say; a file that uses any of it must say
``schema_version: 2`` (the error names the field), and every version-1 file still loads unchanged:

* ``cameras``: several cameras with the frame size each image input takes (raw ``uint8`` RGB,
  ``NHWC``; ``NTHWC`` for an observation window) and the preprocessing the policy trained with,
  which lives inside the graph (``preprocess.in_graph: true``; the steps are listed for the reader);
* ``tokenizer.kind: hf_tokenizers``: the policy's own ``tokenizer.json`` and its prompt format;
* ``latent.tensors``: a latent of several named tensors (a K/V prefix cache and its mask);
* a slow part that takes the robot state (role ``proprio``), and no slow part at all (ACT: the fast
  part takes the cameras and there is no latent);
* ``fast.kind: diffusion`` (one denoiser step; the runtime runs the DDPM/DDIM scheduler from the
  constants in ``fast.diffusion``), and a ``noise`` input a one-shot part gets from the runtime's
  seeded generator;
* ``model_horizon``/``chunk_offset`` (the graph's chunk is longer than the one executed),
  ``action.padding``/``proprio.padding`` (a model that works in a padded dimension),
  ``n_obs_steps`` (an observation window), normalisation with ``eps`` and the kinds
  ``quantiles``, ``quantile10``, ``identity``;
* ``source``, ``export``, ``n_action_steps``, ``temporal_ensemble``: where the package came from.

``docs/lerobot-export.md`` is the field-by-field contract of the imported packages.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: The newest schema this runtime writes and reads; :data:`SCHEMA_VERSIONS` lists every one it reads.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
#: The rates at which a policy's chunk steps can be meant to execute.
MIN_CONTROL_RATE_HZ = 1.0
MAX_CONTROL_RATE_HZ = 1000.0

DType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]

SlowInputRole = Literal["image", "instruction_ids", "instruction_mask", "proprio", "other"]
FastInputRole = Literal[
    "latent", "proprio", "prev_chunk", "prefix_mask", "noisy_actions", "flow_time", "guidance_cotangent",
    "image", "instruction_ids", "instruction_mask", "noise", "diffusion_timestep", "other",
]
SlowOutputRole = Literal["latent", "other"]
FastOutputRole = Literal["actions", "velocity", "guidance_vjp", "denoiser_output", "value", "other"]
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
    "noise",
    "diffusion_timestep",
    "denoiser_output",
    "value",
    "other",
]
#: Roles only a ``kind: flow_matching`` fast part has (inputs, then outputs).
FLOW_INPUT_ROLES: tuple[str, ...] = ("noisy_actions", "flow_time", "guidance_cotangent")
FLOW_OUTPUT_ROLES: tuple[str, ...] = ("velocity", "guidance_vjp")
#: Roles only a ``kind: diffusion`` fast part has (``noisy_actions`` is shared with flow matching).
DIFFUSION_ROLES: tuple[str, ...] = ("diffusion_timestep", "denoiser_output")

FastKind = Literal["one_shot", "flow_matching", "diffusion"]
#: Where a package's flow time puts pure noise (see :class:`FlowSpec`).
FlowTimeConvention = Literal["noise_at_1", "noise_at_0"]
FlowSchedule = Literal["uniform_euler"]
#: Image tensor layouts: ``NCHW``/``NHWC`` one frame, ``NTHWC`` an observation window of frames.
ImageLayout = Literal["NCHW", "NHWC", "NTHWC"]

#: Names a camera may not take: the other keys of an observation (``vla-runtime infer``/``serve``).
RESERVED_OBSERVATION_KEYS = ("state", "prompt", "noise", "step_noise", "seed")

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


def _finite(name: str, values: tuple[float, ...] | None, prefix: str = "") -> None:
    bad = [(i, v) for i, v in enumerate(values or ()) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{prefix}{name} must be finite, got {name}[{bad[0][0]}] = {bad[0][1]}"
                         + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))


class TensorSpec(_Frozen):
    """One graph input or output.

    Attributes:
        name: Tensor name exactly as in the ONNX graph.
        shape: Dimensions; ``None`` (YAML ``null``) marks a dynamic dimension.
        dtype: Numpy dtype name.
        role: What the runtime feeds or reads through this tensor.
        camera: For ``role: image``: which camera stream feeds it.
        layout: For ``role: image``: ``NCHW`` (the default when omitted), ``NHWC`` or ``NTHWC`` (a window
            of ``n_obs_steps`` frames, oldest first; schema 2).
    """

    name: str = Field(min_length=1)
    shape: tuple[int | None, ...]
    dtype: DType
    role: TensorRole = "other"
    camera: str | None = None
    layout: ImageLayout | None = None

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
            rank = 5 if self.layout == "NTHWC" else 4
            if len(self.shape) != rank:
                raise ValueError(f"image tensor {self.name!r} (layout {self.layout or 'NCHW'}) must be rank {rank}, "
                                 f"got shape {list(self.shape)}")
        elif self.layout is not None or self.camera is not None:
            raise ValueError(f"tensor {self.name!r}: 'layout'/'camera' only apply to role 'image', got role "
                             f"{self.role!r}")
        return self

    @property
    def image_hw(self) -> tuple[int | None, int | None]:
        """(height, width) of an image tensor, by its layout."""
        if self.layout in ("NHWC", "NTHWC"):
            return self.shape[-3], self.shape[-2]
        return self.shape[2], self.shape[3]


class GraphSpec(_Frozen):
    """One ONNX graph of the package (slow or fast part).

    Attributes:
        onnx: Path of the ONNX file, relative to the package directory.
        inputs: Every graph input (all are required).
        outputs: The outputs the runtime reads (the graph may have more).
        rate_hz: Nominal rate this part runs at (slow part: a few Hz).
        runs: Free text: when the part runs (importers say e.g. "once per flow step").
    """

    onnx: str = Field(min_length=1)
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    rate_hz: float | None = Field(default=None, gt=0)
    runs: str = ""

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

    def inputs_by_role(self, role: str) -> tuple[TensorSpec, ...]:
        """Every input with ``role``, in declaration order."""
        return tuple(t for t in self.inputs if t.role == role)

    def outputs_by_role(self, role: str) -> tuple[TensorSpec, ...]:
        """Every output with ``role``, in declaration order."""
        return tuple(t for t in self.outputs if t.role == role)


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


class DiffusionStepSpec(_Frozen):
    """One inference step of a DDPM/DDIM scheduler, with the constants it uses.

    Attributes:
        timestep: The training timestep fed to the denoiser (role ``diffusion_timestep``).
        prev_timestep: The timestep the step moves to (negative after the last one).
        alpha_prod_t: ``ᾱ_t`` (``alphas_cumprod[timestep]``), in (0, 1].
        alpha_prod_t_prev: ``ᾱ`` at ``prev_timestep`` (the scheduler's final value past the end), in (0, 1].
    """

    timestep: int = Field(ge=0)
    prev_timestep: int
    alpha_prod_t: float = Field(gt=0, le=1)
    alpha_prod_t_prev: float = Field(gt=0, le=1)


class DiffusionSpec(_Frozen):
    """A diffusion fast part's scheduler: the runtime runs it around ONE denoiser evaluation per step.

    The constants are what diffusers' ``DDPMScheduler``/``DDIMScheduler`` compute for the policy's
    configuration, in the order the steps run; :mod:`vla_runtime.core.diffusion` applies them.

    Attributes:
        scheduler: ``ddpm`` (ancestral: fresh Gaussian noise at every step whose timestep > 0) or
            ``ddim`` (deterministic, ``eta = 0``).
        num_train_timesteps: The training schedule's length (timesteps lie in [0, this)).
        prediction_type: What the denoiser outputs: ``epsilon`` (the noise) or ``sample`` (x₀).
        clip_sample: Clip the x₀ estimate to ``±clip_sample_range`` at every step.
        clip_sample_range: The clipping bound.
        variance_type: DDPM's noise variance (only ``fixed_small``).
        eta: DDIM's stochasticity (only 0).
        beta_schedule: Informational: the schedule the constants came from.
        beta_start: Informational.
        beta_end: Informational.
        alphas_cumprod: The whole ``ᾱ`` table; when given, each step's ``alpha_prod_t`` must match it.
        steps: The inference steps, in the order they run (timesteps strictly decreasing).
    """

    scheduler: Literal["ddpm", "ddim"]
    num_train_timesteps: int = Field(ge=1)
    prediction_type: Literal["epsilon", "sample"]
    clip_sample: bool = False
    clip_sample_range: float = Field(default=1.0, gt=0)
    variance_type: Literal["fixed_small"] = "fixed_small"
    eta: float = 0.0
    beta_schedule: str | None = None
    beta_start: float | None = None
    beta_end: float | None = None
    alphas_cumprod: tuple[float, ...] | None = None
    steps: tuple[DiffusionStepSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> DiffusionSpec:
        if self.eta != 0.0:
            raise ValueError(f"diffusion eta must be 0 (deterministic DDIM), got {self.eta}")
        ts = [s.timestep for s in self.steps]
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(ts, ts[1:])) if not b < a]
        if bad:
            i, a, b = bad[0]
            raise ValueError(f"diffusion steps must run with strictly decreasing timesteps, got steps[{i}].timestep = "
                             f"{a} then steps[{i + 1}].timestep = {b}")
        over = [t for t in ts if t >= self.num_train_timesteps]
        if over:
            raise ValueError(f"diffusion timestep {over[0]} is outside [0, num_train_timesteps = "
                             f"{self.num_train_timesteps})")
        if self.alphas_cumprod is not None:
            _finite("alphas_cumprod", self.alphas_cumprod)
            if len(self.alphas_cumprod) != self.num_train_timesteps:
                raise ValueError(f"alphas_cumprod has {len(self.alphas_cumprod)} entries, num_train_timesteps is "
                                 f"{self.num_train_timesteps}")
            for i, s in enumerate(self.steps):
                want = self.alphas_cumprod[s.timestep]
                if abs(s.alpha_prod_t - want) > 1e-6 * max(1.0, abs(want)):
                    raise ValueError(f"diffusion steps[{i}].alpha_prod_t = {s.alpha_prod_t} but alphas_cumprod"
                                     f"[{s.timestep}] = {want}")
        return self


class FastGraphSpec(GraphSpec):
    """The fast (action expert) graph: a :class:`GraphSpec` plus what kind of head it is.

    Attributes:
        kind: ``one_shot``: one call outputs the whole chunk (role ``actions``).
            ``flow_matching``: one call is ONE velocity evaluation ``v(x_t, t, latent, proprio)``
            (inputs ``noisy_actions`` and ``flow_time``, output ``velocity``); the runtime integrates.
            Such a graph may also take a ``guidance_cotangent`` ``c`` and return ``guidance_vjp``
            ``= cᵀ·∂v/∂x_t`` (the VJP of its velocity with respect to ``noisy_actions``, in its own
            time convention), which real-time-chunking guidance uses when present.
            ``diffusion`` (schema 2): one call is ONE denoiser evaluation ``y(x_t, timestep, latent)``
            (inputs ``noisy_actions`` and ``diffusion_timestep``, output ``denoiser_output``); the runtime
            runs the scheduler of the ``diffusion`` block.
        flow: Integration settings; required for ``flow_matching``, refused otherwise.
        diffusion: Scheduler settings; required for ``diffusion``, refused otherwise.
    """

    kind: FastKind = "one_shot"
    flow: FlowSpec | None = None
    diffusion: DiffusionSpec | None = None

    @model_validator(mode="after")
    def _flow_block(self) -> FastGraphSpec:
        if self.kind == "flow_matching" and self.flow is None:
            raise ValueError("fast kind 'flow_matching' needs a 'flow: {steps: N, time_convention: noise_at_1|"
                             "noise_at_0}' block")
        if self.kind != "flow_matching" and self.flow is not None:
            raise ValueError(f"'flow' block given but fast kind is {self.kind!r} (set kind: flow_matching)")
        if self.kind == "diffusion" and self.diffusion is None:
            raise ValueError("fast kind 'diffusion' needs a 'diffusion: {scheduler: ddpm|ddim, steps: [...], ...}' "
                             "block")
        if self.kind != "diffusion" and self.diffusion is not None:
            raise ValueError(f"'diffusion' block given but fast kind is {self.kind!r} (set kind: diffusion)")
        return self

    @property
    def is_flow(self) -> bool:
        """Whether this is a flow-matching velocity graph the runtime integrates."""
        return self.kind == "flow_matching"

    @property
    def is_diffusion(self) -> bool:
        """Whether this is a denoiser step the runtime's DDPM/DDIM scheduler drives."""
        return self.kind == "diffusion"


class LatentTensorSpec(_Frozen):
    """One named tensor of a multi-tensor latent (schema 2): a slow output the fast part reads.

    Attributes:
        name: The slow graph's output name, which is also the fast graph's input name.
        shape: Fixed dimensions (the latent buffer is sized from them).
        dtype: Numpy dtype name.
    """

    name: str = Field(min_length=1)
    shape: tuple[int, ...] = Field(min_length=1)
    dtype: DType = "float32"

    @field_validator("shape")
    @classmethod
    def _fixed_dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 for d in v):
            raise ValueError(f"latent tensor dims must be fixed and >= 1, got {list(v)}")
        return v

    @property
    def nbytes(self) -> int:
        """Size of the tensor in bytes."""
        import numpy as np

        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class LatentSpec(_Frozen):
    """The slow→fast latent.

    Either one guidance tensor of ``tokens × dim`` (schema 1), or several named tensors (schema 2,
    ``tensors``: e.g. a K/V prefix cache, one key and one value tensor per layer, plus its mask).

    Attributes:
        tokens: K (single-tensor form).
        dim: D (single-tensor form).
        dtype: The single tensor's dtype.
        tensors: The named tensors (multi-tensor form).
        kind: Informational: ``guidance``, ``kv_prefix_cache`` or ``global_conditioning``.
        layers: Informational: transformer layers of a K/V cache.
        layout: Informational: what the tensors' axes are.
    """

    tokens: int | None = Field(default=None, ge=1)
    dim: int | None = Field(default=None, ge=1)
    dtype: DType = "float32"
    tensors: tuple[LatentTensorSpec, ...] | None = None
    kind: Literal["guidance", "kv_prefix_cache", "global_conditioning"] | None = None
    layers: int | None = Field(default=None, ge=1)
    layout: str = ""

    @model_validator(mode="after")
    def _one_form(self) -> LatentSpec:
        single = self.tokens is not None or self.dim is not None
        if self.tensors is not None:
            if single:
                raise ValueError("latent: give either 'tokens' and 'dim' (one tensor) or 'tensors' (several), not both")
            if not self.tensors:
                raise ValueError("latent.tensors must list at least one tensor")
            names = [t.name for t in self.tensors]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"latent.tensors: duplicate names {dup}")
        elif self.tokens is None or self.dim is None:
            raise ValueError("latent needs 'tokens' and 'dim' (one K×D tensor) or 'tensors' (several named tensors)")
        return self

    @property
    def is_multi(self) -> bool:
        """Whether the latent is the multi-tensor (schema 2) form."""
        return self.tensors is not None

    @property
    def nbytes(self) -> int:
        """Total size in bytes."""
        if self.tensors is not None:
            return sum(t.nbytes for t in self.tensors)
        import numpy as np

        assert self.tokens is not None and self.dim is not None
        return self.tokens * self.dim * np.dtype(self.dtype).itemsize


class TokenizerSpec(_Frozen):
    """Word-level tokenizer vocabulary (see :mod:`vla_runtime.core.text`).

    Attributes:
        kind: ``word`` (the default; schema 1).
        max_len: Ids are padded/truncated to this length.
        vocab: Word list; a word's id is its index.
        pad_token: Token whose id pads the sequence.
        unk_token: Token whose id replaces unknown words.
        lowercase: Lower-case the text before splitting.
    """

    kind: Literal["word"] = "word"
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


class PromptSpec(_Frozen):
    """How the task instruction becomes the text the tokenizer encodes.

    Attributes:
        kind: ``plain`` (the task as given); ``newline_terminated`` (π0, SmolVLA: append ``\\n``
            unless the task ends with one); ``pi05_state_prompt`` (π0.5: ``"Task: {clean task},
            State: {state bins};\\nAction: "``, the task stripped with ``_`` and ``\\n`` turned into
            spaces, each normalised state dim as the index of its bin among ``state_bins`` equal bins
            of [-1, 1], below -1 → -1).
        state_bins: Bins of the state tokens (``pi05_state_prompt``).
    """

    kind: Literal["plain", "newline_terminated", "pi05_state_prompt"]
    state_bins: int = Field(default=256, ge=2)

    @property
    def needs_state(self) -> bool:
        """Whether the prompt text depends on the (normalised) robot state."""
        return self.kind == "pi05_state_prompt"


class HfTokenizerSpec(_Frozen):
    """The policy's own Hugging Face ``tokenizer.json``, run through the ``tokenizers`` library (schema 2).

    Attributes:
        kind: ``hf_tokenizers``.
        file: The tokenizer file, relative to the package directory.
        source: Informational: where it came from (a Hub id or ``local:<folder>``).
        max_len: Ids are padded (and truncated, when ``truncation``) to this length: the graph's.
        padding_side: ``right`` or ``left``.
        truncation: Truncate longer prompts to ``max_len``.
        truncation_side: ``right`` or ``left``.
        add_special_tokens: Let the tokenizer's template add its special tokens (e.g. ``<bos>``).
        pad_id: Id of the padding token.
        prompt: The prompt format.
    """

    kind: Literal["hf_tokenizers"]
    file: str = Field(min_length=1)
    source: str | None = None
    max_len: int = Field(ge=1)
    padding_side: Literal["right", "left"] = "right"
    truncation: bool = True
    truncation_side: Literal["right", "left"] = "right"
    add_special_tokens: bool = True
    pad_id: int = Field(ge=0)
    prompt: PromptSpec = PromptSpec(kind="plain")

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"tokenizer file must be a path inside the package, got {v!r}")
        return v


#: The tokenizer block: ``kind: word`` (the default, schema 1) or ``kind: hf_tokenizers`` (schema 2).
AnyTokenizerSpec = Annotated[TokenizerSpec | HfTokenizerSpec, Field(discriminator="kind")]


NormKind = Literal["mean_std", "min_max", "quantiles", "quantile10", "none", "identity"]
#: The statistics each kind needs (lower, upper or mean, std).
NORM_FIELDS: dict[str, tuple[str, str]] = {
    "mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90"),
}


class Normalization(_Frozen):
    """Per-dimension normalisation statistics.

    Without ``eps`` (schema 1): ``mean_std``: ``norm = (x - mean) / std``; ``min_max``: ``norm`` in
    [-1, 1] maps linearly onto [min, max]; ``none``: identity.

    With ``eps`` (schema 2; what importers write) the formulas are LeRobot's normaliser's, per dim,
    evaluated in float32 in its operation order: ``mean_std`` ``n = (x − mean)/(std + eps)``,
    ``x = n·std + mean``; ``min_max`` ``d = max − min`` (``eps`` where ``d == 0``),
    ``n = 2(x − min)/d − 1``, ``x = (n + 1)/2·d + min``; ``quantiles`` the same with ``q01``/``q99``,
    ``quantile10`` with ``q10``/``q90``; ``identity`` (= ``none``). Nothing is clipped.
    """

    kind: NormKind = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None
    q01: tuple[float, ...] | None = None
    q99: tuple[float, ...] | None = None
    q10: tuple[float, ...] | None = None
    q90: tuple[float, ...] | None = None
    eps: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_stats(self) -> Normalization:
        for field_name in ("mean", "std", "min", "max", "q01", "q99", "q10", "q90"):
            _finite(field_name, getattr(self, field_name), "normalization ")
        if self.kind not in NORM_FIELDS:
            return self
        a_name, b_name = NORM_FIELDS[self.kind]
        a, b = getattr(self, a_name), getattr(self, b_name)
        if a is None or b is None:
            raise ValueError(f"normalization kind {self.kind!r} needs {a_name!r} and {b_name!r}")
        if len(a) != len(b):
            raise ValueError(f"{a_name} has {len(a)} entries but {b_name} has {len(b)}")
        if self.kind == "mean_std":
            if self.eps:  # LeRobot's (std + eps): a constant dim (std 0) is allowed
                bad = [s for s in b if s < 0]
                if bad:
                    raise ValueError(f"std entries must be >= 0, got {bad}")
            else:
                bad = [s for s in b if not s > 0]
                if bad:
                    raise ValueError(f"std entries must be finite and > 0, got {bad}")
        else:
            # With eps (LeRobot) a constant dim (max == min) is allowed: its span becomes eps.
            ok = (lambda lo, hi: hi >= lo) if self.eps else (lambda lo, hi: hi > lo)
            bad_pairs = [(lo, hi) for lo, hi in zip(a, b) if not ok(lo, hi)]
            if bad_pairs:
                raise ValueError(f"each {b_name} must exceed its {a_name}, got ({a_name}, {b_name}) pairs "
                                 f"{bad_pairs}")
        return self

    @property
    def is_identity(self) -> bool:
        """Whether the values pass unchanged (``none``/``identity``)."""
        return self.kind in ("none", "identity")

    @property
    def size(self) -> int | None:
        """Number of dims the stats cover, or None for an identity."""
        if self.kind not in NORM_FIELDS:
            return None
        values = getattr(self, NORM_FIELDS[self.kind][0])
        assert values is not None
        return len(values)

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(lower, upper) statistics of a range kind (``min_max``, ``quantiles``, ``quantile10``), else None."""
        if self.kind not in NORM_FIELDS or self.kind == "mean_std":
            return None
        a_name, b_name = NORM_FIELDS[self.kind]
        return getattr(self, a_name), getattr(self, b_name)


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


class ActionPadding(_Frozen):
    """The model works in a padded action dimension (schema 2; π0, π0.5, SmolVLA's ``max_action_dim``).

    Attributes:
        model_dim: Dims per step of the graph's chunk (and of its noise); the runtime keeps the first
            ``action_dim`` (the padded dims carry no action).
    """

    model_dim: int = Field(ge=1)


class ActionSpec(_Frozen):
    """Action layout and statistics.

    Attributes:
        head: ``continuous`` (model emits normalised values) or ``discrete``
            (model emits token ids or per-bin logits).
        discrete: Bin settings, required for ``head: discrete``.
        normalization: Stats that map the model's normalised values to physical units.
        groups: Ordered groups; their dims concatenate to the action vector.
        padding: The model's padded action dimension (schema 2), or None.
    """

    head: Literal["continuous", "discrete"] = "continuous"
    discrete: DiscreteHead | None = None
    normalization: Normalization = Normalization()
    groups: tuple[ActionGroup, ...] = Field(min_length=1)
    padding: ActionPadding | None = None

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
        if self.padding is not None and self.padding.model_dim < n:
            raise ValueError(f"action.padding.model_dim = {self.padding.model_dim} is smaller than the {n} action dims")
        return self

    @property
    def dim(self) -> int:
        """Number of action dims the groups define."""
        return sum(group_dim(g) for g in self.groups)

    @property
    def model_dim(self) -> int:
        """Dims per step of the model's own chunk (``padding.model_dim``, else :attr:`dim`)."""
        return self.padding.model_dim if self.padding is not None else self.dim


class ProprioPadding(_Frozen):
    """The model takes the state padded to a larger dimension (schema 2).

    Attributes:
        to: The padded dimension.
        value: What the padded dims hold.
        where: ``in_graph`` (the graph pads: the runtime feeds the unpadded state) or ``runtime``
            (the runtime pads the normalised state before feeding it).
    """

    to: int = Field(ge=1)
    value: float = 0.0
    where: Literal["in_graph", "runtime"] = "in_graph"


class ProprioSpec(_Frozen):
    """Proprioceptive state fed to the model (fast part; slow part too where it takes one).

    Attributes:
        names: State names in input order (joint names, ``<group>/gripper`` ...).
        normalization: Stats applied before feeding the model.
        padding: Padding to the model's state dimension (schema 2), or None.
    """

    names: tuple[str, ...] = Field(min_length=1)
    normalization: Normalization = Normalization()
    padding: ProprioPadding | None = None

    @model_validator(mode="after")
    def _check(self) -> ProprioSpec:
        size = self.normalization.size
        if size is not None and size != len(self.names):
            raise ValueError(f"proprio normalization has {size} entries but {len(self.names)} names")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"proprio.names: duplicate names {dup}")
        if self.padding is not None and self.padding.to < len(self.names):
            raise ValueError(f"proprio.padding.to = {self.padding.to} is smaller than the {len(self.names)} state dims")
        return self

    @property
    def feed_dim(self) -> int:
        """Dims of the state the runtime feeds (padded when ``padding.where`` is ``runtime``)."""
        if self.padding is not None and self.padding.where == "runtime":
            return self.padding.to
        return len(self.names)


class PreprocessStep(_Frozen):
    """One image preprocessing step of a camera (informational: the graph does it; schema 2).

    ``op`` is one of ``to_float`` (``scale``), ``normalize`` (a :class:`Normalization`'s kind and
    statistics, per channel), ``resize`` / ``resize_with_pad`` / ``center_crop`` (``height``,
    ``width``), ``affine`` (``scale``, ``offset``). The other fields describe the op as the policy
    ran it.
    """

    op: Literal["to_float", "normalize", "resize", "resize_with_pad", "center_crop", "affine"]
    scale: float | None = None
    offset: float | None = None
    height: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)
    interpolation: Literal["bilinear", "nearest", "bicubic", "area"] | None = None
    align_corners: bool | None = None
    antialias: bool | None = None
    pad: Literal["center", "left_top"] | None = None
    pad_value: float | None = None
    clamp: tuple[float, float] | None = None
    size_rule: str | None = None
    kind: NormKind | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None
    eps: float | None = None
    note: str = ""

    @model_validator(mode="after")
    def _fields_of_op(self) -> PreprocessStep:
        needs = {"to_float": ("scale",), "affine": ("scale", "offset"), "resize": ("height", "width"),
                 "resize_with_pad": ("height", "width"), "center_crop": ("height", "width"), "normalize": ("kind",)}
        missing = [f for f in needs[self.op] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"preprocess op {self.op!r} needs {missing}")
        if self.op == "normalize":
            Normalization(kind=self.kind, mean=self.mean, std=self.std, min=self.min, max=self.max,  # type: ignore[arg-type]
                          eps=self.eps)
        return self


class CameraPreprocess(_Frozen):
    """Where a camera's preprocessing happens.

    Attributes:
        in_graph: Must be true: the runtime feeds the raw ``uint8`` RGB frame at the camera's size and
            the graph does everything else (done once per frame, exactly as the policy trained).
        steps: What the graph does, in order (for the reader and ``vla-runtime check``).
    """

    in_graph: bool
    steps: tuple[PreprocessStep, ...] = ()

    @field_validator("in_graph")
    @classmethod
    def _in_graph(cls, v: bool) -> bool:
        if not v:
            raise ValueError("preprocess.in_graph must be true: the runtime feeds raw uint8 RGB frames at the camera's "
                             "size and the image preprocessing belongs in the graph (got false)")
        return v


class CameraSpec(_Frozen):
    """A camera the package's graphs take frames from (schema 2).

    Attributes:
        name: Camera name (the runtime config's ``cameras[].name``; the image input's ``camera``).
        height: Frame height the graph takes (what the policy was trained with).
        width: Frame width the graph takes.
        channels: 3 (RGB).
        encoding: ``rgb8``.
        feature: Informational: the policy's feature key (LeRobot's ``observation.images.<name>``).
        preprocess: The preprocessing the graph applies.
    """

    name: str = Field(min_length=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    channels: Literal[3] = 3
    encoding: Literal["rgb8"] = "rgb8"
    feature: str | None = None
    preprocess: CameraPreprocess | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "/" in v or v in RESERVED_OBSERVATION_KEYS:
            raise ValueError(f"camera name must not contain '/' nor be one of {list(RESERVED_OBSERVATION_KEYS)}, "
                             f"got {v!r}")
        return v


class SourceSpec(_Frozen):
    """Where an imported package came from (informational; schema 2)."""

    framework: str = Field(min_length=1)
    version: str = ""
    policy_type: str = ""
    checkpoint: str = ""


class ExportedGraph(_Frozen):
    """How one graph was exported (informational)."""

    onnx: str
    exporter: str = ""


class ExportSpec(_Frozen):
    """The exporter that wrote the package (informational; schema 2)."""

    tool: str = ""
    opset: int | None = None
    graphs: tuple[ExportedGraph, ...] = ()


class TemporalEnsembleSpec(_Frozen):
    """ACT's temporal ensembling (informational; schema 2): weights ``exp(−coeff·i)``, oldest first."""

    coeff: float

    @field_validator("coeff")
    @classmethod
    def _finite_coeff(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"temporal_ensemble.coeff must be finite, got {v}")
        return v


class ModelSpec(_Frozen):
    """The whole ``model.yaml``.

    Attributes:
        schema_version: 1, or 2 for a package that uses what only schema 2 can say (module docstring).
        name: Package name.
        description: Free text.
        trained: False for random-weight packages (timing only).
        purpose: What the package is for.
        robot: Robot the action layout is for.
        control_rate_hz: Rate at which chunk steps are executed.
        chunk_horizon: H, steps per action chunk the runtime receives.
        action_dim: A, dims per step the runtime receives (after discrete decoding and unpadding).
        model_horizon: Steps of the graph's own chunk (schema 2; default H); the runtime keeps steps
            ``chunk_offset .. chunk_offset + H − 1`` of it.
        chunk_offset: First step of the graph's chunk the runtime keeps (schema 2; Diffusion Policy's
            ``n_obs_steps − 1``).
        n_action_steps: Informational (schema 2): how many steps of a chunk the policy's own loop
            executes before predicting the next (LeRobot's execution horizon).
        n_obs_steps: Observations per model call (schema 2): 1, or a window of the last N (oldest
            first; at the first call the window is N copies of that observation).
        cameras: The cameras and their frame sizes (schema 2; schema 1 takes them from the image inputs).
        latent: The slow→fast latent; None only without a slow part.
        slow: Slow (VLM / observation encoder) graph; None (schema 2) when the fast part takes the
            cameras itself (ACT).
        fast: Fast (action expert) graph: one-shot, one flow-matching velocity step or one diffusion
            denoiser step.
        tokenizer: Instruction tokenizer (word list, or the policy's own ``tokenizer.json``); None when
            no graph takes instruction tokens.
        proprio: Proprio layout and stats.
        action: Action layout and stats.
        source: Where an imported package came from.
        export: The exporter that wrote it.
        temporal_ensemble: ACT's temporal ensembling, as the checkpoint configured it.
    """

    schema_version: Literal[1, 2] = 1
    name: str = Field(min_length=1)
    description: str = ""
    trained: bool
    purpose: str = ""
    robot: str | None = None
    control_rate_hz: float = Field(gt=0)
    chunk_horizon: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    model_horizon: int | None = Field(default=None, ge=1)
    chunk_offset: int = Field(default=0, ge=0)
    n_action_steps: int | None = Field(default=None, ge=1)
    n_obs_steps: int = Field(default=1, ge=1)
    cameras: tuple[CameraSpec, ...] = ()
    latent: LatentSpec | None = None
    slow: GraphSpec | None = None
    fast: FastGraphSpec
    tokenizer: AnyTokenizerSpec | None = None
    proprio: ProprioSpec
    action: ActionSpec
    source: SourceSpec | None = None
    export: ExportSpec | None = None
    temporal_ensemble: TemporalEnsembleSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _word_tokenizer_default(cls, data: Any) -> Any:
        # Schema-1 tokenizer blocks have no 'kind': they are word lists.
        if isinstance(data, dict) and isinstance(data.get("tokenizer"), dict) and "kind" not in data["tokenizer"]:
            data = {**data, "tokenizer": {"kind": "word", **data["tokenizer"]}}
        return data

    @model_validator(mode="after")
    def _cross_check(self) -> ModelSpec:
        if not MIN_CONTROL_RATE_HZ <= self.control_rate_hz <= MAX_CONTROL_RATE_HZ:
            raise ValueError(f"control_rate_hz = {self.control_rate_hz} is not a robot control rate "
                             f"({MIN_CONTROL_RATE_HZ:g}..{MAX_CONTROL_RATE_HZ:g} Hz)")
        self._check_version()
        if self.action.dim != self.action_dim:
            raise ValueError(f"action_dim is {self.action_dim} but action.groups define {self.action.dim} dims")
        if self.chunk_offset + self.chunk_horizon > self.model_chunk_horizon:
            raise ValueError(f"chunk_offset {self.chunk_offset} + chunk_horizon {self.chunk_horizon} exceeds "
                             f"model_horizon {self.model_chunk_horizon}")
        if self.action.padding is not None and self.action.head != "continuous":
            raise ValueError("action.padding applies to a continuous head only, got head 'discrete'")
        self._check_roles()
        self._check_latent()
        if self.fast.is_flow:
            self._check_flow_graph()
        elif self.fast.is_diffusion:
            self._check_diffusion_graph()
        else:
            self._check_one_shot_graph()
        prev = self.fast.input_by_role("prev_chunk")
        if prev is not None and tuple(prev.shape[-2:]) != (self.chunk_horizon, self.action_dim):
            raise ValueError(
                f"prev_chunk tensor {prev.name!r} has shape {list(prev.shape)}, "
                f"expected trailing dims {[self.chunk_horizon, self.action_dim]}"
            )
        self._check_instructions()
        self._check_proprio_inputs()
        self._check_cameras()
        return self

    # ------------------------------------------------------------------ the checks
    def _graphs(self) -> tuple[tuple[str, GraphSpec], ...]:
        return (("slow", self.slow),) * (self.slow is not None) + (("fast", self.fast),)  # type: ignore[return-value]

    def _check_version(self) -> None:
        """A schema-1 file must not use what only schema 2 can say (the error names the field)."""
        if self.schema_version >= 2:
            return
        uses: list[str] = []
        for field_name in ("model_horizon", "n_action_steps", "source", "export", "temporal_ensemble"):
            if getattr(self, field_name) is not None:
                uses.append(field_name)
        if self.chunk_offset:
            uses.append("chunk_offset")
        if self.n_obs_steps != 1:
            uses.append("n_obs_steps")
        if self.cameras:
            uses.append("cameras")
        if self.slow is None:
            uses.append("a package without a slow part")
        if self.latent is not None and self.latent.is_multi:
            uses.append("latent.tensors")
        if self.tokenizer is not None and self.tokenizer.kind != "word":
            uses.append(f"tokenizer.kind {self.tokenizer.kind!r}")
        if self.fast.is_diffusion:
            uses.append("fast.kind 'diffusion'")
        if self.action.padding is not None:
            uses.append("action.padding")
        if self.proprio.padding is not None:
            uses.append("proprio.padding")
        for what, norm in (("action", self.action.normalization), ("proprio", self.proprio.normalization)):
            if norm.eps is not None:
                uses.append(f"{what}.normalization.eps")
            if norm.kind in ("quantiles", "quantile10", "identity"):
                uses.append(f"{what}.normalization.kind {norm.kind!r}")
        for t in self.fast.inputs:
            if t.role in ("image", "instruction_ids", "instruction_mask", "noise"):
                uses.append(f"fast input {t.name!r} with role {t.role!r}")
        for _, g in self._graphs():
            for t in g.inputs:
                if t.layout == "NTHWC":
                    uses.append(f"image layout NTHWC ({t.name!r})")
        if uses:
            raise ValueError(f"schema_version is 1 but the file uses {', '.join(uses)}: set schema_version: 2")
        for field_name in ("slow", "latent", "tokenizer"):
            if getattr(self, field_name) is None:
                raise ValueError(f"schema_version 1 needs a {field_name!r} block")

    def _check_roles(self) -> None:
        rules: list[tuple[str, tuple[TensorSpec, ...], str, tuple[str, ...]]] = []
        if self.slow is not None:
            rules += [("input", self.slow.inputs, self.slow.onnx, get_args(SlowInputRole)),
                      ("output", self.slow.outputs, self.slow.onnx, get_args(SlowOutputRole))]
        rules += [("input", self.fast.inputs, self.fast.onnx, get_args(FastInputRole)),
                  ("output", self.fast.outputs, self.fast.onnx, get_args(FastOutputRole))]
        for kind, tensors, onnx_file, allowed in rules:
            for t in tensors:
                if t.role not in allowed:
                    raise ValueError(f"{kind} {t.name!r} of {onnx_file}: role {t.role!r} is not one of {list(allowed)}")
        own = {"one_shot": (), "flow_matching": FLOW_INPUT_ROLES + FLOW_OUTPUT_ROLES,
               "diffusion": ("noisy_actions",) + DIFFUSION_ROLES}[self.fast.kind]
        for t in (*self.fast.inputs, *self.fast.outputs):
            if t.role in FLOW_INPUT_ROLES + FLOW_OUTPUT_ROLES + DIFFUSION_ROLES and t.role not in own:
                kinds = [k for k, roles in (("flow_matching", FLOW_INPUT_ROLES + FLOW_OUTPUT_ROLES),
                                            ("diffusion", ("noisy_actions",) + DIFFUSION_ROLES)) if t.role in roles]
                raise ValueError(f"fast tensor {t.name!r} has role {t.role!r}, which only a "
                                 f"{' or '.join(repr('kind: ' + k) for k in kinds)} fast part takes (this one is kind "
                                 f"{self.fast.kind!r})")
        if self.fast.kind != "one_shot":
            for t in (*self.fast.inputs, *self.fast.outputs):
                if t.role in ("actions", "prev_chunk", "prefix_mask", "noise"):
                    what = "a 'velocity'" if self.fast.is_flow else "a 'denoiser_output'"
                    raise ValueError(f"fast tensor {t.name!r}: role {t.role!r} does not apply to a {self.fast.kind} "
                                     f"fast part (it outputs {what}; the runtime draws the noise and guides sampling "
                                     "towards the executing plan itself)")
        for t in self.fast.inputs_by_role("noise"):
            if not t.dtype.startswith("float"):
                raise ValueError(f"noise tensor {t.name!r} has dtype {t.dtype}, expected a float dtype")

    def _check_latent(self) -> None:
        if self.slow is None:
            if self.latent is not None:
                raise ValueError("a 'latent' block needs a slow part that writes it (this package has no 'slow')")
            lat_in = self.fast.inputs_by_role("latent")
            if lat_in:
                raise ValueError(f"fast input {lat_in[0].name!r} has role 'latent' but the package has no slow part")
            return
        if self.latent is None:
            raise ValueError("a package with a slow part needs a 'latent' block (what the slow part hands the fast "
                             "one)")
        lat_out = self.slow.outputs_by_role("latent")
        if not lat_out:
            raise ValueError("slow graph needs an output with role 'latent'")
        lat_in = self.fast.inputs_by_role("latent")
        if not lat_in:
            raise ValueError("fast graph needs an input with role 'latent'")
        if not self.latent.is_multi:
            want = (self.latent.tokens, self.latent.dim)
            for t in (lat_out[0], lat_in[0]):
                if tuple(t.shape[-2:]) != want:
                    raise ValueError(f"latent tensor {t.name!r} has shape {list(t.shape)}, expected trailing dims "
                                     f"{list(want)}")
            for kind, ts in (("slow outputs", lat_out), ("fast inputs", lat_in)):
                if len(ts) > 1:
                    raise ValueError(f"{len(ts)} {kind} have role 'latent' ({[t.name for t in ts]}) but the latent is "
                                     "one tensor (tokens × dim): list them under latent.tensors (schema 2)")
            return
        assert self.latent.tensors is not None
        declared = {t.name: t for t in self.latent.tensors}
        out_names = [t.name for t in lat_out]
        if sorted(out_names) != sorted(declared):
            raise ValueError(f"latent.tensors {sorted(declared)} must be exactly the slow outputs with role 'latent', "
                             f"got {sorted(out_names)}")
        for kind, tensors in (("slow output", lat_out), ("fast input", lat_in)):
            for t in tensors:
                d = declared.get(t.name)
                if d is None:
                    raise ValueError(f"{kind} {t.name!r} has role 'latent' but is not one of latent.tensors "
                                     f"{sorted(declared)}")
                if tuple(t.shape) != tuple(d.shape) or t.dtype != d.dtype:
                    raise ValueError(f"{kind} {t.name!r} is {list(t.shape)} {t.dtype} but latent.tensors says "
                                     f"{list(d.shape)} {d.dtype}")

    def _check_one_shot_graph(self) -> None:
        acts = self.fast.output_by_role("actions")
        if acts is None:
            raise ValueError("fast graph needs an output with role 'actions'")
        self._check_actions_shape(acts)

    def _check_chunk_tensor(self, role: str, t: TensorSpec) -> None:
        h, a = self.model_chunk_horizon, self.model_action_dim
        if tuple(t.shape[-2:]) != (h, a) or not t.dtype.startswith("float"):
            which = "(model_horizon, action.padding.model_dim)" if (h, a) != (self.chunk_horizon, self.action_dim) \
                else "(chunk_horizon, action_dim)"
            raise ValueError(f"{role} tensor {t.name!r} has shape {list(t.shape)} dtype {t.dtype}, expected "
                             f"trailing dims [{h}, {a}] {which} and a float dtype")

    def _unique_roles(self, roles: tuple[str, ...]) -> None:
        g = self.fast
        for kind, tensors in (("input", g.inputs), ("output", g.outputs)):
            for role in roles:
                names = [t.name for t in tensors if t.role == role]
                if len(names) > 1:
                    raise ValueError(f"fast graph has {len(names)} {kind}s with role {role!r}: {names}")

    def _check_flow_graph(self) -> None:
        """The tensors of a flow-matching fast part (kind, roles, shapes, dtypes)."""
        g = self.fast
        if self.action.head != "continuous":
            raise ValueError(f"a flow_matching fast part needs action head 'continuous', got {self.action.head!r}")
        single_latent = self.latent is not None and not self.latent.is_multi
        self._unique_roles((*FLOW_INPUT_ROLES, *FLOW_OUTPUT_ROLES, "proprio") + (("latent",) if single_latent else ()))
        chunk_roles = (("input", "noisy_actions", True), ("output", "velocity", True),
                       ("input", "guidance_cotangent", False), ("output", "guidance_vjp", False))
        for kind, role, required in chunk_roles:
            t = g.input_by_role(role) if kind == "input" else g.output_by_role(role)
            if t is None:
                if required:
                    raise ValueError(f"a flow_matching fast graph needs an {kind} with role {role!r}")
                continue
            self._check_chunk_tensor(role, t)
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

    def _check_diffusion_graph(self) -> None:
        """The tensors of a diffusion fast part (one denoiser step)."""
        g = self.fast
        if self.action.head != "continuous":
            raise ValueError(f"a diffusion fast part needs action head 'continuous', got {self.action.head!r}")
        self._unique_roles(("noisy_actions", *DIFFUSION_ROLES, "proprio"))
        for kind, role in (("input", "noisy_actions"), ("output", "denoiser_output")):
            t = g.input_by_role(role) if kind == "input" else g.output_by_role(role)
            if t is None:
                raise ValueError(f"a diffusion fast graph needs an {kind} with role {role!r}")
            self._check_chunk_tensor(role, t)
        ts = g.input_by_role("diffusion_timestep")
        if ts is None:
            raise ValueError("a diffusion fast graph needs an input with role 'diffusion_timestep'")
        if any(d not in (1, None) for d in ts.shape) or not ts.dtype.startswith(("int", "float")):
            raise ValueError(f"diffusion_timestep tensor {ts.name!r} has shape {list(ts.shape)} dtype {ts.dtype}, "
                             "expected one number (shape [], [1] or [1, 1])")

    def _check_actions_shape(self, acts: TensorSpec) -> None:
        h, a = self.model_chunk_horizon, self.model_action_dim
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

    def _check_instructions(self) -> None:
        for part, g in self._graphs():
            for role in ("instruction_ids", "instruction_mask"):
                ids = g.input_by_role(role)
                if ids is None:
                    continue
                if self.tokenizer is None:
                    raise ValueError(f"{part} input {ids.name!r} (role {role!r}) needs a 'tokenizer' block")
                if ids.shape[-1] not in (None, self.tokenizer.max_len):
                    raise ValueError(f"{role} tensor {ids.name!r} has length {ids.shape[-1]} but tokenizer.max_len is "
                                     f"{self.tokenizer.max_len}")

    def _check_proprio_inputs(self) -> None:
        want = self.proprio.feed_dim
        for part, g in self._graphs():
            for pro in g.inputs_by_role("proprio"):
                if pro.shape[-1] not in (None, want):
                    what = "proprio.padding.to" if want != len(self.proprio.names) else "proprio.names lists"
                    raise ValueError(f"proprio tensor {pro.name!r} has {pro.shape[-1]} dims but {what} {want}")
                if self.n_obs_steps > 1 and (len(pro.shape) != 3 or pro.shape[1] not in (None, self.n_obs_steps)):
                    raise ValueError(f"{part} proprio tensor {pro.name!r} has shape {list(pro.shape)}, expected "
                                     f"[1, {self.n_obs_steps}, {want}] (a window of n_obs_steps states)")

    def _check_cameras(self) -> None:
        names = [c.name for c in self.cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cameras: duplicate names {dup}")
        images = [(part, t) for part, g in self._graphs() for t in g.inputs_by_role("image")]
        if not self.cameras:
            if self.n_obs_steps > 1 and images:
                raise ValueError("n_obs_steps > 1 with image inputs needs a 'cameras' block")
            return
        cams = {c.name: c for c in self.cameras}
        used: set[str] = set()
        for part, t in images:
            if t.camera is None or t.camera not in cams:
                raise ValueError(f"{part} image input {t.name!r} must name one of the cameras {names} "
                                 f"(camera: {t.camera!r})")
            cam = cams[t.camera]
            used.add(cam.name)
            if t.dtype != "uint8":
                raise ValueError(f"{part} image input {t.name!r} has dtype {t.dtype}: with a 'cameras' block the graph "
                                 "takes the raw uint8 frame")
            layouts = ("NTHWC",) if self.n_obs_steps > 1 else ("NHWC", "NTHWC")
            if t.layout not in layouts:
                raise ValueError(f"{part} image input {t.name!r} has layout {t.layout}, expected "
                                 f"{' or '.join(layouts)} (n_obs_steps = {self.n_obs_steps})")
            if t.layout == "NTHWC" and t.shape[1] not in (None, self.n_obs_steps):
                raise ValueError(f"{part} image input {t.name!r} holds {t.shape[1]} frames, n_obs_steps is "
                                 f"{self.n_obs_steps}")
            if t.shape[-1] != 3 or t.image_hw != (cam.height, cam.width):
                raise ValueError(f"{part} image input {t.name!r} has shape {list(t.shape)} but camera {cam.name!r} is "
                                 f"{cam.height}x{cam.width}x3")
        unused = [n for n in names if n not in used]
        if unused:
            raise ValueError(f"cameras {unused} feed no image input")

    # ------------------------------------------------------------------ derived values
    @property
    def control_period_s(self) -> float:
        """Seconds between chunk steps (``1 / control_rate_hz``)."""
        return 1.0 / self.control_rate_hz

    @property
    def model_chunk_horizon(self) -> int:
        """Steps of the graph's own chunk (``model_horizon``, else ``chunk_horizon``)."""
        return self.model_horizon if self.model_horizon is not None else self.chunk_horizon

    @property
    def model_action_dim(self) -> int:
        """Dims per step of the graph's own chunk (``action.padding.model_dim``, else ``action_dim``)."""
        return self.action.model_dim

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts the package has: ``("slow", "fast")`` or ``("fast",)``."""
        return tuple(p for p, _ in self._graphs())

    @property
    def state_in_slow(self) -> bool:
        """Whether the slow step needs the robot state (a ``proprio`` input, or a prompt made from it)."""
        if self.slow is None:
            return False
        prompt_state = isinstance(self.tokenizer, HfTokenizerSpec) and self.tokenizer.prompt.needs_state
        return self.slow.input_by_role("proprio") is not None or prompt_state


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
    version = data.get("schema_version", 1)
    if version not in SCHEMA_VERSIONS:
        raise ValueError(f"{p}: schema_version {version!r} is not one this runtime reads ({list(SCHEMA_VERSIONS)}); "
                         "a newer runtime may read it")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{p}: invalid model spec:\n{e}") from e
