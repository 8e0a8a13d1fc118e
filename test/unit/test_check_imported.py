"""``vla-runtime check`` on imported (schema 2) packages: cameras, statistics, the dry run."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from vla_runtime.commands.check import check_config

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "test" / "fixtures" / "lerobot"
HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785, 0.02]


def _config(tmp_path: Path, package: Path, cameras: list[str], name: str = "c.yaml") -> Path:
    data = {"include": str(ROOT / "config" / "sim_panda.yaml"), "model": {"package": str(package)},
            "cameras": [{"name": c, "topic": f"/camera/{c}/image_raw", "width": 96, "height": 96} for c in cameras],
            "instruction": "pick up the red cube"}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _fitted(tmp_path: Path, kind: str) -> Path:
    """The fixture with statistics of the simulated Panda (its graphs unchanged)."""
    dst = tmp_path / kind
    shutil.copytree(FIX / kind, dst)
    d = yaml.safe_load((dst / "model.yaml").read_text())
    for block in (d["proprio"], d["action"]):
        block["normalization"] = {"kind": "mean_std", "mean": HOME, "std": [0.05] * 7 + [0.005], "eps": 1e-8}
    (dst / "model.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    return dst


def test_statistics_of_another_robot_are_refused_by_kind(tmp_path: Path) -> None:
    rep = check_config(str(_config(tmp_path, FIX / "pi05", ["scene"])))
    assert not rep.ok
    assert any("quantiles[7] (gripper/gripper)" in p and "exceeds its range [0.0, 0.04]" in p for p in rep.problems)


def test_an_imported_package_passes_with_its_dry_run_and_fitted_cameras_named(tmp_path: Path) -> None:
    for kind, cams in (("pi0", ["scene", "wrist"]), ("act", ["scene"]), ("diffusion_ddim", ["scene"])):
        rep = check_config(str(_config(tmp_path, _fitted(tmp_path, kind), cams, f"{kind}.yaml")))
        assert rep.ok, (kind, rep.problems)
        dry = next(v for v in rep.verified if v.startswith("dry run"))
        assert "camera 'scene' is fitted to the package's 48x64" in dry, dry
        assert "hand inside the workspace" in dry
    assert "(flow_matching, 4 fast call(s)" in check_config(str(tmp_path / "pi0.yaml")).verified[-1]


def test_a_camera_the_package_takes_must_be_configured(tmp_path: Path) -> None:
    rep = check_config(str(_config(tmp_path, _fitted(tmp_path, "pi0"), ["scene"])))
    assert rep.problems == ["cameras: the model package takes cameras ['scene', 'wrist']; ['wrist'] is not configured "
                            "(cameras[].name)"]
