"""Validation at every boundary where data enters the runtime (pure Python + numpy, no rclpy).

Every message a node takes in is checked here before anything is computed from it: a refused
message changes no state (no hold target, no proprio, no latent), is counted per reason, and the
node goes on. Persistent bad input then shows up as missing good input, which the existing
monitors already turn into HOLD (stale joint state, stale latent, policy watchdog) and HALTED
(the failure detector's joint-state and HOLD-streak monitors).

* :class:`JointStateCheck` — ``/joint_states``: names and positions of equal length, no name twice,
  every position finite and inside its joint's limits plus a tolerance, the stamp not in the
  future. Lookups are cached per names tuple, so the fast path's per-message cost is one
  vectorised comparison.
* :class:`PlanCheck` — plans and chunks (``/vla/action_chunk``): every value inside the range its
  dim can mean (joint limits, the workspace box, unit quaternions, the gripper's range, velocity
  and stiffness limits) plus a tolerance, and the stamp inside a window around now. Out-of-range
  values are refused, not clipped: a policy that emits 1e9 is broken, and clipping would execute
  its extreme.
* :func:`stamp_lead` — camera frames and latents: a stamp ahead of the receiver's clock by more
  than the tolerance is refused (it would make a latent look fresh forever).
* :class:`TeleopCheck` — operator commands: finite, known and distinct joints, and bounded by the
  configured teleop limits (far over them is a broken device or an attack, refused; just over
  them is clipped where the command is integrated).
* :class:`Rejections` — the per-reason counters every node reports in its diagnostics.

All times are arguments (seconds or nanoseconds on the caller's clock); nothing reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from vla_runtime.core.config import RobotProfile, SafetyConfig, TeleopConfig
from vla_runtime.core.controller_kinds import KINDS

# Rejection reasons (the keys of Rejections.counts; diagnostics show them as ``rejected.<reason>``).
LENGTH_MISMATCH = "length_mismatch"
DUPLICATE_NAME = "duplicate_name"
NON_FINITE = "non_finite"
OUT_OF_LIMITS = "out_of_limits"
FUTURE_STAMP = "future_stamp"
STALE_STAMP = "stale_stamp"
EMPTY = "empty"
UNKNOWN_NAME = "unknown_name"
OVER_LIMIT = "over_limit"
MALFORMED = "malformed"
WRONG_FRAME = "wrong_frame"

#: How far a teleop velocity may exceed its configured limit before it is refused instead of clipped.
TELEOP_REFUSE_FACTOR = 2.0
#: Base twist values no mobile-manipulator policy means (the safety filter then limits the rest).
BASE_LINEAR_BOUND_MPS = 5.0
BASE_ANGULAR_BOUND_RPS = 10.0
_NS = 1_000_000_000


class Rejections:
    """Counts of refused inputs per reason, and the last refusal's text (for diagnostics)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last = ""

    def __call__(self, reason: str, text: str) -> str:
        """Count one refusal; returns ``text`` (so callers can ``return rej(REASON, "…")``)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.last = text
        return text

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_diagnostics(self, prefix: str = "rejected") -> dict[str, str]:
        """``{"rejected.<reason>": count, …, "rejected_last": text}`` for a DiagnosticStatus."""
        out = {f"{prefix}.{k}": str(v) for k, v in sorted(self.counts.items())}
        out[f"{prefix}_total"] = str(self.total)
        out[f"{prefix}_last"] = self.last
        return out


def stamp_lead(stamp_ns: int, now_ns: int, tolerance_s: float) -> str | None:
    """Why a stamp is refused (it lies more than ``tolerance_s`` ahead of ``now_ns``), or None."""
    lead = (stamp_ns - now_ns) / _NS
    if lead > tolerance_s:
        return f"stamp {lead:.3f} s in the future (tolerance {tolerance_s:g} s)"
    return None


class JointStateCheck:
    """Checks measured joint states against a robot profile.

    Args:
        robot: The profile (joint limits).
        safety: ``state_limit_tolerance`` (how far a measured position may lie outside its limits:
            encoders and simulated contacts overshoot a little) and ``max_stamp_lead_s``.

    Joints the profile does not know are allowed (a driver may publish more joints than the runtime
    drives) but must still be finite and named once.
    """

    def __init__(self, robot: RobotProfile, safety: SafetyConfig) -> None:
        tol = safety.state_limit_tolerance
        self._limits = {j.name: (j.position[0] - tol, j.position[1] + tol) for j in robot.joints}
        self.max_stamp_lead_s = safety.max_stamp_lead_s
        self._cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, str | None]] = {}
        self._last_names: tuple[str, ...] | None = None
        self._last_bounds: tuple[np.ndarray, np.ndarray, str | None] = (np.zeros(0), np.zeros(0), None)
        self.rejections = Rejections()

    def _bounds(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, str | None]:
        if names is self._last_names:  # the same layout object as last time: no hashing
            return self._last_bounds
        got = self._cache.get(names)
        if got is None:
            lo = np.array([self._limits.get(n, (-np.inf, np.inf))[0] for n in names], dtype=np.float64)
            hi = np.array([self._limits.get(n, (-np.inf, np.inf))[1] for n in names], dtype=np.float64)
            dup = sorted({n for n in names if names.count(n) > 1})
            got = (lo, hi, f"joint names listed twice: {dup}" if dup else None)
            if len(self._cache) > 64:  # a publisher that changes names every message: bounded memory
                self._cache.clear()
            self._cache[names] = got
        self._last_names, self._last_bounds = names, got
        return got

    def check(self, names: tuple[str, ...], positions: np.ndarray, stamp_ns: int | None = None,
              now_ns: int | None = None) -> str | None:
        """Why a joint state is refused (counted), or None when it may be used.

        Args:
            names: ``JointState.name`` as a tuple (the cache key: pass the same tuple object for the
                same layout where you can, as ``nodes/cdr.JointStateDecoder`` does).
            positions: ``JointState.position`` as float64.
            stamp_ns, now_ns: The header stamp and the receiver's clock (both on one time base), or
                None to skip the stamp check.
        """
        rej = self.rejections
        if len(names) == 0:
            return rej(EMPTY, "joint state without names")
        if len(positions) != len(names):
            return rej(LENGTH_MISMATCH, f"joint state with {len(names)} names and {len(positions)} positions")
        lo, hi, dup = self._bounds(names)
        if dup is not None:
            return rej(DUPLICATE_NAME, dup)
        inside = (positions >= lo) & (positions <= hi)  # NaN compares False: refused here too
        if not inside.all():
            i = int(np.argmin(inside))
            v = float(positions[i])
            if not math.isfinite(v):
                return rej(NON_FINITE, f"joint state {names[i]} = {v}")
            return rej(OUT_OF_LIMITS, f"joint state {names[i]} = {v:.6g} outside [{lo[i]:.4g}, {hi[i]:.4g}]")
        if stamp_ns is not None and now_ns is not None and stamp_ns != 0:
            why = stamp_lead(stamp_ns, now_ns, self.max_stamp_lead_s)
            if why is not None:
                return rej(FUTURE_STAMP, f"joint state {why}")
        return None


def dim_bounds(robot: RobotProfile, safety: SafetyConfig, dim_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The range each action dim of a layout can mean on this robot, widened by the tolerance.

    Joint dims: position limits (velocity limits for a ``forward_velocity`` group); Cartesian
    ``x, y, z``: the workspace box (±5 m without one); quaternion components: [-1, 1]; rotation
    vectors: [-π, π]; ``<group>/gripper``: the gripper's range; ``stiffness*``: the group's
    ``stiffness_limits``; base twist: ±``BASE_LINEAR_BOUND_MPS`` / ``BASE_ANGULAR_BOUND_RPS``. Dims the robot does not
    have get an infinite range here (the bridge refuses them by name before).
    """
    tol = safety.plan_limit_tolerance
    joint_kind = {j: KINDS[g.controller].command for g in robot.groups.values() for j in g.joints}
    limits = {j.name: j for j in robot.joints}
    box = robot.workspace
    lo = np.full(len(dim_names), -np.inf)
    hi = np.full(len(dim_names), np.inf)
    for i, name in enumerate(dim_names):
        if "/" not in name:
            j = limits.get(name)
            if j is None:
                continue
            if joint_kind.get(name) == "joint_velocity":
                lo[i], hi[i] = -j.velocity - tol, j.velocity + tol
            else:
                lo[i], hi[i] = j.position[0] - tol, j.position[1] + tol
            continue
        gname, _, comp = name.partition("/")
        g = robot.groups.get(gname)
        if g is None:
            continue
        if comp in ("x", "y", "z"):
            k = "xyz".index(comp)
            a, b = (box.min[k], box.max[k]) if box is not None else (-5.0, 5.0)
            lo[i], hi[i] = a - tol, b + tol
        elif comp in ("qx", "qy", "qz", "qw"):
            lo[i], hi[i] = -1.0 - 1e-3, 1.0 + 1e-3
        elif comp in ("rx", "ry", "rz"):
            lo[i], hi[i] = -math.pi - 1e-3, math.pi + 1e-3
        elif comp == "gripper":
            a, b = sorted(g.gripper_range) if g.gripper_range else limits[g.joints[0]].position
            lo[i], hi[i] = a - tol, b + tol
        elif comp.startswith("stiffness") and g.stiffness_limits is not None:
            a, b = g.stiffness_limits
            lo[i], hi[i] = a - 0.1 * (b - a), b + 0.1 * (b - a)
        elif comp in ("vx", "vy"):
            lo[i], hi[i] = -BASE_LINEAR_BOUND_MPS, BASE_LINEAR_BOUND_MPS
        elif comp == "wz":
            lo[i], hi[i] = -BASE_ANGULAR_BOUND_RPS, BASE_ANGULAR_BOUND_RPS
    return lo, hi


