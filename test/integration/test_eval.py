"""Task evaluation through the real node graph: sim robot, slow path, fast path and bridge as
processes over DDS on a private ROS_DOMAIN_ID, driven only through their topics and services."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from test.conftest import ROOT
from vla_runtime.commands.evaluation import run_eval

pytestmark = pytest.mark.integration

PACKAGE = ROOT / "models" / "reference_reach" / "model.yaml"


def _trained() -> bool:
    return PACKAGE.exists() and bool(yaml.safe_load(PACKAGE.read_text()).get("trained"))


@pytest.mark.skipif(not PACKAGE.exists(), reason="models/reference_reach not exported (tools/train_reference.py)")
def test_touch_episodes_through_the_graph():
    r = run_eval("touch", 3, mode="async", seed=0, log=None)
    for key in ("success_rate", "time_to_success_s", "achieved_hz", "per_episode", "successes", "fast_path"):
        assert key in r, key
    assert set(r["time_to_success_s"]) == {"mean", "p90"}
    assert r["episodes"] == 3 and len(r["per_episode"]) == 3
    for row in r["per_episode"]:
        assert {"seed", "colour", "instruction", "success", "time_to_success_s", "min_distance_m"} <= set(row)
        assert row["instruction"] == f"touch the {row['colour']} cube"
    assert r["achieved_hz"] is not None and r["achieved_hz"] > 20.0
    # Every episode starts from home, not where the last one ended (the hold after /sim/reset used to
    # capture the previous episode's end pose now and then).
    starts = np.array([row["start_tcp"] for row in r["per_episode"]])
    spread = float(np.linalg.norm(starts - starts[0], axis=1).max())
    assert spread < 0.02, f"episodes started {spread * 1e3:.0f} mm apart: {starts.tolist()}"
    if _trained():
        # The instruction names the cube: success means the hand reached THAT cube (the colours of
        # these seeds differ). 50-episode rate: see the README; ≥ 2 of 3 keeps CI from flaking.
        assert len({row["colour"] for row in r["per_episode"]}) >= 2, r["per_episode"]
        assert r["successes"] >= 2, f"the trained policy touched the named cube in <2 of 3: {r['per_episode']}"


@pytest.mark.parametrize("kwargs,match", [
    ({"task": "grasp"}, "task"),
    ({"episodes": 0}, "episodes"),
    ({"mode": "lockstep"}, "mode"),
    ({"slow_latency_ms": -1.0}, "slow_latency_ms"),
])
def test_bad_arguments_are_refused_before_anything_starts(kwargs, match):
    args = {"task": "touch", "episodes": 1, "mode": "async", **kwargs}
    with pytest.raises(ValueError, match=match):
        run_eval(args.pop("task"), args.pop("episodes"), **args)
