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
from vla_runtime.core.policy_io import FastFeeds, Image, SlowFeeds

if TYPE_CHECKING:
    from vla_runtime.core.action_space import ActionSpace, ProprioNormalizer
    from vla_runtime.core.config import RobotProfile
    from vla_runtime.core.model_spec import ModelSpec
    from vla_runtime.core.text import TokenizedText, WordTokenizer
    from vla_runtime.engines.base import Engine
    from vla_runtime.engines.model_package import ModelPackage

__all__ = ["FastResult", "FastStep", "SlowResult", "SlowStep"]

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

    def run(self, state: np.ndarray, prefix: Prefix | None = None, latent: np.ndarray | None = None) -> FastResult:
        """One fast step: :meth:`infer` then :meth:`decode`.

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
