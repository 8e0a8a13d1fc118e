"""Test-time chunk selection and the consensus horizon through the whole graph (real processes over DDS).

* ``scheduler.candidates: 4`` with the consistency verifier on the trained flow-matching reference: the fast
  node draws four chunks per inference, keeps one, and the command stream never asks for HOLD while the arm
  chases a sliding cube.
* ``scheduler.horizon_policy: consensus`` at 100 ms injected delay: no HOLD either, and the trigger judged the
  chunks (some agreed over their whole overlap).
"""

from __future__ import annotations

import pytest

from test.conftest import ROOT

pytestmark = pytest.mark.integration

BASE = ROOT / "config" / "sim_panda_reach_flow.yaml"


def test_four_candidates_with_the_consistency_verifier_run_with_no_hold(tmp_path):
    from vla_runtime.bench.horizon import graph_row

    over = {"scheduler": {"candidates": 4, "verifier": "consistency"}}
    row = graph_row(BASE, tmp_path / "n4.yaml", over, "n4", "touch_dynamic", 3, 0, 0.0, lambda _s: None)
    diag = row["diagnostics"]
    assert diag["candidates"] == "4", row
    assert row["hold_fraction"] == 0.0, row  # a few seconds of episodes, not one HOLD request
    assert int(diag["candidates_changed"]) > 0, row  # the verifier did choose
    assert abs(row["achieved_hz"] - 30.0) < 0.3, row
    assert row["success_rate"] >= 2 / 3, row


def test_the_consensus_horizon_runs_with_no_hold_at_100ms(tmp_path):
    from vla_runtime.bench.horizon import POLICIES, graph_row

    over = {"scheduler": dict(POLICIES["consensus"])}
    row = graph_row(BASE, tmp_path / "consensus.yaml", over, "consensus", "touch_dynamic", 3, 0, 100.0,
                    lambda _s: None)
    diag = row["diagnostics"]
    assert diag["horizon_policy"] == "consensus", row
    assert row["hold_fraction"] == 0.0, row
    assert int(diag["consensus_agreed"]) + int(diag["consensus_parted"]) > 0, row
    assert row["success_rate"] >= 2 / 3, row
