"""Latents of several named tensors (a K/V prefix cache and its mask, MBs) through every transport:
one version and one stamp for all of them, torn reads impossible, other layouts refused by name."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest

from vla_runtime.core.latent_buffer import (
    LatentBufferConfig,
    LayoutMismatchError,
    generate_curve_keypair,
    open_latent_reader,
    open_latent_writer,
)

#: A small π0-like cache: two layers of keys and values plus the int64 prefix mask.
SMALL = (("past_key_0", (1, 1, 56, 8), "float32"), ("past_value_0", (1, 1, 56, 8), "float32"),
         ("past_key_1", (1, 1, 56, 8), "float32"), ("past_value_1", (1, 1, 56, 8), "float32"),
         ("prefix_mask", (1, 56), "int64"))
#: ~4.2 MB: 8 layers of [1, 1, 816, 80] keys and values (a real π0 cache is ~30 MB) and an odd-sized mask.
BIG = tuple((f"past_{kv}_{i}", (1, 1, 816, 80), "float32") for i in range(8) for kv in ("key", "value")) + (
    ("prefix_mask", (1, 815), "int64"),)


def _uname(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def cfg_for(layout, **kw) -> LatentBufferConfig:
    return LatentBufferConfig(**kw).with_tensors(layout)


def tensors(layout, v: float) -> dict[str, np.ndarray]:
    return {n: np.full(shape, v, dtype=dt) for n, shape, dt in layout}


def consistent(sample, layout) -> tuple[bool, int]:
    """Every element of every tensor holds the sample's version."""
    v = sample.version
    ok = set(sample.tensors) == {n for n, _, _ in layout}
    ok = ok and all(np.all(sample.tensors[n] == v) for n, _, _ in layout)
    return bool(ok), v


def test_config_sizes_and_refusals() -> None:
    cfg = cfg_for(SMALL, transport="inproc", name="x")
    assert cfg.is_multi and cfg.nbytes == 4 * 56 * 8 * 4 + 56 * 8
    big = cfg_for(BIG, transport="shm", name="x")
    assert big.nbytes > 4_000_000
    with pytest.raises(ValueError, match=r"not both \(got tensors and \['shape'\]\)"):
        LatentBufferConfig(shape=(2, 2), tensors=({"name": "a", "shape": (2,)},))
    with pytest.raises(ValueError, match="duplicate names \\['a'\\]"):
        LatentBufferConfig(tensors=({"name": "a", "shape": (2,)}, {"name": "a", "shape": (3,)}))
    with pytest.raises(ValueError, match="tensor shape must be non-empty with dims >= 1"):
        LatentBufferConfig(tensors=({"name": "a", "shape": (0, 2)},))
    with pytest.raises(ValueError, match="max_message_bytes = 1000 cannot carry this latent"):
        LatentBufferConfig(transport="zmq", curve=False, max_message_bytes=1000,
                           tensors=({"name": "a", "shape": (1000,)},))
    # The runtime config's 1 MiB default is raised to fit a bigger latent.
    z = LatentBufferConfig(transport="zmq", curve=False, max_message_bytes=1 << 20).with_tensors(BIG)
    assert z.max_message_bytes == z.nbytes + 1024


def test_inproc_round_trip_one_version_for_all_tensors() -> None:
    cfg = cfg_for(SMALL, transport="inproc", name=_uname("lt"))
    w, r = open_latent_writer(cfg), open_latent_reader(cfg)
    try:
        assert r.read() is None
        assert w.write(tensors(SMALL, 1.0), obs_stamp_ns=11) == 1
        s = r.read()
        assert consistent(s, SMALL) == (True, 1) and s.obs_stamp_ns == 11
        assert s.tensors["prefix_mask"].dtype == np.int64 and not s.tensors["past_key_0"].flags.writeable
        out = {n: np.zeros(sh, dt) for n, sh, dt in SMALL}
        w.write(tensors(SMALL, 2.0), obs_stamp_ns=12)
        s2 = r.read_into(out)
        assert s2.tensors is out and consistent(s2, SMALL) == (True, 2) and s2.obs_stamp_ns == 12
        bad = dict(tensors(SMALL, 3.0))
        bad.pop("prefix_mask")
        with pytest.raises(ValueError, match="missing \\['prefix_mask'\\]"):
            w.write(bad, 0)
        with pytest.raises(ValueError, match="latent tensor 'past_key_0' must have shape"):
            w.write({**tensors(SMALL, 3.0), "past_key_0": np.zeros((1, 56, 8))}, 0)
        with pytest.raises(ValueError, match="'past_value_1' contains non-finite"):
            w.write({**tensors(SMALL, 3.0), "past_value_1": np.full((1, 1, 56, 8), np.nan)}, 0)
        with pytest.raises(ValueError, match="write a mapping name → array"):
            w.write(np.zeros((8, 256)), 0)
        with pytest.raises(ValueError, match=r"out\['prefix_mask'\] must be a writable C-contiguous"):
            r.read_into({**out, "prefix_mask": np.zeros((1, 56), np.float32)})
        with pytest.raises(LayoutMismatchError, match="tensors past_key_0"):
            open_latent_reader(LatentBufferConfig(transport="inproc", name=cfg.name, shape=(2, 2)))
        assert w.version == 2
    finally:
        w.close()


