"""Flow-matching action heads: the sampling loop the runtime runs, with real-time chunking guidance.

A flow-matching fast part (``fast.kind: flow_matching`` in ``model.yaml``) is one velocity
evaluation ``v(x, t | latent, proprio)`` over a noisy chunk ``x`` (H×A, model space). The runtime
integrates it from Gaussian noise to a chunk (:class:`FlowSampler`), and while a previous chunk is
still executing it can steer the integration towards that plan: real-time chunking (RTC), Black,
Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies", arXiv:2506.07339.

**Time convention.** The runtime works in the RTC paper's time ``τ ∈ [0, 1]``: ``τ = 0`` is pure
noise, ``τ = 1`` the chunk, and sampling steps ``x ← x + v_τ/n`` for ``τ = 0, 1/n, …, (n−1)/n``.
A package declares its own convention (:class:`~vla_runtime.core.model_spec.FlowSpec`); its graph
always returns ``dx/dt`` in its own time ``t``, and :class:`FlowSampler` maps it:

================  ==============  ===================
package           its time        velocity in τ
================  ==============  ===================
``noise_at_0``    ``t = τ``       ``v_τ = v``
``noise_at_1``    ``t = 1 − τ``   ``v_τ = −v``
================  ==============  ===================

(``noise_at_1`` is π0 / openpi / LeRobot: ``x_{t+dt} = x_t + dt·v``, ``dt = −1/n``, from ``t = 1``.)
Unguided sampling applies exactly the package's own Euler rule, at times ``t_k = 1 − k/n`` (or
``k/n``) computed, not accumulated.

**RTC guidance** (paper §4, Algorithm 1). Given the executing plan ``Y`` (H×A, model space, row
``i`` = the action the old plan puts at the new chunk's step ``i``), the inference delay ``d`` (steps
that execute from the old plan before the new chunk can start) and ``s`` (steps of the old plan
already executed when this inference started; its rows ``≥ H − s`` are undefined), every Euler step
becomes::

    Â¹ = x + (1 − τ)·v_τ(x)                                   (paper Eq. 3)
    g  = (Y − Â¹)ᵀ · diag(W) · ∂Â¹/∂x                          (the guidance gradient, Eq. 2)
    x ← x + (1/n)·(v_τ(x) + min(β, (1 − τ)/(τ·r_τ²))·g),      r_τ² = (1 − τ)²/(τ² + (1 − τ)²)  (Eqs. 2, 4)

with the soft mask ``W`` of Eq. 5 (:func:`rtc_soft_mask`): 1 on the frozen prefix, decaying
exponentially over the rest of the old plan, 0 where the old plan ends. (Equation numbers are those
of arXiv:2506.07339v1 as recalled when this was written; the formulas are the ones in the text.)

ONNX Runtime has no autodiff, so ``∂Â¹/∂x = I + (1 − τ)·∂v_τ/∂x`` comes from the package when its
graph exports the vector-Jacobian product of its velocity (roles ``guidance_cotangent`` →
``guidance_vjp``); that costs a second graph call per guided step. Without one, the runtime takes
**∂Â¹/∂x ≈ I**: each weighted row of ``x`` is pulled straight towards its row of ``Y``, one call
per step. The consequence: guidance no longer goes through the model. The exact gradient moves
``x`` only in directions that change the model's denoised estimate ``Â¹``, so it respects what the
model is sure of (a model whose estimate ignores the noise entirely, e.g. one trained on a
deterministic expert, cannot be steered at all: its exact gradient is zero) and it spreads a
prefix correction to later steps the way the model correlates them. The identity pull overrides the
model on the weighted rows whether or not the model agrees, and later steps see the correction only
through later velocity evaluations. So the frozen prefix is matched either way (on a strongly
guided field, to the same tolerance), but with the approximation the rest of the chunk is not
guaranteed to be what the model would have produced after that prefix: continuity is enforced,
consistency is only encouraged.

Pure numpy: the graph is reached through a callable (``Engine.infer`` or any function of the same
shape), so the sampler is tested on hand-checkable fields without ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from vla_runtime.core.model_spec import FlowSpec, ModelSpec, TensorSpec

#: ``velocity(x, t) → v``: the package's velocity at noisy chunk ``x`` (H×A) and package time ``t``.
VelocityFn = Callable[[np.ndarray, float], np.ndarray]
#: ``vjp(x, t, c) → cᵀ·∂v/∂x``: the package's velocity VJP at ``(x, t)`` for cotangent ``c`` (H×A).
VjpFn = Callable[[np.ndarray, float, np.ndarray], np.ndarray]
#: Runs the fast graph once: feeds by tensor name → outputs by tensor name (``Engine.infer``).
InferFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

#: Default β, the largest guidance weight. It sets the first step's weight (τ = 0): β/n = 1 removes a
#: constant-velocity field's residual in that step, β/n > 2 overshoots it. 5 suits 5–10 steps.
DEFAULT_MAX_GUIDANCE = 5.0


def _index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_rtc_indices(horizon: int, delay: int, exec_horizon: int) -> tuple[int, int, int]:
    h = _index("horizon H", horizon)
    d = _index("delay d", delay)
    s = _index("exec_horizon s", exec_horizon)
    if h < 1:
        raise ValueError(f"horizon H must be >= 1, got {h}")
    if not 0 <= d <= h:
        raise ValueError(f"delay d must satisfy 0 <= d <= H = {h}, got {d}")
    if not 0 <= s <= h - d:
        raise ValueError(f"exec_horizon s must satisfy 0 <= s <= H - d = {h - d} (H = {h}, d = {d}), got {s}")
    return h, d, s


def rtc_soft_mask(horizon: int, delay: int, exec_horizon: int) -> np.ndarray:
    """RTC's soft mask ``W`` over the new chunk's steps (paper Eq. 5).

    ``W_i = 1`` for ``i < d`` (the frozen prefix: those steps execute from the old plan whatever
    this inference returns); ``W_i = c_i·(e^{c_i} − 1)/(e − 1)`` with
    ``c_i = (H − s − i)/(H − s − d + 1)`` for ``d ≤ i < H − s`` (the rest of the old plan, trusted
    less and less); ``W_i = 0`` for ``i ≥ H − s`` (beyond the old plan).

    Args:
        horizon: H, steps per chunk.
        delay: d, steps that execute before the new chunk can start (0 ≤ d ≤ H).
        exec_horizon: s, steps of the old plan executed when the inference started (0 ≤ s ≤ H − d;
            the scheduler keeps d ≤ s, as the paper requires, so that inferences do not overlap).

    Returns:
        ``W`` as a float64 vector of length H.

    Raises:
        ValueError: An index is not an integer or out of range (the message names it).
    """
    h, d, s = _check_rtc_indices(horizon, delay, exec_horizon)
    i = np.arange(h, dtype=np.float64)
    end = h - s
    c = (end - i) / (end - d + 1)
    decay = c * np.expm1(c) / math.expm1(1.0)
    return np.where(i < d, 1.0, np.where(i < end, decay, 0.0))


def guidance_weight(tau: float, max_weight: float) -> float:
    """The clipped guidance weight ``min(β, (1 − τ)/(τ·r_τ²))``, ``r_τ² = (1 − τ)²/(τ² + (1 − τ)²)``.

    (Paper Eqs. 2 and 4, τ = 0 noise … 1 data.) The unclipped weight is infinite at both ends and 2 at
    ``τ = 1/2``, so ``β`` decides the first step (and any step near τ = 1).

    Args:
        tau: Runtime flow time in [0, 1].
        max_weight: β ≥ 0; 0 turns guidance off.

    Raises:
        ValueError: ``tau`` outside [0, 1] or ``max_weight`` negative / not finite.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"flow time tau must be in [0, 1], got {tau}")
    if not (math.isfinite(max_weight) and max_weight >= 0.0):
        raise ValueError(f"max guidance weight beta must be finite and >= 0, got {max_weight}")
    if tau <= 0.0 or tau >= 1.0:
        return float(max_weight)
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    return float(min(max_weight, (1.0 - tau) / (tau * r2)))


