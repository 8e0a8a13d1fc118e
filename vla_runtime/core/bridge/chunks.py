"""Policy chunks at the bridge: validation, the sampled policy track, the bumpless-resume rebase.

A chunk arrives as a dim layout (``joint_names``), a stamp, and points (values + offsets from the
stamp). :class:`ChunkValidator` checks it in the order the bridge always has — every point has one
value per dim, every value is finite (:meth:`SafetyFilter.check_finite`, which counts the
intervention), the layout maps onto the robot's groups (:class:`CommandMapper`, no dim left over),
point times strictly increase — and returns a :class:`ValidChunk` or a :class:`ChunkRejection`
whose ``kind`` names the check that failed and whose ``reason`` names the bad value.

:class:`ResumeRebase` makes the hand-back from teleop bumpless: the first chunk after teleop is
offset so that its first point equals the held state, and the offset fades linearly to zero over
:data:`REBASE_S` of chunk time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vla_runtime.core.command_mapping import CommandMapper, GroupCommand, JointCommand, MappingError, PoseCommand
from vla_runtime.core.config import RobotProfile
from vla_runtime.core.safety_filter import SafetyFilter

#: After teleop, the policy's commands are offset onto the resumed-from state; the offset fades out
#: linearly over this many seconds.
REBASE_S = 0.3

#: Rejection kinds (:attr:`ChunkRejection.kind`).
POINT_LENGTH = "point_length"
NON_FINITE = "non_finite"
LAYOUT = "layout"
TIME_ORDER = "time_order"

#: Layouts whose mapping is remembered (a policy sends one layout; a bound keeps junk out).
MAPPER_CACHE_SIZE = 32


@dataclass
class ValidChunk:
    """A validated policy chunk: absolute point times (s), values (H, A) and its dim mapping."""

    stamp_s: float
    times: np.ndarray
    values: np.ndarray
    mapper: CommandMapper


@dataclass(frozen=True)
class ChunkRejection:
    """Why a chunk must not be used: ``kind`` is one of the rejection kinds, ``reason`` names the value."""

    kind: str
    reason: str


@dataclass
class PolicyTrack:
    """What a streaming group samples every command tick: times (H,), values (H, k), and the
    stiffness rows (H, s) of a Cartesian impedance group whose layout carries them."""

    times: np.ndarray
    values: np.ndarray
    stiffness: np.ndarray | None = None


def interp_rows(times: np.ndarray, values: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation of (H, k) rows at time t (clamped to the ends)."""
    if t <= times[0]:
        return values[0].copy()
    if t >= times[-1]:
        return values[-1].copy()
    i = int(np.searchsorted(times, t, side="right"))
    t0, t1 = times[i - 1], times[i]
    a = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
    return values[i - 1] + a * (values[i] - values[i - 1])


