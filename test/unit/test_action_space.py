"""Action layouts, de-normalisation, discrete bins, rotations, deltas."""

from __future__ import annotations

import numpy as np
import pytest

from vla_runtime.core.action_space import ActionSpace, ProprioNormalizer, dim_names
from vla_runtime.core.model_spec import ActionGroup, ActionSpec, DiscreteHead, Normalization, ProprioSpec
from vla_runtime.core.rotation import quaternion_multiply, quaternion_to_rotvec, rotvec_to_quaternion

JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
H = 4


def space(groups: list[ActionGroup], norm: Normalization | None = None, **kw) -> ActionSpace:
    return ActionSpace(ActionSpec(groups=tuple(groups), normalization=norm or Normalization(), **kw), H)


def panda(norm: Normalization | None = None) -> ActionSpace:
    return space([ActionGroup(name="arm", kind="joint_position", joints=JOINTS), ActionGroup(name="hand",
                                                                                             kind="gripper")], norm)


def test_joint_and_gripper_names() -> None:
    s = panda()
    assert s.dim_names == (*JOINTS, "hand/gripper")
    assert s.absolute_mask.all() and not s.delta_mask.any()
    assert s.index("hand/gripper") == 7
    with pytest.raises(KeyError, match="'nope'"):
        s.index("nope")


def test_cartesian_layout_names() -> None:
    q = space([ActionGroup(name="ee", kind="cartesian_pose", rotation="quaternion", gripper=True)])
    assert q.dim_names == ("ee/x", "ee/y", "ee/z", "ee/qx", "ee/qy", "ee/qz", "ee/qw", "ee/gripper")
    aa = space([ActionGroup(name="ee", kind="cartesian_delta", rotation="axis_angle", gripper=True)])
    assert aa.dim_names == ("ee/x", "ee/y", "ee/z", "ee/rx", "ee/ry", "ee/rz", "ee/gripper")
    assert aa.delta_mask.tolist() == [True] * 6 + [False]


def test_whole_body_multi_group_layout() -> None:
    groups = [
        ActionGroup(name="arm_left", kind="joint_position", joints=("l_shoulder", "l_elbow", "l_wrist")),
        ActionGroup(name="arm_right", kind="cartesian_pose", rotation="quaternion", frame="torso"),
        ActionGroup(name="torso", kind="joint_delta", joints=("waist_yaw", "waist_pitch")),
        ActionGroup(name="head", kind="joint_velocity", joints=("neck_yaw",)),
        ActionGroup(name="hands", kind="joint_position", joints=("l_grip", "r_grip")),
        ActionGroup(name="base", kind="base_velocity"),
    ]
    s = space(groups)
    assert s.dim_names == (
        "l_shoulder", "l_elbow", "l_wrist",
        "arm_right/x", "arm_right/y", "arm_right/z", "arm_right/qx", "arm_right/qy", "arm_right/qz", "arm_right/qw",
        "waist_yaw", "waist_pitch",
        "neck_yaw",
        "l_grip", "r_grip",
        "base/vx", "base/vy", "base/wz",
    )  # fmt: skip
    assert s.dim == 18 and dim_names(s.spec) == s.dim_names
    refs = {d.name: d.reference for d in s.dims}
    assert refs["waist_yaw"] == "delta" and refs["neck_yaw"] == "velocity" and refs["base/wz"] == "velocity"
    assert refs["arm_right/qw"] == "absolute"
    parts = s.split(np.zeros((H, 18)))
    assert {k: v.shape[1] for k, v in parts.items()} == {"arm_left": 3, "arm_right": 7, "torso": 2, "head": 1,
                                                         "hands": 2, "base": 3}


def test_duplicate_dim_names_rejected() -> None:
    with pytest.raises(ValueError, match="j1"):
        space([ActionGroup(name="a", kind="joint_position", joints=("j1",)), ActionGroup(name="b",
                                                                                         kind="joint_velocity",
                                                                                         joints=("j1",))])