@dataclass(frozen=True)
class RtcGuidance:
    """What RTC guidance steers a new chunk towards.

    Attributes:
        plan: ``Y`` (H×A, model space): row ``i`` is the executing plan's action for the new chunk's
            step ``i``. Rows ``≥ H − s`` lie beyond the old plan and are ignored (they may hold
            anything, NaN included); the others must be finite.
        delay: d, steps that execute from the old plan before the new chunk can start.
        exec_horizon: s, steps of the old plan already executed when this inference started.
        max_weight: β, the largest guidance weight; 0 samples unguided (bit for bit).
        mask: ``W`` (computed, :func:`rtc_soft_mask`).

    Raises:
        ValueError: A bad shape, index, weight or a non-finite plan row (named in the message).
    """

    plan: np.ndarray
    delay: int
    exec_horizon: int
    max_weight: float = DEFAULT_MAX_GUIDANCE
    mask: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        plan = self.plan
        if not isinstance(plan, np.ndarray) or plan.ndim != 2 or plan.shape[0] < 1 or plan.shape[1] < 1:
            got = list(plan.shape) if isinstance(plan, np.ndarray) else type(plan).__name__
            raise ValueError(f"plan Y must be a non-empty H×A numpy array, got {got}")
        h, _, s = _check_rtc_indices(plan.shape[0], self.delay, self.exec_horizon)
        beta = self.max_weight
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) or not (
                math.isfinite(beta) and beta >= 0):
            raise ValueError(f"max guidance weight beta must be finite and >= 0, got {beta!r}")
        bad = ~np.isfinite(plan[: h - s])
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"plan Y must be finite in its rows 0..{h - s - 1} (H - s), got {plan[row, col]} at "
                             f"[{row}, {col}]")
        object.__setattr__(self, "mask", rtc_soft_mask(h, self.delay, self.exec_horizon))


