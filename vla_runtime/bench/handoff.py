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


def _child_reader(cfg_json: str, n: int, out_path: str, ready, mode: str) -> None:
    """Child process: read until version n (or timeout) and save latencies."""
    cfg = LatentBufferConfig.model_validate_json(cfg_json)
    lat = np.zeros(n + 16, dtype=np.int64)
    count = 0
    reader = open_latent_reader(cfg)
    out = np.zeros(cfg.shape, dtype=cfg.np_dtype)
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
            latent = np.zeros(wcfg.shape, dtype=wcfg.np_dtype)
            time.sleep(0.3)  # let the child attach / connect (CURVE handshake)
            deadline = time.monotonic() + _CHILD_TIMEOUT_S
            v = 0
            while v < n and proc.is_alive() and time.monotonic() < deadline:
                latent.fill(v + 1)
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
) -> dict:
    """Measure write → read latency for each LatentBuffer transport.

    Args:
        n: Writes per transport.
        shape: Latent (K, D), float32.
        transports: Subset of ``inproc``, ``shm``, ``zmq``.
        interval_s: Writer pacing for the cross-process transports.

    Returns:
        ``{transport: {"p50_us", "p99_us", "max_us", "n"}, "shape": [K, D], "n_writes": n}``.
    """
    if n < 2:
        raise ValueError(f"n must be ≥ 2, got {n}")
    results: dict = {"shape": list(shape), "n_writes": n}
    tag = f"{os.getpid()}_{time.monotonic_ns() % 1_000_000}"
    if "inproc" in transports:
        cfg = LatentBufferConfig(transport="inproc", name=f"bench_{tag}", shape=shape)
        w = open_latent_writer(cfg, clock_ns=time.monotonic_ns)
        r = open_latent_reader(cfg)
        out = np.zeros(shape, dtype=np.float32)
        src = np.zeros(shape, dtype=np.float32)
        lat = np.zeros(n, dtype=np.int64)
        for i in range(n):
            w.write(src, 0)
            s = r.read_into(out)
            lat[i] = time.monotonic_ns() - s.write_stamp_ns
        w.close()
        results["inproc"] = _pct_us(lat)
    if "shm" in transports:
        cfg = LatentBufferConfig(transport="shm", name=f"vla_bench_{tag}", shape=shape)
        results["shm"] = _run_cross_process(cfg, cfg, n, interval_s, "spin")
    if "zmq" in transports:
        with tempfile.TemporaryDirectory() as keys:
            spub, ssec = generate_curve_keypair(keys, "server")
            cpub, csec = generate_curve_keypair(keys, "client")
            base = {
                "transport": "zmq",
                "name": f"bench_{tag}",
                "shape": shape,
                "endpoint": f"tcp://127.0.0.1:{_free_port()}",
            }
            wcfg = LatentBufferConfig(**base, server_secret_key=ssec, allowed_client_keys=(cpub,))
            rcfg = LatentBufferConfig(**base, server_public_key=spub, client_secret_key=csec)
            results["zmq"] = _run_cross_process(wcfg, rcfg, n, max(interval_s, 0.001), "wait")
            results["zmq"]["curve"] = True
    return results
