"""``vla-runtime calibrate-detector``: record rollouts, train the failure head, calibrate, evaluate.

A rollout is one episode of the fast path's ``/vla/policy_features`` with its receive times and
its outcome (label 1 = failed, 0 = succeeded). Rollouts are stored as one ``.npz`` each
(``times``, ``features``; no pickle) plus ``rollouts.yaml`` (label, scenario, layout, fault
time) in a directory.

Pipeline (:func:`calibrate_detector`): split the rollouts into train / calibration / held-out
(stratified, seeded), train the MLP head on train (successes and failures), calibrate δ(t) on
the calibration split's SUCCESSES only at ``alpha``, evaluate on held-out, save into
``<package>/detector/``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vla_runtime.commands.progress import Progress
from vla_runtime.core.contract import FeatureLayout
from vla_runtime.core.failure_detection import (
    ConformalThreshold,
    LearnedDetector,
    calibrate_threshold,
    episode_step_features,
    roc_auc,
    train_scorer,
)

INDEX_FILE = "rollouts.yaml"


@dataclass
class Rollout:
    """One recorded episode.

    Attributes:
        times: Seconds since the episode started, (T,).
        features: Raw ``/vla/policy_features`` vectors, (T, N).
        label: 1 = failed, 0 = succeeded.
        layout: The feature layout label.
        scenario: How it was produced (``nominal``, ``target_moved``, ``arm_blocked``, ``wrong_object``…).
        fault_t: When the induced fault started (s into the episode), None for nominal episodes.
    """

    times: np.ndarray
    features: np.ndarray
    label: int
    layout: str
    scenario: str = "nominal"
    fault_t: float | None = None
    meta: dict = field(default_factory=dict)


# ============================================================================ storage
def save_rollouts(rollouts: Sequence[Rollout], directory: str | os.PathLike) -> Path:
    """Write ``NNNN.npz`` per rollout and the ``rollouts.yaml`` index."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    index = []
    for i, r in enumerate(rollouts):
        name = f"{i:04d}.npz"
        np.savez_compressed(d / name, times=np.asarray(r.times, np.float64), features=np.asarray(r.features,
                                                                                                 np.float32))
        index.append({"file": name, "label": int(r.label), "scenario": r.scenario, "layout": r.layout,
                      "fault_t": None if r.fault_t is None else float(r.fault_t), "steps": int(len(r.times)),
                      "meta": {str(k): v for k, v in r.meta.items()}})
    (d / INDEX_FILE).write_text(yaml.safe_dump({"rollouts": index}, sort_keys=False))
    return d


def load_rollouts(directory: str | os.PathLike) -> list[Rollout]:
    """Read a directory written by :func:`save_rollouts` (or :func:`record_rollouts`)."""
    d = Path(directory)
    idx = yaml.safe_load((d / INDEX_FILE).read_text()) or {}
    out = []
    for e in idx.get("rollouts", []):
        with np.load(d / e["file"], allow_pickle=False) as z:
            out.append(Rollout(z["times"], z["features"], int(e["label"]), str(e["layout"]), str(e.get("scenario", "")),
                               e.get("fault_t"), dict(e.get("meta") or {})))
    if not out:
        raise ValueError(f"{d}: no rollouts in {INDEX_FILE}")
    return out


