#!/usr/bin/env python3
"""Export ``models/timing_reference*/``: random-weight fast-slow VLAs of realistic shape.

A package exists to measure the runtime (deadlines, latency, overhead) with
graphs whose sizes and shapes look like a real deployment. The weights are
random (fixed seed): its actions mean nothing. ``model.yaml`` says so
(``trained: false``).

One package per robot (``--robot``), the action layout fitted to that robot's
profile in ``config/`` (joint names, homes and ranges are read from the YAML):

* ``panda`` → ``models/timing_reference``: ``arm`` joint_position (7) + ``gripper`` (1), A=8.
* ``fr3`` → ``models/timing_reference_fr3``: ``arm`` cartesian_pose, quaternion (7) +
  ``gripper`` (1), A=8; proprio = the 7 arm joints + ``gripper/gripper``.
* ``ur5e`` → ``models/timing_reference_ur5e``: ``arm`` joint_position (6), A=6.
* ``gr1`` → ``models/timing_reference_gr1``: one joint_position group per profile group
  (arms, torso, head, hands), A=32.

Normalisation: a joint's mean is its ``home`` (kept one std inside its limits), its std a quarter of
its range; pose dims use the profile workspace (centre, quarter of the extent) and a gripper-down orientation.

``--size full`` (panda's default) is the shape described below; ``--size small`` (the default
for the other robots) keeps every tensor interface the same (latent 8×256) but narrows both
graphs (d=128: ~0.5M-parameter slow encoder, ~1M-parameter fast transformer) so the
package stays a few MB in git.

* slow.onnx: image ``(1, 3, 224, 224)`` uint8 → 3-stage conv patchifier (14×14
  tokens, d=256) + instruction ids/mask ``(1, 16)`` int64 → one transformer
  block → 8 learned queries cross-attend → latent ``(1, 8, 256)`` float32.
* fast.onnx: latent ``(1, 8, 256)`` + proprio ``(1, 8)`` + RTC prefix
  (previous chunk ``(1, 16, 8)`` and prefix mask ``(1, 16)``) → 5-block
  transformer (~4.4M parameters) → chunk ``(1, 16, 8)``, with the masked prefix
  copied through from the previous chunk. (Shapes for panda; P and A follow the robot.)

Needs torch (==2.13.0), onnx and onnxscript; the runtime itself never imports torch.

Usage::

    python tools/export_timing_reference.py [--robot panda|fr3|ur5e|gr1] [--size full|small]
        [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261123
H = 16  # chunk horizon
K, D = 8, 256  # latent tokens × width (the slow→fast interface, the same for every package)
L = 16  # instruction length
IMG = 224

VOCAB = ["<pad>", "<unk>"] + sorted(
    set(
        """a an the to of in on into onto from with and then it its this that
        pick up put place move push pull open close grasp grab lift drop release stack unstack insert
        turn rotate slide press wipe pour fold hang hand give take reach go stop hold
        left right top bottom front back middle center side near far above below under over next
        red green blue yellow orange purple black white gray pink brown
        block cube ball cup mug bowl plate bottle can box drawer door lid handle button towel sponge
        spoon fork knife marker pen toy shelf table basket bin tray cabinet microwave oven sink
        small big large tall short first second other all""".split()
    )
)

# Panda layout: the original timing_reference package (hand-set stats, kept as shipped).
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PANDA_HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
PANDA_JOINT_STD = [0.6, 0.5, 0.6, 0.5, 0.6, 0.4, 0.7]
GRIPPER_MEAN, GRIPPER_STD = 0.04, 0.02

# Orientation prior for Cartesian pose dims: gripper pointing down (180° about x), (qx, qy, qz, qw).
POSE_QUAT_MEAN = [1.0, 0.0, 0.0, 0.0]
POSE_QUAT_STD = [0.25, 0.25, 0.25, 0.25]

JOINT_CONTROLLERS = ("joint_trajectory", "forward_position", "joint_impedance")


@dataclass(frozen=True)
class Size:
    """Widths of both graphs. Every tensor interface (latent K×D included) is size-independent."""

    slow_width: int
    slow_convs: tuple[int, int]
    slow_ff: int
    slow_mlp: int
    fast_width: int
    fast_layers: int
    fast_ff: int
    heads: int = 4
    fast_heads: int = 8


SIZES = {
    # ~1.6M-parameter slow encoder, ~4.4M-parameter fast transformer (the panda package).
    "full": Size(slow_width=256, slow_convs=(64, 128), slow_ff=1024, slow_mlp=512, fast_width=256, fast_layers=5,
                 fast_ff=1152),
    # ~0.5M / ~1M: a few MB per package, for the per-robot packages kept in git.
    "small": Size(slow_width=128, slow_convs=(32, 64), slow_ff=512, slow_mlp=256, fast_width=128, fast_layers=5,
                  fast_ff=448),
}


@dataclass
class Layout:
    """Robot-specific part of a package: action groups, proprio names and their statistics."""

    robot: str
    package: str
    camera: str
    groups: list[dict]
    action_mean: list[float]
    action_std: list[float]
    proprio_names: list[str]
    proprio_mean: list[float]
    proprio_std: list[float]
    default_size: str = "small"
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def A(self) -> int:
        return len(self.action_mean)

    @property
    def P(self) -> int:
        return len(self.proprio_names)


def panda_layout() -> Layout:
    """The original package: Panda arm joints + gripper, scene camera (config/sim_panda.yaml)."""
    names = PANDA_JOINTS + ["gripper/gripper"]
    mean = PANDA_HOME + [GRIPPER_MEAN]
    std = PANDA_JOINT_STD + [GRIPPER_STD]
    # proprio and action share the same stats objects (the YAML anchors them).
    return Layout(
        robot="panda",
        package="timing_reference",
        camera="scene",
        groups=[
            {"name": "arm", "kind": "joint_position", "joints": PANDA_JOINTS},
            {"name": "gripper", "kind": "gripper"},
        ],
        action_mean=mean,
        action_std=std,
        proprio_names=names,
        proprio_mean=mean,
        proprio_std=std,
        default_size="full",
    )


def _r(x: float) -> float:
    return round(float(x), 4)


def layout_from_profile(config_name: str, package: str) -> Layout:
    """Fit the action layout to a robot profile in ``config/``, one action group per profile group.

    Joint controllers (joint_trajectory, forward_position, joint_impedance) get a joint_position
    group over the group's joints (mean = home kept one std inside the limits, std = range / 4); a
    cartesian_impedance group gets
    a quaternion cartesian_pose group (workspace centre / extent / 4, gripper-down orientation)
    and feeds its joints to proprio; a gripper group gets a ``<group>/gripper`` dim (mean = finger
    home, std = half the gripper range). The first camera feeds the image input.
    """
    path = ROOT / "config" / config_name
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    robot = cfg["robot"]
    joints = {j["name"]: j for j in robot["joints"]}

    def joint_stats(name: str) -> tuple[float, float]:
        # Mean at home, kept one std inside the limits: a joint homed at (or near) a limit (GR1's
        # fingers, elbows) would otherwise get random chunks that leave its range on one side,
        # which `vla-runtime check`'s dry run refuses.
        j = joints[name]
        lo, hi = j["position"]
        std = (hi - lo) / 4.0
        return _r(min(max(j["home"], lo + std), hi - std)), _r(std)

    groups: list[dict] = []
    a_mean: list[float] = []
    a_std: list[float] = []
    p_names: list[str] = []
    p_mean: list[float] = []
    p_std: list[float] = []
    for gname, g in robot["groups"].items():
        ctrl = g["controller"]
        if ctrl in JOINT_CONTROLLERS:
            groups.append({"name": gname, "kind": "joint_position", "joints": list(g["joints"])})
            for jn in g["joints"]:
                m, sd = joint_stats(jn)
                a_mean.append(m)
                a_std.append(sd)
                p_names.append(jn)
                p_mean.append(m)
                p_std.append(sd)
        elif ctrl == "cartesian_impedance":
            groups.append({
                "name": gname,
                "kind": "cartesian_pose",
                "rotation": "quaternion",
                "frame": g.get("frame_id", robot["base_frame"]),
            })
            ws = robot["workspace"]
            a_mean += [_r((lo + hi) / 2.0) for lo, hi in zip(ws["min"], ws["max"])] + POSE_QUAT_MEAN
            a_std += [_r((hi - lo) / 4.0) for lo, hi in zip(ws["min"], ws["max"])] + POSE_QUAT_STD
            for jn in g["joints"]:
                m, sd = joint_stats(jn)
                p_names.append(jn)
                p_mean.append(m)
                p_std.append(sd)
        elif ctrl == "gripper":
            groups.append({"name": gname, "kind": "gripper"})
            finger = joints[g["joints"][0]]
            lo, hi = g.get("gripper_range", finger["position"])
            m, sd = _r(finger["home"]), _r((hi - lo) / 2.0)
            a_mean.append(m)
            a_std.append(sd)
            p_names.append(f"{gname}/gripper")
            p_mean.append(m)
            p_std.append(sd)
        else:
            raise SystemExit(f"{path}: group {gname!r}: no action layout for controller {ctrl!r}")
    return Layout(
        robot=robot["name"],
        package=package,
        camera=cfg["cameras"][0]["name"],
        groups=groups,
        action_mean=a_mean,
        action_std=a_std,
        proprio_names=p_names,
        proprio_mean=p_mean,
        proprio_std=p_std,
        source=f"config/{config_name}",
    )


ROBOTS = {
    "panda": panda_layout,
    "fr3": lambda: layout_from_profile("franka_fr3.yaml", "timing_reference_fr3"),
    "ur5e": lambda: layout_from_profile("ur5e.yaml", "timing_reference_ur5e"),
    "gr1": lambda: layout_from_profile("humanoid_gr1.yaml", "timing_reference_gr1"),
}


def build_models(layout: Layout, size: Size):
    """Build the two torch modules (random weights, fixed seed)."""
    import torch
    from torch import nn

    A, P = layout.A, layout.P

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x, ctx, bias=None):
            b, n, _ = x.shape
            m = ctx.shape[1]
            q = self.q(x).view(b, n, self.h, self.dh).transpose(1, 2)
            k = self.k(ctx).view(b, m, self.h, self.dh).transpose(1, 2)
            v = self.v(ctx).view(b, m, self.h, self.dh).transpose(1, 2)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
            if bias is not None:
                att = att + bias
            y = att.softmax(-1) @ v
            return self.o(y.transpose(1, 2).reshape(b, n, -1))

    class Block(nn.Module):
        def __init__(self, d: int, heads: int, ff: int) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.att = Attention(d, heads)
            self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

        def forward(self, x, bias=None):
            h = self.n1(x)
            x = x + self.att(h, h, bias)
            return x + self.mlp(self.n2(x))

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, (c1, c2) = size.slow_width, size.slow_convs
            self.conv = nn.Sequential(
                nn.Conv2d(3, c1, 4, 4), nn.GELU(),
                nn.Conv2d(c1, c2, 2, 2), nn.GELU(),
                nn.Conv2d(c2, d, 2, 2),
            )
            self.img_pos = nn.Parameter(torch.randn(1, (IMG // 16) ** 2, d) * 0.02)
            self.tok = nn.Embedding(len(VOCAB), d)
            self.txt_pos = nn.Parameter(torch.randn(1, L, d) * 0.02)
            self.block = Block(d, size.heads, size.slow_ff)
            self.queries = nn.Parameter(torch.randn(1, K, d) * 0.02)
            self.nq, self.nc = nn.LayerNorm(d), nn.LayerNorm(d)
            self.cross = Attention(d, size.heads)
            self.mlp = nn.Sequential(nn.Linear(d, size.slow_mlp), nn.GELU(), nn.Linear(size.slow_mlp, d))
            self.out = nn.LayerNorm(d)
            # A narrower encoder still emits the K×D latent every package shares.
            self.proj = nn.Linear(d, D) if d != D else None

        def forward(self, image, instruction_ids, instruction_mask):
            x = (image.float() / 127.5) - 1.0
            img = self.conv(x).flatten(2).transpose(1, 2) + self.img_pos
            txt = self.tok(instruction_ids) + self.txt_pos
            seq = torch.cat([img, txt], 1)
            keep = torch.cat([torch.ones_like(instruction_mask[:, :1]).expand(-1, img.shape[1]), instruction_mask], 1)
            bias = ((1 - keep).float() * -1e4)[:, None, None, :]
            seq = self.block(seq, bias)
            ctx = self.nc(seq)
            q = self.queries.expand(seq.shape[0], -1, -1)
            q = q + self.cross(self.nq(q), ctx, bias)
            q = q + self.mlp(q)
            q = self.out(q)
            return q if self.proj is None else self.proj(q)

    class Fast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = size.fast_width
            self.lat = nn.Linear(D, d)
            self.pro = nn.Linear(P, d)
            self.act = nn.Linear(A + 1, d)
            self.pos = nn.Parameter(torch.randn(1, K + 1 + H, d) * 0.02)
            self.blocks = nn.ModuleList(Block(d, size.fast_heads, size.fast_ff) for _ in range(size.fast_layers))
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, A)

        def forward(self, latent, proprio, prev_chunk, prefix_mask):
            m = prefix_mask[..., None]
            act_in = torch.cat([prev_chunk * m, m], -1)
            x = torch.cat([self.lat(latent), self.pro(proprio)[:, None], self.act(act_in)], 1) + self.pos
            for blk in self.blocks:
                x = blk(x)
            pred = self.head(self.norm(x[:, K + 1 :]))
            return m * prev_chunk + (1 - m) * pred

    torch.manual_seed(SEED)
    return Slow().eval(), Fast().eval()


def model_yaml(layout: Layout, size_name: str, n_slow: int, n_fast: int) -> dict:
    """The package's model.yaml content."""
    size = SIZES[size_name]
    A, P = layout.A, layout.P
    description = (
        "Random-weight fast-slow VLA of realistic shape for latency and deadline measurements. "
        f"Slow: conv patchifier + 1 transformer block + {K} query cross-attention ({n_slow / 1e6:.2f}M params). "
        f"Fast: {size.fast_layers}-block d={size.fast_width} transformer with an RTC prefix ({n_fast / 1e6:.2f}M "
        "params). "
        f"Seed {SEED}; regenerate with tools/export_timing_reference.py. Its actions mean nothing."
    )
    if layout.robot != "panda" or size_name != layout.default_size:
        description += (
            f" Regenerate with --robot {layout.robot} --size {size_name}"
            + (f"; action layout fitted to {layout.source}." if layout.source else ".")
        )
    return {
        "schema_version": 1,
        "name": layout.package,
        "trained": False,
        "purpose": "timing only — untrained weights",
        "description": description,
        "robot": layout.robot,
        "control_rate_hz": 30.0,
        "chunk_horizon": H,
        "action_dim": A,
        "latent": {"tokens": K, "dim": D, "dtype": "float32"},
        "slow": {
            "onnx": "slow.onnx",
            "rate_hz": 2.0,
            "inputs": [
                {"name": "image", "shape": [1, 3, IMG, IMG], "dtype": "uint8", "role": "image",
                 "camera": layout.camera, "layout": "NCHW"},
                {"name": "instruction_ids", "shape": [1, L], "dtype": "int64", "role": "instruction_ids"},
                {"name": "instruction_mask", "shape": [1, L], "dtype": "int64", "role": "instruction_mask"},
            ],
            "outputs": [{"name": "latent", "shape": [1, K, D], "dtype": "float32", "role": "latent"}],
        },
        "fast": {
            "onnx": "fast.onnx",
            "inputs": [
                {"name": "latent", "shape": [1, K, D], "dtype": "float32", "role": "latent"},
                {"name": "proprio", "shape": [1, P], "dtype": "float32", "role": "proprio"},
                {"name": "prev_chunk", "shape": [1, H, A], "dtype": "float32", "role": "prev_chunk"},
                {"name": "prefix_mask", "shape": [1, H], "dtype": "float32", "role": "prefix_mask"},
            ],
            "outputs": [{"name": "actions", "shape": [1, H, A], "dtype": "float32", "role": "actions"}],
        },
        "tokenizer": {"max_len": L, "vocab": VOCAB, "pad_token": "<pad>", "unk_token": "<unk>"},
        "proprio": {
            "names": layout.proprio_names,
            "normalization": {"kind": "mean_std", "mean": layout.proprio_mean, "std": layout.proprio_std},
        },
        "action": {
            "head": "continuous",
            "normalization": {"kind": "mean_std", "mean": layout.action_mean, "std": layout.action_std},
            "groups": layout.groups,
        },
    }


