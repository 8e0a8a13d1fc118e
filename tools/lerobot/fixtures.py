"""The committed CI fixtures: tiny exported packages + LeRobot's reference outputs.

``make_fixtures`` (LeRobot environment) builds each tiny checkpoint, exports it to
``<dest>/<type>/`` and writes ``reference.npz`` there (see :mod:`tools.lerobot.verify` for its keys).
``check_fixtures`` needs only numpy, pyyaml, onnxruntime and tokenizers (no torch, no lerobot): it
re-runs every fixture package with :class:`tools.lerobot.runner.PackageRunner` from the inputs stored
in ``reference.npz`` and compares with LeRobot's stored outputs, the same check the runtime's parity
tests make with the runtime's own implementation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

TYPES = ("act", "diffusion", "diffusion_ddim", "smolvla", "pi0", "pi05")


def make_fixtures(work: Path, dest: Path, types: list[str] | tuple[str, ...] = TYPES) -> list[dict[str, Any]]:
    """Build, export and verify each tiny policy into ``dest/<type>``; returns a timing/size record per type."""
    from tools.lerobot import build_tiny
    from tools.lerobot.export import export_package
    from tools.lerobot.verify import verify_package

    records = []
    for t in types:
        t0 = time.monotonic()
        ckpt = build_tiny.build_one(t, Path(work) / "checkpoints")
        t_build = time.monotonic() - t0
        tok = ckpt / "paligemma_tokenizer"
        tok_arg = tok if tok.is_dir() else None
        pkg = Path(dest) / t
        spec = export_package(ckpt, pkg, tokenizer=tok_arg, name=f"tiny_{t}")
        t1 = time.monotonic()
        rep = verify_package(ckpt, pkg, tokenizer=tok_arg, reference_out=pkg / "reference.npz")
        t_verify = time.monotonic() - t1
        for line in rep.lines:
            print(line)
        if not rep.ok:
            raise RuntimeError(f"{t}: the exported package does not match LeRobot (max diff {rep.max_diff:.3g})")
        sizes = {f.name: f.stat().st_size for f in sorted(pkg.iterdir())}
        rec = {"type": t, "build_s": round(t_build, 1), "export": spec["_timings"], "verify_s": round(t_verify, 1),
               "max_diff": rep.max_diff, "sizes": sizes, "total_bytes": sum(sizes.values())}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def inputs_from_reference(ref: Any, k: int, cameras: list[str]) -> dict[str, Any]:
    """Input set ``k`` as stored in a ``reference.npz``."""
    return {"frames": {c: ref[f"in{k}_image_{c}"] for c in cameras}, "prompt": str(ref[f"in{k}_prompt"]),
            "state": ref[f"in{k}_state"], "noise": ref[f"in{k}_noise"] if f"in{k}_noise" in ref else None,
            "step_noise": ref[f"in{k}_step_noise"] if f"in{k}_step_noise" in ref else None}


def check_fixtures(root: Path, tol: float = 1e-4) -> bool:
    """Re-run each fixture package from its stored inputs and compare with LeRobot's stored outputs."""
    from tools.lerobot.runner import PackageRunner

    ok = True
    dirs = sorted(p for p in Path(root).iterdir() if (p / "model.yaml").is_file())
    if not dirs:
        raise FileNotFoundError(f"no fixture packages under {root}")
    for d in dirs:
        runner = PackageRunner(d)
        ref = np.load(d / "reference.npz")
        cams = [c["name"] for c in runner.spec["cameras"]]
        worst = 0.0
        for k in range(2):
            inp = inputs_from_reference(ref, k, cams)
            got = runner.predict_chunk(inp["frames"], inp["prompt"], inp["state"], inp["noise"], inp["step_noise"])
            pairs = [(ref[f"out{k}_actions"], got["actions"]), (ref[f"out{k}_first_action"], got["actions"][0]),
                     (ref[f"mid{k}_actions_norm"], got["actions_norm"])]
            for name in ("v_t0", "model_output0", "global_cond"):
                if f"mid{k}_{name}" in ref:
                    pairs.append((ref[f"mid{k}_{name}"], got[name]))
            for a, b in pairs:
                worst = max(worst, float(np.max(np.abs(a - b))))
            if f"mid{k}_lang_tokens" in ref:
                n = ref[f"mid{k}_lang_tokens"].shape[1]
                if not np.array_equal(ref[f"mid{k}_lang_tokens"], got["lang_tokens"][:, :n]):
                    print(f"{d.name}: input {k}: token ids differ from LeRobot's")
                    ok = False
        good = worst <= tol
        ok &= good
        print(f"{d.name}: max |diff| vs LeRobot {worst:.3g} ({'ok' if good else 'FAIL'}, tol {tol:g})")
    return ok
