"""Deployment helpers behind ``vla-runtime build-engine`` and ``vla-runtime keys``.

* :func:`build_engines` builds (or finds in the cache) the native TensorRT engine of each ONNX
  graph of a model package, on the machine that will run it.
* :func:`trt_ep_options` gives the ONNX Runtime TensorRT execution-provider options for an
  engine config (option names as documented for ORT's ``TensorrtExecutionProvider``).
* :func:`write_keys` creates the CURVE key pairs of the remote slow path.

See docs/deployment.md.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vla_runtime.engines.base import EngineError, coerce_engine_config

__all__ = ["build_engines", "trt_ep_options", "write_keys", "KeyExistsError"]

PARTS = ("slow", "fast")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---------------------------------------------------------------- TensorRT engines
def _precision(fp16: bool, int8: bool) -> str:
    return "int8" if int8 else ("fp16" if fp16 else "fp32")


def build_engines(
    model_dir: str | os.PathLike,
    fp16: bool,
    int8: bool,
    calib: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    parts: Iterable[str] = PARTS,
    progress: Callable[[str], Any] = print,
) -> dict[str, dict[str, Any]]:
    """Build the native TensorRT engine of each ONNX graph of a model package.

    An engine already in the cache (same GPU name, TensorRT version, ONNX bytes and precision)
    is reused, not rebuilt. Run this on the target machine: an engine is only valid on the GPU
    and TensorRT release it was built with.

    Args:
        model_dir: The package directory (``models/<name>``) or its ``model.yaml``.
        fp16: Allow FP16 kernels.
        int8: Enable INT8, calibrated from ``calib``.
        calib: Directory of ``.npz`` feed dicts (one per calibration sample; loaded without
            pickle). Required with ``int8``.
        cache_dir: Engine cache directory (None: ``.trt_cache`` beside each ONNX file).
        parts: Which graphs to build: any of ``"slow"``, ``"fast"``.
        progress: Called with one human-readable line per step.

    Returns:
        ``{part: {"onnx": Path, "engine": Path, "cache_key": str, "precision": str,
        "cache_hit": bool, "seconds": float}}``.

    Raises:
        EngineError: TensorRT (or the CUDA binding) is not installed, the package or a graph is
            missing or invalid, the arguments do not fit together, or a build fails. The message
            says which and what to do.
    """
    from vla_runtime.core.model_spec import load_model_spec
    from vla_runtime.engines.model_package import ModelPackageError, resolve_onnx

    wanted = tuple(parts)
    bad = [p for p in wanted if p not in PARTS]
    if bad or not wanted:
        raise EngineError(f"parts must be a non-empty subset of {list(PARTS)}, got {list(wanted)}")
    if int8 and calib is None:
        raise EngineError("--int8 needs --calib DIR (a directory of .npz feed dicts, one per sample)")
    if calib is not None:
        calib_dir = Path(calib).expanduser()
        if not calib_dir.is_dir():
            raise EngineError(f"calibration directory not found: {calib_dir}")
        if int8 and not any(calib_dir.glob("*.npz")):
            raise EngineError(f"calibration directory {calib_dir} holds no .npz feed files")
    pkg = Path(model_dir).expanduser()
    if pkg.is_file() and pkg.name.endswith((".yaml", ".yml")):
        pkg = pkg.parent
    if not pkg.is_dir():
        raise EngineError(f"model package directory not found: {pkg}")
    try:
        spec = load_model_spec(pkg)
        onnx_paths = {p: resolve_onnx(pkg, getattr(spec, p).onnx) for p in wanted}
    except (FileNotFoundError, ValueError, ModelPackageError) as e:
        raise EngineError(f"cannot read model package {pkg}: {e}") from e
    for part, path in onnx_paths.items():
        if not path.is_file():
            raise EngineError(f"ONNX file not found: {path} (declared as {part}.onnx in {pkg / 'model.yaml'})")

    from vla_runtime.engines.tensorrt_engine import TensorRTEngine

    precision = _precision(fp16, int8)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    results: dict[str, dict[str, Any]] = {}
    for part in wanted:
        onnx_path = onnx_paths[part]
        where = cache if cache is not None else onnx_path.parent / ".trt_cache"
        progress(f"{part}: {onnx_path} → TensorRT {precision} engine (cache {where}) ...")
        t0 = time.monotonic()
        try:
            engine = TensorRTEngine(
                onnx_path,
                fp16=fp16,
                int8=int8,
                calibration_dir=Path(calib).expanduser() if calib is not None else None,
                cache_dir=cache,
            )
        except EngineError as e:
            raise EngineError(f"cannot build the {part} engine from {onnx_path}: {e}") from e
        try:
            seconds = time.monotonic() - t0
            engine_path = Path(engine.engine_path)
            key = engine_path.stem.removeprefix(f"{onnx_path.stem}-")
            hit = bool(getattr(engine, "cache_hit", False))
        finally:
            engine.close()
        progress(f"{part}: {'cache hit' if hit else f'built in {seconds:.1f} s'}: {engine_path}")
        results[part] = {
            "onnx": onnx_path,
            "engine": engine_path,
            "cache_key": key,
            "precision": precision,
            "cache_hit": hit,
            "seconds": seconds,
        }
    return results


def trt_ep_options(engine_cfg: Any, onnx_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """ONNX Runtime TensorRT execution-provider options for an engine config.

    Engine and timing caches are always on, both in ``trt_cache_dir`` (default: ``.trt_cache``
    beside ``onnx_path``). ORT names its cached engines by a hash of the graph plus the GPU's
    compute capability, but not the TensorRT version: clear the directory after a TensorRT
    upgrade (the native backend, :func:`build_engines`, keys its cache by TensorRT version).

    Args:
        engine_cfg: ``model.slow_engine`` / ``model.fast_engine`` of a runtime config, or anything
            :func:`vla_runtime.engines.coerce_engine_config` accepts.
        onnx_path: The graph; needed for the default cache directory and, with ``int8``, for the
            name of the TensorRT calibration cache :func:`build_engines` writes
            (``<onnx stem>.calib`` in the cache directory).

    Returns:
        The provider options dict for ``("TensorrtExecutionProvider", options)``.

    Raises:
        EngineError: The config is invalid, or no cache directory can be derived.
    """
    cfg = coerce_engine_config(engine_cfg)
    if cfg.trt_cache_dir:
        cache = Path(cfg.trt_cache_dir).expanduser()
    elif onnx_path is not None:
        cache = Path(onnx_path).parent / ".trt_cache"
    else:
        raise EngineError("trt_ep_options needs engine_cfg.trt_cache_dir or onnx_path for the engine cache")
    opts: dict[str, Any] = {
        "device_id": cfg.device_id,
        "trt_fp16_enable": bool(cfg.fp16),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    if cfg.int8:
        if onnx_path is None:
            raise EngineError("int8 with the TensorRT EP needs onnx_path to name its calibration table")
        opts["trt_int8_enable"] = True
        # The table TensorRT's own calibrator wrote during `vla-runtime build-engine --int8`.
        opts["trt_int8_calibration_table_name"] = f"{Path(onnx_path).stem}.calib"
        opts["trt_int8_use_native_calibration_table"] = True
    return opts


# ------------------------------------------------------------------------ CURVE keys
class KeyExistsError(FileExistsError):
    """A key file to be written exists already (pass ``force=True`` to replace it)."""


@contextmanager
def _private_umask():
    """Files created inside are never readable by group/other, not even for an instant."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def write_keys(directory: str | os.PathLike, names: Sequence[str], force: bool = False) -> list[Path]:
    """Create one CURVE key pair per name: ``<name>.key`` (public) and ``<name>.key_secret``.

    The directory is created with mode 0700 (an existing directory keeps its mode); every key
    file gets mode 0600. Nothing is written unless every name is free (or ``force``).

    Args:
        directory: Where to write the keys (``keys/``).
        names: Base names, e.g. ``["slow_path", "fast_path"]``: letters, digits, ``_ . -``.
        force: Replace existing key files.

    Returns:
        The written files: ``<name>.key``, ``<name>.key_secret`` for each name, in order.

    Raises:
        ValueError: A name is empty, repeated or has other characters.
        KeyExistsError: A key file exists and ``force`` is False (all such files named).
    """
    from vla_runtime.core.latent_buffer import generate_curve_keypair

    names = list(names)
    if not names:
        raise ValueError("write_keys needs at least one key name")
    for n in names:
        if not isinstance(n, str) or not _KEY_NAME.match(n) or n in (".", ".."):
            raise ValueError(f"key name must be letters, digits, '_', '.' or '-', got {n!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"key names listed twice: {dupes}")
    d = Path(directory).expanduser()
    if d.exists() and not d.is_dir():
        raise ValueError(f"{d} exists and is not a directory")
    targets = [d / f"{n}{suffix}" for n in names for suffix in (".key", ".key_secret")]
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        raise KeyExistsError(
            f"refusing to overwrite existing key file(s): {', '.join(str(p) for p in existing)} "
            "(pass --force to replace them; peers holding the old public keys must then get the new ones)"
        )
    with _private_umask():
        if not d.exists():
            d.mkdir(parents=True, mode=0o700)
            os.chmod(d, 0o700)
        for p in existing:
            p.unlink()
        written: list[Path] = []
        for n in names:
            pub, sec = generate_curve_keypair(d, n)
            written += [Path(pub), Path(sec)]
    return written
