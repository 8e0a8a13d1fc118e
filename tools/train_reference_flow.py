#!/usr/bin/env python3
"""Train and export ``models/reference_reach_flow/``: the reference policy with a flow-matching fast head.

One command, on CPU; 46 minutes on this shared 2-core machine (expert episodes 11, 32-step relabelling 4,
synthetic labels 6, training 23 for 6000 steps, export 1; the sim-time check then 2)::

    .venv/bin/python tools/train_reference_flow.py          # dataset, training, export, sim-time check
    .venv/bin/python tools/train_reference_flow.py --check-only   # only the sim-time check of the package
    .venv/bin/python tools/train_reference_flow.py --horizon 48 --out models/reference_reach_flow48

The last makes the shipped 48-step package (1.6 s, for inference delays up to ~0.75 s with one
inference in flight; the package is named after ``--out``): 28 minutes here on 12-06 (dataset
25, of which 48-step relabelling 5.5 and synthetic labels 8; training 6000 steps 1.7; export and
sim-time check 2.5). Its sim-time check, 10 episodes per task and mode: every tick without
delay touch 10/10 in 1.79 s, touch_dynamic 10/10 in 4.20 s; with 300 ms delay, touch /
touch_dynamic: naive switch 10/10 in 1.85 s, 0.108 rad / 10/10 in 2.91 s, 0.083 rad; RTC identity
Jacobian 10/10 in 1.88 s, 0.033 rad / 10/10 in 3.20 s, 0.026 rad; RTC exported VJP 10/10 in
1.87 s, 0.075 rad / 10/10 in 3.15 s, 0.055 rad.

It shares the data code of ``tools/train_reference.py`` (the same scripted-expert episodes, seed and
off-episode synthetic labels) and differs in the fast part:

* **Slow part: reused, not retrained.** ``models/reference_reach/slow.onnx`` is copied into the new
  package unchanged. Its weights are read back into that tool's torch ``Slow`` module (checked
  against onnxruntime on the dataset's frames) only to compute training latents: every frame's
  latent, and for the synthetic (state, target) pairs the latent of the target's projected keypoint.
* **Fast part: a flow-matching velocity field** ``v(x_t, t, latent, proprio)`` over an H = 32 chunk
  (1.07 s at 30 Hz, long enough to cover a slow inference plus an execution horizon), in the π0 time
  convention (``x_t = t·ε + (1 − t)·a``, noise at ``t = 1``, ``v = dx/dt = ε − a``). An MLP predicts
  the clean chunk as a residual on the current joints, ``â(x_t, t, latent, proprio)``, and the graph
  returns the velocity that denoiser implies, ``v = (x_t − â)/t`` (``t`` clamped at 1e-3): the
  flow-matching loss weighted by ``t²``, which keeps the network's output at the scale of the
  actions. Labels are the expert's 32-step chunks at the recorded states (the 16-step dataset
  relabelled with the same deterministic expert).
* **Export**: ONE velocity evaluation, plus its vector-Jacobian product for real-time-chunking
  guidance in the same graph (input ``guidance_cotangent`` c, output ``guidance_vjp`` = cᵀ·∂v/∂x_t).
  ``torch.func.vjp`` does not go through ``torch.onnx.export(dynamo=True)`` directly (torch 2.13:
  "attempted to apply meta conversion to view functorch tensor" on the module's weights inside
  the transform); traced first into plain aten ops with ``make_fx``, the joint graph exports, and
  onnxruntime matches torch autograd to ~1e-7. Weights are stored once (~2.7 MB).
* **Check** in simulated time, no ROS (like ``train_reference.py --sim-check``, but sampling with
  :class:`vla_runtime.core.flow.FlowHead`): a chunk every tick with no delay, and asynchronous
  execution with an emulated 300 ms inference (d = 9 steps, execution horizon s = 10) switching
  naively, with RTC guidance under the identity Jacobian, and with the exported VJP. Reports
  success, time to success and the jump at each chunk switch.

Measured for the shipped package (10 episodes per task and mode; success / mean time to success /
mean joint-target jump at a chunk switch): every tick without delay, touch 10/10 in 1.32 s and
touch_dynamic 10/10 in 2.70 s. With 300 ms delay, touch / touch_dynamic: naive switch 10/10 in 1.88 s,
0.113 rad / 10/10 in 3.38 s, 0.074 rad; RTC identity Jacobian 10/10 in 1.90 s, 0.050 rad / 10/10 in
3.16 s, 0.036 rad; RTC exported VJP 10/10 in 1.92 s, 0.083 rad / 10/10 in 3.40 s, 0.058 rad (β = 5).
The exact VJP steers less than the identity pull: this policy imitates a deterministic expert, so
its denoised chunk hardly depends on the noise, and the exact gradient respects that
(:mod:`vla_runtime.core.flow`).

Needs torch==2.13.0, onnx and onnxscript (training only; the runtime never imports torch).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import train_reference as ref  # noqa: E402 - after the sys.path insert above

from vla_runtime.sim.tasks import ARM_JOINTS, CONTROL_HZ, GRIPPER_OPEN  # noqa: E402 - after the sys.path insert

H = 32                     # chunk horizon: 1.07 s at 30 Hz
A = ref.A                  # 7 joints + gripper
K, D = ref.K, ref.D
STEPS = 10                 # Euler steps (π0's default)
T_MIN = 1e-3               # the velocity's denominator never gets below this
N_FREQ = 16                # sinusoidal time features (sin and cos each)
WIDTH = 512
SLOW_SOURCE = ROOT / "models" / "reference_reach" / "slow.onnx"
IO_IN = ["noisy_actions", "flow_time", "latent", "proprio", "guidance_cotangent"]
IO_OUT = ["velocity", "guidance_vjp"]


# ---------------------------------------------------------------------------------- labels
def relabel(data: dict[str, np.ndarray], horizon: int) -> np.ndarray:
    """The expert's ``horizon``-step chunk at every recorded (joints, target): (N, horizon, 7).

    The expert is Markov and deterministic, so its first 16 rows are the dataset's 16-step labels.
    """
    from vla_runtime.core.config import load_config
    from vla_runtime.sim.robot import SimRobot
    from vla_runtime.sim.tasks import ReachExpert

    if "target" not in data:
        raise SystemExit("the dataset cache has no per-tick 'target' column (written by train_reference.py since "
                         "the flow head was added): regenerate it (drop --data or point it at a new file)")
    robot = SimRobot(load_config(ROOT / "config" / "sim_panda.yaml"))
    expert = ReachExpert(robot.model, [robot.home[j] for j in ARM_JOINTS])
    q, target = data["joints"].astype(np.float64), data["target"].astype(np.float64)
    out = np.empty((len(q), horizon, len(ARM_JOINTS)), np.float32)
    t0 = time.time()
    for i in range(len(q)):
        out[i] = expert.chunk(q[i], target[i], horizon)
    head = np.abs(out[:, : ref.H] - data["actions"]).max()
    print(f"  relabel: {len(q)} ticks with {horizon}-step expert chunks in {time.time() - t0:.0f} s "
          f"(first {ref.H} rows vs the dataset's labels: max diff {head:.1e})", flush=True)
    return out


# ---------------------------------------------------------------------------------- models
def slow_from_onnx(path: Path):
    """train_reference's torch ``Slow`` with the weights of an exported ``slow.onnx``."""
    import onnx
    import torch
    from onnx import numpy_helper

    slow, _ = ref.build_models()
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = slow.state_dict()
    for name in state:
        if name == "log_temp":  # the exporter folded exp(log_temp) into a constant named 'exp'
            state[name] = torch.tensor(math.log(float(inits["exp"])))
        elif name in inits:
            state[name] = torch.from_numpy(inits[name].copy())
        else:
            raise SystemExit(f"{path}: no initializer {name!r} to load the slow model from")
    slow.load_state_dict(state)
    return slow.eval()


