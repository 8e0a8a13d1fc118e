"""Inference off the control loop: a worker thread, and when to start the next inference.

The fast path has two clocks (shared/DESIGN.md). The deadline loop streams the current plan at the
command rate and never waits for a model; inference runs on :class:`InferenceWorker`'s thread and
is started by :class:`HorizonTrigger` early enough that the plan never runs out. An inference
slower than a tick is normal; a worker that stops answering is a fault the loop sees
(:attr:`InferenceWorker.in_flight_s`) and turns into HOLD.

A thread is enough: ONNX Runtime (and TensorRT) release the interpreter lock while they compute,
so the loop thread keeps its rate while the worker waits in the engine (measured: the loop's
jitter is unchanged with a 300 ms inference in flight, see ``bench delay``). An engine that holds
the GIL for its whole run would need a process instead.

When to start (:class:`HorizonTrigger`): a chunk observed at ``t_c`` holds actions for
``t_c + i·dt``. The next inference should deliver its chunk after the current one has executed
at least ``min_steps`` actions (the execution horizon), and before the current chunk runs out:

* start once ``now ≥ t_c + min_steps·dt − d``  (d: the estimated delay from observation to a
  merged chunk, a high percentile of recent ones), and
* always start once ``plan_end − now ≤ d + margin``.

With ``min_steps = 1`` and a fast engine this re-plans every tick (the behaviour of a synchronous
fast path); with a slow one the worker runs back to back and each chunk is executed for about
``d`` before the next takes over — the regime real-time chunking is made for. Pure Python: every
time is an argument; nothing here logs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(frozen=True)
class Finished(Generic[Res]):
    """One finished inference: its result (or the exception it raised) and its timing.

    Attributes:
        result: What the worker's function returned (None when it raised).
        error: The exception it raised, or None.
        started_s, finished_s: ``time.monotonic()`` when the worker began and ended it.
        seq: The request's sequence number (1, 2, …).
    """

    result: Res | None
    error: BaseException | None
    started_s: float
    finished_s: float
    seq: int


class InferenceWorker(Generic[Req, Res]):
    """Runs ``fn(request)`` on its own daemon thread, one request at a time.

    The loop thread calls :meth:`submit` (never blocks; False while one is in flight) and
    :meth:`take` (the finished result, once). The request must be a snapshot the loop no longer
    writes to: the worker reads it while the loop goes on.

    Args:
        fn: The inference; any exception it raises is handed back in :class:`Finished`.
        name: The thread's name.
        clock: Monotonic seconds (tests inject one).
        thread_init: Called once on the worker thread before the first request (e.g. its
            scheduling policy).
    """

    def __init__(self, fn: Callable[[Req], Res], name: str = "inference_worker",
                 clock: Callable[[], float] = time.monotonic, thread_init: Callable[[], None] | None = None) -> None:
        self._fn = fn
        self._clock = clock
        self._init = thread_init
        self._cv = threading.Condition()
        self._request: Req | None = None
        self._have_request = False
        self._done: Finished[Res] | None = None
        self._busy_since: float | None = None
        self._seq = 0
        self._stop = False
        self.completed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A request is queued or running."""
        return self._busy_since is not None

    def in_flight_s(self, now: float) -> float:
        """How long the current request has been in flight (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, now - since)

    def submit(self, request: Req, now: float) -> bool:
        """Hand over a request; False (nothing happens) while one is in flight or the worker stopped."""
        with self._cv:
            if self._busy_since is not None or self._stop:
                return False
            self._request, self._have_request = request, True
            self._busy_since = now
            self._seq += 1
            self._cv.notify()
        return True

    def take(self) -> Finished[Res] | None:
        """The finished result not yet taken, or None."""
        if self._done is None:  # the common tick: nothing finished, no lock taken
            return None
        with self._cv:
            done, self._done = self._done, None
        return done

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the thread (after the request in flight, if any); False if it did not end in time."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        if self._init is not None:
            self._init()
        while True:
            with self._cv:
                while not self._have_request and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                request, self._request, self._have_request = self._request, None, False
                seq = self._seq
            started = self._clock()
            try:
                result, error = self._fn(request), None
            except Exception as e:  # noqa: BLE001 - handed back to the loop, which holds on it
                result, error = None, e
            finished = self._clock()
            with self._cv:
                self._done = Finished(result, error, started, finished, seq)
                self._busy_since = None
                self.completed += 1


class HorizonTrigger:
    """When the loop starts the next inference (see the module docstring).

    Args:
        chunk_dt_s: Time between a chunk's actions (``1 / control_rate_hz``).
        min_steps: The execution horizon: actions of each chunk executed before the next takes over
            (≥ 1; 1 re-plans as often as inference allows).
        margin_s: Slack on top of the delay estimate before the plan's end.
    """

    def __init__(self, chunk_dt_s: float, min_steps: int = 1, margin_s: float = 0.05) -> None:
        if not chunk_dt_s > 0:
            raise ValueError(f"chunk_dt_s must be > 0, got {chunk_dt_s}")
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}")
        if not margin_s >= 0:
            raise ValueError(f"margin_s must be >= 0, got {margin_s}")
        self.dt = float(chunk_dt_s)
        self.min_steps = int(min_steps)
        self.margin_s = float(margin_s)

    def due(self, now: float, chunk_obs_s: float | None, plan_end_s: float | None, delay_s: float) -> bool:
        """Whether to start an inference now.

        Args:
            now: The loop's clock.
            chunk_obs_s: Observation time of the chunk executing now (None: no chunk yet → start).
            plan_end_s: When the executing plan runs out (None: no plan → start).
            delay_s: The delay estimate (observation → merged chunk).
        """
        if chunk_obs_s is None or plan_end_s is None:
            return True
        if plan_end_s - now <= delay_s + self.margin_s:
            return True
        return now >= chunk_obs_s + self.min_steps * self.dt - delay_s

    def frozen_steps(self, delay_s: float) -> int:
        """How many actions of a new chunk will already have passed when it arrives (RTC's ``d``)."""
        return max(0, math.ceil(delay_s / self.dt - 1e-9))