def export(out: Path, check: bool, layout: Layout, size_name: str) -> None:
    """Export both graphs and model.yaml into ``out``."""
    import torch

    A, P = layout.A, layout.P
    slow, fast = build_models(layout, SIZES[size_name])
    n_slow = sum(p.numel() for p in slow.parameters())
    n_fast = sum(p.numel() for p in fast.parameters())
    print(f"{layout.package} ({layout.robot}, {size_name}, A={A}, P={P}): "
          f"slow: {n_slow / 1e6:.2f}M params, fast: {n_fast / 1e6:.2f}M params")
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    slow_args = (
        torch.randint(0, 256, (1, 3, IMG, IMG), dtype=torch.uint8, generator=g),
        torch.randint(0, len(VOCAB), (1, L), dtype=torch.int64, generator=g),
        torch.ones(1, L, dtype=torch.int64),
    )
    fast_args = (
        torch.randn(1, K, D, generator=g),
        torch.randn(1, P, generator=g),
        torch.randn(1, H, A, generator=g),
        (torch.arange(H) < 4).float()[None],
    )
    graphs = {
        "slow": (slow, slow_args, ["image", "instruction_ids", "instruction_mask"], ["latent"]),
        "fast": (fast, fast_args, ["latent", "proprio", "prev_chunk", "prefix_mask"], ["actions"]),
    }
    for name, (model, args, ins, outs) in graphs.items():
        path = out / f"{name}.onnx"
        for stale in (path, out / f"{name}.onnx.data"):
            stale.unlink(missing_ok=True)
        with torch.no_grad():
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=ins, output_names=outs,
                              external_data=False, optimize=True)
        size_mb = sum(f.stat().st_size for f in out.glob(f"{name}.onnx*")) / 1e6
        print(f"wrote {path} ({size_mb:.1f} MB)")
        if check:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {n: a.numpy() for n, a in zip(ins, args)})[0]
            with torch.no_grad():
                want = model(*args).numpy()
            err = float(np.abs(got - want).max())
            print(f"  onnxruntime vs torch max abs error {err:.2e}")
            if err > 1e-3:
                raise SystemExit(f"{path}: onnxruntime disagrees with torch (max abs error {err})")
    header = (
        f"# {layout.package} — UNTRAINED, random weights (seed {SEED}). For timing only: its actions mean nothing.\n"
        "# Generated by tools/export_timing_reference.py; do not edit by hand.\n"
    )
    text = yaml.safe_dump(model_yaml(layout, size_name, n_slow, n_fast), sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=120)
    (out / "model.yaml").write_text(header + text, encoding="utf-8")
    print(f"wrote {out / 'model.yaml'}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robot", choices=sorted(ROBOTS), default="panda",
                    help="action layout: panda (models/timing_reference) or a profile in config/ (default panda)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="graph widths (default: full for panda, small for the others, as shipped)")
    ap.add_argument("--out", type=Path, default=None, help="package directory (default models/<package name>)")
    ap.add_argument("--check", action="store_true", help="compare onnxruntime against torch after export")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401 - only whether it is installed
    except ImportError:
        print("this tool needs torch==2.13.0, onnx and onnxscript (pip install torch==2.13.0 onnx onnxscript)",
              file=sys.stderr)
        return 2
    layout = ROBOTS[args.robot]()
    size_name = args.size or layout.default_size
    out = args.out if args.out is not None else ROOT / "models" / layout.package
    export(out, args.check, layout, size_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
