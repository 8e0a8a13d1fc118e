"""The bridge's teleop session: engage/release, halt-teleop, input freshness, retry, the integrator feed (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test.conftest import ROOT
from vla_runtime.core.arbiter import Arbiter, Mode
from vla_runtime.core.bridge.teleop_session import (
    ENGAGE_RETRY_S,
    TELEOP_INPUT_FRESH_S,
    TELEOP_TIMEOUT_S,
    EngageAction,
    TeleopSession,
)
from vla_runtime.core.config import load_config
from vla_runtime.core.safety_filter import SafetyFilter

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785]
PERIOD = 0.01


class Rig:
    def __init__(self, cfg) -> None:
        self.t = 10.0
        self.cfg = cfg
        self.arbiter = Arbiter(lambda: self.t, watchdog_s=0.2, joint_state_timeout_s=0.1)
        self.safety = SafetyFilter(cfg.robot, cfg.safety, command_period_s=PERIOD)
        self.hold_controller_has_robot = False
        self.counters: dict[str, int] = {"ticks": 0}
        periods = {n: PERIOD for n in cfg.robot.groups}
        self.tp = TeleopSession(cfg.robot, cfg.teleop, self.safety, self.arbiter, periods,
                                lambda: self.hold_controller_has_robot, self.counters)
        self.measured = {**dict(zip(ARM, HOME)), "panda_finger_joint1": 0.04}

    def begin(self) -> None:
        self.arbiter.note_joint_state(self.t)
        assert self.tp.begin(self.t, self.measured, None) is None
        assert self.tp.started


@pytest.fixture(scope="module")
def panda():
    return load_config(ROOT / "config" / "sim_panda.yaml")


@pytest.fixture
def rig(panda) -> Rig:
    return Rig(panda)


def test_the_teleop_group_gripper_and_kinematics_come_from_the_config(rig, write_config):
    assert rig.tp.group == "arm" and rig.tp.gripper_group == "gripper"
    assert rig.tp.kinematics == "panda DH model, DLS Jacobian"
    assert list(rig.counters) == ["ticks", "teleop_rejected", "teleop_inputs", "teleop_inputs_ignored",
                                  "teleop_commands", "interventions_started"]
    cart = Rig(load_config(write_config("sim_panda.yaml", {
        "teleop": {"group": None},
        "robot": {"groups": {"arm": {"controller": "cartesian_impedance", "frame_id": "panda_link0"}}}})))
    assert cart.tp.group == "arm" and cart.tp.kinematics == "cartesian controller"
    other = Rig(load_config(write_config("sim_panda.yaml", {"robot": {"name": "lab_arm"}})))
    assert other.tp.kinematics == "none: joint jogs only"


def test_begin_starts_the_target_at_the_measured_state_and_counts_the_intervention(rig):
    rig.begin()
    assert rig.counters["interventions_started"] == 1
    np.testing.assert_allclose(rig.tp.advance(rig.t), HOME)  # no input: the first command holds in place
    assert [rig.safety.reference(j) for j in ARM] == HOME  # limited relative to where the arm is


def test_begin_without_a_measurement_holds_the_group(rig):
    err = rig.tp.begin(rig.t, {}, None)
    assert err is not None and err.startswith("teleop cannot start group 'arm': ") and err.endswith("; holding it")
    assert not rig.tp.started


def test_engage_press_takes_over_release_hands_back_repeats_do_nothing(rig):
    assert rig.tp.engage(True, Mode.HOLD) is EngageAction.TAKE and rig.tp.engage_wanted
    assert rig.tp.engage(True, Mode.POLICY) is EngageAction.TAKE
    assert rig.tp.engage(True, Mode.TELEOP) is EngageAction.NOTHING  # a late joiner's resend
    assert rig.tp.engage(False, Mode.TELEOP) is EngageAction.RELEASE and not rig.tp.engage_wanted
    assert rig.tp.engage(False, Mode.HOLD) is EngageAction.NOTHING
    rig.tp.under_halt = True
    assert rig.tp.engage(False, Mode.HALTED) is EngageAction.RELEASE


def test_a_fresh_twist_moves_the_target_a_stale_one_does_not(rig):
    rig.begin()
    rig.t += PERIOD
    assert rig.tp.twist_input(np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0]), rig.t, Mode.TELEOP)
    q0 = rig.tp.advance(rig.t)
    rig.t += PERIOD
    q1 = rig.tp.advance(rig.t)
    assert np.linalg.norm(q1 - q0) > 1e-4  # fed the twist
    rig.t += TELEOP_INPUT_FRESH_S  # the last twist is now older than the freshness limit
    q2 = rig.tp.advance(rig.t)
    rig.t += PERIOD
    np.testing.assert_allclose(rig.tp.advance(rig.t), q2)  # the target stops (still teleop)


def test_a_jog_is_fed_while_fresh(rig):
    rig.begin()
    assert rig.tp.jog_input(["panda_joint1"], [0.2], rig.t, Mode.TELEOP)
    assert rig.tp.advance(rig.t)[0] == pytest.approx(0.2 * PERIOD)  # a first step spans one period
    rig.t += PERIOD
    q = rig.tp.advance(rig.t)
    assert q[0] == pytest.approx(2 * 0.2 * PERIOD)
    rig.t += TELEOP_INPUT_FRESH_S + PERIOD
    q_stale = rig.tp.advance(rig.t)
    rig.t += PERIOD
    assert rig.tp.advance(rig.t)[0] == pytest.approx(q_stale[0])


def test_a_pose_target_is_servoed_while_fresh(rig):
    rig.begin()
    ee = rig.tp.integrator.current_ee()
    assert rig.tp.pose_input(ee[:3, 3] + [0.0, 0.0, 0.05], [0.0, 0.0, 0.0, 1.0], rig.t, Mode.TELEOP) is True
    rig.tp.advance(rig.t)
    rig.t += PERIOD
    moved = rig.tp.advance(rig.t)
    assert not np.allclose(moved, HOME)


def test_the_dt_of_a_step_is_clamped_to_two_periods(rig):
    rig.begin()
    rig.tp.jog_input(["panda_joint2"], [0.1], rig.t, Mode.TELEOP)
    q0 = rig.tp.advance(rig.t)
    rig.t += 0.1  # a late tick
    rig.tp.jog_input(["panda_joint2"], [0.1], rig.t, Mode.TELEOP)
    q = rig.tp.advance(rig.t)
    assert q[1] - q0[1] == pytest.approx(0.1 * 2 * PERIOD)


def test_inputs_outside_teleop_are_counted_and_ignored(rig):
    assert not rig.tp.twist_input(np.zeros(6), rig.t, Mode.HOLD)
    assert not rig.tp.gripper_input(0.01, rig.t, Mode.POLICY) and rig.tp.gripper is None
    assert rig.counters["teleop_inputs"] == 2 and rig.counters["teleop_inputs_ignored"] == 2
    assert rig.tp.last_input == -math.inf  # the watchdogs are not fed


def test_bad_inputs_are_rejected(rig):
    rig.begin()
    assert not rig.tp.twist_input(np.array([np.nan, 0, 0, 0, 0, 0]), rig.t, Mode.TELEOP)
    assert not rig.tp.pose_input([0.3, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0], rig.t, Mode.TELEOP)
    assert not rig.tp.jog_input(["panda_joint1", "panda_joint1"], [0.1, 0.2], rig.t, Mode.TELEOP)
    assert not rig.tp.jog_input(["panda_joint1"], [math.inf], rig.t, Mode.TELEOP)
    assert rig.counters["teleop_rejected"] == 4 and rig.counters["teleop_inputs"] == 0
    assert rig.tp.frame_error("panda_link0") is None and rig.tp.frame_error("") is None
    assert rig.tp.frame_error("camera") == "teleop command in frame 'camera': only the base frame is accepted"
    assert rig.counters["teleop_inputs_ignored"] == 1


def test_an_accepted_input_feeds_the_arbiters_teleop_watchdog(rig):
    rig.arbiter.note_joint_state(rig.t)
    rig.arbiter.set_controllers_ok(True)
    assert rig.arbiter.request_teleop()
    rig.t += 0.4
    rig.arbiter.note_joint_state(rig.t)
    assert rig.tp.gripper_input(0.02, rig.t, Mode.TELEOP) and rig.tp.gripper == 0.02
    rig.t += 0.4
    rig.arbiter.note_joint_state(rig.t)
    assert rig.arbiter.check(rig.t) is None and rig.arbiter.mode is Mode.TELEOP


def test_a_twist_on_a_group_without_a_kinematic_model_is_ignored_and_holds(write_config):
    rig = Rig(load_config(write_config("sim_panda.yaml", {"robot": {"name": "lab_arm"}})))
    rig.begin()
    rig.tp.twist_input(np.array([0.05, 0, 0, 0, 0, 0]), rig.t, Mode.TELEOP)
    rig.t += PERIOD
    np.testing.assert_allclose(rig.tp.advance(rig.t), HOME)
    assert rig.counters["teleop_inputs_ignored"] == 1


def test_halt_teleop_only_when_the_config_allows_it_and_joint_states_are_fresh(rig, write_config):
    assert not rig.tp.start_under_halt(rig.t)  # no joint states
    assert rig.tp.start_under_halt(rig.t).reason == "teleop refused: no fresh joint states"
    rig.arbiter.note_joint_state(rig.t)
    d = rig.tp.start_under_halt(rig.t)
    assert d and rig.tp.under_halt
    assert rig.tp.moves_robot(Mode.HALTED)
    rig.hold_controller_has_robot = True  # the hold controller has the robot: teleop moves nothing yet
    assert not rig.tp.moves_robot(Mode.HALTED)
    off = Rig(load_config(write_config("sim_panda.yaml", {"teleop": {"teleop_only_after_halt": False}})))
    off.arbiter.note_joint_state(off.t)
    d = off.tp.start_under_halt(off.t)
    assert not d and d.reason == "HALTED: teleop after a halt is disabled (teleop.teleop_only_after_halt)"
    assert not off.tp.under_halt and not off.tp.moves_robot(Mode.HALTED)


def test_halt_teleop_ends_after_the_operator_timeout(rig):
    rig.arbiter.note_joint_state(rig.t)
    rig.tp.start_under_halt(rig.t)
    rig.begin()
    rig.t += TELEOP_TIMEOUT_S - 0.01
    assert not rig.tp.halt_input_timed_out(rig.t)
    assert rig.tp.twist_input(np.zeros(6), rig.t, Mode.HALTED)  # taken under the halt
    rig.t += TELEOP_TIMEOUT_S
    assert not rig.tp.halt_input_timed_out(rig.t)
    rig.t += 0.02
    assert rig.tp.halt_input_timed_out(rig.t)


def test_the_engage_retry_runs_while_the_deadman_is_held_and_inputs_arrive(rig):
    rig.tp.engage(True, Mode.HOLD)
    assert not rig.tp.retry_due(rig.t, Mode.HOLD)  # no operator command seen yet
    rig.tp.twist_input(np.zeros(6), rig.t, Mode.HOLD)  # ignored, but it shows the operator is there
    assert rig.tp.retry_due(rig.t, Mode.HOLD)
    assert not rig.tp.retry_due(rig.t + ENGAGE_RETRY_S - 0.01, Mode.HOLD)
    rig.tp.twist_input(np.zeros(6), rig.t + ENGAGE_RETRY_S, Mode.HOLD)
    assert rig.tp.retry_due(rig.t + ENGAGE_RETRY_S, Mode.POLICY)
    assert not rig.tp.retry_due(rig.t + 2 * ENGAGE_RETRY_S, Mode.HALTED)  # after a halt: a new press
    assert not rig.tp.retry_due(rig.t + ENGAGE_RETRY_S + TELEOP_TIMEOUT_S + 0.01, Mode.HOLD)  # operator gone
    rig.tp.engage(False, Mode.HOLD)
    assert not rig.tp.retry_due(rig.t + 5.0, Mode.HOLD)


def test_a_step_is_due_half_a_period_after_the_last(rig):
    assert not rig.tp.step_due(rig.t)  # not started
    rig.begin()
    assert rig.tp.step_due(rig.t)
    rig.tp.advance(rig.t)
    assert not rig.tp.step_due(rig.t + 0.4 * PERIOD)
    assert rig.tp.step_due(rig.t + 0.5 * PERIOD)


def test_end_forgets_the_operators_commands(rig):
    rig.begin()
    rig.tp.gripper_input(0.01, rig.t, Mode.TELEOP)
    rig.tp.end()
    assert not rig.tp.started and rig.tp.gripper is None
