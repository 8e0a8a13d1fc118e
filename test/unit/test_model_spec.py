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


# ------------------------------------------------------------------------------ flow matching
def flow_spec_data(base: dict, *, vjp: bool = True, steps: int = 10, time_convention: str = "noise_at_1") -> dict:
    """``base`` (a one-shot model.yaml mapping) with its fast part turned into a flow-matching velocity step."""
    data = copy.deepcopy(base)
    h, a = data["chunk_horizon"], data["action_dim"]
    lat = next(t for t in data["fast"]["inputs"] if t["role"] == "latent")
    pro = next(t for t in data["fast"]["inputs"] if t["role"] == "proprio")
    inputs = [{"name": "x_t", "shape": [1, h, a], "dtype": "float32", "role": "noisy_actions"},
              {"name": "t", "shape": [1], "dtype": "float32", "role": "flow_time"}, lat, pro]
    outputs = [{"name": "v", "shape": [1, h, a], "dtype": "float32", "role": "velocity"}]
    if vjp:
        inputs.append({"name": "cot", "shape": [1, h, a], "dtype": "float32", "role": "guidance_cotangent"})
        outputs.append({"name": "vjp", "shape": [1, h, a], "dtype": "float32", "role": "guidance_vjp"})
    data["fast"] = {"onnx": "fast.onnx", "kind": "flow_matching",
                    "flow": {"steps": steps, "time_convention": time_convention}, "inputs": inputs, "outputs": outputs}
    return data


def _tensor(data: dict, name: str) -> dict:
    return next(t for t in data["fast"]["inputs"] + data["fast"]["outputs"] if t["name"] == name)


def test_old_packages_are_one_shot(data: dict) -> None:
    spec = ModelSpec.model_validate(data)
    assert spec.fast.kind == "one_shot" and spec.fast.flow is None and not spec.fast.is_flow
    assert spec.schema_version == 1


def test_flow_matching_fast_part_is_valid(data: dict) -> None:
    spec = ModelSpec.model_validate(flow_spec_data(data))
    assert spec.fast.is_flow and spec.schema_version == 1
    assert spec.fast.flow.steps == 10 and spec.fast.flow.time_convention == "noise_at_1"
    assert spec.fast.flow.schedule == "uniform_euler"
    assert spec.fast.input_by_role("noisy_actions").name == "x_t"
    assert spec.fast.output_by_role("guidance_vjp").name == "vjp"
    no_vjp = ModelSpec.model_validate(flow_spec_data(data, vjp=False, time_convention="noise_at_0"))
    assert no_vjp.fast.input_by_role("guidance_cotangent") is None
    for shape in ([], [1, 1], [None]):
        d = flow_spec_data(data)
        _tensor(d, "t")["shape"] = shape
        assert ModelSpec.model_validate(d).fast.input_by_role("flow_time").shape == tuple(shape)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d["fast"]["flow"].update(steps=0), r"steps\n.*greater than or equal to 1.*input_value=0"),
    (lambda d: d["fast"]["flow"].update(time_convention="noise_at_half"),
     r"time_convention\n.*'noise_at_1' or 'noise_at_0'.*input_value='noise_at_half'"),
    (lambda d: d["fast"]["flow"].update(schedule="heun"), r"schedule\n.*input_value='heun'"),
    (lambda d: d["fast"].update(kind="consistency"), r"kind\n.*input_value='consistency'"),
    (lambda d: d["fast"].update(kind="diffusion"), "'flow' block given but fast kind is 'diffusion'"),
    (lambda d: d["fast"].pop("flow"), "fast kind 'flow_matching' needs a 'flow:"),
    (lambda d: d["fast"].update(kind="one_shot"), "'flow' block given but fast kind is 'one_shot'"),
    (lambda d: d["fast"]["outputs"].append({"name": "actions", "shape": [1, 16, 8], "dtype": "float32",
                                            "role": "actions"}), "'actions': role 'actions' does not apply"),
    (lambda d: d["fast"]["inputs"].append({"name": "prev", "shape": [1, 16, 8], "dtype": "float32",
                                           "role": "prev_chunk"}), "'prev': role 'prev_chunk' does not apply"),
    (lambda d: d["fast"]["outputs"].pop(0), "needs an output with role 'velocity'"),
    (lambda d: d["fast"]["inputs"].pop(0), "needs an input with role 'noisy_actions'"),
    (lambda d: d["fast"]["inputs"].pop(1), "needs an input with role 'flow_time'"),
    (lambda d: _tensor(d, "x_t").update(shape=[1, 32, 8]), r"noisy_actions tensor 'x_t' has shape \[1, 32, 8\]"),
    (lambda d: _tensor(d, "v").update(dtype="int64"), "velocity tensor 'v' has shape .* dtype int64"),
    (lambda d: _tensor(d, "vjp").update(shape=[1, 16, 7]), r"guidance_vjp tensor 'vjp' has shape \[1, 16, 7\]"),
    (lambda d: _tensor(d, "t").update(shape=[1, 2]), r"flow_time tensor 't' has shape \[1, 2\]"),
    (lambda d: _tensor(d, "t").update(dtype="int64"), "flow_time tensor 't' .* dtype int64"),
    (lambda d: d["fast"]["outputs"].pop(1), "'cot' \\(role 'guidance_cotangent'\\) needs its pair"),
    (lambda d: d["fast"]["inputs"].pop(4), "'vjp' \\(role 'guidance_vjp'\\) needs its pair"),
    (lambda d: d["fast"]["inputs"].append(dict(_tensor(d, "t"), name="t2")), r"2 inputs with role 'flow_time'"),
])
def test_flow_matching_errors_name_the_value(data: dict, edit, match: str) -> None:
    d = flow_spec_data(data)
    edit(d)
    with pytest.raises(pydantic.ValidationError, match=match):
        ModelSpec.model_validate(d)


def test_flow_roles_need_a_flow_matching_part(data: dict) -> None:
    data["fast"]["inputs"].append({"name": "t", "shape": [1], "dtype": "float32", "role": "flow_time"})
    with pytest.raises(pydantic.ValidationError, match="'t' has role 'flow_time', which only a 'kind: flow_matching'"):
        ModelSpec.model_validate(data)


def test_flow_matching_needs_a_continuous_head(data: dict) -> None:
    d = flow_spec_data(data)
    d["action"]["head"] = "discrete"
    d["action"]["discrete"] = {"bins": 256}
    d["action"]["normalization"] = {"kind": "none"}
    with pytest.raises(pydantic.ValidationError, match="needs action head 'continuous', got 'discrete'"):
        ModelSpec.model_validate(d)


def test_slow_part_has_no_kind(data: dict) -> None:
    data["slow"]["kind"] = "flow_matching"
    with pytest.raises(pydantic.ValidationError, match=r"slow\.kind\n.*Extra inputs are not permitted"):
        ModelSpec.model_validate(data)
