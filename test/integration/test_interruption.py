"""Interruption through the real graph: a new instruction mid-chunk stops the old plan, then the arm turns.

sim_robot, controller_bridge, slow_reasoner and action_chunk_node (the trained reference policy,
``config/sim_panda_reach.yaml``) as processes over DDS on a private ROS_DOMAIN_ID. The run starts on
"touch the red cube"; mid-reach (0.7 s in, the fast path re-planning every few ticks, so always in
the middle of a chunk) "touch the blue cube" is published. Seen only on the public topics:

* within 2 ticks of the instruction the plans stop extending the old plan: each plan message then
  ends where the one before it ended (the stop's rest point), or is a HOLD;
* the stop is continuous with the plan it replaces, keeps every arm joint's acceleration within its
  limit × ``safety.acceleration_scale``, and comes to rest;
* the only HOLDs until motion resumes are the new instruction's (and awaiting its first chunk);
* motion resumes: the hand reaches the blue cube and never touches the red one after the switch;
* the fast path counts the interruption and times instruction → first chunk.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.commands.evaluation import DEFAULT_CONFIG, _GraphSession
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import (
    HOLD_AWAITING_CHUNK,
    HOLD_NEW_INSTRUCTION,
    SERVICE_RESUME,
    TOPIC_ACTION_CHUNK,
)
from vla_runtime.core.interruption import acceleration_bounds
from vla_runtime.nodes.common import QOS_COMMAND
from vla_runtime.sim.tasks import ARM_JOINTS, instruction_for, is_success, tcp_from_hand

pytestmark = pytest.mark.integration

SEED = 1  # red and blue 0.4 m apart: a clear turn
SWITCH_AFTER_S = 0.7


def _rows(collected) -> list[tuple[float, str, float, np.ndarray | None, np.ndarray | None, list[str]]]:
    out = []
    for t, m in list(collected):
        stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        if not m.points:
            out.append((t, m.header.frame_id, stamp, None, None, list(m.joint_names)))
            continue
        pts = np.array([p.positions for p in m.points], dtype=np.float64)
        tfs = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points])
        out.append((t, m.header.frame_id, stamp, pts, tfs, list(m.joint_names)))
    return out


@pytest.mark.skipif(not (DEFAULT_CONFIG.parent.parent / "models" / "reference_reach" / "model.yaml").exists(),
                    reason="models/reference_reach not exported (tools/train_reference.py)")
def test_a_new_instruction_mid_chunk_stops_the_old_plan_and_the_arm_turns_to_the_new_target():
    cfg = load_config(DEFAULT_CONFIG)
    dt_cmd = 1.0 / cfg.rates.command_hz
    with _GraphSession("async", None, DEFAULT_CONFIG, lambda _line: None) as s:
        g = s.g
        plans = g.probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
        _, want = s.prepare("touch", SEED, colour="red")
        red, blue = want["red_cube"], want["blue_cube"]
        ok, msg = g.trigger(SERVICE_RESUME)
        assert ok, msg
        g.run_for(SWITCH_AFTER_S)
        tcp_before = s._tcp()[0]
        s.instruction_pub.publish(String(data=instruction_for("blue")))
        t_pub = time.monotonic()
        reached = g.wait(lambda: s._tcp()[0] is not None and is_success(s._tcp()[0], blue), 10.0)
        t_end = time.monotonic()
        touched_red = [t for t, p, q in s.pose.since(t_pub) if t <= t_end and is_success(tcp_from_hand(p, q), red)]
        g.wait(lambda: (s.diag.fast_path().get("instruction_to_first_chunk_ms") or "None") != "None", 3.0)
        kv = s.diag.fast_path()
        rows = _rows(plans)

    assert tcp_before is not None
    names = rows[-1][5]
    arm = [names.index(j) for j in ARM_JOINTS]
    bound = acceleration_bounds([names[i] for i in arm], cfg.robot.joints, cfg.safety.acceleration_scale)
    before = [r for r in rows if r[0] < t_pub and r[3] is not None]
    after = [r for r in rows if r[0] >= t_pub]
    assert before and after

    def end(r) -> float:
        return r[2] + r[4][-1]

    # Sequence after the instruction: plans whose end still moves on (≤ 2 of the old plan, the instruction
    # takes effect on the next tick; then, while the stop is longer than a plan window, the stop's own
    # windows), then the stop's windows that end at its rest point and/or HOLDs for the new instruction,
    # then plans extending again (the new target).
    period = 1.0 / cfg.rates.fast_hz
    window_s = math.ceil(cfg.scheduler.plan_horizon_periods * period / dt_cmd) * dt_cmd
    stop_s = float(kv["last_stop_s"])
    allowed = 2 + math.ceil(max(0.0, stop_s - window_s) / period - 1e-9)
    prev_end = end(before[-1])
    extending = 0
    i = 0
    while i < len(after) and after[i][3] is not None and end(after[i]) > prev_end + 0.5 * dt_cmd:
        prev_end = end(after[i])
        extending += 1
        i += 1
    assert extending <= allowed, (f"{extending} plans went on extending after the new instruction (stop "
                                  f"{stop_s:.3f} s: {allowed} allowed)")
    stop_plans, holds = [], []
    last_plan = before[-1] if i == 0 else after[i - 1]
    while i < len(after):
        r = after[i]
        if r[3] is None:
            holds.append(r[1])
        elif end(r) > prev_end + 0.5 * dt_cmd and (holds or stop_plans):
            break  # a new chunk took over
        else:
            stop_plans.append(r)
        i += 1
    assert i < len(after), "motion never resumed after the new instruction"
    assert set(holds) <= {HOLD_NEW_INSTRUCTION, HOLD_AWAITING_CHUNK}, f"unexpected HOLDs: {sorted(set(holds))}"
    assert HOLD_NEW_INSTRUCTION in holds or stop_plans

    if stop_plans:
        first = stop_plans[0]
        # Continuous with the plan it replaced (that plan, at the stop's first stamp).
        t_rel = first[2] - last_plan[2]
        if last_plan[4][0] <= t_rel <= last_plan[4][-1]:
            predicted = np.array([np.interp(t_rel, last_plan[4], last_plan[3][:, j]) for j in arm])
            assert np.abs(first[3][0, arm] - predicted).max() < 2e-3
        # Windows are sampled every command period from their stamp: each ends within one period of the rest.
        ends = {round(end(r), 4) for r in stop_plans}
        assert max(ends) - min(ends) <= dt_cmd + 1e-3, f"the stop plans do not share one rest point in time: {ends}"
        for r in stop_plans:
            q = r[3][:, arm]
            if len(q) >= 3:
                acc = np.abs(np.diff(q, 2, axis=0)) / dt_cmd**2
                assert (acc <= bound * 1.05 + 0.05).all(), f"deceleration {acc.max(axis=0)} over the bound {bound}"
        # At rest: the last window of two or more points ends within a command period of it (the very
        # last window may hold the rest point alone).
        rest = [r for r in stop_plans if len(r[3]) >= 2][-1][3][-2:, arm] if any(len(r[3]) >= 2 for r in stop_plans) \
            else None
        assert rest is None or (np.abs(rest[1] - rest[0]) / dt_cmd <= 2.0 * bound * dt_cmd + 1e-6).all()

    assert reached, "the hand did not reach the blue cube within 10 s of the new instruction"
    assert not touched_red, "the hand touched the red cube after the switch"
    assert int(kv.get("interruptions", "0")) >= 1, kv
    assert float(kv["instruction_to_first_chunk_ms"]) < 2000.0, kv
