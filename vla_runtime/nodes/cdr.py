"""The fast path's two hot messages as serialized bytes, without Python message objects.

Every tick the fast path publishes a JointTrajectory plan (up to ``max_points`` points of A
positions) and takes the newest JointState. Through rclpy's message classes that is one Python
object per point and per field, converted element by element; measured in the running graph it
was about a third of the loop's own overhead (take 0.3 ms, fill + publish 0.25 ms at p50). Here:

* :class:`PlanEncoder` serializes the plan once per point count, at start-up, with a distinct
  sentinel in every position slot, and records where each sentinel landed. A tick then writes the
  stamp and the positions into those offsets of a preallocated buffer (one strided NumPy
  assignment) and publishes the bytes. Nothing about the CDR layout is hand-coded. The template
  comes from ``rosbags``' CDR serializer, not from ``rclpy.serialization.serialize_message``: the
  latter (rclpy 9.1 / Fast DDS 3) returns its whole buffer — uninitialised padding and, after the
  message, bytes of the process's heap (pointers) — which then went out on the wire in every plan
  and made strict CDR readers refuse recorded bags ("CDR message size mismatch"). rosbags writes
  exactly the message, padding zeroed; a start-up check deserializes each template with rclpy.
* :class:`JointStateDecoder` reads the positions of a serialized JointState at the offset its
  layout (frame_id, names, counts) puts them. The offset is found once per layout by
  deserializing the message normally and locating the position array; later messages with
  byte-identical frame_id and names reuse it after checking the count. A message with any other
  layout takes the slow path again, and one that does not deserialize is refused.

Both are checked against rclpy's serializer in ``test/unit/test_cdr.py``.
"""

from __future__ import annotations

import struct

import numpy as np

try:  # JointStateDecoder._positions_at in C (core/_fastpath.c); the Python walk is the reference
    from vla_runtime.core._fastpath import jointstate_positions_at as _c_positions_at
except ImportError:  # not built: the Python walk
    _c_positions_at = None

__all__ = ["PlanEncoder", "JointStateDecoder"]

_ENCAPSULATION = 4  # CDR encapsulation header before the payload


class PlanEncoder:
    """Serialized ``trajectory_msgs/JointTrajectory`` plans with fixed names, frame and point times.

    Args:
        joint_names: The plan's dims.
        frame_id: ``header.frame_id`` of every plan.
        max_points: Most points a plan carries.
        dt: Spacing of the points' ``time_from_start`` (point k at ``k * dt``).
    """

    def __init__(self, joint_names: list[str], frame_id: str, max_points: int, dt: float) -> None:
        from rclpy.serialization import deserialize_message
        from trajectory_msgs.msg import JointTrajectory

        if max_points < 1:
            raise ValueError(f"max_points must be ≥ 1, got {max_points}")
        if not joint_names:
            raise ValueError("a plan needs at least one joint name")
        self.n_dims = len(joint_names)
        self.max_points = int(max_points)
        self._buffers: list[bytearray | None] = [None]
        self._views: list[np.ndarray | None] = [None]
        for n in range(1, self.max_points + 1):
            sentinel = self._sentinels(n)
            buf = bytearray(_serialize_plan(list(joint_names), frame_id, sentinel, dt))
            msg = deserialize_message(bytes(buf), JointTrajectory)  # the middleware reads it as we wrote it
            if len(msg.points) != n or list(msg.joint_names) != list(joint_names) or msg.header.frame_id != frame_id:
                raise RuntimeError(f"unexpected CDR layout: a {n}-point plan template does not read back")
            self._buffers.append(buf)
            self._views.append(self._locate(buf, sentinel))
        stamp = bytes(self._buffers[1])
        self._stamp_at = stamp.find(struct.pack("<iI", 0x5A5A5A5A, 0x3C3C3C3C))
        if self._stamp_at != _ENCAPSULATION:
            raise RuntimeError(f"unexpected CDR layout: header stamp at byte {self._stamp_at}")

    def _sentinels(self, n: int) -> np.ndarray:
        k = np.arange(n)[:, None]
        j = np.arange(self.n_dims)[None, :]
        return -987654.0 - 1000.0 * k - j - 0.125  # exact in binary, unlike any real joint value

    def _locate(self, buf: bytearray, sentinel: np.ndarray) -> np.ndarray:
        """A writable (n, A) float64 view of ``buf`` at the sentinels' offsets."""
        raw = bytes(buf)
        offsets = np.empty(sentinel.shape, dtype=np.int64)
        for (k, j), v in np.ndenumerate(sentinel):
            pat = struct.pack("<d", float(v))
            at = raw.find(pat)
            if at < 0 or raw.find(pat, at + 1) >= 0:
                raise RuntimeError(f"unexpected CDR layout: position sentinel ({k}, {j}) found {raw.count(pat)} times")
            offsets[k, j] = at
        n = sentinel.shape[0]
        row = int(offsets[1, 0] - offsets[0, 0]) if n > 1 else 8 * self.n_dims
        if not (np.all(np.diff(offsets, axis=1) == 8) and np.all(np.diff(offsets[:, 0]) == row)):
            raise RuntimeError("unexpected CDR layout: plan positions are not evenly strided doubles")
        return np.ndarray(shape=(n, self.n_dims), dtype="<f8", buffer=buf, offset=int(offsets[0, 0]),
                          strides=(row, 8))

    def encode(self, stamp_ns: int, values: np.ndarray) -> bytes:
        """The serialized plan: header stamp ``stamp_ns`` (wall clock), one point per row of ``values``.

        Raises:
            ValueError: ``values`` is not (n, A) with 1 ≤ n ≤ ``max_points``.
        """
        n = len(values)
        if not 1 <= n <= self.max_points or values.ndim != 2 or values.shape[1] != self.n_dims:
            raise ValueError(f"plan values must be (1..{self.max_points}, {self.n_dims}), got {values.shape}")
        buf = self._buffers[n]
        self._views[n][...] = values
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        struct.pack_into("<iI", buf, self._stamp_at, sec, nsec)
        return bytes(buf)


