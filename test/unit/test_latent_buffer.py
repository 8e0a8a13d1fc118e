"""LatentBuffer: torn-read freedom, layout checks, stale segments, zmq + CURVE."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
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

SHAPE = (8, 64)


def _uname(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _wait_until(pred: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _check_sample(sample, last: int) -> tuple[int, bool]:
    """(version, ok): every element equals the version; versions never go back."""
    v = sample.version
    arr = sample.latent
    ok = bool(np.all(arr == arr.flat[0])) and float(arr.flat[0]) == float(v) and v >= last
    return v, ok


# ------------------------------------------------------------------ inproc
def test_inproc_concurrent_readers_never_see_torn_or_old_latents() -> None:
    cfg = LatentBufferConfig(transport="inproc", name=_uname("inproc"), shape=SHAPE)
    writer = open_latent_writer(cfg)
    readers = [open_latent_reader(cfg) for _ in range(3)]
    assert readers[0].read() is None
    stop = threading.Event()
    failures: list[str] = []
    seen: list[int] = []

    def reader_main(r, use_into: bool) -> None:
        out = np.zeros(SHAPE, dtype=np.float32)
        last, n = 0, 0
        while not stop.is_set():
            s = r.read_into(out) if use_into else r.read()
            if s is None:
                continue
            last, ok = _check_sample(s, last)
            n += 1
            if not ok:
                failures.append(f"torn/out-of-order at version {s.version}")
                return
        seen.append(n)

    threads = [
        threading.Thread(target=reader_main, args=(r, i % 2 == 0), daemon=True) for i, r in enumerate(readers)
    ]
    for t in threads:
        t.start()
    latent = np.zeros(SHAPE, dtype=np.float32)
    for v in range(1, 3001):
        latent.fill(v)
        assert writer.write(latent, obs_stamp_ns=v) == v
    stop.set()
    for t in threads:
        t.join(5.0)
    assert not failures, failures
    assert len(seen) == 3 and all(n > 0 for n in seen)
    s = readers[0].read()
    assert s.version == 3000 and s.obs_stamp_ns == 3000
    assert s.age_s(s.obs_stamp_ns + 2_000_000_000) == pytest.approx(2.0)
    writer.close()


def test_inproc_shape_mismatch_refused() -> None:
    name = _uname("inproc")
    w = open_latent_writer(LatentBufferConfig(transport="inproc", name=name, shape=(4, 4)))
    with pytest.raises(LayoutMismatchError, match=r"\(4, 4\).*\(4, 5\)"):
        open_latent_reader(LatentBufferConfig(transport="inproc", name=name, shape=(4, 5)))
    with pytest.raises(ValueError, match=r"latent shape must be \(4, 4\), got \(2, 2\)"):
        w.write(np.zeros((2, 2)), 0)
    w.close()


def test_config_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="object"):
        LatentBufferConfig(dtype="object")
    with pytest.raises(ValueError, match=r"got \(0, 4\)"):
        LatentBufferConfig(shape=(0, 4))
    with pytest.raises(ValueError, match="0.0.0.0"):
        LatentBufferConfig(transport="zmq", endpoint="tcp://0.0.0.0:5555", curve=False)
    assert LatentBufferConfig(transport="zmq").endpoint.startswith("tcp://127.0.0.1:")


# --------------------------------------------------------------------- shm
def _shm_reader_child(cfg_json: str, result_path: str, ready, go) -> None:
    cfg = LatentBufferConfig.model_validate_json(cfg_json)
    r = open_latent_reader(cfg)
    out = np.zeros(cfg.shape, dtype=np.float32)
    ready.set()
    go.wait(10.0)
    last, n, bad = 0, 0, 0
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        s = r.read_into(out) if n % 2 else r.read()
        n += 1
        if s is None:
            continue
        last, ok = _check_sample(s, last)
        bad += not ok
        if s.version >= 20000:
            break
    r.close()
    np.save(result_path, np.array([n, bad, last], dtype=np.int64), allow_pickle=False)


def test_shm_processes_never_see_torn_or_old_latents(tmp_path: Path) -> None:
    cfg = LatentBufferConfig(transport="shm", name=_uname("vla_t"), shape=SHAPE)
    writer = open_latent_writer(cfg)
    ctx = mp.get_context("spawn")
    procs, paths, readies = [], [], []
    go = ctx.Event()
    for i in range(2):
        ready = ctx.Event()
        path = str(tmp_path / f"r{i}.npy")
        p = ctx.Process(target=_shm_reader_child, args=(cfg.model_dump_json(), path, ready, go), daemon=True)
        p.start()
        procs.append(p)
        paths.append(path)
        readies.append(ready)
    try:
        for ready in readies:
            assert ready.wait(20.0), "reader child did not start"
        go.set()
        latent = np.zeros(SHAPE, dtype=np.float32)
        for v in range(1, 20001):
            latent.fill(v)
            writer.write(latent, obs_stamp_ns=v)
        for p in procs:
            p.join(15.0)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        writer.close()
    for path in paths:
        n, bad, last = np.load(path, allow_pickle=False)
        assert bad == 0, f"{bad} torn or out-of-order reads"
        assert last == 20000 and n > 100


def test_shm_reader_refuses_other_shape_and_dtype() -> None:
    name = _uname("vla_t")
    w = open_latent_writer(LatentBufferConfig(transport="shm", name=name, shape=(8, 4)))
    try:
        with pytest.raises(LayoutMismatchError, match=r"shape \(8, 4\).*float32.*shape \(8, 5\)"):
            open_latent_reader(LatentBufferConfig(transport="shm", name=name, shape=(8, 5)))
        with pytest.raises(LayoutMismatchError, match=r"dtype float32.*dtype float16"):
            open_latent_reader(LatentBufferConfig(transport="shm", name=name, shape=(8, 4), dtype="float16"))
    finally:
        w.close()


def test_shm_reader_before_writer_and_reader_does_not_unlink() -> None:
    cfg = LatentBufferConfig(transport="shm", name=_uname("vla_t"), shape=(2, 3))
    r = open_latent_reader(cfg)  # no segment yet: attaches lazily
    assert r.read() is None
    w = open_latent_writer(cfg)
    w.write(np.full((2, 3), 7.0), obs_stamp_ns=11)
    r._next_attach = 0.0  # skip the attach back-off
    s = r.read()
    assert s is not None and s.version == 1 and s.obs_stamp_ns == 11 and np.all(s.latent == 7.0)
    r.close()
    assert Path(f"/dev/shm/{cfg.name}").exists()  # the reader never unlinks
    w.close()
    assert not Path(f"/dev/shm/{cfg.name}").exists()


def test_shm_writer_over_stale_segment() -> None:
    from multiprocessing import shared_memory

    cfg = LatentBufferConfig(transport="shm", name=_uname("vla_t"), shape=(2, 3))
    # 1) Junk segment of another size under the same name (e.g. an old layout).
    junk = shared_memory.SharedMemory(name=cfg.name, create=True, size=64)
    junk.close()
    w1 = open_latent_writer(cfg)
    assert w1.write(np.ones((2, 3)), 1) == 1
    # 2) A live writer's segment is refused.
    with pytest.raises(FileExistsError, match="live writer"):
        open_latent_writer(cfg)
    # 3) Crashed writer (pid gone): reused in place, versions continue.
    struct.pack_into("<Q", w1._shm.buf, 56, 0x7FFFFFF0)
    r = open_latent_reader(cfg)
    assert r.read().version == 1
    w2 = open_latent_writer(cfg)
    assert w2.write(np.full((2, 3), 2.0), 2) == 2
    s = r.read()
    assert s.version == 2 and np.all(s.latent == 2.0)
    r.close()
    w2.close()
    w1.close()  # already unlinked by w2: must not raise


# --------------------------------------------------------------------- zmq
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def curve_setup(tmp_path: Path):
    spub, ssec = generate_curve_keypair(tmp_path / "server", "server")
    cpub, csec = generate_curve_keypair(tmp_path / "clients", "client")
    _, bad_sec = generate_curve_keypair(tmp_path / "intruder", "intruder")
    assert (ssec.stat().st_mode & 0o777) == 0o600 and (spub.stat().st_mode & 0o777) == 0o600
    base = {"transport": "zmq", "name": "zt", "shape": (2, 3), "endpoint": f"tcp://127.0.0.1:{_free_port()}"}
    wcfg = LatentBufferConfig(**base, server_secret_key=ssec, allowed_client_keys=(cpub,))
    good = LatentBufferConfig(**base, server_public_key=spub, client_secret_key=csec)
    bad = LatentBufferConfig(**base, server_public_key=spub, client_secret_key=bad_sec)
    plain = LatentBufferConfig(**{**base, "curve": False})
    return wcfg, good, bad, plain


def _write_until(w, r, value: float, timeout_s: float = 5.0):
    """Keep writing until the reader has the value (slow-joiner safe)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        w.write(np.full((2, 3), value), obs_stamp_ns=123)
        s = r.wait_for_update(0, 0.05)
        if s is not None and float(s.latent[0, 0]) == value:
            return s
    return None


