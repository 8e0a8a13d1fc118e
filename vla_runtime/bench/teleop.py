"""Teleop takeover latency and handover smoothness on the simulated robot.

`bench_teleop` starts ``sim_robot``, ``controller_bridge`` and ``teleop`` as processes on a private
ROS domain (gamepad mapping: deadman button 4) and drives them from an independent probe node
(:class:`vla_runtime.graph.teleop_rig.TeleopRig`):

* a stand-in policy streams ``/vla/action_chunk`` at 30 Hz that holds the arm where it was when
  the policy (re)gained control — the ideal "first command starts from the current state"
  policy, so any end-effector motion at a switch is the switch's own transient;
* a stand-in operator publishes ``sensor_msgs/Joy`` at 50 Hz (as a joystick driver does).

Each trial: press the deadman (policy → teleop), push the stick for 0.4 s, centre it, release the
deadman (→ HOLD), the policy resumes (teleop → policy).

* ``takeover_latency_ms``: the Joy message that presses the deadman is published → the first
  teleop command (``header.frame_id == "teleop"``) arrives on ``/arm_controller/joint_trajectory``
  (probe → teleop node → bridge → controller topic; both times on this host's monotonic clock).
* ``handover_jump_mm``: the largest ``/ee_pose`` displacement within 0.4 s after a switch from the
  pose at the switch, with the incoming commander asking to stay put (policy → teleop: the stick
  centred; teleop → policy: from the release until 0.4 s after POLICY resumed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["bench_teleop"]

FAST_PERIOD_MS = 1000.0 / 30.0


def _pct(xs: list[float]) -> dict[str, float | int]:
    a = np.asarray([x for x in xs if np.isfinite(x)], dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def bench_teleop(trials: int = 50, config: str | None = None, domain_id: int | None = None) -> dict:
    """Run ``trials`` takeover/handback cycles on the simulated Panda; returns the measurements.

    Args:
        trials: Number of cycles.
        config: Base config (default ``config/sim_panda.yaml``); its teleop section is replaced by a
            gamepad mapping with deadman button 4.
        domain_id: ROS domain (default: a random private one in 101..200).

    Returns:
        ``takeover_latency_ms`` {p50, p99, max, n}, ``handover_jump_mm`` {max, policy_to_teleop,
        teleop_to_policy}, targets and ``passed``.
    """
    from vla_runtime.core.config import PROJECT_ROOT
    from vla_runtime.graph.harness import GraphHarness
    from vla_runtime.graph.teleop_rig import GAMEPAD_TELEOP, TeleopRig, run_trial, teleop_graph

    base = Path(config) if config else PROJECT_ROOT / "config" / "sim_panda.yaml"
    with GraphHarness(domain_id=domain_id, name="bench_teleop", sigint_s=3.0, sigterm_s=1.0) as g:
        # No rendering: the 2 cores go to physics, bridge and teleop.
        cfg_path = g.write_config(base, {"teleop": dict(GAMEPAD_TELEOP), "cameras": []}, name="teleop.yaml")
        rig = TeleopRig(g.probe)
        g.start(teleop_graph(str(cfg_path)))
        g.wait(lambda: rig.mode() == "POLICY", 30.0, "the bridge in POLICY")
        g.wait(rig.teleop_ready, 30.0, "the teleop node on the graph")
        results = [run_trial(rig, 1.0 if k % 2 == 0 else -1.0) for k in range(trials)]
    lat = _pct([r["latency_ms"] for r in results])
    take = _pct([r["jump_take_mm"] for r in results])
    back = _pct([r["jump_back_mm"] for r in results])
    moved = [abs(r["moved_mm"][0]) for r in results]
    jump_max = max(take.get("max", float("nan")), back.get("max", float("nan")))
    passed = bool(lat.get("p99", 1e9) <= FAST_PERIOD_MS and jump_max <= 2.0)
    return {
        "trials": trials,
        "takeover_latency_ms": lat,
        "handover_jump_mm": {"max": round(jump_max, 3), "policy_to_teleop": take, "teleop_to_policy": back},
        "teleop_motion_x_mm": _pct(moved),
        "targets": {"takeover_latency_ms_p99": round(FAST_PERIOD_MS, 1), "handover_jump_mm_max": 2.0},
        "passed": passed,
    }
