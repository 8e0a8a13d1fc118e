"""Test-time chunk selection: draw several candidate chunks, let a verifier keep one.

TACO-style test-time scaling for VLAs: a policy that samples (a flow-matching or diffusion head, a
one-shot head with a noise input) gives a different chunk for different noise; drawing ``N`` of them
from the same observation and keeping the one a verifier prefers improves success without
retraining. ``scheduler.candidates: N`` (1 is a single chunk, no selection) and
``scheduler.verifier`` pick:

* ``consistency``: the candidate closest to the executing plan over their overlap (mean over the
  overlapping steps of the squared distance, robot units, summed over dims). Cheap: no model call.
  With no executing plan (the first chunk, after a hold) every candidate scores 0 and the first wins.
* ``detector``: the learned failure detector's per-step failure probability
  (:class:`~vla_runtime.core.failure_detection.LearnedDetector`) of each candidate's feature vector
  (the vector the fast node publishes on ``/vla/policy_features``, with the previously kept chunk as
  "the previous step"); lowest wins. The detector must have been trained on the fast head's feature
  layout (latent dim, horizon, action dim): a detector of another layout is refused by name.
* ``value``: the fast graph's output with role ``value`` (a critic the package ships); highest wins.
  A package that declares none is refused by name.

Candidates come from the step (``run_candidates`` in :mod:`vla_runtime.core.policy`); this module
only scores and chooses, so it is pure numpy and tested on hand-checkable chunks. Ties go to the
earliest candidate, so ``N`` equal candidates give exactly the chunk ``N = 1`` gives. Nothing logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from vla_runtime.core.failure_detection import LearnedDetector
    from vla_runtime.core.policy import FastResult, Prefix

__all__ = ["VERIFIERS", "ChunkSelector", "Selection", "consistency_scores", "detector_scores", "pick",
           "value_scores"]

#: The verifiers ``scheduler.verifier`` names.
VERIFIERS = ("consistency", "detector", "value")


def consistency_scores(chunks: Sequence[np.ndarray], plan: np.ndarray | None, overlap: int) -> np.ndarray:
    """Distance of each candidate to the executing plan over their overlap (lower: more consistent).

    Args:
        chunks: ``N`` candidate chunks ``(H, A)``, absolute, robot units.
        plan: The executing plan on the candidates' grid ``(≥ overlap, A)`` (``ChunkScheduler.prefix``),
            or None when nothing is executing.
        overlap: Steps of the candidates' grid the plan covers (from step 0).

    Returns:
        ``(N,)``: the mean over the first ``overlap`` steps of the squared distance summed over dims;
        zeros when there is no plan or no overlap.

    Raises:
        ValueError: A candidate's shape differs from the plan's columns, or ``overlap`` < 0.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    out = np.zeros(len(chunks))
    if plan is None or overlap == 0:
        return out
    plan = np.asarray(plan, dtype=np.float64)
    for i, c in enumerate(chunks):
        c = np.asarray(c, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != plan.shape[1]:
            raise ValueError(f"candidate {i} has shape {list(c.shape)}, the plan has {plan.shape[1]} dims")
        n = min(overlap, len(c), len(plan))
        d = c[:n] - plan[:n]
        out[i] = float((d * d).sum(axis=1).mean())
    return out


def detector_scores(detector: LearnedDetector, features: np.ndarray, prev_chunk: np.ndarray | None) -> np.ndarray:
    """The learned detector's per-step failure probability of each candidate (lower: less likely to fail).

    Args:
        detector: A detector whose layout is the candidates' feature layout.
        features: ``(N, F)`` raw feature vectors (``FeatureLayout.pack_into``), one per candidate.
        prev_chunk: The previous step's raw chunk ``(H, A)`` (the chunk kept last time), or None.
    """
    from vla_runtime.core.failure_detection import step_features

    x = np.stack([step_features(detector.layout, f, prev_chunk) for f in np.asarray(features)])
    return np.asarray(detector.scorer.step_probability(x), dtype=np.float64).reshape(-1)


def value_scores(values: Sequence[float]) -> np.ndarray:
    """Scores from the model's value outputs: ``-value`` (so the highest value wins, as lower scores do).

    Raises:
        ValueError: A value is not finite (the model failed; choosing on it would be arbitrary).
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"value outputs must be finite, got {v.tolist()}")
    return -v


def pick(scores: np.ndarray) -> int:
    """Index of the lowest score; ties go to the earliest candidate.

    Raises:
        ValueError: No scores, or a non-finite one.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no candidates to pick from")
    if not np.isfinite(s).all():
        raise ValueError(f"candidate scores must be finite, got {s.tolist()}")
    return int(np.argmin(s))  # argmin returns the first of equal minima


class Selection(NamedTuple):
    """One inference's choice.

    Attributes:
        result: The kept candidate (a :class:`~vla_runtime.core.policy.FastResult`; its ``infer_ns`` is
            the whole inference's: every candidate's engine time).
        index: Its draw index.
        scores: Every candidate's score (lower is better).
        spread: The largest max-abs difference between a candidate and the kept one (robot units): 0
            means the candidates were all the same chunk.
    """

    result: FastResult
    index: int
    scores: np.ndarray
    spread: float


class ChunkSelector:
    """Draws ``n`` candidates from a fast step and keeps the verifier's choice.

    Args:
        n: Candidates per inference (≥ 1).
        verifier: One of :data:`VERIFIERS`.
        step: The fast step (``core.policy.fast_step_for``); checked here: a deterministic head with
            ``n > 1``, ``value`` without a value output, ``detector`` without a detector or with a
            detector of another feature layout are refused by name.
        detector: The learned detector (``detector`` verifier only).

    Raises:
        ValueError: See ``step``.
    """

    def __init__(self, n: int, verifier: str, step, detector: LearnedDetector | None = None) -> None:
        if verifier not in VERIFIERS:
            raise ValueError(f"verifier must be one of {list(VERIFIERS)}, got {verifier!r}")
        step.check_candidates(n)
        if verifier == "value" and not step.has_value:
            raise ValueError("scheduler.verifier is value but the fast graph declares no output with role value")
        if verifier == "detector":
            if detector is None:
                raise ValueError("scheduler.verifier is detector but the model package has no learned detector "
                                 "(detector/)")
            if detector.layout.label != step.feature_layout.label:
                raise ValueError(f"scheduler.verifier is detector but the detector was trained on features "
                                 f"{detector.layout.label!r}, the fast head gives {step.feature_layout.label!r}")
        self.n = int(n)
        self.verifier = verifier
        self.step = step
        self.detector = detector
        self._features = np.zeros((self.n, step.feature_layout.size), dtype=np.float32)
        self._prev_raw: np.ndarray | None = None
        #: Inferences selected, and how often a candidate other than the first was kept.
        self.selections = 0
        self.changed = 0
        self.last: Selection | None = None

    def run(self, state: np.ndarray, prefix: Prefix | None, latent, exec_steps: int,
            images: Mapping[str, np.ndarray] | None, latent_age_s: float = 0.0) -> Selection:
        """Draw the candidates from one observation and choose (the arguments are ``step.run``'s).

        ``prefix`` is also the consistency verifier's plan: its rows cover the candidates' grid, and the
        executing plan's overlap is the ``H − exec_steps`` steps it has left.
        """
        cands = self.step.run_candidates(self.n, state, prefix, latent, exec_steps, images)
        results = cands.results
        if self.n == 1:
            scores = np.zeros(1)
        elif self.verifier == "consistency":
            overlap = 0 if prefix is None else max(0, len(prefix[0]) - int(exec_steps))
            scores = consistency_scores([r.chunk for r in results], None if prefix is None else prefix[0], overlap)
        elif self.verifier == "value":
            scores = value_scores(cands.values or [])
        else:
            total_ms = sum(r.infer_ns for r in results) / 1e6
            for i, r in enumerate(results):
                self.step.features_into(self._features[i], latent, r.raw, latent_age_s, total_ms, False)
            scores = detector_scores(self.detector, self._features, self._prev_raw)
        i = pick(scores)
        kept = results[i]
        spread = max((float(np.abs(r.chunk - kept.chunk).max()) for r in results), default=0.0)
        if self.verifier == "detector" and self.n > 1:  # the kept chunk is the next step's "previous chunk"
            self._prev_raw = self.detector.layout.split(self._features[i])[1].astype(np.float64)
        self.selections += 1
        self.changed += i != 0
        result = kept._replace(infer_ns=sum(r.infer_ns for r in results))
        self.last = Selection(result, i, scores, spread)
        return self.last