# ============================================================================ synthetic data
def synthetic_rollouts(n: int, fail_fraction: float = 0.5, layout: FeatureLayout | None = None, rate_hz: float = 30.0,
                       duration_s: tuple[float, float] = (4.0, 8.0), seed: int = 0) -> list[Rollout]:
    """Feature sequences shaped like the fast node's, for building and testing the pipeline.

    Successes: a stationary latent around a per-episode task embedding and smooth chunks that
    converge. Failures: the same until a random onset, then the latent drifts off and the chunks
    grow jittery and inconsistent from step to step (what SAFE observes in real VLA features).
    These are NOT real rollouts: numbers from them say the code works, not that a policy's
    failures are detectable.
    """
    layout = layout or FeatureLayout(32, 8, 4)
    rng = np.random.default_rng(seed)
    out = []
    task = rng.normal(0, 1, layout.latent_dim)
    drift_dir = rng.normal(0, 1, layout.latent_dim)
    drift_dir /= np.linalg.norm(drift_dir)
    for _ in range(n):
        fail = rng.random() < fail_fraction
        T = int(rng.uniform(*duration_s) * rate_hz)
        times = np.arange(T) / rate_hz + rng.normal(0, 0.002, T).clip(-0.004, 0.004)
        times = np.maximum.accumulate(np.clip(times, 0, None))
        onset = rng.uniform(0.2, 0.6) * times[-1] if fail else math.inf
        goal = rng.normal(0, 0.3, layout.action_dim)
        feats = np.zeros((T, layout.size), np.float32)
        state = np.zeros(layout.action_dim)
        for t in range(T):
            after = max(0.0, times[t] - onset)
            latent = task + rng.normal(0, 0.5, layout.latent_dim) + 1.5 * min(after, 1.5) * drift_dir
            jitter = 0.02 + 0.15 * min(after, 1.0)
            target = goal + (rng.normal(0, 0.4, layout.action_dim) if after > 0 else 0.0)
            steps = np.linspace(0, 1, layout.horizon)[:, None]
            chunk = state + steps * (target - state) * 0.3 + rng.normal(0, jitter, (layout.horizon, layout.action_dim))
            state = state + 0.05 * (target - state)
            age = rng.uniform(0.05, 0.45)
            feats[t] = np.concatenate([latent, chunk.reshape(-1), [age, rng.uniform(1, 3), 0.0]])
        out.append(Rollout(times, feats, int(fail), layout.label, "synthetic_fail" if fail else "synthetic_success",
                           None if not fail else float(onset), {"synthetic": True}))
    return out


# ============================================================================ train / calibrate / evaluate
def _layout_of(rollouts: Sequence[Rollout]) -> FeatureLayout:
    labels = {r.layout for r in rollouts}
    if len(labels) != 1:
        raise ValueError(f"rollouts mix feature layouts: {sorted(labels)}")
    return FeatureLayout.parse(labels.pop(), rollouts[0].features.shape[1])


def step_labels(r: Rollout) -> np.ndarray:
    """Per-step training targets: a failed episode counts as failing from its induced fault on
    (nominal before it) where the fault time is known, and throughout otherwise."""
    t = np.asarray(r.times, dtype=np.float64)
    if r.label and r.fault_t is not None:
        return (t >= r.fault_t).astype(np.float64)
    return np.full(len(t), float(r.label))


def train_detector(rollouts: Sequence[Rollout], hidden: int = 32, epochs: int = 300, accumulate: str = "max_ema",
                   seed: int = 0, labels_from_fault: bool = True) -> LearnedDetector:
    """Train the MLP head on successes and failures; the result is not calibrated yet.

    ``labels_from_fault``: train on :func:`step_labels` (a failure's steps before its induced fault
    are nominal), not on the whole-episode label, which taught the head to alarm on the nominal
    start of failed episodes (alarms before the fault).
    """
    layout = _layout_of(rollouts)
    labels = [r.label for r in rollouts]
    if len(set(labels)) < 2:
        raise ValueError(f"training needs both successful and failed rollouts, got labels {sorted(set(labels))}")
    x = [episode_step_features(layout, r.features) for r in rollouts]
    steps = [step_labels(r) for r in rollouts] if labels_from_fault else None
    scorer = train_scorer(x, labels, hidden=hidden, epochs=epochs, accumulate=accumulate, seed=seed, step_labels=steps)
    return LearnedDetector(layout, scorer, None, {"trained_on": len(rollouts), "train_failures": int(sum(labels)),
                                                  "labels": "from the fault" if labels_from_fault else "episode"})


def calibrate(model: LearnedDetector, successful_rollouts: Sequence[Rollout], alpha: float, bin_s: float = 0.5,
              method: str = "functional", seed: int = 0) -> LearnedDetector:
    """Set δ(t) from SUCCESSFUL rollouts at level alpha (ValueError if a failure is passed)."""
    bad = [i for i, r in enumerate(successful_rollouts) if r.label != 0]
    if bad:
        raise ValueError(f"calibration takes successful rollouts only; rollouts {bad[:5]} are failures")
    curves = [(np.asarray(r.times), model.episode_scores(r.features)) for r in successful_rollouts]
    model.threshold = calibrate_threshold(curves, alpha, bin_s=bin_s, method=method, seed=seed)
    model.info = {**model.info, "calibrated_on": len(successful_rollouts)}
    return model


