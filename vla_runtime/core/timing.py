"""Fixed-size timing statistics for real-time loops.

`TimingStats` keeps preallocated numpy ring buffers for the per-tick quantities a
deadline loop cares about, so recording a tick costs a handful of integer stores
and never allocates, logs, or locks. Percentiles are computed only when
`summary()` is called, which is meant for a diagnostics timer or the end of a
benchmark, never for the hot loop.

All durations are stored as integer nanoseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TimingStats"]

_NO_VALUE = -1


class TimingStats:
    """Ring-buffered period, jitter, step, inference and overhead durations.

    The recording methods are called from one thread (the loop thread);
    `summary()` may be called from any thread and reads a consistent-enough
    snapshot (it copies the rings first; a tick recorded concurrently may or may
    not be included).

    Args:
        capacity: Number of most recent ticks kept for percentiles.

    Raises:
        ValueError: If ``capacity`` < 2.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be ≥ 2, got {capacity}")
        self.capacity = int(capacity)
        self._period = np.zeros(self.capacity, dtype=np.int64)
        self._jitter = np.zeros(self.capacity, dtype=np.int64)
        self._step = np.zeros(self.capacity, dtype=np.int64)
        self._infer = np.full(self.capacity, _NO_VALUE, dtype=np.int64)
        self._overhead = np.zeros(self.capacity, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget every recorded tick and counter."""
        self._period.fill(0)
        self._jitter.fill(0)
        self._step.fill(0)
        self._infer.fill(_NO_VALUE)
        self._overhead.fill(0)
        self._n = 0  # ticks recorded (total, not capped)
        self._n_period = 0  # periods recorded (ticks - 1, not capped)
        self._last_start_ns: int | None = None
        self._first_start_ns: int | None = None
        self._pending_infer_ns = _NO_VALUE
        self._pending_in_step = True
        self.misses = 0
        self.skipped = 0

    # ----------------------------------------------------------------- record
    def report_inference_ns(self, duration_ns: int, in_step: bool = True) -> None:
        """Report the inference of the current step (call inside ``step``).

        Args:
            duration_ns: The inference's duration.
            in_step: It ran inside this tick (its time is not overhead); False: it ran elsewhere (a
                worker thread) and finished by this tick, so the whole step is overhead.
        """
        self._pending_infer_ns = int(duration_ns)
        self._pending_in_step = bool(in_step)

    def report_inference_s(self, duration_s: float) -> None:
        """Same as `report_inference_ns`, in seconds."""
        self._pending_infer_ns = int(duration_s * 1e9)

    def record_tick(self, scheduled_ns: int, start_ns: int, end_ns: int) -> None:
        """Record one executed tick.

        Args:
            scheduled_ns: The tick's scheduled start (absolute clock time).
            start_ns: When the step really started.
            end_ns: When the step returned.
        """
        i = self._n % self.capacity
        if self._last_start_ns is not None:
            self._period[self._n_period % self.capacity] = start_ns - self._last_start_ns
            self._n_period += 1
        else:
            self._first_start_ns = start_ns
        self._last_start_ns = start_ns
        step = end_ns - start_ns
        self._jitter[i] = start_ns - scheduled_ns
        self._step[i] = step
        infer = self._pending_infer_ns
        self._infer[i] = infer
        self._overhead[i] = step - infer if infer >= 0 and self._pending_in_step else step
        self._pending_infer_ns = _NO_VALUE
        self._pending_in_step = True
        self._n += 1

    def record_miss(self, skipped_ticks: int = 0) -> None:
        """Count one deadline miss and the ticks skipped because of it."""
        self.misses += 1
        self.skipped += int(skipped_ticks)

    # ---------------------------------------------------------------- summary
    @property
    def ticks(self) -> int:
        """Number of ticks recorded since the last reset."""
        return self._n

    def summary(self) -> dict:
        """Summarise the recorded ticks.

        Returns:
            A dict with ``achieved_hz``, ``period_jitter_ms`` {p50, p99, max}
            (absolute start jitter: actual start − scheduled start),
            ``period_ms`` {p50, p99, max}, ``step_ms`` {p50, p99, max},
            ``deadline_miss_rate``, ``infer_ms`` {p50, p99} and
            ``overhead_ms`` {p50, p99} (step − reported inference; ``None``
            values when nothing was recorded), and the counts ``ticks``,
            ``misses``, ``skipped``, ``window`` (ticks used for percentiles).
        """
        n = min(self._n, self.capacity)
        n_p = min(self._n_period, self.capacity)
        jitter = self._jitter[:n].copy()
        step = self._step[:n].copy()
        infer = self._infer[:n].copy()
        overhead = self._overhead[:n].copy()
        period = self._period[:n_p].copy()

        def pct(a: np.ndarray, with_max: bool = True) -> dict[str, float | None]:
            keys = ("p50", "p99", "max") if with_max else ("p50", "p99")
            if a.size == 0:
                return {k: None for k in keys}
            ms = a.astype(np.float64) / 1e6
            out = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
            if with_max:
                out["max"] = float(ms.max())
            return out

        achieved = None
        if period.size:
            mean_period = float(period.mean())
            achieved = 1e9 / mean_period if mean_period > 0 else None
        infer_valid = infer[infer >= 0]
        return {
            "achieved_hz": achieved,
            "period_jitter_ms": pct(np.abs(jitter)),
            "period_ms": pct(period),
            "step_ms": pct(step),
            "deadline_miss_rate": (self.misses / self._n) if self._n else 0.0,
            "infer_ms": pct(infer_valid, with_max=False),
            "overhead_ms": pct(overhead, with_max=False),
            "ticks": self._n,
            "misses": self.misses,
            "skipped": self.skipped,
            "window": n,
        }