def slow_latents(slow, data: dict[str, np.ndarray], onnx_path: Path) -> np.ndarray:
    """Latent of every dataset frame through the reused slow model; checked against onnxruntime."""
    import onnxruntime as ort
    import torch

    frames = torch.from_numpy(data["frames"]).permute(0, 3, 1, 2).contiguous()
    e = data["frame_episode"]
    ids, mask = torch.from_numpy(data["ids"][e]), torch.from_numpy(data["mask"][e])
    with torch.no_grad():
        lat = torch.cat([slow(frames[i:i + 256], ids[i:i + 256], mask[i:i + 256])
                         for i in range(0, len(frames), 256)]).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in np.linspace(0, len(frames) - 1, 20).astype(int):
        got = sess.run(None, {"image": frames[i:i + 1].numpy(), "instruction_ids": ids[i:i + 1].numpy(),
                              "instruction_mask": mask[i:i + 1].numpy()})[0]
        worst = max(worst, float(np.abs(got - lat[i:i + 1]).max()))
    print(f"  slow: {len(lat)} frame latents from {onnx_path.relative_to(ROOT)} (torch vs onnxruntime max diff "
          f"{worst:.1e})", flush=True)
    if worst > 1e-3:
        raise SystemExit(f"the slow model read back from {onnx_path} disagrees with onnxruntime ({worst})")
    return lat.astype(np.float32)


