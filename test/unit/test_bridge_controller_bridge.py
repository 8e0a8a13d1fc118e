"""The bridge's logic end to end without ROS: real outputs publishing into lists, a fake controller_manager.

What the node does with a message is one call here; these tests check the order of what goes out
(the hold before the log line), the takeover and handback, and the halt's controller switches.
"""

from __future__ import annotations

import numpy as np
import pytest

from test.unit.test_bridge_switching import FakeControllerManager, listing, switched
from vla_runtime.core.arbiter import CAUSE_REJECTED, Mode
from vla_runtime.core.bridge.controller_bridge import ControllerBridge
from vla_runtime.core.config import load_config
from vla_runtime.nodes.bridge_outputs import HOLD_TRAJECTORY_S, TELEOP_FRAME_ID, build_output

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
JT = "/arm_controller/joint_trajectory"
GRIP = "/gripper_controller/commands"


class Rig:
    """A ControllerBridge with an event log shared by its publishers, logger and intervention marks."""

    def __init__(self, cfg) -> None:
        self.t = 1000.0
        self.events: list[tuple[str, object]] = []
        self.cm = FakeControllerManager()
        self.states = 0
        self.bridge = ControllerBridge(
            cfg, lambda: self.t, self._make_output, self.cm, self, on_state_change=self._state,
            mark_intervention=lambda text: self.events.append(("intervention", text)), recheck_s=5.0)

    # the publishers, the logger and the safety-state publisher of the node
    def _make_output(self, name, spec, period_s, safety):
        def advertise(_msg_type, topic):
            return lambda msg: self.events.append((topic, msg))

        return build_output(name, spec, period_s, safety, advertise)

    def _state(self) -> None:
        self.states += 1

    def info(self, text: str) -> None:
        self.events.append(("info", text))

    def warning(self, text: str) -> None:
        self.events.append(("warning", text))

    def error(self, text: str) -> None:
        self.events.append(("error", text))

    # helpers
    def sent(self, topic: str) -> list:
        return [m for t, m in self.events if t == topic]

    def joint_state(self, q=HOME) -> None:
        self.bridge.note_joint_state([*ARM, "panda_finger_joint1"], [*q, 0.04], self.t)

    def chunk(self, q0=HOME, n: int = 10) -> None:
        rows = [[*(q0 + 0.0005 * k), 0.03] for k in range(n)]
        self.bridge.chunk((*ARM, "gripper/gripper"), self.t, rows, [0.01 * k for k in range(n)], self.t)

    def to_policy(self) -> None:
        self.joint_state()
        self.chunk()  # waits for POLICY: the controllers are checked first
        assert self.bridge.arbiter.mode is Mode.HOLD and len(self.cm.lists) == 1
        self.cm.lists[0].answer(listing(arm_controller="active", gripper_controller="active"))
        self.t += 0.01
        self.joint_state()
        self.bridge.supervise(self.t)
        assert self.bridge.arbiter.mode is Mode.POLICY


@pytest.fixture
def rig(write_config) -> Rig:
    cfg = load_config(write_config("sim_panda.yaml", {
        "teleop": {"device": "gamepad", "deadman_button": 4, "teleop_only_after_halt": True}}))
    return Rig(cfg)


def test_a_chunk_waits_for_verified_controllers_then_goes_to_the_trajectory_controller(rig):
    rig.to_policy()
    (traj,) = rig.sent(JT)
    assert traj.joint_names == ARM and traj.header.frame_id == ""
    assert len(traj.points) == 9  # it waited 10 ms for the check: its first point was in the past
    assert rig.bridge.stats["chunks_forwarded"] == 1
    rig.bridge.tick(rig.bridge.groups.values(), rig.t)  # the gripper streams its sample; JT runs its trajectory
    assert len(rig.sent(JT)) == 1 and rig.sent(GRIP)[-1].data.tolist() == pytest.approx([0.03])