def _shm_child(cfg_json: str, layout, result_path: str, ready, go, last_version: int) -> None:
    cfg = LatentBufferConfig.model_validate_json(cfg_json)
    r = open_latent_reader(cfg)
    out = {n: np.zeros(sh, dt) for n, sh, dt in layout}
    ready.set()
    go.wait(20.0)
    n = bad = last = 0
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        s = r.read_into(out) if n % 2 else r.read()
        n += 1
        if s is None or s.version == last:
            continue
        ok, v = consistent(s, layout)
        bad += (not ok) or v < last
        last = v
        if v >= last_version:
            break
    r.close()
    np.save(result_path, np.array([n, bad, last], dtype=np.int64), allow_pickle=False)


@pytest.mark.parametrize(("layout", "writes"), [(SMALL, 5000), (BIG, 150)], ids=["small", "4MB"])
def test_shm_readers_in_other_processes_never_see_a_torn_multi_tensor_latent(tmp_path: Path, layout,
                                                                              writes: int) -> None:
    cfg = cfg_for(layout, transport="shm", name=_uname("vla_lt"))
    w = open_latent_writer(cfg)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = []
    try:
        for i in range(2):
            ready = ctx.Event()
            p = ctx.Process(target=_shm_child, args=(cfg.model_dump_json(), layout, str(tmp_path / f"r{i}.npy"), ready,
                                                     go, writes), daemon=True)
            p.start()
            procs.append((p, ready))
        for _, ready in procs:
            assert ready.wait(30.0), "reader child did not start"
        go.set()
        buf = tensors(layout, 0.0)
        for v in range(1, writes + 1):
            for a in buf.values():
                a.fill(v)
            w.write(buf, obs_stamp_ns=v)
        for p, _ in procs:
            p.join(60.0)
            assert p.exitcode == 0
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.kill()
        w.close()
    for i in range(2):
        n, bad, last = np.load(tmp_path / f"r{i}.npy", allow_pickle=False)
        assert bad == 0, f"{bad} torn or out-of-order reads"
        assert last == writes and n > 10


def test_shm_reader_of_another_layout_is_refused_by_name() -> None:
    name = _uname("vla_lt")
    w = open_latent_writer(cfg_for(SMALL, transport="shm", name=name))
    try:
        w.write(tensors(SMALL, 1.0), 1)
        other = SMALL[:-1] + (("prefix_mask", (1, 57), "int64"),)
        with pytest.raises(LayoutMismatchError, match=r"holds 5 tensors in \d+ bytes .* configured for 5 tensors"):
            open_latent_reader(cfg_for(other, transport="shm", name=name))
        with pytest.raises(LayoutMismatchError, match="configured for shape \\(8, 256\\) dtype float32"):
            open_latent_reader(LatentBufferConfig(transport="shm", name=name))
    finally:
        w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zmq_curve_carries_a_multi_mb_latent_and_refuses_other_layouts(tmp_path: Path) -> None:
    spub, ssec = generate_curve_keypair(tmp_path / "s", "server")
    cpub, csec = generate_curve_keypair(tmp_path / "c", "client")
    base = LatentBufferConfig(transport="zmq", name="zt", endpoint=f"tcp://127.0.0.1:{_free_port()}",
                              max_message_bytes=1 << 20)
    wcfg = base.model_copy(update={"server_secret_key": ssec, "allowed_client_keys": (cpub,)}).with_tensors(BIG)
    rcfg = base.model_copy(update={"server_public_key": spub, "client_secret_key": csec}).with_tensors(BIG)
    w, r = open_latent_writer(wcfg), open_latent_reader(rcfg)
    try:
        got = None
        deadline = time.monotonic() + 10.0
        while got is None and time.monotonic() < deadline:
            w.write(tensors(BIG, 3.0), obs_stamp_ns=5)
            got = r.wait_for_update(0, 0.2)
        assert got is not None, r.stats
        ok, v = consistent(got, BIG)
        assert v >= 1 and all(np.all(got.tensors[n] == 3.0) for n, _, _ in BIG) and got.obs_stamp_ns == 5
        header = {"fmt": "vla_latent/2", "epoch": 1, "version": 99, "obs_stamp_ns": 0, "write_stamp_ns": 0,
                  "dtype": "multi"}
        pk = rcfg.packing
        cases = [
            ("rejected_shape", {**header, "shape": [len(pk.names), pk.nbytes], "layout": pk.fingerprint + 1,
                                "data": b"\0" * pk.nbytes}),
            ("rejected_malformed", {**header, "shape": [len(pk.names), pk.nbytes], "layout": pk.fingerprint,
                                    "data": b"\0" * 8}),
            ("rejected_dtype", {**header, "fmt": "vla_latent/1", "dtype": "<f4", "shape": [2, 3],
                                "data": b"\0" * 24}),
        ]
        for key, msg in cases:
            before = r.stats[key]
            w.send_raw(msgpack.packb(msg))
            deadline = time.monotonic() + 3.0
            while r.stats[key] == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.stats[key] > before, (key, r.stats)
        assert r.read().version == got.version  # none of them replaced the good latent
    finally:
        r.close()
        w.close()
