"""ros2_control controller semantics for the simulated robot, as torque laws (no rclpy).

The robot's joints are driven by torque motors; each controller turns its command into joint
torques once per physics step, always including gravity (and Coriolis) compensation from MuJoCo's
``qfrc_bias`` and clipping to the joints' effort limits. Call :meth:`Controller.update` between
``mujoco.mj_step1`` and ``mujoco.mj_step2`` so that kinematics, mass matrix and bias forces are
those of the current state.

Every controller has an ``active`` flag. :meth:`Controller.accept` takes a command object (plain
dataclasses and arrays below, converted from ROS messages by the node) and returns whether it was
applied; inactive controllers and malformed commands are rejected, counted in ``rejected`` and
described in ``last_rejection``. Nothing here raises on a bad command.

Joint-space controllers share one tracking law, computed torque:
``tau = M(q) (a_d + Kp (q_d - q) + Kd (v_d - v)) + bias(q, v)`` with critically damped gains, so
tracking is the same for heavy and light joints. Impedance controllers use their own
(compliant) laws: they are springs, not trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_runtime.core.rotation import quaternion_to_matrix, rotation_error

#: ros2_control type strings reported by list_controllers.
CONTROLLER_TYPES: dict[str, str] = {
    "joint_trajectory": "joint_trajectory_controller/JointTrajectoryController",
    "forward_position": "position_controllers/JointGroupPositionController",
    "forward_velocity": "velocity_controllers/JointGroupVelocityController",
    "cartesian_impedance": "crisp_controllers/CartesianController",
    "joint_impedance": "crisp_controllers/JointImpedanceController",
    "gripper": "position_controllers/GripperForwardController",
    "base_twist": "diff_drive_controller/DiffDriveController",
    "hold": "vla_runtime_sim/HoldPositionController",
}


# ----------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class TrajectoryCommand:
    """A joint trajectory (trajectory_msgs/JointTrajectory without ROS types).

    Attributes:
        joint_names: joint of each column, in the message's order.
        times: ``time_from_start`` of each point (s), strictly increasing.
        positions: one row per point.
        velocities: per point, a row or None (not given).
        accelerations: per point, a row or None (not given).
        start_time: absolute controller time of ``time_from_start = 0``; None: now (zero stamp).
    """

    joint_names: Sequence[str]
    times: Sequence[float]
    positions: Sequence[Sequence[float]]
    velocities: Sequence[Sequence[float] | None] | None = None
    accelerations: Sequence[Sequence[float] | None] | None = None
    start_time: float | None = None


@dataclass(frozen=True)
class JointTargetCommand:
    """A joint target (sensor_msgs/JointState on ``~/target_joint``): names in any order."""

    joint_names: Sequence[str]
    positions: Sequence[float]
    velocities: Sequence[float] | None = None


@dataclass(frozen=True)
class PoseCommand:
    """A Cartesian target in the robot base frame: position xyz and quaternion (x, y, z, w)."""

    position: Sequence[float]
    quaternion: Sequence[float]


@dataclass(frozen=True)
class StiffnessCommand:
    """A stiffness target: 6 (diagonal) or 36 (row-major 6x6) Cartesian values, or one per joint."""

    values: Sequence[float]


@dataclass(frozen=True)
class TwistCommand:
    """A base velocity: linear xyz (m/s) and angular xyz (rad/s) in the base frame."""

    linear: Sequence[float]
    angular: Sequence[float]


class CommandError(ValueError):
    """A command that must not be applied; the message names the bad value."""


# ------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class JointSet:
    """Model indices and limits of a controller's joints, in the controller's order.

    Attributes:
        names: joint names.
        qpos: qpos address of each joint.
        dof: dof address of each joint.
        actuators: id of the motor driving each joint.
        lower / upper: position limits.
        velocity: velocity limits (>0).
        effort: effort limits (>0).
    """

    names: tuple[str, ...]
    qpos: np.ndarray
    dof: np.ndarray
    actuators: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray

    @classmethod
    def from_model(cls, model: mujoco.MjModel, names: Sequence[str],
                   limits: dict[str, tuple[float, float, float, float]] | None = None) -> JointSet:
        """Look joints up in ``model``.

        Args:
            model: the compiled model.
            names: joint names in the controller's order.
            limits: name → (lower, upper, velocity, effort); missing joints use the model's range,
                2 rad/s and the motor's control range.

        Raises:
            KeyError: a joint is not in the model, or has no motor.
        """
        limits = limits or {}
        motor_of = {}
        for a in range(model.nu):
            if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT:
                motor_of[int(model.actuator_trnid[a, 0])] = a
        qpos, dof, acts, lo, hi, vel, eff = [], [], [], [], [], [], []
        for n in names:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)
            if jid < 0:
                raise KeyError(f"joint {n!r} is not in the sim model")
            if jid not in motor_of:
                raise KeyError(f"joint {n!r} has no motor in the sim model")
            a = motor_of[jid]
            qpos.append(model.jnt_qposadr[jid])
            dof.append(model.jnt_dofadr[jid])
            acts.append(a)
            if n in limits:
                low, u, v, e = limits[n]
            else:
                low, u = model.jnt_range[jid] if model.jnt_limited[jid] else (-math.inf, math.inf)
                v, e = 2.0, float(max(abs(model.actuator_ctrlrange[a][0]), abs(model.actuator_ctrlrange[a][1])))
            lo.append(low)
            hi.append(u)
            vel.append(v)
            eff.append(e)
        ints = [np.asarray(x, dtype=int) for x in (qpos, dof, acts)]
        return cls(tuple(names), *ints, *(np.asarray(x, dtype=float) for x in (lo, hi, vel, eff)))

    def __len__(self) -> int:
        return len(self.names)


def mass_submatrix(model: mujoco.MjModel, data: mujoco.MjData, dof: np.ndarray) -> np.ndarray:
    """Joint-space inertia M restricted to ``dof`` (valid after mj_step1 / mj_forward)."""
    full = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, full)
    return full[np.ix_(dof, dof)]


def _finite_array(values, n: int | None, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise CommandError(f"{what} must be numbers, got {values!r}") from None
    if n is not None and arr.size != n:
        raise CommandError(f"{what} has {arr.size} values, expected {n}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise CommandError(f"{what}[{int(bad[0])}] = {arr[bad[0]]} is not finite")
    return arr


def _reorder(names: Sequence[str], expected: Sequence[str], what: str) -> np.ndarray:
    """Index array mapping ``expected`` order into ``names`` order; names must be a permutation."""
    names = list(names)
    if len(set(names)) != len(names):
        raise CommandError(f"{what}: joint names listed twice: {names}")
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise CommandError(f"{what}: unknown joint(s) {unknown}; this controller has {list(expected)}")
    missing = [n for n in expected if n not in names]
    if missing:
        raise CommandError(f"{what}: missing joint(s) {missing}")
    return np.array([names.index(n) for n in expected], dtype=int)


# ----------------------------------------------------------------------------------------- base class


class Controller:
    """Base class: activation, command bookkeeping and the computed-torque tracking law.

    Args:
        name: controller name in the controller manager.
        joints: the joints it claims.
        omega: closed-loop natural frequency (rad/s) of the tracking law.
    """

    kind = "hold"
    interface = "position"

    def __init__(self, name: str, joints: JointSet, omega: float = 25.0):
        self.name = name
        self.joints = joints
        self.active = False
        self.accepted = 0
        self.rejected = 0
        self.last_rejection = ""
        self.kp = omega**2
        self.kd = 2.0 * omega
        #: As ros2_controllers' ``cmd_timeout``: with no new command for this long (for a trajectory
        #: controller: after its trajectory's end), the controller holds where it is. None: off.
        self.cmd_timeout_s: float | None = None
        self.timeouts = 0
        self._last_cmd = -math.inf
        self._expired = False

    @property
    def type_name(self) -> str:
        """The ros2_control type string."""
        return CONTROLLER_TYPES[self.kind]

    @property
    def claimed_interfaces(self) -> list[str]:
        """Command interfaces this controller claims while active."""
        return [f"{n}/{self.interface}" for n in self.joints.names]

    def activate(self, model: mujoco.MjModel, data: mujoco.MjData, now: float) -> None:
        """Become active, holding the current state until the first command."""
        self.active = True
        self._last_cmd, self._expired = now, False
        self._on_activate(model, data, now)

    def deactivate(self) -> None:
        """Become inactive: commands are rejected, :meth:`update` is no longer called."""
        self.active = False

    def accept(self, command, now: float) -> bool:
        """Apply a command at controller time ``now``; False (counted) when inactive or malformed."""
        if not self.active:
            return self.reject(f"controller {self.name!r} is inactive")
        try:
            self._accept(command, now)
        except CommandError as e:
            return self.reject(f"{self.name}: {e}")
        self.accepted += 1
        self._last_cmd, self._expired = now, False
        return True

    def expire(self, data: mujoco.MjData, now: float) -> bool:
        """Apply the command timeout (called every physics step before :meth:`update`): the first time
        the last command has outlived ``cmd_timeout_s``, hold where the controller is. True then."""
        if self.cmd_timeout_s is None or self._expired or now <= self._command_end() + self.cmd_timeout_s:
            return False
        self._expired = True
        self.timeouts += 1
        self._on_timeout(data, now)
        return True

    def _command_end(self) -> float:
        """When the last command stops asking for anything (its arrival; a trajectory's last point)."""
        return self._last_cmd

    def _on_timeout(self, data: mujoco.MjData, now: float) -> None:
        """Hold here: the command is stale (each controller says what holding means for it)."""

    def update(self, model: mujoco.MjModel, data: mujoco.MjData, now: float) -> np.ndarray:
        """Joint torques (controller order) for this physics step."""
        raise NotImplementedError

    # -- internals
    def reject(self, why: str) -> bool:
        """Count a rejected command and remember why (also used for messages that fail to parse)."""
        self.rejected += 1
        self.last_rejection = why
        return False

    def _accept(self, command, now: float) -> None:
        raise CommandError(f"controller {self.name!r} takes no commands")

    def _on_activate(self, model: mujoco.MjModel, data: mujoco.MjData, now: float) -> None:
        pass

    def _q(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self.joints.qpos].copy()

    def _v(self, data: mujoco.MjData) -> np.ndarray:
        return data.qvel[self.joints.dof].copy()

    def _clip(self, tau: np.ndarray) -> np.ndarray:
        return np.clip(tau, -self.joints.effort, self.joints.effort)

    def _track(self, model, data, q_d, v_d, a_d) -> np.ndarray:
        e = q_d - self._q(data)
        de = v_d - self._v(data)
        m = mass_submatrix(model, data, self.joints.dof)
        tau = m @ (a_d + self.kp * e + self.kd * de) + data.qfrc_bias[self.joints.dof]
        return self._clip(tau)


# ---------------------------------------------------------------------------------------- controllers


class HoldPositionController(Controller):
    """Captures q on activation and holds it stiffly (the profile's hold controller)."""

    kind = "hold"
    interface = "position"

    def __init__(self, name: str, joints: JointSet, omega: float = 30.0):
        super().__init__(name, joints, omega)
        self.hold_q = np.zeros(len(joints))

    def _on_activate(self, model, data, now) -> None:
        self.hold_q = self._q(data)

    def capture(self, data: mujoco.MjData) -> None:
        """Hold the current position from now on."""
        self.hold_q = self._q(data)

    def update(self, model, data, now) -> np.ndarray:
        z = np.zeros(len(self.joints))
        return self._track(model, data, self.hold_q, z, z)


class JointTrajectoryController(Controller):
    """joint_trajectory_controller semantics.

    * A new trajectory replaces the remainder of the current one at the current time: the
      reference is spliced at ``now`` from the current desired position and velocity, so the
      reference stays continuous in position and velocity.
    * ``start_time`` None (zero header stamp) starts now; points already in the past are dropped;
      a trajectory whose every point is in the past is rejected (unless it started "now", in which
      case its last point is taken as an immediate set point).
    * Between points: quintic when both ends give velocities and accelerations, cubic Hermite
      when velocities are given; for points without velocities the velocity is estimated from the
      neighbouring segments (mean of the slopes, zero at a slope sign change and at the last point),
      which keeps the reference C1.
    * Holds the last point at the end. Joint order of the message may differ from the controller's.
    """

    kind = "joint_trajectory"
    interface = "position"

    def __init__(self, name: str, joints: JointSet, omega: float = 25.0):
        super().__init__(name, joints, omega)
        n = len(joints)
        self._kt = np.zeros(1)
        self._kq = np.zeros((1, n))
        self._kv = np.zeros((1, n))
        self._ka: list[np.ndarray | None] = [None]

    @property
    def end_time(self) -> float:
        """Controller time of the last point of the current trajectory."""
        return float(self._kt[-1])

    def _on_activate(self, model, data, now) -> None:
        self._set_hold(self._q_of(data), now)

    def _q_of(self, data) -> np.ndarray:
        return data.qpos[self.joints.qpos].copy()

    def _set_hold(self, q: np.ndarray, now: float) -> None:
        self._kt = np.array([now])
        self._kq = q.reshape(1, -1).copy()
        self._kv = np.zeros_like(self._kq)
        self._ka = [np.zeros(len(q))]

    def desired(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference (position, velocity, acceleration) at ``now``."""
        t = self._kt
        n = len(self.joints)
        if now <= t[0]:
            return self._kq[0].copy(), self._kv[0].copy() if len(t) > 1 else np.zeros(n), np.zeros(n)
        if now >= t[-1]:
            return self._kq[-1].copy(), np.zeros(n), np.zeros(n)
        i = int(np.searchsorted(t, now, side="right")) - 1
        T = t[i + 1] - t[i]
        s = now - t[i]
        q0, q1, v0, v1 = self._kq[i], self._kq[i + 1], self._kv[i], self._kv[i + 1]
        a0, a1 = self._ka[i], self._ka[i + 1]
        if a0 is not None and a1 is not None:
            return _quintic(q0, v0, a0, q1, v1, a1, T, s)
        return _cubic(q0, v0, q1, v1, T, s)

    def _accept(self, cmd: TrajectoryCommand, now: float) -> None:
        if not isinstance(cmd, TrajectoryCommand):
            raise CommandError(f"expected a TrajectoryCommand, got {type(cmd).__name__}")
        n = len(self.joints)
        order = _reorder(cmd.joint_names, self.joints.names, "trajectory")
        if len(cmd.positions) == 0:
            raise CommandError("trajectory has no points")
        if len(cmd.times) != len(cmd.positions):
            raise CommandError(f"{len(cmd.times)} times for {len(cmd.positions)} points")
        times = _finite_array(cmd.times, None, "time_from_start")
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            raise CommandError(f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
        if cmd.start_time is not None and not math.isfinite(cmd.start_time):
            raise CommandError(f"start time {cmd.start_time} is not finite")
        qs, vs, accs = [], [], []
        vel_rows = cmd.velocities or [None] * len(cmd.positions)
        acc_rows = cmd.accelerations or [None] * len(cmd.positions)
        if len(vel_rows) != len(cmd.positions) or len(acc_rows) != len(cmd.positions):
            raise CommandError("velocities/accelerations must be given for every point or none")
        for k, row in enumerate(cmd.positions):
            qs.append(_finite_array(row, n, f"points[{k}].positions")[order])
            vr, ar = vel_rows[k], acc_rows[k]
            vs.append(None if vr is None or len(vr) == 0 else _finite_array(vr, n, f"points[{k}].velocities")[order])
            accs.append(None if ar is None or len(ar) == 0 else
                        _finite_array(ar, n, f"points[{k}].accelerations")[order])
        start = now if cmd.start_time is None else float(cmd.start_time)
        abs_t = start + times
        keep = abs_t > now + 1e-9
        if not keep.any():
            if cmd.start_time is None:
                self._set_hold(qs[-1], now)
                return
            raise CommandError(f"all points are in the past (last one {now - abs_t[-1]:.3f} s ago)")
        q_now, v_now, a_now = self.desired(now)
        idx = np.flatnonzero(keep)
        t_new = np.concatenate([[now], abs_t[idx]])
        q_new = np.vstack([q_now] + [qs[k] for k in idx])
        v_given: list[np.ndarray | None] = [v_now] + [vs[k] for k in idx]
        a_new: list[np.ndarray | None] = [a_now] + [accs[k] for k in idx]
        self._kt, self._kq, self._kv, self._ka = t_new, q_new, _fill_velocities(t_new, q_new, v_given), a_new

    def _command_end(self) -> float:
        return max(self._last_cmd, self.end_time)

    def _on_timeout(self, data, now) -> None:
        self._set_hold(self.desired(now)[0], now)

    def update(self, model, data, now) -> np.ndarray:
        q_d, v_d, a_d = self.desired(now)
        return self._track(model, data, q_d, v_d, a_d)


def _fill_velocities(t: np.ndarray, q: np.ndarray, given: list[np.ndarray | None]) -> np.ndarray:
    """Velocities at knots: given ones kept; others estimated so the spline is C1."""
    k = len(t)
    v = np.zeros_like(q)
    slopes = np.diff(q, axis=0) / np.diff(t)[:, None] if k > 1 else np.zeros((0, q.shape[1]))
    for i in range(k):
        if given[i] is not None:
            v[i] = given[i]
        elif i == k - 1 or i == 0:
            v[i] = 0.0
        else:
            s0, s1 = slopes[i - 1], slopes[i]
            v[i] = np.where(np.sign(s0) == np.sign(s1), 0.5 * (s0 + s1), 0.0)
    return v


def _cubic(q0, v0, q1, v1, T, s):
    """Cubic Hermite segment sampled at s in [0, T]: (q, v, a)."""
    dq = q1 - q0
    c2 = (3 * dq - (2 * v0 + v1) * T) / T**2
    c3 = (-2 * dq + (v0 + v1) * T) / T**3
    q = q0 + v0 * s + c2 * s**2 + c3 * s**3
    v = v0 + 2 * c2 * s + 3 * c3 * s**2
    a = 2 * c2 + 6 * c3 * s
    return q, v, a


def _quintic(q0, v0, a0, q1, v1, a1, T, s):
    """Quintic segment matching position, velocity and acceleration at both ends."""
    dq = q1 - q0
    c3 = (20 * dq - (8 * v1 + 12 * v0) * T - (3 * a0 - a1) * T**2) / (2 * T**3)
    c4 = (-30 * dq + (14 * v1 + 16 * v0) * T + (3 * a0 - 2 * a1) * T**2) / (2 * T**4)
    c5 = (12 * dq - 6 * (v1 + v0) * T - (a0 - a1) * T**2) / (2 * T**5)
    q = q0 + v0 * s + 0.5 * a0 * s**2 + c3 * s**3 + c4 * s**4 + c5 * s**5
    v = v0 + a0 * s + 3 * c3 * s**2 + 4 * c4 * s**3 + 5 * c5 * s**4
    a = a0 + 6 * c3 * s + 12 * c4 * s**2 + 20 * c5 * s**3
    return q, v, a


class ForwardPositionController(Controller):
    """forward_command_controller (position): ``~/commands`` sets the joint positions.

    Like a robot's internal position interface, the reference moves toward the command at most at
    the joints' velocity limits (no infinite-velocity steps); commands are clipped to the position
    limits.
    """

    kind = "forward_position"
    interface = "position"

    def __init__(self, name: str, joints: JointSet, omega: float = 25.0):
        super().__init__(name, joints, omega)
        self.command = np.zeros(len(joints))
        self._ref = np.zeros(len(joints))
        self._last = 0.0

    def _on_activate(self, model, data, now) -> None:
        self.command = self._q(data)
        self._ref = self.command.copy()
        self._last = now

    def _accept(self, command, now) -> None:
        cmd = _finite_array(command, len(self.joints), "commands")
        self.command = np.clip(cmd, self.joints.lower, self.joints.upper)

    def _on_timeout(self, data, now) -> None:
        self.command = self._ref.copy()  # the reference stops where it is

    def update(self, model, data, now) -> np.ndarray:
        dt = max(0.0, now - self._last)
        self._last = now
        step = np.clip(self.command - self._ref, -self.joints.velocity * dt, self.joints.velocity * dt)
        self._ref = self._ref + step
        v_d = step / dt if dt > 0 else np.zeros_like(step)
        return self._track(model, data, self._ref, v_d, np.zeros_like(step))


class GripperController(ForwardPositionController):
    """Position-commanded gripper: the set point moves toward the command at the max speed.

    Args:
        name: controller name.
        joints: the commanded gripper joint(s).
        gripper_range: [closed, open]; commands are clipped into it.
        stiffness: N/m (or N·m/rad) of the PD around the moving set point; the effort limit
            bounds the grasp force.
    """

    kind = "gripper"
    interface = "position"

    def __init__(self, name: str, joints: JointSet, gripper_range: tuple[float, float] | None = None,
                 stiffness: float = 4000.0, damping: float = 40.0):
        super().__init__(name, joints)
        lo, hi = gripper_range if gripper_range is not None else (joints.lower[0], joints.upper[0])
        self.lo, self.hi = min(lo, hi), max(lo, hi)
        self.stiffness = stiffness
        self.damping = damping

    def _accept(self, command, now) -> None:
        cmd = _finite_array(command, len(self.joints), "commands")
        self.command = np.clip(cmd, self.lo, self.hi)

    def update(self, model, data, now) -> np.ndarray:
        dt = max(0.0, now - self._last)
        self._last = now
        step = np.clip(self.command - self._ref, -self.joints.velocity * dt, self.joints.velocity * dt)
        self._ref = self._ref + step
        v_d = step / dt if dt > 0 else np.zeros_like(step)
        tau = (self.stiffness * (self._ref - self._q(data)) + self.damping * (v_d - self._v(data))
               + data.qfrc_bias[self.joints.dof])
        return self._clip(tau)


class ForwardVelocityController(Controller):
    """forward_command_controller (velocity): ``~/commands`` sets joint velocities.

    The velocity is integrated into a position reference (clipped to the limits) that the joints
    track; a command older than ``timeout_s`` falls back to zero velocity.
    """

    kind = "forward_velocity"
    interface = "velocity"

    def __init__(self, name: str, joints: JointSet, timeout_s: float = 0.5, omega: float = 25.0):
        super().__init__(name, joints, omega)
        self.timeout_s = timeout_s
        self.command = np.zeros(len(joints))
        self._stamp = -math.inf
        self._ref = np.zeros(len(joints))
        self._last = 0.0

    def _on_activate(self, model, data, now) -> None:
        self.command = np.zeros(len(self.joints))
        self._ref = self._q(data)
        self._last = now
        self._stamp = -math.inf

    def _accept(self, command, now) -> None:
        cmd = _finite_array(command, len(self.joints), "commands")
        self.command = np.clip(cmd, -self.joints.velocity, self.joints.velocity)
        self._stamp = now

    def _on_timeout(self, data, now) -> None:
        self.command = np.zeros(len(self.joints))

    def update(self, model, data, now) -> np.ndarray:
        dt = max(0.0, now - self._last)
        self._last = now
        v = self.command if now - self._stamp <= self.timeout_s else np.zeros(len(self.joints))
        new_ref = np.clip(self._ref + v * dt, self.joints.lower, self.joints.upper)
        v_d = (new_ref - self._ref) / dt if dt > 0 else np.zeros_like(v)
        self._ref = new_ref
        return self._track(model, data, self._ref, v_d, np.zeros_like(v))


class JointImpedanceController(Controller):
    """CRISP-style joint impedance: ``tau = K (q_d - q) + D (v_d - v) + bias``.

    D is critically damped per joint from K and the diagonal of the joint inertia. The target is a
    JointState (names in any order, positions required, velocities optional); the stiffness can be
    changed with one value per joint within ``stiffness_limits``.
    """

    kind = "joint_impedance"
    interface = "effort"

    def __init__(self, name: str, joints: JointSet, stiffness: Sequence[float] | None = None,
                 stiffness_limits: tuple[float, float] | None = None):
        super().__init__(name, joints)
        default = np.minimum(400.0, 4.0 * joints.effort)
        self.stiffness = default if stiffness is None else _finite_array(stiffness, len(joints), "stiffness")
        self.stiffness_limits = stiffness_limits
        self.target = np.zeros(len(joints))
        self.target_velocity = np.zeros(len(joints))

    def _on_activate(self, model, data, now) -> None:
        self.target = self._q(data)
        self.target_velocity = np.zeros(len(self.joints))

    def _accept(self, command, now) -> None:
        if isinstance(command, StiffnessCommand):
            if self.stiffness_limits is None:
                raise CommandError("stiffness is not commandable (no stiffness_limits in the profile)")
            k = _finite_array(command.values, len(self.joints), "target_stiffness")
            lo, hi = self.stiffness_limits
            out = np.flatnonzero((k < lo) | (k > hi))
            if out.size:
                raise CommandError(f"target_stiffness[{int(out[0])}] = {k[out[0]]} outside [{lo}, {hi}]")
            self.stiffness = k
            return
        if not isinstance(command, JointTargetCommand):
            raise CommandError(f"expected a JointTargetCommand, got {type(command).__name__}")
        order = _reorder(command.joint_names, self.joints.names, "target_joint")
        q = _finite_array(command.positions, len(self.joints), "target_joint.position")[order]
        v = np.zeros(len(self.joints))
        if command.velocities is not None and len(command.velocities) > 0:
            v = _finite_array(command.velocities, len(self.joints), "target_joint.velocity")[order]
        self.target = np.clip(q, self.joints.lower, self.joints.upper)
        self.target_velocity = v

    def _on_timeout(self, data, now) -> None:
        self.target = self._q(data)
        self.target_velocity = np.zeros(len(self.joints))

    def update(self, model, data, now) -> np.ndarray:
        m_diag = np.diag(mass_submatrix(model, data, self.joints.dof))
        d = 2.0 * np.sqrt(self.stiffness * m_diag)
        tau = (self.stiffness * (self.target - self._q(data)) + d * (self.target_velocity - self._v(data))
               + data.qfrc_bias[self.joints.dof])
        return self._clip(tau)


class CartesianImpedanceController(Controller):
    """Operational-space impedance toward a target pose of an end-effector body.

    ``F = K (x_d - x) - D x_dot`` with D critically damped from K and the task-space inertia
    ``Lambda = (J M^-1 J^T)^-1`` (``D = Lambda^1/2 K^1/2 + K^1/2 Lambda^1/2``); ``tau = J^T F +
    N (K_n (q_home - q) - D_n v) + bias`` with the dynamically consistent nullspace projector N
    pulling toward the home posture. Like CRISP's controllers, the pose error is clipped
    (``max_position_error`` m, ``max_rotation_error`` rad) so a far target gives a bounded pull.

    Args:
        name: controller name.
        joints: arm joints.
        ee_body: body id of the controlled frame.
        base_body: body id of the frame targets are expressed in (-1: world).
        home: nullspace posture (controller joint order).
        stiffness: 6 (diagonal) or 36 values; default 500 N/m, 30 N·m/rad.
        stiffness_limits: allowed [min, max] of commanded values; None: not commandable.
    """

    kind = "cartesian_impedance"
    interface = "effort"

    def __init__(self, name: str, joints: JointSet, ee_body: int, base_body: int = -1,
                 home: np.ndarray | None = None, stiffness: Sequence[float] | None = None,
                 stiffness_limits: tuple[float, float] | None = None, nullspace_stiffness: float = 10.0,
                 max_position_error: float = 0.1, max_rotation_error: float = 0.5):
        super().__init__(name, joints)
        self.ee_body = ee_body
        self.base_body = base_body
        self.home = np.zeros(len(joints)) if home is None else np.asarray(home, float)
        self.stiffness_limits = stiffness_limits
        self.K = np.diag([500.0, 500.0, 500.0, 30.0, 30.0, 30.0])
        if stiffness is not None:
            self.K = self._stiffness_matrix(stiffness, check_limits=False)
        self.nullspace_stiffness = nullspace_stiffness
        self.max_position_error = max_position_error
        self.max_rotation_error = max_rotation_error
        self.target_pos = np.zeros(3)  # base frame
        self.target_rot = np.eye(3)  # base frame
        nv = 0
        self._jacp = self._jacr = np.zeros((3, nv))

    def _stiffness_matrix(self, values: Sequence[float], check_limits: bool = True) -> np.ndarray:
        k = _finite_array(values, None, "target_stiffness")
        if k.size == 6:
            mat = np.diag(k)
        elif k.size == 36:
            mat = k.reshape(6, 6)
            if not np.allclose(mat, mat.T, atol=1e-6):
                raise CommandError("target_stiffness 6x6 matrix is not symmetric")
            if np.linalg.eigvalsh(mat).min() < -1e-9:
                raise CommandError("target_stiffness 6x6 matrix is not positive semi-definite")
        else:
            raise CommandError(f"target_stiffness has {k.size} values, expected 6 or 36")
        if check_limits:
            if self.stiffness_limits is None:
                raise CommandError("stiffness is not commandable (no stiffness_limits in the profile)")
            lo, hi = self.stiffness_limits
            diag = np.diag(mat)
            out = np.flatnonzero((diag < lo) | (diag > hi))
            if out.size:
                raise CommandError(f"target_stiffness[{int(out[0])}] = {diag[out[0]]} outside [{lo}, {hi}]")
        return mat

    def _base(self, data) -> tuple[np.ndarray, np.ndarray]:
        if self.base_body < 0:
            return np.zeros(3), np.eye(3)
        return data.xpos[self.base_body].copy(), data.xmat[self.base_body].reshape(3, 3).copy()

    def _on_activate(self, model, data, now) -> None:
        pb, rb = self._base(data)
        self.target_pos = rb.T @ (data.xpos[self.ee_body] - pb)
        self.target_rot = rb.T @ data.xmat[self.ee_body].reshape(3, 3)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def _accept(self, command, now) -> None:
        if isinstance(command, StiffnessCommand):
            self.K = self._stiffness_matrix(command.values)
            return
        if not isinstance(command, PoseCommand):
            raise CommandError(f"expected a PoseCommand, got {type(command).__name__}")
        p = _finite_array(command.position, 3, "target_pose.position")
        q = _finite_array(command.quaternion, 4, "target_pose.orientation")
        try:
            self.target_pos, self.target_rot = p, quaternion_to_matrix(q)
        except ValueError:
            raise CommandError(f"target_pose.orientation {q.tolist()} has zero norm") from None

    def _on_timeout(self, data, now) -> None:
        pb, rb = self._base(data)
        self.target_pos = rb.T @ (data.xpos[self.ee_body] - pb)
        self.target_rot = rb.T @ data.xmat[self.ee_body].reshape(3, 3)

    def update(self, model, data, now) -> np.ndarray:
        dof = self.joints.dof
        pb, rb = self._base(data)
        x = data.xpos[self.ee_body]
        r = data.xmat[self.ee_body].reshape(3, 3)
        x_d = pb + rb @ self.target_pos
        r_d = rb @ self.target_rot
        e_p = x_d - x
        n = np.linalg.norm(e_p)
        if n > self.max_position_error:
            e_p *= self.max_position_error / n
        e_r = rotation_error(r, r_d)
        n = np.linalg.norm(e_r)
        if n > self.max_rotation_error:
            e_r *= self.max_rotation_error / n
        mujoco.mj_jacBody(model, data, self._jacp, self._jacr, self.ee_body)
        jac = np.vstack([self._jacp[:, dof], self._jacr[:, dof]])
        m = mass_submatrix(model, data, dof)
        m_inv = np.linalg.inv(m)
        lam_inv = jac @ m_inv @ jac.T
        lam = np.linalg.inv(lam_inv + 1e-6 * np.eye(6))
        v = self._v(data)
        xdot = jac @ v
        damping = _sqrtm(lam) @ _sqrtm(self.K) + _sqrtm(self.K) @ _sqrtm(lam)
        f = self.K @ np.concatenate([e_p, e_r]) - damping @ xdot
        j_bar = m_inv @ jac.T @ lam
        null = np.eye(len(dof)) - jac.T @ j_bar.T
        kn = self.nullspace_stiffness
        dn = 2.0 * np.sqrt(kn * np.diag(m))
        tau = jac.T @ f + null @ (kn * (self.home - self._q(data)) - dn * v) + data.qfrc_bias[dof]
        return self._clip(tau)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


class BaseTwistController(Controller):
    """Mobile-base velocity command with a timeout. The sim robots have no mobile base: the
    commanded twist is integrated into a planar pose (``pose_xy_yaw``) that nothing moves."""

    kind = "base_twist"
    interface = "velocity"

    def __init__(self, name: str, joints: JointSet, timeout_s: float = 0.5):
        super().__init__(name, joints)
        self.timeout_s = timeout_s
        self.twist = np.zeros(6)
        self._stamp = -math.inf
        self._last = 0.0
        self.pose_xy_yaw = np.zeros(3)

    def _accept(self, command, now) -> None:
        if not isinstance(command, TwistCommand):
            raise CommandError(f"expected a TwistCommand, got {type(command).__name__}")
        self.twist = np.concatenate([_finite_array(command.linear, 3, "linear"),
                                     _finite_array(command.angular, 3, "angular")])
        self._stamp = now

    def _on_timeout(self, data, now) -> None:
        self.twist = np.zeros(6)

    def _on_activate(self, model, data, now) -> None:
        self._last = now

    def update(self, model, data, now) -> np.ndarray:
        dt = max(0.0, now - self._last)
        self._last = now
        tw = self.twist if now - self._stamp <= self.timeout_s else np.zeros(6)
        c, s = math.cos(self.pose_xy_yaw[2]), math.sin(self.pose_xy_yaw[2])
        self.pose_xy_yaw += dt * np.array([c * tw[0] - s * tw[1], s * tw[0] + c * tw[1], tw[5]])
        return np.zeros(len(self.joints))
