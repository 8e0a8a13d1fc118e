"""Teleop takeover and handback with real processes: sim_robot + controller_bridge + teleop.

An in-test probe plays the policy (chunks that hold the arm where the policy regained control)
and the operator (a gamepad's ``sensor_msgs/Joy`` at 50 Hz, deadman button 4).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from std_msgs.msg import String

from test.conftest import wait_for
from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, WINDOW_S, TeleopRig, run_trial, teleop_graph

pytestmark = pytest.mark.integration


def stick_up_for(rig, seconds: float) -> np.ndarray:
    """Deadman held, stick pushed +z for ``seconds``, centred; the hand's displacement (mm)."""
    t_move = rig.deadman(True, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    time.sleep(seconds)
    rig.deadman(True)
    time.sleep(0.3)
    return (rig.ee_at(time.monotonic()) - rig.ee_at(t_move)) * 1e3


@pytest.fixture
def rig(harness, write_config):
    cfg = write_config("sim_panda.yaml", {"teleop": GAMEPAD_TELEOP, "cameras": []})
    r = TeleopRig(harness.probe)
    harness.start(teleop_graph(str(cfg)))
    harness.wait(lambda: r.mode() == "POLICY", 30, "bridge in POLICY under the stand-in policy")
    harness.wait(r.teleop_ready, 30, "the teleop node on the graph")
    return r


def test_takeover_follows_twist_release_holds_handback_bumpless(rig, tmp_path):
    res = run_trial(rig, direction=1.0, move_s=0.4)
    # Prompt takeover. The 33 ms target is `bench teleop`'s (50 trials, p99), not a single timed
    # assertion on a loaded CI machine.
    assert res["latency_ms"] < 250.0, res
    assert res["jump_take_mm"] <= 2.0 and res["jump_back_mm"] <= 2.0, res
    dx, dy, dz = res["moved_mm"]
    # 0.1 m/s for 0.4 s along +x (the stick's first axis): ~40 mm, nothing much elsewhere
    assert 25.0 < dx < 45.0 and abs(dy) < 3.0 and abs(dz) < 3.0, res
    starts = [m.data for _, m in rig.interventions if m.data.startswith("start")]
    ends = [m.data for _, m in rig.interventions if m.data.startswith("end")]
    assert starts and ends, [m.data for _, m in rig.interventions]


def test_deadman_release_holds_and_never_keeps_moving(rig, tmp_path):
    rig.policy_enabled = False  # no policy to resume: the release must leave the arm in HOLD
    rig.deadman(True, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # pushing +y
    wait_for(lambda: rig.mode() == "TELEOP", 2, what="TELEOP")
    time.sleep(0.5)
    t_rel = rig.deadman(False, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # still pushing, deadman released
    wait_for(lambda: rig.mode() == "HOLD", 1, what="HOLD after the deadman release")

    def at_rest() -> bool:  # no 0.5 mm of motion in the last 0.5 s
        now = time.monotonic()
        return now - t_rel > 0.5 and rig.max_displacement_mm(now - 0.5, now) < 0.5

    # The hand comes to rest within a few mm of the release, though the stick still pushes, and stays
    # there. Here it rests 0.1 s after the release; the wait allows 3 s because the wall clock is not
    # the simulator's (CI once saw 2.8 mm of settling 0.2–1.0 s after the HOLD report, on a loaded machine).
    rested = wait_for(at_rest, 3.0, interval=0.05)
    t_rest = time.monotonic()
    assert rested, (f"the hand still moved 3 s after the deadman release: "
                    f"{rig.max_displacement_mm(t_rest - 0.5, t_rest):.1f} mm in the last 0.5 s, "
                    f"{rig.max_displacement_mm(t_rel, t_rest):.1f} mm since the release")
    assert rig.max_displacement_mm(t_rel, t_rest) < 5.0  # stopped within a few mm of the release
    time.sleep(0.5)
    assert rig.max_displacement_mm(t_rest, t_rest + 0.5) < 0.5  # and never moved on
    # a silent operator stream (driver died with the deadman held) also ends in HOLD
    rig.deadman(True)
    wait_for(lambda: rig.mode() == "TELEOP", 2, what="TELEOP again")
    rig.joy_enabled = False
    wait_for(lambda: rig.mode() == "HOLD", 2, what="HOLD after the Joy stream went silent")


def test_after_halt_only_teleop_moves_the_arm(rig, tmp_path):
    rig.halt_pub.publish(String(data="test: collision"))
    wait_for(lambda: rig.mode() == "HALTED", 2, what="HALTED")
    # the policy keeps streaming a target 5 cm away: nothing moves
    rig.policy_target = rig.policy_target + np.array([0.3, 0, 0, 0, 0, 0, 0])
    time.sleep(0.5)
    t0 = time.monotonic()
    time.sleep(1.0)
    assert rig.max_displacement_mm(t0, t0 + 1.0) < 0.5, "the arm moved while HALTED"
    # the operator takes over under the halt; the arm follows the stick
    rig.deadman(True)
    time.sleep(0.6)  # controllers switched back from the hold controller
    rise = stick_up_for(rig, 0.5)
    assert rise[2] > 15.0, f"teleop under the halt did not move the arm: {rise}"
    assert rig.mode() == "HALTED"
    rig.deadman(False)
    time.sleep(0.5)
    t1 = time.monotonic()
    time.sleep(0.8)
    assert rig.max_displacement_mm(t1, t1 + 0.8) < 0.5, "the arm moved after teleop under the halt ended"
    assert rig.mode() == "HALTED", "teleop must not clear the latched halt"


def test_bridge_started_after_the_press_still_hands_over(harness, write_config):
    """The deadman is already held when the bridge comes up (or re-matches): the engage event it
    missed is re-sent, so the operator gets the arm without re-pressing."""
    cfg = write_config("sim_panda.yaml", {"teleop": GAMEPAD_TELEOP, "cameras": []})
    r = TeleopRig(harness.probe)
    r.policy_enabled = False
    specs = {s.name: s for s in teleop_graph(str(cfg))}
    harness.start([specs["sim_robot"], specs["teleop"]])
    from geometry_msgs.msg import TwistStamped

    from vla_runtime.core.contract import TOPIC_TELEOP_TWIST
    from vla_runtime.nodes.common import QOS_COMMAND

    twists = harness.probe.collect(TwistStamped, TOPIC_TELEOP_TWIST, QOS_COMMAND)
    r.deadman(True)  # held from now on (the rig streams Joy at 50 Hz)
    harness.wait(lambda: len(twists) > 0, 30, "the teleop node engaged (twist stream)")
    harness.start([specs["controller_bridge"]])
    harness.wait(lambda: r.mode() == "TELEOP", 30, "TELEOP without a second press",
                 detail=lambda: f"modes: {[m.message for _, m in r.safety.reports]}")
    time.sleep(0.3)
    # The probe's best-effort /ee_pose subscription can match late on a loaded machine (make test
    # here: no pose at all by this point); the hand is measured only once poses arrive.
    harness.wait(lambda: r.ee_at(time.monotonic()) is not None, 10, "hand poses from the sim")
    rise = stick_up_for(r, 0.5)
    assert rise[2] > 15.0, f"the arm did not follow the stick: {rise}"


def test_shared_autonomy_operator_drives_the_arm_while_the_policy_closes_the_gripper(harness, write_config):
    """teleop.policy_keeps: [gripper]. The operator's stick moves the arm; the policy goes on closing
    the gripper through the takeover; neither group jumps at either switch (≤ 2 mm)."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from vla_runtime.core.contract import TOPIC_ACTION_CHUNK
    from vla_runtime.nodes.common import QOS_COMMAND, ns_to_stamp

    cfg = write_config("sim_panda.yaml", {"teleop": {**GAMEPAD_TELEOP, "policy_keeps": ["gripper"]}, "cameras": []})
    rig = TeleopRig(harness.probe)
    rig.policy_enabled = False  # the policy below drives the arm (holding it) and the gripper (closing it)
    node, pub = harness.probe.node, harness.probe.node.create_publisher(JointTrajectory, TOPIC_ACTION_CHUNK,
                                                                        QOS_COMMAND)
    t_start = time.monotonic()
    hold_arm: list[float] = []
    fingers: list[tuple[float, float]] = []

    def policy() -> None:
        if not all(j in rig.q for j in rig.arm):
            return
        fingers.append((time.monotonic(), rig.q["panda_finger_joint1"]))
        # As a real policy plans from the measured state: while it does not drive the arm (TELEOP, the
        # HOLD of the handback) it holds the arm where it is. (Keeping the pre-takeover pose through
        # TELEOP made the test pass only when this 30 Hz timer happened to see the short HOLD.)
        if not hold_arm or rig.mode() != "POLICY":
            hold_arm[:] = [rig.q[j] for j in rig.arm]
        g = max(0.0, 0.04 - 0.006 * (time.monotonic() - t_start))  # closing at 6 mm/s
        msg = JointTrajectory(joint_names=[*rig.arm, "gripper/gripper"])
        msg.header.stamp = ns_to_stamp(node.get_clock().now().nanoseconds)
        for k in range(10):
            pt = JointTrajectoryPoint(positions=[*hold_arm, max(0.0, g - 0.006 * 0.01 * k)])
            pt.time_from_start.nanosec = k * 10_000_000
            msg.points.append(pt)
        pub.publish(msg)

    node.create_timer(1 / 30, policy)
    harness.start(teleop_graph(str(cfg)))
    harness.wait(lambda: rig.mode() == "POLICY", 30, "POLICY")
    harness.wait(rig.teleop_ready, 30, "the teleop node on the graph")
    time.sleep(0.8)
    t_take = rig.deadman(True)  # the operator takes the arm, stick centred: the hand must stay put
    harness.wait(lambda: rig.mode() == "TELEOP", 3, "TELEOP")
    time.sleep(WINDOW_S)
    jump_take = rig.max_displacement_mm(t_take, t_take + WINDOW_S)
    t_move = rig.deadman(True, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # +x
    time.sleep(0.6)
    rig.deadman(True)
    time.sleep(0.3)
    t_back = rig.deadman(False)
    harness.wait(lambda: rig.mode() == "POLICY", 3, "POLICY again")
    time.sleep(WINDOW_S)
    jump_back = rig.max_displacement_mm(t_back, t_back + WINDOW_S + 0.2)
    assert jump_take <= 2.0 and jump_back <= 2.0, (jump_take, jump_back)
    moved = (rig.ee_at(t_back) - rig.ee_at(t_move)) * 1e3
    assert 35.0 < moved[0] < 75.0 and abs(moved[1]) < 5.0, moved  # the operator moved the hand +x
    f = np.array([(t, q) for t, q in fingers])
    during = f[(f[:, 0] > t_take + 0.2) & (f[:, 0] < t_back)]
    assert during[-1, 1] < during[0, 1] - 0.003, during[[0, -1]]  # the policy kept closing the gripper
    for t_switch in (t_take, t_back):
        near = f[(f[:, 0] > t_switch - 0.3) & (f[:, 0] < t_switch + 0.5)]
        assert np.abs(np.diff(near[:, 1])).max() <= 0.002, "the gripper jumped at a switch"
    starts = [m.data for _, m in rig.interventions if m.data.startswith("start")]
    assert starts and "[operator: arm; policy: gripper]" in starts[-1], starts
