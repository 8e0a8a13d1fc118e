"""Slow-path caching on the running sim graph: a static scene is re-validated, not recomputed.

sim_robot, slow_reasoner (timing reference model, ``slow_cache.enabled``), action_chunk_node (null
engine: every chunk decodes to the model's mean pose, so the arm comes to rest and the scene is
static) and controller_bridge, as separate processes over DDS. Once the arm has settled, most slow
steps must be reused, and the fast path must keep planning on fresh latents (no stale-latent HOLD),
with the bridge in POLICY throughout. Moving a cube and changing the instruction must make the slow
path compute again.
"""

import time

import pytest
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.config import load_config
from vla_runtime.core.contract import DIAG_FAST_PATH, DIAG_SLOW_PATH, TOPIC_ACTION_CHUNK, TOPIC_INSTRUCTION
from vla_runtime.graph.harness import DiagnosticsWatch, SimObjects, node_graph
from vla_runtime.nodes.common import QOS_COMMAND, QOS_LATCHED

pytestmark = pytest.mark.integration

MAX_AGE_S = 1.0


def _n(kv: dict, key: str) -> float:
    return float(kv.get(key, "nan") or "nan")


def test_static_scene_reuses_slow_steps_and_the_fast_path_stays_in_policy(harness, write_config):
    cfg = write_config("sim_panda.yaml", {
        "slow_cache": {"enabled": True, "image_threshold": 10.0, "max_reuse_s": 2.0},
        "latent": {"max_age_s": MAX_AGE_S},
    })
    diag = DiagnosticsWatch(harness.probe)
    objects = SimObjects(harness.probe)
    plans = harness.probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
    instr_pub = harness.probe.node.create_publisher(String, TOPIC_INSTRUCTION, QOS_LATCHED)
    harness.start_policy(node_graph(load_config(cfg), cfg, params={"action_chunk_node": {"engine": "null"}}))
    slow = lambda: diag.latest(DIAG_SLOW_PATH)  # noqa: E731

    # The arm reaches the mean pose and rests there: from then on the slow path reuses.
    harness.wait(lambda: _n(slow(), "steps_reused") >= 3, 60.0, "the first reused slow steps", interval=0.1,
                 detail=lambda: str(slow()))

    # -- static scene: re-validated, the fast path keeps planning on fresh latents
    n = diag.count(DIAG_SLOW_PATH)
    harness.wait(lambda: diag.count(DIAG_SLOW_PATH) > n, 5.0, "fresh slow-path diagnostics", interval=0.05)
    s0, n_plans, modes0 = dict(slow()), len(plans), len(harness.safety.reports)
    harness.run_for(8.0)
    n = diag.count(DIAG_SLOW_PATH)
    harness.wait(lambda: diag.count(DIAG_SLOW_PATH) > n, 5.0, "fresh slow-path diagnostics", interval=0.05)
    s1 = dict(slow())
    reused = _n(s1, "steps_reused") - _n(s0, "steps_reused")
    computed = _n(s1, "steps_computed") - _n(s0, "steps_computed")
    # The slow path runs at up to 5 Hz (2-3 Hz on a loaded 2-core machine): 16-40 steps in 8 s, of
    # which the max_reuse_s (2 s) recomputations are at most 4 (+1 where the window's edge falls).
    assert reused + computed >= 12, f"the slow path stalled: {s1}"
    assert computed <= 5, f"{computed} slow steps computed on a static scene: {s1}"
    assert reused >= 0.6 * (reused + computed), f"only {reused} of {reused + computed} slow steps reused: {s1}"
    assert _n(s1, "cache_change_score") < 10.0
    assert _n(s1, "cache_compute_saved_ms") > _n(s0, "cache_compute_saved_ms")
    window = [m for _, m in plans[n_plans:]]
    holds = sorted({m.header.frame_id for m in window if not m.points})
    assert len(window) >= 100 and not holds, f"fast path held during the static scene: {holds}"
    assert _n(diag.latest(DIAG_FAST_PATH), "latent_age_s") < MAX_AGE_S
    assert all(m.message == "POLICY" for _, m in list(harness.safety.reports)[modes0:]), harness.safety.state()

    # -- a moved cube is a changed scene: the slow path computes again
    harness.wait(lambda: "red_cube" in objects.positions, 10.0, "the cube poses on /sim/objects", interval=0.05)
    before = _n(slow(), "cache_recompute_scene")
    objects.place({"red_cube": (objects.positions["red_cube"] + [0.0, 0.05, 0.0], None)}, 5.0)
    harness.wait(lambda: _n(slow(), "cache_recompute_scene") > before, 5.0, "a recompute after the cube moved",
                 interval=0.05, detail=lambda: str(slow()))

    # -- a new instruction: computed again whatever the scene
    before = _n(slow(), "cache_recompute_instruction")
    instr_pub.publish(String(data="touch the blue cube"))
    harness.wait(lambda: _n(slow(), "cache_recompute_instruction") > before, 5.0,
                 "a recompute after the instruction changed", interval=0.05, detail=lambda: str(slow()))
    time.sleep(0.1)
