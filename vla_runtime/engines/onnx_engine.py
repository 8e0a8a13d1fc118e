"""ONNX Runtime backend with an explicit, checked execution provider.

The session is built with only the requested execution provider plus the CPU
EP (which ONNX Runtime needs for nodes the accelerator does not implement).
After construction the engine checks ``session.get_providers()[0]``: if ONNX
Runtime quietly dropped the requested EP (a missing libcublas, say) the engine
refuses to exist rather than run a 30 Hz loop on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vla_runtime.engines.base import Engine, EngineError, Feeds, Outputs, TensorInfo

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


def ort_tensor_info(arg: Any, where: str) -> TensorInfo:
    """Convert an ``onnxruntime.NodeArg`` to a :class:`TensorInfo` (symbolic dims → None)."""
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise EngineError(f"{where}: tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or []))
    return TensorInfo(arg.name, shape, dtype)


def open_session(
    onnx_path: str | Path,
    providers: list[Any] | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Open an ONNX file, turning every load failure into an :class:`EngineError` naming the path."""
    path = Path(onnx_path)
    if not path.is_file():
        raise EngineError(f"ONNX file not found: {path}")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several unrelated exception types for bad files
        raise EngineError(f"cannot load ONNX file {path}: {type(e).__name__}: {e}") from e


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime inference with a checked execution provider.

    Args:
        onnx_path: The graph.
        provider: ``cpu``, ``cuda`` or ``tensorrt``.
        device_id: GPU index for GPU providers.
        intra_op_threads: Threads inside one op (0 = ORT default).
        inter_op_threads: Threads across ops (0 = ORT default).
        graph_optimization: ``disable``, ``basic``, ``extended`` or ``all``.
        io_binding: Bind inputs and preallocated output buffers (static output shapes only).
        fp16: TensorRT EP: enable FP16.
        trt_cache_dir: TensorRT EP: engine/timing cache directory (default: ``.trt_cache`` beside the ONNX file).
        latency_window: Latency ring-buffer size.

    Raises:
        EngineError: Unknown provider, provider not available in this onnxruntime
            build, provider not actually loaded, or an unloadable ONNX file.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        provider: str = "cpu",
        *,
        device_id: int = 0,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
        io_binding: bool = False,
        fp16: bool = False,
        trt_cache_dir: str | Path | None = None,
        latency_window: int = 1000,
    ) -> None:
        super().__init__(latency_window)
        self.onnx_path = Path(onnx_path)
        if provider not in PROVIDERS:
            raise EngineError(f"unknown provider {provider!r}; choose one of {list(PROVIDERS)}")
        if graph_optimization not in _OPT_LEVELS:
            raise EngineError(f"unknown graph_optimization {graph_optimization!r}; choose one of {list(_OPT_LEVELS)}")
        ep = PROVIDERS[provider]
        available = ort.get_available_providers()
        if ep not in available:
            raise EngineError(
                f"requested provider {provider!r} ({ep}) is not available in this onnxruntime build "
                f"(onnxruntime {ort.__version__}, available: {available}); "
                + ("install onnxruntime-gpu with a matching CUDA/cuDNN" if provider != "cpu" else "")
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _OPT_LEVELS[graph_optimization]
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.log_severity_level = 3
        provider_list: list[Any]
        if provider == "cpu":
            provider_list = [ep]
        elif provider == "cuda":
            provider_list = [(ep, {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            cache = Path(trt_cache_dir).expanduser() if trt_cache_dir else self.onnx_path.parent / ".trt_cache"
            cache.mkdir(parents=True, exist_ok=True)
            trt_opts = {
                "device_id": device_id,
                "trt_fp16_enable": fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
            }
            provider_list = [(ep, trt_opts), "CPUExecutionProvider"]
        self._session = open_session(self.onnx_path, provider_list, opts)
        loaded = self._session.get_providers()
        if not loaded or loaded[0] != ep:
            raise EngineError(
                f"requested provider {provider!r} ({ep}) was not loaded for {self.onnx_path}: "
                f"session runs on {loaded}; available providers: {available}. "
                "Refusing to fall back to CPU silently (check CUDA/cuDNN/TensorRT libraries)."
            )
        self._provider = loaded[0]
        where = str(self.onnx_path)
        self._set_io(
            [ort_tensor_info(a, where) for a in self._session.get_inputs()],
            [ort_tensor_info(a, where) for a in self._session.get_outputs()],
        )
        self._out_names = [t.name for t in self.output_specs]
        self._device = "cuda" if provider in ("cuda", "tensorrt") else "cpu"
        self._device_id = device_id
        self._binding: ort.IOBinding | None = None
        self._out_bufs: dict[str, np.ndarray] = {}
        if io_binding:
            dynamic = [t.describe() for t in self.output_specs if None in t.shape]
            if dynamic:
                raise EngineError(f"io_binding needs static output shapes; dynamic outputs in {self.onnx_path}: "
                                  f"{dynamic}")
            self._binding = self._session.io_binding()
            for t in self.output_specs:
                buf = np.empty(t.concrete_shape(), dtype=t.dtype)
                self._out_bufs[t.name] = buf
                self._binding.bind_output(t.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        return self._session

    def _run(self, feeds: Feeds) -> Outputs:
        try:
            if self._binding is None:
                res = self._session.run(self._out_names, dict(feeds))
                return dict(zip(self._out_names, res))
            b = self._binding
            for name, arr in feeds.items():
                b.bind_cpu_input(name, np.ascontiguousarray(arr))
            self._session.run_with_iobinding(b)
            return {k: v.copy() for k, v in self._out_bufs.items()}
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"onnxruntime failed on {self.onnx_path}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._binding = None
        self._out_bufs = {}


def default_threads() -> int:
    """A sensible intra-op thread count for a small robot computer (cores - 1, at least 1)."""
    return max(1, (os.cpu_count() or 2) - 1)