class ChunkValidator:
    """Checks received chunks against the robot; remembers the mapping of each layout.

    Args:
        robot: The robot profile (its groups decide which layouts are valid).
        safety: The bridge's safety filter (its non-finite check counts the intervention).
    """

    def __init__(self, robot: RobotProfile, safety: SafetyFilter) -> None:
        self.robot = robot
        self.safety = safety
        self._mappers: dict[tuple[str, ...], CommandMapper | MappingError] = {}

    def mapper_for(self, names: tuple[str, ...]) -> CommandMapper:
        """The mapping of a layout (cached, refusals too).

        Raises:
            MappingError: The layout does not fit the robot: a group named only in part, a dim
                named twice, or dims that no group takes (named in the message).
        """
        m = self._mappers.get(names)
        if m is None:
            try:
                m = CommandMapper(self.robot, names)
                if m.unused_dims:  # a dim no group takes is a malformed (or mis-targeted) chunk
                    m = MappingError(f"dims that are not in robot {self.robot.name!r}: {list(m.unused_dims)}")
            except MappingError as e:
                m = e
            if len(self._mappers) > MAPPER_CACHE_SIZE:
                self._mappers.clear()
            self._mappers[names] = m
        if isinstance(m, MappingError):
            raise m
        return m

    def validate(self, names: tuple[str, ...], stamp_s: float, rows: Sequence[Sequence[float]],
                 offsets_s: Sequence[float]) -> ValidChunk | ChunkRejection:
        """Check one non-empty chunk.

        Args:
            names: The dim layout (the message's ``joint_names``).
            stamp_s: The chunk's stamp (s); point times are relative to it.
            rows: Each point's values.
            offsets_s: Each point's ``time_from_start`` (s).

        Returns:
            The chunk with absolute times and its mapping, or the first check it fails.
        """
        n_dims = len(names)
        bad = [i for i, r in enumerate(rows) if len(r) != n_dims]
        if bad:
            return ChunkRejection(POINT_LENGTH,
                                  f"chunk point {bad[0]} has {len(rows[bad[0]])} values for {n_dims} dims")
        values = np.array(rows, dtype=np.float64).reshape(len(rows), n_dims)
        reason = self.safety.check_finite(names, values)
        if reason is not None:
            return ChunkRejection(NON_FINITE, reason)
        try:
            mapper = self.mapper_for(names)
        except MappingError as e:
            return ChunkRejection(LAYOUT, f"chunk layout: {e}")
        times = stamp_s + np.array(offsets_s)
        if np.any(np.diff(times) <= 0):
            return ChunkRejection(TIME_ORDER, "chunk time_from_start is not strictly increasing")
        return ValidChunk(stamp_s, times, values, mapper)


class ResumeRebase:
    """Bumpless policy resume after teleop: offsets from the first chunk's first point to the held state.

    The bridge sets :attr:`pending` when teleop hands back to HOLD; the next chunk it installs
    calls :meth:`start`, and every group's values of this and later chunks go through
    :meth:`apply` until the offset has faded out. Joint position holds offset every joint; a pose
    hold offsets the position only.

    Args:
        fade_s: Chunk time over which the offset fades linearly to zero.
    """

    def __init__(self, fade_s: float = REBASE_S) -> None:
        self.fade_s = float(fade_s)
        self.pending = False
        self._t0 = 0.0
        self._offsets: dict[str, np.ndarray] | None = None

    @property
    def active(self) -> bool:
        """Whether offsets are being applied."""
        return self._offsets is not None

    def stop(self) -> None:
        """Drop the offsets now (a new takeover: the policy's commands are no longer shifted)."""
        self._offsets = None

    def start(self, chunk: ValidChunk, holds: Mapping[str, GroupCommand | None]) -> None:
        """The first chunk after teleop: offsets from its first point to each group's hold target."""
        self.pending = False
        offsets: dict[str, np.ndarray] = {}
        for gname in chunk.mapper.groups:
            hold = holds.get(gname)
            first = chunk.mapper.group_values(chunk.values[:1], gname)[0]
            if isinstance(hold, JointCommand) and hold.kind == "position" and len(first) == len(hold.values):
                offsets[gname] = np.asarray(hold.values, dtype=np.float64) - first
            elif isinstance(hold, PoseCommand):
                off = np.zeros(len(first))
                off[:3] = hold.position - first[:3]
                offsets[gname] = off
        self._t0 = float(chunk.times[0])
        self._offsets = offsets or None

    def apply(self, group: str, times: np.ndarray, values: np.ndarray) -> np.ndarray:
        """One group's (H, k) values with the (fading) offset added; unchanged when none applies.

        The first call with a chunk that starts after the fade ends the rebase.
        """
        if self._offsets is None:
            return values
        off = self._offsets.get(group)
        if off is None:
            return values
        w = np.clip(1.0 - (times - self._t0) / self.fade_s, 0.0, 1.0)
        if times[0] > self._t0 + self.fade_s:
            self._offsets = None  # the offset has faded out
            return values
        return values + w[:, None] * off[None, :]
