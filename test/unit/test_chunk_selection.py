"""Test-time chunk selection (core/chunk_selection): the verifiers on hand-checkable chunks, the selector, the
step's candidates (core/policy.run_candidates) and the config that asks for them."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vla_runtime.core.chunk_selection import (
    ChunkSelector,
    consistency_scores,
    detector_scores,
    pick,
    value_scores,
)
from vla_runtime.core.config import PROJECT_ROOT, SchedulerConfig
from vla_runtime.core.contract import FeatureLayout
from vla_runtime.core.failure_detection import FailureScorer, LearnedDetector
from vla_runtime.core.policy import Candidates, FastResult

FLOW_PKG = PROJECT_ROOT / "models" / "reference_reach_flow"
ONE_SHOT_PKG = PROJECT_ROOT / "models" / "reference_reach"


def test_consistency_is_the_mean_squared_distance_over_the_overlap_only() -> None:
    plan = np.zeros((3, 2))
    near = np.array([[0.1, 0.0], [0.0, 0.1], [9.0, 9.0]])  # far only past the overlap
    far = np.ones((3, 2))
    scores = consistency_scores([far, near], plan, overlap=2)
    np.testing.assert_allclose(scores, [2.0, 0.01])
    assert pick(scores) == 1
    np.testing.assert_allclose(consistency_scores([far, near], plan, overlap=3), [2.0, (0.01 + 0.01 + 162) / 3])
    np.testing.assert_array_equal(consistency_scores([far, near], None, 3), [0.0, 0.0])  # nothing executing
    with pytest.raises(ValueError, match="candidate 0 has shape \\[3, 1\\], the plan has 2 dims"):
        consistency_scores([np.zeros((3, 1))], plan, 2)


def test_pick_takes_the_lowest_and_the_first_of_equals_and_refuses_nonsense() -> None:
    assert pick(np.array([0.3, 0.1, 0.1])) == 1
    assert pick(np.zeros(4)) == 0  # N equal candidates give exactly the chunk N = 1 gives
    with pytest.raises(ValueError, match="finite"):
        pick(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="no candidates"):
        pick(np.array([]))


def test_value_wins_highest() -> None:
    assert pick(value_scores([0.2, 0.9, 0.5])) == 1
    with pytest.raises(ValueError, match="value outputs must be finite"):
        value_scores([0.1, float("inf")])


def _detector() -> LearnedDetector:
    """A detector on a 1-dim latent, 2-step 1-dim chunk whose failure probability is sigmoid(tanh(chunk mean))."""
    layout = FeatureLayout(1, 2, 1)  # step features: latent, mean, std, change, age, path = 6
    w1 = np.zeros((6, 1))
    w1[1, 0] = 1.0
    scorer = FailureScorer(np.zeros(6), np.ones(6), w1, np.zeros(1), np.ones(1), 0.0)
    return LearnedDetector(layout, scorer)


def test_the_detector_prefers_the_candidate_it_scores_less_likely_to_fail() -> None:
    det = _detector()
    feats = np.zeros((2, det.layout.size))
    for i, mean in enumerate((2.0, -1.0)):
        det.layout.pack_into(feats[i], np.zeros(1), np.full(2, mean), 0.0, 1.0, False)
    s = detector_scores(det, feats, None)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-np.tanh([2.0, -1.0]))))
    assert pick(s) == 1


class _Step:
    """A fast step that hands out fixed candidates (what PackageFastStep.run_candidates returns)."""

    def __init__(self, chunks, values=None, sampling="noise") -> None:
        self.chunks, self.values, self.sampling = chunks, values, sampling
        self.has_value = values is not None
        self.feature_layout = FeatureLayout(1, len(chunks[0]), chunks[0].shape[1])
        self.calls = []

    def check_candidates(self, n: int) -> None:
        from vla_runtime.core.policy import _check_candidates

        _check_candidates(self.sampling, n, "actions")

    def run_candidates(self, n, state, prefix, latent, exec_steps, images) -> Candidates:
        self.calls.append((n, exec_steps))
        return Candidates([FastResult(c, c.astype(np.float32), 1000 * (i + 1)) for i, c in enumerate(self.chunks[:n])],
                          self.values, False)

    def features_into(self, out, latent, raw, age, infer_ms, hold):
        return self.feature_layout.pack_into(out, np.zeros(1), raw, age, infer_ms, hold)


def test_the_selector_keeps_the_candidate_closest_to_what_is_left_of_the_plan() -> None:
    plan = np.zeros((4, 1))
    # candidate 0 matches the plan early, candidate 1 late; with 2 of 4 steps executed only the first 2 rows count
    c0 = np.array([[0.0], [0.0], [1.0], [1.0]])
    c1 = np.array([[0.5], [0.5], [0.0], [0.0]])
    step = _Step([c0, c1])
    sel = ChunkSelector(2, "consistency", step)
    got = sel.run(np.zeros(1), (plan, np.zeros(4, bool)), None, 2, None)
    assert got.index == 0 and got.result.infer_ns == 3000  # every candidate's engine time
    np.testing.assert_allclose(got.scores, [0.0, 0.25])
    assert got.spread == pytest.approx(1.0)
    got = sel.run(np.zeros(1), (plan, np.zeros(4, bool)), None, 0, None)
    assert got.index == 1 and sel.changed == 1 and sel.selections == 2
    assert sel.run(np.zeros(1), None, None, 0, None).index == 0  # no plan: the first


def test_the_value_and_detector_verifiers_through_the_selector() -> None:
    a, b = np.full((2, 1), 2.0), np.full((2, 1), -1.0)
    assert ChunkSelector(2, "value", _Step([a, b], values=[0.1, 0.7])).run(np.zeros(1), None, None, 0, None).index == 1
    det = _detector()
    assert ChunkSelector(2, "detector", _Step([a, b]), det).run(np.zeros(1), None, None, 0, None).index == 1


def test_the_selector_refuses_by_name() -> None:
    a = np.zeros((2, 1))
    with pytest.raises(ValueError, match="deterministic: it takes no noise"):
        ChunkSelector(2, "consistency", _Step([a, a], sampling="deterministic"))
    ChunkSelector(1, "consistency", _Step([a], sampling="deterministic"))  # one candidate: today's behaviour
    with pytest.raises(ValueError, match="declares no output with role value"):
        ChunkSelector(2, "value", _Step([a, a]))
    with pytest.raises(ValueError, match="has no learned detector"):
        ChunkSelector(2, "detector", _Step([a, a]))
    with pytest.raises(ValueError, match="verifier must be one of"):
        ChunkSelector(2, "vibes", _Step([a, a]))


def test_the_flow_reference_draws_different_candidates_and_the_one_shot_reference_refuses() -> None:
    from vla_runtime.core.policy import fast_step_for
    from vla_runtime.engines.model_package import load_model_package

    pkg = load_model_package(FLOW_PKG, parts=("fast",))
    step = fast_step_for(pkg, max_guidance=20.0, jacobian="identity")
    assert step.sampling == "noise" and not step.has_value
    state = np.array([0.0, 0.2, 0.0, -2.2, 0.0, 2.4, 0.75, 0.04])
    latent = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    c = step.run_candidates(4, state, None, latent)
    assert len(c.results) == 4 and not c.batched and c.values is None
    assert max(float(np.abs(r.chunk - c.results[0].chunk).max()) for r in c.results) > 1e-3  # different noise
    plan = c.results[2].chunk
    sel = ChunkSelector(4, "consistency", step)
    got = sel.run(state, (plan, np.zeros(len(plan), bool)), latent, 0, None)
    assert got.scores.shape == (4,)
    # the reference's shipped detector was trained on the one-shot head's 16-step chunks: it does not fit
    with pytest.raises(ValueError, match="chunk_raw:16x8.*chunk_raw:32x8"):
        ChunkSelector(4, "detector", step, LearnedDetector.load(ONE_SHOT_PKG))
    one = load_model_package(ONE_SHOT_PKG, parts=("fast",))
    one_step = fast_step_for(one)
    with pytest.raises(ValueError, match="scheduler.candidates is 4 but the fast head .* is deterministic"):
        one_step.run_candidates(4, np.zeros(one_step.state_size))
    assert len(one_step.run_candidates(1, np.zeros(one_step.state_size)).results) == 1


def test_config_fields_are_validated_with_the_bad_value() -> None:
    assert SchedulerConfig().candidates == 1 and SchedulerConfig().horizon_policy == "fixed"
    with pytest.raises(ValidationError, match="candidates"):
        SchedulerConfig(candidates=0)
    with pytest.raises(ValidationError, match="verifier"):
        SchedulerConfig(verifier="vibes")
    with pytest.raises(ValidationError, match="consensus_min_steps \\(8\\) must be <= consensus_max_steps \\(4\\)"):
        SchedulerConfig(consensus_min_steps=8, consensus_max_steps=4)
    with pytest.raises(ValidationError, match="horizon_policy consensus needs inference async, got 'sync'"):
        SchedulerConfig(horizon_policy="consensus", inference="sync")


def test_the_tts_latency_sweep_reports_each_n_and_that_the_candidates_differ() -> None:
    from vla_runtime.bench.tts import selection_latency

    rows = selection_latency(FLOW_PKG, ns=(1, 2), reps=2)
    assert [r["candidates"] for r in rows] == [1, 2] and not rows[1]["batched"]
    assert rows[0]["candidate_spread_mean"] == 0.0 and rows[1]["candidate_spread_mean"] > 1e-3
    assert rows[0]["kept_other_than_first"] == 0 and 0 <= rows[1]["kept_other_than_first"] <= 2
    with pytest.raises(ValueError, match="reps must be >= 1, got 0"):
        selection_latency(FLOW_PKG, reps=0)
