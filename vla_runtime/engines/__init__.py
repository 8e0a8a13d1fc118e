"""Inference backends behind one small interface (:class:`Engine`).

Use :func:`make_engine` for one graph, or
:func:`vla_runtime.engines.model_package.load_model_package` for a whole model
package (both graphs, checked against ``model.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_runtime.engines.base import (
    Engine,
    EngineConfig,
    EngineError,
    LatencyStats,
    NullEngine,
    TensorInfo,
    coerce_engine_config,
)

__all__ = [
    "coerce_engine_config",
    "Engine",
    "EngineConfig",
    "EngineError",
    "LatencyStats",
    "NullEngine",
    "TensorInfo",
    "engine_from_config",
    "make_engine",
]


def engine_from_config(
    onnx_path: str | Path,
    config: EngineConfig | Any,
    io: tuple[list[TensorInfo], list[TensorInfo]] | None = None,
) -> Engine:
    """Build the engine ``config`` describes for one ONNX graph.

    Args:
        onnx_path: The graph (unused by ``openpi_remote``: the policy runs on the server).
        config: Backend, provider and tuning options (anything :func:`coerce_engine_config` accepts).
        io: For the null backend: (inputs, outputs) to mimic. When omitted the
            graph is opened (CPU, metadata only) to read them.

    Returns:
        A ready engine; wrapped in a :class:`~vla_runtime.engines.delay.DelayInjectedEngine` when
        ``config.inject_delay_ms`` asks for extra latency.

    Raises:
        EngineError: The backend or provider cannot be had, or the file does not load.
    """
    config = coerce_engine_config(config)
    engine = _backend_engine(onnx_path, config, io)
    if config.inject_delay_ms is not None:
        from vla_runtime.engines.delay import DelayInjectedEngine

        return DelayInjectedEngine(engine, config.inject_delay_ms, latency_window=config.latency_window)
    return engine


def _backend_engine(onnx_path: str | Path, config: EngineConfig,
                    io: tuple[list[TensorInfo], list[TensorInfo]] | None) -> Engine:
    if config.backend == "onnxruntime":
        from vla_runtime.engines.onnx_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(
            onnx_path,
            config.provider,
            device_id=config.device_id,
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            graph_optimization=config.graph_optimization,
            io_binding=config.io_binding,
            fp16=config.fp16,
            trt_cache_dir=config.trt_cache_dir,
            latency_window=config.latency_window,
        )
    if config.backend == "tensorrt":
        from vla_runtime.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(
            onnx_path,
            fp16=config.fp16,
            int8=config.int8,
            calibration_dir=config.calibration_dir,
            cache_dir=config.trt_cache_dir,
            device_id=config.device_id,
            latency_window=config.latency_window,
        )
    if config.backend == "openpi_remote":
        from vla_runtime.engines.openpi_remote import OpenpiRemoteEngine, read_api_key

        return OpenpiRemoteEngine(str(config.url), api_key=read_api_key(config.api_key_file),
                                  timeout_s=config.timeout_s, latency_window=config.latency_window)
    if config.backend == "null":
        if io is None:
            from vla_runtime.engines.onnx_engine import open_session, ort_tensor_info

            sess = open_session(onnx_path)
            io = (
                [ort_tensor_info(a, str(onnx_path)) for a in sess.get_inputs()],
                [ort_tensor_info(a, str(onnx_path)) for a in sess.get_outputs()],
            )
        return NullEngine(io[0], io[1], latency_window=config.latency_window)
    raise EngineError(f"unknown backend {config.backend!r}; choose onnxruntime, tensorrt, null or openpi_remote")


def make_engine(
    onnx_path: str | Path,
    backend: str = "onnxruntime",
    provider: str | None = None,
    threads: int = 0,
    **options: Any,
) -> Engine:
    """Build an engine for one ONNX graph.

    Args:
        onnx_path: The graph.
        backend: ``onnxruntime``, ``tensorrt`` (native) or ``null``.
        provider: ONNX Runtime provider: ``cpu``, ``cuda`` or ``tensorrt`` (default: ``tensorrt``
            for the native TensorRT backend, else ``cpu``).
        threads: ONNX Runtime intra-op threads (0 = ORT default).
        **options: Any other :class:`EngineConfig` field (``io_binding``, ``fp16``, ``trt_cache_dir``,
            ``inject_delay_ms`` ...).

    Returns:
        A ready engine.

    Raises:
        EngineError: Bad option, unavailable backend/provider, or unloadable file.
    """
    if provider is None:
        provider = "tensorrt" if backend == "tensorrt" else "cpu"
    try:
        config = EngineConfig(backend=backend, provider=provider, intra_op_threads=threads, **options)  # type: ignore[arg-type]
    except ValueError as e:
        raise EngineError(f"invalid engine options: {e}") from e
    return engine_from_config(onnx_path, config)
