"""Inference slower than a tick, through the whole graph (real processes over DDS).

* With 300 ms injected into every fast inference of the trained flow-matching reference, the fast
  path runs inference off the tick with real-time chunking: the command stream keeps its 30 Hz and
  never holds while the arm chases a sliding cube, episode after episode.
* Stop-and-go with the same delay starts every chunk from its first action: its arm stood still
  while the chunk was computed, where the moving arm of the asynchronous mode has passed ~9 of them.
* An engine that hangs (a worker that never returns) ends in HOLD, then HALTED by the detector.
"""

from __future__ import annotations

import time

import pytest
from trajectory_msgs.msg import JointTrajectory

from test.conftest import ROOT
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import DIAG_FAST_PATH, HOLD_OVERRUN, TOPIC_ACTION_CHUNK
from vla_runtime.graph.harness import (
    TIMING_POLICY_DETECTOR_PARAMS,
    DiagnosticsWatch,
    FeaturesWatch,
    PoseWatch,
    node_graph,
)
from vla_runtime.nodes.common import QOS_COMMAND

pytestmark = pytest.mark.integration


def test_300ms_inference_keeps_the_command_stream_at_30hz_with_no_hold_while_the_arm_moves():
    from vla_runtime.bench.delay import bench_delay

    out = bench_delay(episodes=4, delays_ms=[300.0], modes=["async_rtc"], speed=False)
    (row,) = out["rows"]
    assert "INJECTED DELAY 300 ms" in row["provider"]
    # About 12 s of episodes: no HOLD request at all, the stream never silent for more than ~2 periods.
    assert row["hold_fraction"] == 0.0, row
    assert row["max_stream_gap_ms"] < 100.0, row
    assert 29.0 <= row["stream_hz"] <= 31.0, row
    assert abs(row["achieved_hz"] - 30.0) < 0.3, row
    # It plans for the delay it measures and guides each chunk towards the executing plan.
    assert float(row["delay_planned_s"]) >= 0.3, row
    assert int(row["rtc_guided_chunks"]) > 0, row
    # And the arm does its job while inference takes 300 ms.
    assert row["success_rate"] >= 0.75, row
    # The arm moved on while each chunk was computed: the actions of those 300 ms (9 at 30 Hz) were
    # dropped on merge, except from the first chunk of an episode, computed while the arm held.
    chunks, skipped = int(row["chunks"]), int(row["skipped_actions"])
    assert skipped >= 9 * (chunks - 2 * row["episodes"]), row


def test_stop_and_go_starts_each_chunk_from_its_first_action():
    from vla_runtime.bench.delay import bench_delay

    out = bench_delay(episodes=2, delays_ms=[300.0], modes=["sync"], task="touch", speed=False)
    (row,) = out["rows"]
    # It did stop and go: it held for the inferences between its chunks (whether it reached the cube in
    # time on a loaded machine is bench delay's question, not this test's).
    assert row["hold_fraction"] > 0.1 and int(row["chunks"]) >= 2 * row["episodes"], row
    # The arm stood still during each inference, so no action of a chunk had passed when it came:
    # skipping the 300 ms of them would jump the held arm 9 actions along its path.
    assert int(row["skipped_actions"]) == 0, row


def test_an_engine_that_hangs_ends_in_hold_then_halted(harness):
    h = harness
    cfg_file = h.write_config(ROOT / "config" / "sim_panda_detector.yaml", {
        # ~25 s of 30 Hz inference before the hang: the graph is in steady POLICY by then.
        "model": {"fast_engine": {"backend": "onnxruntime", "provider": "cpu", "intra_op_threads": 1,
                                  "inject_delay_ms": {"fixed_ms": 0, "hang_after": 750}}},
    })
    cfg = load_config(cfg_file)
    limit = cfg.scheduler.max_inference_s
    diag = DiagnosticsWatch(h.probe)
    features = FeaturesWatch(h.probe)
    pose = PoseWatch(h.probe)
    plans = h.probe.collect(JointTrajectory, TOPIC_ACTION_CHUNK, QOS_COMMAND)
    h.start_policy(node_graph(cfg, cfg_file, params={"failure_detector": TIMING_POLICY_DETECTOR_PARAMS}), 90.0)
    h.steady_policy(0.5)
    # The hang is timed from the last features message: the probe must be receiving them (its
    # best-effort subscription once had received none when the hang came, make test here).
    h.wait(lambda: features.count > 0, 10.0, "policy features at the probe")
    t_watch = time.monotonic()

    def stall_declared() -> float | None:
        """Receive time of the fast path's first stall request (HOLD_OVERRUN) since t_watch."""
        return next((t for t, m in list(plans) if t >= t_watch and not m.points and m.header.frame_id == HOLD_OVERRUN),
                    None)

    # The hang shows as the fast path's stall request. A halt before it, while chunks still merge (a
    # loaded machine stalling a node past one of the detector's timeouts: CI once halted here long
    # before the hang, and the test then timed the features that went on after it), is not what this
    # test judges: it is reset once its cause clears, as an operator would, and named on failure.
    early: list[tuple[float, str]] = []

    def hang_else_reset() -> bool:
        if stall_declared() is not None:
            return True
        if h.safety.mode() == "HALTED":
            t, msg = h.safety.reports[-1]
            if not early or early[-1][1] != h.safety.reason(msg):
                early.append((round(t - t_watch, 3), h.safety.reason(msg)))
            h.reset_cleared_halt()
        return False

    h.wait(hang_else_reset, 45.0, "the fast path to declare the engine stalled", interval=0.05,
           detail=lambda: f"halts before it {early}")
    t_stall = stall_declared()
    h.wait(lambda: h.safety.mode() == "HALTED", 5.0, "HALTED after the hang",
           detail=lambda: f"modes since the stall {h.safety.modes_since(t_stall)}")
    t_halted = time.monotonic()
    # Features go out with every merged chunk: the hang began at the last one before the stall.
    t_last_chunk = max(s.t for s in features.samples if s.t < t_stall)
    seen = f"modes {h.safety.modes_since(t_last_chunk - 1.0)} from 1 s before the last chunk; halts before {early}"
    before = [m.message for t, m in list(h.safety.reports) if t < t_last_chunk]
    assert before and before[-1] == "POLICY", seen  # it was driving when the engine hung
    t_safe, worst = h.safety.safe_after(t_last_chunk)
    assert worst == "HALTED", seen
    # HOLD once the plan ran out or the stall was declared; HALTED within the stall limit plus the
    # detector's HOLD streak (3 periods) and a loaded machine's slack, for the stall requests.
    assert t_safe - t_last_chunk <= limit + 0.5, (t_safe - t_last_chunk, seen)
    halted_at, halted = next((t, m) for t, m in h.safety.reports if t >= t_last_chunk and m.message == "HALTED")
    assert halted_at - t_last_chunk <= limit + 0.6, (halted_at - t_last_chunk, seen)
    assert "hold_streak" in h.safety.reason(halted) and HOLD_OVERRUN in h.safety.reason(halted), seen
    # The fast path names it.
    h.wait(lambda: diag.latest(DIAG_FAST_PATH).get("last_hold_reason") == HOLD_OVERRUN, 3.0,
           "the fast path to report the stall")
    # The arm stays where it halted.
    time.sleep(1.0)
    assert pose.max_displacement_mm(t_halted, time.monotonic()) < 5.0
