"""A fixed-rate loop with absolute-time scheduling and overrun handling.

Scheduling
    Tick ``k`` is scheduled at ``start + k * period`` (integer nanoseconds on a
    monotonic clock). The loop never does ``sleep(period)``, so the time a step
    takes, or a late wake-up, never accumulates into drift.

Sleeping
    The default sleeper waits on the loop's stop event (so `stop()` interrupts
    it at once) until ``spin_ns`` before the deadline, then spins on the clock
    for the remainder. Python's timed waits end in ``clock_nanosleep``/futex
    waits whose wake-up latency on a loaded machine is tens to hundreds of µs;
    the short spin absorbs that without burning a core (at 30 Hz a 300 µs spin
    is ~1 % of one core).

Overruns
    A step's deadline is the next tick's scheduled start. A step that ends after
    it counts a miss and calls ``on_overrun(tick_index, late_ns)``. If the loop is
    less than ``max_lag_ns`` (default: one period) behind its schedule, the next
    tick runs immediately (late), and so do the ones after it until the loop is
    back on schedule: a larger ``max_lag_ns`` lets a loop that must keep up with
    the wall clock (a simulator) catch up after a hiccup. If it is further behind,
    the loop skips ahead to the next deadline still in the future instead of
    bursting through the missed ticks; the skipped ticks are counted and the tick
    indices passed to ``step`` jump accordingly.

    After every miss the thread really sleeps ``overrun_yield_ns`` (default: 2 % of the period, at
    least 200 µs; no spinning) before it goes on. A loop that is permanently late would otherwise
    never block; at SCHED_FIFO (``process.rt_priority``) that starves every thread of equal or
    lower priority on its CPU, its own node's executor (diagnostics, lifecycle services) first.

Free running
    ``paced=False`` runs the ticks back to back with no schedule (a simulator in
    simulated time): each step gets its own start as ``scheduled_time_s``, nothing
    is ever late, and between ticks the thread only yields (``time.sleep(0)``).

Determinism
    ``clock_ns`` and ``sleep_until_ns`` are injectable, so tests drive the loop
    with a fake clock via `DeadlineLoop.run` in the calling thread.

Nothing in the loop logs or allocates per tick beyond what ``step`` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vla_runtime.core.timing import TimingStats

__all__ = ["DeadlineLoop", "StepFn", "OverrunFn"]

#: ``step(tick_index, scheduled_time_s)``; scheduled time is on ``clock_ns``'s clock, in seconds.
StepFn = Callable[[int, float], None]
#: ``on_overrun(tick_index, late_ns)``, called in the loop thread after a missed deadline.
OverrunFn = Callable[[int, int], None]

#: Default spin margin before each deadline (see module docstring; measured on a
#: busy 2-core box: 300 µs keeps p99 start jitter well under 1 ms).
DEFAULT_SPIN_NS = 300_000


class DeadlineLoop:
    """Run ``step(tick_index, scheduled_time_s)`` at a fixed rate.

    Args:
        step: The per-tick callable. Exceptions propagate out of `run` (and end
            the thread started by `start`; see `error`).
        rate_hz: Tick rate, > 0.
        on_overrun: Optional hook called after a step misses its deadline.
        clock_ns: Monotonic clock in integer ns (default ``time.monotonic_ns``).
        sleep_until_ns: Blocks until the given absolute clock time; injected for
            tests. Default: event wait + spin (see module docstring).
        spin_ns: Spin margin of the default sleeper, ≥ 0.
        overrun_yield_ns: Sleep after a missed deadline (None: 2 % of the period, ≥ 200 µs), ≥ 0.
        max_lag_ns: How far behind its schedule the loop may be and still run the next ticks at once
            to catch up (None: one period); further behind, it skips ahead. ≥ 0.
        paced: False: no schedule, ticks back to back (see the module docstring); ``rate_hz`` is
            then only validated.
        thread_init: Called once in the thread started by `start`, before the first tick (to set
            that thread's scheduling, say). An exception there ends the thread like one in ``step``.
        stats: Where timings go; a new `TimingStats` if omitted.
        name: Thread name.

    Raises:
        ValueError: On a non-positive rate, or a negative spin margin, overrun yield or lag.
    """

    def __init__(
        self,
        step: StepFn,
        rate_hz: float,
        *,
        on_overrun: OverrunFn | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        sleep_until_ns: Callable[[int], None] | None = None,
        spin_ns: int = DEFAULT_SPIN_NS,
        overrun_yield_ns: int | None = None,
        max_lag_ns: int | None = None,
        paced: bool = True,
        stats: TimingStats | None = None,
        name: str = "deadline_loop",
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if spin_ns < 0:
            raise ValueError(f"spin_ns must be ≥ 0, got {spin_ns}")
        if overrun_yield_ns is not None and overrun_yield_ns < 0:
            raise ValueError(f"overrun_yield_ns must be ≥ 0, got {overrun_yield_ns}")
        if max_lag_ns is not None and max_lag_ns < 0:
            raise ValueError(f"max_lag_ns must be ≥ 0, got {max_lag_ns}")
        self._step = step
        self.rate_hz = float(rate_hz)
        self.period_ns = int(round(1e9 / rate_hz))
        self._on_overrun = on_overrun
        self._clock_ns = clock_ns
        self._sleep_until_ns = sleep_until_ns if sleep_until_ns is not None else self._default_sleep_until
        self._spin_ns = int(spin_ns)
        self._default_sleeper = sleep_until_ns is None
        self.overrun_yield_ns = (
            max(200_000, self.period_ns // 50) if overrun_yield_ns is None else int(overrun_yield_ns)
        )
        self.max_lag_ns = self.period_ns if max_lag_ns is None else int(max_lag_ns)
        self.paced = bool(paced)
        self.stats = stats if stats is not None else TimingStats()
        self._name = name
        self._thread_init = thread_init
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ sleep
    def _default_sleep_until(self, deadline_ns: int) -> None:
        clock = self._clock_ns
        remaining = deadline_ns - clock() - self._spin_ns
        if remaining > 0:
            self._stop.wait(remaining / 1e9)
        while clock() < deadline_ns and not self._stop.is_set():
            pass

    def _yield_after_overrun(self) -> None:
        ns = self.overrun_yield_ns
        if ns <= 0:
            return
        if self._default_sleeper:
            self._stop.wait(ns / 1e9)  # a real sleep: the spin of the default sleeper would not yield
        else:
            self._sleep_until_ns(self._clock_ns() + ns)

    # -------------------------------------------------------------------- run
    @property
    def running(self) -> bool:
        """True while the loop thread started by `start` is alive."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, max_ticks: int | None = None, start_ns: int | None = None) -> None:
        """Run the loop in the calling thread until `stop` or ``max_ticks`` ticks.

        Args:
            max_ticks: Number of steps to execute (``None``: until stopped).
            start_ns: Scheduled time of tick 0 (default: now; unused when not paced).
        """
        if not self.paced:
            self._run_free(max_ticks)
            return
        clock = self._clock_ns
        period = self.period_ns
        stats = self.stats
        stop = self._stop
        start = clock() if start_ns is None else int(start_ns)
        k = 0
        done = 0
        while not stop.is_set() and (max_ticks is None or done < max_ticks):
            scheduled = start + k * period
            if clock() < scheduled:
                self._sleep_until_ns(scheduled)
                if stop.is_set():
                    break
            t0 = clock()
            self._step(k, scheduled / 1e9)
            t1 = clock()
            stats.record_tick(scheduled, t0, t1)
            done += 1
            next_deadline = scheduled + period
            if t1 > next_deadline:
                late = t1 - next_deadline
                overran = k
                if late >= self.max_lag_ns:
                    # Too far behind to catch up: resume at the next future deadline.
                    k_next = -(-(t1 - start) // period)  # ceil
                    stats.record_miss(skipped_ticks=k_next - (k + 1))
                    k = k_next
                else:
                    stats.record_miss()
                    k += 1
                if self._on_overrun is not None:
                    self._on_overrun(overran, late)
                self._yield_after_overrun()
            else:
                k += 1

    def _run_free(self, max_ticks: int | None) -> None:
        clock = self._clock_ns
        stats = self.stats
        stop = self._stop
        k = 0
        while not stop.is_set() and (max_ticks is None or k < max_ticks):
            t0 = clock()
            self._step(k, t0 / 1e9)
            stats.record_tick(t0, t0, clock())
            k += 1
            if self._default_sleeper:
                time.sleep(0)  # let other threads in

    def _thread_main(self) -> None:
        try:
            if self._thread_init is not None:
                self._thread_init()
            self.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced through .error; the thread must end cleanly
            self.error = exc

    def start(self) -> None:
        """Start the loop on its own daemon thread.

        Raises:
            RuntimeError: If it is already running.
        """
        if self.running:
            raise RuntimeError(f"{self._name} is already running")
        self._stop.clear()
        self.error = None
        self._thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Ask the loop to stop and wait at most ``timeout_s`` for it.

        Safe to call from inside ``step`` (it then only sets the flag).

        Args:
            timeout_s: Join deadline in seconds, ≥ 0.

        Returns:
            True if the loop thread has ended (or never ran), False if it is
            still inside a step after the deadline.
        """
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be ≥ 0, got {timeout_s}")
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout_s)
        return not thread.is_alive()
