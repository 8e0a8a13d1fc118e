"""Failure scoring, conformal calibration and hard monitors: pure logic, injected times."""

from __future__ import annotations

import math
import shutil
import zipfile

import numpy as np
import pytest

from vla_runtime.commands.detector_tools import (
    calibrate,
    calibrate_detector,
    evaluate,
    load_rollouts,
    save_rollouts,
    split_rollouts,
    synthetic_rollouts,
    train_detector,
)
from vla_runtime.core.config import PROJECT_ROOT
from vla_runtime.core.contract import FeatureLayout
from vla_runtime.core.failure_detection import (
    FiniteMonitor,
    HoldStreakMonitor,
    InterventionRateMonitor,
    LatentAgeMonitor,
    LearnedDetector,
    StalenessMonitor,
    TrackingErrorMonitor,
    calibrate_threshold,
    conformal_quantile,
    conformal_rank,
    episode_step_features,
    roc_auc,
)

LAYOUT = FeatureLayout(16, 4, 3)


# ------------------------------------------------------------------------------ layout
def test_layout_parses_the_fast_nodes_label():
    label = "latent_mean:256|chunk_raw:16x8|latent_age_s,infer_ms,hold"
    lay = FeatureLayout.parse(label, 256 + 128 + 3)
    assert (lay.latent_dim, lay.horizon, lay.action_dim) == (256, 16, 8)
    assert lay.label == label
    with pytest.raises(ValueError, match="means 387 values, got 10"):
        FeatureLayout.parse(label, 10)
    with pytest.raises(ValueError, match="unknown policy feature layout"):
        FeatureLayout.parse("something else")


def test_split_and_step_features():
    v = np.arange(LAYOUT.size, dtype=np.float32)
    latent, chunk, age, infer_ms, hold = LAYOUT.split(v)
    assert latent.shape == (16,) and chunk.shape == (4, 3)
    assert (age, infer_ms, hold) == (28.0, 29.0, 30.0)
    x = episode_step_features(LAYOUT, np.stack([v, v + 1]))
    assert x.shape == (2, LAYOUT.step_size)
    assert np.all(x[0, 16 + 6 : 16 + 9] == 0)  # no change at the first step
    assert np.allclose(x[1, 16 + 6 : 16 + 9], 1.0)


# ------------------------------------------------------------------------------ conformal
def test_conformal_rank_and_quantile():
    assert conformal_rank(19, 0.1) == 18  # ⌈20·0.9⌉
    assert conformal_rank(9, 0.2) == 8
    assert conformal_quantile(np.arange(1, 20), 0.1) == 18.0
    assert conformal_quantile(np.arange(1, 4), 0.1) == math.inf  # ⌈4·0.9⌉ = 4 > 3
    with pytest.raises(ValueError, match="alpha must be in"):
        conformal_rank(10, 0.0)


def _score_curves(rng, n, T=60, dt=0.1, shift=0.0):
    """Exchangeable success score curves with a time-varying mean."""
    t = np.arange(T) * dt
    base = 0.2 + 0.1 * np.sin(t)
    return [(t, base + shift + rng.normal(0, 0.05, T).cumsum() / np.sqrt(np.arange(1, T + 1))) for _ in range(n)]


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_functional_threshold_bounds_episode_false_alarms(alpha):
    """Over many calibrations, P(any crossing on a fresh success) ≤ α (+ Monte-Carlo slack)."""
    rng = np.random.default_rng(1)
    alarms, trials = 0, 0
    for _ in range(150):
        th = calibrate_threshold(_score_curves(rng, 40), alpha, bin_s=0.5, method="functional")
        for t, s in _score_curves(rng, 10):
            alarms += th.first_crossing(t, s) is not None
            trials += 1
    assert alarms / trials <= alpha + 0.03, alarms / trials
    assert alarms / trials >= alpha - 0.1  # not absurdly conservative either


def test_per_bin_threshold_and_lookup():
    rng = np.random.default_rng(2)
    curves = _score_curves(rng, 30)
    th = calibrate_threshold(curves, 0.2, bin_s=1.0, method="per_bin")
    assert len(th.thresholds) == 6
    assert th.at(0.3) == th.thresholds[0] and th.at(99.0) == th.thresholds[-1] and th.at(-1) == th.thresholds[0]
    # per bin, at most ⌈31·0.8⌉ = 25 of 30 rollouts' bin maxima are ≤ the threshold
    for b in range(6):
        m = [s[(t >= b) & (t < b + 1)].max() for t, s in curves]
        assert sum(x <= th.thresholds[b] for x in m) == 25


def test_too_few_rollouts_give_infinite_threshold():
    rng = np.random.default_rng(3)
    th = calibrate_threshold(_score_curves(rng, 3), 0.05)
    assert not np.isfinite(th.thresholds).any()


