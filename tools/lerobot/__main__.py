"""``python -m tools.lerobot`` — the LeRobot importer's command line (LeRobot environment only).

Commands:
  import <pretrained_dir> --out <pkg_dir> [--tokenizer DIR] [--verify]
      Export a LeRobot checkpoint folder to a model package (docs/lerobot-export.md).
  build-tiny --out <dir> [--only TYPE ...]
      Build the tiny random-weight checkpoints used for the test fixtures.
  verify <pretrained_dir> <pkg_dir> [--tokenizer DIR] [--reference OUT.npz]
      Run the package with onnxruntime and the numpy loop and compare with LeRobot.
  fixtures --work DIR --dest test/fixtures/lerobot [--only TYPE ...]
      Build, export and verify the tiny policies into the committed CI fixtures (with reference.npz).
  check-fixtures [DIR]
      Re-run the fixture packages from reference.npz and compare (numpy + onnxruntime + tokenizers;
      needs neither torch nor lerobot).
  bench <pretrained_dir> <pkg_dir> --inputs-out IN.npz [--n N] [--threads T] [--tokenizer DIR]
      Per-step latency of LeRobot's own inference in torch, as JSON; writes the inputs and LeRobot's actions
      (the torch side of `vla-runtime bench import`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # per-pass INFO lines of the ONNX exporter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m tools.lerobot", description="LeRobot -> ONNX model package importer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="export a LeRobot checkpoint folder to a model package")
    imp.add_argument("pretrained_dir", type=Path)
    imp.add_argument("--out", type=Path, required=True, help="package folder to (re)create, e.g. models/<name>")
    imp.add_argument("--tokenizer", type=Path, help="folder with the prompt tokenizer's tokenizer.json (when the "
                     "preprocessor names a Hub tokenizer that is not in the local HF cache)")
    imp.add_argument("--name", help="package name (default: the --out folder name)")
    imp.add_argument("--control-rate-hz", type=float, default=30.0, help="rate the chunk steps are executed at")
    imp.add_argument("--verify", action="store_true", help="after exporting, check the package against LeRobot")
    imp.add_argument("--robot", default="panda", help="robot the action layout is for (model.yaml 'robot')")
    imp.add_argument("--state-names", help="comma-separated names of the state dims (robot joints, '<group>/gripper'); "
                     "default: the Panda's 7 joints + gripper/gripper for an 8-D state")
    imp.add_argument("--action-names", help="comma-separated names of the action dims (same default)")
    bt = sub.add_parser("build-tiny", help="build tiny random-weight checkpoints (test fixtures)")
    bt.add_argument("--out", type=Path, required=True)
    bt.add_argument("--only", nargs="*")
    ver = sub.add_parser("verify", help="compare a package (onnxruntime + numpy loop) with LeRobot")
    ver.add_argument("pretrained_dir", type=Path)
    ver.add_argument("package", type=Path)
    ver.add_argument("--tokenizer", type=Path)
    ver.add_argument("--reference", type=Path, help="also write LeRobot's outputs to this .npz (fixture)")
    ver.add_argument("--tol", type=float, default=1e-4)
    fx = sub.add_parser("fixtures", help="build + export + verify the tiny policies into the CI fixtures")
    fx.add_argument("--work", type=Path, required=True, help="scratch folder for the tiny checkpoints")
    fx.add_argument("--dest", type=Path, required=True, help="fixture root, e.g. test/fixtures/lerobot")
    fx.add_argument("--only", nargs="*")
    cf = sub.add_parser("check-fixtures", help="re-run the fixture packages against reference.npz (no torch)")
    cf.add_argument("root", type=Path, nargs="?", default=Path("test/fixtures/lerobot"))
    cf.add_argument("--tol", type=float, default=1e-4)
    bn = sub.add_parser("bench", help="per-step latency of LeRobot's inference in torch (JSON)")
    bn.add_argument("pretrained_dir", type=Path)
    bn.add_argument("package", type=Path)
    bn.add_argument("--inputs-out", type=Path, required=True)
    bn.add_argument("--n", type=int, default=20)
    bn.add_argument("--threads", type=int, default=1)
    bn.add_argument("--tokenizer", type=Path)
    args = ap.parse_args(argv)

    if args.cmd == "bench":
        import json

        from tools.lerobot.bench import bench_torch

        print(json.dumps(bench_torch(args.pretrained_dir, args.package, args.n, args.threads, args.inputs_out,
                                     args.tokenizer)))
        return 0

    if args.cmd == "check-fixtures":
        from tools.lerobot.fixtures import check_fixtures

        return 0 if check_fixtures(args.root, args.tol) else 1
    if args.cmd == "fixtures":
        from tools.lerobot.fixtures import TYPES, make_fixtures

        make_fixtures(args.work, args.dest, args.only or TYPES)
        return 0

    if args.cmd == "build-tiny":
        from tools.lerobot import build_tiny

        return build_tiny.main(["--out", str(args.out)] + (["--only", *args.only] if args.only else []))
    if args.cmd == "import":
        from tools.lerobot.export import export_package

        names = {k: getattr(args, k).split(",") if getattr(args, k) else None for k in ("state_names", "action_names")}
        spec = export_package(args.pretrained_dir, args.out, tokenizer=args.tokenizer, name=args.name,
                              control_rate_hz=args.control_rate_hz, robot=args.robot, **names)
        sizes = {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}
        print(f"exported {spec['source']['policy_type']} -> {args.out}: timings {spec['_timings']}, "
              f"sizes {sizes} (total {sum(sizes.values()) / 1e6:.2f} MB)")
        if not args.verify:
            return 0
        return _verify(args.pretrained_dir, args.out, args.tokenizer, None, 1e-4)
    return _verify(args.pretrained_dir, args.package, args.tokenizer, args.reference, args.tol)


def _verify(ckpt: Path, pkg: Path, tokenizer: Path | None, reference: Path | None, tol: float) -> int:
    from tools.lerobot.verify import verify_package

    report = verify_package(ckpt, pkg, tokenizer=tokenizer, reference_out=reference, tol=tol)
    for line in report.lines:
        print(line)
    print(f"verify {pkg}: {'PASS' if report.ok else 'FAIL'} (max |diff| {report.max_diff:.3g}, tol {tol:g})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
