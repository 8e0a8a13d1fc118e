"""docs/foxglove-layout.json opens a recorded bag: every topic it plots is one the recorder records."""

from __future__ import annotations

import json
import re

import pytest

from test.conftest import ROOT
from vla_runtime.core import contract
from vla_runtime.core.config import load_config
from vla_runtime.nodes.recorder import recorded_topics

LAYOUT = ROOT / "docs" / "foxglove-layout.json"
#: The configs whose bags the layout is for: the simulated Panda ones (same camera, same joints).
CONFIGS = ("sim_panda.yaml", "sim_panda_reach.yaml", "sim_panda_detector.yaml", "sim_panda_reach_detector.yaml")
TOPIC = re.compile(r"^(/[A-Za-z0-9_/]*[A-Za-z0-9_])(?=[.\[{]|$)")


def _layout() -> dict:
    return json.loads(LAYOUT.read_text())


def _panel_ids(node) -> list[str]:
    """The panel ids in Foxglove's layout tree (a panel id, or a split with first/second)."""
    if isinstance(node, str):
        return [node]
    assert set(node) <= {"first", "second", "direction", "splitPercentage"}, node
    assert node["direction"] in ("row", "column"), node
    return _panel_ids(node["first"]) + _panel_ids(node["second"])


def _message_paths(config_by_id: dict) -> list[str]:
    out = []
    for cfg in config_by_id.values():
        out += [p["value"] for p in cfg.get("paths", [])]
        out += [cfg[k] for k in ("topicPath",) if k in cfg]
        if "imageMode" in cfg:
            out.append(cfg["imageMode"]["imageTopic"])
    return out


def test_layout_is_foxglove_layout_json_with_every_panel_placed():
    layout = _layout()
    assert {"configById", "layout", "globalVariables", "userNodes", "playbackConfig"} <= set(layout)
    placed = _panel_ids(layout["layout"])
    assert sorted(placed) == sorted(layout["configById"]), "every configured panel is in the tree, and only those"
    kinds = {pid.split("!")[0] for pid in placed}
    assert kinds == {"Image", "StateTransitions", "RawMessages", "Plot"}, kinds


@pytest.mark.parametrize("config", CONFIGS)
def test_every_topic_in_the_layout_is_recorded(config):
    recorded = {spec.name for spec in recorded_topics(load_config(ROOT / "config" / config))}
    paths = _message_paths(_layout()["configById"])
    topics = set()
    for p in paths:
        m = TOPIC.match(p)
        assert m, f"{p!r} does not start with a topic name"
        topics.add(m.group(1))
    missing = sorted(topics - recorded)
    assert not missing, f"the layout shows {missing}, which the recorder does not record with {config}"


def test_layout_shows_what_a_run_is_judged_by():
    paths = _message_paths(_layout()["configById"])
    shown = {TOPIC.match(p).group(1) for p in paths}
    assert {contract.TOPIC_ACTION_CHUNK, contract.TOPIC_JOINT_STATES, contract.TOPIC_SAFETY_STATE,
            contract.TOPIC_POLICY_FEATURES, contract.TOPIC_DIAGNOSTICS} <= shown
    cams = {c.topic for c in load_config(ROOT / "config" / "sim_panda_reach.yaml").cameras}
    assert cams <= shown, "the camera image"
    # Diagnostics are filtered by the status names the nodes publish (core/contract.py).
    names = {n for p in paths for n in re.findall(r'\{name=="([^"]+)"\}', p)}
    assert names and names <= {contract.DIAG_FAST_PATH, contract.DIAG_SLOW_PATH, contract.DIAG_DETECTOR,
                               contract.DIAG_RECORDER}, names
    # Latent age is the third value from the end of a feature vector (contract.FeatureLayout).
    layout = contract.FeatureLayout(4, 2, 3)
    vec = list(range(layout.size))
    assert contract.FeatureLayout.tail(vec)[0] == vec[-3]
    assert f"{contract.TOPIC_POLICY_FEATURES}.data[-3]" in paths