# ------------------------------------------------------------------------------ learned head
@pytest.fixture(scope="module")
def synthetic():
    return synthetic_rollouts(90, 0.5, LAYOUT, seed=4)


def test_train_calibrate_evaluate_on_synthetic(synthetic):
    train, cal, held = split_rollouts(synthetic, seed=0)
    model = train_detector(train, epochs=200)
    calibrate(model, [r for r in cal if r.label == 0], alpha=0.2)
    ev = evaluate(model, held)
    assert ev["roc_auc"] > 0.9, ev
    assert ev["detection_rate"] > 0.6, ev
    assert ev["mean_detection_time_s"] is not None and ev["false_alarm_rate"] <= 0.3, ev
    with pytest.raises(ValueError, match="successful rollouts only"):
        calibrate(model, [r for r in cal if r.label == 1], alpha=0.2)


def test_labels_from_the_fault_keep_a_failures_nominal_start_nominal(synthetic):
    """Trained on per-step labels (failing from the induced fault on), the head scores the steps
    before a held-out failure's fault low, like a success's, and the failing steps high; trained on
    the episode label it scores those nominal steps (0.3 here against 0.02) as half-failing,
    which is what raised alarms before the fault."""
    from vla_runtime.commands.detector_tools import step_labels

    r = next(x for x in synthetic if x.label and x.fault_t is not None)
    y = step_labels(r)
    assert y[r.times < r.fault_t].sum() == 0 and y[r.times >= r.fault_t].min() == 1
    ok = next(x for x in synthetic if not x.label)
    np.testing.assert_array_equal(step_labels(ok), np.zeros(len(ok.times)))

    train, _, held = split_rollouts(synthetic, seed=0)

    def step_scores(labels_from_fault: bool) -> tuple[float, float, float]:
        """Mean step probability: before the fault, from 1 s after it, on held-out successes."""
        m = train_detector(train, epochs=200, labels_from_fault=labels_from_fault)
        p = [m.scorer.step_probability(episode_step_features(LAYOUT, x.features)) for x in held]
        pre = np.concatenate([q[x.times < x.fault_t] for q, x in zip(p, held) if x.label])
        post = np.concatenate([q[x.times >= x.fault_t + 1.0] for q, x in zip(p, held) if x.label])
        ok = np.concatenate([q for q, x in zip(p, held) if not x.label])
        return float(pre.mean()), float(post.mean()), float(ok.mean())

    pre_f, post_f, ok_f = step_scores(True)
    pre_e, post_e, ok_e = step_scores(False)
    assert pre_f < 0.1 and ok_f < 0.1 and post_f > 0.9, (pre_f, post_f, ok_f)
    assert pre_e > 2 * pre_f and (post_f - pre_f) > (post_e - pre_e), (pre_e, post_e, ok_e)
    with pytest.raises(ValueError, match="episodes \\[0\\] differ in length"):
        from vla_runtime.core.failure_detection import train_scorer

        train_scorer([np.zeros((3, 2)), np.zeros((2, 2))], [1, 0], step_labels=[np.zeros(2), np.zeros(2)])


def test_save_load_roundtrip_without_pickle(synthetic, tmp_path):
    model = train_detector(synthetic[:30], epochs=50)
    calibrate(model, [r for r in synthetic[30:] if r.label == 0], alpha=0.2)
    d = model.save(tmp_path / "pkg")
    assert d == tmp_path / "pkg" / "detector"
    with zipfile.ZipFile(d / "weights.npz") as z:  # plain .npy members, no pickled objects
        assert all(n.endswith(".npy") for n in z.namelist())
    loaded = LearnedDetector.load(tmp_path / "pkg")
    r = synthetic[40]
    np.testing.assert_allclose(loaded.episode_scores(r.features), model.episode_scores(r.features))
    np.testing.assert_allclose(loaded.threshold.thresholds, model.threshold.thresholds)
    assert loaded.threshold.alpha == 0.2
    acc = loaded.scorer.new_episode()
    x = episode_step_features(LAYOUT, r.features)
    streamed = [acc.update(row) for row in x]
    np.testing.assert_allclose(streamed, model.episode_scores(r.features), rtol=1e-9)


def test_load_refuses_mismatched_weights(synthetic, tmp_path):
    model = train_detector(synthetic[:20], epochs=5)
    d = model.save(tmp_path)
    (d / "detector.yaml").write_text((d / "detector.yaml").read_text().replace("latent_mean:16", "latent_mean:17"))
    with pytest.raises(ValueError, match="weights take"):
        LearnedDetector.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        LearnedDetector.load(tmp_path / "nothing")


