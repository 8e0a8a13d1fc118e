"""Failure detection: a learned failure score with a conformal threshold, and hard monitors.

Pure numpy, no ROS; every time is passed in by the caller (injected clock), so pytest drives it
all without a graph.

**Learned score** (after SAFE, "Multitask Failure Detection for Vision-Language-Action Models"):
a small MLP head reads the policy's own features at every fast-loop step (the latent guidance
the slow path produced, a summary of the action chunk the fast path decoded, the latent's age)
and gives a per-step failure probability ``p_t``; the episode's failure score ``s(t)`` accumulates
them (running mean, or running max of an EMA). The head is trained with per-step binary
cross-entropy against the episode's outcome.

**Conformal threshold** ``δ(t)``, calibrated on SUCCESSFUL rollouts only, at a user-set ``α``:

* ``functional`` (default, episode-wise guarantee): time is cut into bins; a "shape" split of the
  successful rollouts gives a per-bin centre ``μ_b`` and spread ``σ_b`` of the score; on the other
  split each rollout's nonconformity is ``max_b (s_b − μ_b) / σ_b`` (``s_b`` = the rollout's largest
  score in bin b); ``q`` is its ``⌈(n+1)(1−α)⌉``-th smallest value (n = rollouts in that split) and
  ``δ_b = μ_b + q σ_b``. For a new successful rollout exchangeable with the calibration ones,
  P(the score crosses δ(t) at ANY time of the episode) ≤ α.
* ``per_bin``: ``δ_b`` is the ``⌈(n_b+1)(1−α)⌉``-th smallest bin-maximum of bin b over the ``n_b``
  rollouts that reached it: a marginal guarantee per bin (a union over bins can exceed α).

When ``⌈(n+1)(1−α)⌉ > n`` there are too few rollouts for that α and the threshold is +inf (the
learned part never alarms): :func:`calibrate` says so in its result instead of pretending.

A trained and calibrated detector is saved as ``weights.npz`` (arrays only, loaded with
``allow_pickle=False``) and ``detector.yaml`` inside a model package's ``detector/`` directory.

**Hard monitors** (each ``check(now) -> MonitorResult(ok, reason)``): stale ``/joint_states``,
stale latent, fast path silent, a streak of HOLD plans (deadline misses, bad output…), non-finite
features or actions, the safety filter's intervention rate, and joint tracking error.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vla_runtime.core.contract import FeatureLayout

#: Directory of a model package holding the detector.
DETECTOR_DIR = "detector"
WEIGHTS_FILE = "weights.npz"
META_FILE = "detector.yaml"
FORMAT = "vla_failure_detector/1"

FeatureVector = np.ndarray  #: one ``/vla/policy_features`` message as float32 (N,)


def step_features(layout: FeatureLayout, vec: FeatureVector, prev_chunk: np.ndarray | None = None) -> np.ndarray:
    """The learned head's per-step input: latent mean ⊕ chunk mean ⊕ chunk std ⊕ chunk change ⊕
    [latent age, chunk path length].

    ``chunk change`` is the per-dim mean |difference| to the previous step's chunk (0 at the
    first step): an unsure policy flips between modes from one step to the next.
    """
    latent, chunk, age, _infer_ms, _hold = layout.split(vec)
    mean = chunk.mean(axis=0)
    std = chunk.std(axis=0)
    change = np.zeros(layout.action_dim) if prev_chunk is None else np.abs(chunk - prev_chunk).mean(axis=0)
    path = float(np.abs(np.diff(chunk, axis=0)).sum()) if layout.horizon > 1 else 0.0
    return np.concatenate([latent, mean, std, change, [age, path]]).astype(np.float64)


def episode_step_features(layout: FeatureLayout, features: np.ndarray) -> np.ndarray:
    """:func:`step_features` for every row of a ``(T, N)`` episode."""
    out = np.empty((len(features), layout.step_size))
    prev = None
    for t, vec in enumerate(features):
        out[t] = step_features(layout, vec, prev)
        prev = layout.split(vec)[1]
    return out


# ============================================================================ learned head
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class FailureScorer:
    """Standardiser + one-hidden-layer MLP (tanh) → per-step failure probability.

    Attributes:
        mean, std: Input standardisation (from the training steps).
        w1, b1, w2, b2: The MLP (``w2`` is (hidden,), ``b2`` a scalar).
        accumulate: ``mean`` (running mean of ``p_t``) or ``max_ema`` (running max of an EMA of
            ``p_t`` with factor ``ema``).
        ema: EMA factor for ``max_ema``.
    """

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    accumulate: str = "mean"
    ema: float = 0.2

    def step_probability(self, x: np.ndarray) -> np.ndarray:
        """Per-step failure probability of one step (D,) or many (T, D)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        h = np.tanh(z @ self.w1 + self.b1)
        return _sigmoid(h @ self.w2 + self.b2)

    def episode_scores(self, x: np.ndarray) -> np.ndarray:
        """The accumulated score s(t) at every step of one episode's step features (T, D)."""
        p = self.step_probability(x)
        if self.accumulate == "mean":
            return np.cumsum(p) / np.arange(1, len(p) + 1)
        out = np.empty_like(p)
        e, m = 0.0, 0.0
        for t, pt in enumerate(p):
            e = pt if t == 0 else (1 - self.ema) * e + self.ema * pt
            m = max(m, e)
            out[t] = m
        return out

    def new_episode(self) -> ScoreAccumulator:
        """A streaming accumulator with the same rule as :meth:`episode_scores`."""
        return ScoreAccumulator(self)


