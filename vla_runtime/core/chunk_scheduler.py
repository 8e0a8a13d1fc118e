"""ChunkScheduler: delay-aware merging, blending and interpolation of action chunks.

A policy returns a chunk of ``H`` actions. Action ``i`` belongs to time
``obs_time_s + i * dt_chunk`` (``dt_chunk = 1 / chunk_rate_hz``), where
``obs_time_s`` is the stamp of the observation the policy saw. The chunk only
arrives ``delay = now_s - obs_time_s`` later, so by then its first actions are
already in the past. The scheduler turns the stream of such chunks into one
continuous command signal that can be sampled at any rate.

Algorithm (ideas from real-time chunking (Black et al., 2025), LeRobot's async
inference chunk aggregation and openpi's ``ActionChunkBroker``; no code taken):

1. **Time alignment / delay skipping.** A submitted chunk becomes a piece of
   trajectory on the absolute time axis, ``t_i = obs_time_s + i * dt``. Points
   earlier than the one just before ``now_s`` are dropped (kept: one point at or
   before ``now_s`` so interpolation at ``now_s`` is defined). A chunk arriving
   exactly two steps late is therefore executed from its third action. A chunk
   entirely in the past, or older than the one executing, is rejected.
2. **Cross-fade.** The trajectory that was executing ("old": the previous chunk,
   an unfinished blend, or the held command) and the new chunk are mixed over
   ``[now_s, now_s + blend_s]``: ``u(t) = (1 - w) old(t) + w new(t)`` with ``w``
   rising from 0 to 1 (linear, smoothstep or cosine). At ``now_s`` the output
   equals what was being commanded, so there is no step at the switch. If the
   old trajectory ends before the window does, the window is shortened to end
   with it (old is never extrapolated). Blends nest when chunks arrive faster
   than ``blend_s``; finished blends are pruned.
3. **Interpolation.** Each chunk is sampled piecewise-linearly between its
   points, or with a C¹ cubic Hermite (Catmull-Rom tangents) when
   ``interpolation="cubic"``, at whatever rate the caller samples.
4. **No extrapolation → HOLD.** Past the last point of the executing chunk
   `sample` returns ``None`` and `status` becomes ``HOLD``; the last command
   becomes `hold_value`, and the next chunk blends in from it. `hold` and
   `reset` enter HOLD explicitly (``reset`` with the measured robot state).
5. **Delay estimate.** Every submit measures ``now_s - obs_time_s``;
   `delay_estimate_s` is an EMA of it and `delay_percentile_s` a percentile over
   the last 64 measurements. RTC-style policies get, from `prefix`, the part of
   the executing trajectory that will still be executed while the next
   inference runs (``mask``), to condition the new chunk on it.

The class is pure: every time is an argument (seconds, one monotonic clock);
it never reads a clock. Not thread-safe: use it from the control loop thread.

`window` and `prefix` run in the 30 Hz loop. Where the C extension ``_fastpath`` is built (the
package's install builds it; `KERNEL` says whether it is), they sample the trajectory there in one
call instead of ~60 small numpy operations; the numpy code here is the reference it is tested
against, and the fallback.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

try:  # the same sampling in C (core/_fastpath.c); the numpy code below is the reference
    from vla_runtime.core import _fastpath as _kernel
except ImportError:  # not built (no compiler where the package was installed): numpy only
    _kernel = None

__all__ = [
    "Action",
    "ActionChunk",
    "ChunkSchedulerConfig",
    "ChunkScheduler",
    "SchedulerStatus",
]

#: True when the C sampling kernel is importable (see the module docstring).
KERNEL = _kernel is not None
_SHAPES = {"linear": 0, "smoothstep": 1, "cosine": 2}

#: One command, shape (A,).
Action = np.ndarray
#: A chunk of H actions, shape (H, A).
ActionChunk = np.ndarray

BlendShape = Literal["linear", "smoothstep", "cosine"]
Interpolation = Literal["linear", "cubic"]


class SchedulerStatus(enum.Enum):
    """What `ChunkScheduler.sample` produced last."""

    RUNNING = "running"
    HOLD = "hold"


@dataclass(frozen=True)
class ChunkSchedulerConfig:
    """Scheduler parameters.

    Attributes:
        chunk_rate_hz: Spacing of the actions inside a chunk (1 / dt_chunk), > 0.
        blend_s: Cross-fade window in seconds, ≥ 0 (0: hard switch, still time-aligned).
        blend_shape: ``linear``, ``smoothstep`` or ``cosine`` weights.
        interpolation: ``linear`` or ``cubic`` between chunk points.
        delay_ema_alpha: EMA weight of the newest delay measurement, in (0, 1].
        max_delay_s: Chunks whose delay exceeds this are rejected (None: no limit).
    """

    chunk_rate_hz: float = 30.0
    blend_s: float = 0.1
    blend_shape: BlendShape = "smoothstep"
    interpolation: Interpolation = "linear"
    delay_ema_alpha: float = 0.2
    max_delay_s: float | None = None

    def __post_init__(self) -> None:
        if not self.chunk_rate_hz > 0:
            raise ValueError(f"chunk_rate_hz must be > 0, got {self.chunk_rate_hz}")
        if not self.blend_s >= 0:
            raise ValueError(f"blend_s must be ≥ 0, got {self.blend_s}")
        if self.blend_shape not in ("linear", "smoothstep", "cosine"):
            raise ValueError(f"blend_shape must be linear, smoothstep or cosine, got {self.blend_shape!r}")
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be linear or cubic, got {self.interpolation!r}")
        if not 0 < self.delay_ema_alpha <= 1:
            raise ValueError(f"delay_ema_alpha must be in (0, 1], got {self.delay_ema_alpha}")
        if self.max_delay_s is not None and not self.max_delay_s > 0:
            raise ValueError(f"max_delay_s must be > 0, got {self.max_delay_s}")


# ------------------------------------------------------------- trajectories
class _Chunk:
    """A chunk on the absolute time axis: points at t0 + i*dt."""

    __slots__ = ("t0", "dt", "points", "end", "cubic", "obs_time")

    def __init__(self, points: np.ndarray, t0: float, dt: float, cubic: bool, obs_time: float) -> None:
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self.t0 = t0
        self.dt = dt
        self.end = t0 + (len(points) - 1) * dt
        self.cubic = cubic
        self.obs_time = obs_time

    def defined(self, t: float) -> bool:
        return self.t0 - 1e-9 <= t <= self.end + 1e-9

    def levels(self) -> list[tuple]:
        """This trajectory as the C kernel's spec levels (see _fastpath.c)."""
        return [(0, self.points, self.t0, self.dt, self.cubic)]

    def sample(self, t: float) -> np.ndarray | None:
        p = self.points
        n = len(p)
        if not self.defined(t):
            return None
        if n == 1:
            return p[0].copy()
        x = (t - self.t0) / self.dt
        i = min(max(int(math.floor(x)), 0), n - 2)
        s = min(max(x - i, 0.0), 1.0)
        if not self.cubic:
            return p[i] + s * (p[i + 1] - p[i])
        # Cubic Hermite with Catmull-Rom tangents (one-sided at the ends).
        p0, p1 = p[i], p[i + 1]
        m0 = (p1 - p[i - 1]) * 0.5 if i > 0 else (p1 - p0)
        m1 = (p[i + 2] - p0) * 0.5 if i + 2 < n else (p1 - p0)
        s2, s3 = s * s, s * s * s
        return (
            (2 * s3 - 3 * s2 + 1) * p0
            + (s3 - 2 * s2 + s) * m0
            + (-2 * s3 + 3 * s2) * p1
            + (s3 - s2) * m1
        )


    def sample_many(self, ts: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`sample` at ascending times: (m, A), NaN rows where the chunk is not defined.

        The fast path (every time inside the chunk, the case of every plan window) uses only plain
        ufuncs: this runs in the 30 Hz loop, where ``np.clip``'s Python wrapper alone cost more than
        the arithmetic.
        """
        p = self.points
        n = len(p)
        m = len(ts)
        if m == 0:
            return np.empty((0, p.shape[1]))
        lo, hi = self.t0 - 1e-9, self.end + 1e-9
        if ts[0] >= lo and ts[-1] <= hi:
            if n == 1:
                return np.repeat(p[:1], m, axis=0)
            return self._interp(ts, p, n)
        out = np.full((m, p.shape[1]), np.nan)
        ok = (ts >= lo) & (ts <= hi)
        if ok.any():
            out[ok] = p[0] if n == 1 else self._interp(ts[ok], p, n)
        return out

    def _interp(self, ts: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
        x = (ts - self.t0) / self.dt
        i = np.floor(x).astype(np.intp)
        np.minimum(np.maximum(i, 0, out=i), n - 2, out=i)
        s = np.minimum(np.maximum(x - i, 0.0), 1.0)[:, None]
        p0, p1 = p[i], p[i + 1]
        if not self.cubic:
            return p0 + s * (p1 - p0)
        m0 = np.where((i > 0)[:, None], (p1 - p[np.maximum(i - 1, 0)]) * 0.5, p1 - p0)
        m1 = np.where((i + 2 < n)[:, None], (p[np.minimum(i + 2, n - 1)] - p0) * 0.5, p1 - p0)
        s2, s3 = s * s, s * s * s
        return (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1


class _Const:
    """The held command: defined forever."""

    __slots__ = ("value",)
    end = math.inf

    def __init__(self, value: np.ndarray) -> None:
        self.value = np.ascontiguousarray(value, dtype=np.float64)

    def defined(self, t: float) -> bool:
        return True

    def levels(self) -> list[tuple]:
        return [(1, self.value)]

    def sample(self, t: float) -> np.ndarray:
        return self.value.copy()

    def sample_many(self, ts: np.ndarray) -> np.ndarray:
        return np.tile(self.value, (len(ts), 1)).astype(float)


class _Blend:
    """Cross-fade from ``old`` to ``new`` over [t_start, t_end]."""

    __slots__ = ("old", "new", "t_start", "t_end", "shape")

    def __init__(self, old, new: _Chunk, t_start: float, t_end: float, shape: str) -> None:
        self.old = old
        self.new = new
        self.t_start = t_start
        self.t_end = t_end
        self.shape = shape

    @property
    def end(self) -> float:
        return self.new.end

    def defined(self, t: float) -> bool:
        return self.new.defined(t)

    def levels(self) -> list[tuple]:
        n = self.new
        return [(2, n.points, n.t0, n.dt, n.cubic, self.t_start, self.t_end, _SHAPES[self.shape]),
                *self.old.levels()]

    def weight(self, t: float) -> float:
        if t >= self.t_end:
            return 1.0
        x = (t - self.t_start) / (self.t_end - self.t_start)
        x = min(max(x, 0.0), 1.0)
        if self.shape == "linear":
            return x
        if self.shape == "smoothstep":
            return x * x * (3.0 - 2.0 * x)
        return 0.5 - 0.5 * math.cos(math.pi * x)

    def sample(self, t: float) -> np.ndarray | None:
        new = self.new.sample(t)
        if new is None:
            return None
        w = self.weight(t)
        if w >= 1.0:
            return new
        old = self.old.sample(t)
        if old is None:  # cannot happen: t_end ≤ old.end; guard anyway
            return new
        return old + w * (new - old)

    def weights(self, ts: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`weight` (1.0 from ``t_end`` on: the ramp is clamped there)."""
        x = np.minimum(np.maximum((ts - self.t_start) / (self.t_end - self.t_start), 0.0), 1.0)
        if self.shape == "linear":
            return x
        if self.shape == "smoothstep":
            return x * x * (3.0 - 2.0 * x)
        return 0.5 - 0.5 * np.cos(np.pi * x)

    def sample_many(self, ts: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`sample` at ascending times: NaN rows where the new chunk is not defined.

        The old trajectory is only sampled before ``t_end`` (after it the weight is 1).
        """
        new = self.new.sample_many(ts)
        k = int(np.searchsorted(ts, self.t_end, side="left"))
        if k == 0:
            return new
        head = ts[:k]
        w = self.weights(head)[:, None]
        old = self.old.sample_many(head)
        blended = old + w * (new[:k] - old)
        bad = np.isnan(old)
        if bad.any():  # cannot happen (t_end ≤ old.end); keep the new chunk there
            blended = np.where(bad, new[:k], blended)
        new[:k] = blended
        return new


def _prune(traj, t: float):
    """Drop blends that are finished at time t (recursively)."""
    if isinstance(traj, _Blend):
        if t >= traj.t_end:
            return traj.new
        traj.old = _prune(traj.old, t)
    return traj


# ---------------------------------------------------------------- scheduler
class ChunkScheduler:
    """Turns delayed action chunks into a continuous, sampleable command.

    Args:
        config: Scheduler parameters.
        action_dim: Expected A (None: taken from the first chunk / reset state).
        kernel: Sample `window` and `prefix` with the C kernel: None (default) where it is built,
            False never (the numpy reference), True always (RuntimeError if it is not built).

    See the module docstring for the algorithm.
    """

    DELAY_WINDOW = 64

    def __init__(self, config: ChunkSchedulerConfig | None = None, action_dim: int | None = None,
                 kernel: bool | None = None) -> None:
        self.config = config if config is not None else ChunkSchedulerConfig()
        if action_dim is not None and action_dim < 1:
            raise ValueError(f"action_dim must be ≥ 1, got {action_dim}")
        if kernel and _kernel is None:
            raise RuntimeError("the C trajectory kernel (vla_runtime/core/_fastpath.c) is not built: "
                               "reinstall the package with a C compiler present (pip install -e .)")
        self.kernel = KERNEL if kernel is None else bool(kernel)
        self._spec: tuple | None = None
        self.dt_chunk = 1.0 / self.config.chunk_rate_hz
        self.action_dim = action_dim
        self._traj = None  # _Chunk | _Blend | None (a property: setting it invalidates _spec)
        self._hold: np.ndarray | None = None
        self._last_cmd: np.ndarray | None = None
        self._status = SchedulerStatus.HOLD
        self._latest_obs_time = -math.inf
        self._delay_ema: float | None = None
        self._delays = np.zeros(self.DELAY_WINDOW)
        self._n_delays = 0
        self.stats = {"submitted": 0, "accepted": 0, "rejected_stale": 0, "rejected_delay": 0, "skipped_actions": 0}

    # ----------------------------------------------------------- properties
    @property
    def _traj(self):
        return self._traj_obj

    @_traj.setter
    def _traj(self, traj) -> None:
        self._traj_obj = traj
        self._spec = None  # the kernel's view of it is rebuilt on next use

    def _kernel_spec(self) -> tuple:
        spec = self._spec
        if spec is None:
            spec = self._spec = tuple(self._traj_obj.levels())
        return spec

    @property
    def status(self) -> SchedulerStatus:
        """RUNNING or HOLD, as of the last `sample` / `submit` / `hold` / `reset`."""
        return self._status

    @property
    def hold_value(self) -> Action | None:
        """The command to hold while in HOLD (None if nothing is known yet)."""
        return None if self._hold is None else self._hold.copy()

    @property
    def delay_estimate_s(self) -> float | None:
        """EMA of the measured inference delay (None before the first chunk)."""
        return self._delay_ema

    def delay_percentile_s(self, q: float = 90.0) -> float | None:
        """Percentile ``q`` of the last measured delays (None before the first chunk)."""
        n = min(self._n_delays, self.DELAY_WINDOW)
        if n == 0:
            return None
        return float(np.percentile(self._delays[:n], q))

    def active_until(self) -> float | None:
        """Time of the executing trajectory's last point (None while holding)."""
        return None if self._traj is None else self._traj.end

    # ---------------------------------------------------------------- input
    def _check_action_dim(self, a: int, what: str) -> None:
        if self.action_dim is None:
            self.action_dim = a
        elif a != self.action_dim:
            raise ValueError(f"{what} must have action dim {self.action_dim}, got {a}")

    def submit(self, chunk: ActionChunk, obs_time_s: float, now_s: float,
               start_s: float | None = None) -> int:
        """Merge a new chunk whose first action belongs to ``obs_time_s``.

        Args:
            chunk: (H, A) actions spaced ``1 / chunk_rate_hz``.
            obs_time_s: Time of the observation the chunk was computed from.
            now_s: Current time (same clock).
            start_s: Time the chunk's first action belongs to, when that is not ``obs_time_s``:
                a robot that stood still while the chunk was computed (stop-and-go) has not
                moved past any of its actions, so it starts from the first at ``now_s``. Must
                lie in ``[obs_time_s, now_s]``. The delay estimate and the staleness checks
                still use ``obs_time_s``.

        Returns:
            Number of leading actions skipped because they were already in the
            past, or -1 if the chunk was rejected (entirely in the past, older
            than the executing chunk, or later than ``max_delay_s``).

        Raises:
            ValueError: On a bad shape, non-finite values, an observation
                time after ``now_s``, or a ``start_s`` outside ``[obs_time_s, now_s]``.
        """
        arr = np.array(chunk, dtype=np.float64, copy=True)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"chunk must have shape (H ≥ 1, A ≥ 1), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("chunk contains non-finite values")
        if obs_time_s > now_s + 1e-9:
            raise ValueError(f"obs_time_s must be ≤ now_s ({now_s}), got {obs_time_s}")
        if start_s is not None and not obs_time_s - 1e-9 <= start_s <= now_s + 1e-9:
            raise ValueError(f"start_s must lie in [obs_time_s, now_s] = [{obs_time_s}, {now_s}], got {start_s}")
        self._check_action_dim(arr.shape[1], "chunk")
        self.stats["submitted"] += 1
        obs_time_s, now_s = float(obs_time_s), float(now_s)
        start = obs_time_s if start_s is None else float(start_s)
        delay = now_s - obs_time_s
        self._record_delay(delay)
        cfg = self.config
        if cfg.max_delay_s is not None and delay > cfg.max_delay_s:
            self.stats["rejected_delay"] += 1
            return -1
        if obs_time_s <= self._latest_obs_time:
            self.stats["rejected_stale"] += 1
            return -1
        dt = self.dt_chunk
        h = arr.shape[0]
        last_t = start + (h - 1) * dt
        if last_t < now_s - 1e-9:
            self.stats["rejected_stale"] += 1
            return -1
        # Keep the last point at or before now_s so sampling at now_s interpolates.
        skip = int(math.floor((now_s - start) / dt + 1e-9))
        skip = min(max(skip, 0), h - 1)
        new = _Chunk(arr[skip:], start + skip * dt, dt, cfg.interpolation == "cubic", obs_time_s)

        old = None
        if self._traj is not None:
            self._traj = _prune(self._traj, now_s)
            if self._traj.defined(now_s):
                old = self._traj
        if old is None:
            base = self._last_cmd if self._last_cmd is not None else self._hold
            if base is not None:
                old = _Const(base.copy())
        if old is not None and cfg.blend_s > 0:
            t_end = min(now_s + cfg.blend_s, old.end, new.end)
            self._traj = _Blend(old, new, now_s, t_end, cfg.blend_shape) if t_end > now_s else new
        else:
            self._traj = new
        self._latest_obs_time = obs_time_s
        self._status = SchedulerStatus.RUNNING
        self.stats["accepted"] += 1
        self.stats["skipped_actions"] += skip
        return skip

    def _record_delay(self, delay: float) -> None:
        a = self.config.delay_ema_alpha
        self._delay_ema = delay if self._delay_ema is None else (1 - a) * self._delay_ema + a * delay
        self._delays[self._n_delays % self.DELAY_WINDOW] = delay
        self._n_delays += 1

    # --------------------------------------------------------------- output
    def _enter_hold(self) -> None:
        if self._last_cmd is not None:
            self._hold = self._last_cmd.copy()
        self._traj = None
        self._status = SchedulerStatus.HOLD

    def sample(self, now_s: float) -> Action | None:
        """The command at ``now_s``, or None in HOLD (the chunk ran out).

        Sampling also advances the internal state (finished blends are pruned,
        running out enters HOLD); call it with non-decreasing times.
        """
        traj = self._traj
        if traj is None:
            self._status = SchedulerStatus.HOLD
            return None
        if now_s > traj.end + 1e-9:
            # Ran out: hold the trajectory's final point, never extrapolate.
            end_val = traj.sample(traj.end)
            if end_val is not None:
                self._last_cmd = end_val
            self._enter_hold()
            return None
        self._traj = _prune(traj, now_s)
        value = self._traj.sample(now_s)
        if value is None:  # before the first point: cannot happen after submit, be safe
            return None if self._last_cmd is None else self._last_cmd.copy()
        self._last_cmd = value
        self._status = SchedulerStatus.RUNNING
        return value.copy()

    def peek(self, t: float) -> Action | None:
        """The planned command at time ``t`` without changing any state."""
        traj = self._traj
        if traj is None or not traj.defined(t):
            return None
        return traj.sample(t)

    def window(self, now_s: float, n: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` planned samples ``now_s + k*dt`` (k = 0..n-1).

        Stops at the end of the executing trajectory (no extrapolation), so
        fewer than ``n`` rows may come back; none in HOLD. State is not changed.

        Returns:
            (times (m,), values (m, A)) with m ≤ n.
        """
        if n < 0:
            raise ValueError(f"n must be ≥ 0, got {n}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        a = self.action_dim or 0
        traj = self._traj
        if traj is None or n == 0:
            return np.zeros(0), np.zeros((0, a))
        if self.kernel:
            times, values = np.empty(n), np.empty((n, a))
            m = _kernel.window(self._kernel_spec(), float(now_s), float(dt), n, times, values)
            return times[:m], values[:m]
        times = now_s + dt * np.arange(n)
        times = times[times <= traj.end + 1e-9]
        values = traj.sample_many(times)
        bad = np.isnan(values).any(axis=1)
        if bad.any():  # stop at the first undefined sample (never extrapolate)
            k = int(np.argmax(bad))
            times, values = times[:k], values[:k]
        return times, values

    def prefix(self, now_s: float, delay_s: float | None, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The executing plan on the grid of an inference starting now (RTC prefix).

        A chunk computed from an observation at ``now_s`` has its action ``i`` at
        ``now_s + i*dt_chunk``. Those with ``i*dt_chunk < delay_s`` will already
        have been executed from the current plan when it arrives.

        Args:
            now_s: Observation time of the upcoming inference.
            delay_s: Expected inference delay (None: `delay_estimate_s`, or 0).
            horizon: H of the upcoming chunk.

        Returns:
            (prefix (H, A), mask (H,) bool). ``prefix[i]`` is the planned command
            at ``now_s + i*dt_chunk`` (the hold value past the plan's end, zeros
            if nothing is known); ``mask[i]`` is True for the actions that will
            be executed before the new chunk can take over.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be ≥ 1, got {horizon}")
        if delay_s is None:
            delay_s = self._delay_ema or 0.0
        if delay_s < 0:
            raise ValueError(f"delay_s must be ≥ 0, got {delay_s}")
        a = self.action_dim or 0
        traj = self._traj
        fallback = self._last_cmd if self._last_cmd is not None else self._hold
        if traj is not None and self.kernel:
            out, maskf = np.empty((horizon, a)), np.empty(horizon)
            _kernel.prefix(self._kernel_spec(), float(now_s), self.dt_chunk, horizon, float(delay_s),
                           fallback, out, maskf)
            return out, maskf != 0.0
        out = np.zeros((horizon, a))
        mask = np.zeros(horizon, dtype=bool)
        if traj is None and fallback is None:
            return out, mask
        ts = now_s + self.dt_chunk * np.arange(horizon)
        mask[:] = np.arange(horizon) * self.dt_chunk < delay_s - 1e-9
        if traj is not None:
            vals = traj.sample_many(ts)
            missing = np.isnan(vals).any(axis=1)
            after = missing & (ts > traj.end)
            if after.any():  # past the plan's end: its final point, never extrapolated
                end_val = traj.sample(traj.end)
                if end_val is not None:
                    vals[after] = end_val
                    missing &= ~after
            out[~missing] = vals[~missing]
        else:
            missing = np.ones(horizon, dtype=bool)
        if not missing.any():
            return out, mask
        last = fallback
        for i in range(horizon):  # rows still unknown take the row before (the fallback at first)
            if missing[i]:
                if last is not None:
                    out[i] = last
            else:
                last = out[i]
        return out, mask

    # -------------------------------------------------------------- control
    def replace(self, points: ActionChunk, t0_s: float, dt_s: float) -> None:
        """Execute ``points`` (spaced ``dt_s`` from ``t0_s``, linear) instead of the plan, no cross-fade.

        For a plan the caller derived from the executing one, so that it already starts where that
        one is (a stopping profile, core/interruption). Chunks merge onto it as onto any plan (the
        cross-fade starts from it); its end is the plan's end (then HOLD, as always).

        Raises:
            ValueError: On a bad shape, non-finite values or a spacing ≤ 0.
        """
        arr = np.array(points, dtype=np.float64, copy=True)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"points must have shape (n ≥ 1, A ≥ 1), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("points contain non-finite values")
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        self._check_action_dim(arr.shape[1], "points")
        self._traj = _Chunk(arr, float(t0_s), float(dt_s), False, self._latest_obs_time)
        self._status = SchedulerStatus.RUNNING

    def hold(self) -> None:
        """Stop executing chunks and hold the last command (HOLD)."""
        self._enter_hold()

    def reset(self, current_state: Action | None = None) -> None:
        """Forget all chunks and enter HOLD.

        Args:
            current_state: Measured command-space state (A,) to hold and to
                blend the next chunk from; None keeps the last command.

        Raises:
            ValueError: On a state of the wrong size or with non-finite values.
        """
        if current_state is not None:
            s = np.array(current_state, dtype=np.float64, copy=True).reshape(-1)
            if not np.isfinite(s).all():
                raise ValueError("current_state contains non-finite values")
            self._check_action_dim(s.shape[0], "current_state")
            self._hold = s
            self._last_cmd = s.copy()
        elif self._last_cmd is not None:
            self._hold = self._last_cmd.copy()
        self._traj = None
        self._latest_obs_time = -math.inf
        self._status = SchedulerStatus.HOLD