class FlowSampler:
    """Euler integration of a package's velocity field, optionally with RTC guidance.

    Args:
        horizon: H, chunk steps.
        action_dim: A, dims per step.
        steps: n, Euler steps.
        time_convention: The package's (``noise_at_1`` or ``noise_at_0``, see the module docstring).
        schedule: ``uniform_euler`` (the only one so far).

    Raises:
        ValueError: A bad size, step count, convention or schedule (named in the message).
    """

    def __init__(self, horizon: int, action_dim: int, steps: int, time_convention: str = "noise_at_1",
                 schedule: str = "uniform_euler") -> None:
        for name, v in (("horizon", horizon), ("action_dim", action_dim), ("steps", steps)):
            if _index(name, v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if time_convention not in ("noise_at_1", "noise_at_0"):
            raise ValueError(f"time_convention must be 'noise_at_1' or 'noise_at_0', got {time_convention!r}")
        if schedule != "uniform_euler":
            raise ValueError(f"schedule must be 'uniform_euler', got {schedule!r}")
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)
        self.steps = int(steps)
        self.time_convention = time_convention
        self.schedule = schedule
        #: dv_τ/dv of the package: the sign that turns its velocity into the runtime's.
        self.sign = -1.0 if time_convention == "noise_at_1" else 1.0
        #: The package's own Euler step (negative for noise_at_1).
        self.dt = self.sign / self.steps

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> FlowSampler:
        """The sampler a package's ``fast.flow`` block describes.

        Raises:
            ValueError: The package's fast part is not ``kind: flow_matching``.
        """
        flow: FlowSpec | None = spec.fast.flow
        if not spec.fast.is_flow or flow is None:
            raise ValueError(f"package {spec.name!r}: fast part is kind {spec.fast.kind!r}, not 'flow_matching'")
        return cls(spec.chunk_horizon, spec.action_dim, flow.steps, flow.time_convention, flow.schedule)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, A)."""
        return self.horizon, self.action_dim

    def tau(self, k: int) -> float:
        """Runtime time of step ``k`` (``k/n``)."""
        return k / self.steps

    def model_time(self, tau: float) -> float:
        """The package's time at runtime time ``tau``."""
        return 1.0 - tau if self.time_convention == "noise_at_1" else tau

    def draw_noise(self, rng: np.random.Generator, dtype: type | np.dtype = np.float32) -> np.ndarray:
        """The starting noise ``x(τ = 0) ~ N(0, I)``, H×A, from ``rng`` (what :meth:`sample` draws)."""
        return rng.standard_normal(self.shape, dtype=dtype)

    def _checked(self, what: str, arr: np.ndarray) -> np.ndarray:
        if np.shape(arr) != self.shape:
            raise ValueError(f"{what} returned shape {list(np.shape(arr))}, expected {list(self.shape)} (H, A)")
        return arr

    def sample(self, velocity: VelocityFn, rng: np.random.Generator | None, guidance: RtcGuidance | None = None,
               vjp: VjpFn | None = None, dtype: type | np.dtype = np.float32,
               noise: np.ndarray | None = None) -> np.ndarray:
        """One chunk in model (normalised) space: Euler from seeded noise, guided when asked.

        Args:
            velocity: The package's velocity (its own time convention), e.g. :meth:`FlowHead.velocity`.
            rng: Seeded generator for the starting noise (same seed, same chunk); None with ``noise``.
            guidance: Steer towards the executing plan (RTC); None samples unguided.
            vjp: The package's velocity VJP for exact guidance; None takes ``∂Â¹/∂x ≈ I`` (see the
                module docstring). Unused without guidance.
            dtype: Working dtype of the noise and the state.
            noise: Start from this H×A noise instead of drawing it (e.g. to reproduce an exporter's
                reference run); exclusive with ``rng``.

        Returns:
            The chunk, H×A.

        Raises:
            ValueError: Not exactly one of ``rng`` and ``noise``, a noise or plan that is not H×A, or a
                field that returns a wrong shape.
        """
        if (rng is None) == (noise is None):
            raise ValueError("give exactly one of rng (draw the noise) and noise (start from it)")
        if noise is not None:
            if np.shape(noise) != self.shape:
                raise ValueError(f"noise has shape {list(np.shape(noise))}, expected {list(self.shape)} (H, A)")
            x = np.array(noise, dtype=dtype)
        else:
            assert rng is not None
            x = self.draw_noise(rng, dtype)
        beta = 0.0 if guidance is None else float(guidance.max_weight)
        w = y = np.zeros(0, dtype=dtype)
        if guidance is not None:
            if guidance.plan.shape != self.shape:
                raise ValueError(f"plan Y has shape {list(guidance.plan.shape)}, expected {list(self.shape)} (H, A)")
            h_s = self.horizon - guidance.exec_horizon
            w = guidance.mask[:, None].astype(dtype)
            y = np.zeros(self.shape, dtype=dtype)
            y[:h_s] = guidance.plan[:h_s]  # rows beyond the old plan stay 0 (their weight is 0)
        for k in range(self.steps):
            tau = self.tau(k)
            t = self.model_time(tau)
            v = self._checked("velocity", velocity(x, t))
            weight = guidance_weight(tau, beta) if beta > 0.0 else 0.0
            if weight == 0.0:  # the package's own Euler step
                x = x + self.dt * v
                continue
            v_tau = self.sign * v
            err = w * (y - (x + (1.0 - tau) * v_tau))
            grad = err if vjp is None else err + ((1.0 - tau) * self.sign) * self._checked("vjp", vjp(x, t, err))
            x = x + (1.0 / self.steps) * (v_tau + weight * grad)
        return x


