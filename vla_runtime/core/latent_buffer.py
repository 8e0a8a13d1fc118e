"""LatentBuffer: one writer, many readers, newest wins, never torn.

The slow path (VLM) writes a K×D latent guidance tensor a few times a second;
the fast path reads the newest complete one at every control tick. A latent
may also be several named tensors (``LatentBufferConfig.tensors``: a real
VLA's K/V prefix cache, one key and one value tensor per layer plus its mask,
MBs in all): they travel as one packed payload (each tensor at an 8-byte
aligned offset, zero padding between) with ONE version and ONE observation
stamp, so a reader gets all of them from the same write or none. Three
transports sit behind one interface (`LatentWriter` / `LatentReader`, built by
`open_latent_writer` / `open_latent_reader` from a `LatentBufferConfig`):

``inproc``
    Writer and readers in one process. The writer publishes an immutable
    snapshot (a read-only array plus its metadata) with a single reference
    store; readers load the reference and never lock. A reader can therefore
    never see half of one write and half of another.

``shm``
    Processes on one host, through a POSIX shared-memory segment with a
    seqlock. Layout (little endian)::

        0   magic  b"VLALATNT"        8   layout version u32   12  header size u32
        16  dtype str (16 B, ascii)   32  ndim u32  36 itemsize u32
        40  shape[0] u64  48 shape[1] u64  56 writer pid u64
        64  seq u64  72 version u64  80 obs_stamp_ns i64  88 write_stamp_ns i64
        96  crc32 u32  100 state u32 (1 open, 2 closed)      128 data

    The writer makes ``seq`` odd, copies metadata and data, stores a CRC32 of
    metadata+data, and makes ``seq`` even again. A reader loads ``seq`` (retries
    while it is odd), copies metadata and data into private preallocated
    buffers, loads ``seq`` again and accepts the copy only if both loads are
    equal and the CRC of its private copy matches. After a bounded number of
    retries it returns the last good sample. Reading a big latent costs one copy
    and one CRC pass of its payload (about 1 GB/s each on this CPU: ~30 ms for a
    real π0's 30 MB cache) on the reader's thread, and only when a new version
    is there.

    A multi-tensor segment stores ``"multi"`` as its dtype, (tensor count,
    payload bytes) as its shape and a 64-bit fingerprint of the layout (names,
    shapes, dtypes, offsets) at byte 104; a reader configured for another
    layout is refused by name. The seqlock and the CRC cover the whole payload.

    Memory ordering: all shared accesses are numpy/memoryview copies into and
    out of the mapping, each an opaque C call from the interpreter, so the
    compiler cannot move them across each other. On x86-64 (TSO) stores become
    visible in program order and loads are not reordered with loads, which is
    exactly what a seqlock needs. On weakly ordered CPUs (aarch64, i.e. Jetson)
    Python offers no fence, so the CRC is what makes acceptance sound there: a
    copy that mixes two writes fails the check (false accept ≈ 2⁻³²) and is
    retried. Header integers are 8-byte aligned single loads/stores.

    Ownership: only the writer owns (and unlinks) the segment. Readers map it
    read-only through ``_posixshmem.shm_open`` + ``mmap`` and never touch
    ``multiprocessing.resource_tracker``, so a reader exiting never unlinks the
    segment (the well-known ``SharedMemory`` attach problem before 3.13). A
    writer started over a stale segment of the same name (its writer pid is
    gone) reuses it in place when the layout matches, continuing the version
    counter, or marks it closed and recreates it when it does not; a live
    writer's segment is refused. Readers may open before the writer exists;
    they attach lazily and reattach when the writer closes the segment.

``zmq``
    Another machine, over ZeroMQ PUB/SUB with ``CONFLATE`` (newest wins). One
    msgpack frame per latent carrying an explicit dtype string, shape, raw
    bytes, version, stamps and a writer epoch; never pickle. Readers reject
    malformed frames, object/structured dtypes, a dtype or shape other than the
    configured one (a multi-tensor frame, ``vla_latent/2``, carries the packed
    payload and the layout's fingerprint), and oversize frames (``ZMQ_MAXMSGSIZE`` drops the peer,
    counted through a socket monitor) and count every rejection in ``stats``.
    CURVE is on by default: the writer is the CURVE server and runs a ZAP
    `zmq.auth.thread.ThreadAuthenticator` that admits only the configured
    client public keys, so an unknown or key-less peer receives nothing. The
    reader receives on its own thread; `LatentReader.read` never blocks.

Versions seen by a reader are monotonic: version 0 means nothing written yet
(``read()`` returns ``None``); if a writer restarts from 1, readers offset its
versions past the last one they returned.
"""

from __future__ import annotations

import abc
import mmap
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = [
    "Latent",
    "LatentSample",
    "LatentBufferConfig",
    "LatentTensorLayout",
    "LatentWriter",
    "LatentReader",
    "LayoutMismatchError",
    "open_latent_writer",
    "open_latent_reader",
    "generate_curve_keypair",
    "load_curve_keypair",
    "load_curve_public_key",
]

#: A K×D latent guidance tensor.
Latent = np.ndarray
#: A multi-tensor latent: name → array.
LatentTensors = Mapping[str, np.ndarray]
Transport = Literal["inproc", "shm", "zmq"]
ClockNs = Callable[[], int]

_ALLOWED_KINDS = "fiu"  # float, signed, unsigned; never object/structured/void/str
_ZAP_DOMAIN = "vla_latent"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class LayoutMismatchError(ValueError):
    """A shared segment or message has a shape/dtype other than the configured one."""


# --------------------------------------------------------------------- config
def _check_dtype(value: str) -> np.dtype:
    try:
        dt = np.dtype(value)
    except TypeError as exc:
        raise ValueError(f"dtype must be a numeric numpy dtype, got {value!r}") from exc
    if dt.hasobject or dt.kind not in _ALLOWED_KINDS or dt.fields is not None:
        raise ValueError(f"dtype must be a numeric numpy dtype (kind f/i/u), got {value!r}")
    return dt


class LatentTensorLayout(BaseModel):
    """One tensor of a multi-tensor latent.

    Attributes:
        name: Tensor name (the slow graph's output, the fast graph's input).
        shape: Its fixed shape.
        dtype: Numeric numpy dtype name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or len(v) > 200:
            raise ValueError(f"tensor name must be 1..200 chars, got {v!r}")
        return v

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(int(s) < 1 for s in v):
            raise ValueError(f"tensor shape must be non-empty with dims >= 1, got {v}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype_ok(cls, v: str) -> str:
        return _check_dtype(v).name


@dataclass(frozen=True)
class _Packing:
    """Where each tensor of a multi-tensor latent sits in the packed payload."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    nbytes: int
    fingerprint: int

    def views(self, payload: np.ndarray) -> dict[str, np.ndarray]:
        """Name → view of its tensor inside ``payload`` (a uint8 array of :attr:`nbytes`)."""
        return {n: payload[o:o + b].view(dt).reshape(sh)
                for n, sh, dt, o, b in zip(self.names, self.shapes, self.dtypes, self.offsets, self.sizes)}