class PlanCheck:
    """Checks plans and chunks of one action layout: value ranges and the stamp's time window.

    Args:
        robot, safety: The config's robot profile and safety section (``plan_limit_tolerance``,
            ``plan_window_s``).
        dim_names: The layout (the plan's ``joint_names``).
    """

    def __init__(self, robot: RobotProfile, safety: SafetyConfig, dim_names: Sequence[str]) -> None:
        self.dim_names = tuple(dim_names)
        self.lo, self.hi = dim_bounds(robot, safety, self.dim_names)
        self.past_s, self.future_s = safety.plan_window_s

    def check(self, values: np.ndarray, stamp_s: float, now_s: float, rejections: Rejections) -> str | None:
        """Why a plan is refused (counted in ``rejections``), or None.

        Args:
            values: (H, A) positions of the plan's points, A = len(dim_names).
            stamp_s, now_s: The plan's header stamp and the receiver's clock, one time base.
        """
        if not self.past_s >= now_s - stamp_s >= -self.future_s:
            ahead = stamp_s - now_s
            reason = FUTURE_STAMP if ahead > 0 else STALE_STAMP
            return rejections(reason, f"plan stamped {ahead:+.3f} s from now (window -{self.past_s:g} / "
                                      f"+{self.future_s:g} s)")
        inside = (values >= self.lo) & (values <= self.hi)
        if not inside.all():
            h, a = np.unravel_index(int(np.argmin(inside)), inside.shape)
            v = float(values[h, a])
            if not math.isfinite(v):
                return rejections(NON_FINITE, f"plan point {h} {self.dim_names[a]} = {v}")
            return rejections(OUT_OF_LIMITS, f"plan point {h} {self.dim_names[a]} = {v:.6g} outside "
                                             f"[{self.lo[a]:.4g}, {self.hi[a]:.4g}]")
        return None


