"""Interruption: a new instruction stops the old plan at once, within the robot's acceleration limits.

Pure Python + numpy (no rclpy), every time an argument. The fast path (nodes/action_chunk_node) uses
two pieces:

* :class:`InstructionGate` — which latents may drive the fast path. From the moment a *different*
  instruction arrives (its receive time, wall clock), a latent is valid only if it was computed for
  it. The rule is on the latent's observation stamp: it must be later than the instruction's
  arrival. A latent from a frame taken before the arrival is refused even when the slow path
  already used the new words with it (conservative: one slow step later at most; the slow path
  steps on a frame taken after a new instruction first, see nodes/slow_reasoner). While no valid
  latent has come the gate says ``WAIT`` (the fast path stops); after ``max_wait_s`` (the config's
  ``latent.max_age_s``) it says ``STALE`` (a stale-latent hold, counted by the detector as any
  other). The same text again is not a change.
* :func:`stopping_profile` — the plan that replaces the old one while the gate waits: from the
  commanded position and velocity to rest with a constant deceleration per dim, all dims stopping
  together (a straight line in command space, the direction the plan was moving), in the shortest
  time that keeps every dim's deceleration within its bound (``joint acceleration ×
  safety.acceleration_scale``, :func:`acceleration_bounds`).

Known limit of the stamp rule: the slow path reads its instruction after it takes its frames, and the
two nodes receive a new instruction a few milliseconds apart; a slow step that reads the OLD words
on a frame taken inside that gap would pass. The gap is milliseconds against a 100-200 ms camera and
slow period, and the next slow step corrects it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GateVerdict", "InstructionGate", "StopPlan", "acceleration_bounds", "stopping_profile"]


class GateVerdict(enum.Enum):
    """What :meth:`InstructionGate.judge` says of the newest latent."""

    VALID = "valid"  #: no interruption pending, or the latent was computed after the new instruction
    WAIT = "wait"  #: an interruption is pending and the latent is older than the instruction: stop
    STALE = "stale"  #: pending longer than ``max_wait_s``: a stale-latent hold


class InstructionGate:
    """Tracks the current instruction and whether the newest latent was computed for it.

    Args:
        instruction: The instruction the graph starts with (the config's); None: unknown (the first
            one received is not an interruption).
        max_wait_s: How long an interruption may wait for a valid latent before it counts as a stale
            latent (> 0).

    Not thread-safe: the fast path's loop thread owns it (its subscription callback only hands the
    text and its receive times over).
    """

    def __init__(self, instruction: str | None, max_wait_s: float) -> None:
        if not (max_wait_s > 0 and math.isfinite(max_wait_s)):
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        self.instruction = instruction
        self.max_wait_s = float(max_wait_s)
        #: Receive time of the instruction an interruption waits for (wall ns; None: none pending).
        self.pending_since_ns: int | None = None
        self._pending_since_s = 0.0  # the same on the loop's monotonic clock
        self._first_chunk_due_s: float | None = None  # arrival (monotonic) of the last instruction, until its chunk
        self.interruptions = 0
        #: Instruction receive → a valid latent read, and → the first chunk for it merged (ms; None: not yet).
        self.last_instruction_to_latent_ms: float | None = None
        self.last_instruction_to_first_chunk_ms: float | None = None

    @property
    def pending(self) -> bool:
        """An interruption waits for a latent computed after the new instruction."""
        return self.pending_since_ns is not None

    @property
    def awaiting_first_chunk(self) -> bool:
        """A valid latent came for the last instruction but no chunk from it has been merged yet."""
        return self._first_chunk_due_s is not None and self.pending_since_ns is None

    def instruction_arrived(self, text: str, recv_wall_ns: int, recv_mono_s: float) -> bool:
        """A message on the instruction topic; True when it is a new instruction (an interruption).

        Args:
            text: The instruction.
            recv_wall_ns: Its receive time on the clock of the latents' observation stamps (wall ns).
            recv_mono_s: The same instant on the loop's monotonic clock (s).
        """
        if text == self.instruction:
            return False
        first = self.instruction is None
        self.instruction = text
        if first:
            return False
        # A newer instruction while one is pending: latents must now be later than THIS one.
        self.pending_since_ns = int(recv_wall_ns)
        self._pending_since_s = float(recv_mono_s)
        self._first_chunk_due_s = float(recv_mono_s)
        self.last_instruction_to_latent_ms = None
        self.last_instruction_to_first_chunk_ms = None
        self.interruptions += 1
        return True

    def judge(self, obs_stamp_ns: int, now_s: float) -> GateVerdict:
        """Whether a latent observed at ``obs_stamp_ns`` may drive the fast path at ``now_s`` (monotonic).

        A valid latent ends the interruption.
        """
        since = self.pending_since_ns
        if since is None:
            return GateVerdict.VALID
        if obs_stamp_ns > since:
            self.pending_since_ns = None
            self.last_instruction_to_latent_ms = round((now_s - self._pending_since_s) * 1e3, 1)
            return GateVerdict.VALID
        if now_s - self._pending_since_s > self.max_wait_s:
            return GateVerdict.STALE
        return GateVerdict.WAIT

    def chunk_merged(self, now_s: float) -> None:
        """A chunk was merged at ``now_s`` (monotonic); the first after a valid latent is timed."""
        if self.awaiting_first_chunk:
            self.last_instruction_to_first_chunk_ms = round((now_s - self._first_chunk_due_s) * 1e3, 1)
            self._first_chunk_due_s = None


def acceleration_bounds(dim_names: Sequence[str], joints: Sequence, acceleration_scale: float) -> np.ndarray:
    """The deceleration bound of each action dim: its joint's ``acceleration × acceleration_scale``.

    Args:
        dim_names: The action dims (joint names; ``<group>/x``…, ``<group>/gripper`` for others).
        joints: The robot's joints (objects with ``name`` and ``acceleration``, as ``RobotProfile.joints``).
        acceleration_scale: ``safety.acceleration_scale`` (0, 1].

    Returns:
        (A,) bounds; ``inf`` for a dim that is not a joint (Cartesian, gripper): it has no bound of
        its own and stops together with the joint dims (see :func:`stopping_profile`).
    """
    if not 0 < acceleration_scale <= 1:
        raise ValueError(f"acceleration_scale must be in (0, 1], got {acceleration_scale}")
    by_name = {j.name: float(j.acceleration) * acceleration_scale for j in joints}
    return np.array([by_name.get(n, math.inf) for n in dim_names], dtype=np.float64)


@dataclass(frozen=True)
class StopPlan:
    """A stopping profile: ``points[k]`` at ``k * dt_s`` from its start; the last one at rest.

    Attributes:
        points: (n ≥ 2, A) command positions.
        dt_s: Spacing of the points (≤ the requested one, so that the last point is the stop).
        duration_s: Time to rest (``(n - 1) * dt_s``).
        deceleration: (A,) the constant deceleration of each dim (≥ 0, ≤ its bound).
    """

    points: np.ndarray
    dt_s: float
    duration_s: float
    deceleration: np.ndarray

    @property
    def stop_distance(self) -> np.ndarray:
        """(A,) how far each dim travels before it rests (absolute)."""
        return np.abs(self.points[-1] - self.points[0])


def stopping_profile(position: Sequence[float], velocity: Sequence[float], accel_bound: Sequence[float],
                     dt_s: float, unbounded_stop_s: float = 0.1) -> StopPlan:
    """Bring a commanded motion to rest within per-dim deceleration bounds.

    Every dim decelerates at a constant rate and all reach rest together at ``T = max_i |v_i| / a_i``
    (the bounded dims that move), so the command follows a straight line along the direction it was
    moving and no dim exceeds its bound. ``p_i(t) = p_i + v_i t - ½ (v_i / T) t²``; the points are
    samples of it, exact at their times (linear interpolation between them keeps the velocity change
    between consecutive segments at ``(v_i / T)·dt``).

    Args:
        position: (A,) commanded position now.
        velocity: (A,) commanded velocity now.
        accel_bound: (A,) deceleration bounds (> 0; ``inf``: no bound of its own).
        dt_s: Largest spacing of the points (the command period).
        unbounded_stop_s: Time to rest when only dims without a bound move.

    Returns:
        The :class:`StopPlan` (two equal points when nothing moves).

    Raises:
        ValueError: On mismatched shapes, non-finite position/velocity, a bound ≤ 0 or NaN, or a
            spacing ≤ 0 (the bad value named).
    """
    p = np.asarray(position, dtype=np.float64).reshape(-1)
    v = np.asarray(velocity, dtype=np.float64).reshape(-1)
    a = np.asarray(accel_bound, dtype=np.float64).reshape(-1)
    if not (p.shape == v.shape == a.shape):
        raise ValueError(f"position, velocity and accel_bound must have one shape, got {p.shape}, {v.shape}, "
                         f"{a.shape}")
    if not (np.isfinite(p).all() and np.isfinite(v).all()):
        raise ValueError(f"position and velocity must be finite, got {p.tolist()} and {v.tolist()}")
    if np.isnan(a).any() or (a <= 0).any():
        raise ValueError(f"accel_bound must be > 0 (inf for none), got {a.tolist()}")
    if not (dt_s > 0 and math.isfinite(dt_s)):
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    if not (unbounded_stop_s > 0 and math.isfinite(unbounded_stop_s)):
        raise ValueError(f"unbounded_stop_s must be > 0, got {unbounded_stop_s}")
    speed = np.abs(v)
    bounded = np.isfinite(a)
    t_stop = float(np.max(speed[bounded] / a[bounded], initial=0.0))
    if t_stop == 0.0 and (speed[~bounded] > 0).any():
        t_stop = float(unbounded_stop_s)
    if t_stop == 0.0:
        return StopPlan(np.stack([p, p]), float(dt_s), 0.0, np.zeros_like(p))
    n = int(math.ceil(t_stop / dt_s - 1e-9)) + 1
    n = max(n, 2)
    dt = t_stop / (n - 1)
    decel = v / t_stop
    t = dt * np.arange(n)[:, None]
    points = p + v * t - 0.5 * decel * t * t
    points[-1] = p + 0.5 * v * t_stop  # exactly at rest where it should be
    return StopPlan(points, dt, t_stop, np.abs(decel))
