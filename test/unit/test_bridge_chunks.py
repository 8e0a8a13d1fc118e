"""Bridge chunk validation (each rejection named), the policy track sampling and the resume rebase (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from test.conftest import ROOT
from vla_runtime.core.bridge.chunks import (
    LAYOUT,
    NON_FINITE,
    POINT_LENGTH,
    REBASE_S,
    TIME_ORDER,
    ChunkRejection,
    ChunkValidator,
    ResumeRebase,
    ValidChunk,
    interp_rows,
)
from vla_runtime.core.command_mapping import GripperCommand, JointCommand, PoseCommand
from vla_runtime.core.config import load_config
from vla_runtime.core.safety_filter import SafetyFilter

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
NAMES = (*ARM, "gripper/gripper")


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config" / "sim_panda.yaml")


@pytest.fixture
def safety(cfg) -> SafetyFilter:
    return SafetyFilter(cfg.robot, cfg.safety, command_period_s=0.01)


@pytest.fixture
def validator(cfg, safety) -> ChunkValidator:
    return ChunkValidator(cfg.robot, safety)


def rows(n: int = 5, arm: np.ndarray = HOME, grip: float = 0.03) -> list[list[float]]:
    return [[*(arm + 0.01 * k).tolist(), grip] for k in range(n)]


def offsets(n: int = 5, dt: float = 0.01) -> list[float]:
    return [k * dt for k in range(n)]


def test_a_valid_chunk_gets_absolute_times_values_and_its_mapping(validator):
    c = validator.validate(NAMES, 100.0, rows(), offsets())
    assert isinstance(c, ValidChunk)
    assert c.stamp_s == 100.0
    np.testing.assert_allclose(c.times, 100.0 + 0.01 * np.arange(5))
    assert c.values.shape == (5, 8)
    np.testing.assert_allclose(c.values[2, :7], HOME + 0.02)
    assert c.mapper.groups == ("arm", "gripper")
    assert validator.validate(NAMES, 101.0, rows(), offsets()).mapper is c.mapper  # one mapping per layout


def test_a_point_with_the_wrong_number_of_values_is_rejected_naming_it(validator):
    r = rows()
    r[3] = r[3][:6]
    rej = validator.validate(NAMES, 100.0, r, offsets())
    assert rej == ChunkRejection(POINT_LENGTH, "chunk point 3 has 6 values for 8 dims")


def test_a_non_finite_value_is_rejected_naming_joint_point_and_value(validator, safety):
    r = rows()
    r[2][4] = float("nan")
    rej = validator.validate(NAMES, 100.0, r, offsets())
    assert isinstance(rej, ChunkRejection) and rej.kind == NON_FINITE
    assert rej.reason == "non-finite command for panda_joint5 at point 2: nan"
    assert safety.counters_by_name["panda_joint5"]["non_finite"] == 1


@pytest.mark.parametrize("names, why", [
    ((*ARM[:6], "gripper/gripper"), "chunk layout: group 'arm' (joint_trajectory) is missing dims ['panda_joint7']"),
    ((*ARM, "gripper/gripper", "elbow_lift"), "chunk layout: dims that are not in robot 'panda': ['elbow_lift']"),
])
def test_a_layout_that_does_not_fit_the_robot_is_rejected(validator, names, why):
    n = len(names)
    rej = validator.validate(names, 100.0, [[0.0] * n] * 3, offsets(3))
    assert rej == ChunkRejection(LAYOUT, why)
    assert validator.validate(names, 100.0, [[0.0] * n] * 3, offsets(3)) == rej  # the refusal is remembered


@pytest.mark.parametrize("offs", [[0.0, 0.01, 0.01, 0.03], [0.0, 0.02, 0.01, 0.03]])
def test_point_times_must_strictly_increase(validator, offs):
    rej = validator.validate(NAMES, 100.0, rows(4), offs)
    assert rej == ChunkRejection(TIME_ORDER, "chunk time_from_start is not strictly increasing")


def test_checks_run_in_order_length_before_values(validator):
    r = rows()
    r[1][0] = float("inf")
    r[3] = r[3][:2]
    assert validator.validate(NAMES, 100.0, r, offsets()).kind == POINT_LENGTH


def test_interp_rows_is_linear_and_clamped():
    t = np.array([1.0, 2.0, 4.0])
    v = np.array([[0.0, 10.0], [1.0, 20.0], [3.0, 0.0]])
    np.testing.assert_allclose(interp_rows(t, v, 0.0), [0.0, 10.0])
    np.testing.assert_allclose(interp_rows(t, v, 1.5), [0.5, 15.0])
    np.testing.assert_allclose(interp_rows(t, v, 3.0), [2.0, 10.0])
    np.testing.assert_allclose(interp_rows(t, v, 9.0), [3.0, 0.0])


# ---------------------------------------------------------------------------------- rebase
def policy_chunk(validator, t0: float, n: int = 40, dt: float = 0.01) -> ValidChunk:
    c = validator.validate(NAMES, t0, rows(n), offsets(n, dt))
    assert isinstance(c, ValidChunk)
    return c


def test_rebase_starts_at_the_held_state_and_fades_out_over_rebase_s(validator):
    c = policy_chunk(validator, 50.0)
    held = HOME + np.array([0.05, -0.02, 0.0, 0.01, 0.0, 0.03, -0.04])
    rb = ResumeRebase()
    rb.pending = True
    rb.start(c, {"arm": JointCommand("arm", tuple(ARM), held), "gripper": GripperCommand("gripper", 0.02)})
    assert not rb.pending and rb.active
    arm = c.mapper.group_values(c.values, "arm")
    out = rb.apply("arm", c.times, arm)
    np.testing.assert_allclose(out[0], held, atol=1e-12)  # no jump at the first point
    offset = held - arm[0]
    for k in range(len(c.times)):
        w = max(0.0, 1.0 - (c.times[k] - c.times[0]) / REBASE_S)
        np.testing.assert_allclose(out[k] - arm[k], w * offset, atol=1e-12)
    assert np.allclose(out[c.times >= c.times[0] + REBASE_S], arm[c.times >= c.times[0] + REBASE_S])
    steps = np.abs(np.diff(out - arm, axis=0)).max(axis=0)
    assert np.all(steps <= np.abs(offset) * 0.01 / REBASE_S + 1e-12)  # fades linearly, never jumps
    grip = c.mapper.group_values(c.values, "gripper")
    assert rb.apply("gripper", c.times, grip) is grip  # a gripper hold is not rebased


def test_rebase_continues_over_later_chunks_and_ends_once_faded(validator):
    first = policy_chunk(validator, 50.0)
    held = HOME + 0.1
    rb = ResumeRebase()
    rb.start(first, {"arm": JointCommand("arm", tuple(ARM), held)})
    later = policy_chunk(validator, 50.1)  # inside the fade: still offset, by the weight at its times
    arm = later.mapper.group_values(later.values, "arm")
    offset = held - first.mapper.group_values(first.values, "arm")[0]
    np.testing.assert_allclose(rb.apply("arm", later.times, arm)[0] - arm[0], offset * (1 - 0.1 / REBASE_S))
    after = policy_chunk(validator, 50.0 + REBASE_S + 0.01)
    vals = after.mapper.group_values(after.values, "arm")
    assert rb.apply("arm", after.times, vals) is vals
    assert not rb.active


def test_rebase_of_a_pose_hold_offsets_the_position_only(write_config):
    cfg = load_config(write_config("sim_panda.yaml", {"robot": {"groups": {"arm": {
        "controller": "cartesian_impedance", "frame_id": "panda_link0"}}}}))
    validator = ChunkValidator(cfg.robot, SafetyFilter(cfg.robot, cfg.safety))
    names = tuple(f"arm/{d}" for d in ("x", "y", "z", "qx", "qy", "qz", "qw"))
    pose = [0.4, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0]
    c = validator.validate(names, 10.0, [pose] * 4, offsets(4))
    rb = ResumeRebase()
    rb.start(c, {"arm": PoseCommand("arm", "panda_link0", np.array([0.5, 0.1, 0.3]), np.array([0.0, 1.0, 0.0, 0.0]))})
    out = rb.apply("arm", c.times, c.mapper.group_values(c.values, "arm"))
    np.testing.assert_allclose(out[0], [0.5, 0.1, 0.3, 0.0, 0.0, 0.0, 1.0], atol=1e-12)


def test_rebase_without_a_usable_hold_does_nothing_and_stop_drops_offsets(validator):
    c = policy_chunk(validator, 10.0)
    rb = ResumeRebase()
    rb.start(c, {"arm": None})
    assert not rb.active
    rb.start(c, {"arm": JointCommand("arm", tuple(ARM), HOME + 0.1)})
    assert rb.active
    rb.stop()
    vals = c.mapper.group_values(c.values, "arm")
    assert rb.apply("arm", c.times, vals) is vals
