"""model.yaml schema: validation, frozen models, errors that name the bad value."""

from __future__ import annotations

import copy
from pathlib import Path

import pydantic
import pytest
import yaml

from vla_runtime.core.model_spec import ActionGroup, ModelSpec, Normalization, TensorSpec, group_dim, load_model_spec

PKG = Path(__file__).resolve().parents[2] / "models" / "timing_reference"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((PKG / "model.yaml").read_text(encoding="utf-8"))


@pytest.fixture
def data(raw: dict) -> dict:
    return copy.deepcopy(raw)


def test_shipped_spec_is_valid_and_marked_untrained() -> None:
    spec = load_model_spec(PKG)
    assert spec.trained is False
    assert "timing" in spec.purpose and "untrained" in spec.purpose
    assert (spec.chunk_horizon, spec.action_dim) == (16, 8)
    assert (spec.latent.tokens, spec.latent.dim) == (8, 256)
    assert spec.slow.input_by_role("image").layout == "NCHW"
    assert spec.fast.output_by_role("actions").name == "actions"
    assert spec.control_period_s == pytest.approx(1 / 30)


def test_spec_is_frozen(data: dict) -> None:
    spec = ModelSpec.model_validate(data)
    with pytest.raises(pydantic.ValidationError):
        spec.chunk_horizon = 3  # type: ignore[misc]


def test_unknown_field_is_rejected_by_name(data: dict) -> None:
    data["chunk_horizont"] = 16
    with pytest.raises(pydantic.ValidationError, match="chunk_horizont"):
        ModelSpec.model_validate(data)


def test_action_dim_must_match_groups(data: dict) -> None:
    data["action_dim"] = 9
    with pytest.raises(pydantic.ValidationError, match="action_dim is 9 but action.groups define 8"):
        ModelSpec.model_validate(data)


def test_normalization_length_must_match(data: dict) -> None:
    data["action"]["normalization"]["std"] = data["action"]["normalization"]["std"][:-1]
    with pytest.raises(pydantic.ValidationError, match="mean has 8 entries but std has 7"):
        ModelSpec.model_validate(data)


def test_std_must_be_positive() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"\[0.0\]"):
        Normalization(kind="mean_std", mean=(0.0, 1.0), std=(1.0, 0.0))


def test_min_max_order() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"\(1.0, 1.0\)"):
        Normalization(kind="min_max", min=(0.0, 1.0), max=(1.0, 1.0))


def test_bad_dim_is_named() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"\[1, 0\]"):
        TensorSpec(name="x", shape=(1, 0), dtype="float32")


def test_dynamic_dims_are_null() -> None:
    t = TensorSpec(name="x", shape=(None, 8), dtype="float32")
    assert t.shape == (None, 8)


def test_latent_shape_cross_checked(data: dict) -> None:
    data["latent"]["dim"] = 128
    with pytest.raises(pydantic.ValidationError, match="latent tensor 'latent'"):
        ModelSpec.model_validate(data)


def test_instruction_length_matches_tokenizer(data: dict) -> None:
    data["tokenizer"]["max_len"] = 12
    with pytest.raises(pydantic.ValidationError, match="instruction_ids"):
        ModelSpec.model_validate(data)


def test_wrong_role_for_graph(data: dict) -> None:
    data["slow"]["inputs"][1]["role"] = "prev_chunk"
    with pytest.raises(pydantic.ValidationError, match="instruction_ids.*prev_chunk"):
        ModelSpec.model_validate(data)


def test_discrete_head_needs_bins_and_shape(data: dict) -> None:
    data["action"]["head"] = "discrete"
    with pytest.raises(pydantic.ValidationError, match="discrete"):
        ModelSpec.model_validate(data)
    data["action"]["discrete"] = {"bins": 256}
    data["action"]["normalization"] = {"kind": "none"}
    data["fast"]["outputs"][0]["shape"] = [1, 16, 8, 256]
    spec = ModelSpec.model_validate(data)
    assert spec.action.discrete.bins == 256
    data["fast"]["outputs"][0]["shape"] = [1, 16, 8, 255]
    with pytest.raises(pydantic.ValidationError, match="actions tensor 'actions'"):
        ModelSpec.model_validate(data)


def test_group_rules() -> None:
    with pytest.raises(pydantic.ValidationError, match="'arm'.*joints"):
        ActionGroup(name="arm", kind="joint_position")
    with pytest.raises(pydantic.ValidationError, match="rotation"):
        ActionGroup(name="ee", kind="cartesian_pose")
    with pytest.raises(pydantic.ValidationError, match="cumulative"):
        ActionGroup(name="arm", kind="joint_position", joints=("j1",), cumulative=True)
    assert group_dim(ActionGroup(name="ee", kind="cartesian_pose", rotation="quaternion", gripper=True)) == 8
    assert group_dim(ActionGroup(name="ee", kind="cartesian_delta", rotation="axis_angle")) == 6
    assert group_dim(ActionGroup(name="base", kind="base_velocity")) == 3


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model_spec(tmp_path)
    (tmp_path / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="model.yaml: YAML does not parse"):
        load_model_spec(tmp_path)
    (tmp_path / "model.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="model.yaml: invalid model spec"):
        load_model_spec(tmp_path / "model.yaml")
