"""From raw model output to named, physical action dims (pure numpy).

The fast model emits a chunk in *normalised* space: either continuous values
(``(1, H, A)``) or, for a discrete-token head, token ids (``(1, H, A)`` ints) or
per-bin logits (``(1, H, A, bins)``). :class:`ActionSpace` turns that into an
``(H, A)`` float64 array of physical values whose columns carry stable names:

* joint kinds: the joint name (``panda_joint1``),
* Cartesian pose: ``<group>/x,y,z`` then ``<group>/qx,qy,qz,qw`` (quaternion,
  scalar last as in ROS) or ``<group>/rx,ry,rz`` (axis-angle / rotation vector),
  optionally ``<group>/gripper``,
* gripper: ``<group>/gripper``,
* mobile base: ``<group>/vx,vy,wz``.

Each dim is also tagged ``absolute`` (a target), ``delta`` (relative to the
current state: use :meth:`ActionSpace.to_absolute`) or ``velocity`` (a rate).

Cartesian deltas: the position part adds, the rotation part composes on the
left (``R_target = R_delta · R_current``, i.e. the delta is expressed in the
group's reference frame). A gripper dim inside a ``cartesian_delta`` group is
an absolute command, as in most delta-EEF datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vla_runtime.core.model_spec import ActionGroup, ActionSpec, ModelSpec, Normalization, ProprioSpec
from vla_runtime.core.rotation import (
    normalize_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_rotvec,
    rotvec_to_quaternion,
)

ActionChunk = np.ndarray
"""``(H, A)`` float64 chunk of physical actions, columns as in ``ActionSpace.dim_names``."""

Reference = Literal["absolute", "delta", "velocity"]


class Normalizer:
    """Per-dim (de)normalisation from a :class:`Normalization` block.

    Statistics without ``eps`` (schema 1) are applied in float64: ``mean_std`` as
    ``(x − mean)/std``, ``min_max`` as the affine map of [min, max] onto [−1, 1]. Statistics with
    ``eps`` (schema 2, written by importers) follow LeRobot's normaliser exactly, in float32 and in its
    operation order (``(x − mean)/(std + eps)`` but ``n·std + mean`` back; ``2(x − lo)/d − 1`` with
    ``d = hi − lo``, ``eps`` where ``d == 0``; back ``(n + 1)/2·d + lo`` for ``min_max`` and
    ``(n + 1)·d/2 + lo`` for the quantile kinds), which is what parity with the policy's own outputs
    takes. Nothing is clipped.

    Args:
        stats: The statistics.
        size: Expected number of dims (checked against the stats).
    """

    def __init__(self, stats: Normalization, size: int) -> None:
        self.kind = stats.kind
        self.size = size
        if stats.size is not None and stats.size != size:
            raise ValueError(f"normalization covers {stats.size} dims, expected {size}")
        #: LeRobot's formulas in float32 (statistics with ``eps``), else the float64 affine map.
        self.float32 = stats.eps is not None and not stats.is_identity
        f32 = np.float32
        if self.float32:
            eps = f32(stats.eps)
            if stats.kind == "mean_std":
                self._mean = np.asarray(stats.mean, dtype=f32)
                self._std = np.asarray(stats.std, dtype=f32)
                self._std_eps = self._std + eps
            else:
                bounds = stats.bounds()
                assert bounds is not None
                self._lo = np.asarray(bounds[0], dtype=f32)
                d = np.asarray(bounds[1], dtype=f32) - self._lo
                self._d = np.where(d == 0, eps, d).astype(f32)
            self._offset = self._scale = np.zeros(0)
        elif stats.kind == "mean_std":
            self._offset = np.asarray(stats.mean, dtype=np.float64)
            self._scale = np.asarray(stats.std, dtype=np.float64)
        elif stats.kind == "min_max":
            lo = np.asarray(stats.min, dtype=np.float64)
            hi = np.asarray(stats.max, dtype=np.float64)
            self._offset = (hi + lo) / 2.0
            self._scale = (hi - lo) / 2.0
        else:
            self._offset = np.zeros(size)
            self._scale = np.ones(size)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Physical → normalised (last axis is the dim axis); float64 result."""
        if self.float32:
            x32 = np.asarray(x, dtype=np.float32)
            self._check(x32)
            f32 = np.float32
            if self.kind == "mean_std":
                return ((x32 - self._mean) / self._std_eps).astype(np.float64)
            return (f32(2) * (x32 - self._lo) / self._d - f32(1)).astype(np.float64)
        x = np.asarray(x, dtype=np.float64)
        self._check(x)
        return (x - self._offset) / self._scale

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Normalised → physical (last axis is the dim axis); float64 result."""
        if self.float32:
            x32 = np.asarray(x, dtype=np.float32)
            self._check(x32)
            f32 = np.float32
            if self.kind == "mean_std":
                return (x32 * self._std + self._mean).astype(np.float64)
            if self.kind == "min_max":
                return ((x32 + f32(1)) / f32(2) * self._d + self._lo).astype(np.float64)
            return ((x32 + f32(1)) * self._d / f32(2) + self._lo).astype(np.float64)
        x = np.asarray(x, dtype=np.float64)
        self._check(x)
        return x * self._scale + self._offset

    def _check(self, x: np.ndarray) -> None:
        if x.ndim == 0 or x.shape[-1] != self.size:
            raise ValueError(f"expected last dim {self.size}, got shape {x.shape}")


class ProprioNormalizer:
    """Builds the model's normalised proprio input.

    Args:
        spec: The package's ``proprio`` block.
    """

    def __init__(self, spec: ProprioSpec) -> None:
        self.names: tuple[str, ...] = spec.names
        self._index = {n: i for i, n in enumerate(self.names)}
        self._norm = Normalizer(spec.normalization, len(self.names))
        pad = spec.padding
        #: Pad the normalised state to this many dims (``proprio.padding.where: runtime``), else None.
        self.pad_to = pad.to if pad is not None and pad.where == "runtime" else None
        self.pad_value = pad.value if pad is not None else 0.0

    def __call__(self, state: np.ndarray | Mapping[str, float]) -> np.ndarray:
        """Normalise one state vector.

        Args:
            state: ``(P,)`` values in ``names`` order, or a mapping name → value
                holding at least every name.

        Returns:
            ``(1, P)`` float32, ready to feed (``(1, pad_to)`` when the package pads at run time).

        Raises:
            KeyError: A mapping lacks a proprio name (the name is in the message).
            ValueError: An array has the wrong length.
        """
        if isinstance(state, Mapping):
            missing = [n for n in self.names if n not in state]
            if missing:
                raise KeyError(f"proprio state lacks {missing}")
            vec = np.array([state[n] for n in self.names], dtype=np.float64)
        else:
            vec = np.asarray(state, dtype=np.float64).reshape(-1)
            if vec.shape[0] != len(self.names):
                raise ValueError(f"proprio state has {vec.shape[0]} values, expected {len(self.names)} "
                                 f"({list(self.names)})")
        return self.pad(self._norm.normalize(vec).astype(np.float32)[None, :])

    def window(self, states: np.ndarray) -> np.ndarray:
        """Normalise a window of states, ``(T, P)`` in ``names`` order → ``(T, P)`` float32 (padded as :meth:`pad`).

        Raises:
            ValueError: The array is not ``(T, P)``.
        """
        arr = np.asarray(states)
        if arr.ndim != 2 or arr.shape[1] != len(self.names):
            raise ValueError(f"state window must be (T, {len(self.names)}), got shape {list(arr.shape)}")
        return self.pad(self._norm.normalize(arr).astype(np.float32))

    def pad(self, normalised: np.ndarray) -> np.ndarray:
        """Pad the last axis to :attr:`pad_to` with the package's value (unchanged without runtime padding)."""
        if self.pad_to is None or normalised.shape[-1] == self.pad_to:
            return normalised
        out = np.full((*normalised.shape[:-1], self.pad_to), self.pad_value, dtype=normalised.dtype)
        out[..., : normalised.shape[-1]] = normalised
        return out

    def normalize(self, state: np.ndarray) -> np.ndarray:
        """Normalise without padding (any leading dims; float64): e.g. for a prompt made from the state."""
        return self._norm.normalize(state)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`__call__` (any leading dims; the unpadded dims)."""
        return self._norm.denormalize(x)


@dataclass(frozen=True)
class ActionDim:
    """One named column of a decoded chunk."""

    name: str
    group: str
    kind: str
    reference: Reference


def _group_dims(g: ActionGroup) -> list[ActionDim]:
    ref: Reference
    if g.kind in ("joint_position", "joint_delta", "joint_velocity"):
        ref = {"joint_position": "absolute", "joint_delta": "delta", "joint_velocity": "velocity"}[g.kind]  # type: ignore[assignment]
        assert g.joints is not None
        return [ActionDim(j, g.name, g.kind, ref) for j in g.joints]
    if g.kind == "gripper":
        return [ActionDim(f"{g.name}/gripper", g.name, g.kind, "absolute")]
    if g.kind == "base_velocity":
        return [ActionDim(f"{g.name}/{c}", g.name, g.kind, "velocity") for c in ("vx", "vy", "wz")]
    ref = "delta" if g.kind == "cartesian_delta" else "absolute"
    rot = ("qx", "qy", "qz", "qw") if g.rotation == "quaternion" else ("rx", "ry", "rz")
    dims = [ActionDim(f"{g.name}/{c}", g.name, g.kind, ref) for c in ("x", "y", "z", *rot)]
    if g.gripper:
        dims.append(ActionDim(f"{g.name}/gripper", g.name, g.kind, "absolute"))
    return dims


class ActionSpace:
    """Decodes raw fast-model output into physical, named action chunks.

    Args:
        spec: The package's ``action`` block.
        horizon: Chunk horizon H.

    Attributes:
        dims: One :class:`ActionDim` per column.
        dim_names: Column names, stable across runs.
        group_slices: Group name → column slice.
        absolute_mask: ``(A,)`` bool, True for absolute-target dims.
        delta_mask: ``(A,)`` bool, True for dims relative to the current state.
        velocity_mask: ``(A,)`` bool, True for rate dims.
    """

    def __init__(self, spec: ActionSpec, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.spec = spec
        self.horizon = horizon
        dims: list[ActionDim] = []
        self.group_slices: dict[str, slice] = {}
        for g in spec.groups:
            gd = _group_dims(g)
            self.group_slices[g.name] = slice(len(dims), len(dims) + len(gd))
            dims.extend(gd)
        names = [d.name for d in dims]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"action dim names must be unique, duplicated: {dup}")
        self.dims: tuple[ActionDim, ...] = tuple(dims)
        self.dim_names: tuple[str, ...] = tuple(names)
        self._index = {n: i for i, n in enumerate(names)}
        refs = np.array([d.reference for d in dims])
        self.absolute_mask = refs == "absolute"
        self.delta_mask = refs == "delta"
        self.velocity_mask = refs == "velocity"
        for m in (self.absolute_mask, self.delta_mask, self.velocity_mask):
            m.flags.writeable = False
        self._norm = Normalizer(spec.normalization, len(dims))
        self._quat_slices = [
            slice(self.group_slices[g.name].start + 3, self.group_slices[g.name].start + 7)
            for g in spec.groups
            if g.rotation == "quaternion"
        ]
        if spec.head == "discrete":
            assert spec.discrete is not None
            d = spec.discrete
            width = (d.high - d.low) / d.bins
            self.bin_centers: np.ndarray | None = d.low + (np.arange(d.bins) + 0.5) * width
        else:
            self.bin_centers = None

    @classmethod
    def from_model_spec(cls, spec: ModelSpec) -> ActionSpace:
        """Build from a whole :class:`ModelSpec`."""
        return cls(spec.action, spec.chunk_horizon)

    @property
    def dim(self) -> int:
        """Number of action dims A."""
        return len(self.dims)

    def index(self, name: str) -> int:
        """Column of the dim called ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no action dim named {name!r}; dims are {list(self.dim_names)}") from None

    def decode(self, raw: np.ndarray) -> ActionChunk:
        """Raw fast-model output → physical chunk.

        Args:
            raw: Continuous head: ``(H, A)`` or ``(1, H, A)`` floats. Discrete
                head: ``(H, A)``/``(1, H, A)`` integer token ids, or
                ``(H, A, bins)``/``(1, H, A, bins)`` float logits.

        Returns:
            ``(H, A)`` float64, columns as in :attr:`dim_names`; quaternions are
            unit length. Delta dims are still relative (see :meth:`to_absolute`).

        Raises:
            ValueError: Wrong shape, non-finite values or out-of-range token ids.
        """
        x = np.asarray(raw)
        a, h = self.dim, self.horizon
        if self.bin_centers is not None:
            nb = self.bin_centers.shape[0]
            if np.issubdtype(x.dtype, np.floating):
                x = _squeeze_batch(x, (h, a, nb), "discrete logits")
                ids = np.argmax(x, axis=-1)
            elif np.issubdtype(x.dtype, np.integer):
                ids = _squeeze_batch(x, (h, a), "discrete token ids")
                bad = ids[(ids < 0) | (ids >= nb)]
                if bad.size:
                    raise ValueError(f"token ids must be in [0, {nb}), got {np.unique(bad)[:5].tolist()}")
            else:
                raise ValueError(f"discrete head expects integer ids or float logits, got dtype {x.dtype}")
            norm = self.bin_centers[ids]
        else:
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"continuous head expects a float array, got dtype {x.dtype}")
            norm = _squeeze_batch(x, (h, a), "actions")
        if not np.all(np.isfinite(norm)):
            raise ValueError("raw actions contain NaN or inf")
        out = self._norm.denormalize(norm)
        for s in self._quat_slices:
            out[:, s] = normalize_quaternion(out[:, s], degenerate_to_identity=True)
        return out

    def encode(self, chunk: ActionChunk) -> np.ndarray:
        """Physical chunk → the model's normalised space (inverse of :meth:`decode`).

        Used to feed a previous chunk back as an RTC prefix. For a discrete head
        the result is the nearest bin's id (int64); otherwise float32.

        Args:
            chunk: ``(H, A)`` physical values (deltas still relative).

        Returns:
            ``(1, H, A)`` float32 normalised values, or int64 token ids.
        """
        c = np.asarray(chunk, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != self.dim:
            raise ValueError(f"chunk must be (H, {self.dim}), got shape {c.shape}")
        norm = self._norm.normalize(c)
        if self.bin_centers is not None:
            d = self.spec.discrete
            assert d is not None
            ids = np.floor((norm - d.low) / (d.high - d.low) * d.bins).astype(np.int64)
            return np.clip(ids, 0, d.bins - 1)[None]
        return norm.astype(np.float32)[None]

    def split(self, chunk: ActionChunk) -> dict[str, np.ndarray]:
        """Per-group views of a chunk: group name → ``(H, n_group)``."""
        return {name: chunk[:, s] for name, s in self.group_slices.items()}

    def _current_vector(self, current: np.ndarray | Mapping[str, float]) -> np.ndarray:
        needed = [d.name for d in self.dims if d.reference == "delta"]
        if isinstance(current, Mapping):
            missing = [n for n in needed if n not in current]
            if missing:
                raise KeyError(f"current state lacks {missing}")
            vec = np.zeros(self.dim)
            for n in needed:
                vec[self._index[n]] = float(current[n])
            return vec
        vec = np.asarray(current, dtype=np.float64).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"current state must have {self.dim} values in dim_names order, got {vec.shape[0]}")
        return vec

    def to_absolute(self, chunk: ActionChunk, current: np.ndarray | Mapping[str, float]) -> ActionChunk:
        """Make delta dims absolute against the current state.

        Absolute and velocity dims are returned unchanged.

        Args:
            chunk: ``(H, A)`` decoded chunk.
            current: ``(A,)`` current state in :attr:`dim_names` order (only delta
                columns are read), or a mapping name → value covering every
                delta dim. For a ``cartesian_delta`` group the current pose uses
                the group's own layout (quaternion or axis-angle).

        Returns:
            A new ``(H, A)`` array.
        """
        return self._convert(chunk, current, to_abs=True)

    def to_relative(self, chunk: ActionChunk, current: np.ndarray | Mapping[str, float]) -> ActionChunk:
        """Inverse of :meth:`to_absolute` (absolute targets → deltas)."""
        return self._convert(chunk, current, to_abs=False)

    def _convert(self, chunk: ActionChunk, current: np.ndarray | Mapping[str, float], *, to_abs: bool) -> ActionChunk:
        c = np.array(chunk, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != self.dim:
            raise ValueError(f"chunk must be (H, {self.dim}), got shape {c.shape}")
        if not self.delta_mask.any():
            return c
        cur = self._current_vector(current)
        for g in self.spec.groups:
            s = self.group_slices[g.name]
            if g.kind == "joint_delta":
                c[:, s] = _joint_convert(c[:, s], cur[s], g.cumulative, to_abs)
            elif g.kind == "cartesian_delta":
                n = 7 if g.rotation == "quaternion" else 6
                ps = slice(s.start, s.start + n)
                c[:, ps] = _pose_convert(c[:, ps], cur[ps], g.rotation == "quaternion", g.cumulative, to_abs)
        return c


def _squeeze_batch(x: np.ndarray, want: tuple[int, ...], what: str) -> np.ndarray:
    if x.shape == (1, *want):
        return x[0]
    if x.shape == want:
        return x
    raise ValueError(f"{what} must have shape {list(want)} or {[1, *want]}, got {list(x.shape)}")


def _joint_convert(d: np.ndarray, cur: np.ndarray, cumulative: bool, to_abs: bool) -> np.ndarray:
    if to_abs:
        return cur + (np.cumsum(d, axis=0) if cumulative else d)
    rel = d - cur
    if cumulative:
        rel = np.diff(rel, axis=0, prepend=0.0)
    return rel


def _pose_convert(p: np.ndarray, cur: np.ndarray, quat: bool, cumulative: bool, to_abs: bool) -> np.ndarray:
    pos, rot = p[:, :3], p[:, 3:]
    q = normalize_quaternion(rot, degenerate_to_identity=True) if quat else rotvec_to_quaternion(rot)
    q_cur = normalize_quaternion(cur[3:], degenerate_to_identity=True) if quat else rotvec_to_quaternion(cur[3:])
    out_pos = np.empty_like(pos)
    out_q = np.empty_like(q)
    ref_p, ref_q = cur[:3], q_cur
    for h in range(p.shape[0]):
        if to_abs:
            out_pos[h] = ref_p + pos[h]
            out_q[h] = quaternion_multiply(q[h], ref_q)
            if cumulative:
                ref_p, ref_q = out_pos[h], out_q[h]
        else:
            out_pos[h] = pos[h] - ref_p
            out_q[h] = quaternion_multiply(q[h], quaternion_conjugate(ref_q))
            if cumulative:
                ref_p, ref_q = pos[h], q[h]
    out_rot = out_q if quat else quaternion_to_rotvec(normalize_quaternion(out_q, degenerate_to_identity=True))
    return np.concatenate([out_pos, out_rot], axis=1)


def dim_names(spec: ActionSpec | Sequence[ActionGroup]) -> tuple[str, ...]:
    """Dim names of an action spec or a group list, without building an ActionSpace."""
    groups = spec.groups if isinstance(spec, ActionSpec) else spec
    return tuple(d.name for g in groups for d in _group_dims(g))
