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
from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, TeleopRig, run_trial, teleop_graph

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
    time.sleep(0.2)
    t0 = time.monotonic()
    time.sleep(0.8)
    assert rig.max_displacement_mm(t0, t0 + 0.8) < 0.5
    assert rig.max_displacement_mm(t_rel, t0) < 5.0  # stopped within a few mm of the release
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
    rise = stick_up_for(r, 0.5)
    assert rise[2] > 15.0, f"the arm did not follow the stick: {rise}"
