"""MeasuredState: named measurements from messages in any order and subset, read as arrays."""

from __future__ import annotations

import numpy as np
import pytest

from vla_runtime.core.measured_state import MeasuredState

ARM = tuple(f"j{i}" for i in range(1, 8))


def test_scatter_from_messages_in_any_order_and_gather_any_subset():
    st = MeasuredState([*ARM, "gripper/gripper", "arm/z", "arm/qw"],
                       joint_aliases={"gripper/gripper": "finger1"}, pose_keys={"arm/z": "z", "arm/qw": "qw"})
    assert not st.complete
    # The arm in reverse order, with a joint nobody needs.
    names = ("extra", *reversed(ARM))
    st.update_joints(names, np.array([99.0, 7, 6, 5, 4, 3, 2, 1]))
    assert not st.complete and st.missing() == ["gripper/gripper", "arm/z", "arm/qw"]
    st.update_joints(("finger1", "finger2"), np.array([0.04, 0.05]))
    st.update_pose((0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0))
    assert st.complete and st.missing() == []
    idx = st.index(["gripper/gripper", None, "j3", "arm/qw", "arm/z"])
    np.testing.assert_array_equal(st.values[idx], [0.04, 0.0, 3.0, 1.0, 0.3])
    # The same layout again (same tuple object): new values land in the same slots.
    st.update_joints(names, np.array([0.0, 70, 60, 50, 40, 30, 20, 10]))
    np.testing.assert_array_equal(st.values[st.index(ARM)], [10, 20, 30, 40, 50, 60, 70])
    # An equal tuple that is another object maps the same way.
    st.update_joints(tuple(list(names)), np.arange(8.0))
    np.testing.assert_array_equal(st.values[st.index(["j1", "j7"])], [7.0, 1.0])


def test_a_joint_can_measure_a_name_and_its_alias():
    st = MeasuredState(["finger1", "gripper/gripper"], joint_aliases={"gripper/gripper": "finger1"})
    st.update_joints(("finger1",), np.array([0.02]))
    assert st.complete
    np.testing.assert_array_equal(st.values[:2], [0.02, 0.02])


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"names listed twice: \['j1'\]"):
        MeasuredState(["j1", "j2", "j1"])
    with pytest.raises(ValueError, match="pose fields must be among"):
        MeasuredState(["arm/roll"], pose_keys={"arm/roll": "roll"})
    with pytest.raises(KeyError, match="does not hold 'j9'"):
        MeasuredState(ARM).index(["j9"])


def test_nothing_needed_is_complete_at_once():
    st = MeasuredState([])
    assert st.complete
    st.update_joints(ARM, np.zeros(7))  # nothing to take
    assert st.values.shape == (1,)
