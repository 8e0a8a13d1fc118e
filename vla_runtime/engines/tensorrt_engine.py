"""Native TensorRT backend: build (FP16/INT8) from ONNX, cache on disk, run on device memory.

``tensorrt`` and the CUDA runtime binding (``cuda-python``) are imported only
inside functions, so this module imports fine on machines without them; building
an engine there raises :class:`EngineError` saying what to install.

Engines are cached under ``<cache_dir>/<onnx stem>-<key>.engine`` where the key
hashes the GPU name, the TensorRT version, the ONNX file (and its external-data
side files) and the precision flags, so a cached engine is never reused on a
different GPU, TensorRT release or model.

Dynamic dims are fixed to 1 by a single optimisation profile (min = opt = max);
feeds must match that shape.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vla_runtime.engines.base import Engine, EngineError, Feeds, Outputs, TensorInfo

INSTALL_HINT = (
    "native TensorRT needs the `tensorrt` Python package (pip install tensorrt-cu12, or JetPack's "
    "python3-libnvinfer on Jetson) and the CUDA runtime binding `cuda-python` (pip install cuda-python), "
    "plus an NVIDIA GPU and driver"
)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineError(f"TensorRT backend unavailable: cannot import tensorrt ({e}); {INSTALL_HINT}") from e
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as e:
            raise EngineError(f"TensorRT backend unavailable: cannot import the CUDA runtime binding ({e}); "
                              f"{INSTALL_HINT}") from e
    return cudart


def _check(cudart: Any, result: Any, what: str) -> Any:
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise EngineError(f"CUDA call {what} failed: {err}")
    if isinstance(result, tuple):
        return result[1] if len(result) == 2 else result[1:]
    return None


def file_hash(onnx_path: Path) -> str:
    """sha256 of the ONNX file and any external-data side files next to it."""
    h = hashlib.sha256()
    files = [onnx_path, *sorted(onnx_path.parent.glob(onnx_path.name + ".data"))]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_key(gpu_name: str, trt_version: str, onnx_sha256: str, precision: str) -> str:
    """Cache key: readable GPU/TensorRT/precision prefix plus a hash of all four."""
    digest = hashlib.sha256(f"{gpu_name}|{trt_version}|{onnx_sha256}|{precision}".encode()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")
    return f"{gpu}-trt{trt_version}-{precision}-{digest}"


def _make_calibrator(trt: Any, cudart: Any, calib_dir: Path, inputs: list[TensorInfo], cache_file: Path) -> Any:
    files = sorted(calib_dir.glob("*.npz"))
    if not files:
        raise EngineError(f"INT8 calibration needs .npz feed files in {calib_dir}, found none")

    class _NpzCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._files = iter(files)
            self._dev: dict[str, int] = {}
            for t in inputs:
                nbytes = int(np.prod(t.concrete_shape())) * np.dtype(t.dtype).itemsize
                self._dev[t.name] = _check(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            f = next(self._files, None)
            if f is None:
                return None
            with np.load(f, allow_pickle=False) as data:
                ptrs = []
                for n in names:
                    if n not in data:
                        raise EngineError(f"calibration file {f} lacks input {n!r}")
                    arr = np.ascontiguousarray(data[n])
                    _check(
                        cudart,
                        cudart.cudaMemcpy(self._dev[n], arr.ctypes.data, arr.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                        "cudaMemcpy",
                    )
                    ptrs.append(self._dev[n])
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.write_bytes(bytes(cache))

    return _NpzCalibrator()


class TensorRTEngine(Engine):
    """Native TensorRT engine built from an ONNX file and cached on disk.

    Args:
        onnx_path: The graph.
        fp16: Allow FP16 kernels.
        int8: Enable INT8 (needs ``calibration_dir``).
        calibration_dir: Directory of ``.npz`` files, one feed dict each (loaded without pickle).
        cache_dir: Engine cache directory (default ``.trt_cache`` beside the ONNX file).
        device_id: GPU index.
        workspace_mb: Builder workspace limit.
        latency_window: Latency ring-buffer size.

    Raises:
        EngineError: TensorRT or the CUDA binding is missing (with what to install),
            the ONNX file does not parse, or the build fails.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        fp16: bool = True,
        int8: bool = False,
        calibration_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        device_id: int = 0,
        workspace_mb: int = 1024,
        latency_window: int = 1000,
    ) -> None:
        super().__init__(latency_window)
        self.onnx_path = Path(onnx_path)
        self._stream: Any = None
        self._dev: dict[str, int] = {}
        trt = _import_tensorrt()
        cudart = _import_cudart()
        self._trt, self._cudart = trt, cudart
        if not self.onnx_path.is_file():
            raise EngineError(f"ONNX file not found: {self.onnx_path}")
        if int8 and calibration_dir is None:
            raise EngineError("int8=True needs calibration_dir (a directory of .npz feed files)")
        _check(cudart, cudart.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        props = _check(cudart, cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        gpu_name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name,
                                                                                    bytes) else str(props.name)
        self._gpu_name = gpu_name
        precision = "int8" if int8 else ("fp16" if fp16 else "fp32")
        cache = Path(cache_dir).expanduser() if cache_dir else self.onnx_path.parent / ".trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        key = cache_key(gpu_name, trt.__version__, file_hash(self.onnx_path), precision)
        self.engine_path = cache / f"{self.onnx_path.stem}-{key}.engine"
        self._logger = trt.Logger(trt.Logger.WARNING)
        if self.engine_path.is_file():
            blob = self.engine_path.read_bytes()
            self.cache_hit = True
        else:
            blob = self._build(trt, cudart, fp16, int8, calibration_dir, workspace_mb, cache)
            tmp = self.engine_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, self.engine_path)
            self.cache_hit = False
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.engine_path} (delete it to rebuild)")
        self._context = self._engine.create_execution_context()
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            info = TensorInfo(name, tuple(None if d < 0 else d for d in shape),
                              np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(info)
                if None in info.shape:
                    self._context.set_input_shape(name, info.concrete_shape())
            else:
                outputs.append(info)
        self._set_io(inputs, outputs)
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._host_out: dict[str, np.ndarray] = {}
        for t in (*inputs, *outputs):
            shape = tuple(self._context.get_tensor_shape(t.name)) if t in outputs else t.concrete_shape()
            nbytes = max(1, int(np.prod(shape))) * t.dtype.itemsize
            ptr = _check(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._dev[t.name] = ptr
            self._context.set_tensor_address(t.name, ptr)
            if t in outputs:
                self._host_out[t.name] = np.empty(shape, dtype=t.dtype)

    def _build(self, trt: Any, cudart: Any, fp16: bool, int8: bool, calib: str | Path | None, workspace_mb: int,
               cache: Path) -> bytes:
        builder = trt.Builder(self._logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {self.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        profile = builder.create_optimization_profile()
        inputs: list[TensorInfo] = []
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = tuple(int(d) for d in t.shape)
            info = TensorInfo(t.name, tuple(None if d < 0 else d for d in shape), np.dtype(trt.nptype(t.dtype)))
            inputs.append(info)
            if None in info.shape:
                c = info.concrete_shape()
                profile.set_shape(t.name, c, c, c)
        config.add_optimization_profile(profile)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if int8:
            assert calib is not None
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _make_calibrator(
                trt, cudart, Path(calib), inputs, cache / f"{self.onnx_path.stem}.calib"
            )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT failed to build an engine from {self.onnx_path} (see the TensorRT log above)")
        return bytes(serialized)

    @property
    def provider(self) -> str:
        return f"tensorrt:{self._gpu_name}"

    def _run(self, feeds: Feeds) -> Outputs:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host buffers must outlive the async copies
        for name, arr in feeds.items():
            a = np.ascontiguousarray(arr)
            keep.append(a)
            _check(cudart, cudart.cudaMemcpyAsync(self._dev[name], a.ctypes.data, a.nbytes, h2d, self._stream),
                   f"copy {name} to device")
        if not self._context.execute_async_v3(self._stream):
            raise EngineError(f"TensorRT execution failed for {self.onnx_path}")
        for name, buf in self._host_out.items():
            _check(cudart, cudart.cudaMemcpyAsync(buf.ctypes.data, self._dev[name], buf.nbytes, d2h, self._stream),
                   f"copy {name} to host")
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        del keep
        return {k: v.copy() for k, v in self._host_out.items()}

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr in self._dev.values():
            cudart.cudaFree(ptr)
        self._dev = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may already be gone
            pass