class ScoreAccumulator:
    """Streaming s(t) for one episode (the node feeds it one step at a time)."""

    def __init__(self, scorer: FailureScorer) -> None:
        self.scorer = scorer
        self.steps = 0
        self._sum = 0.0
        self._ema = 0.0
        self.score = 0.0

    def update(self, x: np.ndarray) -> float:
        """Add one step's features; return the accumulated score."""
        p = float(self.scorer.step_probability(x))
        self.steps += 1
        if self.scorer.accumulate == "mean":
            self._sum += p
            self.score = self._sum / self.steps
        else:
            a = self.scorer.ema
            self._ema = p if self.steps == 1 else (1 - a) * self._ema + a * p
            self.score = max(self.score, self._ema)
        return self.score


def train_scorer(episodes: Sequence[np.ndarray], labels: Sequence[int], hidden: int = 32, epochs: int = 300,
                 lr: float = 3e-3, weight_decay: float = 1e-4, accumulate: str = "mean", seed: int = 0,
                 balance: bool = True, step_labels: Sequence[np.ndarray] | None = None) -> FailureScorer:
    """Train the MLP head with per-step BCE against the episode label (full-batch Adam).

    Args:
        episodes: Per-episode step features, each (T_i, D) (see :func:`episode_step_features`).
        labels: 1 = the episode failed, 0 = it succeeded.
        hidden: Hidden units.
        balance: Weight steps so that failing and nominal steps count equally.
        step_labels: Per-step targets instead of the episode label, each (T_i,) of 0/1: a failed
            episode whose fault started at a known time is nominal before it.
    """
    if len(episodes) != len(labels) or not episodes:
        raise ValueError(f"need one label per episode and ≥ 1 episode, got {len(episodes)} / {len(labels)}")
    if accumulate not in ("mean", "max_ema"):
        raise ValueError(f"accumulate must be 'mean' or 'max_ema', got {accumulate!r}")
    x = np.concatenate([np.asarray(e, dtype=np.float64) for e in episodes])
    if step_labels is None:
        y = np.concatenate([np.full(len(e), float(lab)) for e, lab in zip(episodes, labels)])
    else:
        bad = [i for i, (e, s) in enumerate(zip(episodes, step_labels)) if len(s) != len(e)]
        if len(step_labels) != len(episodes) or bad:
            raise ValueError(f"step_labels need one (T_i,) array per episode; episodes {bad[:5]} differ in length")
        y = np.concatenate([np.asarray(s, dtype=np.float64) for s in step_labels])
    # Each episode weighs the same whatever its length; classes weigh the same when balancing.
    w = np.concatenate([np.full(len(e), 1.0 / len(e)) for e in episodes])
    if balance:
        pos = y > 0.5
        for mask in (pos, ~pos):
            if mask.any():
                w[mask] *= 0.5 / w[mask].sum()
    w /= w.sum()
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    z = (x - mean) / std
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    params = {
        "w1": rng.normal(0, 1 / math.sqrt(d), (d, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0, 1 / math.sqrt(hidden), hidden),
        "b2": np.zeros(()),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1_, b2_ = 0.9, 0.999
    for it in range(1, epochs + 1):
        h = np.tanh(z @ params["w1"] + params["b1"])
        p = _sigmoid(h @ params["w2"] + params["b2"])
        g_logit = w * (p - y)  # d(weighted BCE)/d logit
        grads = {
            "w2": h.T @ g_logit,
            "b2": np.asarray(g_logit.sum()),
        }
        g_h = np.outer(g_logit, params["w2"]) * (1 - h * h)
        grads["w1"] = z.T @ g_h
        grads["b1"] = g_h.sum(axis=0)
        for k in params:
            g = grads[k] + (weight_decay * params[k] if k.startswith("w") else 0.0)
            m[k] = b1_ * m[k] + (1 - b1_) * g
            v[k] = b2_ * v[k] + (1 - b2_) * g * g
            mh = m[k] / (1 - b1_**it)
            vh = v[k] / (1 - b2_**it)
            params[k] = params[k] - lr * mh / (np.sqrt(vh) + 1e-8)
    return FailureScorer(mean, std, params["w1"], params["b1"], params["w2"], float(params["b2"]),
                         accumulate=accumulate)


# ============================================================================ conformal
def conformal_rank(n: int, alpha: float) -> int:
    """The finite-sample conformal rank ``⌈(n+1)(1−α)⌉`` (may exceed n: then no finite threshold)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return int(math.ceil((n + 1) * (1 - alpha) - 1e-12))


def conformal_quantile(values: np.ndarray, alpha: float) -> float:
    """The ``⌈(n+1)(1−α)⌉``-th smallest of ``values`` (+inf when that rank exceeds n)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = conformal_rank(len(v), alpha)
    return float(v[k - 1]) if 1 <= k <= len(v) else math.inf


@dataclass
class ConformalThreshold:
    """A time-varying threshold δ(t) on the accumulated score.

    Attributes:
        bin_s: Width of a time bin (s); t beyond the last bin uses the last bin's threshold.
        thresholds: δ per bin.
        alpha: The calibrated false-alarm bound.
        method: ``functional`` or ``per_bin``.
        n_calibration: Rollouts behind the quantile.
        q: The functional quantile (``functional`` only).
        mu, sigma: Per-bin centre and spread (``functional`` only).
    """

    bin_s: float
    thresholds: np.ndarray
    alpha: float
    method: str = "functional"
    n_calibration: int = 0
    q: float = math.nan
    mu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sigma: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def at(self, t: float) -> float:
        """δ(t) for t seconds into the episode."""
        i = min(max(int(t // self.bin_s), 0), len(self.thresholds) - 1)
        return float(self.thresholds[i])

    def first_crossing(self, times: np.ndarray, scores: np.ndarray) -> int | None:
        """Index of the first step whose score exceeds δ(t), or None."""
        idx = np.minimum((np.asarray(times) // self.bin_s).astype(int), len(self.thresholds) - 1)
        over = np.asarray(scores) > self.thresholds[np.maximum(idx, 0)]
        hits = np.flatnonzero(over)
        return int(hits[0]) if len(hits) else None


def _bin_maxima(times: np.ndarray, scores: np.ndarray, bin_s: float, n_bins: int) -> np.ndarray:
    """Per-bin maximum score of one rollout (NaN for bins it did not reach); the last bin takes
    everything beyond it."""
    out = np.full(n_bins, np.nan)
    idx = np.minimum((np.asarray(times) // bin_s).astype(int), n_bins - 1)
    for b, s in zip(idx, scores):
        if b >= 0 and not s <= out[b]:
            out[b] = s
    return out


def calibrate_threshold(rollouts: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float, bin_s: float = 0.5,
                        horizon_s: float | None = None, method: str = "functional", shape_fraction: float = 0.3,
                        min_sigma: float = 1e-3, seed: int = 0) -> ConformalThreshold:
    """Calibrate δ(t) from SUCCESSFUL rollouts' (times, scores) at level α.

    Args:
        rollouts: (times (T,), scores (T,)) of successful episodes only.
        alpha: Allowed false-alarm probability on a success.
        bin_s: Time-bin width.
        horizon_s: Last bin start; default: the longest rollout.
        method: ``functional`` (episode-wise bound) or ``per_bin`` (marginal per bin).
        shape_fraction: ``functional``: share of rollouts used for μ, σ (the rest for q).
    """
    if method not in ("functional", "per_bin"):
        raise ValueError(f"method must be 'functional' or 'per_bin', got {method!r}")
    if not rollouts:
        raise ValueError("calibration needs at least one successful rollout")
    if not bin_s > 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    t_max = horizon_s if horizon_s is not None else max(float(np.max(t)) for t, _ in rollouts)
    n_bins = max(1, int(t_max // bin_s) + 1)
    maxima = np.array([_bin_maxima(t, s, bin_s, n_bins) for t, s in rollouts])  # (n, B)
    if method == "per_bin":
        th = np.empty(n_bins)
        for b in range(n_bins):
            col = maxima[:, b]
            col = col[np.isfinite(col)]
            th[b] = conformal_quantile(col, alpha) if len(col) else (th[b - 1] if b else math.inf)
        return ConformalThreshold(bin_s, th, alpha, "per_bin", n_calibration=len(rollouts))
    n = len(rollouts)
    order = np.random.default_rng(seed).permutation(n)
    n_shape = int(round(shape_fraction * n)) if n >= 4 else 0
    shape_idx, q_idx = order[:n_shape], order[n_shape:]
    shape = maxima[shape_idx] if n_shape else maxima  # tiny n: shape from all (guarantee approximate)
    with warnings.catch_warnings():  # bins no shape rollout reached are NaN here, filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(shape, axis=0)
        sigma = np.nanstd(shape, axis=0)
    # Bins no shape rollout reached take the neighbour's values.
    for arr in (mu, sigma):
        last = np.nan
        for b in range(n_bins):
            if np.isfinite(arr[b]):
                last = arr[b]
            else:
                arr[b] = last
        if not np.isfinite(arr[0]):
            arr[:] = np.nan_to_num(arr, nan=0.0)
    sigma = np.maximum(np.nan_to_num(sigma, nan=min_sigma), min_sigma)
    mu = np.nan_to_num(mu, nan=0.0)
    with np.errstate(invalid="ignore"):
        nonconf = np.nanmax((maxima[q_idx] - mu) / sigma, axis=1)
    q = conformal_quantile(nonconf, alpha)
    return ConformalThreshold(bin_s, mu + q * sigma, alpha, "functional", n_calibration=len(q_idx), q=q,
                              mu=mu, sigma=sigma)


# ============================================================================ the detector
@dataclass
class LearnedDetector:
    """Scorer + threshold + the feature layout it was trained for."""

    layout: FeatureLayout
    scorer: FailureScorer
    threshold: ConformalThreshold | None = None
    info: dict = field(default_factory=dict)

    def episode_scores(self, features: np.ndarray) -> np.ndarray:
        """s(t) for a (T, N) raw feature episode."""
        return self.scorer.episode_scores(episode_step_features(self.layout, features))

    def detection_index(self, times: np.ndarray, features: np.ndarray) -> int | None:
        """First step at which the detector alarms on an episode (None: no alarm)."""
        if self.threshold is None:
            raise ValueError("detector is not calibrated")
        return self.threshold.first_crossing(np.asarray(times), self.episode_scores(features))

    # ------------------------------------------------------------------ persistence (no pickle)
    def save(self, package_dir: str | Path) -> Path:
        """Write ``<package_dir>/detector/{weights.npz, detector.yaml}``; returns the directory."""
        d = Path(package_dir) / DETECTOR_DIR
        d.mkdir(parents=True, exist_ok=True)
        s, th = self.scorer, self.threshold
        arrays = {"mean": s.mean, "std": s.std, "w1": s.w1, "b1": s.b1, "w2": s.w2, "b2": np.asarray(s.b2)}
        if th is not None:
            arrays.update(thresholds=th.thresholds, mu=th.mu, sigma=th.sigma)
        np.savez(d / WEIGHTS_FILE, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        meta = {
            "format": FORMAT,
            "feature_layout": self.layout.label,
            "step_features": "latent_mean|chunk_mean|chunk_std|chunk_change|latent_age_s,chunk_path",
            "hidden": int(s.w1.shape[1]),
            "accumulate": s.accumulate,
            "ema": float(s.ema),
            "calibration": None if th is None else {
                "method": th.method, "alpha": float(th.alpha), "bin_s": float(th.bin_s),
                "n_calibration": int(th.n_calibration), "q": None if not math.isfinite(th.q) else float(th.q),
                "bins": int(len(th.thresholds)),
            },
            "info": _plain(self.info),
        }
        (d / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
        return d

    @classmethod
    def load(cls, path: str | Path) -> LearnedDetector:
        """Load from a model package dir or its ``detector/`` dir; ValueError naming what is wrong."""
        p = Path(path)
        d = p if (p / META_FILE).exists() else p / DETECTOR_DIR
        meta_path, w_path = d / META_FILE, d / WEIGHTS_FILE
        if not meta_path.exists() or not w_path.exists():
            raise FileNotFoundError(f"no detector in {d} (need {META_FILE} and {WEIGHTS_FILE})")
        try:
            meta = yaml.safe_load(meta_path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{meta_path}: does not read as YAML ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: expected a mapping, got {type(meta).__name__}")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format must be {FORMAT!r}, got {meta.get('format')!r}")
        layout = FeatureLayout.parse(str(meta.get("feature_layout", "")))
        try:
            with np.load(w_path, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
            raise ValueError(f"{w_path}: weights do not load ({type(e).__name__}: {e})") from None
        need = ("mean", "std", "w1", "b1", "w2", "b2")
        missing = [k for k in need if k not in a]
        if missing:
            raise ValueError(f"{w_path}: missing arrays {missing}")
        if a["w1"].shape[0] != layout.step_size or a["mean"].shape != (layout.step_size,):
            raise ValueError(f"{w_path}: weights take {a['w1'].shape[0]} inputs, layout {layout.label!r} gives "
                             f"{layout.step_size}")
        scorer = FailureScorer(a["mean"], a["std"], a["w1"], a["b1"], a["w2"], float(a["b2"]),
                               accumulate=str(meta.get("accumulate", "mean")), ema=float(meta.get("ema", 0.2)))
        cal = meta.get("calibration")
        th = _load_threshold(cal, a, meta_path, w_path) if cal else None
        return cls(layout, scorer, th, dict(meta.get("info") or {}))


def _load_threshold(cal, a: dict, meta_path: Path, w_path: Path) -> ConformalThreshold:
    """The calibrated threshold of a stored head; ValueError naming the field when its record is
    incomplete (a truncated ``detector.yaml`` must not load as a head with a different guarantee)."""
    if not isinstance(cal, dict):
        raise ValueError(f"{meta_path}: calibration must be a mapping, got {type(cal).__name__}")
    need = ["bin_s", "alpha", "method", "n_calibration"] + (["q"] if cal.get("method") == "functional" else [])
    missing = [k for k in need if cal.get(k) is None]
    if missing:
        raise ValueError(f"{meta_path}: calibration lacks {missing}")
    try:
        bin_s, alpha, n_cal = float(cal["bin_s"]), float(cal["alpha"]), int(cal["n_calibration"])
        q = float(cal["q"]) if cal.get("q") is not None else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"{meta_path}: calibration numbers do not parse: {cal!r}"[:300]) from None
    if cal["method"] not in ("functional", "per_bin"):
        raise ValueError(f"{meta_path}: calibration.method = {cal['method']!r}: expected functional or per_bin")
    if not (bin_s > 0 and 0 < alpha < 1 and n_cal >= 1):
        raise ValueError(f"{meta_path}: calibration bin_s = {bin_s}, alpha = {alpha}, n_calibration = {n_cal}: "
                         "need bin_s > 0, 0 < alpha < 1, n_calibration >= 1")
    if cal["method"] == "functional" and not math.isfinite(q):
        raise ValueError(f"{meta_path}: calibration.q = {q}: must be finite")
    thresholds = a.get("thresholds")
    if thresholds is None or thresholds.ndim != 1 or not len(thresholds) or not np.all(np.isfinite(thresholds)):
        raise ValueError(f"{w_path}: 'thresholds' must be a non-empty finite 1-D array")
    return ConformalThreshold(bin_s, thresholds, alpha, str(cal["method"]), n_cal, q,
                              a.get("mu", np.zeros(0)), a.get("sigma", np.zeros(0)))


def _plain(obj):
    """yaml.safe_dump-able (and strict-JSON-able) copy: numpy scalars and arrays → Python, NaN/inf → None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half); NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


# ============================================================================ hard monitors
@dataclass(frozen=True)
class MonitorResult:
    """One monitor's verdict: ``ok`` False means halt, ``reason`` says why."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


OK = MonitorResult(True, "")


class StalenessMonitor:
    """A stream that must keep arriving once it has started (``/joint_states``, the fast path's plans).

    Armed by the first sample; fires when the newest is older than ``timeout_s``.
    """

    def __init__(self, name: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"{name}: timeout_s must be > 0, got {timeout_s}")
        self.name = name
        self.timeout_s = float(timeout_s)
        self.last: float | None = None

    def note(self, now: float) -> None:
        self.last = now

    def check(self, now: float) -> MonitorResult:
        if self.last is None or now - self.last <= self.timeout_s:
            return OK
        return MonitorResult(False, f"{self.name} stale: last {1e3 * (now - self.last):.0f} ms ago "
                                    f"(limit {1e3 * self.timeout_s:.0f} ms)")

    def reset(self) -> None:
        self.last = None


class LatentAgeMonitor:
    """The latent the fast path used is older than ``max_age_s`` (age from the features)."""

    def __init__(self, max_age_s: float) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_age_s = float(max_age_s)
        self.age: float | None = None

    def note(self, age_s: float) -> None:
        self.age = float(age_s)

    def check(self, now: float = 0.0) -> MonitorResult:
        if self.age is None or self.age <= self.max_age_s:
            return OK
        return MonitorResult(False, f"stale latent: {self.age:.3f} s old (limit {self.max_age_s} s)")


class HoldStreakMonitor:
    """A streak of HOLD plans from the fast path once it has produced a plan.

    ``max_streak`` consecutive HOLD messages (deadline misses, non-finite output, stale inputs)
    fire it; a real plan clears it. Before the first real plan (start-up: no latent yet) it is not
    armed.
    """

    def __init__(self, max_streak: int, ignore: Sequence[str] = ()) -> None:
        if max_streak < 1:
            raise ValueError(f"max_streak must be ≥ 1, got {max_streak}")
        self.max_streak = int(max_streak)
        self.ignore = tuple(ignore)
        self.armed = False
        self.streak = 0
        self.reason = ""

    def note_plan(self) -> None:
        self.armed = True
        self.streak = 0
        self.reason = ""

    def note_hold(self, reason: str) -> None:
        if not self.armed or any(reason.startswith(p) for p in self.ignore):
            return
        self.streak += 1
        self.reason = reason

    def check(self, now: float = 0.0) -> MonitorResult:
        if self.streak < self.max_streak:
            return OK
        return MonitorResult(False, f"fast path HOLD streak {self.streak} (limit {self.max_streak}): {self.reason}")

    def reset(self) -> None:
        self.armed, self.streak, self.reason = False, 0, ""


class FiniteMonitor:
    """NaN/inf (or any refused sample) in a stream: features, action plans. Clears after
    ``clear_after`` good samples in a row."""

    def __init__(self, name: str, clear_after: int = 3) -> None:
        self.name = name
        self.clear_after = int(clear_after)
        self.bad = False
        self.good_run = 0
        self.detail = ""

    def note(self, values: np.ndarray) -> MonitorResult:
        """Check one sample; returns the new verdict."""
        arr = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            i = int(np.flatnonzero(~finite.reshape(-1))[0])
            self.bad, self.good_run = True, 0
            self.detail = f"{self.name}: non-finite value {arr.reshape(-1)[i]} at index {i}"
        elif self.bad:
            self.good_run += 1
            if self.good_run >= self.clear_after:
                self.bad = False
        return self.check()

    def note_verdict(self, refused: str | None) -> MonitorResult:
        """One sample judged elsewhere (``core.validation``): the reason it was refused, or None."""
        if refused is not None:
            self.bad, self.good_run = True, 0
            self.detail = f"{self.name}: {refused}"
        elif self.bad:
            self.good_run += 1
            if self.good_run >= self.clear_after:
                self.bad = False
        return self.check()

    def check(self, now: float = 0.0) -> MonitorResult:
        return MonitorResult(False, self.detail) if self.bad else OK


class InterventionRateMonitor:
    """Safety-filter interventions per second (from the bridge's cumulative ``interventions``).

    Fires when more than ``max_per_s`` × ``window_s`` interventions happened within the last
    ``window_s``. A counter that goes down (bridge restarted) restarts the window.
    """

    def __init__(self, max_per_s: float, window_s: float = 1.0) -> None:
        if not max_per_s > 0 or not window_s > 0:
            raise ValueError(f"max_per_s and window_s must be > 0, got {max_per_s}, {window_s}")
        self.max_per_s = float(max_per_s)
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, int]] = deque()
        self.rate = 0.0

    def note_total(self, total: int, now: float) -> MonitorResult:
        if self._samples and total < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((now, int(total)))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        span = max(now - t0, 1e-9)
        self.rate = (total - c0) / span if now - t0 >= 0.5 * self.window_s else 0.0
        return self.check(now)

    def check(self, now: float = 0.0) -> MonitorResult:
        if self.rate <= self.max_per_s:
            return OK
        return MonitorResult(False, f"safety filter intervening {self.rate:.1f}/s (limit {self.max_per_s:g}/s)")


class TrackingErrorMonitor:
    """Commanded vs measured joint positions (rad), sustained for ``persist_s``.

    The command is the trajectory last sent to the controller, interpolated at the time of the
    measurement (its end point after it ends); a JointTrajectory is ``(start_s, times, names,
    positions)``. Fires when max |error| > ``max_error_rad`` for longer than ``persist_s``.
    """

    def __init__(self, max_error_rad: float, persist_s: float = 0.2) -> None:
        if not max_error_rad > 0:
            raise ValueError(f"max_error_rad must be > 0, got {max_error_rad}")
        self.max_error_rad = float(max_error_rad)
        self.persist_s = float(persist_s)
        self._cmd: tuple[np.ndarray, list[str], np.ndarray] | None = None
        self._over_since: float | None = None
        self.error = 0.0
        self.joint = ""

    def note_command(self, start_s: float, times_from_start: Sequence[float], names: Sequence[str],
                     positions: np.ndarray) -> None:
        pos = np.asarray(positions, dtype=np.float64).reshape(len(times_from_start), len(names))
        self._cmd = (start_s + np.asarray(times_from_start, dtype=np.float64), list(names), pos)

    def clear_command(self) -> None:
        self._cmd = None
        self._over_since = None
        self.error = 0.0

    def note_measured(self, measured: dict[str, float], now: float) -> MonitorResult:
        if self._cmd is None:
            return OK
        times, names, pos = self._cmd
        if now <= times[0]:
            cmd = pos[0]
        elif now >= times[-1]:
            cmd = pos[-1]
        else:
            i = int(np.searchsorted(times, now, side="right"))
            a = (now - times[i - 1]) / (times[i] - times[i - 1])
            cmd = pos[i - 1] + a * (pos[i] - pos[i - 1])
        err, worst = 0.0, ""
        for n, c in zip(names, cmd):
            m = measured.get(n)
            if m is not None and abs(c - m) > err:
                err, worst = abs(c - m), n
        self.error, self.joint = err, worst
        if err > self.max_error_rad:
            if self._over_since is None:
                self._over_since = now
        else:
            self._over_since = None
        return self.check(now)

    def check(self, now: float = 0.0) -> MonitorResult:
        if self._over_since is None or now - self._over_since < self.persist_s:
            return OK
        return MonitorResult(False, f"tracking error {self.error:.3f} rad on {self.joint} for "
                                    f"{1e3 * (now - self._over_since):.0f} ms (limit {self.max_error_rad} rad)")


def load_for_config(learned: str, directory: str | Path) -> tuple[LearnedDetector | None, str]:
    """The learned head a config asks for (``detector.learned``), or why it runs without one.

    Args:
        learned: ``required``, ``if_present`` or ``off`` (see ``core.config.DetectorConfig``).
        directory: The head's directory.

    Returns:
        (the loaded, calibrated detector or None, a one-line status for logs and diagnostics).

    Raises:
        ValueError: A head that is there but does not load, or is not calibrated; or no head where
            ``learned`` is ``required``. The failure detector refuses to start on it and ``vla-runtime
            check`` refuses the config.
    """
    if learned == "off":
        return None, "learned head off (detector.learned: off): hard monitors only"
    try:
        det = LearnedDetector.load(directory)
    except FileNotFoundError as e:
        if learned == "required":
            raise ValueError(f"detector.learned is 'required' but {e}") from None
        return None, f"no learned head in {directory}: hard monitors only"
    if det.threshold is None:
        raise ValueError(f"learned head in {directory} is not calibrated (run vla-runtime calibrate-detector)")
    th = det.threshold
    return det, f"loaded {directory} (alpha {th.alpha}, {th.method}, {len(th.thresholds)} bins)"
