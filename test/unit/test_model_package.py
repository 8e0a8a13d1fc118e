"""Model packages: the shipped timing_reference loads and runs; YAML/graph mismatches are refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_runtime.bench.engine_bench import bench_engine
from vla_runtime.engines import EngineConfig, EngineError
from vla_runtime.engines.model_package import ModelPackage, ModelPackageError, load_model_package, validate_package

PKG = Path(__file__).resolve().parents[2] / "models" / "timing_reference"
CPU1 = EngineConfig(intra_op_threads=1)


@pytest.fixture(scope="module")
def pkg() -> ModelPackage:
    return load_model_package(PKG, CPU1)


@pytest.fixture
def copy_pkg(tmp_path: Path) -> Callable[[Callable[[dict], None] | None], Path]:
    """Copy the package into tmp_path, applying an edit to its YAML."""

    def make(edit: Callable[[dict], None] | None = None) -> Path:
        dst = tmp_path / "pkg"
        shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns(".trt_cache"))
        if edit is not None:
            data = yaml.safe_load((dst / "model.yaml").read_text(encoding="utf-8"))
            edit(data)
            (dst / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return dst

    return make


def test_shipped_package_sizes() -> None:
    files = [f for f in PKG.rglob("*") if f.is_file() and ".trt_cache" not in f.parts]
    assert all(f.stat().st_size < 19e6 for f in files), [(f.name, f.stat().st_size) for f in files]
    assert sum(f.stat().st_size for f in files) < 25e6


def test_shipped_package_loads_and_runs_end_to_end(pkg: ModelPackage) -> None:
    spec = pkg.spec
    assert spec.trained is False
    assert pkg.slow_engine is not None and pkg.fast_engine is not None
    assert pkg.slow_engine.provider == "CPUExecutionProvider"
    tok = pkg.tokenizer.encode("Pick up the red block.")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, 3, 224, 224), dtype=np.uint8)
    latent = pkg.slow_engine.infer({"image": image, "instruction_ids": tok.ids, "instruction_mask": tok.mask})["latent"]
    assert latent.shape == (1, spec.latent.tokens, spec.latent.dim)
    proprio = pkg.proprio(np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04]))
    np.testing.assert_allclose(proprio, 0.0, atol=1e-6)  # the home pose is the mean
    feeds = {
        "latent": latent,
        "proprio": proprio,
        "prev_chunk": np.zeros((1, 16, 8), np.float32),
        "prefix_mask": np.zeros((1, 16), np.float32),
    }
    raw = pkg.fast_engine.infer(feeds)["actions"]
    assert raw.shape == (1, spec.chunk_horizon, spec.action_dim)
    chunk = pkg.action_space.decode(raw)
    assert chunk.shape == (16, 8) and np.isfinite(chunk).all()
    assert pkg.action_space.dim_names[-1] == "gripper/gripper"
    assert pkg.slow_engine.latency.count == 1 and pkg.fast_engine.latency.count == 1


def test_load_one_part_and_null_backend() -> None:
    with load_model_package(PKG, CPU1, parts=("fast",)) as p:
        assert p.slow_engine is None and p.fast_engine is not None
    with load_model_package(PKG, EngineConfig(backend="null")) as p:
        out = p.fast_engine.infer(p.fast_engine.dummy_feeds())
        assert out["actions"].shape == (1, 16, 8) and p.fast_engine.provider == "null"
    with pytest.raises(ModelPackageError, match="'middle'"):
        load_model_package(PKG, parts=("middle",))


def _set(part: str, kind: str, name: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for t in d[part][kind]:
            if t["name"] == name:
                t[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "tensor", "file", "what"),
    [
        (_set("slow", "inputs", "image", "shape", [1, 3, 256, 256]), "image", "slow.onnx", "dim 2: 256 vs 224"),
        (_set("slow", "inputs", "image", "dtype", "float32"), "image", "slow.onnx", "dtype float32, graph has uint8"),
        (_set("slow", "outputs", "latent", "name", "latents"), "latents", "slow.onnx", "no such output"),
        (_set("fast", "inputs", "prev_chunk", "name", "previous_chunk"), "previous_chunk", "fast.onnx",
         "no such input"),
        (_set("fast", "inputs", "prefix_mask", "shape", [1, 16, 1]), "prefix_mask", "fast.onnx", "rank"),
        (_set("fast", "inputs", "proprio", "shape", [None, 8]), "proprio", "fast.onnx", "dynamic"),
    ],
    ids=["wrong-shape", "wrong-dtype", "wrong-output-name", "wrong-input-name", "wrong-rank", "declared-dynamic"],
)
def test_yaml_graph_mismatch_is_refused(copy_pkg, edit, tensor: str, file: str, what: str) -> None:
    path = copy_pkg(edit)
    with pytest.raises(ModelPackageError) as err:
        load_model_package(path, CPU1)
    msg = str(err.value)
    assert f"'{tensor}'" in msg and str(path / file) in msg and what in msg
    with pytest.raises(ModelPackageError, match=f"'{tensor}'"):
        validate_package(path)  # same check without building engines


def test_undeclared_graph_input_is_refused(copy_pkg) -> None:
    def drop_mask(d: dict) -> None:
        d["fast"]["inputs"] = [t for t in d["fast"]["inputs"] if t["name"] != "prefix_mask"]

    path = copy_pkg(drop_mask)
    with pytest.raises(ModelPackageError, match="'prefix_mask'.*required by the graph but not declared"):
        load_model_package(path, CPU1)


def test_mismatch_refused_for_null_backend_too(copy_pkg) -> None:
    path = copy_pkg(_set("slow", "inputs", "image", "shape", [1, 3, 256, 256]))
    with pytest.raises(ModelPackageError, match="'image'"):
        load_model_package(path, EngineConfig(backend="null"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_broken_onnx_is_refused_with_its_path(copy_pkg, damage: str) -> None:
    path = copy_pkg()
    onnx = path / "fast.onnx"
    if damage == "truncate":
        data = onnx.read_bytes()
        onnx.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        onnx.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        onnx.unlink()
    with pytest.raises(ModelPackageError, match=str(onnx)):
        load_model_package(path, CPU1)


def test_invalid_yaml_is_a_package_error(copy_pkg) -> None:
    path = copy_pkg(_set("fast", "inputs", "proprio", "shape", [1, 9]))  # caught by the schema itself
    with pytest.raises(ModelPackageError, match=r"model.yaml: invalid model spec(.|\n)*'proprio' has 9 dims"):
        load_model_package(path)


def test_onnx_path_must_stay_in_package(copy_pkg) -> None:
    path = copy_pkg(lambda d: d["slow"].update(onnx="../../etc/slow.onnx"))
    with pytest.raises(ModelPackageError, match="leaves the package directory"):
        load_model_package(path)


def test_missing_package_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match=str(tmp_path / "nope")):
        load_model_package(tmp_path / "nope")


def test_gpu_provider_on_cpu_machine_is_an_engine_error() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineError, match="requested provider 'cuda'"):
        load_model_package(PKG, EngineConfig(provider="cuda"))


def test_bench_engine_reports_percentiles() -> None:
    res = bench_engine(PKG, n=5, engine=CPU1, warmup=1)
    for part in ("slow", "fast"):
        assert 0 < res[f"{part}_p50_ms"] <= res[f"{part}_p99_ms"]
        assert res[f"{part}_provider"] == "CPUExecutionProvider"


# ------------------------------------------------------------------ flow-matching reference package
FLOW_PKG = PKG.parent / "reference_reach_flow"


def _copy_flow(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    dst = tmp_path / "flow_pkg"
    shutil.copytree(FLOW_PKG, dst)
    data = yaml.safe_load((dst / "model.yaml").read_text(encoding="utf-8"))
    edit(data)
    (dst / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst


@pytest.mark.parametrize("flow_pkg, horizon", [(FLOW_PKG, 32), (PKG.parent / "reference_reach_flow48", 48)],
                         ids=["32 steps", "48 steps"])
def test_flow_package_loads_and_samples_chunks(flow_pkg: Path, horizon: int) -> None:
    from vla_runtime.core.flow import FlowHead, RtcGuidance

    files = [f for f in flow_pkg.iterdir() if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 6e6 and not list(flow_pkg.glob("*.onnx.data"))
    assert (flow_pkg / "slow.onnx").read_bytes() == (PKG.parent / "reference_reach" / "slow.onnx").read_bytes()
    spec = validate_package(flow_pkg)  # includes the VJP's finite-difference check
    assert spec.trained and spec.fast.is_flow and spec.chunk_horizon == horizon
    assert spec.name == flow_pkg.name and spec.chunk_horizon / spec.control_rate_hz >= 1.0
    assert spec.fast.flow.time_convention == "noise_at_1"
    with load_model_package(flow_pkg, CPU1) as pkg:
        tok = pkg.tokenizer.encode("touch the red cube")
        image = np.random.default_rng(0).integers(0, 256, size=(1, 3, 96, 96), dtype=np.uint8)
        latent = pkg.slow_engine.infer({"image": image, "instruction_ids": tok.ids, "instruction_mask": tok.mask})
        head = FlowHead(spec, pkg.fast_engine.infer)
        assert head.has_vjp
        head.set_latent(latent["latent"])
        home = {"panda_joint1": 0.0, "panda_joint2": -0.785, "panda_joint3": 0.0, "panda_joint4": -2.356,
                "panda_joint5": 0.0, "panda_joint6": 1.571, "panda_joint7": 0.785, "gripper/gripper": 0.04}
        head.set_proprio(pkg.proprio(home))
        raw = head.sample(np.random.default_rng(1))
        assert raw.shape == (horizon, 8) and head.calls == spec.fast.flow.steps
        np.testing.assert_array_equal(raw, head.sample(np.random.default_rng(1)))
        chunk = pkg.action_space.decode(raw)
        assert np.isfinite(chunk).all()
        assert np.abs(chunk[0, :7] - [home[f"panda_joint{i}"] for i in range(1, 8)]).max() < 0.2  # starts near
        x = np.random.default_rng(2).standard_normal((horizon, 8)).astype(np.float32)
        c = np.random.default_rng(3).standard_normal((horizon, 8)).astype(np.float32)
        v, vjp = head.velocity_and_vjp(x, 0.5, c)  # the velocity does not depend on the cotangent beside it
        np.testing.assert_array_equal(head.velocity(x, 0.5), v)
        assert np.abs(vjp).max() > 0 and not head.velocity_and_vjp(x, 0.5, 0 * c)[1].any()
        plan = raw + 0.5
        for use_vjp in (True, False):
            guided = head.sample(np.random.default_rng(1), RtcGuidance(plan, 6, 10, 5.0), use_vjp=use_vjp)
            assert head.calls == (20 if use_vjp else 10)
            assert np.abs(guided[:6] - plan[:6]).mean() < np.abs(raw[:6] - plan[:6]).mean()


def test_flow_package_mismatch_is_refused(tmp_path: Path) -> None:
    path = _copy_flow(tmp_path, _set("fast", "inputs", "flow_time", "shape", [1, 1]))
    with pytest.raises(ModelPackageError, match=r"'flow_time': model.yaml says shape \[1, 1\] \(rank 2\), graph has "
                                                r"\[1\]"):
        load_model_package(path, CPU1)


def test_a_wrong_guidance_vjp_is_caught(tmp_path: Path) -> None:
    """Swap the roles of the two outputs: every shape still matches, the numbers do not."""

    def swap(d: dict) -> None:
        for t in d["fast"]["outputs"]:
            t["role"] = {"velocity": "guidance_vjp", "guidance_vjp": "velocity"}[t["role"]]

    path = _copy_flow(tmp_path, swap)
    with pytest.raises(ModelPackageError, match="guidance_vjp disagrees with the velocity's finite difference"):
        validate_package(path)
    with load_model_package(FLOW_PKG, CPU1) as pkg:
        from vla_runtime.engines.model_package import check_flow_vjp

        assert check_flow_vjp(pkg.fast_engine, pkg.spec) < 1e-2
