#!/usr/bin/env python3
"""Train and export ``models/reference_reach/``: a small fast-slow policy that really touches cubes.

One command, on CPU, in well under 30 minutes (2 cores)::

    .venv/bin/python tools/train_reference.py            # dataset + training + export + sim check

Steps:

1. **Dataset** (no ROS, faster than real time): the scripted expert of :mod:`vla_runtime.tasks`
   runs ``touch`` and ``touch_dynamic`` episodes on :class:`~vla_runtime.sim.robot.SimRobot`
   (random cube placements, all three colours). Every 30 Hz tick records the measured joints,
   the gripper and the expert's 16×7 joint chunk (the label); the scene camera is rendered at
   5 Hz (96×96, the config's ``scene`` camera). In most episodes the EXECUTED chunk carries a
   slowly varying joint offset, so the data shows recoveries from states off the expert's path
   (labels are always the clean expert at the measured state).
2. **Training**, jointly end to end: slow model (image + instruction → 4×64 latent: CoordConv
   CNN, FiLM by the instruction embedding, spatial-softmax keypoints, MLP) and fast model
   (latent + proprio → 16×8 chunk, an MLP predicting the chunk as a residual on the current
   joints). The latent of a sample comes from an EARLIER frame, 0–1.2 s before the sample (0–6
   slow periods at 5 Hz), so the fast part learns to act on an old latent and fresh proprio.
3. **Export** both graphs to ONNX (checked against torch with onnxruntime) and write
   ``model.yaml`` (``trained: true``).
4. **Closed-loop check** in sim time without ROS: the exported ONNX graphs drive the sim for a
   few episodes, slow path at 5 Hz with one slow period of delay.

Needs torch==2.13.0, onnx and onnxscript (training only; the runtime never imports torch).
Options: ``--episodes``, ``--minutes`` (training time box), ``--data`` (cache the dataset as
.npz and reuse it), ``--out``, ``--sim-check N``, ``--seed``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vla_runtime.tasks import ARM_JOINTS, CHUNK_HORIZON, CONTROL_HZ, GRIPPER_OPEN, run_expert_episode  # noqa: E402

SEED = 20261201
IMG = 96                   # the config's scene camera is 96×96
FRAME_EVERY = 6            # render every 6 ticks: 5 Hz, the slow path's rate
MAX_DELAY_FRAMES = 6       # latent from up to 6 slow periods (1.2 s) before the sample
K, D = 4, 64               # latent tokens × width
L = 8                      # instruction length
H = CHUNK_HORIZON
A = 8                      # 7 joints + gripper
VOCAB = ["<pad>", "<unk>", "touch", "the", "a", "red", "green", "blue", "cube", "block", "reach", "to", "please",
         "now"]
PROPRIO_NAMES = list(ARM_JOINTS) + ["gripper/gripper"]
EPISODE_S = {"touch": 3.5, "touch_dynamic": 5.0}


# ---------------------------------------------------------------------------------- dataset
def _offset_noise(rng: np.random.Generator, scale: float):
    """A piecewise-constant joint offset (new value every 0.5 s) added to the executed chunk."""
    offsets: dict[int, np.ndarray] = {}

    def noise(k: int, chunk: np.ndarray) -> np.ndarray:
        seg = k // 15
        if seg not in offsets:
            offsets[seg] = rng.normal(0.0, scale, size=chunk.shape[1]) if rng.random() < 0.7 else np.zeros(chunk.shape[1])
        return np.broadcast_to(offsets[seg], chunk.shape)

    return noise


def generate(episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Run the expert and pack the dataset (see the module docstring)."""
    from vla_runtime.core.config import load_config
    from vla_runtime.core.text import WordTokenizer
    from vla_runtime.sim.robot import SimRobot

    cfg = load_config(ROOT / "config" / "sim_panda.yaml")
    robot = SimRobot(cfg)
    tok = WordTokenizer(VOCAB, L, "<pad>", "<unk>")
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("joints", "gripper", "actions", "episode", "tick", "frames",
                                             "frame_episode", "frame_tick", "frame_target", "ids", "mask",
                                             "success")}
    t0 = time.time()
    n_frames = 0
    for e in range(episodes):
        task = "touch_dynamic" if e % 2 else "touch"
        noise = _offset_noise(rng, float(rng.choice([0.03, 0.06]))) if rng.random() < 0.75 else None
        log = run_expert_episode(robot, task, seed=seed * 1000 + e, duration_s=EPISODE_S[task],
                                 render_every=FRAME_EVERY, image_size=(IMG, IMG), noise=noise)
        n = len(log.times)
        cols["joints"].append(log.joints.astype(np.float32))
        cols["gripper"].append(log.gripper.astype(np.float32))
        cols["actions"].append(log.actions.astype(np.float32))
        cols["episode"].append(np.full(n, e, np.int32))
        cols["tick"].append(np.arange(n, dtype=np.int32))
        cols["frames"].append(log.frames)
        cols["frame_episode"].append(np.full(len(log.frames), e, np.int32))
        cols["frame_tick"].append(log.frame_ticks.astype(np.int32))
        cols["frame_target"].append(log.target[log.frame_ticks, :2].astype(np.float32))
        enc = tok.encode(log.spec.instruction)
        cols["ids"].append(enc.ids.reshape(1, L).astype(np.int64))
        cols["mask"].append(enc.mask.reshape(1, L).astype(np.int64))
        cols["success"].append(log.success)
        n_frames += len(log.frames)
        if (e + 1) % 20 == 0 or e + 1 == episodes:
            print(f"  dataset: {e + 1}/{episodes} episodes, {n_frames} frames, "
                  f"expert success {np.mean(cols['success']):.2f}, {time.time() - t0:.0f} s", flush=True)
    return {k: np.concatenate(v) if k != "success" else np.array(v) for k, v in cols.items()}


