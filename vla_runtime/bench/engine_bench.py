"""Latency benchmark of a model package's slow and fast engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_runtime.engines.base import Engine, EngineConfig
from vla_runtime.engines.model_package import load_model_package


def _random_feeds(engine: Engine, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for t in engine.input_specs:
        shape = t.concrete_shape()
        if np.issubdtype(t.dtype, np.floating):
            feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        elif t.dtype == np.bool_:
            feeds[t.name] = np.ones(shape, dtype=t.dtype)
        else:
            feeds[t.name] = rng.integers(0, 2, size=shape).astype(t.dtype)
    return feeds


def bench_engine(
    package_path: str | Path,
    n: int = 200,
    engine: EngineConfig | None = None,
    warmup: int = 10,
) -> dict[str, float | str]:
    """Time both engines of a model package on random feeds of the declared shapes.

    Args:
        package_path: The package directory (``models/<name>``).
        n: Timed calls per engine.
        engine: Engine settings (default: ONNX Runtime on CPU).
        warmup: Untimed calls per engine first.

    Returns:
        ``slow_p50_ms``, ``slow_p99_ms``, ``slow_mean_ms``, ``slow_max_ms``, the
        same for ``fast_``, ``n``, and ``slow_provider`` / ``fast_provider``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(0)
    result: dict[str, float | str] = {"n": float(n)}
    with load_model_package(package_path, engine) as pkg:
        for part, eng in (("slow", pkg.slow_engine), ("fast", pkg.fast_engine)):
            assert eng is not None
            feeds = _random_feeds(eng, rng)
            if part == "slow" and pkg.spec.slow.input_by_role("instruction_ids") is not None:
                tok = pkg.tokenizer.encode("pick up the red block and place it in the bowl")
                ids = pkg.spec.slow.input_by_role("instruction_ids")
                mask = pkg.spec.slow.input_by_role("instruction_mask")
                assert ids is not None
                feeds[ids.name] = tok.ids.astype(feeds[ids.name].dtype)
                if mask is not None:
                    feeds[mask.name] = tok.mask.astype(feeds[mask.name].dtype)
            eng.warmup(warmup)
            for _ in range(n):
                eng.infer(feeds)
            snap = eng.latency.snapshot()
            result[f"{part}_p50_ms"] = snap["p50_ms"]
            result[f"{part}_p99_ms"] = snap["p99_ms"]
            result[f"{part}_mean_ms"] = snap["mean_ms"]
            result[f"{part}_max_ms"] = snap["max_ms"]
            result[f"{part}_provider"] = eng.provider
    return result
