"""The inference-engine interface every backend implements.

An :class:`Engine` runs one graph: ``infer(feeds) -> outputs``, both dicts of
numpy arrays keyed by tensor name. Feeds are validated (names, ranks, static
dims, dtypes) before the backend sees them, and every call's wall time lands in
:attr:`Engine.latency`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from vla_runtime.core.config import EngineBackend as Backend  # noqa: F401 - re-exported
from vla_runtime.core.config import EngineConfig
from vla_runtime.core.config import EngineProvider as Provider  # noqa: F401 - re-exported

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class EngineError(RuntimeError):
    """An engine could not be built or could not run a call."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a dynamic dim) and numpy dtype of one tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def concrete_shape(self, dynamic: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dim set to ``dynamic``."""
        return tuple(dynamic if d is None else d for d in self.shape)

    def describe(self) -> str:
        """``name[1, 3, ?, ?] float32`` (for error messages)."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {np.dtype(self.dtype).name}"


class LatencyStats:
    """Ring buffer of the last ``window`` call latencies.

    Thread-safe; recording is O(1). Percentiles are computed on read.

    Args:
        window: How many recent latencies to keep.
    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._buf = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def record(self, ms: float) -> None:
        """Add one latency in milliseconds."""
        with self._lock:
            self._buf[self._next] = ms
            self._next = (self._next + 1) % self._buf.shape[0]
            self._count += 1

    def reset(self) -> None:
        """Forget every recorded latency."""
        with self._lock:
            self._next = 0
            self._count = 0

    @property
    def count(self) -> int:
        """Calls recorded since construction or the last reset (not capped by the window)."""
        return self._count

    def _window(self) -> np.ndarray:
        with self._lock:
            n = min(self._count, self._buf.shape[0])
            return self._buf[:n].copy()

    def percentile(self, q: float) -> float:
        """q-th percentile (0..100) of the window in ms; NaN when empty."""
        w = self._window()
        return float(np.percentile(w, q)) if w.size else float("nan")

    @property
    def p50(self) -> float:
        """Median latency over the window, ms."""
        return self.percentile(50)

    @property
    def p99(self) -> float:
        """99th-percentile latency over the window, ms."""
        return self.percentile(99)

    @property
    def max(self) -> float:
        """Largest latency in the window, ms."""
        w = self._window()
        return float(w.max()) if w.size else float("nan")

    @property
    def mean(self) -> float:
        """Mean latency over the window, ms."""
        w = self._window()
        return float(w.mean()) if w.size else float("nan")

    def snapshot(self) -> dict[str, float]:
        """``{'count', 'p50_ms', 'p99_ms', 'max_ms', 'mean_ms'}`` in one consistent read."""
        w = self._window()
        if not w.size:
            nan = float("nan")
            return {"count": float(self._count), "p50_ms": nan, "p99_ms": nan, "max_ms": nan, "mean_ms": nan}
        p50, p99 = np.percentile(w, [50, 99])
        return {
            "count": float(self._count),
            "p50_ms": float(p50),
            "p99_ms": float(p99),
            "max_ms": float(w.max()),
            "mean_ms": float(w.mean()),
        }




def coerce_engine_config(obj: object) -> EngineConfig:
    """Accept an EngineConfig, None (defaults), a mapping or another config model with the same field names.

    ``cache_dir`` is accepted as an alias of ``trt_cache_dir``.

    Raises:
        EngineError: Unknown or invalid fields (named in the message).
    """
    if isinstance(obj, EngineConfig):
        return obj
    if obj is None:
        return EngineConfig()
    if isinstance(obj, Mapping):
        data = dict(obj)
    elif isinstance(obj, BaseModel):
        data = obj.model_dump()
    else:
        raise EngineError(f"engine config must be an EngineConfig or a mapping, got {type(obj).__name__}")
    if "cache_dir" in data and "trt_cache_dir" not in data:
        data["trt_cache_dir"] = data.pop("cache_dir")
    unknown = sorted(set(data) - set(EngineConfig.model_fields))
    if unknown:
        raise EngineError(f"unknown engine config field(s) {unknown}; fields are {sorted(EngineConfig.model_fields)}")
    try:
        return EngineConfig(**data)
    except ValueError as e:
        raise EngineError(f"invalid engine config: {e}") from e


