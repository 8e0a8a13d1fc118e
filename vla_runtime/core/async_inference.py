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
``d`` before the next takes over — the regime real-time chunking is made for.

An adaptive horizon (``scheduler.horizon_policy: consensus``, :class:`ConsensusTrigger`): the horizon
in force is not fixed but judged from each new chunk against the plan it replaces (Mixture of
Horizons' cross-horizon consensus at run time): long while successive chunks agree over their
overlap, short where they part. Pure Python: every time is an argument; nothing here logs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

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
        return now >= chunk_obs_s + self.steps * self.dt - delay_s

    @property
    def steps(self) -> int:
        """The execution horizon in force (fixed here: ``min_steps``; :class:`ConsensusTrigger` adapts it)."""
        return self.min_steps

    def frozen_steps(self, delay_s: float) -> int:
        """How many actions of a new chunk will already have passed when it arrives (RTC's ``d``)."""
        return max(0, math.ceil(delay_s / self.dt - 1e-9))


class ConsensusTrigger(HorizonTrigger):
    """An adaptive execution horizon: keep executing while successive chunks agree, re-plan early when not.

    Mixture of Horizons' cross-horizon consensus, applied at run time: two chunks predicted from
    different observations are two predictions of the same future; where they agree the policy is sure
    and the current chunk can run longer before the next inference, where they part it should re-plan
    soon. :meth:`observe` is called with each chunk that arrives and the plan it replaces, on the new
    chunk's grid (step ``i`` at ``t_obs + i·dt``), before the merge. The agreement length ``k`` is the
    number of leading steps, from ``start`` (the first step not yet past) to the end of the overlap, at
    which ``max |new − plan| ≤ tolerance`` (robot units, over every dim). The horizon in force is then

    * ``max_steps`` when they agree over the whole overlap (nothing says otherwise),
    * ``clip(start + k, min_steps, max_steps)`` when they part at step ``start + k``, and
    * ``min_steps`` when there was no plan to compare with (the first chunk, after a hold).

    :meth:`due` is :class:`HorizonTrigger`'s with that horizon, so the plan-end guard (start once the
    plan left falls to the delay + margin) still holds whatever the horizon. With real-time chunking the
    frozen prefix agrees by construction; the agreement past it is what the model's new observation
    left of the guidance. Pure: nothing here reads a clock or logs.

    Args:
        chunk_dt_s: Time between a chunk's actions.
        min_steps: Execution horizon after a disagreement (≥ 1).
        max_steps: Execution horizon while chunks agree (≥ ``min_steps``).
        tolerance: Largest |difference| at a step for agreement (> 0, robot units).
        margin_s: As :class:`HorizonTrigger`'s.
    """

    def __init__(self, chunk_dt_s: float, min_steps: int = 1, max_steps: int = 16, tolerance: float = 0.02,
                 margin_s: float = 0.05) -> None:
        super().__init__(chunk_dt_s, min_steps, margin_s)
        if max_steps < min_steps:
            raise ValueError(f"max_steps must be >= min_steps ({min_steps}), got {max_steps}")
        if not (tolerance > 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be finite and > 0, got {tolerance}")
        self.max_steps = int(max_steps)
        self.tolerance = float(tolerance)
        self._steps = self.min_steps
        #: Chunks observed that agreed over the whole overlap / parted inside it / had no plan to compare with.
        self.agreed = 0
        self.parted = 0
        self.unplanned = 0
        #: The agreement length of the last chunk observed (steps from its ``start``).
        self.last_agreement = 0

    @property
    def steps(self) -> int:
        return self._steps

    def reset(self) -> None:
        """Back to ``min_steps`` (a hold dropped the plan: no consensus to go on)."""
        self._steps = self.min_steps

    def observe(self, new_chunk: np.ndarray, executing_plan: np.ndarray | None, overlap: int, start: int = 0) -> int:
        """Judge a new chunk against the plan it replaces; returns the horizon now in force.

        Args:
            new_chunk: ``(H, A)`` the new chunk, absolute, robot units.
            executing_plan: ``(≥ overlap, A)`` the executing plan on the new chunk's grid, or None.
            overlap: Steps of the new chunk's grid (from step 0) the executing plan covers.
            start: The first step compared (the steps before it are already past).

        Raises:
            ValueError: Shapes that do not match, or negative ``overlap`` / ``start``.
        """
        if overlap < 0 or start < 0:
            raise ValueError(f"overlap and start must be >= 0, got {overlap} and {start}")
        n = min(int(overlap), len(new_chunk))
        if executing_plan is None or n <= start:
            self.unplanned += 1
            self.last_agreement = 0
            self._steps = self.min_steps
            return self._steps
        new = np.asarray(new_chunk, dtype=np.float64)[start:n]
        old = np.asarray(executing_plan, dtype=np.float64)[start:n]
        if new.shape != old.shape:
            raise ValueError(f"new chunk rows {list(new.shape)} and executing plan rows {list(old.shape)} differ")
        off = np.nonzero(np.abs(new - old).max(axis=1) > self.tolerance)[0]
        if off.size == 0:
            self.agreed += 1
            self.last_agreement = n - start
            self._steps = self.max_steps
        else:
            self.parted += 1
            self.last_agreement = int(off[0])
            self._steps = int(min(max(start + int(off[0]), self.min_steps), self.max_steps))
        return self._steps