# ------------------------------------------------------------------------------------ models
def build_models():  # noqa: ANN201 - torch types stay local to this tool
    import torch
    from torch import nn

    class Slow(nn.Module):
        """image (1,3,96,96) uint8 + instruction ids/mask (1,L) → latent (1,K,D)."""

        def __init__(self) -> None:
            super().__init__()
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, IMG), torch.linspace(-1, 1, IMG), indexing="ij")
            self.register_buffer("coords", torch.stack([xs, ys])[None])
            self.conv1 = nn.Conv2d(5, 32, 5, 2, 2)
            self.conv2 = nn.Conv2d(32, 32, 3, 2, 1)
            self.conv3 = nn.Conv2d(32, 64, 3, 1, 1)
            self.emb = nn.Embedding(len(VOCAB), 64)
            self.film = nn.Linear(64, 128)
            self.conv4 = nn.Conv2d(64, 32, 1)
            g = IMG // 4
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
            self.register_buffer("kx", xs.reshape(1, 1, -1))
            self.register_buffer("ky", ys.reshape(1, 1, -1))
            self.mlp = nn.Sequential(nn.Linear(32 * 3 + 64, 256), nn.GELU(), nn.Linear(256, K * D))

        def forward(self, image, ids, mask):  # noqa: ANN001, ANN202
            b = image.shape[0]
            x = image.float() / 255.0
            x = torch.cat([x, self.coords.expand(b, -1, -1, -1)], 1)
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = self.conv3(x)
            m = mask.float()[..., None]
            t = (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            gamma, beta = self.film(t).chunk(2, -1)
            x = torch.relu(x * (1 + gamma[..., None, None]) + beta[..., None, None])
            f = self.conv4(x).flatten(2)                      # (b, 32, g*g)
            att = torch.softmax(f, -1)
            kp = torch.cat([(att * self.kx).sum(-1), (att * self.ky).sum(-1), f.amax(-1)], -1)
            return self.mlp(torch.cat([kp, t], -1)).view(b, K, D)

    class Fast(nn.Module):
        """latent (1,K,D) + proprio (1,8) → actions (1,H,8), normalised like proprio."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(K * D + A, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                                     nn.Linear(512, H * A))

        def forward(self, latent, proprio):  # noqa: ANN001, ANN202
            b = latent.shape[0]
            delta = self.net(torch.cat([latent.reshape(b, -1), proprio], -1)).view(b, H, A)
            return proprio[:, None, :] + delta

    torch.manual_seed(SEED)
    return Slow(), Fast()


# ---------------------------------------------------------------------------------- training
def stats(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation shared by proprio and actions (so the fast net can predict a residual)."""
    q = data["joints"].astype(np.float64)
    mean = np.concatenate([q.mean(0), [GRIPPER_OPEN]])
    std = np.concatenate([np.maximum(q.std(0), 0.05), [0.02]])
    return mean, std


def train(data: dict[str, np.ndarray], minutes: float, seed: int, batch_frames: int = 48, per_frame: int = 8):
    import torch

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    rng = np.random.default_rng(seed)
    slow, fast = build_models()
    mean, std = stats(data)
    prop = np.concatenate([data["joints"], data["gripper"][:, None]], 1)
    prop_n = ((prop - mean) / std).astype(np.float32)
    act = np.concatenate([data["actions"], np.full(data["actions"].shape[:2] + (1,), GRIPPER_OPEN, np.float32)], 2)
    act_n = ((act - mean) / std).astype(np.float32)
    ep, tick = data["episode"], data["tick"]
    starts = np.searchsorted(ep, np.arange(ep.max() + 2))  # tick rows of each episode
    n_eps = int(ep.max()) + 1
    val_eps = set(range(n_eps - max(2, n_eps // 20), n_eps))
    f_ep, f_tick = data["frame_episode"], data["frame_tick"]
    train_frames = np.array([i for i in range(len(f_ep)) if f_ep[i] not in val_eps])
    val_frames = np.array([i for i in range(len(f_ep)) if f_ep[i] in val_eps])
    frames = torch.from_numpy(data["frames"]).permute(0, 3, 1, 2).contiguous()
    ids, mask = torch.from_numpy(data["ids"]), torch.from_numpy(data["mask"])
    prop_t, act_t = torch.from_numpy(prop_n), torch.from_numpy(act_n)
    span = (MAX_DELAY_FRAMES + 1) * FRAME_EVERY

    def batch(frame_idx: np.ndarray):
        fi = frame_idx
        e = f_ep[fi]
        lo = starts[e] + f_tick[fi]
        hi = starts[e + 1]
        rows = np.minimum(lo[:, None] + rng.integers(0, span, size=(len(fi), per_frame)), hi[:, None] - 1)
        return (frames[fi], ids[e], mask[e], torch.from_numpy(rows.reshape(-1)))

    w = torch.ones(H, A)
    w[:, -1] = 0.1  # the gripper never moves here
    params = list(slow.parameters()) + list(fast.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    budget = minutes * 60.0
    t0 = time.time()
    step = 0
    ema = None

    def loss_of(fi: np.ndarray, train_mode: bool):
        img, i, m, rows = batch(fi)
        lat = slow(img, i, m)
        lat = lat.repeat_interleave(per_frame, 0)
        pred = fast(lat, prop_t[rows])
        return (((pred - act_t[rows]) ** 2) * w).mean() * 100.0

    while True:
        elapsed = time.time() - t0
        if elapsed > budget:
            break
        frac = elapsed / budget
        lr = 1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) if step > 50 else 1e-3 * (step + 1) / 51
        for g in opt.param_groups:
            g["lr"] = lr
        slow.train()
        fast.train()
        loss = loss_of(rng.choice(train_frames, batch_frames), True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        step += 1
        if step % 100 == 0:
            slow.eval()
            fast.eval()
            with torch.no_grad():
                vl = float(np.mean([float(loss_of(rng.choice(val_frames, batch_frames), False)) for _ in range(3)]))
            print(f"  train: step {step}, {elapsed:.0f} s, lr {lr:.2e}, loss {ema:.4f}, val {vl:.4f}", flush=True)
    slow.eval()
    fast.eval()
    print(f"  train: {step} steps in {time.time() - t0:.0f} s")
    return slow, fast, mean, std, {"steps": step, "train_loss": ema}


# ------------------------------------------------------------------------------------ export
def model_yaml(mean: np.ndarray, std: np.ndarray, n_slow: int, n_fast: int, info: dict) -> dict:
    stats_ = {"kind": "mean_std", "mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std]}
    return {
        "schema_version": 1,
        "name": "reference_reach",
        "trained": True,
        "purpose": "reference policy: touch the red/green/blue cube in the simulated Panda scene",
        "description": (
            f"Behaviour-cloned fast-slow policy for 'touch the <colour> cube' (static and sliding targets) in "
            f"config/sim_panda_reach.yaml. Slow: CoordConv CNN + instruction FiLM + spatial-softmax keypoints "
            f"({n_slow / 1e6:.2f}M params) → {K}x{D} latent. Fast: MLP residual on the joints ({n_fast / 1e6:.2f}M "
            f"params) → {H}x{A} joint-position chunk. Trained jointly with latents from frames 0-1.2 s old "
            f"({info.get('episodes')} expert episodes, {info.get('steps')} steps); "
            f"regenerate with tools/train_reference.py."
        ),
        "robot": "panda",
        "control_rate_hz": CONTROL_HZ,
        "chunk_horizon": H,
        "action_dim": A,
        "latent": {"tokens": K, "dim": D, "dtype": "float32"},
        "slow": {
            "onnx": "slow.onnx",
            "rate_hz": 5.0,
            "inputs": [
                {"name": "image", "shape": [1, 3, IMG, IMG], "dtype": "uint8", "role": "image", "camera": "scene",
                 "layout": "NCHW"},
                {"name": "instruction_ids", "shape": [1, L], "dtype": "int64", "role": "instruction_ids"},
                {"name": "instruction_mask", "shape": [1, L], "dtype": "int64", "role": "instruction_mask"},
            ],
            "outputs": [{"name": "latent", "shape": [1, K, D], "dtype": "float32", "role": "latent"}],
        },
        "fast": {
            "onnx": "fast.onnx",
            "inputs": [
                {"name": "latent", "shape": [1, K, D], "dtype": "float32", "role": "latent"},
                {"name": "proprio", "shape": [1, A], "dtype": "float32", "role": "proprio"},
            ],
            "outputs": [{"name": "actions", "shape": [1, H, A], "dtype": "float32", "role": "actions"}],
        },
        "tokenizer": {"max_len": L, "vocab": VOCAB, "pad_token": "<pad>", "unk_token": "<unk>"},
        "proprio": {"names": PROPRIO_NAMES, "normalization": stats_},
        "action": {
            "head": "continuous",
            "normalization": stats_,
            "groups": [
                {"name": "arm", "kind": "joint_position", "joints": list(ARM_JOINTS)},
                {"name": "gripper", "kind": "gripper"},
            ],
        },
    }


def export(slow, fast, mean, std, out: Path, info: dict) -> None:
    import onnxruntime as ort
    import torch

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    slow_args = (torch.randint(0, 256, (1, 3, IMG, IMG), dtype=torch.uint8, generator=g),
                 torch.tensor([[2, 3, 5, 8, 0, 0, 0, 0]], dtype=torch.int64),
                 torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.int64))
    fast_args = (torch.randn(1, K, D, generator=g), torch.randn(1, A, generator=g))
    graphs = {"slow": (slow, slow_args, ["image", "instruction_ids", "instruction_mask"], ["latent"]),
              "fast": (fast, fast_args, ["latent", "proprio"], ["actions"])}
    for name, (model, args, ins, outs) in graphs.items():
        path = out / f"{name}.onnx"
        for stale in (path, out / f"{name}.onnx.data"):
            stale.unlink(missing_ok=True)
        with torch.no_grad():
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=ins, output_names=outs,
                              external_data=False, optimize=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: a.numpy() for n, a in zip(ins, args)})[0]
        with torch.no_grad():
            want = model(*args).numpy()
        err = float(np.abs(got - want).max())
        print(f"  export: {path} ({path.stat().st_size / 1e6:.2f} MB), onnxruntime vs torch max error {err:.1e}")
        if err > 1e-3:
            raise SystemExit(f"{path}: onnxruntime disagrees with torch (max abs error {err})")
    n_slow = sum(p.numel() for p in slow.parameters())
    n_fast = sum(p.numel() for p in fast.parameters())
    header = ("# reference_reach — TRAINED reference policy (behaviour cloning of the scripted expert).\n"
              "# Generated by tools/train_reference.py; do not edit by hand.\n")
    text = yaml.safe_dump(model_yaml(mean, std, n_slow, n_fast, info), sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=120)
    (out / "model.yaml").write_text(header + text, encoding="utf-8")
    print(f"  export: wrote {out / 'model.yaml'}")


# ---------------------------------------------------------------------------- closed-loop check
def sim_check(package: Path, episodes: int, seed: int) -> dict:
    """Drive the sim with the exported graphs in simulated time (no ROS): success per task."""
    from vla_runtime.evaluation import run_eval

    cfg = ROOT / "config" / "sim_panda_reach.yaml"
    over = Path(os.environ.get("TMPDIR", "/tmp")) / f"train_reference_check_{os.getpid()}.yaml"
    over.write_text(yaml.safe_dump({"include": str(cfg), "model": {"package": str(package.resolve())}}))
    try:
        out = {}
        for task in ("touch", "touch_dynamic"):
            r = run_eval(task, episodes, "async", None, over, seed=seed % 1000 + 1, realtime=False, log=None)
            out[task] = {"success_rate": r["success_rate"], "time_to_success_s": r["time_to_success_s"]["mean"]}
        return out
    finally:
        over.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=240, help="expert episodes (half touch, half touch_dynamic)")
    ap.add_argument("--minutes", type=float, default=14.0, help="training time box (wall minutes)")
    ap.add_argument("--data", type=Path, default=None, help="dataset cache (.npz): reused when it exists")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "reference_reach")
    ap.add_argument("--sim-check", type=int, default=6, help="closed-loop episodes per task after export (0: skip)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("this tool needs torch==2.13.0, onnx and onnxscript (pip install torch==2.13.0 onnx onnxscript)",
              file=sys.stderr)
        return 2
    t0 = time.time()
    if args.data is not None and args.data.exists():
        data = dict(np.load(args.data))
        print(f"dataset: loaded {args.data} ({int(data['episode'].max()) + 1} episodes)")
    else:
        print(f"dataset: generating {args.episodes} expert episodes")
        data = generate(args.episodes, args.seed)
        if args.data is not None:
            args.data.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.data, **data)
    n_eps = int(data["episode"].max()) + 1
    print(f"dataset: {len(data['joints'])} samples, {len(data['frames'])} frames ({time.time() - t0:.0f} s)")
    slow, fast, mean, std, info = train(data, args.minutes, args.seed)
    info["episodes"] = n_eps
    export(slow, fast, mean, std, args.out, info)
    if args.sim_check:
        res = sim_check(args.out, args.sim_check, args.seed)
        print(f"sim check (no ROS, simulated time, slow path at 5 Hz): {res}")
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
