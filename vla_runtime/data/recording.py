"""Crash-safe, size-bounded rosbag2 (MCAP) recording — no rclpy here.

:class:`BagRecorder` takes already-serialised CDR messages (``(topic, receive time ns, bytes)``)
and writes them to ONE rosbag2 directory that rosbag2 (``ros2 bag info/play``), the ``rosbags``
package and Foxglove read:

* The bag is written in **parts** (``<name>_<k>.mcap``, rosbag2's split naming). A part is
  written inside a hidden staging directory (``.part_<k>/``) and only when it is closed (every
  ``part_s`` seconds or ``part_bytes`` bytes) is its file moved into the bag directory and
  ``metadata.yaml`` rewritten (write to a temporary file, fsync, atomic rename) to list it. A
  crash (even SIGKILL) therefore loses at most the open part: everything listed in
  ``metadata.yaml`` is a closed, valid MCAP file. :func:`recover` deletes a dead staging part.
* Disk use is bounded: ``max_bytes`` over all parts and ``max_duration_s``; reaching either
  stops the recording cleanly (the open part is closed and kept). A full disk (``ENOSPC``) stops
  it too: the open part is discarded, the closed parts stay valid, :attr:`BagRecorder.status`
  says why (the recorder node reports it in diagnostics).
* Interventions (operator takeovers, from ``/vla/intervention``) are listed in
  ``metadata.yaml``'s ``custom_data`` (``vla_runtime.interventions``, JSON of ``[start_ns,
  end_ns | null, reason]``) as well as being recorded as messages, so a training pipeline can
  select the corrected segments (HG-DAgger) without replaying the bag.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: Where the runtime's message types come from (the schemas embedded in each MCAP file).
TYPESTORE = "ROS2_HUMBLE"
METADATA = "metadata.yaml"
STAGING_PREFIX = ".part_"


class RecordingError(RuntimeError):
    """The recording cannot go on (the reason is in the message and in ``status``)."""


@dataclass(frozen=True)
class TopicSpec:
    """One recorded topic: name, ROS type (``pkg/msg/Type``) and whether it is latched."""

    name: str
    msgtype: str
    latched: bool = False


@dataclass
class RecorderLimits:
    """Bounds of one recording.

    Attributes:
        max_bytes: Total bytes of message data over all parts (the MCAP overhead is small).
        max_duration_s: Longest recording (receive time of the first to the last message).
        part_s: A part is closed after this many seconds of messages.
        part_bytes: … or this many bytes, whichever comes first.
    """

    max_bytes: int = 2 * 1024**3
    max_duration_s: float = 3600.0
    part_s: float = 5.0
    part_bytes: int = 64 * 1024**2

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_duration_s", "part_s", "part_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, TYPESTORE))


@dataclass
class _Part:
    index: int
    staging: Path
    writer: object
    connections: dict[str, object] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int = 0
    bytes: int = 0
    count: int = 0
    topic_counts: dict[str, int] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _qos(latched: bool):
    """The offered QoS recorded per topic (``ros2 bag play`` republishes latched topics latched)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(sec=9223372036, nsec=854775807)
    return Qos(history=QosHistory.UNKNOWN, depth=0, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               deadline=inf, lifespan=inf, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
               avoid_ros_namespace_conventions=False)


