"""Operator input → teleop commands (pure Python + numpy, no rclpy).

Three pieces, each driven by plain pytest:

* :class:`JoyMapper` — a ``sensor_msgs/Joy`` sample (axes, buttons) → a deadman state, an
  end-effector twist and gripper toggles, from :class:`~vla_runtime.core.config.TeleopConfig`
  (axes, signs, deadzone, speed limits, deadman and gripper buttons). A SpaceMouse and a gamepad
  differ only in their mapping.
* :class:`PoseClutch` — VR controller / leader arm: an absolute input pose becomes a target
  *relative to where the robot was when the operator engaged* (the clutch), so engaging never
  jumps the target.
* :class:`TeleopIntegrator` — what the controller bridge runs every command tick while teleop
  drives a group: integrates a twist (or servos towards a pose target, or applies a joint jog)
  onto a joint or Cartesian target that starts at the *measured* state. Joint groups turn a
  Cartesian twist into joint velocities with a damped-least-squares Jacobian of the robot's
  kinematic model (:mod:`vla_runtime.core.kinematics`); a robot without a model accepts joint
  jogs only.

The topic contract between the teleop front ends and the bridge is in :mod:`vla_runtime.core.contract`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_runtime.core.config import TeleopConfig
from vla_runtime.core.kinematics import SerialChain, dls_step, pose_error
from vla_runtime.core.rotation import homogeneous, matrix_to_quaternion, rotvec_to_matrix


def apply_deadzone(value: float, deadzone: float) -> float:
    """Zero inside ``±deadzone``; outside, rescaled so the output still spans ``[-1, 1]`` continuously."""
    v = max(-1.0, min(1.0, float(value)))
    if abs(v) <= deadzone:
        return 0.0
    return math.copysign((abs(v) - deadzone) / (1.0 - deadzone), v)


@dataclass(frozen=True)
class JoyCommand:
    """One mapped Joy sample.

    Attributes:
        engaged: The deadman is held (or, without a deadman button, the device is deflected).
        twist: ``[vx, vy, vz, wx, wy, wz]`` in the base frame (m/s, rad/s), already scaled.
        gripper_toggled: The gripper button went down in this sample.
    """

    engaged: bool
    twist: np.ndarray
    gripper_toggled: bool = False


class JoyMapper:
    """Maps Joy samples of a SpaceMouse or a gamepad onto deadman, twist and gripper toggles.

    Without a ``deadman_button`` (a SpaceMouse whose buttons serve other uses) the device counts as
    engaged while any mapped axis is deflected past the deadzone, and for ``release_after_s``
    after the last deflection (a hand resting on the puck does not flicker the mode).

    Args:
        cfg: The teleop section of the runtime config.
        release_after_s: Deflection deadman hang time.
    """

    def __init__(self, cfg: TeleopConfig, release_after_s: float = 0.3) -> None:
        self.cfg = cfg
        self.release_after_s = float(release_after_s)
        self._last_deflected: float | None = None
        self._gripper_was_down = False

    @property
    def needs_axes(self) -> int:
        """How many axes a Joy message must carry for this mapping."""
        return 1 + max(*self.cfg.linear_axes, *self.cfg.angular_axes)

    def map(self, axes: Sequence[float], buttons: Sequence[int], now_s: float) -> JoyCommand:
        """Map one Joy sample received at ``now_s``.

        Raises:
            ValueError: Too few axes/buttons for the configured mapping, or a non-finite axis.
        """
        c = self.cfg
        if len(axes) < self.needs_axes:
            raise ValueError(f"Joy has {len(axes)} axes, the {c.device} mapping needs {self.needs_axes}")
        for b in (c.deadman_button, c.gripper_button):
            if b is not None and len(buttons) <= b:
                raise ValueError(f"Joy has {len(buttons)} buttons, the mapping uses button {b}")
        raw = [float(axes[i]) for i in (*c.linear_axes, *c.angular_axes)]
        if not all(math.isfinite(v) for v in raw):
            raise ValueError(f"non-finite Joy axis in {raw}")
        scaled = np.array([apply_deadzone(v, c.deadzone) * s for v, s in zip(raw, c.axis_signs)])
        twist = np.concatenate([scaled[:3] * c.max_linear_mps, scaled[3:] * c.max_angular_rps])
        lin = float(np.linalg.norm(twist[:3]))
        if lin > c.max_linear_mps:  # diagonal deflection: the speed limit is on the magnitude
            twist[:3] *= c.max_linear_mps / lin
        ang = float(np.linalg.norm(twist[3:]))
        if ang > c.max_angular_rps:
            twist[3:] *= c.max_angular_rps / ang
        if c.deadman_button is not None:
            engaged = bool(buttons[c.deadman_button])
        else:
            if np.any(scaled != 0.0):
                self._last_deflected = now_s
            engaged = self._last_deflected is not None and now_s - self._last_deflected <= self.release_after_s
        toggled = False
        if c.gripper_button is not None:
            down = bool(buttons[c.gripper_button])
            toggled = down and not self._gripper_was_down
            self._gripper_was_down = down
        if not engaged:
            twist = np.zeros(6)
        return JoyCommand(engaged, twist, toggled)


class PoseClutch:
    """VR / leader-arm clutch: input poses → robot targets relative to the pose at engage.

    On :meth:`engage` the current input pose and the robot's measured end-effector pose are
    paired; afterwards an input pose ``P`` maps to the target ``p_ee0 + (p − p_in0)`` and
    ``R_ee = (R · R_in0ᵀ) · R_ee0`` (translations and rotations in the base frame). The first
    target after engaging is therefore exactly the measured pose.
    """

    def __init__(self) -> None:
        self._in0: np.ndarray | None = None
        self._ee0: np.ndarray | None = None

    @property
    def engaged(self) -> bool:
        """Whether a reference pair is set."""
        return self._in0 is not None

    def engage(self, input_pose: np.ndarray, measured_ee: np.ndarray) -> None:
        """Pair an input pose with the measured end-effector pose (both 4×4)."""
        self._in0 = np.array(input_pose, dtype=np.float64)
        self._ee0 = np.array(measured_ee, dtype=np.float64)

    def release(self) -> None:
        """Forget the pairing (the next engage re-pairs)."""
        self._in0 = self._ee0 = None

    def target(self, input_pose: np.ndarray) -> np.ndarray:
        """The robot target for an input pose (4×4).

        Raises:
            RuntimeError: Not engaged.
        """
        if self._in0 is None or self._ee0 is None:
            raise RuntimeError("PoseClutch.target() before engage()")
        out = np.eye(4)
        out[:3, 3] = self._ee0[:3, 3] + (input_pose[:3, 3] - self._in0[:3, 3])
        out[:3, :3] = (input_pose[:3, :3] @ self._in0[:3, :3].T) @ self._ee0[:3, :3]
        return out


@dataclass
class TeleopLimits:
    """Speed limits of teleop motion (before the safety filter's own limits)."""

    max_linear_mps: float
    max_angular_rps: float
    joint_velocity: dict[str, float] = field(default_factory=dict)  # rad/s per joint
    joint_position: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Gain of the pose servo (1/s): target error → commanded twist, then speed-limited.
    pose_gain: float = 4.0
    #: Damping of the damped-least-squares Jacobian inverse.
    damping: float = 0.05


class TeleopIntegrator:
    """The teleop target of one group, integrated every command tick.

    A joint group keeps a joint target ``q``; a Cartesian group keeps a pose target. Both start
    at the measured state (:meth:`start_joints` / :meth:`start_pose`), so the first command equals
    where the robot is. Each :meth:`step` advances the target by one period of the operator's
    command: a twist (servo), a pose target (servoed at bounded speed) or a joint jog. Joint
    targets stay inside the joint limits; joint speeds are scaled down uniformly (the direction
    of motion is kept) to the per-joint limits.

    Args:
        joints: The group's joints (empty for a Cartesian group).
        chain: Kinematic model for Cartesian commands on a joint group (None: joint jogs only).
        limits: Speed and position limits.
    """

    def __init__(self, joints: Sequence[str], chain: SerialChain | None, limits: TeleopLimits) -> None:
        self.joints = tuple(joints)
        self.chain = chain
        self.limits = limits
        if chain is not None and len(chain.joints) != len(self.joints):
            raise ValueError(f"kinematic model {chain.name} has {chain.dof} joints, the group has {len(self.joints)}")
        self.q: np.ndarray | None = None
        self.pose: np.ndarray | None = None  # 4×4
        self.qdot = np.zeros(len(self.joints))

    @property
    def cartesian_capable(self) -> bool:
        """Whether twists/poses can drive this group."""
        return self.pose is not None or self.chain is not None

    def start_joints(self, measured: Mapping[str, float]) -> None:
        """Start a joint target at the measured positions.

        Raises:
            KeyError: A joint of the group has no measurement.
        """
        missing = [j for j in self.joints if j not in measured]
        if missing:
            raise KeyError(f"no measured position for {missing}")
        self.q = np.array([float(measured[j]) for j in self.joints])
        self.qdot = np.zeros(len(self.joints))
        self.pose = None

    def start_pose(self, position: Sequence[float], quaternion_xyzw: Sequence[float]) -> None:
        """Start a Cartesian target at the measured end-effector pose."""
        self.pose = homogeneous(position, quaternion_xyzw)
        self.q = None

    def current_ee(self) -> np.ndarray | None:
        """The target's end-effector pose (4×4): the Cartesian target, or FK of the joint target."""
        if self.pose is not None:
            return self.pose.copy()
        if self.q is not None and self.chain is not None:
            return self.chain.forward(self.q)
        return None

    def servo_twist(self, target: np.ndarray) -> np.ndarray:
        """The speed-limited twist that moves the current target towards ``target`` (4×4)."""
        cur = self.current_ee()
        if cur is None:
            raise RuntimeError("no Cartesian target: start_pose() or a kinematic model is needed")
        err = pose_error(cur, target) * self.limits.pose_gain
        return self.limit_twist(err)

    def limit_twist(self, twist: Sequence[float]) -> np.ndarray:
        """Scale linear and angular parts to the teleop speed limits."""
        t = np.asarray(twist, dtype=np.float64).reshape(6).copy()
        lin, ang = float(np.linalg.norm(t[:3])), float(np.linalg.norm(t[3:]))
        if lin > self.limits.max_linear_mps:
            t[:3] *= self.limits.max_linear_mps / lin
        if ang > self.limits.max_angular_rps:
            t[3:] *= self.limits.max_angular_rps / ang
        return t

    def _limit_qdot(self, qdot: np.ndarray) -> np.ndarray:
        scale = 1.0
        for j, v in zip(self.joints, qdot):
            cap = self.limits.joint_velocity.get(j)
            if cap is not None and abs(v) > cap:
                scale = min(scale, cap / abs(v))
        return qdot * scale

    def step(self, dt: float, twist: Sequence[float] | None = None,
             joint_velocity: Mapping[str, float] | None = None) -> np.ndarray:
        """Advance the target by ``dt`` seconds.

        Args:
            dt: Seconds since the previous step (clamped to ``[0, 0.1]``).
            twist: End-effector twist ``[v; ω]`` (base frame) — Cartesian commands.
            joint_velocity: Joint name → rad/s — a joint jog (joint groups).

        Returns:
            The new target: joint positions (joint groups) or ``[x, y, z, qx, qy, qz, qw]``.

        Raises:
            RuntimeError: Not started, or a twist for a joint group without a kinematic model.
        """
        dt = min(max(float(dt), 0.0), 0.1)
        if self.pose is not None:
            if twist is not None:
                t = self.limit_twist(twist)
                self.pose[:3, 3] += t[:3] * dt
                self.pose[:3, :3] = rotvec_to_matrix(t[3:] * dt) @ self.pose[:3, :3]
            return np.concatenate([self.pose[:3, 3], matrix_to_quaternion(self.pose[:3, :3])])
        if self.q is None:
            raise RuntimeError("TeleopIntegrator.step() before start_joints()/start_pose()")
        qdot = np.zeros(len(self.joints))
        if twist is not None and np.any(np.asarray(twist) != 0.0):
            if self.chain is None:
                raise RuntimeError("a Cartesian twist needs a kinematic model of this group; send joint jogs")
            t = self.limit_twist(twist)
            qdot = dls_step(self.chain.jacobian(self.q), t, self.limits.damping)
        if joint_velocity:
            for i, j in enumerate(self.joints):
                if j in joint_velocity:
                    qdot[i] += float(joint_velocity[j])
        qdot = self._limit_qdot(qdot)
        if self.chain is not None and qdot.any():
            # A joint jog within every joint's limit can still move the hand faster than the teleop
            # limits allow (all joints at once): scale it to them in Cartesian space too.
            v = self.chain.jacobian(self.q) @ qdot
            lin, ang = float(np.linalg.norm(v[:3])), float(np.linalg.norm(v[3:]))
            scale = min(1.0, self.limits.max_linear_mps / lin if lin > 0 else 1.0,
                        self.limits.max_angular_rps / ang if ang > 0 else 1.0)
            qdot = qdot * scale
        q = self.q + qdot * dt
        for i, j in enumerate(self.joints):
            lim = self.limits.joint_position.get(j)
            if lim is not None:
                q[i] = min(max(q[i], lim[0]), lim[1])
        self.qdot = (q - self.q) / dt if dt > 0 else np.zeros_like(q)
        self.q = q
        return q.copy()