def test_mean_std_round_trip_and_shapes() -> None:
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=8), rng.uniform(0.1, 2, size=8)
    s = panda(Normalization(kind="mean_std", mean=tuple(mean), std=tuple(std)))
    raw = rng.normal(size=(1, H, 8)).astype(np.float32)
    phys = s.decode(raw)
    assert phys.shape == (H, 8) and phys.dtype == np.float64
    np.testing.assert_allclose(phys, raw[0] * std + mean, rtol=1e-6)
    np.testing.assert_allclose(s.encode(phys), raw, atol=1e-6)
    np.testing.assert_allclose(s.decode(raw[0]), phys)


def test_min_max_maps_unit_interval() -> None:
    lo, hi = np.arange(8.0), np.arange(8.0) + 2.0
    s = panda(Normalization(kind="min_max", min=tuple(lo), max=tuple(hi)))
    out = s.decode(np.stack([-np.ones(8), np.ones(8), np.zeros(8), np.full(8, 0.5)])[None].astype(np.float32))
    np.testing.assert_allclose(out[0], lo)
    np.testing.assert_allclose(out[1], hi)
    np.testing.assert_allclose(out[2], lo + 1.0)
    np.testing.assert_allclose(s.encode(out), [[[-1] * 8, [1] * 8, [0] * 8, [0.5] * 8]], atol=1e-6)


