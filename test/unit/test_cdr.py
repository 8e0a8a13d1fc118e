"""The fast path's hand-filled serialized messages are what rclpy's own serializer makes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_runtime.nodes.cdr import JointStateDecoder, PlanEncoder

NAMES = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper/gripper"]


def _expected(stamp_ns: int, values: np.ndarray, dt: float) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "plan"
    msg.joint_names = NAMES
    for k, row in enumerate(values):
        pt = JointTrajectoryPoint(positions=[float(v) for v in row])
        t = k * dt
        pt.time_from_start.sec = int(t)
        pt.time_from_start.nanosec = int(round((t - int(t)) * 1e9))
        msg.points.append(pt)
    return msg


def test_plan_bytes_decode_to_rclpys_message_for_every_point_count() -> None:
    enc = PlanEncoder(NAMES, "plan", max_points=12, dt=0.01)
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        values = rng.normal(0, 1.5, (n, len(NAMES)))
        stamp = 1_795_418_025_079_227_947 + n
        got = enc.encode(stamp, values)
        want = serialize_message(_expected(stamp, values, 0.01))
        assert deserialize_message(got, JointTrajectory) == deserialize_message(want, JointTrajectory), n


def test_plan_bytes_are_exactly_the_message_with_zeroed_padding() -> None:
    """A plan carries its message and nothing else: a strict CDR reader (rosbags) decodes it and
    re-serializes it to the same bytes, so no padding or trailing byte holds process memory.
    rclpy's serialize_message does not pass this (its buffer runs past the message)."""
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    enc = PlanEncoder(NAMES, "plan", max_points=6, dt=1 / 30)
    rng = np.random.default_rng(3)
    for n in range(1, 7):
        got = enc.encode(1_795_418_025_079_227_947 + n, rng.normal(0, 1.5, (n, len(NAMES))))
        msg = ts.deserialize_cdr(got, "trajectory_msgs/msg/JointTrajectory")  # strict: refuses trailing bytes
        assert bytes(ts.serialize_cdr(msg, "trajectory_msgs/msg/JointTrajectory")) == got, n
    # What the encoder avoids: rclpy's serializer hands back more than the message.
    ours = enc.encode(0, np.zeros((1, len(NAMES))))
    leaky = serialize_message(_expected(0, np.zeros((1, len(NAMES))), 1 / 30))
    assert len(leaky) > len(ours)
    with pytest.raises(Exception, match="size mismatch"):
        ts.deserialize_cdr(leaky, "trajectory_msgs/msg/JointTrajectory")


def test_plan_encoder_refuses_wrong_shapes_by_name() -> None:
    enc = PlanEncoder(NAMES, "plan", max_points=4, dt=0.01)
    with pytest.raises(ValueError, match=r"\(1..4, 8\), got \(5, 8\)"):
        enc.encode(0, np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"got \(2, 7\)"):
        enc.encode(0, np.zeros((2, 7)))
    with pytest.raises(ValueError, match="max_points must be ≥ 1, got 0"):
        PlanEncoder(NAMES, "plan", max_points=0, dt=0.01)


def _js(names, positions, frame="", stamp=(12, 34)) -> bytes:
    m = JointState()
    m.header.stamp.sec, m.header.stamp.nanosec = stamp
    m.header.frame_id = frame
    m.name = list(names)
    m.position = [float(p) for p in positions]
    m.velocity = [0.5] * len(positions)
    return serialize_message(m)


@pytest.mark.parametrize("kernel", [True, False], ids=["C", "python"])
def test_joint_state_positions_follow_the_layout_and_refuse_bad_messages(kernel) -> None:
    dec = JointStateDecoder(kernel=kernel)
    assert dec.kernel is kernel  # the C walker is built here (test_chunk_scheduler checks the module)
    rng = np.random.default_rng(1)
    first = rng.normal(size=9)
    names, pos = dec.decode(_js(NAMES + ["panda_finger_joint1"], first))
    assert names == tuple(NAMES + ["panda_finger_joint1"])
    np.testing.assert_array_equal(pos, first)
    for k in range(20):  # same layout, new stamp and values: no full deserialization
        vals = rng.normal(size=9)
        n2, p2 = dec.decode(_js(NAMES + ["panda_finger_joint1"], vals, stamp=(100 + k, 7 * k)))
        assert n2 is names
        np.testing.assert_array_equal(p2, vals)
    assert dec.slow_path == 1
    # Other names, another frame, fewer joints: decoded right through the slow path.
    for nm, frame in ((["a", "bb", "ccc"], ""), (["a", "bb", "ccc"], "base_link"), (["x"], "")):
        vals = rng.normal(size=len(nm))
        n3, p3 = dec.decode(_js(nm, vals, frame=frame))
        assert n3 == tuple(nm)
        np.testing.assert_array_equal(p3, vals)
    with pytest.raises(ValueError, match="3 names and 2 positions"):
        dec.decode(_js(["a", "b", "c"], [1.0, 2.0]))
    with pytest.raises(ValueError, match="does not deserialize"):
        dec.decode(b"\x00\x01\x00\x00\xff")


@pytest.mark.parametrize("kernel", [True, False], ids=["C", "python"])
def test_joint_state_reordered_or_truncated_is_never_read_at_the_old_offset(kernel) -> None:
    """Names of equal length in another order have the same layout: the walk compares the names
    themselves, so the positions land on the right joints; a truncated message is refused."""
    dec = JointStateDecoder(kernel=kernel)
    dec.decode(_js(NAMES, np.arange(8.0)))
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    names, pos = dec.decode(_js(swapped, np.arange(8.0) + 10))
    assert names == tuple(swapped) and dec.slow_path == 2
    np.testing.assert_array_equal(pos, np.arange(8.0) + 10)
    raw = _js(swapped, np.arange(8.0))
    at = dec._positions_at(raw)
    assert at > 0
    assert dec._positions_at(raw[:at + 8 * 8]) == at  # velocities and efforts are not needed
    for cut in (at + 8 * 8 - 1, at, at // 2, 12, 3):  # a position, or the names, cut off
        assert dec._positions_at(raw[:cut]) == -1