def evaluate(model: LearnedDetector, heldout: Sequence[Rollout]) -> dict:
    """ROC-AUC, mean detection time and false-alarm rate on held-out rollouts.

    * ``roc_auc``: threshold-free, episode score = max over the episode of ``s(t)``, failures
      positive; ``roc_auc_margin`` uses the alarm margin ``max_t s(t) − δ(t)`` instead.
    * ``mean_detection_time_s``: over detected failures, time of the first alarm from the episode
      start; ``mean_detection_delay_s`` from the induced fault's start where it is known.
    * ``alarms_before_fault``: failures with an induced fault whose first alarm came BEFORE the
      fault. The node latches at the first alarm, so on the robot such an episode was halted while
      nothing was wrong yet: a false alarm, whatever the episode's label. ``detection_rate_after_fault``
      counts only alarms at or after the fault (and any alarm where no fault time is known).
    * ``false_alarm_rate``: share of held-out successes with an alarm at any time.
    """
    th: ConformalThreshold | None = model.threshold
    if th is None:
        raise ValueError("evaluate needs a calibrated detector (run calibrate first)")
    maxima: list[float] = []
    margins: list[float] = []
    labels: list[int] = []
    det_t: list[float] = []
    det_delay: list[float] = []
    alarms_on_success = n_succ = n_fail = detected = early = detected_after = 0
    for r in heldout:
        s = model.episode_scores(r.features)
        t = np.asarray(r.times)
        idx = np.minimum((t // th.bin_s).astype(int), len(th.thresholds) - 1)
        margin = s - th.thresholds[idx]
        maxima.append(float(np.max(s)))
        margins.append(float(np.max(margin)) if np.isfinite(margin).any() else -math.inf)
        labels.append(r.label)
        hit = th.first_crossing(t, s)
        if r.label:
            n_fail += 1
            if hit is not None:
                detected += 1
                det_t.append(float(t[hit]))
                if r.fault_t is not None:
                    det_delay.append(float(t[hit] - r.fault_t))
                    if t[hit] < r.fault_t:
                        early += 1
                    else:
                        detected_after += 1
                else:
                    detected_after += 1
        else:
            n_succ += 1
            alarms_on_success += hit is not None
    finite = [m if math.isfinite(m) else -1e9 for m in margins]
    return {
        "roc_auc": roc_auc(maxima, labels),
        "roc_auc_margin": roc_auc(finite, labels),
        "mean_detection_time_s": float(np.mean(det_t)) if det_t else None,
        "mean_detection_delay_s": float(np.mean(det_delay)) if det_delay else None,
        "detection_rate": detected / n_fail if n_fail else None,
        "detection_rate_after_fault": detected_after / n_fail if n_fail else None,
        "alarms_before_fault": early,
        "false_alarm_rate": alarms_on_success / n_succ if n_succ else None,
        "alpha": th.alpha,
        "heldout_successes": n_succ,
        "heldout_failures": n_fail,
    }


def split_rollouts(rollouts: Sequence[Rollout], fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
                   seed: int = 0) -> tuple[list[Rollout], list[Rollout], list[Rollout]]:
    """Stratified (by label) train / calibration / held-out split."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for lab in (0, 1):
        idx = [i for i, r in enumerate(rollouts) if r.label == lab]
        rng.shuffle(idx)
        n = len(idx)
        a = int(round(fractions[0] * n))
        b = a + int(round(fractions[1] * n))
        for part, sl in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.extend(rollouts[i] for i in sl)
    return parts


def calibrate_detector(rollouts_dir: str | os.PathLike | Sequence[str | os.PathLike], alpha: float,
                       package: str | os.PathLike | None = None,
                       bin_s: float = 0.5, method: str = "functional", seed: int = 0, epochs: int = 300,
                       labels_from_fault: bool = True, progress: Progress | None = None) -> dict:
    """The ``calibrate-detector`` command: train, calibrate, evaluate, save. Returns the report.

    ``rollouts_dir``: one directory of recorded rollouts, or several (pooled, in the given order).
    ``progress``: a bar that counts the steps (each directory loaded, training, calibration,
    evaluation, saving).
    """
    dirs = [rollouts_dir] if isinstance(rollouts_dir, (str, os.PathLike)) else list(rollouts_dir)
    step = progress or (lambda _line=None: None)
    if progress is not None:
        progress.set_total(len(dirs) + 3 + (package is not None))
    rollouts = []
    for d in dirs:
        rollouts += load_rollouts(d)
        step(f"loaded {d}: {len(rollouts)} rollouts so far")
    train, cal, held = split_rollouts(rollouts, seed=seed)
    if progress is not None:
        progress.status(f"training on {len(train)} rollouts ({epochs} epochs)")
    model = train_detector(train, epochs=epochs, seed=seed, labels_from_fault=labels_from_fault)
    step(f"trained on {len(train)} rollouts")
    cal_ok = [r for r in cal if r.label == 0]
    if not cal_ok:
        raise ValueError("the calibration split holds no successful rollout: record more successes")
    calibrate(model, cal_ok, alpha, bin_s=bin_s, method=method, seed=seed)
    step(f"calibrated on {len(cal_ok)} successes")
    report = {"rollouts": len(rollouts), "train": len(train), "calibration_successes": len(cal_ok),
              "heldout": len(held), "method": method, "bin_s": bin_s,
              "labels": "from the fault" if labels_from_fault else "episode",
              "synthetic": any(r.meta.get("synthetic") for r in rollouts), **evaluate(model, held)}
    if not math.isfinite(float(np.max(model.threshold.thresholds))):
        report["warning"] = (f"too few calibration successes ({len(cal_ok)}) for alpha={alpha}: "
                             "threshold is +inf, the learned part never alarms")
    step(f"evaluated on {len(held)} held-out rollouts")
    model.info = {**model.info, "evaluation": {k: v for k, v in report.items() if not isinstance(v, dict)}}
    if package is not None:
        report["saved_to"] = str(model.save(package))
        step(f"saved to {report['saved_to']}")
    return report


# ============================================================================ recording on the graph
#: Induced failures: scenario → what is done to the running graph at the fault time.
SCENARIOS = ("nominal", "target_moved", "arm_blocked", "wrong_object")


def record_rollouts(config: str | os.PathLike, out_dir: str | os.PathLike, episodes: int = 40,
                    scenarios: Sequence[str] = SCENARIOS, episode_s: float = 8.0, fault_at_s: tuple[float,
                                                                                                    float] = (1.0, 3.0),
                    target: str = "red_cube", success_radius_m: float = 0.03,
                    wrong_instruction: str = "touch the blue cube",
                    seed: int = 0, log=None, progress=None) -> list[Rollout]:
    """Run episodes through the config's graph and record features + outcome.

    One graph (sim robot, slow path, fast path, bridge) runs for all episodes. Each episode:
    ``/sim/reset`` (robot home, cubes re-placed), the instruction, ``/vla/reset`` + ``/vla/resume``,
    a wait for the first latent computed after the instruction, then ``episode_s`` of features.
    Induced failures at a random time in ``fault_at_s``: ``target_moved`` (the target cube is
    teleported 25 cm away), ``arm_blocked`` (the arm's controller is switched off through
    controller_manager), ``wrong_object`` (the instruction names another object from the start).
    ``log``: where the nodes' output goes (a text stream; None: only ``out_dir/logs``);
    ``progress(line)`` is called once after each episode (a
    :class:`~vla_runtime.commands.progress.Progress` bar, or ``print``). Label: success when the fingertips (the sim
    Panda's TCP; the ``/ee_pose`` point for other robots) came within ``success_radius_m`` of the
    target (``/ee_pose`` vs ``/sim/objects``) and no fault was induced; every induced scenario is
    labelled a failure.
    """
    from controller_manager_msgs.srv import SwitchController
    from std_msgs.msg import Float32MultiArray, String

    from vla_runtime.core.config import load_config
    from vla_runtime.core.contract import (
        SERVICE_RESET,
        SERVICE_RESUME,
        SERVICE_SIM_RESET,
        SERVICE_SWITCH_CONTROLLER,
        TOPIC_INSTRUCTION,
        TOPIC_POLICY_FEATURES,
    )
    from vla_runtime.graph.harness import GraphHarness, PoseWatch, SimObjects, node_graph
    from vla_runtime.nodes.common import QOS_LATCHED, QOS_SENSOR

    path = Path(config).resolve()
    cfg = load_config(path)
    rng = np.random.default_rng(seed)

    def fingertips(position: np.ndarray, orientation) -> np.ndarray:
        """The point that touches: /ee_pose is the hand flange; the sim Panda's TCP is 9.7 cm out."""
        if cfg.sim is not None and cfg.sim.robot == "panda":
            from vla_runtime.sim.tasks import tcp_from_hand

            return tcp_from_hand(position, orientation)
        return position

    arm_controller = next(g.controller_name for g in cfg.robot.groups.values() if g.controller != "gripper")
    rollouts: list[Rollout] = []
    with GraphHarness(log=log, log_dir=Path(out_dir) / "logs", name="record_rollouts") as h:
        config_file = h.write_config(path)
        specs = node_graph(load_config(config_file), config_file,
                           nodes=[n for n in cfg.nodes if n != "failure_detector"])
        feats = h.probe.collect(Float32MultiArray, TOPIC_POLICY_FEATURES, QOS_SENSOR)

        def latent_newer_than(t: float) -> bool:
            """The newest features came from a latent whose observation was taken after ``t`` (monotonic)."""
            return bool(feats) and feats[-1][0] - FeatureLayout.tail(feats[-1][1].data)[0] > t

        pose = PoseWatch(h.probe, keep=1000)
        objects = SimObjects(h.probe)
        instr = h.probe.node.create_publisher(String, TOPIC_INSTRUCTION, QOS_LATCHED)
        h.start(specs)
        h.wait(lambda: len(feats) > 10, 120, "policy features from the fast path", interval=0.2)
        for ep in range(episodes):
            scenario = scenarios[ep % len(scenarios)]
            h.trigger(SERVICE_SIM_RESET, timeout=10)
            instr.publish(String(data=wrong_instruction if scenario == "wrong_object" else cfg.instruction))
            t_instructed = time.monotonic() + 0.03
            h.trigger(SERVICE_RESET, timeout=10)
            h.trigger(SERVICE_RESUME, timeout=10)
            h.wait(lambda t=t_instructed: latent_newer_than(t), 10.0, "a latent computed after the instruction")
            fault_t = float(rng.uniform(*fault_at_s)) if scenario in ("target_moved", "arm_blocked") else None
            t0 = time.monotonic()
            feats.clear()
            best = math.inf
            faulted = False
            while time.monotonic() - t0 < episode_s:
                now = time.monotonic() - t0
                if fault_t is not None and not faulted and now >= fault_t:
                    faulted = True
                    if scenario == "target_moved":
                        pos = objects.positions[target]
                        objects.move(target, [pos[0], pos[1] + 0.25, pos[2]])
                    else:
                        req = SwitchController.Request(deactivate_controllers=[arm_controller],
                                                       strictness=SwitchController.Request.BEST_EFFORT)
                        h.call(SwitchController, SERVICE_SWITCH_CONTROLLER, req, timeout=5)
                hand = pose.latest()
                obj = objects.positions.get(target)
                if hand is not None and obj is not None:
                    best = min(best, float(np.linalg.norm(fingertips(hand[1], hand[2]) - obj)))
                time.sleep(0.02)
            if scenario == "arm_blocked":
                req = SwitchController.Request(activate_controllers=[arm_controller],
                                               strictness=SwitchController.Request.BEST_EFFORT)
                h.call(SwitchController, SERVICE_SWITCH_CONTROLLER, req, timeout=5)
            got = [(t, m) for t, m in feats if t >= t0]
            if len(got) < 5:
                if progress is not None:  # one call per episode, so a bar counts episodes
                    progress(f"episode {ep + 1}/{episodes}: {scenario}, only {len(got)} feature messages: skipped")
                continue
            label_str = got[0][1].layout.dim[0].label
            times = np.array([t - t0 for t, _ in got])
            x = np.array([np.asarray(m.data, np.float32) for _, m in got])
            label = int(scenario != "nominal" or best > success_radius_m)
            rollouts.append(Rollout(times, x, label, label_str, scenario, fault_t,
                                    {"closest_m": None if not math.isfinite(best) else best, "episode": ep}))
            if progress is not None:
                progress(f"episode {ep + 1}/{episodes}: {scenario}, closest {best:.3f} m, "
                         f"{'failure' if label else 'success'}")
    save_rollouts(rollouts, out_dir)
    return rollouts
