"""Latent hand-off latency: write → read, per LatentBuffer transport.

`bench_handoff` returns a dict; it prints nothing. Latency is
``read_time - write_stamp_ns`` on ``time.monotonic_ns`` (system-wide on Linux,
so comparable across processes on one host):

* ``inproc``: writer and reader in this process and thread (write, then read):
  the cost of the hand-off itself.
* ``shm``: the writer here, the reader in a child started with the ``spawn``
  method that busy-polls `read_into` and records each new version.
* ``zmq``: the writer here, the reader in a spawned child over loopback TCP with
  CURVE on; the child waits on the reader's receive thread.

The writer paces itself (``interval_s``) so a reader can observe most versions;
newest-wins means skipped versions are simply not measured. Results from a
child come back through a ``.npy`` file (no pickle).

``tensors`` measures a latent of several named tensors instead (:func:`kv_cache_layout`: a
π0-style K/V prefix cache of a given size in MB): the reader copies every tensor into its own
arrays, so the latency includes the copy and the CRC of the whole payload.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from vla_runtime.core.latent_buffer import (
    LatentBufferConfig,
    generate_curve_keypair,
    open_latent_reader,
    open_latent_writer,
)

__all__ = ["bench_handoff"]

_CHILD_TIMEOUT_S = 60.0
_IDLE_S = 2.0


def _pct_us(lat_ns: np.ndarray) -> dict[str, float | int | None]:
    if lat_ns.size == 0:
        return {"p50_us": None, "p99_us": None, "max_us": None, "n": 0}
    us = lat_ns.astype(np.float64) / 1e3
    return {
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "max_us": round(float(us.max()), 2),
        "n": int(us.size),
    }


def kv_cache_layout(mb: float, layers: int = 18, head_dim: int = 256) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """A π0-style K/V prefix cache of about ``mb`` MB: per layer a key and a value ``[1, 1, P, head_dim]``
    float32 (Gemma 2B: 18 layers, one KV head, head_dim 256) and the int64 ``prefix_mask [1, P]``."""
    if not mb > 0:
        raise ValueError(f"latent size must be > 0 MB, got {mb}")
    p = max(1, round(mb * 1e6 / (2 * layers * head_dim * 4)))
    return tuple((f"past_{kv}_{i}", (1, 1, p, head_dim), "float32") for i in range(layers)
                 for kv in ("key", "value")) + (("prefix_mask", (1, p), "int64"),)


def _latent_buffers(cfg: LatentBufferConfig) -> np.ndarray | dict[str, np.ndarray]:
    if cfg.is_multi:
        return {t.name: np.zeros(t.shape, dtype=t.dtype) for t in cfg.tensors}
    return np.zeros(cfg.shape, dtype=cfg.np_dtype)


def _fill(latent: np.ndarray | dict[str, np.ndarray], v: int) -> None:
    for a in (latent.values() if isinstance(latent, dict) else (latent,)):
        a.fill(v)


def _child_reader(cfg_json: str, n: int, out_path: str, ready, mode: str) -> None:
    """Child process: read until version n (or timeout) and save latencies."""
    cfg = LatentBufferConfig.model_validate_json(cfg_json)
    lat = np.zeros(n + 16, dtype=np.int64)
    count = 0
    reader = open_latent_reader(cfg)
    out = _latent_buffers(cfg)
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    last = 0
    try:
        if mode == "spin":
            ready.set()
            idle_ns = int(_IDLE_S * 1e9)
            t_last = time.monotonic_ns()
            while last < n and time.monotonic() < deadline:
                s = reader.read_into(out)
                if s is None or s.version == last:
                    if last and time.monotonic_ns() - t_last > idle_ns:
                        break  # the writer stopped
                    continue
                t = t_last = time.monotonic_ns()
                if last and count < lat.size:  # the first version seen is warm-up
                    lat[count] = t - s.write_stamp_ns
                    count += 1
                last = s.version
        else:
            ready.set()
            while last < n and time.monotonic() < deadline:
                s = reader.wait_for_update(last, _IDLE_S)
                if s is None:
                    if last:
                        break  # the writer stopped
                    continue
                t = time.monotonic_ns()
                if last and count < lat.size:
                    lat[count] = t - s.write_stamp_ns
                    count += 1
                last = s.version
    finally:
        reader.close()
        np.save(out_path, lat[:count], allow_pickle=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_cross_process(
    wcfg: LatentBufferConfig, rcfg: LatentBufferConfig, n: int, interval_s: float, mode: str
) -> dict:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "lat.npy")
        writer = open_latent_writer(wcfg, clock_ns=time.monotonic_ns)
        try:
            proc = ctx.Process(
                target=_child_reader, args=(rcfg.model_dump_json(), n, out_path, ready, mode), daemon=True
            )
            proc.start()
            if not ready.wait(_CHILD_TIMEOUT_S):
                proc.kill()
                raise TimeoutError("reader child did not start")
            latent = _latent_buffers(wcfg)
            time.sleep(0.3)  # let the child attach / connect (CURVE handshake)
            deadline = time.monotonic() + _CHILD_TIMEOUT_S
            v = 0
            while v < n and proc.is_alive() and time.monotonic() < deadline:
                _fill(latent, v + 1)
                v = writer.write(latent, time.monotonic_ns())
                # Sleep to the next write, spinning at the end so writes stay regular.
                t_next = time.monotonic() + interval_s
                time.sleep(max(0.0, interval_s - 150e-6))
                while time.monotonic() < t_next:
                    pass
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        finally:
            writer.close()
        lat = np.load(out_path, allow_pickle=False) if Path(out_path).exists() else np.zeros(0, np.int64)
    return _pct_us(lat)


def bench_handoff(
    n: int = 5000,
    shape: tuple[int, int] = (8, 256),
    transports: tuple[str, ...] = ("inproc", "shm", "zmq"),
    interval_s: float = 0.0005,
    tensors: tuple[tuple[str, tuple[int, ...], str], ...] | None = None,
) -> dict:
    """Measure write → read latency for each LatentBuffer transport.

    Args:
        n: Writes per transport.
        shape: Latent (K, D), float32.
        transports: Subset of ``inproc``, ``shm``, ``zmq``.
        interval_s: Writer pacing for the cross-process transports.
        tensors: A latent of several named tensors ``(name, shape, dtype)`` instead of ``shape``.

    Returns:
        ``{transport: {"p50_us", "p99_us", "max_us", "n"}, "shape": [K, D], "n_writes": n}`` (with
        ``tensors``: ``"tensors"`` and ``"mb"`` instead of ``"shape"``).
    """
    if n < 2:
        raise ValueError(f"n must be ≥ 2, got {n}")

    def config(**kw) -> LatentBufferConfig:
        if tensors:
            return LatentBufferConfig(**kw).with_tensors(tensors)
        return LatentBufferConfig(**kw, shape=shape)

    probe = config(transport="inproc", name="probe")
    results: dict = ({"tensors": len(tensors), "mb": round(probe.nbytes / 1e6, 2)} if tensors
                     else {"shape": list(shape)})
    results["n_writes"] = n
    tag = f"{os.getpid()}_{time.monotonic_ns() % 1_000_000}"
    if "inproc" in transports:
        cfg = config(transport="inproc", name=f"bench_{tag}")
        w = open_latent_writer(cfg, clock_ns=time.monotonic_ns)
        r = open_latent_reader(cfg)
        out = _latent_buffers(cfg)
        src = _latent_buffers(cfg)
        lat = np.zeros(n, dtype=np.int64)
        for i in range(n):
            w.write(src, 0)
            s = r.read_into(out)
            lat[i] = time.monotonic_ns() - s.write_stamp_ns
        w.close()
        results["inproc"] = _pct_us(lat)
    if "shm" in transports:
        cfg = config(transport="shm", name=f"vla_bench_{tag}")
        results["shm"] = _run_cross_process(cfg, cfg, n, interval_s, "spin")
    if "zmq" in transports:
        with tempfile.TemporaryDirectory() as keys:
            spub, ssec = generate_curve_keypair(keys, "server")
            cpub, csec = generate_curve_keypair(keys, "client")
            base = {
                "transport": "zmq",
                "name": f"bench_{tag}",
                "endpoint": f"tcp://127.0.0.1:{_free_port()}",
            }
            wcfg = config(**base, server_secret_key=ssec, allowed_client_keys=(cpub,))
            rcfg = config(**base, server_public_key=spub, client_secret_key=csec)
            results["zmq"] = _run_cross_process(wcfg, rcfg, n, max(interval_s, 0.001), "wait")
            results["zmq"]["curve"] = True
    return results