def test_zmq_curve_round_trip_and_unauthorised_peers_get_nothing(curve_setup) -> None:
    wcfg, good, bad, plain = curve_setup
    w = open_latent_writer(wcfg)
    r = open_latent_reader(good)
    rb = open_latent_reader(bad)
    rp = open_latent_reader(plain)
    try:
        s = _write_until(w, r, 5.0)
        assert s is not None, f"no latent received: {r.stats}"
        assert s.latent.shape == (2, 3) and s.latent.dtype == np.float32 and s.obs_stamp_ns == 123
        out = np.zeros((2, 3), np.float32)
        assert r.read_into(out).version == s.version and np.all(out == 5.0)
        for _ in range(10):
            w.write(np.full((2, 3), 6.0), 1)
            time.sleep(0.02)
        assert rb.read() is None and rp.read() is None
        assert rb.stats["accepted"] == 0 and rp.stats["accepted"] == 0
        assert _wait_until(lambda: w.auth_denied >= 1)
    finally:
        for x in (rb, rp, r, w):
            x.close()


def test_zmq_reader_rejects_bad_frames_and_keeps_running(curve_setup) -> None:
    wcfg, good, _, _ = curve_setup
    w = open_latent_writer(wcfg)
    r = open_latent_reader(good)
    try:
        assert _write_until(w, r, 1.0) is not None
        header = {"fmt": "vla_latent/1", "epoch": 1, "version": 99, "obs_stamp_ns": 0, "write_stamp_ns": 0}
        frames = {
            "rejected_malformed": b"\xc1 not msgpack",
            "rejected_dtype": msgpack.packb({**header, "dtype": "|O", "shape": [2, 3], "data": b"\0" * 48}),
        }
        wrong_dtype = msgpack.packb({**header, "dtype": "<f8", "shape": [2, 3], "data": b"\0" * 48})
        wrong_shape = msgpack.packb({**header, "dtype": "<f4", "shape": [3, 2], "data": b"\0" * 24})
        oversize = msgpack.packb({**header, "dtype": "<f4", "shape": [2, 3], "data": b"\0" * 1100})
        for key, frame in [*frames.items(), ("rejected_dtype", wrong_dtype), ("rejected_shape", wrong_shape),
                           ("rejected_oversize", oversize)]:
            before = r.stats[key]
            w.send_raw(frame)
            counted = _wait_until(lambda key=key, before=before: r.stats[key] > before, 3.0)
            assert counted, f"{key} not counted: {r.stats}"
        # Far over the transport limit: libzmq drops the peer; the reader reconnects.
        w.send_raw(b"\0" * 100_000)
        assert _wait_until(lambda: r.stats["peer_disconnects"] >= 1, 3.0), r.stats
        s = _write_until(w, r, 9.0)
        assert s is not None, f"reader did not recover: {r.stats}"
        assert r._thread.is_alive() and r.error is None
        assert r.stats["accepted"] >= 2
    finally:
        r.close()
        w.close()