def test_a_halt_sends_the_hold_first_and_logs_last_then_switches_to_the_hold_controller(rig):
    rig.to_policy()
    mark = len(rig.events)
    rig.bridge.halt("detector: score over threshold")
    after = rig.events[mark:]
    assert [t for t, _ in after] == [JT, GRIP, "warning"]  # the hold goes out before anything is logged
    hold = after[0][1]
    assert len(hold.points) == 1 and list(hold.points[0].velocities) == [0.0] * 7
    assert hold.points[0].time_from_start.nanosec == int(HOLD_TRAJECTORY_S * 1e9)
    assert after[2][1] == "POLICY → HALTED: halt requested: detector: score over threshold"
    assert rig.bridge.arbiter.mode is Mode.HALTED and not rig.bridge.arbiter.controllers_ok
    assert [s[:2] for s in rig.cm.switches] == [(("hold_controller",), ("arm_controller", "gripper_controller"))]
    assert not rig.bridge.arbiter.reset("reset")  # the cause is still present
    rig.bridge.halt("")
    assert rig.bridge.arbiter.reset("reset") and rig.bridge.arbiter.mode is Mode.HOLD
    assert len(rig.cm.switches) == 1  # to_policy is queued behind the switch in flight
    rig.cm.switches[0][3].answer(switched(True))
    rig.bridge.supervise(rig.t)
    assert [s[:2] for s in rig.cm.switches][1] == (("arm_controller", "gripper_controller"), ("hold_controller",))


def test_a_rejected_chunk_in_policy_holds_naming_the_value(rig):
    rig.to_policy()
    rows = [[*HOME, 0.03]] * 3
    rows[1] = [*HOME[:3], float("nan"), *HOME[4:], 0.03]
    rig.bridge.chunk((*ARM, "gripper/gripper"), rig.t, rows, [0.0, 0.01, 0.02], rig.t)
    assert rig.bridge.arbiter.mode is Mode.HOLD and rig.bridge.arbiter.cause == CAUSE_REJECTED
    assert rig.bridge.last_reject == "non-finite command for panda_joint4 at point 1: nan"
    assert rig.sent(JT)[-1].points[0].time_from_start.nanosec == int(HOLD_TRAJECTORY_S * 1e9)


def test_takeover_sends_a_teleop_command_at_once_and_handback_is_rebased(rig):
    rig.to_policy()
    mark = len(rig.events)
    assert rig.bridge.engage(True)
    kinds = [t for t, _ in rig.events[mark:]]
    assert kinds == ["intervention", "info", JT]  # mark, log, then the first teleop command
    first = rig.events[-1][1]
    assert first.header.frame_id == TELEOP_FRAME_ID
    np.testing.assert_allclose(first.points[0].positions, HOME, atol=1e-9)  # starts where the arm is
    rig.t += 0.01
    rig.joint_state()
    rig.bridge.teleop_twist(np.array([0.02, 0.0, 0.0, 0.0, 0.0, 0.0]), "", rig.t)
    assert len([m for m in rig.sent(JT) if m.header.frame_id == TELEOP_FRAME_ID]) == 2
    held = np.array(rig.sent(JT)[-1].points[0].positions)
    rig.bridge.engage(False)
    assert rig.bridge.arbiter.mode is Mode.HOLD
    assert ("intervention", "end: HOLD: operator released the deadman") in rig.events
    hold = np.array(rig.sent(JT)[-1].points[0].positions)
    assert np.abs(hold - held).max() < 0.01
    # the policy resumes from elsewhere: its first point is moved onto the held state
    rig.t += 0.05
    rig.joint_state(hold)
    rig.chunk(q0=HOME - 0.02)
    resumed = rig.sent(JT)[-1]
    assert rig.bridge.arbiter.mode is Mode.POLICY and len(resumed.points) == 10
    np.testing.assert_allclose(resumed.points[0].positions, hold, atol=1e-9)