_ALIGN = 8


@lru_cache(maxsize=64)
def _packing(tensors: tuple[LatentTensorLayout, ...]) -> _Packing:
    import hashlib

    offsets, sizes, dtypes, off = [], [], [], 0
    for t in tensors:
        dt = np.dtype(t.dtype).newbyteorder("<")
        size = int(np.prod(t.shape)) * dt.itemsize
        off = (off + _ALIGN - 1) // _ALIGN * _ALIGN
        offsets.append(off)
        sizes.append(size)
        dtypes.append(dt)
        off += size
    desc = ";".join(f"{t.name}:{list(t.shape)}:{dt.str}@{o}" for t, dt, o in zip(tensors, dtypes, offsets))
    fp = int.from_bytes(hashlib.blake2b(desc.encode(), digest_size=8).digest(), "little")
    return _Packing(tuple(t.name for t in tensors), tuple(tuple(t.shape) for t in tensors), tuple(dtypes),
                    tuple(offsets), tuple(sizes), off, fp)


class LatentBufferConfig(BaseModel):
    """How a latent buffer is reached.

    Attributes:
        transport: ``inproc``, ``shm`` or ``zmq``.
        name: Buffer name (inproc registry key / shared-memory segment name).
        shape: (K, D) of the latent.
        dtype: Numeric numpy dtype name, e.g. ``float32``.
        tensors: A latent of several named tensors instead of one K×D tensor (then ``shape`` and
            ``dtype`` are not given): writers take and readers return them by name.
        endpoint: ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5557``.
        writer_binds: True: the writer binds and readers connect; False: the reverse.
        curve: Use CURVE encryption/authentication (zmq). Disabling it is only
            allowed on a loopback or ipc endpoint.
        server_secret_key: Writer's ``*.key_secret`` (zmq + curve, writer side).
        server_public_key: Writer's ``*.key`` (zmq + curve, reader side).
        client_secret_key: This reader's ``*.key_secret`` (zmq + curve, reader side).
        allowed_client_keys: Public ``*.key`` files, or directories of them, of
            the readers the writer admits (zmq + curve, writer side).
        max_message_bytes: Largest accepted frame; default: payload + 1 KiB.
        shm_max_retries: Seqlock retries per read before the last good sample is returned.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    transport: Transport = "inproc"
    name: str = "vla_latent"
    shape: tuple[int, int] = (8, 256)
    dtype: str = "float32"
    tensors: tuple[LatentTensorLayout, ...] = ()
    endpoint: str = "tcp://127.0.0.1:5557"
    writer_binds: bool = True
    curve: bool = True
    server_secret_key: Path | None = None
    server_public_key: Path | None = None
    client_secret_key: Path | None = None
    allowed_client_keys: tuple[Path, ...] = ()
    max_message_bytes: int | None = None
    shm_max_retries: int = 64

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or "/" in v or len(v) > 200:
            raise ValueError(f"name must be 1..200 chars without '/', got {v!r}")
        return v

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(int(s) < 1 for s in v):
            raise ValueError(f"shape must be (K ≥ 1, D ≥ 1), got {v}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype_ok(cls, v: str) -> str:
        return _check_dtype(v).name

    @field_validator("max_message_bytes")
    @classmethod
    def _max_ok(cls, v: int | None) -> int | None:
        if v is not None and v < 64:
            raise ValueError(f"max_message_bytes must be ≥ 64, got {v}")
        return v

    @field_validator("shm_max_retries")
    @classmethod
    def _retries_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"shm_max_retries must be ≥ 1, got {v}")
        return v

    @model_validator(mode="after")
    def _tensors_ok(self) -> LatentBufferConfig:
        if self.tensors:
            # (A config dumped and read back carries the defaults: those are not a second layout.)
            defaults = {f: type(self).model_fields[f].default for f in ("shape", "dtype")}
            given = sorted(f for f in ("shape", "dtype") if f in self.model_fields_set
                           and getattr(self, f) != defaults[f])
            if given:
                raise ValueError(f"give either tensors (several named tensors) or shape/dtype (one K×D tensor), "
                                 f"not both (got tensors and {given})")
            names = [t.name for t in self.tensors]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"tensors: duplicate names {dup}")
        if self.transport == "zmq" and self.max_message_bytes is not None \
                and self.max_message_bytes < self.nbytes + 256:
            raise ValueError(f"max_message_bytes = {self.max_message_bytes} cannot carry this latent ({self.nbytes} "
                             f"bytes + frame header): raise latent.max_message_bytes to at least "
                             f"{self.nbytes + 1024}")
        return self

    @model_validator(mode="after")
    def _endpoint_ok(self) -> LatentBufferConfig:
        if self.transport == "zmq":
            ep = self.endpoint
            if not ep.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"endpoint must be tcp://, ipc:// or inproc://, got {ep!r}")
            if not self.curve and ep.startswith("tcp://"):
                host = ep[len("tcp://") :].rsplit(":", 1)[0]
                if host not in _LOOPBACK_HOSTS:
                    raise ValueError(
                        f"curve=False is only allowed on a loopback endpoint, got {ep!r}"
                    )
        return self

    @property
    def np_dtype(self) -> np.dtype:
        """The configured dtype as a little-endian ``np.dtype``."""
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def is_multi(self) -> bool:
        """Whether the latent is several named tensors."""
        return bool(self.tensors)

    @property
    def packing(self) -> _Packing:
        """Offsets of the tensors in the packed payload (multi-tensor latents)."""
        return _packing(self.tensors)

    @property
    def nbytes(self) -> int:
        """Payload size in bytes."""
        if self.tensors:
            return self.packing.nbytes
        return int(self.shape[0]) * int(self.shape[1]) * self.np_dtype.itemsize

    def with_tensors(self, tensors: tuple[tuple[str, tuple[int, ...], str], ...]) -> LatentBufferConfig:
        """This transport's settings for a latent of several named tensors ``(name, shape, dtype)``.

        A ``max_message_bytes`` too small for them is raised to fit (the payload + 1 KiB) when this
        config only carries the single-tensor default; the other settings are kept.
        """
        data = self.model_dump(exclude={"shape", "dtype", "tensors"}, exclude_unset=False)
        layout = tuple(LatentTensorLayout(name=n, shape=tuple(int(d) for d in sh), dtype=dt) for n, sh, dt in tensors)
        need = _packing(layout).nbytes + 1024
        if data.get("max_message_bytes") is not None and data["max_message_bytes"] < need:
            data["max_message_bytes"] = need
        return LatentBufferConfig(**data, tensors=layout)

    @property
    def effective_max_message_bytes(self) -> int:
        """``max_message_bytes`` or its default (payload + 1 KiB)."""
        return self.max_message_bytes if self.max_message_bytes is not None else self.nbytes + 1024


# --------------------------------------------------------------------- sample
@dataclass(frozen=True, slots=True)
class LatentSample:
    """One latent as a reader sees it.

    Attributes:
        latent: K×D array. From `LatentReader.read` it is owned by the caller
            (or read-only and shared, for inproc); from `LatentReader.read_into`
            it is the caller's ``out`` array. A multi-tensor latent: the packed
            payload (uint8) from ``read``, an empty array from ``read_into``.
        version: Monotonic, ≥ 1.
        obs_stamp_ns: Stamp of the observation the latent was computed from.
        write_stamp_ns: When the writer published it (writer's clock).
        tensors: A multi-tensor latent by name (views of ``latent``, or the
            caller's ``out`` arrays from ``read_into``); None for one K×D tensor.
    """

    latent: Latent
    version: int
    obs_stamp_ns: int
    write_stamp_ns: int
    tensors: LatentTensors | None = None

    def age_s(self, now_ns: int) -> float:
        """Seconds between the source observation and ``now_ns`` (same clock)."""
        return (now_ns - self.obs_stamp_ns) / 1e9


class _VersionMapper:
    """Keeps reader-visible versions monotonic across writer restarts."""

    __slots__ = ("_offset", "_last_raw", "_epoch", "last")

    def __init__(self) -> None:
        self._offset = 0
        self._last_raw = 0
        self._epoch: int | None = None
        self.last = 0

    def map(self, raw: int, epoch: int) -> int | None:
        """Visible version for a writer version, or None if it is not newer."""
        if epoch != self._epoch:
            if self._epoch is not None:
                self._offset = self.last
            self._epoch = epoch
            self._last_raw = 0
        if raw <= self._last_raw:
            return None
        self._last_raw = raw
        self.last = raw + self._offset
        return self.last


# ------------------------------------------------------------------ interface
class LatentWriter(abc.ABC):
    """Publishes latents. One writer per buffer; call from one thread."""

    config: LatentBufferConfig

    @abc.abstractmethod
    def write(self, latent: Latent, obs_stamp_ns: int) -> int:
        """Publish a latent.

        Args:
            latent: Array of the configured shape (cast to the configured dtype).
            obs_stamp_ns: Stamp of the observation it was computed from.

        Returns:
            The new version (≥ 1).

        Raises:
            ValueError: On a shape mismatch or non-finite values.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the transport (unlinks the shm segment the writer owns)."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Last version written (0 if none)."""

    def __enter__(self) -> LatentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LatentReader(abc.ABC):
    """Reads the newest complete latent. `read` and `read_into` never block."""

    config: LatentBufferConfig
    stats: dict[str, int]

    @abc.abstractmethod
    def read(self) -> LatentSample | None:
        """The newest latent, or None if nothing was written yet."""

    @abc.abstractmethod
    def read_into(self, out: Latent) -> LatentSample | None:
        """Copy the newest latent into ``out`` without allocating an array.

        Args:
            out: Preallocated, C-contiguous, writable array of the configured
                shape and dtype.

        Returns:
            A sample whose ``latent`` is ``out``, or None (``out`` untouched).
        """

    def wait_for_update(self, after_version: int, timeout_s: float) -> LatentSample | None:
        """Block up to ``timeout_s`` for a version newer than ``after_version``.

        For tools and benchmarks; a control loop calls `read` instead.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            s = self.read()
            if s is not None and s.version > after_version:
                return s
            if time.monotonic() >= deadline:
                return None
            time.sleep(100e-6)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the transport."""

    def _check_out(self, out: Latent | LatentTensors) -> None:
        cfg = self.config
        if cfg.is_multi:
            _check_out_tensors(cfg, out)
            return
        if not isinstance(out, np.ndarray) or (
            out.shape != tuple(cfg.shape)
            or out.dtype != cfg.np_dtype
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"out must be a writable C-contiguous {cfg.shape} {cfg.dtype} array, "
                f"got {out.shape} {out.dtype}"
            )

    def __enter__(self) -> LatentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_out_tensors(cfg: LatentBufferConfig, out: object) -> None:
    pk = cfg.packing
    if not isinstance(out, Mapping):
        raise ValueError(f"out must map each latent tensor name {list(pk.names)} to an array, got "
                         f"{type(out).__name__}")
    for n, sh, dt in zip(pk.names, pk.shapes, pk.dtypes):
        a = out.get(n)
        if not isinstance(a, np.ndarray) or a.shape != sh or a.dtype != dt or not a.flags.c_contiguous \
                or not a.flags.writeable:
            got = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"out[{n!r}] must be a writable C-contiguous {sh} {dt.name} array, got {got}")


def _validated_tensors(cfg: LatentBufferConfig, latent: object) -> list[np.ndarray]:
    """A multi-tensor latent's arrays in layout order, contiguous, in the layout's dtypes."""
    pk = cfg.packing
    if not isinstance(latent, Mapping):
        raise ValueError(f"this latent is several named tensors {list(pk.names)}: write a mapping name → array, got "
                         f"{type(latent).__name__}")
    extra = sorted(set(latent) - set(pk.names))
    missing = [n for n in pk.names if n not in latent]
    if extra or missing:
        raise ValueError(f"latent tensors must be exactly {list(pk.names)}: missing {missing}, unknown {extra}")
    out = []
    for n, sh, dt in zip(pk.names, pk.shapes, pk.dtypes):
        arr = np.asarray(latent[n])
        if arr.shape != sh:
            raise ValueError(f"latent tensor {n!r} must have shape {sh}, got {arr.shape}")
        if arr.dtype.hasobject or arr.dtype.kind not in _ALLOWED_KINDS + "b":
            raise ValueError(f"latent tensor {n!r} must be numeric, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"latent tensor {n!r} contains non-finite values")
        out.append(np.ascontiguousarray(arr, dtype=dt))
    return out


def _tensors_crc(pk: _Packing, arrays: list[np.ndarray], crc: int) -> int:
    """CRC32 of the packed payload (tensors and the zero padding between them) without packing it."""
    pos = 0
    for o, a in zip(pk.offsets, arrays):
        if o > pos:
            crc = zlib.crc32(bytes(o - pos), crc)
        crc = zlib.crc32(a, crc)
        pos = o + a.nbytes
    return crc


def _validated_latent(cfg: LatentBufferConfig, latent: Latent) -> np.ndarray:
    if isinstance(latent, Mapping):
        raise ValueError(f"this latent is one {tuple(cfg.shape)} tensor, got a mapping of {sorted(latent)}")
    arr = np.asarray(latent)
    if arr.shape != tuple(cfg.shape):
        raise ValueError(f"latent shape must be {tuple(cfg.shape)}, got {arr.shape}")
    if arr.dtype.hasobject or arr.dtype.kind not in _ALLOWED_KINDS + "b":
        raise ValueError(f"latent dtype must be numeric, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("latent contains non-finite values")
    return arr


# -------------------------------------------------------------------- inproc
_EMPTY = np.zeros(0, dtype=np.uint8)
_EMPTY.flags.writeable = False


class _InprocSlot:
    __slots__ = ("config", "snapshot", "cond", "version", "epoch")

    def __init__(self, config: LatentBufferConfig) -> None:
        self.config = config
        # (array, version, obs_stamp_ns, write_stamp_ns, tensor views or None) or None; replaced atomically.
        self.snapshot: tuple[np.ndarray, int, int, int, dict[str, np.ndarray] | None] | None = None
        self.cond = threading.Condition()
        self.version = 0


def _layout_key(cfg: LatentBufferConfig) -> tuple:
    return ("multi", cfg.packing.fingerprint) if cfg.is_multi else (tuple(cfg.shape), cfg.dtype)


def _describe_layout(cfg: LatentBufferConfig) -> str:
    if cfg.is_multi:
        return "tensors " + ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in cfg.tensors)
    return f"{tuple(cfg.shape)} {cfg.dtype}"


_INPROC: dict[str, _InprocSlot] = {}
_INPROC_LOCK = threading.Lock()


def _inproc_slot(cfg: LatentBufferConfig) -> _InprocSlot:
    with _INPROC_LOCK:
        slot = _INPROC.get(cfg.name)
        if slot is None:
            slot = _INPROC[cfg.name] = _InprocSlot(cfg)
        elif _layout_key(slot.config) != _layout_key(cfg):
            raise LayoutMismatchError(
                f"inproc latent buffer {cfg.name!r} is {_describe_layout(slot.config)}, requested "
                f"{_describe_layout(cfg)}"
            )
        return slot


class _InprocWriter(LatentWriter):
    def __init__(self, cfg: LatentBufferConfig, clock_ns: ClockNs) -> None:
        self.config = cfg
        self._clock = clock_ns
        self._slot = _inproc_slot(cfg)
        self._dtype = cfg.np_dtype

    @property
    def version(self) -> int:
        return self._slot.version

    def write(self, latent: Latent | LatentTensors, obs_stamp_ns: int) -> int:
        views = None
        if self.config.is_multi:
            pk = self.config.packing
            arrays = _validated_tensors(self.config, latent)
            arr = np.zeros(pk.nbytes, dtype=np.uint8)
            views = pk.views(arr)
            for n, a in zip(pk.names, arrays):
                np.copyto(views[n], a)
            arr.flags.writeable = False
            views = pk.views(arr)  # read-only views of the read-only payload
        else:
            arr = np.array(_validated_latent(self.config, latent), dtype=self._dtype, copy=True)
            arr.flags.writeable = False
        slot = self._slot
        version = slot.version + 1
        stamp = self._clock()
        # One reference store publishes the whole immutable snapshot.
        slot.snapshot = (arr, version, int(obs_stamp_ns), stamp, views)
        slot.version = version
        with slot.cond:
            slot.cond.notify_all()
        return version

    def close(self) -> None:
        with _INPROC_LOCK:
            if _INPROC.get(self.config.name) is self._slot:
                del _INPROC[self.config.name]


class _InprocReader(LatentReader):
    def __init__(self, cfg: LatentBufferConfig) -> None:
        self.config = cfg
        self._cfg_name = cfg.name
        self._slot = _inproc_slot(cfg)
        self.stats = {"reads": 0}

    def _current(self) -> tuple[np.ndarray, int, int, int, dict[str, np.ndarray] | None] | None:
        # A writer that closed and a new one that opened under the same name: follow it.
        slot = _INPROC.get(self._cfg_name)
        if slot is not None and slot is not self._slot:
            self._slot = slot
        return self._slot.snapshot

    def read(self) -> LatentSample | None:
        snap = self._current()
        if snap is None:
            return None
        self.stats["reads"] += 1
        arr, version, obs, stamp, views = snap
        return LatentSample(arr, version, obs, stamp, views)  # arr is read-only and never mutated

    def read_into(self, out: Latent | LatentTensors) -> LatentSample | None:
        self._check_out(out)
        snap = self._current()
        if snap is None:
            return None
        arr, version, obs, stamp, views = snap
        if views is not None:
            for n, v in views.items():
                np.copyto(out[n], v)  # type: ignore[index]
            return LatentSample(_EMPTY, version, obs, stamp, out)  # type: ignore[arg-type]
        np.copyto(out, arr)  # type: ignore[arg-type]
        return LatentSample(out, version, obs, stamp)  # type: ignore[arg-type]

    def wait_for_update(self, after_version: int, timeout_s: float) -> LatentSample | None:
        slot = self._slot
        with slot.cond:
            slot.cond.wait_for(
                lambda: slot.snapshot is not None and slot.snapshot[1] > after_version,
                timeout=max(0.0, timeout_s),
            )
        s = self.read()
        return s if s is not None and s.version > after_version else None


# ----------------------------------------------------------------------- shm
_MAGIC = b"VLALATNT"
_LAYOUT_VERSION = 1
_HEADER = 128
_OFF_MAGIC, _OFF_LAYOUT, _OFF_HDR, _OFF_DTYPE = 0, 8, 12, 16
_OFF_NDIM, _OFF_ITEMSIZE, _OFF_SHAPE, _OFF_PID = 32, 36, 40, 56
_OFF_SEQ, _OFF_META, _META_LEN, _OFF_CRC, _OFF_STATE = 64, 72, 24, 96, 100
_OFF_FINGERPRINT = 104  # multi-tensor layout fingerprint (0 for one K×D tensor)
_MULTI_DTYPE = "multi"
_STATE_OPEN, _STATE_CLOSED = 1, 2
_META = struct.Struct("<Qqq")  # version, obs_stamp_ns, write_stamp_ns


def _shm_want(cfg: LatentBufferConfig) -> tuple[tuple[int, int], str, int]:
    """The header values (shape, dtype str, fingerprint) a segment for ``cfg`` carries."""
    if cfg.is_multi:
        pk = cfg.packing
        return (len(pk.names), pk.nbytes), _MULTI_DTYPE, pk.fingerprint
    return tuple(cfg.shape), cfg.np_dtype.str, 0  # type: ignore[return-value]


def _describe_want(want: tuple[tuple[int, int], str, int]) -> str:
    (k, d), dtype, fp = want
    if dtype == _MULTI_DTYPE:
        return f"{k} tensors in {d} bytes (layout {fp:016x})"
    return f"shape {(k, d)} dtype {np.dtype(dtype).name}"


def _shm_layout_of(buf: memoryview) -> tuple[tuple[int, int], str, int] | None:
    """(shape, dtype str, layout fingerprint) stored in a segment header, or None if not initialised."""
    if len(buf) < _HEADER or bytes(buf[_OFF_MAGIC : _OFF_MAGIC + 8]) != _MAGIC:
        return None
    layout, hdr = struct.unpack_from("<II", buf, _OFF_LAYOUT)
    if layout != _LAYOUT_VERSION or hdr != _HEADER:
        raise LayoutMismatchError(
            f"shared-memory latent segment has layout version {layout} / header {hdr}, "
            f"this reader understands {_LAYOUT_VERSION} / {_HEADER}"
        )
    dtype = bytes(buf[_OFF_DTYPE : _OFF_DTYPE + 16]).rstrip(b"\0").decode("ascii", "replace")
    k, d = struct.unpack_from("<QQ", buf, _OFF_SHAPE)
    fp = struct.unpack_from("<Q", buf, _OFF_FINGERPRINT)[0]
    return (int(k), int(d)), dtype, int(fp)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ShmWriter(LatentWriter):
    def __init__(self, cfg: LatentBufferConfig, clock_ns: ClockNs) -> None:
        from multiprocessing import shared_memory

        self.config = cfg
        self._clock = clock_ns
        self._dtype = cfg.np_dtype
        size = _HEADER + cfg.nbytes
        want = _shm_want(cfg)
        start_version = 0
        try:
            shm = shared_memory.SharedMemory(name=cfg.name, create=True, size=size)
        except FileExistsError:
            # Attaching registers the segment with this process's resource tracker,
            # which is what we want: the writer owns it from now on.
            shm = shared_memory.SharedMemory(name=cfg.name, create=False)
            buf = shm.buf
            layout = _shm_layout_of(buf) if len(buf) >= _HEADER else None
            pid = struct.unpack_from("<Q", buf, _OFF_PID)[0] if len(buf) >= _HEADER else 0
            state = struct.unpack_from("<I", buf, _OFF_STATE)[0] if len(buf) >= _HEADER else 0
            if layout is not None and state == _STATE_OPEN and _pid_alive(pid):
                shm.close()
                raise FileExistsError(
                    f"shared-memory latent segment {cfg.name!r} is owned by live writer pid {pid}"
                ) from None
            if layout is not None and layout == want and shm.size >= size:
                start_version = struct.unpack_from("<Q", buf, _OFF_META)[0]  # continue counter
            else:
                if len(buf) >= _HEADER:
                    struct.pack_into("<I", buf, _OFF_STATE, _STATE_CLOSED)  # old readers reattach
                shm.close()
                shm.unlink()
                shm = shared_memory.SharedMemory(name=cfg.name, create=True, size=size)
        self._shm = shm
        buf = shm.buf
        self._seq = buf[_OFF_SEQ : _OFF_SEQ + 8].cast("Q")
        self._meta = buf[_OFF_META : _OFF_META + _META_LEN]
        self._crc = buf[_OFF_CRC : _OFF_CRC + 4].cast("I")
        self._multi = cfg.packing if cfg.is_multi else None
        if self._multi is not None:
            self._data = np.ndarray((cfg.nbytes,), dtype=np.uint8, buffer=buf, offset=_HEADER)
            self._views = self._multi.views(self._data)
        else:
            self._data = np.ndarray(cfg.shape, dtype=self._dtype, buffer=buf, offset=_HEADER)
        self._version = int(start_version)
        self._meta_tmp = bytearray(_META_LEN)
        seq = self._seq[0]
        if seq % 2:  # a writer died mid-write
            self._seq[0] = seq + 1
        # Header, magic last: a reader treats a segment without magic as "not ready".
        struct.pack_into("<II", buf, _OFF_LAYOUT, _LAYOUT_VERSION, _HEADER)
        shape, dtype_s, fingerprint = want
        dt = dtype_s.encode("ascii")
        buf[_OFF_DTYPE : _OFF_DTYPE + 16] = dt + b"\0" * (16 - len(dt))
        itemsize = 1 if self._multi is not None else self._dtype.itemsize
        struct.pack_into("<IIQQQ", buf, _OFF_NDIM, 2, itemsize, *shape, os.getpid())
        struct.pack_into("<Q", buf, _OFF_FINGERPRINT, fingerprint)
        struct.pack_into("<I", buf, _OFF_STATE, _STATE_OPEN)
        buf[_OFF_MAGIC : _OFF_MAGIC + 8] = _MAGIC
        self._closed = False

    @property
    def version(self) -> int:
        return self._version

    def write(self, latent: Latent | LatentTensors, obs_stamp_ns: int) -> int:
        if self._closed:
            raise RuntimeError(f"latent writer {self.config.name!r} is closed")
        pk = self._multi
        if pk is not None:
            arrays = _validated_tensors(self.config, latent)
        else:
            src = _validated_latent(self.config, latent)  # type: ignore[arg-type]
            if src.dtype != self._dtype or not src.flags.c_contiguous:
                src = np.ascontiguousarray(src, dtype=self._dtype)
        version = self._version + 1
        stamp = self._clock()
        meta = self._meta_tmp
        _META.pack_into(meta, 0, version, int(obs_stamp_ns), stamp)
        if pk is not None:
            crc = _tensors_crc(pk, arrays, zlib.crc32(meta)) & 0xFFFFFFFF
        else:
            crc = zlib.crc32(src, zlib.crc32(meta)) & 0xFFFFFFFF
        seq = self._seq[0]
        self._seq[0] = seq + 1  # odd: write in progress
        self._meta[:] = meta
        if pk is not None:
            for n, a in zip(pk.names, arrays):
                np.copyto(self._views[n], a)
        else:
            np.copyto(self._data, src)
        self._crc[0] = crc
        self._seq[0] = seq + 2  # even: consistent
        self._version = version
        return version

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        buf = self._shm.buf
        struct.pack_into("<I", buf, _OFF_STATE, _STATE_CLOSED)
        del self._data
        self._views = {}
        for mv in (self._seq, self._meta, self._crc):
            mv.release()
        del buf
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


def _segment_identity(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the segment the name refers to now, or None if there is none."""
    import _posixshmem

    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def _open_segment_readonly(name: str) -> tuple[mmap.mmap, tuple[int, int]] | None:
    """Map an existing segment read-only without involving the resource tracker.

    Returns the mapping and the segment's identity (st_dev, st_ino), or None.
    """
    import _posixshmem  # CPython's own POSIX shm binding (used by multiprocessing)

    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size < _HEADER:
            return None
        return mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ), (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


class _ShmReader(LatentReader):
    #: Minimum seconds between attach attempts while the segment is missing.
    ATTACH_RETRY_S = 0.05
    #: While nothing new arrives, how often to check that the name still refers to the mapped
    #: segment. A writer killed with SIGKILL cannot mark its segment closed; its resource tracker
    #: unlinks the name and a restarted writer creates a new segment under it.
    IDENTITY_CHECK_S = 0.1

    def __init__(self, cfg: LatentBufferConfig) -> None:
        if sys.platform == "win32":  # pragma: no cover
            raise OSError("shm latent transport needs POSIX shared memory")
        self.config = cfg
        self._dtype = cfg.np_dtype
        self._want = _shm_want(cfg)
        self._versions = _VersionMapper()
        self._epoch = 0
        self._mm: mmap.mmap | None = None
        self._next_attach = 0.0
        self._multi = cfg.packing if cfg.is_multi else None
        self._data_shape: tuple[int, ...] = (cfg.nbytes,) if cfg.is_multi else tuple(cfg.shape)
        self._data_dtype = np.dtype(np.uint8) if cfg.is_multi else self._dtype
        self._good = np.zeros(self._data_shape, dtype=self._data_dtype)
        self._tmp = np.zeros(self._data_shape, dtype=self._data_dtype)
        #: Views of the tensors inside each of the two private buffers (they swap), by buffer id.
        self._views = {} if self._multi is None else {id(b): self._multi.views(b) for b in (self._good, self._tmp)}
        self._meta_tmp = bytearray(_META_LEN)
        self._good_meta: tuple[int, int, int] | None = None  # (version, obs, stamp)
        self._good_seq = -1  # seqlock value of the last good copy in the attached segment
        self._checked_out: np.ndarray | None = None
        self.stats = {"reads": 0, "retries": 0, "exhausted": 0, "attaches": 0, "crc_mismatch": 0}
        self._try_attach(force=True)

    # attach / detach ----------------------------------------------------
    def _try_attach(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now < self._next_attach:
            return False
        self._next_attach = now + self.ATTACH_RETRY_S
        opened = _open_segment_readonly(self.config.name)
        if opened is None:
            return False
        mm, identity = opened
        buf = memoryview(mm)
        try:
            layout = _shm_layout_of(buf)
            if layout is None:  # writer still initialising
                return False
            if layout != self._want:
                raise LayoutMismatchError(
                    f"shared-memory latent segment {self.config.name!r} holds {_describe_want(layout)}, this "
                    f"reader is configured for {_describe_want(self._want)}"
                )
            if len(buf) < _HEADER + self.config.nbytes:
                return False
        except BaseException:
            buf.release()
            mm.close()
            raise
        self._mm = mm
        self._identity = identity
        self._next_identity_check = now + self.IDENTITY_CHECK_S
        self._buf = buf
        self._seq = buf[_OFF_SEQ : _OFF_SEQ + 8].cast("Q")
        self._state = buf[_OFF_STATE : _OFF_STATE + 4].cast("I")
        self._crc = buf[_OFF_CRC : _OFF_CRC + 4].cast("I")
        self._meta = buf[_OFF_META : _OFF_META + _META_LEN]
        self._data = np.ndarray(self._data_shape, dtype=self._data_dtype, buffer=buf, offset=_HEADER)
        self._epoch += 1
        self._good_seq = -1
        self.stats["attaches"] += 1
        return True

    def _detach(self) -> None:
        if self._mm is None:
            return
        del self._data
        for mv in (self._seq, self._state, self._crc, self._meta, self._buf):
            mv.release()
        self._mm.close()
        self._mm = None

    def close(self) -> None:
        self._detach()

    # reading --------------------------------------------------------------
    def _refresh(self) -> bool:
        """Copy a consistent newer sample into ``_good``; True if one was taken."""
        if self._mm is None:
            if not self._try_attach():
                return False
        elif self._seq[0] == self._good_seq and self._state[0] != _STATE_CLOSED:
            # Fast path: nothing written since the last good copy. Now and then make sure the
            # writer has not been replaced under the same name (it died without closing).
            now = time.monotonic()
            if now < self._next_identity_check:
                return False
            self._next_identity_check = now + self.IDENTITY_CHECK_S
            if _segment_identity(self.config.name) == self._identity:
                return False
            self.stats["writer_replaced"] = self.stats.get("writer_replaced", 0) + 1
            self._detach()
            if not self._try_attach(force=True):
                return False
        if self._state[0] == _STATE_CLOSED:
            self._detach()
            if not self._try_attach():
                return False
        seq_mv, meta_src, meta_dst, data, tmp = self._seq, self._meta, self._meta_tmp, self._data, self._tmp
        for attempt in range(self.config.shm_max_retries):
            s1 = seq_mv[0]
            if s1 & 1:
                continue
            if s1 == 0:  # never written
                return False
            meta_dst[:] = meta_src
            np.copyto(tmp, data)
            crc = self._crc[0]
            if seq_mv[0] != s1:
                continue
            if zlib.crc32(tmp, zlib.crc32(meta_dst)) & 0xFFFFFFFF != crc:
                self.stats["crc_mismatch"] += 1
                continue
            if attempt:
                self.stats["retries"] += attempt
            self._good_seq = s1
            version, obs, stamp = _META.unpack(meta_dst)
            visible = self._versions.map(version, self._epoch)
            if visible is None:
                return False
            self._good, self._tmp = tmp, self._good
            self._good_meta = (visible, obs, stamp)
            return True
        self.stats["exhausted"] += 1
        return False

    def read(self) -> LatentSample | None:
        self._refresh()
        meta = self._good_meta
        if meta is None:
            return None
        self.stats["reads"] += 1
        payload = self._good.copy()
        if self._multi is not None:
            return LatentSample(payload, *meta, self._multi.views(payload))
        return LatentSample(payload, *meta)

    def read_into(self, out: Latent | LatentTensors) -> LatentSample | None:
        if out is not self._checked_out:
            self._check_out(out)
            self._checked_out = out
        self._refresh()
        meta = self._good_meta
        if meta is None:
            return None
        self.stats["reads"] += 1
        if self._multi is not None:
            for n, v in self._views[id(self._good)].items():
                np.copyto(out[n], v)  # type: ignore[index]
            return LatentSample(_EMPTY, *meta, out)  # type: ignore[arg-type]
        np.copyto(out, self._good)  # type: ignore[arg-type]
        return LatentSample(out, *meta)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- zmq
def generate_curve_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create a CURVE keypair: ``name.key`` (public) and ``name.key_secret``.

    Both files get mode 0600 and the directory is created (0700) if missing.

    Args:
        directory: Where to write the two files.
        name: Base file name.

    Returns:
        (public key file, secret key file).
    """
    import zmq.auth

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub, sec = zmq.auth.create_certificates(str(d), name)
    for p in (pub, sec):
        os.chmod(p, 0o600)
    return Path(pub), Path(sec)


def load_curve_keypair(secret_file: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``*.key_secret`` file.

    Raises:
        ValueError: If the file holds no secret key.
    """
    import zmq.auth

    pub, sec = zmq.auth.load_certificate(str(secret_file))
    if not sec:
        raise ValueError(f"{secret_file} holds no secret key (pass the *.key_secret file)")
    return pub, sec


def load_curve_public_key(public_file: str | os.PathLike) -> bytes:
    """The z85 public key from a ``*.key`` (or ``*.key_secret``) file."""
    import zmq.auth

    pub, _ = zmq.auth.load_certificate(str(public_file))
    if not pub:
        raise ValueError(f"{public_file} holds no public key")
    return pub


def _allowed_keys(paths: tuple[Path, ...]) -> set[bytes]:
    keys: set[bytes] = set()
    for p in paths:
        files = sorted(Path(p).glob("*.key")) if Path(p).is_dir() else [Path(p)]
        for f in files:
            keys.add(load_curve_public_key(f))
    return keys


class _KeyAllowList:
    """ZAP credentials provider admitting only known client public keys."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = frozenset(keys)
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        if not ok:
            self.denied += 1
        return ok


def _encode_multi_frame(pk: _Packing, arrays: list[np.ndarray], version: int, obs_ns: int, stamp_ns: int,
                        epoch: int) -> bytes:
    import msgpack

    parts: list[bytes] = []
    pos = 0
    for o, a in zip(pk.offsets, arrays):
        if o > pos:
            parts.append(bytes(o - pos))
        parts.append(a.tobytes())
        pos = o + a.nbytes
    return msgpack.packb(
        {
            "fmt": "vla_latent/2",
            "epoch": epoch,
            "version": version,
            "obs_stamp_ns": obs_ns,
            "write_stamp_ns": stamp_ns,
            "dtype": _MULTI_DTYPE,
            "shape": [len(pk.names), pk.nbytes],
            "layout": pk.fingerprint,
            "data": b"".join(parts),
        },
        use_bin_type=True,
    )


def _encode_frame(latent: np.ndarray, version: int, obs_ns: int, stamp_ns: int, epoch: int) -> bytes:
    import msgpack

    return msgpack.packb(
        {
            "fmt": "vla_latent/1",
            "epoch": epoch,
            "version": version,
            "obs_stamp_ns": obs_ns,
            "write_stamp_ns": stamp_ns,
            "dtype": latent.dtype.str,
            "shape": list(latent.shape),
            "data": latent.tobytes(),
        },
        use_bin_type=True,
    )


class _ZmqWriter(LatentWriter):
    def __init__(self, cfg: LatentBufferConfig, clock_ns: ClockNs, context: object | None = None) -> None:
        import zmq

        self.config = cfg
        self._clock = clock_ns
        self._dtype = cfg.np_dtype
        self._version = 0
        self._epoch = int.from_bytes(os.urandom(6), "little")
        self._ctx = context if context is not None else zmq.Context()
        self._own_ctx = context is None
        self._auth = None
        self._allow: _KeyAllowList | None = None
        sock = self._ctx.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1)
            sock.setsockopt(zmq.CONFLATE, 1)
            if cfg.curve:
                if cfg.server_secret_key is None:
                    raise ValueError("zmq writer with curve=True needs server_secret_key")
                if not cfg.allowed_client_keys:
                    raise ValueError("zmq writer with curve=True needs allowed_client_keys")
                from zmq.auth.thread import ThreadAuthenticator

                pub, sec = load_curve_keypair(cfg.server_secret_key)
                self._allow = _KeyAllowList(_allowed_keys(cfg.allowed_client_keys))
                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
                self._auth.configure_curve_callback(_ZAP_DOMAIN, credentials_provider=self._allow)
                sock.curve_secretkey = sec
                sock.curve_publickey = pub
                sock.curve_server = True
                sock.zap_domain = _ZAP_DOMAIN.encode()
            if cfg.writer_binds:
                sock.bind(cfg.endpoint)
            else:
                sock.connect(cfg.endpoint)
        except BaseException:
            sock.close(0)
            self._stop_auth()
            raise
        self._sock = sock
        self.endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode() if cfg.writer_binds else cfg.endpoint

    @property
    def auth_denied(self) -> int:
        """Peers refused by the ZAP allow-list so far."""
        return self._allow.denied if self._allow is not None else 0

    @property
    def version(self) -> int:
        return self._version

    def write(self, latent: Latent | LatentTensors, obs_stamp_ns: int) -> int:
        import zmq

        version = self._version + 1
        if self.config.is_multi:
            arrays = _validated_tensors(self.config, latent)
            frame = _encode_multi_frame(self.config.packing, arrays, version, int(obs_stamp_ns), self._clock(),
                                        self._epoch)
        else:
            src = np.ascontiguousarray(_validated_latent(self.config, latent), dtype=self._dtype)  # type: ignore[arg-type]
            frame = _encode_frame(src, version, int(obs_stamp_ns), self._clock(), self._epoch)
        try:
            self._sock.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)
        except zmq.Again:
            pass  # no peer ready: newest-wins means dropping is correct
        self._version = version
        return version

    def send_raw(self, frame: bytes) -> None:
        """Send an arbitrary frame (tests of the reader's input validation only)."""
        import zmq

        self._sock.send(frame, zmq.NOBLOCK)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        if self._sock is None:
            return
        self._sock.close(0)
        self._sock = None
        self._stop_auth()
        if self._own_ctx:
            self._ctx.term()


class _ZmqReader(LatentReader):
    #: Receive-thread poll period (bounds close() latency).
    POLL_MS = 50
    #: Delay before a fresh socket replaces one whose peer dropped.
    REBUILD_DELAY_S = 0.1
    error: BaseException | None = None

    def __init__(self, cfg: LatentBufferConfig, context: object | None = None, start_timeout_s: float = 5.0) -> None:
        import zmq

        self.config = cfg
        self._dtype = cfg.np_dtype
        self._shape = tuple(cfg.shape)
        self._multi = cfg.packing if cfg.is_multi else None
        self._max = cfg.effective_max_message_bytes
        if cfg.curve:
            missing = [
                n for n in ("server_public_key", "client_secret_key") if getattr(cfg, n) is None
            ]
            if missing:
                raise ValueError(f"zmq reader with curve=True needs {', '.join(missing)}")
            self._server_pub = load_curve_public_key(cfg.server_public_key)
            self._client_pub, self._client_sec = load_curve_keypair(cfg.client_secret_key)
        self._ctx = context if context is not None else zmq.Context()
        self._own_ctx = context is None
        self.stats = {
            "received": 0,
            "accepted": 0,
            "rejected_malformed": 0,
            "rejected_dtype": 0,
            "rejected_shape": 0,
            "rejected_oversize": 0,
            "rejected_stale": 0,
            "peer_disconnects": 0,
            "reconnects": 0,
            "reads": 0,
        }
        self._versions = _VersionMapper()
        self._latest: LatentSample | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"latent_rx[{cfg.name}]", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            self._stop.set()
            raise TimeoutError(f"zmq latent reader did not start within {start_timeout_s} s")
        if self._start_error is not None:
            self._thread.join(1.0)
            raise self._start_error

    # receive thread -------------------------------------------------------
    def _make_socket(self):
        import zmq

        cfg = self.config
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.CONFLATE, 1)
        # Transport-level cap (CURVE adds < 64 B per frame); larger frames drop the peer.
        sock.setsockopt(zmq.MAXMSGSIZE, self._max + 256)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if cfg.curve:
            sock.curve_serverkey = self._server_pub
            sock.curve_publickey = self._client_pub
            sock.curve_secretkey = self._client_sec
        return sock

    def _open(self):
        import zmq

        sock = self._make_socket()
        try:
            mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            if self.config.writer_binds:
                sock.connect(self.config.endpoint)
            else:
                sock.bind(self.config.endpoint)
        except BaseException:
            sock.close(0)
            raise
        return sock, mon

    @staticmethod
    def _close_pair(sock, mon) -> None:
        try:
            sock.disable_monitor()
        finally:
            mon.close(0)
            sock.close(0)

    def _run(self) -> None:
        import zmq

        try:
            sock, mon = self._open()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller waiting on _ready
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        rebuild_at: float | None = None
        try:
            while not self._stop.is_set():
                if rebuild_at is not None and time.monotonic() >= rebuild_at:
                    # libzmq does not reconnect after a protocol error (e.g. a frame
                    # over MAXMSGSIZE): start over with a fresh socket.
                    rebuild_at = None
                    self._close_pair(sock, mon)
                    sock, mon = self._open()
                    self.stats["reconnects"] += 1
                poller = zmq.Poller()
                poller.register(sock, zmq.POLLIN)
                poller.register(mon, zmq.POLLIN)
                events = dict(poller.poll(self.POLL_MS))
                if mon in events:
                    while True:
                        try:
                            mon.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.stats["peer_disconnects"] += 1
                        if self.config.writer_binds and rebuild_at is None:
                            rebuild_at = time.monotonic() + self.REBUILD_DELAY_S
                if sock in events:
                    while True:
                        try:
                            frame = sock.recv(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle(frame)
        except BaseException as exc:  # noqa: BLE001 - kept for inspection; never raise out of the thread
            self.error = exc
        finally:
            self._close_pair(sock, mon)

    def _handle(self, frame: bytes) -> None:
        """Validate and publish one frame; never raises."""
        import msgpack

        st = self.stats
        st["received"] += 1
        if len(frame) > self._max:
            st["rejected_oversize"] += 1
            return
        try:
            msg = msgpack.unpackb(
                frame,
                raw=False,
                max_bin_len=self._max,
                max_str_len=256,
                max_array_len=8,
                max_map_len=16,
                max_ext_len=0,
                strict_map_key=True,
            )
            if not isinstance(msg, dict) or msg.get("fmt") not in ("vla_latent/1", "vla_latent/2"):
                raise ValueError("not a vla_latent/1 or /2 map")
            dtype_s, shape, data = msg["dtype"], msg["shape"], msg["data"]
            version, obs, stamp, epoch = (
                msg["version"], msg["obs_stamp_ns"], msg["write_stamp_ns"], msg["epoch"],
            )
            if not isinstance(dtype_s, str) or not isinstance(data, bytes) or not isinstance(shape, list):
                raise ValueError("bad field types")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (version, obs, stamp, epoch)):
                raise ValueError("bad integer fields")
            if version < 1:
                raise ValueError("version < 1")
        except Exception:  # noqa: BLE001 - any decoding problem is a counted rejection
            st["rejected_malformed"] += 1
            return
        if self._multi is not None or dtype_s == _MULTI_DTYPE:
            self._handle_multi(msg, dtype_s, shape, data, version, obs, stamp, epoch)
            return
        try:
            dt = np.dtype(dtype_s)
        except Exception:  # noqa: BLE001 - any dtype numpy refuses is a counted rejection
            st["rejected_dtype"] += 1
            return
        if dt.hasobject or dt.fields is not None or dt != self._dtype:
            st["rejected_dtype"] += 1
            return
        if tuple(shape) != self._shape:
            st["rejected_shape"] += 1
            return
        expected = self._shape[0] * self._shape[1] * dt.itemsize
        if len(data) != expected:
            st["rejected_malformed"] += 1
            return
        visible = self._versions.map(version, epoch)
        if visible is None:
            st["rejected_stale"] += 1
            return
        arr = np.frombuffer(data, dtype=dt).reshape(self._shape)  # read-only view of an owned bytes
        sample = LatentSample(arr, visible, obs, stamp)
        with self._cond:
            self._latest = sample
            self._cond.notify_all()
        st["accepted"] += 1

    def _handle_multi(self, msg: dict, dtype_s: str, shape: list, data: bytes, version: int, obs: int, stamp: int,
                      epoch: int) -> None:
        """A multi-tensor frame (or a single-tensor reader's view of one); never raises."""
        st = self.stats
        pk = self._multi
        if pk is None or dtype_s != _MULTI_DTYPE:  # a single tensor where several are expected, or the reverse
            st["rejected_dtype"] += 1
            return
        if msg.get("fmt") != "vla_latent/2" or shape != [len(pk.names), pk.nbytes] or msg.get("layout") != \
                pk.fingerprint:
            st["rejected_shape"] += 1
            return
        if len(data) != pk.nbytes:
            st["rejected_malformed"] += 1
            return
        visible = self._versions.map(version, epoch)
        if visible is None:
            st["rejected_stale"] += 1
            return
        payload = np.frombuffer(data, dtype=np.uint8)  # read-only view of an owned bytes
        sample = LatentSample(payload, visible, obs, stamp, pk.views(payload))
        with self._cond:
            self._latest = sample
            self._cond.notify_all()
        st["accepted"] += 1

    # API ------------------------------------------------------------------
    def read(self) -> LatentSample | None:
        s = self._latest  # a single reference load; samples are immutable
        if s is not None:
            self.stats["reads"] += 1
        return s

    def read_into(self, out: Latent | LatentTensors) -> LatentSample | None:
        self._check_out(out)
        s = self._latest
        if s is None:
            return None
        if s.tensors is not None:
            for n, v in s.tensors.items():
                np.copyto(out[n], v)  # type: ignore[index]
            return LatentSample(_EMPTY, s.version, s.obs_stamp_ns, s.write_stamp_ns, out)  # type: ignore[arg-type]
        np.copyto(out, s.latent)  # type: ignore[arg-type]
        return LatentSample(out, s.version, s.obs_stamp_ns, s.write_stamp_ns)  # type: ignore[arg-type]

    def wait_for_update(self, after_version: int, timeout_s: float) -> LatentSample | None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._latest is not None and self._latest.version > after_version,
                timeout=max(0.0, timeout_s),
            )
            s = self._latest
        return s if s is not None and s.version > after_version else None

    def close(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._own_ctx and not self._thread.is_alive() and not self._ctx.closed:
            self._ctx.term()


# ------------------------------------------------------------------- factory
def open_latent_writer(cfg: LatentBufferConfig, *, clock_ns: ClockNs = time.time_ns) -> LatentWriter:
    """Open the writing end of a latent buffer.

    Args:
        cfg: Buffer configuration.
        clock_ns: Clock for ``write_stamp_ns`` (default wall clock, comparable
            with ROS stamps; use ``time.monotonic_ns`` for same-host latency).

    Returns:
        A `LatentWriter` for ``cfg.transport``.
    """
    if cfg.transport == "inproc":
        return _InprocWriter(cfg, clock_ns)
    if cfg.transport == "shm":
        return _ShmWriter(cfg, clock_ns)
    if cfg.transport == "zmq":
        return _ZmqWriter(cfg, clock_ns)
    raise ValueError(f"transport must be inproc, shm or zmq, got {cfg.transport!r}")  # pragma: no cover


def open_latent_reader(cfg: LatentBufferConfig) -> LatentReader:
    """Open a reading end of a latent buffer.

    An ``shm`` reader may be opened before its writer (it attaches lazily); a
    ``zmq`` reader starts its receive thread here.

    Raises:
        LayoutMismatchError: If an existing buffer has another shape/dtype.
    """
    if cfg.transport == "inproc":
        return _InprocReader(cfg)
    if cfg.transport == "shm":
        return _ShmReader(cfg)
    if cfg.transport == "zmq":
        return _ZmqReader(cfg)
    raise ValueError(f"transport must be inproc, shm or zmq, got {cfg.transport!r}")  # pragma: no cover