def test_shm_reader_follows_a_writer_restarted_after_sigkill(tmp_path):
    """A writer killed with SIGKILL cannot close its segment; the reader must find its successor."""
    import signal
    import subprocess
    import sys
    import time as _time

    from vla_runtime.core.latent_buffer import LatentBufferConfig, open_latent_reader

    name = f"vla_test_restart_{os.getpid()}"
    script = (
        "import sys, time, numpy as np\n"
        "from vla_runtime.core.latent_buffer import LatentBufferConfig, open_latent_writer\n"
        f"w = open_latent_writer(LatentBufferConfig(transport='shm', name='{name}', shape=(2, 4)))\n"
        "value = float(sys.argv[1])\n"
        "print('up', flush=True)\n"
        "while True:\n"
        "    w.write(np.full((2, 4), value, np.float32), time.time_ns()); time.sleep(0.01)\n"
    )
    reader = open_latent_reader(LatentBufferConfig(transport="shm", name=name, shape=(2, 4)))
    procs = []
    try:
        for value in (1.0, 2.0):
            p = subprocess.Popen([sys.executable, "-c", script, str(value)], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "up"
            deadline = _time.monotonic() + 5.0
            while _time.monotonic() < deadline:
                s = reader.read()
                if s is not None and float(s.latent[0, 0]) == value:
                    break
                _time.sleep(0.01)
            else:
                raise AssertionError(f"reader never saw writer {value}: stats {reader.stats}")
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=5)
            _time.sleep(0.3)  # the dead writer's resource tracker unlinks the name
    finally:
        reader.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert reader.stats.get("writer_replaced", 0) + reader.stats["attaches"] >= 2