def test_after_a_halt_only_a_new_press_teleoperates_under_the_latched_halt(rig):
    rig.to_policy()
    rig.bridge.engage(True)
    rig.bridge.halt("operator e-stop")
    assert rig.bridge.arbiter.mode is Mode.HALTED and not rig.bridge.teleop.engage_wanted
    rig.cm.switches[0][3].answer(switched(True))  # the hold controller has the robot
    rig.bridge.supervise(rig.t)
    assert rig.bridge.engage(True)  # a new press: teleop under the halt, the policy's controllers back
    assert rig.bridge.teleop.under_halt and rig.bridge.arbiter.mode is Mode.HALTED
    assert [s[:2] for s in rig.cm.switches][-1] == (("arm_controller", "gripper_controller"), ("hold_controller",))
    rig.bridge.tick(rig.bridge.groups.values(), rig.t + 0.01)
    teleop = [m for m in rig.sent(JT) if m.header.frame_id == TELEOP_FRAME_ID]
    assert rig.sent(JT)[-1].header.frame_id == ""  # still the hold: not before the switch back is confirmed
    rig.cm.switches[-1][3].answer(switched(True))
    rig.bridge.supervise(rig.t)
    rig.t += 0.01
    rig.bridge.teleop_twist(np.zeros(6), "", rig.t)
    assert rig.sent(JT)[-1].header.frame_id == TELEOP_FRAME_ID
    assert len([m for m in rig.sent(JT) if m.header.frame_id == TELEOP_FRAME_ID]) == len(teleop) + 1
    rig.bridge.engage(False)  # release: holding, still HALTED, the hold controller again
    assert not rig.bridge.teleop.under_halt and rig.bridge.arbiter.mode is Mode.HALTED
    assert [s[:2] for s in rig.cm.switches][-1] == (("hold_controller",), ("arm_controller", "gripper_controller"))


def test_diagnostics_report_the_mode_the_controllers_and_every_counter(rig):
    rig.to_policy()
    t_policy = rig.t
    rig.t += 0.25
    kv = rig.bridge.diagnostics(rig.t, 99.5)
    assert kv["mode"] == "POLICY" and kv["controllers"] == "ok: arm_controller, gripper_controller active"
    assert kv["mode_since_s"] == f"{t_policy:.6f}"  # when it changed, by the bridge's clock
    assert kv["command_rate_hz"] == "99.5" and kv["teleop"] == "off" and kv["teleop_group"] == "arm"
    assert kv["chunks_received"] == "1" and kv["chunks_forwarded"] == "1" and kv["interventions_started"] == "0"
    assert list(kv)[-13:] == ["chunks_received", "chunks_forwarded", "chunks_rejected", "chunks_dropped",
                              "hold_requests", "commands_published", "ticks", "hold_without_state",
                              "teleop_rejected", "teleop_inputs", "teleop_inputs_ignored", "teleop_commands",
                              "interventions_started"]


def test_a_teleop_timeout_holds_without_the_hold_controller_and_needs_a_new_press(rig):
    """The operator stream went silent (or was refused as out of bounds): HOLD on the policy's
    controllers (no switch: that is for HALTED), and a deadman left pressed does not take over again."""
    rig.to_policy()
    assert rig.bridge.engage(True) and rig.bridge.arbiter.mode is Mode.TELEOP
    for _ in range(5):  # refused: far over the joint's limit
        rig.bridge.teleop_jog(["panda_joint1"], [1e9], rig.t)
    assert rig.bridge.teleop.check.rejections.counts == {"over_limit": 5}
    rig.t += 1.0
    rig.joint_state()
    rig.bridge.supervise(rig.t)
    assert rig.bridge.arbiter.mode is Mode.HOLD and rig.bridge.arbiter.cause == "teleop_timeout"
    assert rig.cm.switches == []
    rig.t += 1.0
    rig.joint_state()
    rig.bridge.teleop_jog(["panda_joint1"], [0.1], rig.t)  # inputs still arrive, the deadman still "held"
    rig.bridge.supervise(rig.t)
    assert rig.bridge.arbiter.mode is Mode.HOLD
    assert rig.bridge.engage(False) is None and rig.bridge.engage(True)  # a new press takes over
    assert rig.bridge.arbiter.mode is Mode.TELEOP