class TeleopCheck:
    """Checks operator commands against the configured teleop and joint limits.

    Args:
        robot: The profile (joint velocity limits).
        teleop: ``max_linear_mps``, ``max_angular_rps``.
        safety: ``velocity_scale``; ``max_stamp_lead_s``.
    """

    def __init__(self, robot: RobotProfile, teleop: TeleopConfig, safety: SafetyConfig) -> None:
        self.max_linear = teleop.max_linear_mps
        self.max_angular = teleop.max_angular_rps
        self.joint_velocity = {j.name: j.velocity * safety.velocity_scale for j in robot.joints}
        self.rejections = Rejections()

    def twist(self, v: np.ndarray) -> str | None:
        """A Cartesian twist (vx, vy, vz, wx, wy, wz): finite and not far over the teleop limits."""
        rej = self.rejections
        if not np.all(np.isfinite(v)):
            return rej(NON_FINITE, f"teleop twist {v.tolist()}")
        lin, ang = float(np.linalg.norm(v[:3])), float(np.linalg.norm(v[3:6]))
        if lin > TELEOP_REFUSE_FACTOR * self.max_linear or ang > TELEOP_REFUSE_FACTOR * self.max_angular:
            return rej(OVER_LIMIT, f"teleop twist |v| = {lin:.4g} m/s, |w| = {ang:.4g} rad/s, far over the limits "
                                   f"{self.max_linear:g} m/s / {self.max_angular:g} rad/s")
        return None

    def joint_jog(self, velocities: Mapping[str, float], names: Sequence[str]) -> str | None:
        """A joint jog (name → rad/s): known, distinct joints, finite, not far over their limits."""
        rej = self.rejections
        if len(velocities) != len(names):
            return rej(DUPLICATE_NAME if len(set(names)) != len(names) else LENGTH_MISMATCH,
                       f"teleop joint jog with names {list(names)} and {len(velocities)} velocities")
        for n, v in velocities.items():
            cap = self.joint_velocity.get(n)
            if cap is None:
                return rej(UNKNOWN_NAME, f"teleop joint jog names unknown joint {n!r}")
            if not math.isfinite(v):
                return rej(NON_FINITE, f"teleop joint jog {n} = {v}")
            if abs(v) > TELEOP_REFUSE_FACTOR * cap:
                return rej(OVER_LIMIT, f"teleop joint jog {n} = {v:.4g} rad/s, far over its limit {cap:.4g} rad/s")
        return None
