"""Deployment helpers: TensorRT EP options, engine builds without TensorRT, CURVE key files."""

import importlib.util
import stat
from pathlib import Path

import pytest

from vla_runtime.commands.deploy import KeyExistsError, build_engines, trt_ep_options, write_keys
from vla_runtime.core.config import EngineConfig
from vla_runtime.engines.base import EngineError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "models" / "timing_reference"
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------ trt_ep_options
def test_trt_ep_options_fp16_with_engine_and_timing_cache(tmp_path):
    cfg = EngineConfig(backend="onnxruntime", provider="tensorrt", fp16=True, device_id=1,
                       trt_cache_dir=str(tmp_path / "trt"))
    opts = trt_ep_options(cfg)
    assert opts == {
        "device_id": 1,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "trt"),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path / "trt"),
    }


def test_trt_ep_options_fp32_defaults_cache_beside_the_graph(tmp_path):
    onnx = tmp_path / "pkg" / "fast.onnx"
    opts = trt_ep_options({"provider": "tensorrt"}, onnx_path=onnx)
    assert opts["trt_fp16_enable"] is False
    assert opts["trt_engine_cache_path"] == str(tmp_path / "pkg" / ".trt_cache")
    assert "trt_int8_enable" not in opts


def test_trt_ep_options_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    opts = trt_ep_options({"provider": "tensorrt", "trt_cache_dir": "~/.cache/vla_runtime/trt"})
    assert opts["trt_engine_cache_path"] == str(tmp_path / ".cache/vla_runtime/trt")


def test_trt_ep_options_int8_uses_the_native_calibration_table(tmp_path):
    cfg = EngineConfig(provider="tensorrt", int8=True, calibration_dir=str(tmp_path / "calib"),
                       trt_cache_dir=str(tmp_path / "trt"))
    opts = trt_ep_options(cfg, onnx_path=tmp_path / "slow.onnx")
    assert opts["trt_int8_enable"] is True
    assert opts["trt_int8_calibration_table_name"] == "slow.calib"
    assert opts["trt_int8_use_native_calibration_table"] is True


def test_trt_ep_options_needs_a_cache_location():
    with pytest.raises(EngineError, match="trt_cache_dir or onnx_path"):
        trt_ep_options(EngineConfig(provider="tensorrt"))


def test_trt_ep_options_rejects_unknown_fields():
    with pytest.raises(EngineError, match="unknown engine config field"):
        trt_ep_options({"provider": "tensorrt", "fp61": True, "trt_cache_dir": "/tmp/x"})


# ------------------------------------------------------------------- build_engines
@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here; this checks the message without it")
def test_build_engines_without_tensorrt_is_a_clear_error(tmp_path):
    lines: list[str] = []
    with pytest.raises(EngineError) as exc:
        build_engines(PACKAGE, fp16=True, int8=False, calib=None, cache_dir=tmp_path, progress=lines.append)
    msg = str(exc.value)
    assert "slow" in msg and "slow.onnx" in msg
    assert "cannot import tensorrt" in msg
    assert "pip install tensorrt-cu12" in msg  # says what to install
    assert not list(tmp_path.glob("*.engine"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"int8": True, "calib": None}, "--int8 needs --calib"),
        ({"parts": ("slow", "medium")}, "parts must be"),
        ({"parts": ()}, "parts must be"),
        ({"calib": "/nonexistent/calib"}, "calibration directory not found"),
    ],
)
def test_build_engines_rejects_bad_arguments_before_touching_tensorrt(kwargs, match):
    args = {"fp16": True, "int8": False, "calib": None, "cache_dir": None, **kwargs}
    with pytest.raises(EngineError, match=match):
        build_engines(PACKAGE, **args)


def test_build_engines_int8_needs_npz_files(tmp_path):
    (tmp_path / "calib").mkdir()
    with pytest.raises(EngineError, match="no .npz"):
        build_engines(PACKAGE, fp16=False, int8=True, calib=tmp_path / "calib", cache_dir=None)


def test_build_engines_names_a_missing_package(tmp_path):
    with pytest.raises(EngineError, match="model package directory not found"):
        build_engines(tmp_path / "nope", fp16=True, int8=False, calib=None, cache_dir=None)


# ---------------------------------------------------------------------- write_keys
def test_write_keys_private_dir_and_secret_files(tmp_path):
    d = tmp_path / "keys"
    paths = write_keys(d, ["slow_path", "fast_path"])
    assert [p.name for p in paths] == ["slow_path.key", "slow_path.key_secret", "fast_path.key", "fast_path.key_secret"]
    assert _mode(d) == 0o700
    for p in paths:
        assert p.parent == d and _mode(p) == 0o600
    # Usable by the latent buffer's loaders: the secret file holds both halves.
    from vla_runtime.core.latent_buffer import load_curve_keypair, load_curve_public_key

    pub, sec = load_curve_keypair(d / "slow_path.key_secret")
    assert pub == load_curve_public_key(d / "slow_path.key") and len(sec) == 40
    assert b"secret-key" not in (d / "slow_path.key").read_bytes()


def test_write_keys_refuses_to_overwrite_unless_forced(tmp_path):
    d = tmp_path / "keys"
    write_keys(d, ["slow_path"])
    before = (d / "slow_path.key_secret").read_bytes()
    with pytest.raises(KeyExistsError, match="slow_path.key"):
        write_keys(d, ["fast_path", "slow_path"])
    assert not (d / "fast_path.key").exists(), "nothing may be written when one name is taken"
    assert (d / "slow_path.key_secret").read_bytes() == before
    write_keys(d, ["slow_path"], force=True)
    assert (d / "slow_path.key_secret").read_bytes() != before
    assert _mode(d / "slow_path.key_secret") == 0o600


def test_write_keys_leaves_an_existing_dir_mode_alone(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    write_keys(d, ["a"])
    assert _mode(d) == 0o755
    assert _mode(d / "a.key_secret") == 0o600


@pytest.mark.parametrize("names", [[], ["ok", "ok"], ["../escape"], ["a b"], [".."]])
def test_write_keys_rejects_bad_names(tmp_path, names):
    with pytest.raises(ValueError):
        write_keys(tmp_path / "keys", names)
    assert not (tmp_path / "keys").exists()
