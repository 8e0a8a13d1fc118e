"""Flow-matching sampling and real-time-chunking guidance (core/flow.py) on hand-checkable fields."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from test.unit.test_model_spec import flow_spec_data
from vla_runtime.core.flow import FlowHead, FlowSampler, RtcGuidance, guidance_weight, rtc_soft_mask
from vla_runtime.core.model_spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
H, A = 16, 3


def linear_field(seed: int = 0, scale: float = 0.3):
    """v(x) = M·x + b (M mixes the chunk's steps) and its exact VJP cᵀ·∂v/∂x = Mᵀ·c."""
    rng = np.random.default_rng(seed)
    m = scale * rng.standard_normal((H, H)) / math.sqrt(H)
    b = rng.standard_normal((H, A))
    return (lambda x, t: m @ x + b), (lambda x, t, c: m.T @ c)


def point_mass_field(target: np.ndarray, convention: str):
    """The exact velocity when every chunk is ``target``: straight paths from the noise to it.

    noise_at_1: x_t = t·ε + (1 − t)·a → v = dx/dt = (x − a)/t; noise_at_0: v = (a − x)/(1 − t).
    The denoised estimate x + (1 − τ)·v_τ is ``target`` whatever x is, so ∂Â¹/∂x = 0.
    """
    if convention == "noise_at_1":
        return (lambda x, t: (x - target) / t), (lambda x, t, c: c / t)
    return (lambda x, t: (target - x) / (1.0 - t)), (lambda x, t, c: -c / (1.0 - t))


def rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------- the mask
def test_soft_mask_is_the_papers_formula_on_hand_computed_values() -> None:
    # H = 10, d = 2, s = 3: rows 0, 1 frozen; c_i = (H - s - i)/(H - s - d + 1) = (7 - i)/6 for i = 2..6;
    # W_i = c_i (e^c_i - 1)/(e - 1), e.g. c = 1/2: 0.5 * 0.648721 / 1.718282 = 0.188770; rows 7..9 beyond.
    w = rtc_soft_mask(10, 2, 3)
    want = [1.0, 1.0, 0.630948, 0.367706, 0.188770, 0.076746, 0.017591, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(w, want, atol=1e-6)
    assert np.all(np.diff(w) <= 0)
    # d = s = 0, H = 4: no frozen prefix, c_i = (4 - i)/5.
    want = [c * math.expm1(c) / math.expm1(1) for c in (0.8, 0.6, 0.4, 0.2)]
    np.testing.assert_allclose(rtc_soft_mask(4, 0, 0), want)
    np.testing.assert_array_equal(rtc_soft_mask(8, 3, 5), [1, 1, 1, 0, 0, 0, 0, 0])  # d + s = H: no decay region
    np.testing.assert_array_equal(rtc_soft_mask(8, 8, 0), np.ones(8))


def test_guidance_weight_hand_values() -> None:
    # r² = (1 - τ)²/(τ² + (1 - τ)²); weight = min(β, (1 - τ)/(τ r²)).
    assert guidance_weight(0.5, 100.0) == pytest.approx(2.0)  # r² = 0.25/0.5, 0.5/(0.5 * 0.5)
    assert guidance_weight(0.25, 100.0) == pytest.approx(10 / 3)  # r² = 0.5625/0.625 = 0.9, 0.75/(0.25 * 0.9)
    assert guidance_weight(0.9, 100.0) == pytest.approx(9.111111)  # (0.81 + 0.01)/(0.9 * 0.1)
    assert guidance_weight(0.25, 3.0) == 3.0
    assert guidance_weight(0.0, 5.0) == 5.0 and guidance_weight(1.0, 5.0) == 5.0
    assert guidance_weight(0.5, 0.0) == 0.0
    with pytest.raises(ValueError, match="tau must be in \\[0, 1\\], got 1.5"):
        guidance_weight(1.5, 5.0)
    with pytest.raises(ValueError, match="beta must be finite and >= 0, got -1"):
        guidance_weight(0.5, -1.0)


# --------------------------------------------------------------------------- unguided sampling
@pytest.mark.parametrize("convention", ["noise_at_1", "noise_at_0"])
def test_unguided_sampling_is_the_packages_own_euler_rule(convention: str) -> None:
    m = (np.random.default_rng(3).standard_normal((H, H)) / H).astype(np.float32)

    def field(x: np.ndarray, t: float) -> np.ndarray:  # nonlinear and time-dependent
        return np.tanh(m @ x) + np.float32(t) * x

    sampler = FlowSampler(H, A, 7, convention)
    got = sampler.sample(field, rng())
    x = rng().standard_normal((H, A), dtype=np.float32)
    dt = -1 / 7 if convention == "noise_at_1" else 1 / 7
    for k in range(7):
        x = x + dt * field(x, 1.0 - k / 7 if convention == "noise_at_1" else k / 7)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("convention", ["noise_at_1", "noise_at_0"])
def test_a_field_with_a_known_flow_lands_on_its_data(convention: str) -> None:
    """Straight paths: Euler is exact, so the sample is the target from any noise, in both conventions."""
    target = np.random.default_rng(1).standard_normal((H, A))
    v, _ = point_mass_field(target, convention)
    for steps in (1, 4, 10):
        out = FlowSampler(H, A, steps, convention).sample(v, rng(steps), dtype=np.float64)
        np.testing.assert_allclose(out, target, atol=1e-12)


def test_seeded_noise_is_reproducible() -> None:
    sampler = FlowSampler(H, A, 5, "noise_at_1")
    v, _ = linear_field()
    a, b, c = (sampler.sample(v, rng(s)) for s in (11, 11, 12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    still = sampler.sample(lambda x, t: np.zeros_like(x), rng(11))  # a zero field returns its noise
    np.testing.assert_array_equal(still, sampler.draw_noise(rng(11)))
    given = sampler.sample(v, None, noise=sampler.draw_noise(rng(11)))  # an exporter's reference noise
    np.testing.assert_array_equal(given, a)
    with pytest.raises(ValueError, match="exactly one of rng .* and noise"):
        sampler.sample(v, rng(11), noise=sampler.draw_noise(rng(11)))
    with pytest.raises(ValueError, match="exactly one of rng .* and noise"):
        sampler.sample(v, None)
    with pytest.raises(ValueError, match=r"noise has shape \[3, 16\], expected \[16, 3\]"):
        sampler.sample(v, None, noise=np.zeros((3, 16)))


# ----------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("convention", ["noise_at_1", "noise_at_0"])
def test_weight_zero_is_unguided_sampling_bit_for_bit(convention: str) -> None:
    v, vjp = linear_field()
    calls = []

    def counted(x: np.ndarray, t: float) -> np.ndarray:
        calls.append(t)
        return v(x, t)

    sampler = FlowSampler(H, A, 10, convention)
    plan = np.random.default_rng(2).standard_normal((H, A))
    plain = sampler.sample(counted, rng())
    n_plain = len(calls)
    guided = sampler.sample(counted, rng(), RtcGuidance(plan, 4, 6, max_weight=0.0), vjp)
    np.testing.assert_array_equal(guided, plain)
    assert n_plain == 10 and len(calls) == 20
    assert not np.array_equal(sampler.sample(v, rng(), RtcGuidance(plan, 4, 6, max_weight=5.0), vjp), plain)


@pytest.mark.parametrize("convention", ["noise_at_1", "noise_at_0"])
@pytest.mark.parametrize("exact", [True, False], ids=["vjp", "identity"])
def test_large_guidance_reproduces_the_frozen_prefix(convention: str, exact: bool) -> None:
    """β = n corrects a constant-velocity residual in the first step; later steps follow the paper's clipped
    weight. With 50 steps the frozen rows end within 1e-3 of the plan, from any noise."""
    v, vjp = linear_field()
    d, s, steps = 4, 6, 50
    plan = 2.0 * np.random.default_rng(2).standard_normal((H, A))
    plan[H - s:] = np.nan  # beyond the old plan: undefined, must not leak into the result
    sampler = FlowSampler(H, A, steps, convention)
    unguided = sampler.sample(v, rng(), dtype=np.float64)
    for seed in range(5):
        out = sampler.sample(v, rng(seed), RtcGuidance(plan, d, s, max_weight=float(steps)), vjp if exact else None,
                             dtype=np.float64)
        assert np.isfinite(out).all()
        assert np.abs(out[:d] - plan[:d]).max() < 1e-3
        w = rtc_soft_mask(H, d, s)[:, None]
        assert np.abs(w * (out - plan))[d:H - s].max() < np.abs(w * (unguided - plan))[d:H - s].max()


@pytest.mark.parametrize("convention", ["noise_at_1", "noise_at_0"])
def test_exact_guidance_cannot_move_a_model_that_ignores_its_noise(convention: str) -> None:
    """The consequence of ∂Â¹/∂x ≈ I the flow docstring states: on a field whose denoised estimate does
    not depend on x (every sample is the same chunk), the exact guidance gradient is zero and the sample
    stays the model's chunk; the identity approximation still pulls the frozen prefix to the plan."""
    target = np.random.default_rng(1).standard_normal((H, A))
    v, vjp = point_mass_field(target, convention)
    plan = target + 1.0
    sampler = FlowSampler(H, A, 10, convention)
    exact = sampler.sample(v, rng(), RtcGuidance(plan, 4, 6, 10.0), vjp, dtype=np.float64)
    np.testing.assert_allclose(exact, target, atol=1e-9)
    approx = sampler.sample(v, rng(), RtcGuidance(plan, 4, 6, 10.0), None, dtype=np.float64)
    assert np.abs(approx[:4] - plan[:4]).max() < 0.1  # 91 % of the way: the last step's weight is 9.1 of 10
    np.testing.assert_allclose(approx[10:], target[10:], atol=1e-9)  # beyond the old plan: untouched


def test_bad_arguments_name_the_value() -> None:
    plan = np.zeros((H, A))
    for kwargs, match in [
        ({"delay": H + 1, "exec_horizon": 0}, f"delay d must satisfy 0 <= d <= H = {H}, got {H + 1}"),
        ({"delay": -1, "exec_horizon": 0}, "got -1"),
        ({"delay": 4, "exec_horizon": 13}, f"exec_horizon s must satisfy 0 <= s <= H - d = {H - 4} .*got 13"),
        ({"delay": 4, "exec_horizon": -2}, "exec_horizon s .* got -2"),
        ({"delay": 2.0, "exec_horizon": 4}, "delay d must be an integer, got 2.0"),
        ({"delay": True, "exec_horizon": 4}, "delay d must be an integer, got True"),
        ({"delay": 2, "exec_horizon": 4, "max_weight": -1.0}, "beta must be finite and >= 0, got -1.0"),
        ({"delay": 2, "exec_horizon": 4, "max_weight": float("nan")}, "got nan"),
    ]:
        with pytest.raises(ValueError, match=match):
            RtcGuidance(plan, **kwargs)
    with pytest.raises(ValueError, match=r"plan Y must be a non-empty H×A numpy array, got \[16\]"):
        RtcGuidance(np.zeros(H), 2, 4)
    bad = plan.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"finite in its rows 0..11 \(H - s\), got inf at \[3, 1\]"):
        RtcGuidance(bad, 2, 4)
    bad[3, 1] = 0.0
    bad[12:] = np.nan  # rows >= H - s are undefined: accepted
    RtcGuidance(bad, 2, 4)
    sampler = FlowSampler(H, A, 5)
    v, _ = linear_field()
    with pytest.raises(ValueError, match=r"plan Y has shape \[16, 4\], expected \[16, 3\]"):
        sampler.sample(v, rng(), RtcGuidance(np.zeros((H, 4)), 2, 4))
    with pytest.raises(ValueError, match=r"velocity returned shape \[16, 2\], expected \[16, 3\]"):
        sampler.sample(lambda x, t: x[:, :2], rng())
    with pytest.raises(ValueError, match="delay d must satisfy 0 <= d <= H = 10, got 11"):
        rtc_soft_mask(10, 11, 0)
    for args, match in [((H, A, 0), "steps must be >= 1, got 0"),
                        ((H, A, 5, "noise_at_2"), "'noise_at_1' or 'noise_at_0', got 'noise_at_2'"),
                        ((H, A, 5, "noise_at_1", "heun"), "schedule must be 'uniform_euler', got 'heun'"),
                        ((0, A, 5), "horizon must be >= 1, got 0")]:
        with pytest.raises(ValueError, match=match):
            FlowSampler(*args)


# -------------------------------------------------------------------------------- the head
@pytest.fixture(scope="module")
def one_shot_data() -> dict:
    return yaml.safe_load((ROOT / "models" / "timing_reference" / "model.yaml").read_text(encoding="utf-8"))


class LinearGraph:
    """A numpy stand-in for a flow graph: v = M·x_t + t·1 + mean(latent) + proprio, with its exact VJP."""

    def __init__(self, spec: ModelSpec, vjp: bool) -> None:
        self.h, self.a = spec.chunk_horizon, spec.action_dim
        self.m = 0.2 * np.random.default_rng(5).standard_normal((self.h, self.h)) / math.sqrt(self.h)
        self.vjp = vjp
        self.seen: list[dict[str, np.ndarray]] = []

    def __call__(self, feeds):
        self.seen.append({k: v.copy() for k, v in feeds.items()})
        x = feeds["x_t"][0]
        v = self.m @ x + feeds["t"][0] + feeds["latent"].mean() + feeds["proprio"][0]
        out = {"v": v[None].astype(np.float32)}
        if self.vjp:
            out["vjp"] = (self.m.T @ feeds["cot"][0])[None].astype(np.float32)
        return out


@pytest.mark.parametrize("vjp", [True, False])
def test_flow_head_feeds_the_graph_by_role_and_samples(one_shot_data: dict, vjp: bool) -> None:
    spec = ModelSpec.model_validate(flow_spec_data(one_shot_data, vjp=vjp, steps=6))
    graph = LinearGraph(spec, vjp)
    head = FlowHead(spec, graph)
    assert head.has_vjp is vjp
    head.set_latent(np.full((8, 256), 0.5, np.float32))
    head.set_proprio(np.arange(8, dtype=np.float32))
    out = head.sample(rng())
    assert out.shape == (16, 8) and out.dtype == np.float32 and head.calls == 6
    assert [float(f["t"][0]) for f in graph.seen] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    want = FlowSampler(16, 8, 6, "noise_at_1").sample(
        lambda x, t: graph.m @ x + np.float32(t) + np.float32(0.5) + np.arange(8, dtype=np.float32), rng())
    np.testing.assert_allclose(out, want, atol=1e-5)
    plan = np.zeros((16, 8), np.float32)
    graph.seen.clear()
    head.sample(rng(), RtcGuidance(plan, 3, 5, 5.0))
    assert head.calls == (12 if vjp else 6)  # exact guidance: a second call per step with the cotangent
    if vjp:
        assert not graph.seen[0]["cot"].any() and graph.seen[1]["cot"].any()
        head.sample(rng(), RtcGuidance(plan, 3, 5, 5.0), use_vjp=False)
        assert head.calls == 6
    else:
        with pytest.raises(ValueError, match="exports no guidance VJP"):
            head.sample(rng(), RtcGuidance(plan, 3, 5, 5.0), use_vjp=True)


def test_flow_head_refuses_what_it_cannot_drive(one_shot_data: dict) -> None:
    with pytest.raises(ValueError, match="fast part is kind 'one_shot', not 'flow_matching'"):
        FlowHead(ModelSpec.model_validate(one_shot_data), lambda feeds: {})
    data = flow_spec_data(one_shot_data)
    data["fast"]["inputs"].append({"name": "temperature", "shape": [1], "dtype": "float32", "role": "other"})
    with pytest.raises(ValueError, match=r"roles the runtime cannot feed: \[\('temperature', 'other'\)\]"):
        FlowHead(ModelSpec.model_validate(copy.deepcopy(data)), lambda feeds: {})