def test_decode_rejects_bad_input() -> None:
    s = panda()
    with pytest.raises(ValueError, match=r"\[1, 4, 7\]"):
        s.decode(np.zeros((1, H, 7), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        s.decode(np.full((H, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="int64"):
        s.decode(np.zeros((H, 8), np.int64))


def discrete(bins: int = 4, norm: Normalization | None = None) -> ActionSpace:
    return space(
        [ActionGroup(name="arm", kind="joint_position", joints=("j1", "j2"))],
        norm,
        head="discrete",
        discrete=DiscreteHead(bins=bins),
    )


def test_discrete_ids_decode_to_bin_centres() -> None:
    s = discrete(4)
    np.testing.assert_allclose(s.bin_centers, [-0.75, -0.25, 0.25, 0.75])
    ids = np.array([[[0, 3], [1, 2], [2, 1], [3, 0]]], dtype=np.int64)
    out = s.decode(ids)
    np.testing.assert_allclose(out, [[-0.75, 0.75], [-0.25, 0.25], [0.25, -0.25], [0.75, -0.75]])
    np.testing.assert_array_equal(s.encode(out), ids)
    with pytest.raises(ValueError, match=r"\[4\]"):
        s.decode(np.full((H, 2), 4, np.int64))


def test_discrete_logits_and_denormalisation() -> None:
    s = discrete(4, Normalization(kind="min_max", min=(0.0, 10.0), max=(1.0, 20.0)))
    logits = np.zeros((1, H, 2, 4), np.float32)
    logits[0, :, 0, 3] = 5.0  # j1 → top bin centre 0.75 → 0.875 in [0, 1]
    logits[0, :, 1, 0] = 5.0  # j2 → bottom bin centre -0.75 → 11.25 in [10, 20]
    out = s.decode(logits)
    np.testing.assert_allclose(out[:, 0], 0.875)
    np.testing.assert_allclose(out[:, 1], 11.25)


def test_quaternion_output_is_normalised() -> None:
    s = space([ActionGroup(name="ee", kind="cartesian_pose", rotation="quaternion")])
    raw = np.zeros((H, 7), np.float32)
    raw[:, 3:] = [0.0, 0.0, 2.0, 2.0]
    raw[1, 3:] = 0.0  # degenerate → identity
    out = s.decode(raw)
    np.testing.assert_allclose(out[0, 3:], [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(out[1, 3:], [0, 0, 0, 1])


def test_axis_angle_quaternion_conversions() -> None:
    rv = np.array([[0.0, 0.0, np.pi / 2], [0.3, -0.2, 0.1], [0.0, 0.0, 0.0]])
    q = rotvec_to_quaternion(rv)
    np.testing.assert_allclose(q[0], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    np.testing.assert_allclose(q[2], [0, 0, 0, 1])
    np.testing.assert_allclose(quaternion_to_rotvec(q), rv, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_rotvec(-q), rv, atol=1e-12)  # q and -q: same rotation


def test_joint_delta_to_absolute_and_back() -> None:
    s = space([ActionGroup(name="arm", kind="joint_delta", joints=("j1", "j2")), ActionGroup(name="hand",
                                                                                             kind="gripper")])
    chunk = np.array([[0.1, -0.1, 0.5]] * H)
    cur = np.array([1.0, 2.0, 0.0])
    absolute = s.to_absolute(chunk, cur)
    np.testing.assert_allclose(absolute[:, :2], [[1.1, 1.9]] * H)
    np.testing.assert_allclose(absolute[:, 2], 0.5)  # gripper is absolute: untouched
    np.testing.assert_allclose(s.to_relative(absolute, cur), chunk)
    np.testing.assert_allclose(s.to_absolute(chunk, {"j1": 1.0, "j2": 2.0}), absolute)
    with pytest.raises(KeyError, match="j2"):
        s.to_absolute(chunk, {"j1": 1.0})

    cum = space([ActionGroup(name="arm", kind="joint_delta", joints=("j1",), cumulative=True)])
    a = cum.to_absolute(np.full((H, 1), 0.1), np.array([1.0]))
    np.testing.assert_allclose(a[:, 0], [1.1, 1.2, 1.3, 1.4])
    np.testing.assert_allclose(cum.to_relative(a, np.array([1.0])), np.full((H, 1), 0.1))


@pytest.mark.parametrize("rotation", ["axis_angle", "quaternion"])
@pytest.mark.parametrize("cumulative", [False, True])
def test_cartesian_delta_to_absolute(rotation: str, cumulative: bool) -> None:
    s = space([ActionGroup(name="ee", kind="cartesian_delta", rotation=rotation, gripper=True, cumulative=cumulative)])
    quat = rotation == "quaternion"
    rot90z = rotvec_to_quaternion(np.array([0, 0, np.pi / 2]))
    d_rot = rot90z if quat else np.array([0, 0, np.pi / 2])
    cur_rot = np.array([0, 0, 0, 1.0]) if quat else np.zeros(3)
    chunk = np.tile(np.concatenate([[0.1, 0.0, 0.0], d_rot, [0.7]]), (H, 1))
    cur = np.concatenate([[1.0, 2.0, 3.0], cur_rot, [0.0]])
    out = s.to_absolute(chunk, cur)
    steps = np.arange(1, H + 1) if cumulative else np.ones(H)
    np.testing.assert_allclose(out[:, 0], 1.0 + 0.1 * steps)
    np.testing.assert_allclose(out[:, -1], 0.7)
    q_out = out[:, 3:7] if quat else rotvec_to_quaternion(out[:, 3:6])
    # step 1 is always a 90° turn about z from identity
    assert abs(abs(np.dot(q_out[0], rot90z)) - 1.0) < 1e-9
    if cumulative:  # step 2 is 180°
        r180 = quaternion_multiply(rot90z, rot90z)
        assert abs(abs(np.dot(q_out[1], r180)) - 1.0) < 1e-9
    np.testing.assert_allclose(s.to_relative(out, cur)[:, :3], chunk[:, :3], atol=1e-9)
    back = s.to_relative(out, cur)
    q_back = back[:, 3:7] if quat else rotvec_to_quaternion(back[:, 3:6])
    q_in = chunk[:, 3:7] if quat else rotvec_to_quaternion(chunk[:, 3:6])
    np.testing.assert_allclose(np.abs(np.sum(q_back * q_in, axis=1)), 1.0, atol=1e-9)


def test_proprio_normaliser() -> None:
    spec = ProprioSpec(names=("a", "b"), normalization=Normalization(kind="mean_std", mean=(1.0, 2.0), std=(2.0, 4.0)))
    p = ProprioNormalizer(spec)
    out = p({"b": 6.0, "a": 3.0, "extra": 0.0})
    assert out.shape == (1, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, 1.0]])
    np.testing.assert_allclose(p(np.array([3.0, 6.0])), out)
    np.testing.assert_allclose(p.denormalize(out), [[3.0, 6.0]])
    with pytest.raises(KeyError, match="'b'"):
        p({"a": 1.0})
    with pytest.raises(ValueError, match="3 values, expected 2"):
        p(np.zeros(3))
