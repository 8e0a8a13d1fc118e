"""Command continuity at chunk switches: naive switching vs. `ChunkScheduler`.

A synthetic smooth 7-joint trajectory (sums of sinusoids) stands in for the
robot. Every ``infer_every`` control ticks an "inference" observes the true
state at its observation time and predicts the next ``horizon`` points at the
chunk rate with a realistic error: a per-chunk bias, a per-chunk drift that
grows along the horizon, and small white noise. The chunk arrives 1–3 ticks
later (random, with sub-tick jitter).

* **naive**: at arrival, jump to the new chunk's first action and play it from
  there (no delay compensation, no blending), linearly interpolated.
* **scheduler**: `ChunkScheduler` (time-aligned, blended, interpolated).

Both are sampled at ``command_rate_hz``. The discontinuity metric is
``max |Δcommand|`` between consecutive command samples minus the true
trajectory's own ``max |Δq|`` on the same grid (the part of the largest step
that motion does not explain). `bench_chunks` returns a dict and prints nothing.
"""

from __future__ import annotations

import numpy as np

from vla_runtime.core.chunk_scheduler import ChunkScheduler, ChunkSchedulerConfig

__all__ = ["bench_chunks"]


def _trajectory(rng: np.random.Generator, joints: int):
    amp = rng.uniform(0.05, 0.3, size=(3, joints))
    freq = rng.uniform(0.1, 0.8, size=(3, joints))
    phase = rng.uniform(0, 2 * np.pi, size=(3, joints))
    offset = rng.uniform(-1.0, 1.0, size=joints)

    def q(t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)[..., None, None]
        return offset + (amp * np.sin(2 * np.pi * freq * t + phase)).sum(axis=-2)

    return q


def bench_chunks(
    duration_s: float = 20.0,
    joints: int = 7,
    chunk_rate_hz: float = 30.0,
    horizon: int = 16,
    infer_every: int = 5,
    command_rate_hz: float = 100.0,
    blend_s: float = 0.2,
    bias_std: float = 0.02,
    drift_std: float = 0.05,
    noise_std: float = 0.001,
    seed: int = 0,
) -> dict:
    """Compare command discontinuities of naive switching and the scheduler.

    Args:
        duration_s: Simulated time.
        joints: Action dimension.
        chunk_rate_hz: Chunk point spacing and control tick rate.
        horizon: Actions per chunk.
        infer_every: Control ticks between inference starts.
        command_rate_hz: Rate at which both strategies are sampled.
        blend_s: Scheduler cross-fade window.
        bias_std: Per-chunk, per-joint constant error (rad).
        drift_std: Per-chunk, per-joint error growing along the horizon (rad/s).
        noise_std: Per-point white noise (rad).
        seed: RNG seed.

    Returns:
        Dict with ``naive_max_step_excess``, ``scheduler_max_step_excess``,
        ``ratio`` (scheduler / naive), ``trajectory_max_step``, per-strategy
        ``*_rms_tracking_error`` and ``*_max_switch_step`` (largest step within
        one command period of a chunk arrival), and the parameters used.
    """
    rng = np.random.default_rng(seed)
    q = _trajectory(rng, joints)
    dt = 1.0 / chunk_rate_hz
    dtc = 1.0 / command_rate_hz

    # Inference events: (obs_time, arrival_time, chunk).
    events: list[tuple[float, float, np.ndarray]] = []
    k = 0
    n_ticks = int(duration_s * chunk_rate_hz)
    while k < n_ticks:
        t_obs = k * dt
        delay = rng.integers(1, 4) * dt + rng.uniform(0.0, 0.3) * dt
        ts = t_obs + dt * np.arange(horizon)
        bias = rng.normal(0, bias_std, joints)
        drift = rng.normal(0, drift_std, joints)
        chunk = q(ts) + bias + drift * (ts - t_obs)[:, None] + rng.normal(0, noise_std, (horizon, joints))
        events.append((t_obs, t_obs + delay, chunk))
        k += infer_every
    events.sort(key=lambda e: e[1])

    times = np.arange(0.0, duration_s, dtc)
    truth = q(times)
    naive = np.empty_like(truth)
    sched_out = np.empty_like(truth)

    sched = ChunkScheduler(ChunkSchedulerConfig(chunk_rate_hz=chunk_rate_hz, blend_s=blend_s), action_dim=joints)
    sched.reset(q(0.0))
    cur_chunk: np.ndarray | None = None
    cur_start = 0.0
    hold = q(0.0)
    ei = 0
    switch_idx: list[int] = []
    for i, t in enumerate(times):
        while ei < len(events) and events[ei][1] <= t:
            t_obs, t_arr, chunk = events[ei]
            cur_chunk, cur_start = chunk, t_arr  # naive: chunk[0] plays at arrival
            sched.submit(chunk, t_obs, t_arr)
            switch_idx.append(i)
            ei += 1
        # naive
        if cur_chunk is None:
            naive[i] = hold
        else:
            x = (t - cur_start) / dt
            j = int(np.floor(x))
            if j >= horizon - 1:
                naive[i] = cur_chunk[-1]
            else:
                s = x - j
                naive[i] = cur_chunk[j] + s * (cur_chunk[j + 1] - cur_chunk[j])
        # scheduler
        v = sched.sample(float(t))
        sched_out[i] = v if v is not None else sched.hold_value

    warm = int(1.0 / dtc)  # ignore the first second (start from rest)

    def max_step(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x[warm:], axis=0)).max())

    def max_switch_step(x: np.ndarray) -> float:
        steps = np.abs(np.diff(x, axis=0)).max(axis=1)
        idx = [i for i in switch_idx if warm < i < len(steps)]
        return float(max(steps[i - 1] for i in idx)) if idx else 0.0

    traj_step = max_step(truth)
    naive_ex = max_step(naive) - traj_step
    sched_ex = max_step(sched_out) - traj_step
    rms = lambda x: float(np.sqrt(np.mean((x[warm:] - truth[warm:]) ** 2)))  # noqa: E731
    return {
        "naive_max_step_excess": round(naive_ex, 5),
        "scheduler_max_step_excess": round(sched_ex, 5),
        "ratio": round(sched_ex / naive_ex, 4) if naive_ex > 0 else None,
        "trajectory_max_step": round(traj_step, 5),
        "naive_max_switch_step": round(max_switch_step(naive), 5),
        "scheduler_max_switch_step": round(max_switch_step(sched_out), 5),
        "naive_rms_tracking_error": round(rms(naive), 5),
        "scheduler_rms_tracking_error": round(rms(sched_out), 5),
        "scheduler_delay_estimate_s": sched.delay_estimate_s,
        "chunks": len(events),
        "params": {
            "duration_s": duration_s,
            "joints": joints,
            "chunk_rate_hz": chunk_rate_hz,
            "horizon": horizon,
            "infer_every": infer_every,
            "command_rate_hz": command_rate_hz,
            "blend_s": blend_s,
            "bias_std": bias_std,
            "drift_std": drift_std,
            "noise_std": noise_std,
            "seed": seed,
        },
    }
