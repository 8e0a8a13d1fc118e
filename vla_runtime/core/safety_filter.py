"""Limits applied to every command before it leaves the process (pure numpy, injected time).

:class:`SafetyFilter` is built from the robot profile and the :class:`SafetyConfig`. Each
``filter_*`` call takes a requested command and the time it is meant for, and returns a
:class:`SafetyResult` holding what is really to be sent (LeRobot ``send_action`` style) and which
interventions shaped it. A command the filter cannot make safe (NaN/inf, an unknown joint, a zero
quaternion, no reference state) is *rejected*: the result says HOLD and names the bad value.

Joint commands are, in order:

1. checked: every name known, every value finite;
2. clipped into ``[lower + margin, upper - margin]``;
3. acceleration-limited relative to the previous step:
   ``|Δq/dt − v_prev| ≤ a_max · acceleration_scale · dt``;
4. step-limited relative to the last sent command: ``|Δq| ≤ max_joint_step_rad`` and
   ``|Δq| ≤ v_max · velocity_scale · dt`` (hard caps: they win over the acceleration limit);
5. clipped into the position range once more (the position limit always wins).

The reference ("last sent command") is updated only by accepted commands; after HOLD or TELEOP the
caller sets it to the measured state with :meth:`SafetyFilter.reset_reference`, so the next command
is limited relative to where the robot really is (bumpless resume).

Every intervention increments ``counters[kind]`` and ``counters_by_name[name][kind]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vla_runtime.core.config import RobotProfile, SafetyConfig
from vla_runtime.core.rotation import normalize_quaternion, quaternion_angle, quaternion_slerp

#: Intervention kinds (keys of :attr:`SafetyFilter.counters`).
NON_FINITE = "non_finite"
UNKNOWN_JOINT = "unknown_joint"
NO_REFERENCE = "no_reference"
POSITION_LIMIT = "position_limit"
STEP_LIMIT = "step_limit"
VELOCITY_LIMIT = "velocity_limit"
ACCELERATION_LIMIT = "acceleration_limit"
INVALID_QUATERNION = "invalid_quaternion"
WORKSPACE = "workspace"
CARTESIAN_STEP = "cartesian_step"
ROTATION_STEP = "rotation_step"
GRIPPER_RANGE = "gripper_range"
TWIST_LIMIT = "twist_limit"

_EPS = 1e-12


@dataclass(frozen=True)
class SafetyResult:
    """What the filter lets through.

    Attributes:
        names: Names of the values (joint names, or ``<group>/x`` … for pose/gripper/twist).
        values: What is really to be sent (meaningless when ``rejected``).
        rejected: True when the command must not be sent; the caller goes to HOLD.
        reason: Why it was rejected, naming the bad value ("" when accepted).
        interventions: Kinds of the limits that changed the command (may repeat per name).
        velocities: Filtered velocities when velocities were given, else None.
    """

    names: tuple[str, ...]
    values: np.ndarray
    rejected: bool = False
    reason: str = ""
    interventions: tuple[str, ...] = ()
    velocities: np.ndarray | None = None

    @property
    def hold(self) -> bool:
        """True when the caller must HOLD instead of sending this command."""
        return self.rejected

    @property
    def modified(self) -> bool:
        """True when a limit changed the command."""
        return bool(self.interventions)


@dataclass
class _PoseRef:
    position: np.ndarray
    quaternion: np.ndarray
    t: float | None = None


@dataclass
class _JointRef:
    position: float
    velocity: float = 0.0
    t: float | None = None


@dataclass
class _VelocityRef:
    velocity: float = 0.0  # last sent velocity command (forward_velocity groups)
    t: float | None = None


class SafetyFilter:
    """Position, rate, acceleration, workspace and magnitude limits for every command kind.

    Args:
        robot: The robot profile (joint limits, groups, workspace box).
        safety: Scales and step limits.
        command_period_s: Nominal time between commands; used as ``dt`` when the reference has no
            time or the given time does not advance.
        max_rotation_step_rad: Largest orientation change per Cartesian command.
        max_base_linear_mps: Base linear speed limit (before ``velocity_scale``).
        max_base_angular_rps: Base yaw-rate limit (before ``velocity_scale``).
    """

    def __init__(
        self,
        robot: RobotProfile,
        safety: SafetyConfig,
        command_period_s: float = 0.01,
        max_rotation_step_rad: float = 0.05,
        max_base_linear_mps: float = 0.5,
        max_base_angular_rps: float = 1.0,
    ) -> None:
        if not command_period_s > 0:
            raise ValueError(f"command_period_s must be > 0, got {command_period_s}")
        self.robot = robot
        self.safety = safety
        self.command_period_s = float(command_period_s)
        self.max_rotation_step_rad = float(max_rotation_step_rad)
        self.max_base_linear_mps = float(max_base_linear_mps)
        self.max_base_angular_rps = float(max_base_angular_rps)
        margin = safety.position_margin_rad
        self._lower: dict[str, float] = {}
        self._upper: dict[str, float] = {}
        self._vmax: dict[str, float] = {}
        self._amax: dict[str, float] = {}
        for j in robot.joints:
            lo, hi = j.position
            lo_m, hi_m = lo + margin, hi - margin
            if lo_m > hi_m:  # a margin wider than the range: pin to the middle
                lo_m = hi_m = (lo + hi) / 2.0
            self._lower[j.name], self._upper[j.name] = lo_m, hi_m
            self._vmax[j.name] = j.velocity * safety.velocity_scale
            self._amax[j.name] = j.acceleration * safety.acceleration_scale
        self._joint_ref: dict[str, _JointRef] = {}
        self._pose_ref: dict[str, _PoseRef] = {}
        self._vel_ref: dict[str, _VelocityRef] = {}
        self.counters: dict[str, int] = {}
        self.counters_by_name: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def total_interventions(self) -> int:
        """Sum over all intervention kinds."""
        return sum(self.counters.values())

    def _count(self, kind: str, name: str, hits: list[str]) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        per = self.counters_by_name.setdefault(name, {})
        per[kind] = per.get(kind, 0) + 1
        hits.append(kind)

    def _reject(self, names: Sequence[str], size: int, kind: str, name: str, reason: str) -> SafetyResult:
        hits: list[str] = []
        self._count(kind, name, hits)
        return SafetyResult(tuple(names), np.full(size, np.nan), True, reason, tuple(hits))

    def _dt(self, now_s: float, t_ref: float | None) -> float:
        if t_ref is None:
            return self.command_period_s
        dt = now_s - t_ref
        return dt if (math.isfinite(dt) and dt > 0) else self.command_period_s

    def position_limits(self, name: str) -> tuple[float, float]:
        """The commanded range of a joint (limits shrunk by the margin)."""
        return self._lower[name], self._upper[name]

    def reference(self, name: str) -> float | None:
        """The last sent (or reset) position of a joint, None if there is none."""
        ref = self._joint_ref.get(name)
        return None if ref is None else ref.position

    # ------------------------------------------------------------------ references
    def reset_reference(
        self,
        current_positions: Mapping[str, float],
        now_s: float | None = None,
        velocities: Mapping[str, float] | None = None,
    ) -> None:
        """Limit the next command relative to this (measured) state.

        Args:
            current_positions: Joint name → measured position.
            now_s: Time of that state; None = "one nominal period before the next command".
            velocities: Joint name → velocity at that state (default 0: starting from rest).

        Raises:
            KeyError: A joint name is not in the profile.
            ValueError: A value is not finite.
        """
        for name, pos in current_positions.items():
            if name not in self._lower:
                raise KeyError(f"unknown joint {name!r}")
            vel = 0.0 if velocities is None else float(velocities.get(name, 0.0))
            if not (math.isfinite(pos) and math.isfinite(vel)):
                raise ValueError(f"reference for {name} must be finite, got position={pos}, velocity={vel}")
            self._joint_ref[name] = _JointRef(float(pos), vel, now_s)
            self._vel_ref[name] = _VelocityRef(0.0, now_s)

    def reset_pose_reference(
        self, group: str, position: Sequence[float], quaternion: Sequence[float], now_s: float | None = None
    ) -> None:
        """Limit the next pose command of ``group`` relative to this (measured) pose.

        Raises:
            ValueError: Non-finite values or a zero quaternion.
        """
        p = np.asarray(position, dtype=np.float64).reshape(3)
        try:
            q = normalize_quaternion(np.asarray(quaternion, dtype=np.float64).reshape(4))
        except ValueError:
            q = None
        if q is None or not np.all(np.isfinite(p)):
            raise ValueError(f"reference pose of {group!r} must be finite with a non-zero quaternion, "
                             f"got position={p.tolist()}, quaternion={list(quaternion)}")
        self._pose_ref[group] = _PoseRef(p, q, now_s)

    # ------------------------------------------------------------------ joints
    def check_finite(self, names: Sequence[str], values: np.ndarray) -> str | None:
        """Reason naming the first non-finite value of a ``(A,)`` or ``(H, A)`` array, or None.

        Counts a ``non_finite`` intervention for that name when one is found.
        """
        arr = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if not bad.any():
            return None
        idx = np.argwhere(bad)[0]
        col = int(idx[-1])
        name = names[col] if col < len(names) else f"dim {col}"
        where = f" at point {int(idx[0])}" if arr.ndim == 2 else ""
        self._count(NON_FINITE, name, [])
        return f"non-finite command for {name}{where}: {float(arr[tuple(idx)])}"

    def filter_joint(
        self,
        names: Sequence[str],
        positions: Sequence[float] | np.ndarray,
        now_s: float,
        velocities: Sequence[float] | np.ndarray | None = None,
    ) -> SafetyResult:
        """Filter one joint-position command meant for time ``now_s``.

        Args:
            names: Joint names (any subset of the profile, any order).
            positions: Requested positions, one per name.
            now_s: Time the command takes effect (a trajectory point's time, or now).
            velocities: Optional requested velocities (clipped to the scaled limit).

        Returns:
            The positions to send; ``rejected`` for unknown joints, non-finite values or a joint
            without reference (call :meth:`reset_reference` with the measured state first).
        """
        names = tuple(names)
        q = np.asarray(positions, dtype=np.float64).reshape(-1)
        if q.shape[0] != len(names):
            raise ValueError(f"{len(names)} names but {q.shape[0]} positions")
        for n in names:
            if n not in self._lower:
                return self._reject(names, len(names), UNKNOWN_JOINT, n, f"unknown joint {n!r}")
        reason = self.check_finite(names, q)
        if reason is not None:
            return SafetyResult(names, np.full(len(names), np.nan), True, reason, (NON_FINITE,))
        v_req = None
        if velocities is not None:
            v_req = np.asarray(velocities, dtype=np.float64).reshape(-1)
            if v_req.shape[0] != len(names):
                raise ValueError(f"{len(names)} names but {v_req.shape[0]} velocities")
            reason = self.check_finite(names, v_req)
            if reason is not None:
                return SafetyResult(names, np.full(len(names), np.nan), True, "velocity " + reason, (NON_FINITE,))
        refs = []
        for n in names:
            ref = self._joint_ref.get(n)
            if ref is None:
                return self._reject(names, len(names), NO_REFERENCE, n,
                                    f"no reference state for {n}: reset_reference(measured) first")
            refs.append(ref)

        hits: list[str] = []
        out = np.empty(len(names))
        new_vel = np.empty(len(names))
        for i, (n, ref) in enumerate(zip(names, refs)):
            lo, hi = self._lower[n], self._upper[n]
            target = q[i]
            if target < lo or target > hi:
                target = min(max(target, lo), hi)
                self._count(POSITION_LIMIT, n, hits)
            dt = self._dt(now_s, ref.t)
            v = (target - ref.position) / dt
            dv = self._amax[n] * dt
            if v > ref.velocity + dv + _EPS or v < ref.velocity - dv - _EPS:
                v = min(max(v, ref.velocity - dv), ref.velocity + dv)
                self._count(ACCELERATION_LIMIT, n, hits)
            # Hard caps after the acceleration limit: a step never exceeds them.
            step_cap = self.safety.max_joint_step_rad
            vel_cap = self._vmax[n] * dt
            if abs(v * dt) > min(step_cap, vel_cap) + _EPS:
                self._count(STEP_LIMIT if step_cap <= vel_cap else VELOCITY_LIMIT, n, hits)
                v = math.copysign(min(step_cap, vel_cap), v) / dt
            pos = ref.position + v * dt
            if pos < lo or pos > hi:
                pos = min(max(pos, lo), hi)
                self._count(POSITION_LIMIT, n, hits)
            out[i] = pos
            new_vel[i] = (pos - ref.position) / dt
        v_out = None
        if v_req is not None:
            v_out = v_req.copy()
            for i, n in enumerate(names):
                cap = self._vmax[n]
                if abs(v_out[i]) > cap + _EPS:
                    v_out[i] = math.copysign(cap, v_out[i])
                    self._count(VELOCITY_LIMIT, n, hits)
        for i, ref in enumerate(refs):
            ref.position, ref.velocity, ref.t = float(out[i]), float(new_vel[i]), float(now_s)
        return SafetyResult(names, out, False, "", tuple(hits), v_out)

    def filter_joint_velocity(
        self,
        names: Sequence[str],
        velocities: Sequence[float] | np.ndarray,
        now_s: float,
        measured_positions: Mapping[str, float] | None = None,
    ) -> SafetyResult:
        """Filter a joint-velocity command (forward_velocity controllers).

        Clips ``|v|`` to the scaled velocity limit, limits the change from the last velocity command
        to the scaled acceleration × dt, and zeroes a velocity that would push a joint already at
        its (margin-shrunk) position limit further out.
        """
        names = tuple(names)
        v = np.asarray(velocities, dtype=np.float64).reshape(-1)
        if v.shape[0] != len(names):
            raise ValueError(f"{len(names)} names but {v.shape[0]} velocities")
        for n in names:
            if n not in self._lower:
                return self._reject(names, len(names), UNKNOWN_JOINT, n, f"unknown joint {n!r}")
        reason = self.check_finite(names, v)
        if reason is not None:
            return SafetyResult(names, np.full(len(names), np.nan), True, reason, (NON_FINITE,))
        hits: list[str] = []
        out = v.copy()
        for i, n in enumerate(names):
            ref = self._vel_ref.setdefault(n, _VelocityRef())
            cap = self._vmax[n]
            if abs(out[i]) > cap + _EPS:
                out[i] = math.copysign(cap, out[i])
                self._count(VELOCITY_LIMIT, n, hits)
            dt = self._dt(now_s, ref.t)
            dv = self._amax[n] * dt
            prev = ref.velocity
            if abs(out[i] - prev) > dv + _EPS:
                out[i] = min(max(out[i], prev - dv), prev + dv)
                self._count(ACCELERATION_LIMIT, n, hits)
            if measured_positions is not None and n in measured_positions:
                p = measured_positions[n]
                if (p >= self._upper[n] and out[i] > 0) or (p <= self._lower[n] and out[i] < 0):
                    out[i] = 0.0
                    self._count(POSITION_LIMIT, n, hits)
            ref.velocity, ref.t = float(out[i]), float(now_s)
        return SafetyResult(names, out, False, "", tuple(hits))

    # ------------------------------------------------------------------ Cartesian
    def filter_pose(
        self, group: str, position: Sequence[float], quaternion: Sequence[float], now_s: float
    ) -> SafetyResult:
        """Filter an end-effector pose target of a Cartesian group.

        The quaternion (x, y, z, w) is normalised (zero or non-finite → rejected) and kept in the
        reference's hemisphere; the position is clipped into the workspace box and the step from
        the last sent pose limited to ``max_cartesian_step_m`` (and the rotation to
        ``max_rotation_step_rad``).

        Returns:
            ``values`` = ``[x, y, z, qx, qy, qz, qw]``.
        """
        names = tuple(f"{group}/{a}" for a in ("x", "y", "z", "qx", "qy", "qz", "qw"))
        p = np.asarray(position, dtype=np.float64).reshape(-1)
        qr = np.asarray(quaternion, dtype=np.float64).reshape(-1)
        if p.shape[0] != 3 or qr.shape[0] != 4:
            raise ValueError(f"pose needs 3 position and 4 quaternion values, got {p.shape[0]} and {qr.shape[0]}")
        reason = self.check_finite(names, np.concatenate([p, qr]))
        if reason is not None:
            return SafetyResult(names, np.full(7, np.nan), True, reason, (NON_FINITE,))
        try:
            q = normalize_quaternion(qr)
        except ValueError:
            return self._reject(names, 7, INVALID_QUATERNION, group,
                                f"zero-norm quaternion for {group}: {qr.tolist()}")
        ref = self._pose_ref.get(group)
        if ref is None:
            return self._reject(names, 7, NO_REFERENCE, group,
                                f"no reference pose for {group}: reset_pose_reference(measured) first")
        hits: list[str] = []
        box = self.robot.workspace
        if box is not None:
            for i, axis in enumerate("xyz"):
                lo, hi = box.min[i], box.max[i]
                if p[i] < lo or p[i] > hi:
                    p[i] = min(max(p[i], lo), hi)
                    self._count(WORKSPACE, f"{group}/{axis}", hits)
        step = p - ref.position
        dist = float(np.linalg.norm(step))
        if dist > self.safety.max_cartesian_step_m + _EPS:
            p = ref.position + step * (self.safety.max_cartesian_step_m / dist)
            self._count(CARTESIAN_STEP, group, hits)
            if box is not None:  # the workspace always wins (the reference may lie outside it)
                p = np.clip(p, box.min, box.max)
        if float(np.dot(q, ref.quaternion)) < 0:
            q = -q
        angle = quaternion_angle(ref.quaternion, q)
        if angle > self.max_rotation_step_rad + 1e-9:
            q = quaternion_slerp(ref.quaternion, q, self.max_rotation_step_rad / angle)
            self._count(ROTATION_STEP, group, hits)
        ref.position, ref.quaternion, ref.t = p.copy(), q.copy(), float(now_s)
        return SafetyResult(names, np.concatenate([p, q]), False, "", tuple(hits))

    # ------------------------------------------------------------------ gripper, base
    def gripper_limits(self, group: str) -> tuple[float, float]:
        """The commandable opening range of a gripper group."""
        g = self.robot.groups[group]
        if g.gripper_range is not None:
            a, b = g.gripper_range
            return min(a, b), max(a, b)
        return self._lower[g.joints[0]], self._upper[g.joints[0]]

    def filter_gripper(self, group: str, value: float, now_s: float) -> SafetyResult:
        """Clip a gripper opening command into the group's range (non-finite → rejected)."""
        name = f"{group}/gripper"
        if group not in self.robot.groups:
            return self._reject((name,), 1, UNKNOWN_JOINT, group, f"unknown group {group!r}")
        v = float(value)
        if not math.isfinite(v):
            self._count(NON_FINITE, name, [])
            return SafetyResult((name,), np.array([np.nan]), True, f"non-finite command for {name}: {v}", (NON_FINITE,))
        lo, hi = self.gripper_limits(group)
        hits: list[str] = []
        if v < lo or v > hi:
            v = min(max(v, lo), hi)
            self._count(GRIPPER_RANGE, name, hits)
        return SafetyResult((name,), np.array([v]), False, "", tuple(hits))

    def filter_twist(self, group: str, vx: float, vy: float, wz: float, now_s: float) -> SafetyResult:
        """Limit a base twist: planar speed and yaw rate magnitudes (non-finite → rejected)."""
        names = (f"{group}/vx", f"{group}/vy", f"{group}/wz")
        v = np.array([vx, vy, wz], dtype=np.float64)
        reason = self.check_finite(names, v)
        if reason is not None:
            return SafetyResult(names, np.full(3, np.nan), True, reason, (NON_FINITE,))
        hits: list[str] = []
        lin_cap = self.max_base_linear_mps * self.safety.velocity_scale
        ang_cap = self.max_base_angular_rps * self.safety.velocity_scale
        speed = float(math.hypot(v[0], v[1]))
        if speed > lin_cap + _EPS:
            v[:2] *= lin_cap / speed
            self._count(TWIST_LIMIT, names[0], hits)
        if abs(v[2]) > ang_cap + _EPS:
            v[2] = math.copysign(ang_cap, v[2])
            self._count(TWIST_LIMIT, names[2], hits)
        return SafetyResult(names, v, False, "", tuple(hits))