def _feed(spec: TensorSpec) -> np.ndarray:
    return np.zeros(tuple(1 if d is None else int(d) for d in spec.shape), dtype=spec.dtype)


class FlowHead:
    """A package's flow-matching fast part, driven through one inference callable.

    Holds preallocated feeds (latent, proprio, noisy chunk, flow time and, when the graph exports
    one, the guidance cotangent), turns them into the ``velocity`` / ``vjp`` callables
    :class:`FlowSampler` needs, and samples chunks. Set the condition with :attr:`latent_view`
    (or :meth:`set_latent`) and :meth:`set_proprio`, then call :meth:`sample`.

    Args:
        spec: The package spec; its fast part must be ``kind: flow_matching``.
        infer: Runs the fast graph once (``Engine.infer``).

    Raises:
        ValueError: The fast part is not a flow-matching graph, or has an input the runtime cannot
            feed (its name and role are in the message).
    """

    def __init__(self, spec: ModelSpec, infer: InferFn) -> None:
        self.sampler = FlowSampler.from_spec(spec)
        g = spec.fast
        known = {"latent", "proprio", "noisy_actions", "flow_time", "guidance_cotangent"}
        other = [(t.name, t.role) for t in g.inputs if t.role not in known]
        if other:
            raise ValueError(f"flow-matching fast graph inputs with roles the runtime cannot feed: {other}")
        lat, pro, noisy, time_in, cot = (g.input_by_role(r) for r in ("latent", "proprio", "noisy_actions",
                                                                        "flow_time", "guidance_cotangent"))
        if lat is None or pro is None or noisy is None or time_in is None:
            missing = [r for r, t in (("latent", lat), ("proprio", pro), ("noisy_actions", noisy),
                                      ("flow_time", time_in)) if t is None]
            raise ValueError(f"flow-matching fast graph lacks inputs with roles {missing}")
        self._infer = infer
        self.feeds: dict[str, np.ndarray] = {t.name: _feed(t) for t in (lat, pro, noisy, time_in, cot) if t is not None}
        self.latent = self.feeds[lat.name]
        self.proprio = self.feeds[pro.name]
        self._x = self.feeds[noisy.name]
        self._t = self.feeds[time_in.name]
        self._cot = None if cot is None else self.feeds[cot.name]
        vel = g.output_by_role("velocity")
        vjp = g.output_by_role("guidance_vjp")
        assert vel is not None  # ModelSpec checks it
        self._v_name = vel.name
        self._vjp_name = None if vjp is None else vjp.name
        #: Graph calls made by the last :meth:`sample`.
        self.calls = 0

    @property
    def has_vjp(self) -> bool:
        """Whether the graph exports its velocity's vector-Jacobian product (exact RTC guidance)."""
        return self._cot is not None

    @property
    def latent_view(self) -> np.ndarray:
        """The K×D view of the latent feed (for ``LatentReader.read_into``)."""
        return self.latent.reshape(self.latent.shape[-2:])

    def set_latent(self, latent: np.ndarray) -> None:
        """Copy the latent (any shape with the feed's element count) into its feed."""
        self.latent[...] = np.asarray(latent).reshape(self.latent.shape)

    def set_proprio(self, normalised: np.ndarray) -> None:
        """Copy the normalised proprio into its feed."""
        self.proprio[...] = np.asarray(normalised).reshape(self.proprio.shape)

    def _run(self, x: np.ndarray, t: float, cot: np.ndarray | None) -> Mapping[str, np.ndarray]:
        self._x[...] = x.reshape(self._x.shape)
        self._t[...] = t
        if self._cot is not None:
            if cot is None:
                self._cot[...] = 0.0
            else:
                self._cot[...] = cot.reshape(self._cot.shape)
        self.calls += 1
        return self._infer(self.feeds)

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        """The package's velocity at noisy chunk ``x`` (H×A) and package time ``t``."""
        return self._run(x, t, None)[self._v_name].reshape(self.sampler.shape)

    def velocity_and_vjp(self, x: np.ndarray, t: float, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The velocity and ``cotangentᵀ·∂v/∂x`` at ``(x, t)`` (package convention), from one graph call.

        Raises:
            ValueError: The graph exports no VJP.
        """
        if self._vjp_name is None:
            raise ValueError("this flow-matching graph exports no guidance VJP (no 'guidance_vjp' output)")
        out = self._run(x, t, cotangent)
        return out[self._v_name].reshape(self.sampler.shape), out[self._vjp_name].reshape(self.sampler.shape)

    def vjp(self, x: np.ndarray, t: float, cotangent: np.ndarray) -> np.ndarray:
        """``cotangentᵀ·∂v/∂x`` at ``(x, t)`` (package convention).

        Raises:
            ValueError: The graph exports no VJP.
        """
        return self.velocity_and_vjp(x, t, cotangent)[1]

    def sample(self, rng: np.random.Generator | None, guidance: RtcGuidance | None = None,
               use_vjp: bool | None = None, noise: np.ndarray | None = None) -> np.ndarray:
        """One chunk (H×A, model space) for the current latent and proprio.

        Args:
            rng: Seeded generator for the starting noise (None when ``noise`` is given).
            guidance: RTC guidance towards the executing plan, or None.
            use_vjp: Exact guidance through the graph's VJP (True), the identity approximation
                (False), or whichever the graph allows (None: exact when it exports a VJP).
            noise: Start from this H×A noise instead of drawing it.

        Raises:
            ValueError: ``use_vjp=True`` on a graph without a VJP, or a bad noise (see
                :meth:`FlowSampler.sample`).
        """
        if use_vjp and not self.has_vjp:
            raise ValueError("use_vjp=True but this flow-matching graph exports no guidance VJP")
        exact = self.has_vjp if use_vjp is None else use_vjp
        self.calls = 0
        return self.sampler.sample(self.velocity, rng, guidance, self.vjp if exact else None, dtype=self._x.dtype,
                                   noise=noise)