class BagRecorder:
    """Writes serialised messages into a crash-safe, bounded rosbag2 directory.

    Args:
        path: The bag directory (created; must not hold a bag already).
        topics: The topics that may be written (their types go into the MCAP schemas).
        limits: Size, duration and part bounds.

    Raises:
        RecordingError: ``path`` already holds a bag, or a topic type is unknown.
    """

    def __init__(self, path: str | os.PathLike, topics: list[TopicSpec], limits: RecorderLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or RecorderLimits()
        self.topics = {t.name: t for t in topics}
        self._typestore = _typestore()
        unknown = [t.msgtype for t in topics if t.msgtype not in self._typestore.types]
        if unknown:
            raise RecordingError(f"unknown message type(s) {unknown}")
        if (self.path / METADATA).exists():
            raise RecordingError(f"{self.path} already holds a bag ({METADATA}); choose a new directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._part: _Part | None = None
        self._closed_parts: list[dict] = []
        self._topic_counts: dict[str, int] = {}
        self._start_ns: int | None = None
        self._end_ns = 0
        self.total_bytes = 0
        self.dropped = 0
        self.status = "recording"
        self.stopped = False
        self.interventions: list[list] = []  # [start_ns, end_ns | None, reason]
        self._topic_meta: dict[str, dict] = {}

    # ------------------------------------------------------------------ writing
    def write(self, topic: str, t_ns: int, data: bytes) -> bool:
        """Write one serialised message received at ``t_ns``.

        Returns:
            False when the recording has stopped (limit reached, disk full) — the message was not
            written; :attr:`status` says why.

        Raises:
            KeyError: ``topic`` was not declared.
        """
        if self.stopped:
            self.dropped += 1
            return False
        spec = self.topics[topic]
        if self._start_ns is None:
            self._start_ns = t_ns
        if (t_ns - self._start_ns) * 1e-9 > self.limits.max_duration_s:
            self.stop(f"stopped: max_duration_s {self.limits.max_duration_s:g} s reached")
            self.dropped += 1
            return False
        if self.total_bytes + len(data) > self.limits.max_bytes:
            self.stop(f"stopped: max_bytes {self.limits.max_bytes} reached")
            self.dropped += 1
            return False
        try:
            part = self._part or self._open_part()
            conn = part.connections.get(topic)
            if conn is None:
                conn = part.writer.add_connection(topic, spec.msgtype, typestore=self._typestore,
                                                  offered_qos_profiles=[_qos(spec.latched)])
                part.connections[topic] = conn
            part.writer.write(conn, int(t_ns), data)
        except OSError as e:
            self._fail(e)
            self.dropped += 1
            return False
        part.first_ns = t_ns if part.first_ns is None else min(part.first_ns, t_ns)
        part.last_ns = max(part.last_ns, t_ns)
        part.bytes += len(data)
        part.count += 1
        part.topic_counts[topic] = part.topic_counts.get(topic, 0) + 1
        self.total_bytes += len(data)
        self._topic_counts[topic] = self._topic_counts.get(topic, 0) + 1
        self._end_ns = max(self._end_ns, t_ns)
        if part.bytes >= self.limits.part_bytes or (t_ns - part.first_ns) * 1e-9 >= self.limits.part_s:
            self.rotate()
        return not self.stopped

    def mark_intervention(self, t_ns: int, text: str) -> None:
        """Note an intervention event (``start: …`` / ``end: …``) for the metadata."""
        if text.startswith("start"):
            self.interventions.append([int(t_ns), None, text])
        elif text.startswith("end") and self.interventions and self.interventions[-1][1] is None:
            self.interventions[-1][1] = int(t_ns)

    def rotate(self) -> None:
        """Close the open part (it becomes listed in ``metadata.yaml``)."""
        if self._part is None:
            return
        try:
            self._close_part()
        except OSError as e:
            self._fail(e)

    def stop(self, reason: str = "stopped") -> None:
        """Close the open part and stop; later writes are refused."""
        if self.stopped:
            return
        self.rotate()
        self.stopped = True
        if not self.status.startswith("FAILED"):
            self.status = reason
        try:
            self._write_metadata()
        except OSError:
            pass

    close = stop

    # ------------------------------------------------------------------ parts
    def _open_part(self) -> _Part:
        from rosbags.rosbag2 import StoragePlugin, Writer

        k = len(self._closed_parts)
        staging = self.path / f"{STAGING_PREFIX}{k}"
        if staging.exists():
            shutil.rmtree(staging)
        writer = Writer(staging, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        self._part = _Part(k, staging, writer)
        return self._part

    def _close_part(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        part.writer.close()
        if part.count == 0:
            shutil.rmtree(part.staging, ignore_errors=True)
            return
        src = part.staging / f"{part.staging.name}.mcap"
        # The writer's own topic entries (same QoS serialisation it put into the MCAP channels).
        staged = yaml.safe_load((part.staging / METADATA).read_text())["rosbag2_bagfile_information"]
        for entry in staged["topics_with_message_count"]:
            self._topic_meta[entry["topic_metadata"]["name"]] = entry["topic_metadata"]
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
        name = f"{self.path.name}_{part.index}.mcap"
        os.replace(src, self.path / name)
        shutil.rmtree(part.staging, ignore_errors=True)
        self._closed_parts.append({
            "path": name, "starting_time": {"nanoseconds_since_epoch": int(part.first_ns)},
            "duration": {"nanoseconds": int(part.last_ns - part.first_ns)}, "message_count": part.count,
            "topics": dict(part.topic_counts),
        })
        _fsync_dir(self.path)
        self._write_metadata()

    def _fail(self, e: OSError) -> None:
        """Disk trouble: drop the open part, keep the closed ones, stop."""
        if e.errno == errno.ENOSPC:
            self.status = "FAILED: disk full (ENOSPC); recording stopped, closed parts kept"
        else:
            self.status = f"FAILED: {e.strerror or e!r} ({os.strerror(e.errno) if e.errno else ''}); recording stopped"
        part, self._part = self._part, None
        if part is not None:
            try:
                part.writer.close()
            except Exception:  # noqa: BLE001 - the part is being discarded anyway
                pass
            shutil.rmtree(part.staging, ignore_errors=True)
        self.stopped = True
        try:
            self._write_metadata()
        except OSError:
            pass

    # ------------------------------------------------------------------ metadata
    def _write_metadata(self) -> None:
        parts = self._closed_parts
        if not parts:
            return
        start = min(p["starting_time"]["nanoseconds_since_epoch"] for p in parts)
        end = max(p["starting_time"]["nanoseconds_since_epoch"] + p["duration"]["nanoseconds"] for p in parts)
        counts: dict[str, int] = {}
        for p in parts:
            for t, c in p["topics"].items():
                counts[t] = counts.get(t, 0) + c
        topics = [{"topic_metadata": self._topic_meta[name], "message_count": c} for name, c in counts.items()]
        meta = {"rosbag2_bagfile_information": {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": int(end - start)},
            "starting_time": {"nanoseconds_since_epoch": int(start)},
            "message_count": sum(p["message_count"] for p in parts),
            "topics_with_message_count": topics,
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [p["path"] for p in parts],
            "files": [{k: p[k] for k in ("path", "starting_time", "duration", "message_count")} for p in parts],
            "custom_data": {
                "vla_runtime.interventions": json.dumps(self.interventions),
                "vla_runtime.status": self.status,
            },
            "ros_distro": os.environ.get("ROS_DISTRO", "kilted"),
        }}
        tmp = self.path / f".{METADATA}.tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(meta, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / METADATA)
        _fsync_dir(self.path)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, object]:
        """Status, parts, bytes, messages and drops (for diagnostics)."""
        return {
            "status": self.status,
            "path": str(self.path),
            "parts_closed": len(self._closed_parts),
            "bytes": self.total_bytes,
            "messages": sum(self._topic_counts.values()),
            "dropped": self.dropped,
            "interventions": len(self.interventions),
            "duration_s": round((self._end_ns - self._start_ns) * 1e-9, 3) if self._start_ns is not None else 0.0,
        }


def recover(path: str | os.PathLike) -> list[str]:
    """After a crash: delete staging parts that were never closed; return what was removed."""
    p = Path(path)
    removed = []
    for d in sorted(p.glob(f"{STAGING_PREFIX}*")):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    tmp = p / f".{METADATA}.tmp"
    if tmp.exists():
        tmp.unlink()
        removed.append(tmp.name)
    return removed


def deserialize(typestore, raw: bytes | memoryview, msgtype: str):
    """CDR bytes → a rosbags message object, tolerating trailing bytes.

    Bags this runtime records now hold exact messages (every one decodes with ``rosbags``' strict
    reader and with ``mcap``; ``test_recording`` checks it). Older recordings carry ~170 bytes of
    the fast path's heap after every plan (rclpy's ``serialize_message`` template, see
    ``nodes/cdr.py``); reading tolerates them so those bags still replay.
    """
    if len(raw) < 4 or bytes(raw[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise RecordingError(f"{msgtype}: not a CDR payload")
    msgdef = typestore.get_msgdef(msgtype)
    func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    message, _pos = func(memoryview(raw)[4:], 0, msgdef.cls, typestore)
    return message


def read_bag(path: str | os.PathLike, topics: list[str] | None = None):
    """Iterate ``(topic, t_ns, message)`` of a bag in time order (rosbags objects; no rclpy needed).

    Raises:
        RecordingError: No closed part yet (no ``metadata.yaml``).
    """
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if not (p / METADATA).exists():
        raise RecordingError(f"{p}: no {METADATA} — no part of this recording was closed")
    ts = _typestore()
    with Reader(p) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, t_ns, deserialize(ts, raw, conn.msgtype)


def bag_interventions(path: str | os.PathLike) -> list[list]:
    """The interventions listed in a bag's metadata (``[start_ns, end_ns | None, reason]``)."""
    meta = yaml.safe_load((Path(path) / METADATA).read_text())["rosbag2_bagfile_information"]
    return json.loads((meta.get("custom_data") or {}).get("vla_runtime.interventions", "[]"))
