"""One policy step, slow and fast: observations in, engine call, latent or absolute chunk out.

:class:`SlowStep` is camera image(s) + instruction → slow engine → K×D latent. :class:`FastStep` is
latent + measured state (+ the executing plan's prefix, RTC-style) → fast engine → decoded chunk of
absolute actions in robot units. Each owns its preallocated feeds (:mod:`core.policy_io`), times its
engine call, and is the ONE place the step is written: the slow and fast nodes, ``vla-runtime
replay`` and the simulated-time evaluation all call these objects.

The fast step reads the measured state as one vector, :attr:`FastStep.state_layout`: the package's
proprio names, then (when the action layout has delta dims) one value per action dim, the current
value for a delta dim and 0.0 for the others. A :class:`~vla_runtime.core.measured_state.MeasuredState`
built by :meth:`FastStep.measured_state` holds every name it needs (a gripper dim through its
group's joint, a Cartesian pose through the measured hand pose, both from the robot config), and
one gather ``measured.values[idx]`` with ``idx = measured.index(step.state_layout)`` gives that
vector.

:meth:`FastStep.run` depends on nothing but its arguments and the step's own buffers, so a worker
thread that owns the step can call it with a snapshot (state vector, prefix, latent). The 30 Hz
tick calls its two halves, :meth:`FastStep.infer` and :meth:`FastStep.decode`, so it can judge an
inference over budget before decoding. Nothing here allocates beyond what numpy's arithmetic and the
engine do, and nothing logs.

Pure: numpy and the :class:`~vla_runtime.engines.base.Engine` interface, no rclpy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vla_runtime.core.contract import FeatureLayout
from vla_runtime.core.measured_state import MeasuredState
from vla_runtime.core.policy_io import FastFeeds, Image, SlowFeeds, fit_frame, image_tensor

if TYPE_CHECKING:
    from vla_runtime.core.action_space import ActionSpace, ProprioNormalizer
    from vla_runtime.core.config import RobotProfile
    from vla_runtime.core.flow import RtcGuidance
    from vla_runtime.core.model_spec import GraphSpec, ModelSpec, TensorSpec
    from vla_runtime.core.text import InstructionTokenizer, TokenizedText, WordTokenizer
    from vla_runtime.engines.base import Engine
    from vla_runtime.engines.model_package import ModelPackage

__all__ = [
    "Candidates", "ChunkFastStep", "ChunkResult", "FastResult", "FastStep", "LatentResult", "LatentSlowStep",
    "ObservationWindow", "PackageFastStep", "PolicyOutput", "PolicyRunner", "RemoteChunkStep", "SlowResult",
    "SlowStep", "fast_step_for", "latent_layout",
]

#: ``(prefix (H, A) absolute, mask (H,) bool)``, as :meth:`ChunkScheduler.prefix` returns it.
Prefix = tuple[np.ndarray, np.ndarray]


class SlowResult(NamedTuple):
    """One slow step's output.

    Attributes:
        latent: ``(K, D)`` latent (owned by the caller).
        infer_ns: Wall time of the engine call, ns.
    """

    latent: np.ndarray
    infer_ns: int


class FastResult(NamedTuple):
    """One fast step's output.

    Attributes:
        chunk: ``(H, A)`` float64 absolute actions in robot units, columns as the action space's
            ``dim_names``.
        raw: The engine's raw output (model space), as the failure detector's features take it.
        infer_ns: Wall time of the engine call, ns.
    """

    chunk: np.ndarray
    raw: np.ndarray
    infer_ns: int


class SlowStep:
    """Camera image(s) + instruction → the slow engine → latent.

    Args:
        spec: The model package spec.
        engine: The slow graph's engine.
        tokenizer: The package's instruction tokenizer.
        camera_names: Camera names available at run time, in config order (see :class:`SlowFeeds`).

    Raises:
        ValueError: The slow graph wants a camera that is not configured, or has inputs the runtime
            cannot feed.
    """

    def __init__(self, spec: ModelSpec, engine: Engine, tokenizer: WordTokenizer, camera_names: list[str]) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.feeds = SlowFeeds(spec.slow, list(camera_names))
        self.latent_name = (spec.slow.output_by_role("latent") or spec.slow.outputs[0]).name
        self.latent_shape = (spec.latent.tokens, spec.latent.dim)
        self._instruction: str | None = None
        self._tokens: TokenizedText | None = None

    @classmethod
    def from_package(cls, package: ModelPackage, camera_names: list[str]) -> SlowStep:
        """The slow step of a loaded package (its slow engine must be loaded)."""
        if package.slow_engine is None:
            raise ValueError(f"model package {package.path} was loaded without its slow engine")
        return cls(package.spec, package.slow_engine, package.tokenizer, camera_names)

    @property
    def cameras(self) -> list[str]:
        """The cameras the step takes an image from, one per image input."""
        return self.feeds.cameras

    def run(self, images: Mapping[str, Image], instruction: str) -> SlowResult:
        """One slow step.

        Args:
            images: Camera name → H×W×3 uint8 RGB frame, for every camera in :attr:`cameras`.
            instruction: The task instruction (tokenized here; the last one's tokens are reused).

        Returns:
            The ``(K, D)`` latent and the engine call's wall time.

        Raises:
            KeyError: A camera's image is missing.
            ValueError: An image is not H×W×3.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        if instruction != self._instruction or self._tokens is None:
            self._tokens = self.tokenizer.encode(instruction)
            self._instruction = instruction
        feeds = self.feeds.build(images, self._tokens.ids, self._tokens.mask)
        t0 = time.perf_counter_ns()
        out = self.engine.infer(feeds)
        infer_ns = time.perf_counter_ns() - t0
        return SlowResult(out[self.latent_name].reshape(self.latent_shape), infer_ns)


class FastStep:
    """Latent + measured state (+ RTC prefix) → the fast engine → absolute action chunk.

    Args:
        spec: The model package spec.
        engine: The fast graph's engine.
        action_space: Decoder of the fast graph's output.
        proprio: The package's proprio normaliser.
        use_prefix: Condition on the executing plan's prefix when the graph has prefix inputs
            (``scheduler.rtc_prefix``); :attr:`uses_prefix` says whether it does.

    Raises:
        ValueError: The fast graph lacks latent/proprio inputs or has inputs the runtime cannot feed.
    """

    def __init__(self, spec: ModelSpec, engine: Engine, action_space: ActionSpace, proprio: ProprioNormalizer,
                 use_prefix: bool = True) -> None:
        self.engine = engine
        self.space = action_space
        self.proprio = proprio
        self.feeds = FastFeeds(spec)
        self.horizon = spec.chunk_horizon
        self.actions_name = self.feeds.actions_spec.name
        self.uses_prefix = bool(use_prefix) and self.feeds.supports_prefix
        self.feature_layout = FeatureLayout(spec.latent.dim, spec.chunk_horizon, action_space.dim)
        proprio_names = tuple(proprio.names)
        dims = action_space.dim_names
        delta = [n for n, d in zip(dims, action_space.delta_mask) if d]
        self._n_proprio = len(proprio_names)
        #: The delta dims need the current state (``to_absolute``); without them ``current`` is None.
        self.needs_current = bool(delta)
        #: Every measured name the step reads (the names of its MeasuredState), each once.
        self.measured_names: tuple[str, ...] = proprio_names + tuple(n for n in delta if n not in proprio_names)
        #: The state vector :meth:`run` takes: proprio names, then (delta layouts) one value per
        #: action dim, ``None`` standing for a dim that is not relative (read as 0.0).
        self.state_layout: tuple[str | None, ...] = proprio_names + (
            tuple(n if d else None for n, d in zip(dims, action_space.delta_mask)) if delta else ())
        self.state_size = len(self.state_layout)
        #: As :class:`PackageFastStep`'s: a schema-1 one-shot fast part reads one K×D latent and no camera.
        self.has_latent = True
        self.latent_tensors: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
        self.cameras: list[str] = []

    @classmethod
    def from_package(cls, package: ModelPackage, engine: Engine | None = None, use_prefix: bool = True) -> FastStep:
        """The fast step of a loaded package; ``engine`` replaces its fast engine (e.g. the null engine)."""
        engine = engine if engine is not None else package.fast_engine
        if engine is None:
            raise ValueError(f"model package {package.path} was loaded without its fast engine")
        return cls(package.spec, engine, package.action_space, package.proprio, use_prefix)

    @property
    def latent_view(self) -> np.ndarray:
        """The K×D latent feed, for ``LatentReader.read_into`` (what :meth:`run` uses without ``latent``)."""
        return self.feeds.latent_view

    def measured_state(self, robot: RobotProfile) -> MeasuredState:
        """A fresh measured state holding :attr:`measured_names`, measured as ``robot``'s config says."""
        return MeasuredState.for_robot(self.measured_names, robot)

    def infer(self, state: np.ndarray, prefix: Prefix | None = None,
              latent: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Fill the feeds and run the engine (the first half of :meth:`run`).

        Args:
            state: ``(state_size,)`` values in :attr:`state_layout` order.
            prefix: The executing plan on the new chunk's grid and the mask of the actions that will
                run before it arrives (``ChunkScheduler.prefix``); None or an all-False mask: no
                conditioning. Ignored unless :attr:`uses_prefix`.
            latent: ``(K, D)`` latent; None: the one already in :attr:`latent_view`.

        Returns:
            (raw output, engine wall time in ns).

        Raises:
            ValueError: ``state`` has the wrong length.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        if state.shape[0] != self.state_size:
            raise ValueError(f"state must have {self.state_size} values ({list(self.state_layout)}), "
                             f"got shape {state.shape}")
        feeds = self.feeds
        if latent is not None:
            feeds.latent_view[...] = latent
        feeds.set_proprio(self.proprio(state[: self._n_proprio]))
        if self.uses_prefix:
            if prefix is not None and prefix[1].any():
                space = self.space
                current = state[self._n_proprio:] if self.needs_current else None
                feeds.set_prefix(space.encode(space.to_relative(prefix[0], current)), prefix[1].astype(np.float32))
            else:
                feeds.set_prefix(None, None)
        t0 = time.perf_counter_ns()
        out = self.engine.infer(feeds.feeds)
        return out[self.actions_name], time.perf_counter_ns() - t0

    def decode(self, raw: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Raw output → ``(H, A)`` absolute actions (the second half of :meth:`run`).

        Args:
            raw: What :meth:`infer` returned.
            state: The state vector :meth:`infer` was given (delta dims are relative to it).

        Raises:
            ValueError: The output is non-finite or has the wrong shape (naming the output).
        """
        try:
            return self.space.to_absolute(self.space.decode(raw),
                                          state[self._n_proprio:] if self.needs_current else None)
        except ValueError as e:
            raise ValueError(f"fast graph output {self.actions_name!r}: {e}") from None

    def run(self, state: np.ndarray, prefix: Prefix | None = None, latent: np.ndarray | None = None,
            exec_steps: int = 0, images: Mapping[str, Image] | None = None) -> FastResult:
        """One fast step: :meth:`infer` then :meth:`decode`.

        ``exec_steps`` (the executing plan's steps already run, RTC's ``s``) is for
        :class:`PackageFastStep`'s guidance, ``images`` for its fast parts that take cameras; a
        one-shot schema-1 graph takes neither.

        Raises:
            ValueError: A bad ``state``, or a non-finite or wrong-shape output.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        raw, infer_ns = self.infer(state, prefix, latent)
        return FastResult(self.decode(raw, state), raw, infer_ns)

    def features_into(self, out: np.ndarray, latent: np.ndarray, raw: np.ndarray, latent_age_s: float,
                      infer_ms: float, hold: bool) -> np.ndarray:
        """The failure detector's feature vector of one step, written into ``out`` (``feature_layout.size``)."""
        return self.feature_layout.pack_into(out, latent, raw, latent_age_s, infer_ms, hold)

    #: Test-time chunk selection: a schema-1 one-shot graph takes no noise, so every candidate would be
    #: the same chunk (:meth:`check_candidates` refuses more than one).
    sampling = "deterministic"
    has_value = False

    def check_candidates(self, n: int) -> None:
        """Refuse ``n`` candidates per inference where the head cannot draw different ones (named)."""
        _check_candidates(self.sampling, n, self.actions_name)

    def run_candidates(self, n: int, state: np.ndarray, prefix: Prefix | None = None,
                       latent: np.ndarray | None = None, exec_steps: int = 0,
                       images: Mapping[str, Image] | None = None) -> Candidates:
        """:meth:`run` as one candidate (``n`` must be 1: the head is deterministic)."""
        self.check_candidates(n)
        return Candidates([self.run(state, prefix, latent, exec_steps, images)], None, False)


class PackageFastStep:
    """The fast node's step for every fast part :class:`ChunkFastStep` runs, behind :class:`FastStep`'s interface.

    :func:`fast_step_for` builds it for a flow-matching fast part (any schema) and for every fast part of an
    imported (schema 2) package: flow matching, diffusion, and one-shot graphs (a ``noise`` input is
    filled from the step's seeded generator). It has :class:`FastStep`'s interface (``run(state, prefix,
    latent, exec_steps, images)`` → :class:`FastResult`, :attr:`state_layout`, :attr:`feature_layout`,
    :meth:`measured_state`, :meth:`features_into`), so the fast node and its worker drive either.

    What the fast part is conditioned on decides what the node feeds it:

    * one K×D latent: :attr:`latent_view` is the feed (``LatentReader.read_into`` can copy into it);
    * a latent of several named tensors (π0/π0.5/SmolVLA's K/V prefix cache and its mask, Diffusion
      Policy's global conditioning): :attr:`latent_tensors` is their ``(name, shape, dtype)`` layout as
      the slow part writes it (:func:`latent_layout`), which the node's buffer reader opens with; ``run``
      takes them as a dict by name;
    * no slow part (ACT: one graph on cameras + state): :attr:`has_latent` is False and :attr:`cameras`
      names the cameras whose newest frames ``run`` takes (``images``); frames of another size than the
      package's are fitted here (on the caller's thread: the fast node's worker, never its loop);
    * a whole policy on a server (fast engine ``openpi_remote``, :class:`RemoteChunkStep`): no latent,
      the package's cameras, the instruction and the state go to the server, a fresh seed each chunk.

    Sampling is :class:`ChunkFastStep`'s (the runtime's Euler loop over one velocity graph; DDPM/DDIM for
    diffusion). With the executing plan's prefix and ``max_guidance > 0`` a flow-matching chunk is
    sampled with real-time chunking (:class:`~vla_runtime.core.flow.RtcGuidance`): its first ``d`` steps
    (the prefix mask: those that execute before the chunk can take over) frozen to the plan, a soft mask
    over the rest of the plan's overlap, the guidance weight clipped at ``max_guidance``; exact guidance
    through the graph's VJP where it exports one. ``max_guidance = 0``, and every other fast kind, sample
    unguided (the delay-aware cross-fade then joins the chunks).

    The state vector is the package's proprio, in its order (delta action dims are made absolute
    against the proprio value of the same name).

    Args:
        package: The loaded package.
        engine: Replaces the package's fast engine (e.g. a delayed one).
        max_guidance: RTC's β (``scheduler.rtc_max_guidance``).
        seed: Seed of the noise generator (runs are reproducible).
        camera_names: Cameras configured at run time (a fast part that takes cameras); default the
            package's own.
        instruction: The task, for a fast part that takes instruction tokens.
        jacobian: ``scheduler.rtc_jacobian``: ``exact`` guides through the graph's VJP (the paper's),
            ``identity`` pulls the clean-chunk estimate itself (for a model whose estimate ignores the
            noisy chunk, as the reference flow head's does, the exact gradient is zero and only this
            pulls), ``auto`` is exact where the graph exports a VJP.

    Raises:
        ValueError: A fast part this step cannot drive (named).
    """

    def __init__(self, package: ModelPackage, engine: Engine | None = None, max_guidance: float = 5.0,
                 seed: int = 0, camera_names: list[str] | None = None, instruction: str = "",
                 jacobian: str = "auto") -> None:
        spec = package.spec
        engine = engine if engine is not None else package.fast_engine
        # An injected delay (engines/delay.py, testing only) is one inference's: once per chunk, not per
        # denoising step; the steps call the engine it wraps.
        self._inject = getattr(engine, "inject", None)
        inner = getattr(engine, "inner", engine) if self._inject is not None else engine
        #: A whole policy on a server (engine ``openpi_remote``): cameras + prompt + state go to it.
        self.remote: RemoteChunkStep | None = None
        self.step: ChunkFastStep | None = None
        if getattr(inner, "whole_policy", False):
            self.remote = RemoteChunkStep(spec, inner, package.action_space, camera_names)
        else:
            windowed = [t.name for t in spec.fast.inputs
                        if (t.role == "proprio" and len(t.shape) == 3) or t.layout == "NTHWC"]
            if windowed:
                raise ValueError(f"the fast part of {spec.name!r} takes a window of {spec.n_obs_steps} observations "
                                 f"({windowed}): the fast node feeds one observation")
            self.step = ChunkFastStep.from_package(package, inner, camera_names)
        if not (max_guidance >= 0 and np.isfinite(max_guidance)):
            raise ValueError(f"max_guidance must be finite and >= 0, got {max_guidance}")
        if jacobian not in ("auto", "exact", "identity"):
            raise ValueError(f"jacobian must be auto, exact or identity, got {jacobian!r}")
        if jacobian == "exact" and self.step is not None and self.step.flow is not None and not self.step.has_vjp:
            raise ValueError(f"scheduler.rtc_jacobian is exact but the flow graph of {spec.name!r} exports no "
                             "guidance VJP (an output with role guidance_vjp)")
        self._exact = None if jacobian == "auto" else jacobian == "exact"
        self.engine = engine
        self.space = package.action_space
        self.proprio = package.proprio
        self.instruction = instruction
        self.horizon = spec.chunk_horizon
        self.max_guidance = float(max_guidance)
        self.uses_prefix = self.max_guidance > 0 and self.step is not None and self.step.flow is not None
        self.state_layout: tuple[str | None, ...] = tuple(self.proprio.names)
        self.measured_names: tuple[str, ...] = tuple(self.proprio.names)
        self.state_size = len(self.state_layout)
        #: The cameras :meth:`run` takes a frame from (a fast part without a slow part).
        self.cameras: list[str] = list(self.remote.cameras if self.remote is not None else self.step.cameras)
        feeds = self.step.latent_feeds if self.step is not None else {}
        #: Whether the fast part reads a latent (False: no slow part).
        self.has_latent = bool(feeds)
        #: ``(name, shape, dtype)`` of a multi-tensor latent, as the slow part writes it; None otherwise.
        self.latent_tensors: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
        self._latent: np.ndarray | None = None
        if feeds and spec.latent is not None and spec.latent.is_multi:
            self.latent_tensors = latent_layout(spec)
            missing = [n for n in feeds if n not in {t[0] for t in self.latent_tensors}]
            if missing:
                raise ValueError(f"fast latent inputs {missing} of {spec.name!r} are not written by its slow part")
            float_dims = [shape[-1] for _, shape, dt in self.latent_tensors if np.dtype(dt).kind == "f"]
            feature_dim = float_dims[0] if float_dims else 1
        elif feeds:
            (self._latent,) = feeds.values()
            feature_dim = int(self._latent.shape[-1])
        else:
            feature_dim = 1  # no latent: a constant 0 stands in the detector's features
        self.feature_layout = FeatureLayout(feature_dim, spec.chunk_horizon, self.space.dim)
        self._offset = spec.chunk_offset
        self._rng = np.random.default_rng([int(seed), 20261205])
        self._no_latent = np.zeros((1, 1), dtype=np.float32)
        #: Chunks sampled with guidance since start.
        self.guided = 0

    @property
    def latent_view(self) -> np.ndarray:
        """The K×D latent feed of a single-tensor latent, for ``LatentReader.read_into``.

        Raises:
            ValueError: The latent is several tensors (:attr:`latent_tensors`) or there is none.
        """
        if self._latent is None:
            raise ValueError("the fast part has no single K×D latent feed (see latent_tensors / has_latent)")
        return self._latent.reshape(self._latent.shape[-2:])

    def measured_state(self, robot: RobotProfile) -> MeasuredState:
        """A fresh measured state holding :attr:`measured_names`."""
        return MeasuredState.for_robot(self.measured_names, robot)

    def run(self, state: np.ndarray, prefix: Prefix | None = None, latent: np.ndarray | LatentTensors | None = None,
            exec_steps: int = 0, images: Mapping[str, Image] | None = None) -> FastResult:
        """One chunk; for a flow head with a prefix whose mask is not empty (and β > 0), guided towards it.

        Args:
            state: ``(state_size,)`` raw proprio values.
            prefix: The executing plan on the new chunk's grid (absolute) and the mask of the steps that
                execute before it arrives (``ChunkScheduler.prefix``): RTC's ``d`` is the mask's count.
            latent: ``(K, D)``, or the named tensors of a multi-tensor latent; None: the one already in
                the feeds.
            exec_steps: RTC's ``s``, steps of the executing plan already run (clipped to ``H − d``).
            images: Camera name → uint8 H×W×3 RGB frame, for every camera in :attr:`cameras`.

        Raises:
            KeyError: A camera's frame or a latent tensor is missing.
            ValueError: A bad state, frame or latent, or a non-finite / wrong-shape output.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        from vla_runtime.core.flow import RtcGuidance

        if state.shape != (self.state_size,):
            raise ValueError(f"state must have {self.state_size} values ({list(self.state_layout)}), "
                             f"got shape {state.shape}")
        if latent is not None:
            if isinstance(latent, np.ndarray):
                if self._latent is None:
                    raise ValueError("the fast part takes a latent of several named tensors, got one array")
                self._latent[...] = latent.reshape(self._latent.shape)
            else:
                assert self.step is not None
                self.step.set_latent(latent)
        guidance = None
        if self.uses_prefix and prefix is not None and prefix[1].any():
            assert self.step is not None
            h_model = self.step.h_model
            d = min(self._offset + int(prefix[1].sum()), h_model)
            s = int(min(max(self._offset + int(exec_steps), 0), h_model - d))
            plan = self.step.encode_plan(prefix[0], state)
            guidance = RtcGuidance(plan, d, s, self.max_guidance)
            self.guided += 1
        if self.remote is not None:
            r = self.remote.run(images or {}, self.instruction, state, seed=int(self._rng.integers(2**31)))
        else:
            assert self.step is not None
            r = self.step.run(state, images=images, instruction=self.instruction, rng=self._rng, guidance=guidance,
                              exact_guidance=self._exact)
        infer_ns = r.infer_ns
        if self._inject is not None:
            infer_ns += int(self._inject() * 1e9)
        return FastResult(r.chunk, r.normalized, infer_ns)

    def features_into(self, out: np.ndarray, latent: np.ndarray | LatentTensors | None, raw: np.ndarray,
                      latent_age_s: float, infer_ms: float, hold: bool) -> np.ndarray:
        """The failure detector's feature vector of one step (as :meth:`FastStep.features_into`).

        A multi-tensor latent is summarised by its first floating-point tensor (its mean over every
        axis but the last: a K/V cache's per-channel mean); without a latent the summary is a constant
        0 and ``latent_age_s`` is what the caller passes (the fast node: the camera frames' age).
        """
        if latent is None:
            summary = self._no_latent
        elif isinstance(latent, np.ndarray):
            summary = latent
        else:
            summary = self._no_latent
            for name, _shape, dt in self.latent_tensors or ():
                if np.dtype(dt).kind == "f" and name in latent:
                    summary = latent[name]
                    break
        return self.feature_layout.pack_into(out, summary, raw, latent_age_s, infer_ms, hold)

    @property
    def sampling(self) -> str:
        """Where candidates' differences come from: ``noise`` (flow, diffusion, a one-shot graph with a noise
        input, a remote policy seeded per chunk) or ``deterministic`` (a one-shot graph without noise)."""
        if self.remote is not None:
            return "noise"
        assert self.step is not None
        if self.step.flow is not None or self.step.diffusion is not None or self.step.takes_noise:
            return "noise"
        return "deterministic"

    @property
    def has_value(self) -> bool:
        """Whether the fast graph declares an output with role ``value`` (the ``value`` verifier's score)."""
        return self.step is not None and self.step.value_name is not None

    def check_candidates(self, n: int) -> None:
        """Refuse ``n`` candidates per inference where the head cannot draw different ones (named)."""
        _check_candidates(self.sampling, n, "remote" if self.step is None else str(self.step._out_name))

    def run_candidates(self, n: int, state: np.ndarray, prefix: Prefix | None = None,
                       latent: np.ndarray | LatentTensors | None = None, exec_steps: int = 0,
                       images: Mapping[str, Image] | None = None) -> Candidates:
        """``n`` chunks from the same observation, each from its own noise (test-time chunk selection).

        The batch dim of the packages' graphs is fixed at 1 (``model.yaml`` shapes), so the candidates are
        ``n`` passes of :meth:`run` (for a flow head each pass is the whole Euler loop, each guided towards
        the executing plan alike); an injected delay is paid per pass. Returns them with each one's value
        output (:attr:`has_value`) and whether they came batched (False).

        Raises:
            ValueError: ``n`` > 1 on a deterministic head (:meth:`check_candidates`), and what :meth:`run` raises.
        """
        self.check_candidates(n)
        guided = self.guided
        results, values = [], ([] if self.has_value else None)
        for i in range(n):
            results.append(self.run(state, prefix, latent if i == 0 else None, exec_steps, images))
            if values is not None:
                values.append(self.step.last_value)  # type: ignore[union-attr]
        if self.guided > guided:
            self.guided = guided + 1  # one guided inference, however many candidates
        return Candidates(results, values, False)


class Candidates(NamedTuple):
    """The candidate chunks of one inference (:meth:`PackageFastStep.run_candidates`).

    Attributes:
        results: One :class:`FastResult` per candidate, in draw order.
        values: Each candidate's ``value`` output (None: the graph declares none).
        batched: Whether they came from one batched engine call per step (else one pass each).
    """

    results: list[FastResult]
    values: list[float] | None
    batched: bool


def _check_candidates(sampling: str, n: int, output: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {n!r}")
    if n > 1 and sampling == "deterministic":
        raise ValueError(f"scheduler.candidates is {n} but the fast head (output {output!r}) is deterministic: "
                         "it takes no noise, so every candidate would be the same chunk; use candidates: 1")


def fast_step_for(package: ModelPackage, engine: Engine | None = None, *, use_prefix: bool = True,
                  max_guidance: float = 5.0, seed: int = 0, camera_names: list[str] | None = None,
                  instruction: str = "", jacobian: str = "auto") -> FastStep | PackageFastStep:
    """The fast node's step for a package: :class:`FastStep` for a schema-1 one-shot fast part,
    :class:`PackageFastStep` for every other one (flow matching; imported packages: one-shot with or
    without a slow part, flow matching, diffusion).

    Args:
        package: The loaded package (its fast engine loaded).
        engine: Replaces the package's fast engine (e.g. the null engine, a delayed one).
        use_prefix: A one-shot graph's prefix inputs (``scheduler.rtc_prefix``).
        max_guidance: RTC's β for a flow head (``scheduler.rtc_max_guidance``).
        seed: Seed of the noise generator.
        camera_names: Cameras configured at run time (a fast part that takes cameras).
        instruction: The task, for a fast part that takes instruction tokens.
        jacobian: RTC guidance's Jacobian for a flow head (``scheduler.rtc_jacobian``).

    Raises:
        ValueError: A fast part the fast node cannot drive (named).
    """
    spec = package.spec
    if spec.schema_version < 2 and not spec.fast.is_flow:
        return FastStep.from_package(package, engine, use_prefix)
    return PackageFastStep(package, engine, max_guidance, seed, camera_names, instruction, jacobian)


def latent_layout(spec: ModelSpec) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """``(name, shape, dtype)`` of every latent tensor the slow part outputs: the latent buffer's layout
    (its writer and every reader open with the same one)."""
    if spec.slow is None:
        raise ValueError(f"package {spec.name!r} has no slow part: no latent")
    return tuple((t.name, tuple(1 if d is None else int(d) for d in t.shape), t.dtype)
                 for t in spec.slow.outputs_by_role("latent"))


# ============================================================================================== schema 2
# The steps of packages with several cameras, a policy tokenizer, state into the slow part, a latent of
# several named tensors, no slow part (ACT), and fast parts the runtime samples (flow matching,
# diffusion). They also run schema-1 packages (a single latent is a one-tensor dict), so one code path
# serves `vla-runtime infer`, `vla-runtime serve`, the parity tests and the nodes (the fast node
# through PackageFastStep).

#: Named latent tensors, as the slow graph outputs them (batch dim included) and the fast graph takes them.
LatentTensors = dict[str, np.ndarray]


def _zeros(spec: TensorSpec) -> np.ndarray:
    return np.zeros(tuple(1 if d is None else int(d) for d in spec.shape), dtype=spec.dtype)


class ObservationWindow:
    """The last ``n`` observations (frames per camera + raw state), oldest first, as LeRobot queues them.

    The first :meth:`push` after construction or :meth:`reset` fills the window with ``n`` copies of
    that observation; each later one appends and drops the oldest.

    Args:
        n: Window length (``n_obs_steps``).
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"observation window length must be >= 1, got {n}")
        self.n = n
        self._frames: list[dict[str, np.ndarray]] = []
        self._states: list[np.ndarray] = []

    def reset(self) -> None:
        """Forget every observation (a new episode)."""
        self._frames.clear()
        self._states.clear()

    def push(self, frames: Mapping[str, np.ndarray], state: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Add one observation; returns the window: camera → ``(n, H, W, 3)`` and ``(n, S)`` states."""
        f = {k: np.asarray(v) for k, v in frames.items()}
        st = np.asarray(state, dtype=np.float32).reshape(-1)
        if not self._frames:
            self._frames = [f] * self.n
            self._states = [st] * self.n
        else:
            self._frames = (self._frames + [f])[-self.n:]
            self._states = (self._states + [st])[-self.n:]
        return ({k: np.stack([fr[k] for fr in self._frames]) for k in f}, np.stack(self._states))


class _ObservationFeeds:
    """Feeds of one graph's observation inputs (cameras, instruction, state) by role.

    Images: with a ``cameras`` block the raw uint8 frame at the camera's size (:func:`fit_frame` where a
    camera differs), ``NHWC`` or a ``NTHWC`` window; without one (schema 1) what :class:`SlowFeeds` does.
    """

    def __init__(self, spec: ModelSpec, graph: GraphSpec, camera_names: list[str] | None, part: str) -> None:
        self.part = part
        self.cams = {c.name: c for c in spec.cameras}
        self.images: list[tuple[TensorSpec, str]] = []
        free = list(camera_names) if camera_names is not None else [c.name for c in spec.cameras]
        for t in graph.inputs_by_role("image"):
            cam = t.camera
            if cam is None:
                if not free:
                    raise ValueError(f"{part} input {t.name!r} needs a camera; configured cameras: {camera_names}")
                cam = free.pop(0)
            elif camera_names is not None and cam not in camera_names:
                raise ValueError(f"{part} input {t.name!r} wants camera {cam!r}; configured cameras: {camera_names}")
            elif cam in free:
                free.remove(cam)
            self.images.append((t, cam))
        self.ids = graph.input_by_role("instruction_ids")
        self.mask = graph.input_by_role("instruction_mask")
        self.proprio = graph.input_by_role("proprio")
        self.window = spec.n_obs_steps
        #: Camera names whose frames were resized to the package's size on the last :meth:`images_into`.
        self.resized: list[str] = []

    @property
    def cameras(self) -> list[str]:
        return [cam for _, cam in self.images]

    def image_tensor(self, t: TensorSpec, cam: str, frame: np.ndarray) -> np.ndarray:
        if cam not in self.cams:  # schema 1: resize nearest, layout and dtype as declared
            return image_tensor(t, np.asarray(frame))
        c = self.cams[cam]
        arr = np.asarray(frame)
        if t.layout == "NTHWC":
            if arr.ndim == 3:
                arr = np.stack([arr] * self.window)
            if arr.ndim != 4 or arr.shape[0] != self.window:
                raise ValueError(f"camera {cam!r}: {self.part} input {t.name!r} takes a window of {self.window} "
                                 f"frames (T×H×W×3), got shape {list(arr.shape)}")
            fitted = [fit_frame(f, c.height, c.width) for f in arr]
            if any(f.shape[:2] != (c.height, c.width) for f in arr):
                self.resized.append(cam)
            return np.ascontiguousarray(np.stack(fitted)[None])
        if arr.ndim != 3:
            raise ValueError(f"camera {cam!r}: {self.part} input {t.name!r} takes one H×W×3 frame, got shape "
                             f"{list(arr.shape)}")
        if arr.shape[:2] != (c.height, c.width):
            self.resized.append(cam)
        return np.ascontiguousarray(fit_frame(arr, c.height, c.width)[None])

    def fill(self, feeds: dict[str, np.ndarray], images: Mapping[str, np.ndarray] | None,
             tokens: TokenizedText | None, proprio: np.ndarray | None) -> None:
        """Put the observation into ``feeds`` (a dict by input name)."""
        self.resized = []
        for t, cam in self.images:
            if images is None or cam not in images:
                raise KeyError(f"no image from camera {cam!r} for {self.part} input {t.name!r}")
            feeds[t.name] = self.image_tensor(t, cam, images[cam])
        if self.ids is not None or self.mask is not None:
            if tokens is None:
                raise ValueError(f"the {self.part} part takes instruction tokens: give an instruction")
            if self.ids is not None:
                feeds[self.ids.name] = tokens.ids.astype(np.dtype(self.ids.dtype), copy=False)
            if self.mask is not None:
                feeds[self.mask.name] = tokens.mask.astype(np.dtype(self.mask.dtype), copy=False)
        if self.proprio is not None:
            if proprio is None:
                raise ValueError(f"the {self.part} part takes the robot state: give one")
            shape = tuple(1 if d is None else int(d) for d in self.proprio.shape)
            if int(np.prod(shape)) != proprio.size:
                raise ValueError(f"{self.part} input {self.proprio.name!r} takes {list(shape)}, the state gives "
                                 f"{list(proprio.shape)}")
            feeds[self.proprio.name] = np.ascontiguousarray(proprio.reshape(shape), dtype=self.proprio.dtype)


def _state_window(proprio: ProprioNormalizer, state: np.ndarray, n: int) -> np.ndarray:
    """Raw state ``(S,)`` or window ``(n, S)`` → normalised ``(n, S')`` (a single state repeated)."""
    st = np.asarray(state, dtype=np.float64)
    if st.ndim == 1:
        if st.shape[0] != len(proprio.names):
            raise ValueError(f"state has {st.shape[0]} values, expected {len(proprio.names)} ({list(proprio.names)})")
        st = np.repeat(st[None], n, axis=0)
    if st.ndim != 2 or st.shape[0] != n:
        raise ValueError(f"state must be ({len(proprio.names)},) or a window ({n}, {len(proprio.names)}), got shape "
                         f"{list(st.shape)}")
    if not np.all(np.isfinite(st)):
        raise ValueError("state contains NaN or inf")
    return proprio.window(st)


class LatentResult(NamedTuple):
    """One slow step's output (:class:`LatentSlowStep`).

    Attributes:
        tensors: The latent by name (owned by the caller; batch dim included).
        tokens: The tokenized prompt (None without a tokenizer).
        infer_ns: Wall time of the engine call, ns.
        resized: Cameras whose frame was resized to the package's size.
    """

    tensors: LatentTensors
    tokens: TokenizedText | None
    infer_ns: int
    resized: tuple[str, ...]


class LatentSlowStep:
    """Cameras + instruction (+ robot state) → the slow engine → a latent of one or several named tensors.

    The step of every package with a slow part: several cameras at the package's sizes, the policy's
    tokenizer and prompt format (π0.5 puts the normalised state into the prompt), the state as a
    graph input where the slow part takes one (SmolVLA, Diffusion's window), and every slow output
    with role ``latent`` (a K/V prefix cache: one key and one value tensor per layer, plus its mask).

    Args:
        spec: The model package spec (with a slow part).
        engine: The slow graph's engine.
        tokenizer: The package's tokenizer (None when the slow graph takes no instruction).
        proprio: The package's proprio normaliser.
        camera_names: Cameras available at run time (default: the package's own).

    Raises:
        ValueError: The package has no slow part, or the slow graph has inputs the runtime cannot feed.
    """

    def __init__(self, spec: ModelSpec, engine: Engine, tokenizer: InstructionTokenizer | None,
                 proprio: ProprioNormalizer, camera_names: list[str] | None = None) -> None:
        if spec.slow is None:
            raise ValueError(f"package {spec.name!r} has no slow part (its fast part takes the cameras)")
        other = [(t.name, t.role) for t in spec.slow.inputs
                 if t.role not in ("image", "instruction_ids", "instruction_mask", "proprio")]
        if other:
            raise ValueError(f"slow graph inputs with roles the runtime cannot feed: {other}")
        self.spec = spec
        self.engine = engine
        self.tokenizer = tokenizer
        self.proprio = proprio
        self.obs = _ObservationFeeds(spec, spec.slow, camera_names, "slow")
        self.latent_names: tuple[str, ...] = tuple(t.name for t in spec.slow.outputs_by_role("latent"))
        #: Whether :meth:`run` needs the robot state (a state input, or a prompt made from it).
        self.needs_state = spec.state_in_slow
        self._prompt_key: tuple[str, bytes] | None = None
        self._tokens: TokenizedText | None = None

    @classmethod
    def from_package(cls, package: ModelPackage, camera_names: list[str] | None = None) -> LatentSlowStep:
        """The slow step of a loaded package (its slow engine must be loaded)."""
        if package.slow_engine is None:
            raise ValueError(f"model package {package.path} was loaded without a slow engine")
        return cls(package.spec, package.slow_engine, package.tokenizer, package.proprio, camera_names)

    @property
    def cameras(self) -> list[str]:
        """The cameras the step takes a frame (or a window of frames) from."""
        return self.obs.cameras

    def latent_layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """``(name, shape, dtype)`` of every latent tensor: the latent buffer's layout."""
        return latent_layout(self.spec)

    def tokens(self, instruction: str, normalised_state: np.ndarray | None = None) -> TokenizedText | None:
        """The tokenized prompt (cached while the instruction, and for a state prompt the state, repeat)."""
        if self.tokenizer is None:
            return None
        key = (instruction, b"" if normalised_state is None or not self.tokenizer.needs_state
               else np.asarray(normalised_state, np.float32).tobytes())
        if key != self._prompt_key or self._tokens is None:
            self._tokens = self.tokenizer.encode_prompt(instruction, normalised_state)
            self._prompt_key = key
        return self._tokens

    def run(self, images: Mapping[str, Image], instruction: str = "", state: np.ndarray | None = None) -> LatentResult:
        """One slow step.

        Args:
            images: Camera name → H×W×3 uint8 RGB frame (or, for a windowed package, the T×H×W×3
                window, oldest first; one frame is repeated), for every camera in :attr:`cameras`.
            instruction: The task instruction.
            state: The raw robot state ``(S,)`` (or a ``(T, S)`` window) when :attr:`needs_state`.

        Returns:
            The latent tensors, the tokens, the engine call's wall time and the resized cameras.

        Raises:
            KeyError: A camera's frame is missing.
            ValueError: A bad frame or state, or a missing instruction/state the package needs.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        ns = None
        if self.needs_state:
            if state is None:
                raise ValueError(f"the slow part of {self.spec.name!r} takes the robot state: give one")
            ns = _state_window(self.proprio, state, self.spec.n_obs_steps)
        feeds: dict[str, np.ndarray] = {}
        unpadded = None if ns is None else ns[-1, : len(self.proprio.names)]
        tokens = self.tokens(instruction, unpadded) if (self.obs.ids is not None or self.obs.mask is not None) \
            else None
        self.obs.fill(feeds, images, tokens, ns)
        t0 = time.perf_counter_ns()
        out = self.engine.infer(feeds)
        infer_ns = time.perf_counter_ns() - t0
        return LatentResult({n: out[n] for n in self.latent_names}, tokens, infer_ns, tuple(self.obs.resized))


class ChunkResult(NamedTuple):
    """One fast step's output (:class:`ChunkFastStep`).

    Attributes:
        chunk: ``(H, A)`` float64 actions in robot units (delta dims made absolute), columns as the
            action space's ``dim_names``.
        normalized: ``(H, A)`` float32 the same chunk in the model's normalised space (unpadded, sliced).
        model_chunk: The model's whole output chunk (model horizon × model dims; raw for a one-shot head).
        infer_ns: Wall time of all engine calls, ns.
        calls: Engine calls made (sampling steps).
    """

    chunk: np.ndarray
    normalized: np.ndarray
    model_chunk: np.ndarray
    infer_ns: int
    calls: int


class ChunkFastStep:
    """Latent tensors + robot state (+ cameras, for a package without a slow part) → action chunk.

    One step for every fast kind: ``one_shot`` (one call; a ``noise`` input is filled from the seeded
    generator), ``flow_matching`` (the package's velocity integrated by :class:`FlowSampler`, with RTC
    guidance when asked) and ``diffusion`` (the DDPM/DDIM scheduler of :class:`DiffusionSampler`).
    The model's chunk is cut to the steps the runtime executes (``chunk_offset``, ``chunk_horizon``)
    and the dims it commands (``action.padding``), de-normalised, and delta dims made absolute
    against the state.

    Args:
        spec: The model package spec.
        engine: The fast graph's engine.
        action_space: The package's action decoder.
        proprio: The package's proprio normaliser.
        tokenizer: The package's tokenizer (only a fast part that takes instructions needs it).
        camera_names: Cameras available at run time (a fast part that takes cameras).

    Raises:
        ValueError: The fast graph has inputs the runtime cannot feed.
    """

    def __init__(self, spec: ModelSpec, engine: Engine, action_space: ActionSpace, proprio: ProprioNormalizer,
                 tokenizer: InstructionTokenizer | None = None, camera_names: list[str] | None = None) -> None:
        from vla_runtime.core.diffusion import DiffusionSampler
        from vla_runtime.core.flow import FlowSampler

        g = spec.fast
        feedable = {"latent", "proprio", "image", "instruction_ids", "instruction_mask", "noise", "prev_chunk",
                    "prefix_mask", "noisy_actions", "flow_time", "guidance_cotangent", "diffusion_timestep"}
        other = [(t.name, t.role) for t in g.inputs if t.role not in feedable]
        if other:
            raise ValueError(f"fast graph inputs with roles the runtime cannot feed: {other}")
        self.spec = spec
        self.engine = engine
        self.space = action_space
        self.proprio = proprio
        self.tokenizer = tokenizer
        self.kind = g.kind
        self.obs = _ObservationFeeds(spec, g, camera_names, "fast")
        self.feeds: dict[str, np.ndarray] = {}
        for t in g.inputs:
            if t.role in ("latent", "noise", "prev_chunk", "prefix_mask", "noisy_actions", "flow_time",
                          "guidance_cotangent", "diffusion_timestep"):
                self.feeds[t.name] = _zeros(t)
        #: The latent feeds by name (``LatentReader.read_into`` can copy straight into them).
        self.latent_feeds: LatentTensors = {t.name: self.feeds[t.name] for t in g.inputs_by_role("latent")}
        self._single_latent = spec.latent is not None and not spec.latent.is_multi
        self._noise = g.inputs_by_role("noise")
        self.h_model, self.a_model = spec.model_chunk_horizon, spec.model_action_dim
        self.rows = slice(spec.chunk_offset, spec.chunk_offset + spec.chunk_horizon)
        self.flow = self.diffusion = None
        self._x_name = self._t_name = self._out_name = self._cot_name = self._vjp_name = None
        if g.is_flow:
            assert g.flow is not None
            self.flow = FlowSampler(self.h_model, self.a_model, g.flow.steps, g.flow.time_convention,
                                    g.flow.schedule)
            self._x_name = g.input_by_role("noisy_actions").name  # type: ignore[union-attr]
            self._t_name = g.input_by_role("flow_time").name  # type: ignore[union-attr]
            self._out_name = g.output_by_role("velocity").name  # type: ignore[union-attr]
            cot, vjp = g.input_by_role("guidance_cotangent"), g.output_by_role("guidance_vjp")
            self._cot_name = None if cot is None else cot.name
            self._vjp_name = None if vjp is None else vjp.name
        elif g.is_diffusion:
            self.diffusion = DiffusionSampler.from_spec(spec)
            self._x_name = g.input_by_role("noisy_actions").name  # type: ignore[union-attr]
            self._t_name = g.input_by_role("diffusion_timestep").name  # type: ignore[union-attr]
            self._out_name = g.output_by_role("denoiser_output").name  # type: ignore[union-attr]
        else:
            self._out_name = (g.output_by_role("actions") or g.outputs[0]).name
        #: A one-shot graph with a ``noise`` input: its chunks differ with the noise drawn.
        self.takes_noise = bool(self._noise)
        value = g.output_by_role("value")
        #: The output with role ``value`` (test-time chunk selection's ``value`` verifier), or None.
        self.value_name: str | None = None if value is None else value.name
        #: That output after the last engine call of :meth:`run` (its first element), or None.
        self.last_value: float | None = None
        delta = [n for n, d in zip(action_space.dim_names, action_space.delta_mask) if d]
        missing = [n for n in delta if n not in proprio.names]
        #: Delta action dims: made absolute against the state value of the same name.
        self._delta_index = [list(proprio.names).index(n) for n in delta] if not missing else None
        self._delta_missing = missing
        self._calls = 0

    @classmethod
    def from_package(cls, package: ModelPackage, engine: Engine | None = None,
                     camera_names: list[str] | None = None) -> ChunkFastStep:
        """The fast step of a loaded package; ``engine`` replaces its fast engine."""
        engine = engine if engine is not None else package.fast_engine
        if engine is None:
            raise ValueError(f"model package {package.path} was loaded without its fast engine")
        return cls(package.spec, engine, package.action_space, package.proprio, package.tokenizer, camera_names)

    @property
    def cameras(self) -> list[str]:
        """Cameras the fast part itself takes (a package without a slow part)."""
        return self.obs.cameras

    @property
    def has_vjp(self) -> bool:
        """Whether a flow graph exports its velocity's VJP (exact RTC guidance)."""
        return self._cot_name is not None

    def set_latent(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Copy the latent into the fast feeds (a schema-1 single latent may come under any name).

        Raises:
            KeyError: A latent input has no tensor (named in the message).
            ValueError: A tensor has the wrong number of elements.
        """
        if self._single_latent and len(tensors) == 1 and len(self.latent_feeds) == 1:
            (dst,), (src,) = self.latent_feeds.values(), tensors.values()
            dst[...] = np.asarray(src).reshape(dst.shape)
            return
        for name, dst in self.latent_feeds.items():
            if name not in tensors:
                raise KeyError(f"no latent tensor {name!r} (got {sorted(tensors)})")
            src = np.asarray(tensors[name])
            if src.size != dst.size:
                raise ValueError(f"latent tensor {name!r} has shape {list(src.shape)}, the fast graph takes "
                                 f"{list(dst.shape)}")
            dst[...] = src.reshape(dst.shape)

    def _call(self) -> Mapping[str, np.ndarray]:
        self._calls += 1
        out = self.engine.infer(self.feeds)
        if self.value_name is not None:
            self.last_value = float(np.asarray(out[self.value_name]).reshape(-1)[0])
        return out

    def _velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        self.feeds[self._x_name][...] = x.reshape(self.feeds[self._x_name].shape)  # type: ignore[index]
        self.feeds[self._t_name][...] = t  # type: ignore[index]
        if self._cot_name is not None:
            self.feeds[self._cot_name][...] = 0.0
        return np.asarray(self._call()[self._out_name]).reshape(self.h_model, self.a_model)  # type: ignore[index]

    def _vjp(self, x: np.ndarray, t: float, cot: np.ndarray) -> np.ndarray:
        self.feeds[self._x_name][...] = x.reshape(self.feeds[self._x_name].shape)  # type: ignore[index]
        self.feeds[self._t_name][...] = t  # type: ignore[index]
        self.feeds[self._cot_name][...] = cot.reshape(self.feeds[self._cot_name].shape)  # type: ignore[index]
        return np.asarray(self._call()[self._vjp_name]).reshape(self.h_model, self.a_model)  # type: ignore[index]

    def _denoise(self, x: np.ndarray, timestep: int) -> np.ndarray:
        self.feeds[self._x_name][...] = x.reshape(self.feeds[self._x_name].shape)  # type: ignore[index]
        self.feeds[self._t_name][...] = timestep  # type: ignore[index]
        return np.asarray(self._call()[self._out_name]).reshape(self.h_model, self.a_model)  # type: ignore[index]

    def encode_plan(self, plan: np.ndarray, state: np.ndarray) -> np.ndarray:
        """An absolute ``(H, A)`` plan in robot units → the model's space, on its whole chunk grid.

        The plan's rows go to the model steps the runtime executes (``chunk_offset`` on), padded dims are
        0 (what padded models are trained on), other rows 0. For RTC guidance of a flow head.
        """
        st = np.asarray(state, dtype=np.float64).reshape(-1)
        rel = self.space.to_relative(plan, self._current(st)) if self.space.delta_mask.any() else plan
        enc = self.space.encode(rel)[0]
        out = np.zeros((self.h_model, self.a_model), dtype=np.float32)
        out[self.rows, : enc.shape[1]] = enc
        return out

    def _current(self, state: np.ndarray) -> np.ndarray | None:
        if not self.space.delta_mask.any():
            return None
        if self._delta_index is None:
            raise ValueError(f"delta action dims {self._delta_missing} are not in the state "
                             f"({list(self.proprio.names)}): cannot make them absolute")
        cur = np.zeros(self.space.dim)
        cur[np.nonzero(self.space.delta_mask)[0]] = state[self._delta_index]
        return cur

    def run(self, state: np.ndarray, *, latent: Mapping[str, np.ndarray] | None = None,
            images: Mapping[str, Image] | None = None, instruction: str = "",
            rng: np.random.Generator | None = None, noise: np.ndarray | None = None,
            step_noise: np.ndarray | None = None, guidance: RtcGuidance | None = None,
            exact_guidance: bool | None = None) -> ChunkResult:
        """One chunk.

        Args:
            state: Raw robot state ``(S,)`` in the package's proprio order (a ``(T, S)`` window for a
                windowed fast part; its last row is the current state).
            latent: The latent tensors (None: those already in :attr:`latent_feeds`).
            images: Camera frames, for a fast part that takes cameras (ACT).
            instruction: The task, for a fast part that takes instruction tokens.
            rng: Seeded generator for the noise the step needs (starting noise, DDPM draws, ``noise``
                inputs): the same seed gives the same chunk.
            noise: The starting noise (model horizon × model dims; a one-shot ``noise`` input's shape
                without batch) instead of drawing it.
            step_noise: DDPM's per-step draws instead of drawing them.
            guidance: RTC guidance towards the executing plan (flow heads; model space, on the model's
                chunk grid: :meth:`encode_plan`).
            exact_guidance: Guide through the graph's VJP (True; it must export one), under the identity
                Jacobian (False), or exact where the graph exports a VJP (None).

        Raises:
            ValueError: A bad state, a missing noise source, or a non-finite / wrong-shape output.
            vla_runtime.engines.base.EngineError: The engine failed.
        """
        if latent is not None:
            self.set_latent(latent)
        st = np.asarray(state, dtype=np.float64)
        current = st[-1] if st.ndim == 2 else st
        ns = _state_window(self.proprio, st, self.spec.n_obs_steps if st.ndim == 2 else 1)
        tokens = None
        if self.obs.ids is not None or self.obs.mask is not None:
            if self.tokenizer is None:
                raise ValueError("the fast part takes instruction tokens but the package has no tokenizer")
            tokens = self.tokenizer.encode_prompt(instruction, ns[-1, : len(self.proprio.names)])
        self.obs.fill(self.feeds, images, tokens, ns if self.obs.proprio is not None and
                      len(self.obs.proprio.shape) == 3 else ns[-1:])
        self._calls = 0
        t0 = time.perf_counter_ns()
        if self.flow is not None:
            if exact_guidance and not self.has_vjp:
                raise ValueError("exact RTC guidance asked for, but this flow graph exports no guidance VJP")
            vjp = self._vjp if (guidance is not None and self.has_vjp and exact_guidance is not False) else None
            x = self.flow.sample(self._velocity, None if noise is not None else rng, guidance, vjp,
                                 dtype=np.float32, noise=noise)
            if noise is None and rng is None:
                raise ValueError("a flow-matching head needs rng or noise")
        elif self.diffusion is not None:
            x = self.diffusion.sample(self._denoise, rng, noise, step_noise)
        else:
            for t in self._noise:
                if noise is not None:
                    self.feeds[t.name][...] = np.asarray(noise).reshape(self.feeds[t.name].shape)
                elif rng is not None:
                    self.feeds[t.name][...] = rng.standard_normal(self.feeds[t.name].shape).astype(t.dtype)
                else:
                    raise ValueError(f"fast input {t.name!r} takes noise: give rng or noise")
            x = np.asarray(self._call()[self._out_name])
        infer_ns = time.perf_counter_ns() - t0
        if self.kind == "one_shot" and self.spec.action.head == "discrete":
            model = x[0] if x.shape[0] == 1 and x.ndim >= 3 else x
            cut = model[self.rows]
        else:
            model = x.reshape(self.h_model, self.a_model)
            cut = model[self.rows, : self.space.dim]
        try:
            chunk = self.space.decode(cut)
        except ValueError as e:
            raise ValueError(f"fast graph output {self._out_name!r}: {e}") from None
        cur = self._current(current)
        if cur is not None:
            chunk = self.space.to_absolute(chunk, cur)
        normalized = cut.astype(np.float32) if cut.dtype.kind == "f" else cut
        return ChunkResult(chunk, normalized, model, infer_ns, self._calls)


class RemoteChunkStep:
    """Observation → a whole policy on a server (engine ``openpi_remote``) → chunk in robot units.

    The package describes the policy (cameras and their sizes, state names, action layout and chunk);
    the server runs it. Frames of another size are fitted as for a local package.

    Args:
        spec: The model package spec.
        engine: An engine whose ``infer`` takes the observation map and returns ``actions`` in robot units
            (:class:`~vla_runtime.engines.openpi_remote.OpenpiRemoteEngine`).
        action_space: The package's action layout.
        camera_names: Cameras available (default: the package's own).
    """

    def __init__(self, spec: ModelSpec, engine: Engine, action_space: ActionSpace,
                 camera_names: list[str] | None = None) -> None:
        self.spec = spec
        self.engine = engine
        self.space = action_space
        self.cams = {c.name: c for c in spec.cameras}
        names = list(self.cams) or list(camera_names or [])
        if camera_names is not None:
            missing = [c for c in names if c not in camera_names]
            if missing:
                raise ValueError(f"the policy takes cameras {names}; {missing} not configured: {camera_names}")
        self.cameras = names
        self.resized: list[str] = []

    def run(self, frames: Mapping[str, Image], prompt: str, state: np.ndarray, noise: np.ndarray | None = None,
            seed: int | None = None) -> ChunkResult:
        """One chunk from the server.

        Raises:
            KeyError: A camera's frame is missing.
            ValueError: A bad frame or a reply of the wrong shape or with non-finite values.
            vla_runtime.engines.base.EngineError: The server refused or did not answer.
        """
        feeds: dict[str, np.ndarray] = {}
        self.resized = []
        for cam in self.cameras:
            if cam not in frames:
                raise KeyError(f"no image from camera {cam!r}")
            f = np.asarray(frames[cam])
            c = self.cams.get(cam)
            if c is not None and f.shape[:2] != (c.height, c.width):
                f = fit_frame(f, c.height, c.width)
                self.resized.append(cam)
            feeds[cam] = np.ascontiguousarray(f)
        feeds["state"] = np.asarray(state, dtype=np.float32).reshape(-1)
        feeds["prompt"] = np.array(prompt)
        if noise is not None:
            feeds["noise"] = np.asarray(noise, dtype=np.float32)
        if seed is not None:
            feeds["seed"] = np.array(seed, dtype=np.int64)
        t0 = time.perf_counter_ns()
        actions = np.asarray(self.engine.infer(feeds)["actions"])
        infer_ns = time.perf_counter_ns() - t0
        want = (self.spec.chunk_horizon, self.spec.action_dim)
        if actions.shape != want:
            raise ValueError(f"the remote policy returned actions {list(actions.shape)}, the package's chunk is "
                             f"{list(want)}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("the remote policy returned non-finite actions")
        chunk = actions.astype(np.float64)
        return ChunkResult(chunk, self.space.encode(chunk)[0], actions, infer_ns, 1)


class PolicyOutput(NamedTuple):
    """What :class:`PolicyRunner.infer` returns.

    Attributes:
        actions: ``(H, A)`` float64 actions in robot units.
        normalized: ``(H, A)`` the chunk in the model's normalised space.
        tokens: The tokenized prompt (None without a tokenizer).
        latent: The slow part's latent tensors (empty without a slow part).
        slow_ms: Slow engine time, ms (0 without a slow part).
        fast_ms: Fast engine time (all sampling steps), ms.
        fast_calls: Fast engine calls.
        resized: Cameras whose frames were resized to the package's size.
    """

    actions: np.ndarray
    normalized: np.ndarray
    tokens: TokenizedText | None
    latent: LatentTensors
    slow_ms: float
    fast_ms: float
    fast_calls: int
    resized: tuple[str, ...]


class PolicyRunner:
    """A whole package on one observation, outside any ROS graph: slow part, then fast part.

    ``vla-runtime infer``, ``vla-runtime serve`` and the parity tests all run this; the nodes run its
    two steps (:class:`LatentSlowStep`, :class:`ChunkFastStep`) on their own threads.

    Args:
        package: A loaded package (both parts' engines).
        camera_names: Cameras available (default: the package's own).
        seed: Seed of the generator that draws the noise when a call gives none.
    """

    def __init__(self, package: ModelPackage, camera_names: list[str] | None = None, seed: int = 0) -> None:
        self.package = package
        self.spec = package.spec
        self.remote: RemoteChunkStep | None = None
        self.slow: LatentSlowStep | None = None
        if getattr(package.fast_engine, "whole_policy", False):  # openpi_remote: the server runs everything
            assert package.fast_engine is not None
            self.remote = RemoteChunkStep(self.spec, package.fast_engine, package.action_space, camera_names)
        else:
            self.slow = LatentSlowStep.from_package(package, camera_names) if self.spec.slow is not None else None
            self.fast = ChunkFastStep.from_package(package, camera_names=camera_names)
        self.rng = np.random.default_rng(seed)

    @property
    def cameras(self) -> list[str]:
        """Every camera the package takes a frame from."""
        if self.remote is not None:
            return list(self.remote.cameras)
        cams = (self.slow.cameras if self.slow is not None else []) + self.fast.cameras
        return list(dict.fromkeys(cams))

    def infer(self, frames: Mapping[str, Image], prompt: str, state: np.ndarray, *, noise: np.ndarray | None = None,
              step_noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> PolicyOutput:
        """One action chunk for one observation.

        Args:
            frames: Camera name → uint8 H×W×3 RGB frame (a windowed package also takes a T×H×W×3
                window, oldest first; one frame stands for a window of copies, as at an episode's start).
            prompt: The task instruction.
            state: Raw robot state ``(S,)`` (or a ``(T, S)`` window), the package's proprio order.
            noise: The starting noise (model horizon × model dims); default drawn from ``rng``.
            step_noise: DDPM's per-step draws; default drawn from ``rng``.
            rng: Generator for what is drawn (default: the runner's seeded one).

        Raises:
            KeyError: A camera's frame is missing.
            ValueError: A bad frame, state or noise (named in the message).
            vla_runtime.engines.base.EngineError: An engine failed.
        """
        if self.remote is not None:
            seed = None if noise is not None else int((rng if rng is not None else self.rng).integers(2**31))
            r = self.remote.run(frames, prompt, state, noise=noise, seed=seed)
            return PolicyOutput(r.chunk, r.normalized, None, {}, 0.0, r.infer_ns / 1e6, 1, tuple(self.remote.resized))
        rng = rng if rng is not None else self.rng
        st = np.asarray(state, dtype=np.float64)
        latent: LatentTensors = {}
        tokens, slow_ns, resized = None, 0, ()
        if self.slow is not None:
            res = self.slow.run(frames, prompt, st)
            latent, tokens, slow_ns, resized = res.tensors, res.tokens, res.infer_ns, res.resized
        fast_state = st if st.ndim == 1 or self.fast.obs.proprio is not None and len(self.fast.obs.proprio.shape) == 3 \
            else st[-1]
        out = self.fast.run(fast_state, latent=latent or None, images=frames, instruction=prompt, rng=rng, noise=noise,
                            step_noise=step_noise)
        return PolicyOutput(out.chunk, out.normalized, tokens, latent, slow_ns / 1e6, out.infer_ns / 1e6, out.calls,
                            tuple(dict.fromkeys(resized + tuple(self.fast.obs.resized))))
