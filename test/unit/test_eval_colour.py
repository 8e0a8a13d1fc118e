"""``vla-runtime eval --colour``: every episode names the chosen cube, whatever its seed would pick."""

from __future__ import annotations

import pytest

from test.conftest import ROOT
from vla_runtime.commands.evaluation import run_eval
from vla_runtime.sim.scene import sample_cube_poses
from vla_runtime.sim.tasks import make_episode

REACH = ROOT / "config" / "sim_panda_reach.yaml"


def test_a_fixed_colour_overrides_the_seeds_choice_and_the_policy_touches_that_cube():
    seeds = [0, 1]
    assert [make_episode("touch", s, sample_cube_poses(s)).colour for s in seeds] == ["green", "green"]
    r = run_eval("touch", len(seeds), config=REACH, realtime=False, log=None, colour="red")
    assert [row["colour"] for row in r["per_episode"]] == ["red", "red"]
    assert {row["instruction"] for row in r["per_episode"]} == {"touch the red cube"}
    assert r["success_rate"] == 1.0, r["per_episode"]  # the reference policy goes to the red cube, not the green


def test_an_unknown_colour_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="colour must be one of .* got 'purple'"):
        run_eval("touch", 1, config=REACH, realtime=False, log=None, colour="purple")
