#!/usr/bin/env python3
"""Export ``models/timing_reference/``: a random-weight fast-slow VLA of realistic shape.

The package exists to measure the runtime (deadlines, latency, overhead) with
graphs whose sizes and shapes look like a real deployment. The weights are
random (fixed seed): its actions mean nothing. ``model.yaml`` says so
(``trained: false``).

* slow.onnx: image ``(1, 3, 224, 224)`` uint8 → 3-stage conv patchifier (14×14
  tokens, d=256) + instruction ids/mask ``(1, 16)`` int64 → one transformer
  block → 8 learned queries cross-attend → latent ``(1, 8, 256)`` float32.
* fast.onnx: latent ``(1, 8, 256)`` + proprio ``(1, 8)`` + RTC prefix
  (previous chunk ``(1, 16, 8)`` and prefix mask ``(1, 16)``) → 5-block
  transformer (~4.4M parameters) → chunk ``(1, 16, 8)``, with the masked prefix
  copied through from the previous chunk.

Needs torch (==2.13.0), onnx and onnxscript; the runtime itself never imports torch.

Usage::

    python tools/export_timing_reference.py [--out models/timing_reference] [--check]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import yaml

SEED = 20261123
H, A, P = 16, 8, 8  # chunk horizon, action dims (7 joints + gripper), proprio dims
K, D = 8, 256  # latent tokens × width
L = 16  # instruction length
IMG = 224
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]

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

HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
JOINT_STD = [0.6, 0.5, 0.6, 0.5, 0.6, 0.4, 0.7]
GRIPPER_MEAN, GRIPPER_STD = 0.04, 0.02


def build_models():  # noqa: ANN201 - torch types stay local to this tool
    """Build the two torch modules (random weights, fixed seed)."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x, ctx, bias=None):  # noqa: ANN001, ANN202
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

        def forward(self, x, bias=None):  # noqa: ANN001, ANN202
            h = self.n1(x)
            x = x + self.att(h, h, bias)
            return x + self.mlp(self.n2(x))

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(3, 64, 4, 4), nn.GELU(),
                nn.Conv2d(64, 128, 2, 2), nn.GELU(),
                nn.Conv2d(128, D, 2, 2),
            )
            self.img_pos = nn.Parameter(torch.randn(1, (IMG // 16) ** 2, D) * 0.02)
            self.tok = nn.Embedding(len(VOCAB), D)
            self.txt_pos = nn.Parameter(torch.randn(1, L, D) * 0.02)
            self.block = Block(D, 4, 1024)
            self.queries = nn.Parameter(torch.randn(1, K, D) * 0.02)
            self.nq, self.nc = nn.LayerNorm(D), nn.LayerNorm(D)
            self.cross = Attention(D, 4)
            self.mlp = nn.Sequential(nn.Linear(D, 512), nn.GELU(), nn.Linear(512, D))
            self.out = nn.LayerNorm(D)

        def forward(self, image, instruction_ids, instruction_mask):  # noqa: ANN001, ANN202
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
            return self.out(q)

    class Fast(nn.Module):
        def __init__(self, layers: int = 5, ff: int = 1152) -> None:
            super().__init__()
            self.lat = nn.Linear(D, D)
            self.pro = nn.Linear(P, D)
            self.act = nn.Linear(A + 1, D)
            self.pos = nn.Parameter(torch.randn(1, K + 1 + H, D) * 0.02)
            self.blocks = nn.ModuleList(Block(D, 8, ff) for _ in range(layers))
            self.norm = nn.LayerNorm(D)
            self.head = nn.Linear(D, A)

        def forward(self, latent, proprio, prev_chunk, prefix_mask):  # noqa: ANN001, ANN202
            m = prefix_mask[..., None]
            act_in = torch.cat([prev_chunk * m, m], -1)
            x = torch.cat([self.lat(latent), self.pro(proprio)[:, None], self.act(act_in)], 1) + self.pos
            for blk in self.blocks:
                x = blk(x)
            pred = self.head(self.norm(x[:, K + 1 :]))
            return m * prev_chunk + (1 - m) * pred

    torch.manual_seed(SEED)
    return Slow().eval(), Fast().eval()


def model_yaml(n_slow: int, n_fast: int) -> dict:
    """The package's model.yaml content."""
    names = JOINTS + ["gripper/gripper"]
    mean = HOME + [GRIPPER_MEAN]
    std = JOINT_STD + [GRIPPER_STD]
    return {
        "schema_version": 1,
        "name": "timing_reference",
        "trained": False,
        "purpose": "timing only — untrained weights",
        "description": (
            "Random-weight fast-slow VLA of realistic shape for latency and deadline measurements. "
            f"Slow: conv patchifier + 1 transformer block + 8 query cross-attention ({n_slow / 1e6:.2f}M params). "
            f"Fast: 5-block d=256 transformer with an RTC prefix ({n_fast / 1e6:.2f}M params). "
            f"Seed {SEED}; regenerate with tools/export_timing_reference.py. Its actions mean nothing."
        ),
        "robot": "panda",
        "control_rate_hz": 30.0,
        "chunk_horizon": H,
        "action_dim": A,
        "latent": {"tokens": K, "dim": D, "dtype": "float32"},
        "slow": {
            "onnx": "slow.onnx",
            "rate_hz": 2.0,
            "inputs": [
                {"name": "image", "shape": [1, 3, IMG, IMG], "dtype": "uint8", "role": "image", "camera": "wrist", "layout": "NCHW"},
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
        "proprio": {"names": names, "normalization": {"kind": "mean_std", "mean": mean, "std": std}},
        "action": {
            "head": "continuous",
            "normalization": {"kind": "mean_std", "mean": mean, "std": std},
            "groups": [
                {"name": "arm", "kind": "joint_position", "joints": JOINTS},
                {"name": "gripper", "kind": "gripper"},
            ],
        },
    }


def export(out: Path, check: bool) -> None:
    """Export both graphs and model.yaml into ``out``."""
    import torch  # noqa: PLC0415

    slow, fast = build_models()
    n_slow = sum(p.numel() for p in slow.parameters())
    n_fast = sum(p.numel() for p in fast.parameters())
    print(f"slow: {n_slow / 1e6:.2f}M params, fast: {n_fast / 1e6:.2f}M params")
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
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=ins, output_names=outs, external_data=False, optimize=True)
        size_mb = sum(f.stat().st_size for f in out.glob(f"{name}.onnx*")) / 1e6
        print(f"wrote {path} ({size_mb:.1f} MB)")
        if check:
            import onnxruntime as ort  # noqa: PLC0415

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {n: a.numpy() for n, a in zip(ins, args)})[0]
            with torch.no_grad():
                want = model(*args).numpy()
            err = float(np.abs(got - want).max())
            print(f"  onnxruntime vs torch max abs error {err:.2e}")
            if err > 1e-3:
                raise SystemExit(f"{path}: onnxruntime disagrees with torch (max abs error {err})")
    header = (
        "# timing_reference — UNTRAINED, random weights (seed %d). For timing only: its actions mean nothing.\n"
        "# Generated by tools/export_timing_reference.py; do not edit by hand.\n" % SEED
    )
    text = yaml.safe_dump(model_yaml(n_slow, n_fast), sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)
    (out / "model.yaml").write_text(header + text, encoding="utf-8")
    print(f"wrote {out / 'model.yaml'}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "timing_reference")
    ap.add_argument("--check", action="store_true", help="compare onnxruntime against torch after export")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        print("this tool needs torch==2.13.0, onnx and onnxscript (pip install torch==2.13.0 onnx onnxscript)", file=sys.stderr)
        return 2
    export(args.out, args.check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