def test_load_refuses_an_incomplete_calibration_record(tmp_path):
    """The shipped head's detector.yaml cut after ``bin_s`` (as bench fuzz once cut it) still parses,
    but its conformal quantile is gone: refused, naming what is missing, not loaded with defaults."""
    shutil.copytree(PROJECT_ROOT / "models" / "reference_reach" / "detector", tmp_path / "detector")
    meta = tmp_path / "detector" / "detector.yaml"
    text = meta.read_text()
    assert LearnedDetector.load(tmp_path).threshold.n_calibration > 0
    meta.write_text(text[: text.index("n_calibration")])
    with pytest.raises(ValueError, match=r"calibration lacks \['n_calibration', 'q'\]"):
        LearnedDetector.load(tmp_path)
    meta.write_text(text.replace("alpha: 0.1", "alpha: 1.5"))
    with pytest.raises(ValueError, match="alpha = 1.5"):
        LearnedDetector.load(tmp_path)


def test_calibrate_detector_pipeline(synthetic, tmp_path):
    save_rollouts(synthetic, tmp_path / "roll")
    assert len(load_rollouts(tmp_path / "roll")) == len(synthetic)
    rep = calibrate_detector(tmp_path / "roll", alpha=0.2, package=tmp_path / "pkg", epochs=150)
    assert rep["synthetic"] is True and rep["roc_auc"] > 0.9, rep
    assert rep["labels"] == "from the fault"
    assert (tmp_path / "pkg" / "detector" / "detector.yaml").exists()
    # Two directories are pooled: the same rollouts split in two give the same report.
    save_rollouts(synthetic[:40], tmp_path / "a")
    save_rollouts(synthetic[40:], tmp_path / "b")
    pooled = calibrate_detector([tmp_path / "a", tmp_path / "b"], alpha=0.2, epochs=150)
    assert pooled["rollouts"] == len(synthetic) and pooled["roc_auc"] == rep["roc_auc"], pooled


def test_roc_auc():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert math.isnan(roc_auc([0.1], [1]))


# ------------------------------------------------------------------------------ hard monitors
def test_staleness_monitor_arms_on_first_sample():
    m = StalenessMonitor("/joint_states", 0.1)
    assert m.check(100.0).ok  # never seen: not armed
    m.note(1.0)
    assert m.check(1.09).ok
    r = m.check(1.25)
    assert not r.ok and "/joint_states stale: last 250 ms ago (limit 100 ms)" in r.reason


def test_latent_age_monitor():
    m = LatentAgeMonitor(1.0)
    m.note(0.5)
    assert m.check().ok
    m.note(1.2)
    assert "stale latent: 1.200 s old" in m.check().reason


def test_hold_streak_monitor():
    m = HoldStreakMonitor(3, ignore=("hold: no latent yet",))
    for _ in range(5):
        m.note_hold("hold: no joint state")  # before the first plan: start-up, not armed
    assert m.check().ok
    m.note_plan()
    m.note_hold("hold: inference over budget")
    m.note_hold("hold: no latent yet")  # ignored reason
    m.note_hold("hold: inference over budget")
    assert m.check().ok
    m.note_hold("hold: inference over budget")
    r = m.check()
    assert not r.ok and "streak 3" in r.reason and "over budget" in r.reason
    m.note_plan()
    assert m.check().ok


def test_finite_monitor_clears_after_good_samples():
    m = FiniteMonitor("features", clear_after=2)
    assert m.note(np.ones(4)).ok
    r = m.note(np.array([1.0, np.nan, 1.0]))
    assert not r.ok and "index 1" in r.reason
    assert not m.note(np.ones(3)).ok
    assert m.note(np.ones(3)).ok
    assert not m.note(np.array([np.inf])).ok


def test_intervention_rate_monitor():
    m = InterventionRateMonitor(max_per_s=5.0, window_s=1.0)
    for k in range(21):
        r = m.note_total(k, k * 0.5)  # 2/s
    assert r.ok
    r = m.note_total(40, 10.5)  # +20 within 0.5 s
    assert not r.ok and "intervening" in r.reason
    assert m.note_total(0, 11.0).ok  # the bridge restarted: counter went down


def test_tracking_error_monitor_needs_persistence():
    m = TrackingErrorMonitor(0.3, persist_s=0.2)
    assert m.note_measured({"j1": 5.0}, 0.0).ok  # no command yet
    m.note_command(10.0, [0.0, 1.0], ["j1", "j2"], np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert m.note_measured({"j1": 0.5, "j2": 0.0}, 10.5).ok  # commanded 0.5 at t=10.5
    assert m.note_measured({"j1": 0.0, "j2": 0.0}, 11.0).ok  # error 1.0 starts
    r = m.note_measured({"j1": 0.0, "j2": 0.0}, 11.25)
    assert not r.ok and "tracking error 1.000 rad on j1" in r.reason
    assert m.note_measured({"j1": 1.0, "j2": 0.1}, 11.3).ok