def test_a_refused_chunk_keeps_the_policy_out_until_the_stream_has_been_clean_for_the_holdoff(rig):
    from vla_runtime.core.bridge.controller_bridge import REJECT_HOLDOFF_S

    rig.to_policy()
    bad = [[*HOME[:3], 1e9, *HOME[4:], 0.03]] * 3
    rig.bridge.chunk((*ARM, "gripper/gripper"), rig.t, bad, [0.0, 0.01, 0.02], rig.t)
    assert rig.bridge.arbiter.mode is Mode.HOLD
    assert rig.bridge.plan_rejections.counts == {"out_of_limits": 1}
    rig.t += REJECT_HOLDOFF_S / 2
    rig.joint_state()
    rig.chunk()
    assert rig.bridge.arbiter.mode is Mode.HOLD  # valid, but too soon after the refused one: it waits
    rig.t += REJECT_HOLDOFF_S / 2 + 0.01
    rig.joint_state()
    rig.chunk()
    assert rig.bridge.arbiter.mode is Mode.POLICY


def test_refused_joint_states_never_become_the_hold_target(rig):
    rig.to_policy()
    rig.bridge.note_joint_state(ARM, [1.5, 1.0, 1.0], rig.t)  # 7 names, 3 positions
    rig.bridge.note_joint_state(ARM, [np.nan, *HOME[1:]], rig.t)
    rig.bridge.note_joint_state(["panda_joint1"] * 7, [2.0] * 7, rig.t)
    assert rig.bridge.joint_states.rejections.counts == {"length_mismatch": 1, "non_finite": 1, "duplicate_name": 1}
    rig.bridge.arbiter.hold("operator", "operator")
    hold = np.array(rig.sent(JT)[-1].points[0].positions)
    np.testing.assert_allclose(hold, HOME, atol=1e-9)


def test_another_publisher_on_a_controller_topic_latches_halted_until_it_is_gone(rig):
    rig.to_policy()
    rig.bridge.note_intruders(["/arm_controller/joint_trajectory ← /stray_script"])
    assert rig.bridge.arbiter.mode is Mode.HALTED
    assert "/stray_script" in rig.bridge.arbiter.reason
    assert rig.bridge.diagnostics(rig.t, 100.0)["intruders"] == "/arm_controller/joint_trajectory ← /stray_script"
    assert not rig.bridge.arbiter.reset("reset")
    rig.bridge.note_intruders([])
    assert rig.bridge.arbiter.reset("reset")


def test_shared_autonomy_the_operator_drives_the_arm_while_the_policy_keeps_the_gripper(write_config):
    cfg = load_config(write_config("sim_panda.yaml", {
        "teleop": {"device": "gamepad", "deadman_button": 4, "policy_keeps": ["gripper"]}}))
    rig = Rig(cfg)
    rig.to_policy()
    assert rig.bridge.engage(True) and rig.bridge.arbiter.mode is Mode.TELEOP
    assert ("intervention", "start: operator engaged (deadman held) [operator: arm; policy: gripper]") in rig.events
    n_jt = len(rig.sent(JT))
    for k in range(5):  # the policy closes the gripper; its arm dims are not sent to the arm
        rig.t += 0.01
        rig.joint_state()
        rows = [[*HOME, 0.03 - 0.002 * (k + i)] for i in range(10)]
        rig.bridge.chunk((*ARM, "gripper/gripper"), rig.t, rows, [0.01 * i for i in range(10)], rig.t)
        rig.bridge.teleop_twist(np.array([0.02, 0.0, 0.0, 0.0, 0.0, 0.0]), "", rig.t)
        rig.bridge.tick(rig.bridge.groups.values(), rig.t)
    arm = rig.sent(JT)[n_jt:]
    assert arm and all(m.header.frame_id == TELEOP_FRAME_ID for m in arm)  # only the operator drives the arm
    grip = [m.data[0] for m in rig.sent(GRIP)[-5:]]
    assert grip == sorted(grip, reverse=True) and grip[-1] < 0.03  # the gripper follows the policy's closing
    assert rig.bridge.diagnostics(rig.t, 100.0)["teleop"] == "engaged [operator: arm; policy: gripper]"
    rig.bridge.engage(False)
    assert rig.bridge.arbiter.mode is Mode.HOLD
