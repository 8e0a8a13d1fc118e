"""The graph harness's setup pieces that need no ROS graph: config copies, node selection, logs."""

from __future__ import annotations

import pytest

from vla_runtime.core.config import PROJECT_ROOT, load_config
from vla_runtime.graph.harness import log_tails, node_graph, private_domain_id, write_config

CONFIG = PROJECT_ROOT / "config"


def test_config_copy_has_absolute_model_private_latent_and_overrides(tmp_path):
    out = write_config(CONFIG / "sim_panda_reach.yaml", tmp_path / "sub" / "c.yaml",
                       {"rates": {"fast_hz": 20.0}}, latent_tag="eval7_150")
    cfg = load_config(out)
    assert cfg.model_package_path == PROJECT_ROOT / "models" / "reference_reach"
    assert cfg.model_package_path.is_absolute()
    assert cfg.latent.name == "vla_latent_reach_eval7_150"
    assert cfg.rates.fast_hz == 20.0 and cfg.rates.slow_hz == 5.0  # merged, not replaced
    assert cfg.instruction == "touch the red cube"  # from the include chain


def test_an_explicit_latent_name_is_kept_and_no_tag_keeps_the_name(tmp_path):
    named = write_config(CONFIG / "sim_panda.yaml", tmp_path / "a.yaml", {"latent": {"name": "mine"}}, "t1")
    assert load_config(named).latent.name == "mine"
    untagged = write_config(CONFIG / "sim_panda.yaml", tmp_path / "b.yaml")
    assert load_config(untagged).latent.name == load_config(CONFIG / "sim_panda.yaml").latent.name


def test_node_graph_selects_keeps_placement_and_adds_params(tmp_path):
    cfg = load_config(CONFIG / "sim_panda.yaml")
    specs = node_graph(cfg, tmp_path / "c.yaml", nodes=("sim_robot", "action_chunk_node"),
                       params={"action_chunk_node": {"rate_hz": 50.0}, "teleop": {"x": 1}})
    assert [s.name for s in specs] == ["sim_robot", "action_chunk_node"]
    chunk = specs[1]
    assert chunk.params == {"rate_hz": 50.0} and chunk.cpu_affinity == (1,) and chunk.nice == -5
    assert chunk.config_file == str(tmp_path / "c.yaml")
    assert "rate_hz:=50.0" in " ".join(chunk.argv())


def test_node_graph_names_missing_required_nodes():
    cfg = load_config(CONFIG / "sim_panda.yaml")
    with pytest.raises(ValueError, match=r"\['failure_detector'\]"):
        node_graph(cfg, "c.yaml", require=("sim_robot", "failure_detector"))


def test_remaps_go_on_the_command_line():
    from dataclasses import replace

    spec = node_graph(load_config(CONFIG / "sim_panda.yaml"), "c.yaml", nodes=("sim_robot",))[0]
    argv = replace(spec, remaps=(("/joint_states", "/joint_states_sim"),)).argv()
    assert argv[-2:] == ["-r", "/joint_states:=/joint_states_sim"]


def test_private_domain_in_range_and_log_tails(tmp_path):
    assert all(1 <= private_domain_id(1, 100) <= 100 for _ in range(50))
    assert log_tails(tmp_path / "none") == "<no logs>"
    (tmp_path / "a.log").write_text("x" * 50 + "END")
    assert log_tails(tmp_path, tail=5) == "--- a.log\nxxEND"
