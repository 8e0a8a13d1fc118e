"""Engine interface, latency stats, ONNX Runtime provider checks, TensorRT lazy failure."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from vla_runtime.engines import (
    EngineConfig,
    EngineError,
    LatencyStats,
    NullEngine,
    TensorInfo,
    coerce_engine_config,
    make_engine,
)
from vla_runtime.engines.onnx_engine import OnnxRuntimeEngine

PKG = Path(__file__).resolve().parents[2] / "models" / "timing_reference"
FAST = PKG / "fast.onnx"


@pytest.fixture(scope="module")
def fast_engine() -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(FAST, "cpu", intra_op_threads=1)


def fast_feeds(rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    return {
        "latent": rng.standard_normal((1, 8, 256)).astype(np.float32),
        "proprio": rng.standard_normal((1, 8)).astype(np.float32),
        "prev_chunk": rng.standard_normal((1, 16, 8)).astype(np.float32),
        "prefix_mask": (np.arange(16) < 4).astype(np.float32)[None],
    }


def test_latency_stats_ring_buffer() -> None:
    s = LatencyStats(window=4)
    assert s.count == 0 and np.isnan(s.p50) and np.isnan(s.snapshot()["p99_ms"])
    for ms in (100.0, 1.0, 2.0, 3.0, 4.0):  # 100 falls out of the window
        s.record(ms)
    assert s.count == 5
    assert s.max == 4.0 and s.mean == 2.5 and s.p50 == 2.5
    assert 3.9 < s.p99 <= 4.0
    snap = s.snapshot()
    assert set(snap) == {"count", "p50_ms", "p99_ms", "max_ms", "mean_ms"} and snap["count"] == 5
    s.reset()
    assert s.count == 0
    with pytest.raises(ValueError, match="got 0"):
        LatencyStats(0)


def test_null_engine_shapes_and_validation() -> None:
    eng = NullEngine(
        [TensorInfo("x", (None, 3), np.dtype(np.float32)), TensorInfo("ids", (1, 4), np.dtype(np.int64))],
        [TensorInfo("y", (1, 16, 8), np.dtype(np.float32)), TensorInfo("z", (None, 2), np.dtype(np.int64))],
    )
    out = eng.infer({"x": np.zeros((5, 3), np.float32), "ids": np.zeros((1, 4), np.int64)})
    assert out["y"].shape == (1, 16, 8) and out["y"].dtype == np.float32 and not out["y"].any()
    assert out["z"].shape == (1, 2) and out["z"].dtype == np.int64
    assert eng.provider == "null" and eng.latency.count == 1
    with pytest.raises(EngineError, match=r"feed 'x' has shape \[5, 4\]"):
        eng.infer({"x": np.zeros((5, 4), np.float32), "ids": np.zeros((1, 4), np.int64)})
    with pytest.raises(EngineError, match="feed 'ids' has dtype int32"):
        eng.infer({"x": np.zeros((1, 3), np.float32), "ids": np.zeros((1, 4), np.int32)})
    with pytest.raises(EngineError, match=r"missing feed\(s\) \['ids'\]"):
        eng.infer({"x": np.zeros((1, 3), np.float32)})
    with pytest.raises(EngineError, match="unknown feed 'w'"):
        eng.infer({"x": np.zeros((1, 3), np.float32), "ids": np.zeros((1, 4), np.int64), "w": np.zeros(1)})
    with pytest.raises(EngineError, match="feed 'x' must be a numpy array"):
        eng.infer({"x": [[0.0, 0.0, 0.0]], "ids": np.zeros((1, 4), np.int64)})


def test_onnxruntime_cpu_runs_and_records_latency(fast_engine: OnnxRuntimeEngine) -> None:
    assert fast_engine.provider == "CPUExecutionProvider"
    assert [t.name for t in fast_engine.input_specs] == ["latent", "proprio", "prev_chunk", "prefix_mask"]
    assert fast_engine.output_specs[0].shape == (1, 16, 8)
    fast_engine.warmup(2)
    assert fast_engine.latency.count == 0
    feeds = fast_feeds()
    for _ in range(5):
        out = fast_engine.infer(feeds)
    acts = out["actions"]
    assert acts.shape == (1, 16, 8) and acts.dtype == np.float32 and np.isfinite(acts).all()
    # the RTC prefix (first 4 steps) is copied through from the previous chunk
    np.testing.assert_allclose(acts[0, :4], feeds["prev_chunk"][0, :4], rtol=1e-6)
    snap = fast_engine.latency.snapshot()
    assert snap["count"] == 5 and 0 < snap["p50_ms"] <= snap["p99_ms"] <= snap["max_ms"]


def test_onnxruntime_feed_errors_name_the_tensor(fast_engine: OnnxRuntimeEngine) -> None:
    feeds = fast_feeds()
    feeds["proprio"] = np.zeros((1, 7), np.float32)
    with pytest.raises(EngineError, match=r"feed 'proprio' has shape \[1, 7\], expected proprio\[1, 8\] float32"):
        fast_engine.infer(feeds)
    feeds = fast_feeds()
    feeds["latent"] = feeds["latent"].astype(np.float64)
    with pytest.raises(EngineError, match="feed 'latent' has dtype float64, expected float32"):
        fast_engine.infer(feeds)


def test_io_binding_matches_plain_run(fast_engine: OnnxRuntimeEngine) -> None:
    bound = OnnxRuntimeEngine(FAST, "cpu", intra_op_threads=1, io_binding=True)
    feeds = fast_feeds(np.random.default_rng(1))
    a = bound.infer(feeds)["actions"]
    b = bound.infer(fast_feeds(np.random.default_rng(2)))["actions"]
    np.testing.assert_allclose(a, fast_engine.infer(feeds)["actions"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)  # returned arrays are not the reused buffer


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_provider_is_an_error(provider: str) -> None:
    import onnxruntime as ort

    if {"cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider"}[provider] in ort.get_available_providers():
        pytest.skip("this machine has the provider")
    with pytest.raises(EngineError, match=rf"requested provider '{provider}'.*available"):
        make_engine(FAST, provider=provider)


def test_silent_cpu_fallback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu without its CUDA libs lists the CUDA EP, then runs on CPU: refuse that."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def fake_session(path, sess_options=None, providers=None):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with pytest.raises(EngineError, match=r"was not loaded.*\['CPUExecutionProvider'\].*Refusing to fall back"):
        OnnxRuntimeEngine(FAST, "cuda")


def test_bad_options_are_errors() -> None:
    with pytest.raises(EngineError, match="'gpu'"):
        OnnxRuntimeEngine(FAST, "gpu")
    with pytest.raises(EngineError, match="'fastest'"):
        OnnxRuntimeEngine(FAST, "cpu", graph_optimization="fastest")
    with pytest.raises(EngineError, match="invalid engine options"):
        make_engine(FAST, backend="openvino")


def test_broken_onnx_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(EngineError, match=str(bad)):
        make_engine(bad)
    with pytest.raises(EngineError, match=str(tmp_path / "missing.onnx")):
        make_engine(tmp_path / "missing.onnx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_backend_fails_clearly_without_tensorrt() -> None:
    with pytest.raises(EngineError, match=r"cannot import tensorrt.*pip install tensorrt-cu12"):
        make_engine(FAST, backend="tensorrt")


def test_tensorrt_module_imports_without_tensorrt() -> None:
    from vla_runtime.engines import tensorrt_engine

    key = tensorrt_engine.cache_key("NVIDIA H100 80GB HBM3", "10.3.0", "ab" * 32, "fp16")
    assert key.startswith("NVIDIA_H100_80GB_HBM3-trt10.3.0-fp16-")
    assert key != tensorrt_engine.cache_key("NVIDIA H100 80GB HBM3", "10.4.0", "ab" * 32, "fp16")


def test_null_backend_reads_io_from_graph() -> None:
    eng = make_engine(FAST, backend="null")
    out = eng.infer(eng.dummy_feeds())
    assert out["actions"].shape == (1, 16, 8)
    assert EngineConfig().backend == "onnxruntime"


def test_engine_config_coerce() -> None:
    from pydantic import BaseModel

    class Other(BaseModel):
        backend: str = "null"
        provider: str = "cpu"
        intra_op_threads: int = 1
        cache_dir: str | None = "/tmp/trt"

    cfg = coerce_engine_config(Other())
    assert cfg.backend == "null" and cfg.trt_cache_dir == "/tmp/trt"
    assert coerce_engine_config(None) == EngineConfig()
    assert coerce_engine_config({"provider": "cuda"}).provider == "cuda"
    with pytest.raises(EngineError, match="'warp_speed'"):
        coerce_engine_config({"warp_speed": 9})
    with pytest.raises(EngineError, match="invalid engine config"):
        coerce_engine_config({"provider": "gpu"})


# ----------------------------------------------------------------------------- injected delay
def test_delay_injection_is_off_by_default() -> None:
    assert EngineConfig().inject_delay_ms is None
    assert EngineConfig(inject_delay_ms=0).inject_delay_ms is None  # zero means off
    eng = make_engine(FAST)
    assert isinstance(eng, OnnxRuntimeEngine) and "INJECTED" not in eng.provider


def test_injected_delay_adds_latency_sleeps_and_says_so() -> None:
    from vla_runtime.engines.delay import DelayInjectedEngine

    eng = make_engine(FAST, inject_delay_ms=120)
    assert isinstance(eng, DelayInjectedEngine) and isinstance(eng.inner, OnnxRuntimeEngine)
    assert eng.provider == "CPUExecutionProvider + INJECTED DELAY 120 ms"
    assert "INJECTED DELAY" in repr(eng)
    eng.warmup(2)  # warms the real engine without the delay
    assert eng.latency.count == 0 and eng.inner.latency.count == 0
    feeds = fast_feeds()
    want = eng.inner.infer(feeds)["actions"]
    for _ in range(3):
        t0, cpu0 = time.perf_counter(), time.thread_time()
        got = eng.infer(feeds)["actions"]
        wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        assert wall >= 0.120
        assert cpu < 0.060, cpu  # slept (GIL released), did not spin
    np.testing.assert_array_equal(got, want)
    assert eng.latency.count == 3 and eng.latency.p50 >= 120.0  # what the caller waits for
    assert eng.inner.latency.count == 4 and eng.inner.latency.max < 120.0  # the real inference
    with pytest.raises(EngineError, match="feed 'proprio' has shape"):  # still validated
        eng.infer({**feeds, "proprio": np.zeros((1, 7), np.float32)})


def test_injected_jitter_is_seeded_and_bounded() -> None:
    cfg = {"fixed_ms": 200.0, "jitter_ms": 100.0, "seed": 4}
    a, b = make_engine(FAST, inject_delay_ms=cfg), make_engine(FAST, inject_delay_ms=cfg)
    c = make_engine(FAST, inject_delay_ms={**cfg, "seed": 5})
    da, db, dc = ([e.next_delay_s() for _ in range(50)] for e in (a, b, c))
    assert da == db and da != dc
    assert 0.200 <= min(da) and max(da) <= 0.300 and max(da) - min(da) > 0.05
    assert a.provider == "CPUExecutionProvider + INJECTED DELAY 200 ms + U(0, 100) ms, seed 4"


def test_injected_delay_config_errors_name_the_value() -> None:
    for bad, match in [(-5, r"fixed_ms\n.*greater than or equal to 0.*input_value=-5"),
                       ({"fixed_ms": 10, "jitter_ms": float("inf")}, r"jitter_ms\n.*input_value=inf"),
                       (True, "inject_delay_ms must be milliseconds .*got True"),
                       ({"fixed_ms": 10, "spread_ms": 3}, r"inject_delay_ms.spread_ms\n.*Extra inputs")]:
        with pytest.raises(ValueError, match=match):
            EngineConfig(inject_delay_ms=bad)


def test_injected_delay_from_the_runtime_config(tmp_path: Path) -> None:
    """``model.fast_engine.inject_delay_ms`` in a config file reaches the fast engine of the package."""
    import yaml

    from vla_runtime.core.config import load_config
    from vla_runtime.engines.model_package import load_model_package

    root = Path(__file__).resolve().parents[2]
    cfg_file = tmp_path / "slow_policy.yaml"
    cfg_file.write_text(yaml.safe_dump({"include": str(root / "config" / "sim_panda.yaml"),
                                        "model": {"fast_engine": {"inject_delay_ms": {"fixed_ms": 300}}}}))
    cfg = load_config(cfg_file)
    assert cfg.model.fast_engine.inject_delay_ms.fixed_ms == 300 and cfg.model.slow_engine.inject_delay_ms is None
    with load_model_package(cfg.model_package_path, slow=cfg.model.slow_engine, fast=cfg.model.fast_engine) as pkg:
        assert "INJECTED DELAY 300 ms" in pkg.fast_engine.provider
        assert "INJECTED" not in pkg.slow_engine.provider