class Engine(ABC):
    """One inference graph behind a backend.

    Subclasses implement :meth:`_run` and set :attr:`input_specs`,
    :attr:`output_specs` (in ``__init__``) and :attr:`provider`.
    """

    def __init__(self, latency_window: int = 1000) -> None:
        self.latency = LatencyStats(latency_window)
        self._inputs: tuple[TensorInfo, ...] = ()
        self._outputs: tuple[TensorInfo, ...] = ()
        self._by_name: dict[str, TensorInfo] = {}

    def _set_io(self, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> None:
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._by_name = {t.name: t for t in self._inputs}

    @property
    def input_specs(self) -> tuple[TensorInfo, ...]:
        """Every graph input."""
        return self._inputs

    @property
    def output_specs(self) -> tuple[TensorInfo, ...]:
        """Every graph output this engine returns."""
        return self._outputs

    @property
    @abstractmethod
    def provider(self) -> str:
        """What actually runs the graph (e.g. ``CPUExecutionProvider``, ``tensorrt:NVIDIA H100``)."""

    @abstractmethod
    def _run(self, feeds: Feeds) -> Outputs:
        """Run the graph on validated feeds."""

    def validate(self, feeds: Feeds) -> None:
        """Check feed names, ranks, static dims and dtypes.

        Raises:
            EngineError: Naming the offending tensor, what was given and what is expected.
        """
        missing = [n for n in self._by_name if n not in feeds]
        if missing:
            raise EngineError(f"missing feed(s) {missing}; inputs are {[t.describe() for t in self._inputs]}")
        for name, arr in feeds.items():
            spec = self._by_name.get(name)
            if spec is None:
                raise EngineError(f"unknown feed {name!r}; inputs are {list(self._by_name)}")
            if not isinstance(arr, np.ndarray):
                raise EngineError(f"feed {name!r} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != spec.dtype:
                raise EngineError(f"feed {name!r} has dtype {arr.dtype}, expected {np.dtype(spec.dtype).name}")
            if arr.ndim != len(spec.shape) or any(d is not None and d != g for d, g in zip(spec.shape, arr.shape)):
                raise EngineError(f"feed {name!r} has shape {list(arr.shape)}, expected {spec.describe()}")

    def infer(self, feeds: Feeds) -> Outputs:
        """Validate ``feeds``, run the graph and record the latency.

        Args:
            feeds: Input name → array, one entry per input.

        Returns:
            Output name → array (owned by the caller).

        Raises:
            EngineError: Bad feeds (the tensor is named) or a backend failure.
        """
        self.validate(feeds)
        t0 = time.perf_counter()
        out = self._run(feeds)
        self.latency.record((time.perf_counter() - t0) * 1e3)
        return out

    def dummy_feeds(self, dynamic: int = 1) -> dict[str, np.ndarray]:
        """Zero feeds of the right shapes and dtypes (dynamic dims = ``dynamic``)."""
        return {t.name: np.zeros(t.concrete_shape(dynamic), dtype=t.dtype) for t in self._inputs}

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` calls on zero feeds, then clear the latency statistics."""
        feeds = self.dummy_feeds()
        for _ in range(n):
            self.infer(feeds)
        self.latency.reset()

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release backend resources (idempotent)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(t.describe() for t in self._inputs)
        outs = ", ".join(t.describe() for t in self._outputs)
        return f"{type(self).__name__}(provider={self.provider!r}, inputs=[{ins}], outputs=[{outs}])"


class NullEngine(Engine):
    """Returns zeros of the declared output shapes (measures the runtime's own overhead).

    Args:
        inputs: Input tensors it accepts.
        outputs: Output tensors it returns (dynamic dims become 1).
        latency_window: Latency ring-buffer size.
    """

    def __init__(self, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], latency_window: int = 1000) -> None:
        super().__init__(latency_window)
        self._set_io(inputs, outputs)
        self._zeros = {t.name: np.zeros(t.concrete_shape(), dtype=t.dtype) for t in self._outputs}

    @property
    def provider(self) -> str:
        return "null"

    def _run(self, feeds: Feeds) -> Outputs:
        return {k: v.copy() for k, v in self._zeros.items()}
