"""Slow-path caching: reuse the last latent while the scene, the instruction and the state stand still.

The slow (VLM) step is the expensive half of a fast-slow policy, and on a static scene it recomputes
the same latent a few times a second. :class:`SlowCache` decides, before each slow step, whether the
step would see what the last COMPUTED step saw (NanoVLA's vision-language reuse):

* **Frames**: each camera's frame is reduced to a small grey image (the mean of ``cell × cell``
  pixel blocks, about :data:`GRID_CELLS` cells on the long side) and compared with the reduced frame
  of the last computed step. The *change score* is the largest change of one cell, in intensity
  units (0..255), after global gain compensation: the frame is scaled so that its mean brightness
  equals the reference's, so lighting flicker and auto-exposure, which scale the whole image, do
  not count. Block averaging divides sensor noise by about ``sqrt(cell²)``; taking the largest
  cell (not the mean over the image) keeps a small object that moves from being averaged away.
  Measured on the simulated Panda's 96 px scene camera: σ = 3 sensor noise with ±8 % flicker
  scores ≤ 4.5 (σ = 5: ≤ 6.2), a cube moved by 5 mm scores ~20, by 2 cm ~93; hence the default
  threshold 10. A single flashing pixel can trigger a recompute; a missed change cannot come
  from it. Frames of another size than the reference → recompute.
* **Instruction**: any change of the text → recompute.
* **State** (only where the slow part takes the robot state): the largest change of one state
  value against the computed step's, in the package's proprio units (rad for revolute joints).
* **Age**: ``max_reuse_s`` after the observation the latent was computed from, the next step is
  computed whatever the scene, so a latent is never reused for ever. It is judged last: a step that
  a changed input would compute anyway counts under that input's reason, so ``max_reuse`` counts
  the steps computed only because the latent got old (a cube moved just as the latent aged is a
  scene recompute).

What a reuse means (design (b) of issue #15): the frames the step would use were CHECKED against the
frames the latent was computed from and found equal within the threshold, so the latent is
*re-validated* for them and written again with THEIR observation stamp (a new buffer version: the
buffer's version is what readers use to see a new stamp). The latent's age on the fast path is then
the age of the checked frames. Nothing else re-stamps a latent: when no new frame comes, nothing is
written and the age grows until ``latent.max_age_s`` holds the fast path, as without caching. The
comparison is always against the frames of the last computed step, never the last re-validated
ones, so a slow drift adds up and is caught.

Pure logic: no ROS, no clock of its own (the observation stamps are the time base), unit-tested with
synthetic frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GRID_CELLS", "CacheDecision", "SlowCache", "change_score", "reduce_frame"]

#: Cells on the long side of the reduced grey image a frame is compared on.
GRID_CELLS = 32
#: Gain compensation applies between these ratios of mean brightness; beyond them the lighting
#: really changed and the difference counts.
MAX_GAIN = 1.25

#: Why a step was computed (the keys of ``SlowCache.recompute_reasons``).
REASON_FIRST = "first"
REASON_SCENE = "scene"
REASON_INSTRUCTION = "instruction"
REASON_STATE = "state"
REASON_MAX_REUSE = "max_reuse"
REASON_CAMERAS = "cameras"
REASONS = (REASON_FIRST, REASON_SCENE, REASON_INSTRUCTION, REASON_STATE, REASON_MAX_REUSE, REASON_CAMERAS)

_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def reduce_frame(image: np.ndarray, cells: int = GRID_CELLS) -> np.ndarray:
    """The frame as a small grey image: means of square pixel blocks (float32, 0..255).

    Args:
        image: H×W×3 (RGB) or H×W uint8/float image.
        cells: about this many blocks on the long side (a block is at least one pixel).
    """
    img = np.asarray(image)
    if img.ndim == 3:
        if img.shape[2] != 3:
            raise ValueError(f"a camera frame must be H×W×3 or H×W, got shape {img.shape}")
        grey = img.astype(np.float32, copy=False) @ _GREY
    elif img.ndim == 2:
        grey = img.astype(np.float32)
    else:
        raise ValueError(f"a camera frame must be H×W×3 or H×W, got shape {img.shape}")
    h, w = grey.shape
    b = max(1, max(h, w) // max(1, cells))
    hh, ww = (h // b) * b, (w // b) * b
    if hh == 0 or ww == 0:
        return grey.copy()
    return grey[:hh, :ww].reshape(hh // b, b, ww // b, b).mean(axis=(1, 3), dtype=np.float32)


def change_score(reference: np.ndarray, current: np.ndarray) -> float:
    """Largest change of one cell between two reduced frames, after global gain compensation."""
    if reference.shape != current.shape:
        return math.inf
    ref_mean, cur_mean = float(reference.mean()), float(current.mean())
    gain = ref_mean / cur_mean if cur_mean > 1e-6 else 1.0
    gain = min(max(gain, 1.0 / MAX_GAIN), MAX_GAIN)
    return float(np.max(np.abs(current * gain - reference)))


@dataclass(frozen=True)
class CacheDecision:
    """What :meth:`SlowCache.check` decided for one step."""

    reuse: bool
    reason: str  # "reuse", or one of REASONS
    score: float  # the largest change score over the cameras (nan when not measured)


@dataclass
class _Reference:
    frames: dict[str, np.ndarray]
    instruction: str
    state: np.ndarray | None
    obs_ns: int
    latent: object


@dataclass
class SlowCache:
    """Decides whether a slow step can reuse the last computed latent; counts what it saved.

    Use: ``d = cache.check(frames, instruction, state, obs_ns)``; if ``d.reuse``, write
    ``cache.latent`` with ``obs_ns`` and call :meth:`reused`; otherwise compute the step and call
    :meth:`computed` with its latent and duration.

    Args:
        image_threshold: largest tolerated cell change, intensity units (0..255).
        state_tolerance_rad: largest tolerated change of one state value.
        max_reuse_s: a latent computed from an observation older than this (against the new
            frames' stamp) is not reused.
    """

    image_threshold: float = 10.0
    state_tolerance_rad: float = 0.01
    max_reuse_s: float = 2.0
    steps_computed: int = 0
    steps_reused: int = 0
    last_score: float = math.nan
    last_reason: str = ""
    compute_ms_total: float = 0.0
    compute_saved_ms: float = 0.0
    recompute_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _ref: _Reference | None = None
    _pending: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        for name, zero_ok in (("image_threshold", False), ("state_tolerance_rad", True), ("max_reuse_s", False)):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                raise ValueError(f"{name} must be finite and {'>=' if zero_ok else '>'} 0, got {v}")

    @property
    def latent(self) -> object:
        """The latent of the last computed step (None before the first)."""
        return None if self._ref is None else self._ref.latent

    @property
    def reference_obs_ns(self) -> int:
        """Observation stamp of the last computed step (0 before the first)."""
        return 0 if self._ref is None else self._ref.obs_ns

    def mean_compute_ms(self) -> float:
        """Mean duration of a computed step (0 before the first)."""
        return self.compute_ms_total / self.steps_computed if self.steps_computed else 0.0

    def check(self, frames: Mapping[str, np.ndarray], instruction: str, state: np.ndarray | None,
              obs_ns: int) -> CacheDecision:
        """Can the step on these inputs (observed at ``obs_ns``) reuse the last computed latent?"""
        reduced = {c: reduce_frame(img) for c, img in frames.items()}
        self._pending = reduced
        decision = self._decide(reduced, instruction, state, obs_ns)
        self.last_score = decision.score
        self.last_reason = decision.reason
        if not decision.reuse:
            self.recompute_reasons[decision.reason] += 1
        return decision

    def _decide(self, reduced: dict[str, np.ndarray], instruction: str, state: np.ndarray | None,
                obs_ns: int) -> CacheDecision:
        ref = self._ref
        score = math.nan
        if ref is not None and set(ref.frames) == set(reduced):
            score = max((change_score(ref.frames[c], reduced[c]) for c in reduced), default=0.0)
        if ref is None or ref.latent is None:
            return CacheDecision(False, REASON_FIRST, score)
        if set(ref.frames) != set(reduced):
            return CacheDecision(False, REASON_CAMERAS, score)
        if instruction != ref.instruction:
            return CacheDecision(False, REASON_INSTRUCTION, score)
        if (state is None) != (ref.state is None):
            return CacheDecision(False, REASON_STATE, score)
        if state is not None:
            s = np.asarray(state, dtype=np.float64)
            if s.shape != ref.state.shape or not np.all(np.abs(s - ref.state) <= self.state_tolerance_rad):
                return CacheDecision(False, REASON_STATE, score)
        if not score <= self.image_threshold:  # nan / inf (another size) → recompute
            return CacheDecision(False, REASON_SCENE, score)
        # Age last (see the module docstring): what changed names the recompute.
        if (obs_ns - ref.obs_ns) / 1e9 > self.max_reuse_s:
            return CacheDecision(False, REASON_MAX_REUSE, score)
        return CacheDecision(True, "reuse", score)

    def computed(self, latent: object, instruction: str, state: np.ndarray | None, obs_ns: int,
                 compute_ms: float) -> None:
        """Record a computed step: its latent and inputs become the reference."""
        if self._pending is None:
            raise RuntimeError("SlowCache.computed without a check() of the same step")
        self._ref = _Reference(self._pending, instruction,
                               None if state is None else np.array(state, dtype=np.float64), int(obs_ns), latent)
        self._pending = None
        self.steps_computed += 1
        self.compute_ms_total += float(compute_ms)

    def reused(self) -> None:
        """Record a re-validated step: the latent was written again with the new frames' stamp."""
        self._pending = None
        self.steps_reused += 1
        self.compute_saved_ms += self.mean_compute_ms()

    def forget(self) -> None:
        """Drop the reference: the next step computes (e.g. after the buffer was reset)."""
        self._ref = None
        self._pending = None

    def as_diagnostics(self) -> dict[str, object]:
        """The counters, under the slow path's diagnostics names."""
        return {
            "steps_computed": self.steps_computed,
            "steps_reused": self.steps_reused,
            "cache_change_score": round(self.last_score, 3) if math.isfinite(self.last_score) else -1.0,
            "cache_last_decision": self.last_reason,
            "cache_compute_saved_ms": round(self.compute_saved_ms, 1),
            **{f"cache_recompute_{k}": v for k, v in self.recompute_reasons.items()},
        }
