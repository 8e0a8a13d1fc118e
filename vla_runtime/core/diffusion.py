"""Diffusion action heads: the DDPM / DDIM sampling loop the runtime runs around one denoiser step.

A diffusion fast part (``fast.kind: diffusion`` in ``model.yaml``; LeRobot's Diffusion Policy) is ONE
denoiser evaluation ``y = f(x_t, timestep | latent)`` over a noisy chunk ``x_t`` (model horizon ×
action dims). The scheduler is the runtime's, written once here from the constants the package
carries (``fast.diffusion``: per inference step its training ``timestep`` and ``ᾱ_t``, ``ᾱ_prev``),
as diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` compute one step. With ``a = ᾱ_t``,
``a' = ᾱ_prev``, ``b = 1 − a``, ``b' = 1 − a'``, everything in float32::

    x₀  = (x − √b·y)/√a    (prediction_type epsilon)        x₀ = y              (sample)
    ε   = y                (epsilon)                         ε  = (x − √a·x₀)/√b (sample)
    x₀  = clip(x₀, ±clip_sample_range)                       if clip_sample
    DDIM (η = 0):  x ← √a'·x₀ + √(1 − a')·ε                  (ε is not recomputed after clipping)
    DDPM:          α = a/a', β = 1 − α
                   x ← (√a'·β/b)·x₀ + (√α·b'/b)·x  [+ √max(b'/b·β, 1e−20)·z  if timestep > 0, z ~ N(0, I)]

DDPM draws fresh noise ``z`` at every step whose timestep is positive, so a run is reproducible
only from the same generator (or the same draws: :meth:`DiffusionSampler.sample` takes them, which
is how the parity tests replay LeRobot's). Pure numpy: the denoiser is reached through a callable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vla_runtime.core.model_spec import DiffusionSpec, ModelSpec

#: ``denoise(x, timestep) → y``: the package's denoiser output at noisy chunk ``x`` and ``timestep``.
DenoiseFn = Callable[[np.ndarray, int], np.ndarray]

_F32 = np.float32


class DiffusionSampler:
    """DDPM / DDIM sampling of a package's denoiser from the constants in its ``fast.diffusion`` block.

    Args:
        spec: The scheduler block.
        horizon: Steps of the model's chunk.
        action_dim: Dims per step of the model's chunk.

    Raises:
        ValueError: A bad size (named in the message).
    """

    def __init__(self, spec: DiffusionSpec, horizon: int, action_dim: int) -> None:
        for name, v in (("horizon", horizon), ("action_dim", action_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.spec = spec
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)
        self.ddpm = spec.scheduler == "ddpm"
        self.timesteps: tuple[int, ...] = tuple(s.timestep for s in spec.steps)
        #: Per step: (√a, √b, √a', √(1 − a'), DDPM x₀ coefficient, DDPM x coefficient, DDPM noise std).
        self._consts: list[tuple[np.float32, ...]] = []
        for s in spec.steps:
            a, a_prev = _F32(s.alpha_prod_t), _F32(s.alpha_prod_t_prev)
            b, b_prev = _F32(1) - a, _F32(1) - a_prev
            alpha = a / a_prev
            beta = _F32(1) - alpha
            var = np.maximum(b_prev / b * beta, _F32(1e-20)) if b > 0 else _F32(0)
            self._consts.append((a ** _F32(0.5), b ** _F32(0.5), a_prev ** _F32(0.5), b_prev ** _F32(0.5),
                                 a_prev ** _F32(0.5) * beta / b if b > 0 else _F32(0),
                                 alpha ** _F32(0.5) * b_prev / b if b > 0 else _F32(0),
                                 var ** _F32(0.5)))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> DiffusionSampler:
        """The sampler a package's fast part describes.

        Raises:
            ValueError: The fast part is not ``kind: diffusion``.
        """
        if not spec.fast.is_diffusion or spec.fast.diffusion is None:
            raise ValueError(f"package {spec.name!r}: fast part is kind {spec.fast.kind!r}, not 'diffusion'")
        return cls(spec.fast.diffusion, spec.model_chunk_horizon, spec.model_action_dim)

    @property
    def shape(self) -> tuple[int, int]:
        """(model horizon, action dims) of the sampled chunk."""
        return self.horizon, self.action_dim

    @property
    def n_steps(self) -> int:
        """Denoiser evaluations per chunk."""
        return len(self.timesteps)

    @property
    def n_step_noise(self) -> int:
        """Fresh noise draws per chunk (DDPM: one per step whose timestep > 0; DDIM: none)."""
        return sum(1 for t in self.timesteps if t > 0) if self.ddpm else 0

    def step(self, k: int, x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """One scheduler step (module docstring), float32.

        Args:
            k: Index of the inference step.
            x: The current sample ``x_t``.
            y: The denoiser's output at ``(x, timesteps[k])``.
            z: DDPM's fresh standard-normal draw for this step (needed when its timestep > 0).

        Raises:
            ValueError: DDPM needs ``z`` at this step and none was given.
        """
        sa, sb, sa_prev, sb_prev, c0, ct, std = self._consts[k]
        sp = self.spec
        x = np.asarray(x, dtype=_F32)
        y = np.asarray(y, dtype=_F32)
        if sp.prediction_type == "epsilon":
            x0 = (x - sb * y) / sa
            eps = y
        else:
            x0 = y
            eps = (x - sa * x0) / sb
        if sp.clip_sample:
            r = _F32(sp.clip_sample_range)
            x0 = np.clip(x0, -r, r)
        if not self.ddpm:
            return sa_prev * x0 + sb_prev * eps
        out = c0 * x0 + ct * x
        if self.timesteps[k] > 0:
            if z is None:
                raise ValueError(f"DDPM step {k} (timestep {self.timesteps[k]}) needs a noise draw z")
            out = out + std * np.asarray(z, dtype=_F32)
        return out

    def sample(self, denoise: DenoiseFn, rng: np.random.Generator | None = None, noise: np.ndarray | None = None,
               step_noise: np.ndarray | None = None) -> np.ndarray:
        """One chunk in model (normalised) space.

        Args:
            denoise: The package's denoiser (e.g. a fast step's engine call).
            rng: Seeded generator for whatever is not given: the starting noise, then (DDPM) each step's
                draw, in step order (same seed, same chunk).
            noise: The starting noise ``x_T`` (model horizon × action dims) instead of drawing it.
            step_noise: DDPM's draws instead of drawing them: ``(n_step_noise, horizon, action_dim)``, in
                step order.

        Returns:
            The sampled chunk ``x₀`` (model horizon × action dims), float32.

        Raises:
            ValueError: Something needed is neither given nor drawable (no ``rng``), a wrong shape, or a
                denoiser output of the wrong shape.
        """
        if noise is None:
            if rng is None:
                raise ValueError("give rng (draw the starting noise) or noise (start from it)")
            x = rng.standard_normal(self.shape, dtype=_F32)
        else:
            if np.shape(noise) != self.shape:
                raise ValueError(f"noise has shape {list(np.shape(noise))}, expected {list(self.shape)} "
                                 "(model horizon, action dims)")
            x = np.array(noise, dtype=_F32)
        draws = None
        if self.ddpm and self.n_step_noise:
            if step_noise is not None:
                want = (self.n_step_noise, *self.shape)
                if np.shape(step_noise) != want:
                    raise ValueError(f"step_noise has shape {list(np.shape(step_noise))}, expected {list(want)} "
                                     "(one draw per DDPM step with timestep > 0)")
                draws = np.asarray(step_noise, dtype=_F32)
            elif rng is None:
                raise ValueError("a DDPM sampler draws noise at every step: give rng or step_noise")
        i = 0
        for k, t in enumerate(self.timesteps):
            y = np.asarray(denoise(x, t))
            if y.shape != self.shape:
                raise ValueError(f"denoiser returned shape {list(y.shape)}, expected {list(self.shape)}")
            z = None
            if self.ddpm and t > 0:
                z = draws[i] if draws is not None else rng.standard_normal(self.shape, dtype=_F32)  # type: ignore[union-attr]
                i += 1
            x = self.step(k, x, y, z)
        return x
