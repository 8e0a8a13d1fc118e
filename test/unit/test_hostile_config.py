"""Configs and model packages that cannot be safe are refused by ``vla-runtime check``, naming the
bad value (issue #12's table: each of these was accepted before)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_runtime.cli import main as cli_main
from vla_runtime.commands.check import check_config
from vla_runtime.core.config import ConfigError, _read_yaml, load_config

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, base: str, edit, name: str = "cfg.yaml") -> Path:
    data = _read_yaml(ROOT / "config" / base)  # includes followed
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("package"), str):
        model["package"] = str(ROOT / model["package"])
    edit(data)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _problems(path: Path, load_models: bool = True) -> str:
    report = check_config(str(path), load_models=load_models)
    assert not report.ok, f"{path} passed check: {report.verified}"
    return "\n".join(report.problems)


def test_limits_above_the_datasheet_are_refused(tmp_path) -> None:
    def edit(d):
        d["robot"]["joints"][0]["velocity"] = 1e9
        d["robot"]["joints"][2]["position"] = [-1e9, 1e9]
        d["robot"]["joints"][4]["effort"] = 1e9

    text = _problems(_write(tmp_path, "sim_panda.yaml", edit), load_models=False)
    assert "panda_joint1.velocity = 1000000000.0 exceeds the datasheet of 'panda' (2.175)" in text
    assert "panda_joint3.position = [-1000000000.0, 1000000000.0] exceeds the datasheet" in text
    assert "panda_joint5.effort = 1000000000.0 exceeds the datasheet" in text


def test_an_unknown_robot_is_held_to_physical_bounds(tmp_path) -> None:
    def edit(d):
        d["robot"]["name"] = "my_arm"
        d["sim"] = None
        d["nodes"] = ["controller_bridge"]
        d["robot"]["joints"][1]["acceleration"] = 1e6

    text = _problems(_write(tmp_path, "sim_panda.yaml", edit), load_models=False)
    assert "panda_joint2.acceleration = 1000000.0 exceeds the physical bound (500.0)" in text


def test_a_margin_that_leaves_no_range_is_refused_and_the_gripper_range_is_not_pinned(tmp_path) -> None:
    text = _problems(_write(tmp_path, "sim_panda.yaml", lambda d: d["safety"].update(position_margin_rad=1e9)),
                     load_models=False)
    assert "safety.position_margin_rad = 1000000000.0 leaves joint 'panda_joint1' 0 of its range" in text
    # 0.05 rad leaves every arm joint most of its range; the finger is limited by gripper_range.
    ok = check_config(str(_write(tmp_path, "sim_panda.yaml", lambda d: d["safety"].update(position_margin_rad=0.05),
                                 "ok.yaml")), load_models=False)
    assert ok.ok, ok.problems


@pytest.mark.parametrize(("rate", "value"), [("fast_hz", 1e6), ("command_hz", 1e5), ("slow_hz", 500.0)])
def test_implausible_rates_are_refused(tmp_path, rate: str, value: float) -> None:
    def edit(d):
        d["rates"] = {"fast_hz": 30.0, "command_hz": 100.0, "slow_hz": 5.0, rate: value}
        if rate == "fast_hz":
            d["rates"]["command_hz"] = value  # keep command_hz >= fast_hz: only the plausibility rule fires

    text = _problems(_write(tmp_path, "sim_panda.yaml", edit), load_models=False)
    assert f"{rate} = {value} is not a physically plausible rate" in text


def test_a_node_listed_twice_is_refused(tmp_path) -> None:
    text = _problems(_write(tmp_path, "sim_panda.yaml", lambda d: d["nodes"].append("controller_bridge")),
                     load_models=False)
    assert "nodes listed twice: ['controller_bridge']" in text


def test_binary_garbage_is_a_clear_error_without_traceback(tmp_path, capsys) -> None:
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a text file: byte 128"):
        load_config(path)
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "not a text file" in err and "Traceback" not in err
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"robot:\x00 {}\n")
    with pytest.raises(ConfigError, match="NUL byte at offset 6"):
        load_config(nul)


def test_zmq_key_files_that_do_not_exist_are_refused(tmp_path) -> None:
    def edit(d):
        d["latent"] = {"transport": "zmq", "server_key": str(tmp_path / "keys/slow_path"),
                       "client_key": str(tmp_path / "keys/fast_path"), "endpoint": "tcp://127.0.0.1:5999"}

    text = _problems(_write(tmp_path, "sim_panda.yaml", edit), load_models=False)
    assert f"slow_reasoner needs {tmp_path / 'keys/slow_path.key_secret'}" in text
    assert f"action_chunk_node needs {tmp_path / 'keys/fast_path.key_secret'}" in text
    from vla_runtime.commands.deploy import write_keys

    write_keys(tmp_path / "keys", ["slow_path", "fast_path"])
    assert check_config(str(tmp_path / "cfg.yaml"), load_models=False).ok


@pytest.fixture
def reach_copy(tmp_path: Path):
    """A copy of the trained reference package, and a function that edits its model.yaml."""
    dst = tmp_path / "pkg"
    shutil.copytree(ROOT / "models" / "reference_reach", dst)

    def edit_yaml(fn) -> None:
        data = yaml.safe_load((dst / "model.yaml").read_text())
        fn(data)
        (dst / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    return dst, edit_yaml


def _reach_config(tmp_path: Path, pkg: Path, **extra) -> Path:
    def edit(d):
        d["model"]["package"] = str(pkg)
        d.update(extra)

    return _write(tmp_path, "sim_panda_reach_detector.yaml", edit, "reach.yaml")


def test_an_action_std_of_a_million_is_refused(tmp_path, reach_copy) -> None:
    pkg, edit_yaml = reach_copy

    def huge_std(m):
        norm = dict(m["action"]["normalization"])
        norm["std"] = [1e6] * len(norm["std"])
        m["action"]["normalization"] = norm

    edit_yaml(huge_std)
    text = _problems(_reach_config(tmp_path, pkg))
    assert "action.normalization.std[0] (panda_joint1) = 1000000.0 is wider than its whole range" in text


@pytest.mark.parametrize(("section", "stat", "value"), [("proprio", "mean", float("nan")),
                                                         ("action", "mean", float("inf"))])
def test_non_finite_normalisation_statistics_are_refused(tmp_path, reach_copy, section, stat, value) -> None:
    pkg, edit_yaml = reach_copy

    def poison(m):
        norm = dict(m[section]["normalization"])
        norm[stat] = [value] + list(norm[stat][1:])
        m[section]["normalization"] = norm

    edit_yaml(poison)
    assert f"normalization {stat} must be finite, got {stat}[0] = {value}" in _problems(_reach_config(tmp_path, pkg))


def test_detector_weights_that_do_not_load_are_refused_unless_the_config_turns_the_head_off(tmp_path,
                                                                                             reach_copy) -> None:
    pkg, _ = reach_copy
    (pkg / "detector" / "weights.npz").write_bytes(b"PK\x03\x04 not really a zip")
    text = _problems(_reach_config(tmp_path, pkg))
    assert "weights do not load" in text and "detector.learned: off" in text
    off = check_config(str(_reach_config(tmp_path, pkg, detector={"learned": "off"})))
    assert off.ok, off.problems
    assert any("learned head off" in v for v in off.verified)


def test_a_package_without_a_head_runs_hard_monitors_unless_the_head_is_required(tmp_path, reach_copy) -> None:
    pkg, _ = reach_copy
    shutil.rmtree(pkg / "detector")
    fine = check_config(str(_reach_config(tmp_path, pkg)))
    assert fine.ok and any("hard monitors only" in v for v in fine.verified), fine
    text = _problems(_reach_config(tmp_path, pkg, detector={"learned": "required"}))
    assert "detector.learned is 'required' but no detector in" in text


def test_shipped_normalisation_statistics_fit_their_robots() -> None:
    from vla_runtime.commands.check import normalization_problems
    from vla_runtime.core.model_spec import load_model_spec

    cfg = load_config(ROOT / "config" / "sim_panda_reach.yaml")
    assert normalization_problems(cfg, load_model_spec(ROOT / "models" / "reference_reach")) == []
    assert np.isfinite(cfg.robot.joints[0].velocity)


def test_a_graph_whose_real_output_differs_from_model_yaml_is_refused_by_the_dry_run(tmp_path, reach_copy) -> None:
    """The fast graph declares dynamic dims and produces [1, 16, 7] where model.yaml says [1, 16, 8]:
    the graph-vs-yaml comparison cannot see it (it used to pass `check` and HOLD forever at run
    time as "non-finite model output"); the dry run runs it and compares."""
    pkg, _ = reach_copy
    shutil.copy(ROOT / "test" / "fixtures" / "hostile" / "fast_7dims.onnx", pkg / "fast.onnx")
    text = _problems(_reach_config(tmp_path, pkg, nodes=["sim_robot", "slow_reasoner", "action_chunk_node",
                                                         "controller_bridge"]))
    assert "fast output 'actions': model.yaml says [1, 16, 8], the graph produced [1, 16, 7] on the dry run" in text


def test_a_chunk_that_leaves_the_limits_or_the_workspace_is_refused_by_the_dry_run(tmp_path, reach_copy) -> None:
    """Statistics that pass the plausibility rule (a mean within its joint's range plus slack) but
    move the first chunk out of the joint's range or the hand out of the workspace are caught by
    running the package once."""
    from vla_runtime.commands.check import normalization_problems
    from vla_runtime.core.model_spec import load_model_spec

    pkg, edit_yaml = reach_copy

    def shift(m):
        for section in ("proprio", "action"):
            norm = dict(m[section]["normalization"])
            mean = list(norm["mean"])
            mean[3] = -0.0698 + 0.2  # panda_joint4's upper limit is -0.0698: within the plausibility slack
            norm["mean"] = mean
            m[section]["normalization"] = norm

    edit_yaml(shift)
    cfg_path = _reach_config(tmp_path, pkg)
    assert normalization_problems(load_config(cfg_path), load_model_spec(pkg)) == []
    text = _problems(cfg_path)
    assert "dry run: the first chunk" in text
    assert "outside its limits [-3.0718, -0.0698]" in text or "outside the workspace [-0.2, -0.6, 0.0]" in text


def test_generated_bad_configs_and_packages_are_refused_or_harmless_never_a_crash() -> None:
    """Two cases of every mutation class of `bench fuzz` (the benchmark runs 120+): nothing
    escapes `check` as an exception, and every class has its refusals."""
    from vla_runtime.bench.fuzz import fuzz_configs

    r = fuzz_configs(cases=34, seed=7)
    assert r["crashes"] == [], r["crashes"][0]["traceback"] if r["crashes"] else ""
    assert all(c["tried"] == 2 for c in r["per_class"].values()), r["per_class"]
    refused = {name for name, c in r["per_class"].items() if c["refused"]}
    assert len(refused) >= len(r["per_class"]) - 2, r["per_class"]  # "missing field" may hit optional keys