def build_velocity():
    import torch
    from torch import nn

    class Velocity(nn.Module):
        """(noisy_actions (1,H,A), flow_time (1,), latent (1,K,D), proprio (1,A)) → velocity (1,H,A).

        π0 convention: noise at t = 1. ``v = (x_t − â)/t`` with the denoised chunk
        ``â = proprio + MLP(x_t, sin/cos(t), latent, proprio)`` (a residual on the joints).
        """

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("freq", math.pi * torch.exp(torch.linspace(0.0, math.log(100.0), N_FREQ)))
            self.net = nn.Sequential(nn.Linear(H * A + 2 * N_FREQ + K * D + A, WIDTH), nn.GELU(),
                                     nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, H * A))

        def denoise(self, x, t, latent, proprio):
            b = x.shape[0]
            ang = t.reshape(b, 1) * self.freq
            feat = torch.cat([x.reshape(b, -1), torch.sin(ang), torch.cos(ang), latent.reshape(b, -1), proprio], -1)
            return proprio[:, None, :] + self.net(feat).view(b, H, A)

        def forward(self, x, t, latent, proprio):
            a_hat = self.denoise(x, t, latent, proprio)
            return (x - a_hat) / t.reshape(-1, 1, 1).clamp(min=T_MIN)

    torch.manual_seed(ref.SEED)
    return Velocity()


