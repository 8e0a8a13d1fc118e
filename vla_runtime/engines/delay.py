"""An engine wrapper that makes every inference slower by a fixed or seeded random delay (testing only).

Real policies are slower than a 30 Hz tick (π0 ~75 ms on a desktop GPU, GR00T 220–338 ms on an
Orin); this emulates them with any engine, so the fast path's handling of slow inference can be
exercised on a CPU. Configured per engine with ``inject_delay_ms`` (see
:class:`~vla_runtime.core.config.InjectedDelay`), off by default. The wrapper says so wherever the
engine is described: its :attr:`~DelayInjectedEngine.provider` ends in ``+ INJECTED DELAY …``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from vla_runtime.core.config import InjectedDelay
from vla_runtime.engines.base import Engine, Feeds, Outputs

#: The marker every description of a delayed engine carries.
INJECTED_DELAY = "INJECTED DELAY"


class DelayInjectedEngine(Engine):
    """Runs ``inner`` and then sleeps ``fixed_ms + U(0, jitter_ms)`` (``time.sleep``: the GIL is released).

    :attr:`latency` records what a caller waits for (inference + injected delay); the inner engine's own
    :attr:`latency` keeps the real inference time.

    Args:
        inner: The engine doing the real work (closed with this one).
        delay: How much to add; the jitter's generator is seeded with ``delay.seed``.
        latency_window: Latency ring-buffer size.
    """

    def __init__(self, inner: Engine, delay: InjectedDelay, latency_window: int = 1000) -> None:
        super().__init__(latency_window)
        self.inner = inner
        self.delay = delay
        self._rng = np.random.default_rng(delay.seed)
        self._lock = threading.Lock()
        self._calls = 0
        self._closed = threading.Event()
        self._set_io(inner.input_specs, inner.output_specs)

    @property
    def provider(self) -> str:
        jitter = f" + U(0, {self.delay.jitter_ms:g}) ms, seed {self.delay.seed}" if self.delay.jitter_ms else ""
        hang = f", hangs after {self.delay.hang_after} calls" if self.delay.hang_after is not None else ""
        return f"{self.inner.provider} + {INJECTED_DELAY} {self.delay.fixed_ms:g} ms{jitter}{hang}"

    def next_delay_s(self) -> float:
        """Draw the delay the next call adds, in seconds."""
        jitter = 0.0
        if self.delay.jitter_ms:
            with self._lock:
                jitter = float(self._rng.uniform(0.0, self.delay.jitter_ms))
        return (self.delay.fixed_ms + jitter) / 1e3

    def inject(self) -> float:
        """Wait as one inference's injection says (the drawn delay, or for ever once ``hang_after`` calls
        were made; :meth:`close` ends a hang); returns the seconds added.

        A caller that runs several graph calls per inference (a flow head's denoising steps) calls the
        :attr:`inner` engine for those and this once.
        """
        with self._lock:
            self._calls += 1
            hang = self.delay.hang_after is not None and self._calls > self.delay.hang_after
        if hang:
            self._closed.wait()
            return 0.0
        d = self.next_delay_s()
        if d > 0:
            time.sleep(d)
        return d

    def _run(self, feeds: Feeds) -> Outputs:
        out = self.inner.infer(feeds)
        self.inject()
        return out

    def warmup(self, n: int = 3) -> None:
        """Warm the inner engine up (without the injected delay), then clear both latency statistics."""
        self.inner.warmup(n)
        self.latency.reset()

    def close(self) -> None:
        """End a hang and close the inner engine."""
        self._closed.set()
        self.inner.close()
