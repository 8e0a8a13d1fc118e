"""Config validation: every shipped profile loads; bad values are named with the rule they broke."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vla_runtime.core.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "config").glob("*.yaml"))


def _raw(name: str) -> dict:
    from vla_runtime.core.config import _read_yaml

    return _read_yaml(ROOT / "config" / name)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_validate(path):
    cfg = load_config(path)
    assert cfg.robot.joints and cfg.robot.groups
    for group in cfg.robot.groups.values():
        for j in group.joints:
            cfg.robot.joint(j)  # every group joint is a profile joint


def test_profiles_carry_manufacturer_limits():
    fr3 = load_config(ROOT / "config/franka_fr3.yaml").robot
    assert fr3.joint("fr3_joint4").position == (-3.0421, -0.1518)
    assert fr3.joint("fr3_joint5").velocity == pytest.approx(5.26)
    ur = load_config(ROOT / "config/ur5e.yaml").robot
    assert [j.effort for j in ur.joints] == [150.0, 150.0, 150.0, 28.0, 28.0, 28.0]
    gr1 = load_config(ROOT / "config/humanoid_gr1.yaml").robot
    assert {"arm_left", "arm_right", "torso", "head", "hand_left", "hand_right"} <= set(gr1.groups)


def test_include_overrides_keep_the_rest():
    orin = load_config(ROOT / "config/jetson_orin.yaml")
    fr3 = load_config(ROOT / "config/franka_fr3.yaml")
    assert orin.robot == fr3.robot
    assert orin.model.fast_engine.backend == "tensorrt" and orin.rates.fast_hz == 50.0
    assert orin.process.cpu_affinity["action_chunk_node"] == [4, 5]


def test_negative_velocity_and_misspelled_joint_are_both_named():
    data = _raw("sim_panda.yaml")
    data["robot"]["joints"][2]["velocity"] = -1.5
    data["robot"]["groups"]["arm"]["joints"][4] = "panda_jiont5"
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "bad.yaml")
    text = str(e.value)
    assert "robot.joints.2.velocity = -1.5" in text and "must be > 0" in text
    assert "'panda_jiont5'" in text and "did you mean 'panda_joint5'" in text


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"rates": {"fast_hz": 0}}, "rates: fast_hz must be > 0, got 0.0"),
        ({"rates": {"fast_hz": 30, "command_hz": 10}}, "command_hz (10.0) must be >= fast_hz (30.0)"),
        ({"scheduler": {"blend_s": -1}}, "scheduler.blend_s = -1"),
        ({"latent": {"transport": "carrier-pigeon"}}, "latent.transport = 'carrier-pigeon'"),
        ({"safety": {"velocity_scale": 1.5}}, "safety.velocity_scale = 1.5"),
        ({"rates": {"fast_hz": 30, "typo_hz": 3}}, "rates.typo_hz: unknown field"),
        ({"model": {"package": "x", "fast_engine": {"backend": "tensorrt", "provider": "cpu"}}}, "provider must be"),
        ({"latent": {"transport": "zmq"}}, "zmq transport needs CURVE keys"),
        ({"teleop": {"group": "legs"}}, "teleop.group 'legs' is not a robot group"),
        ({"process": {"rt_priority": {"controller_bridge": 99}}},
         "rt_priority.controller_bridge must be in 1..98 (99 is the kernel's), got 99"),
        ({"model": {"package": "x", "fast_engine": {"intra_op_threads": 0}}},
         "process.rt_priority.action_chunk_node needs model.fast_engine.intra_op_threads and inter_op_threads = 1 "
         "(got 0 and 1)"),
    ],
)
def test_bad_values_named(patch, expected):
    from vla_runtime.core.config import _merge

    data = _merge(_raw("sim_panda.yaml"), patch)
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "bad.yaml")
    assert expected in str(e.value)


def test_joint_limits_rules():
    data = _raw("sim_panda.yaml")
    data["robot"]["joints"][0]["position"] = [1.0, -1.0]
    data["robot"]["joints"][1]["home"] = 5.0
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert "lower < upper, got [1.0, -1.0]" in str(e.value)
    assert "home 5.0 lies outside" in str(e.value)


def test_joint_in_two_groups_and_shared_topic_refused():
    data = _raw("sim_panda.yaml")
    data["robot"]["groups"]["gripper"]["joints"] = ["panda_joint7"]
    data["robot"]["groups"]["gripper"]["controller_name"] = "arm_controller"
    data["robot"]["groups"]["gripper"]["controller"] = "joint_trajectory"
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert "'panda_joint7' is also in group 'arm'" in str(e.value)
    assert "one publisher per controller topic" in str(e.value)


def test_configs_are_frozen():
    cfg = load_config(ROOT / "config/sim_panda.yaml")
    with pytest.raises(ValidationError):
        cfg.rates.fast_hz = 1000.0


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