# ---------------------------------------------------------------------------------- training
def train(data: dict[str, np.ndarray], labels: np.ndarray, frame_lat: np.ndarray, synth: dict | None,
          synth_lat: np.ndarray | None, steps: int, minutes: float, seed: int, batch: int = 256):
    """Flow matching on the denoised chunk (see the module docstring): episode ticks with the latent of
    a frame 0–1.2 s older (as train_reference does), plus the synthetic (state, target) pairs.

    ``steps`` optimiser steps on a cosine schedule (a step count, not a time box, so the model does
    not depend on how busy the machine is); ``minutes`` only caps the wall time."""
    import torch

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    rng = np.random.default_rng(seed)
    model = build_velocity()
    mean, std = ref.stats(data)

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    def grip(chunks: np.ndarray) -> np.ndarray:  # append the (open, constant) gripper column
        return np.concatenate([chunks, np.full(chunks.shape[:2] + (1,), GRIPPER_OPEN, np.float32)], 2)

    prop = torch.from_numpy(norm(np.c_[data["joints"], data["gripper"]]))
    act = torch.from_numpy(norm(grip(labels)))
    lat = torch.from_numpy(frame_lat)
    ep, f_ep, f_tick = data["episode"], data["frame_episode"], data["frame_tick"]
    starts = np.searchsorted(ep, np.arange(ep.max() + 2))
    n_eps = int(ep.max()) + 1
    val_eps = set(range(n_eps - max(2, n_eps // 20), n_eps))
    frames_train = np.array([i for i in range(len(f_ep)) if f_ep[i] not in val_eps])
    frames_val = np.array([i for i in range(len(f_ep)) if f_ep[i] in val_eps])
    span = (ref.MAX_DELAY_FRAMES + 1) * ref.FRAME_EVERY
    if synth is not None:
        assert synth_lat is not None
        s_prop = torch.from_numpy(norm(np.c_[synth["joints"], np.full(len(synth["joints"]), GRIPPER_OPEN)]))
        s_act = torch.from_numpy(norm(grip(synth["actions"])))
        s_lat = torch.from_numpy(synth_lat)
        n_s = len(s_prop)
        s_train, s_val = np.arange(0, n_s - n_s // 20), np.arange(n_s - n_s // 20, n_s)
    w = torch.ones(H, A)
    w[:, -1] = 0.1  # the gripper never moves here
    gen = torch.Generator().manual_seed(seed)

    def draw(frame_pool: np.ndarray, synth_pool: np.ndarray | None):
        fi = rng.choice(frame_pool, batch)
        e = f_ep[fi]
        rows = np.minimum(starts[e] + f_tick[fi] + rng.integers(0, span, batch), starts[e + 1] - 1)
        parts = [(lat[fi], prop[rows], act[rows])]
        if synth is not None and synth_pool is not None:
            j = rng.choice(synth_pool, batch)
            parts.append((s_lat[j], s_prop[j], s_act[j]))
        return [torch.cat(p) for p in zip(*parts)]

    def loss_of(latent, proprio, a):
        t = torch.rand(len(a), generator=gen)
        eps = torch.randn(a.shape, generator=gen)
        x = t[:, None, None] * eps + (1 - t[:, None, None]) * a
        a_hat = model.denoise(x, t, latent, proprio)
        return (((a_hat - a) ** 2) * w).mean() * 100.0

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    budget, t0, step, ema = minutes * 60.0, time.time(), 0, None
    while step < steps:
        elapsed = time.time() - t0
        if elapsed > budget:
            print(f"  train: STOPPED by the {minutes:g} min cap after {step} of {steps} steps", flush=True)
            break
        frac = step / steps
        lr = 1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) if step > 50 else 1e-3 * (step + 1) / 51
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        loss = loss_of(*draw(frames_train, s_train if synth is not None else None))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.98 * ema + 0.02 * float(loss.detach())
        step += 1
        if step % 500 == 0:
            model.eval()
            with torch.no_grad():
                val = np.mean([float(loss_of(*draw(frames_val, s_val if synth is not None else None)))
                               for _ in range(4)])
            print(f"  train: step {step}, {elapsed:.0f} s, lr {lr:.2e}, loss {ema:.4f}, val {val:.4f}", flush=True)
    model.eval()
    print(f"  train: {step} steps in {time.time() - t0:.0f} s")
    return model, mean, std, {"steps": step, "train_loss": ema}


# ------------------------------------------------------------------------------------ export
def export_fast(model, path: Path) -> dict:
    """One velocity evaluation and its VJP (w.r.t. noisy_actions) as one ONNX graph; checked against torch."""
    import onnxruntime as ort
    import torch
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    for p in model.parameters():
        p.requires_grad_(False)

    def velocity_and_vjp(x, t, latent, proprio, cotangent):
        v, pullback = torch.func.vjp(lambda x_: model(x_, t, latent, proprio), x)
        return v, pullback(cotangent)[0]

    g = torch.Generator().manual_seed(ref.SEED)
    args = (torch.randn(1, H, A, generator=g), torch.rand(1, generator=g), torch.randn(1, K, D, generator=g),
            torch.randn(1, A, generator=g), torch.randn(1, H, A, generator=g))
    traced = make_fx(velocity_and_vjp)(*args)

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.traced = traced

        def forward(self, x, t, latent, proprio, cotangent):
            return tuple(self.traced(x, t, latent, proprio, cotangent))

    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    torch.onnx.export(Graph().eval(), args, str(path), dynamo=True, input_names=IO_IN, output_names=IO_OUT,
                      external_data=False, optimize=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"velocity": 0.0, "guidance_vjp": 0.0}
    for _ in range(5):
        a = tuple(torch.randn(x.shape, generator=g) for x in args)
        a = (a[0], torch.rand(1, generator=g) * 0.9 + 0.1, *a[2:])  # package times the sampler visits
        got = sess.run(None, {n: x.numpy() for n, x in zip(IO_IN, a)})
        x = a[0].clone().requires_grad_(True)
        with torch.enable_grad():
            v = model(x, *a[1:4])
            (vjp,) = torch.autograd.grad(v, x, a[4])
        for name, want, have in zip(IO_OUT, (v, vjp), got):
            scale = float(want.detach().abs().max()) + 1e-6
            worst[name] = max(worst[name], float(np.abs(have - want.detach().numpy()).max()) / scale)
    print(f"  export: {path} ({path.stat().st_size / 1e6:.2f} MB), onnxruntime vs torch (autograd for the VJP), "
          f"max error relative to the output's scale: {worst}")
    if max(worst.values()) > 1e-4:
        raise SystemExit(f"{path}: onnxruntime disagrees with torch ({worst})")
    return worst


def model_yaml(mean: np.ndarray, std: np.ndarray, n_fast: int, info: dict, name: str) -> dict:
    spec = ref.model_yaml(mean, std, 0, n_fast, info)
    spec.update({
        "name": name,
        "purpose": "reference policy with a flow-matching fast head: touch the red/green/blue cube in the "
                   "simulated Panda scene",
        "description": (
            f"The reference_reach slow model (its slow.onnx, unchanged) with a flow-matching fast head: a velocity "
            f"field v(x_t, t, latent, proprio) over a {H}x{A} joint-position chunk ({H / CONTROL_HZ:.2f} s at "
            f"{CONTROL_HZ:g} Hz), pi0 time convention (noise at t = 1), {STEPS} uniform Euler steps. An MLP "
            f"({n_fast / 1e6:.2f}M params) predicts the clean chunk as a residual on the joints and the graph "
            f"returns v = (x_t - a_hat)/t, with its vector-Jacobian product for real-time-chunking guidance. "
            f"Behaviour-cloned from {info.get('episodes')} expert episodes + {info.get('synthetic')} off-episode "
            f"expert labels relabelled to {H} steps, {info.get('steps')} steps; regenerate with "
            f"tools/train_reference_flow.py."),
        "chunk_horizon": H,
    })
    spec["fast"] = {
        "onnx": "fast.onnx",
        "kind": "flow_matching",
        "flow": {"steps": STEPS, "time_convention": "noise_at_1", "schedule": "uniform_euler"},
        "inputs": [
            {"name": "noisy_actions", "shape": [1, H, A], "dtype": "float32", "role": "noisy_actions"},
            {"name": "flow_time", "shape": [1], "dtype": "float32", "role": "flow_time"},
            {"name": "latent", "shape": [1, K, D], "dtype": "float32", "role": "latent"},
            {"name": "proprio", "shape": [1, A], "dtype": "float32", "role": "proprio"},
            {"name": "guidance_cotangent", "shape": [1, H, A], "dtype": "float32", "role": "guidance_cotangent"},
        ],
        "outputs": [
            {"name": "velocity", "shape": [1, H, A], "dtype": "float32", "role": "velocity"},
            {"name": "guidance_vjp", "shape": [1, H, A], "dtype": "float32", "role": "guidance_vjp"},
        ],
    }
    return spec


def export(model, mean, std, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SLOW_SOURCE, out / "slow.onnx")
    print(f"  export: {out / 'slow.onnx'} (copied from {SLOW_SOURCE.relative_to(ROOT)})")
    export_fast(model, out / "fast.onnx")
    n_fast = sum(p.numel() for p in model.parameters())
    header = (f"# {out.name} — TRAINED reference policy with a flow-matching fast head (behaviour cloning\n"
              f"# of the scripted expert). Generated by tools/train_reference_flow.py; do not edit by hand.\n")
    text = yaml.safe_dump(model_yaml(mean, std, n_fast, info, out.name), sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=120)
    (out / "model.yaml").write_text(header + text, encoding="utf-8")
    from vla_runtime.engines.model_package import validate_package

    validate_package(out)
    print(f"  export: wrote {out / 'model.yaml'} (validated against both graphs)")


# ---------------------------------------------------------------------------- closed-loop check
@dataclass(frozen=True)
class Mode:
    """How the sim-time check executes chunks."""

    name: str
    delay: int            # d: steps between the observation and the chunk being usable
    exec_horizon: int     # s: steps of each chunk executed before the next inference starts
    guidance: str | None  # None, "identity" or "vjp"
    beta: float = 5.0


MODES = (
    Mode("every tick, no delay", 0, 1, None),
    Mode("300 ms delay, naive switch", 9, 10, None),
    Mode("300 ms delay, RTC identity Jacobian", 9, 10, "identity"),
    Mode("300 ms delay, RTC exported VJP", 9, 10, "vjp"),
)


def flow_episode(robot, pkg, head, cfg, task: str, seed: int, mode: Mode) -> dict:
    """One episode in simulated time: the slow graph at the config's slow rate, flow chunks as ``mode`` says.

    An inference launched at tick k observes the joints and the newest latent at k; its chunk's row i
    is meant for tick k + i and becomes usable at k + d, from row d on (rows < d are the frozen
    prefix: they execute from the previous chunk). The next inference launches at k + s.
    """
    from vla_runtime.core.flow import RtcGuidance
    from vla_runtime.core.policy_io import SlowFeeds
    from vla_runtime.sim.controllers import TrajectoryCommand
    from vla_runtime.sim.scene import sample_cube_poses
    from vla_runtime.sim.tasks import SUCCESS_RADIUS_M, make_episode, tcp_from_hand

    space = pkg.action_space
    arm_cols = [space.dim_names.index(j) for j in ARM_JOINTS]
    dt = 1.0 / pkg.spec.control_rate_hz
    cam = cfg.cameras[0]
    slow_every = max(1, int(round(CONTROL_HZ / cfg.rates.slow_hz)))
    robot.reset(seed)
    poses = sample_cube_poses(seed, "panda")
    for n, (p, q) in poses.items():
        robot.move_object(n, p, q)
    spec = make_episode(task, seed, poses)
    enc = pkg.tokenizer.encode(spec.instruction)
    slow_feeds = SlowFeeds(pkg.spec.slow, [c.name for c in cfg.cameras])
    names = list(robot.joint_names)
    finger = names.index("panda_finger_joint1")
    rng = np.random.default_rng([seed, 20261204])
    latent = cur = pending = None
    next_launch = 0
    jumps: list[float] = []
    t0 = robot.time
    success_t, d_min = None, float("inf")
    for k in range(int(spec.time_limit_s * CONTROL_HZ)):
        t = k * dt
        target = spec.target_position(t, poses[spec.target][0])
        if spec.motion is not None:
            robot.move_object(spec.target, target)
        p, q = robot.ee_pose("arm")
        dist = float(np.linalg.norm(tcp_from_hand(p, q) - target))
        d_min = min(d_min, dist)
        if dist <= SUCCESS_RADIUS_M:
            success_t = t
            break
        if k % slow_every == 0:
            img = robot.render(cam.name, cam.width, cam.height)
            latent = next(iter(pkg.slow_engine.infer(slow_feeds.build({cam.name: img}, enc.ids, enc.mask)).values()))
        if pending is not None and pending[0] == k:  # (ready tick, launch tick, chunk, raw) → current
            if cur is not None:
                jumps.append(float(np.abs(pending[2][k - pending[1]] - cur[1][k - cur[0]]).max()))
            cur, pending = pending[1:], None
        if latent is not None and pending is None and k >= next_launch:
            js = robot.joint_state()
            state = {n: float(js.positions[i]) for i, n in enumerate(names)}
            state["gripper/gripper"] = float(js.positions[finger])
            head.set_latent(latent)
            head.set_proprio(pkg.proprio(state))
            guidance = None
            if mode.guidance is not None and cur is not None:
                s = k - cur[0]
                plan = np.full((H, A), np.nan, np.float32)
                plan[: H - s] = cur[2][s:]
                guidance = RtcGuidance(plan, mode.delay, s, mode.beta)
            raw = head.sample(rng, guidance, use_vjp=mode.guidance == "vjp")
            chunk = space.to_absolute(space.decode(raw), state)[:, arm_cols]
            entry = (k, chunk, raw)  # (launch tick, arm joint targets, model-space chunk)
            if mode.delay == 0:
                cur = entry
            else:
                pending = (k + mode.delay, *entry)
            next_launch = k + mode.exec_horizon
        if cur is not None and k - cur[0] < H:
            rows = cur[1][k - cur[0]:]
            robot.accept("arm_controller", TrajectoryCommand(list(ARM_JOINTS), [i * dt for i in range(len(rows))],
                                                             rows.tolist()))
        robot.step(max(1, int(round((t0 + (k + 1) * dt - robot.time) / robot.model.opt.timestep))))
    return {"success": success_t is not None, "time_to_success_s": success_t, "min_distance_m": d_min,
            "jumps_rad": jumps}


def sim_check(package: Path, episodes: int, seed: int, modes=MODES) -> dict:
    """Every mode × task in simulated time; success, time to success and chunk-switch jumps."""
    from vla_runtime.core.config import load_config
    from vla_runtime.core.flow import FlowHead
    from vla_runtime.engines.model_package import load_model_package
    from vla_runtime.sim.robot import SimRobot

    cfg = load_config(ROOT / "config" / "sim_panda_reach.yaml")
    robot = SimRobot(cfg)
    out: dict = {}
    with load_model_package(package, {"intra_op_threads": 1}) as pkg:
        assert pkg.fast_engine is not None
        head = FlowHead(pkg.spec, pkg.fast_engine.infer)
        for mode in modes:
            for task in ("touch", "touch_dynamic"):
                t0 = time.time()
                rows = [flow_episode(robot, pkg, head, cfg, task, (seed % 1000 + 1) * 1000 + i, mode)
                        for i in range(episodes)]
                ok = [r["time_to_success_s"] for r in rows if r["success"]]
                jumps = [j for r in rows for j in r["jumps_rad"]]
                res = {"success_rate": len(ok) / len(rows), "episodes": len(rows),
                       "time_to_success_s": round(float(np.mean(ok)), 3) if ok else None,
                       "switch_jump_rad_mean": round(float(np.mean(jumps)), 4) if jumps else None,
                       "switch_jump_rad_p90": round(float(np.percentile(jumps, 90)), 4) if jumps else None}
                out.setdefault(mode.name, {})[task] = res
                print(f"  sim check: {mode.name:38s} {task:13s} {res} ({time.time() - t0:.0f} s)", flush=True)
    return out


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    global H  # the tool's one chunk-length setting (--horizon), read by every stage below
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=240, help="expert episodes (half touch, half touch_dynamic)")
    ap.add_argument("--steps", type=int, default=6000, help="training steps (batches of 256 + 256 synthetic)")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time cap on training (minutes)")
    ap.add_argument("--data", type=Path, default=None, help="dataset cache (.npz): reused when it exists")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "reference_reach_flow")
    ap.add_argument("--sim-check", type=int, default=10, help="closed-loop episodes per task and mode (0: skip)")
    ap.add_argument("--check-only", action="store_true", help="only the sim-time check of the package in --out")
    ap.add_argument("--synthetic", type=int, default=40000,
                    help="extra expert labels at off-episode (state, target) pairs (0: none)")
    ap.add_argument("--seed", type=int, default=ref.SEED)
    ap.add_argument("--horizon", type=int, default=H,
                    help="chunk steps at 30 Hz; with one inference in flight the chunk must last twice the "
                         "inference delay (48 = 1.6 s covers 500 ms with margin)")
    args = ap.parse_args(argv)
    H = args.horizon
    t0 = time.time()
    if args.check_only:
        res = sim_check(args.out, args.sim_check, args.seed)
        print(yaml.safe_dump(res, sort_keys=False))
        return 0
    if importlib.util.find_spec("torch") is None:
        print("this tool needs torch==2.13.0, onnx and onnxscript (pip install torch==2.13.0 onnx onnxscript)",
              file=sys.stderr)
        return 2
    if args.data is not None and args.data.exists():
        data = dict(np.load(args.data))
        print(f"dataset: loaded {args.data} ({int(data['episode'].max()) + 1} episodes)")
    else:
        print(f"dataset: generating {args.episodes} expert episodes")
        data = ref.generate(args.episodes, args.seed)
        if args.data is not None:
            args.data.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.data, **data)
    labels = relabel(data, H)
    slow = slow_from_onnx(SLOW_SOURCE)
    frame_lat = slow_latents(slow, data, SLOW_SOURCE)
    synth = synth_lat = None
    if args.synthetic > 0:
        import torch

        from vla_runtime.core.text import WordTokenizer

        synth = ref.synthetic_states(data, args.synthetic, args.seed, horizon=H)
        tok = WordTokenizer(ref.VOCAB, ref.L, "<pad>", "<unk>")
        enc = [tok.encode(f"touch the {c} cube") for c in ("red", "green", "blue")]
        ids = torch.from_numpy(np.stack([e.ids.reshape(ref.L) for e in enc]).astype(np.int64))[synth["colour"]]
        mask = torch.from_numpy(np.stack([e.mask.reshape(ref.L) for e in enc]).astype(np.int64))[synth["colour"]]
        kp = torch.from_numpy((ref.camera_projection()(synth["target"]) / ref.IMG * 2.0 - 1.0).astype(np.float32))
        with torch.no_grad():
            synth_lat = slow.latent_at(kp, ids, mask).numpy().astype(np.float32)
    print(f"data ready ({time.time() - t0:.0f} s)")
    model, mean, std, info = train(data, labels, frame_lat, synth, synth_lat, args.steps, args.minutes, args.seed)
    info.update(synthetic=args.synthetic, episodes=int(data["episode"].max()) + 1)
    export(model, mean, std, args.out, info)
    if args.sim_check:
        res = sim_check(args.out, args.sim_check, args.seed)
        print("sim check (no ROS, simulated time, slow path at 5 Hz):\n" + yaml.safe_dump(res, sort_keys=False))
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