def _serialize_plan(joint_names: list[str], frame_id: str, positions: np.ndarray, dt: float) -> bytes:
    """A JointTrajectory (stamp 0x5A5A5A5A.0x3C3C3C3C, point k at ``k * dt``) as exact CDR bytes."""
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)  # JointTrajectory is the same message in every distro
    time, duration = ts.types["builtin_interfaces/msg/Time"], ts.types["builtin_interfaces/msg/Duration"]
    point = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"]
    empty = np.zeros(0, dtype=np.float64)
    points = []
    for k, row in enumerate(positions):
        t = k * dt
        points.append(point(positions=np.asarray(row, dtype=np.float64), velocities=empty, accelerations=empty,
                            effort=empty, time_from_start=duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))))
    msg = ts.types["trajectory_msgs/msg/JointTrajectory"](
        header=ts.types["std_msgs/msg/Header"](stamp=time(sec=0x5A5A5A5A, nanosec=0x3C3C3C3C), frame_id=frame_id),
        joint_names=joint_names, points=points)
    return bytes(ts.serialize_cdr(msg, "trajectory_msgs/msg/JointTrajectory"))


class JointStateDecoder:
    """Names and positions of serialized ``sensor_msgs/JointState`` messages.

    :meth:`decode` returns ``(names, positions)``; ``names`` is the same tuple object for as long as
    the names do not change (callers may cache per-name lookups on it), ``positions`` a fresh
    float64 array. The fast path walks the CDR layout (frame_id, then each name compared byte for
    byte with the last message's, then the position count); padding bytes are never compared
    (the serializer does not clear them). Anything unexpected (other names, a short buffer, a
    count mismatch) takes the full deserialization, which raises ValueError for a message that
    does not deserialize or whose position count does not match its names.
    """

    def __init__(self, kernel: bool | None = None) -> None:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import JointState

        self._deserialize = deserialize_message
        self._type = JointState
        self._name_bytes: tuple[bytes, ...] = ()  # the current names, NUL-terminated, as serialized
        #: Walk the layout in C (None: where it is built; False: the Python reference).
        self.kernel = _c_positions_at is not None if kernel is None else bool(kernel and _c_positions_at)
        self.names: tuple[str, ...] = ()
        self.slow_path = 0  # messages that took the full deserialization

    @staticmethod
    def _align(o: int, k: int) -> int:
        return _ENCAPSULATION + -(-(o - _ENCAPSULATION) // k) * k

    def _positions_at(self, raw: bytes) -> int:
        """Offset of the positions if ``raw`` has the current names (else -1)."""
        if self.kernel:
            return _c_positions_at(raw, self._name_bytes)
        u32 = int.from_bytes
        size = len(raw)
        o = _ENCAPSULATION + 8  # after the stamp
        if o + 4 > size:
            return -1
        o = self._align(o + 4 + u32(raw[o:o + 4], "little"), 4)  # frame_id
        if o + 4 > size or u32(raw[o:o + 4], "little") != len(self._name_bytes):
            return -1
        o += 4
        for nb in self._name_bytes:
            o = self._align(o, 4)
            n = len(nb)
            if u32(raw[o:o + 4], "little") != n or raw[o + 4:o + 4 + n] != nb:
                return -1
            o += 4 + n
        o = self._align(o, 4)
        if o + 4 > size or u32(raw[o:o + 4], "little") != len(self._name_bytes):
            return -1
        o = self._align(o + 4, 8)
        return o if o + 8 * len(self._name_bytes) <= size else -1

    def decode(self, raw: bytes) -> tuple[tuple[str, ...], np.ndarray]:
        if self._name_bytes:
            at = self._positions_at(raw)
            if at >= 0:
                return self.names, np.frombuffer(raw, dtype="<f8", count=len(self._name_bytes), offset=at).copy()
        return self._learn(raw)

    def _learn(self, raw: bytes) -> tuple[tuple[str, ...], np.ndarray]:
        self.slow_path += 1
        try:
            msg = self._deserialize(raw, self._type)
        except Exception as e:  # noqa: BLE001 - whatever the middleware's deserializer raises
            raise ValueError(f"JointState does not deserialize: {e}") from None
        names = tuple(msg.name)
        pos = np.asarray(msg.position, dtype=np.float64)
        if len(pos) != len(names):
            raise ValueError(f"JointState with {len(names)} names and {len(pos)} positions")
        if names != self.names:
            self.names = names
            self._name_bytes = tuple(n.encode() + b"\0" for n in names)
            at = self._positions_at(raw)
            if at < 0 or not np.array_equal(np.frombuffer(raw, "<f8", len(pos), at), pos, equal_nan=True):
                self._name_bytes = ()  # a layout this walk does not know: always the slow path
        return names, pos
