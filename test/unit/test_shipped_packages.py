"""Every shipped robot config passes ``vla-runtime check``, and its model package fits the robot.

The per-robot timing_reference packages are untrained (random weights, timing only), but their
action layout must land on the robot profile exactly as a trained model's would: this runs each
package's slow and fast graphs once, through the same feed builders and fast step the nodes use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vla_runtime.commands.check import check_config, model_robot_problems
from vla_runtime.core.config import RuntimeConfig, load_config
from vla_runtime.core.policy import fast_step_for
from vla_runtime.core.policy_io import SlowFeeds
from vla_runtime.engines.model_package import load_model_package

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _uses_native_tensorrt(cfg: RuntimeConfig) -> bool:
    return "tensorrt" in (cfg.model.slow_engine.backend, cfg.model.fast_engine.backend)


def _packages() -> dict[Path, Path]:
    """Each distinct model package named by a shipped config → the first config naming it."""
    out: dict[Path, Path] = {}
    for path in CONFIGS:
        out.setdefault(load_config(path).model_package_path.resolve(), path)
    return out


PACKAGES = _packages()


def test_configs_are_shipped() -> None:
    assert len(CONFIGS) >= 6, CONFIGS
    assert len(PACKAGES) >= 4, PACKAGES


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_checks(path: Path) -> None:
    cfg = load_config(path)
    if _uses_native_tensorrt(cfg) and not HAVE_TENSORRT:
        report = check_config(str(path))
        assert not report.ok
        assert any("TensorRT" in p for p in report.problems), report.problems
        assert check_config(str(path), load_models=False).ok
        return
    report = check_config(str(path))
    assert report.ok, report.problems


@pytest.mark.parametrize("pkg_dir", list(PACKAGES), ids=[p.name for p in PACKAGES])
def test_shipped_package_runs_and_fits_its_robot(pkg_dir: Path) -> None:
    cfg = load_config(PACKAGES[pkg_dir])
    files = [f for f in pkg_dir.iterdir() if f.is_file()]
    assert all(f.stat().st_size < 19e6 for f in files), [(f.name, f.stat().st_size) for f in files]
    assert not list(pkg_dir.glob("*.onnx.data")), "weights must be inlined in the graphs"
    cpu1 = {"backend": "onnxruntime", "provider": "cpu", "intra_op_threads": 1}
    with load_model_package(pkg_dir, cpu1) as pkg:
        spec = pkg.spec
        if pkg_dir.name.startswith("timing_reference"):  # labelled for what they are: untrained
            assert spec.trained is False and "timing" in spec.purpose
        else:
            assert spec.trained is True
        assert spec.robot == cfg.robot.name
        assert pkg.slow_engine is not None and pkg.fast_engine is not None

        slow = SlowFeeds(spec.slow, [c.name for c in cfg.cameras])
        rng = np.random.default_rng(0)
        images = {cam: rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8) for cam in slow.cameras}
        tok = pkg.tokenizer.encode("pick up the red block")
        latent = pkg.slow_engine.infer(slow.build(images, tok.ids, tok.mask))[spec.slow.output_by_role("latent").name]
        assert latent.shape == (1, spec.latent.tokens, spec.latent.dim)

        # The fast node's own step (one-shot, or a flow head the runtime samples) on the home-ish state.
        fast = fast_step_for(pkg)
        result = fast.run(np.zeros(fast.state_size), None, latent)
        dims = list(pkg.action_space.dim_names)
        assert result.chunk.shape == (spec.chunk_horizon, len(dims)) == (spec.chunk_horizon, spec.action_dim)
        assert np.isfinite(result.chunk).all() and np.isfinite(result.raw).all()
        assert model_robot_problems(cfg, dims) == []


def test_reference_policy_ships_a_calibrated_learned_detector_for_its_own_features() -> None:
    """The failure_detector loads it for the reference policy (and only for that feature layout)."""
    from vla_runtime.core.contract import FeatureLayout
    from vla_runtime.core.failure_detection import LearnedDetector

    pkg = load_model_package(ROOT / "models" / "reference_reach", parts=())
    det = LearnedDetector.load(ROOT / "models" / "reference_reach" / "detector")
    assert det.threshold is not None and det.threshold.alpha == 0.1
    assert np.all(np.isfinite(det.threshold.thresholds))
    spec = pkg.spec
    want = FeatureLayout.parse(det.layout.label)
    assert (want.latent_dim, want.horizon, want.action_dim) == (
        spec.latent.dim, spec.chunk_horizon, len(pkg.action_space.dim_names))
    ev = det.info["evaluation"]
    assert ev["roc_auc"] >= 0.9 and not ev["synthetic"] and ev["labels"] == "from the fault", ev
    # The conformal bound is on the false-alarm RATE; one held-out split of n successes measures it
    # with a binomial spread: it must be consistent with alpha (within two standard deviations).
    n, a = ev["heldout_successes"], ev["alpha"]
    assert n >= 40 and ev["false_alarm_rate"] <= a + 2 * (a * (1 - a) / n) ** 0.5, ev
