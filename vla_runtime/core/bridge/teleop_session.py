"""The operator's session at the bridge: who is engaged, which inputs are fresh, what the target gets.

:class:`TeleopSession` holds the teleop state the bridge used to spread over a dozen methods:

* the teleop group (``teleop.group``, else the first arm-like group, preferring one with an
  ``ee_link``), the gripper group, and the :class:`~vla_runtime.core.teleop.TeleopIntegrator`
  whose target starts at the measured state when teleop begins;
* engage/release: the deadman's last state (:attr:`TeleopSession.engage_wanted`), what a press or
  a release asks for (:meth:`TeleopSession.engage`), and the engage retry while the deadman is
  held but the takeover was refused for a passing reason (:meth:`TeleopSession.retry_due`);
* teleop under a latched halt (``teleop.teleop_only_after_halt``): allowed only with fresh joint
  states, and ended when the operator stream is silent for :data:`TELEOP_TIMEOUT_S`;
* operator inputs (twist, pose target, joint jog, gripper): rejected when non-finite, ignored
  when teleop is not active, and used only while fresher than :data:`TELEOP_INPUT_FRESH_S`;
* each tick's integration step (:meth:`TeleopSession.advance`): the freshest twist (else a servo
  twist toward a fresh pose target, when the group can take Cartesian commands) and the fresh jog.

The bridge filters and publishes the target through the group's output, and owns the mode
transitions (the :class:`~vla_runtime.core.arbiter.Arbiter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from enum import Enum

import numpy as np

from vla_runtime.core.arbiter import Arbiter, Decision, Mode
from vla_runtime.core.command_mapping import GripperCommand, GroupCommand, JointCommand, PoseCommand, TwistCommand
from vla_runtime.core.config import RobotProfile, TeleopConfig
from vla_runtime.core.kinematics import kinematics_for
from vla_runtime.core.rotation import homogeneous
from vla_runtime.core.safety_filter import SafetyFilter, SafetyResult
from vla_runtime.core.teleop import TeleopIntegrator, TeleopLimits
from vla_runtime.core.validation import LENGTH_MISMATCH, NON_FINITE, OUT_OF_LIMITS, WRONG_FRAME, TeleopCheck

#: An operator command older than this no longer moves the teleop target (it stops, still TELEOP).
TELEOP_INPUT_FRESH_S = 0.15
#: Silence of the operator stream that ends teleop under a halt (the arbiter's timeout in TELEOP).
TELEOP_TIMEOUT_S = 0.5
#: While the deadman is held and the takeover was refused, it is retried this often (s).
ENGAGE_RETRY_S = 0.5

#: The counters the session keeps (in the bridge's diagnostics, in this order).
COUNTERS = ("teleop_rejected", "teleop_inputs", "teleop_inputs_ignored", "teleop_commands", "interventions_started")


class EngageAction(Enum):
    """What an engage (deadman) message asks the bridge to do."""

    NOTHING = "nothing"
    TAKE = "take"
    RELEASE = "release"


class TeleopSession:
    """Teleop state between the operator's inputs and the bridge's command tick.

    Args:
        robot: The robot profile.
        cfg: The teleop section of the config.
        safety: The bridge's safety filter (teleop limits; references reset when teleop begins).
        arbiter: The bridge's arbiter (mode, joint-state freshness, the teleop watchdog).
        periods: Command period of each group (s).
        hold_controller_engaged: Whether the hold controller has the robot (teleop under a halt
            then moves nothing until it is switched back).
        counters: Where the session counts; :data:`COUNTERS` are added (zero) if missing.
    """

    def __init__(self, robot: RobotProfile, cfg: TeleopConfig, safety: SafetyFilter, arbiter: Arbiter,
                 periods: Mapping[str, float], hold_controller_engaged: Callable[[], bool],
                 counters: MutableMapping[str, int]) -> None:
        self.robot = robot
        self.cfg = cfg
        self.safety = safety
        self.arbiter = arbiter
        self._hold_controller_engaged = hold_controller_engaged
        self.counters = counters
        for k in COUNTERS:
            counters.setdefault(k, 0)
        #: Operator commands far over the teleop limits are refused here (core/validation); the
        #: rest is limited where it is integrated (TeleopIntegrator: joint and Cartesian speeds).
        self.check = TeleopCheck(robot, cfg, safety.safety)
        name = cfg.group
        if name is None:
            arm_like = [n for n, g in robot.groups.items() if g.controller not in ("gripper", "base_twist")]
            name = next((n for n in arm_like if robot.groups[n].ee_link), arm_like[0] if arm_like else None)
        #: The group teleop drives (None: the robot has none).
        self.group: str | None = name if name in robot.groups else None
        grippers = [n for n, g in robot.groups.items() if g.controller == "gripper"]
        #: The gripper group the gripper input drives (None: no gripper).
        self.gripper_group: str | None = grippers[0] if grippers else None
        self.period_s = periods[self.group] if self.group is not None else math.inf
        self.integrator: TeleopIntegrator | None = None
        self._pose_target = False
        #: How Cartesian commands reach the group (diagnostics).
        self.kinematics = "none"
        spec = robot.groups[self.group] if self.group is not None else None
        if spec is not None and spec.controller != "base_twist":
            scale = safety.safety.velocity_scale
            limits = TeleopLimits(
                max_linear_mps=cfg.max_linear_mps,
                max_angular_rps=cfg.max_angular_rps,
                joint_velocity={j.name: j.velocity * scale for j in robot.joints if j.name in spec.joints},
                joint_position={j: safety.position_limits(j) for j in spec.joints},
            )
            self._pose_target = spec.controller == "cartesian_impedance"
            chain = None if self._pose_target else kinematics_for(robot.name, spec.joints)
            self.kinematics = ("cartesian controller" if self._pose_target
                               else f"{chain.name} DH model, DLS Jacobian" if chain is not None
                               else "none: joint jogs only")
            self.integrator = TeleopIntegrator(() if self._pose_target else spec.joints, chain, limits)
        self.started = False  # the integrator's target was started at the measured state
        self.under_halt = False  # teleop while HALTED (teleop_only_after_halt)
        self.engage_wanted = False  # the operator's last engage (deadman) state
        self.gripper: float | None = None  # the newest gripper command
        self._twist: tuple[np.ndarray, float] | None = None  # (twist, receive time)
        self._pose: tuple[np.ndarray, float] | None = None  # (4×4 target, receive time)
        self._jog: tuple[dict[str, float], float] | None = None
        self.last_input = -math.inf  # last operator command taken (the watchdogs)
        self.last_step = -math.inf
        self._engage_retry_t = -1e9
        self._seen_input = -1e9  # last operator command, taken or not

    # ------------------------------------------------------------------ engaged or not
    def moves_robot(self, mode: Mode) -> bool:
        """Whether teleop commands may move the robot now: TELEOP, or teleop under the halt while
        the policy's controllers (not the hold controller) have the robot."""
        if mode is Mode.TELEOP:
            return True
        return mode is Mode.HALTED and self.under_halt and not self._hold_controller_engaged()

    def engage(self, pressed: bool, mode: Mode) -> EngageAction:
        """The deadman's state arrived: what it asks for (a repeated press while engaged: nothing)."""
        self.engage_wanted = pressed
        active = self.under_halt or mode is Mode.TELEOP
        if not pressed:
            return EngageAction.RELEASE if active else EngageAction.NOTHING
        return EngageAction.NOTHING if active else EngageAction.TAKE

    def retry_due(self, now: float, mode: Mode) -> bool:
        """The deadman is still held (engaged, operator commands still arriving) but the takeover was
        refused for a passing reason (e.g. no joint states yet at start-up): True when a retry is due
        (every :data:`ENGAGE_RETRY_S`). Never in HALTED: there a takeover needs a new press."""
        if not self.engage_wanted or mode not in (Mode.HOLD, Mode.POLICY):
            return False
        if now - self._seen_input > TELEOP_TIMEOUT_S or now - self._engage_retry_t < ENGAGE_RETRY_S:
            return False
        self._engage_retry_t = now
        return True

    def start_under_halt(self, now: float) -> Decision:
        """Teleop under the latched halt: allowed by the config and with fresh joint states."""
        if not self.cfg.teleop_only_after_halt:
            return Decision(False, "HALTED: teleop after a halt is disabled (teleop.teleop_only_after_halt)")
        if not self.arbiter.joint_states_fresh(now):
            return Decision(False, "teleop refused: no fresh joint states")
        self.under_halt = True
        return Decision(True, "teleop under the latched halt")

    def halt_input_timed_out(self, now: float) -> bool:
        """Teleop under the halt with the operator stream silent for more than :data:`TELEOP_TIMEOUT_S`."""
        return self.under_halt and now - self.last_input > TELEOP_TIMEOUT_S

    # ------------------------------------------------------------------ begin / end
    def begin(self, now: float, joint_positions: Mapping[str, float],
              ee_pose: tuple[np.ndarray, np.ndarray] | None) -> str | None:
        """Start the teleop target at the measured state (and the safety references with it).

        Returns:
            None, or why the group cannot start (it is then held).
        """
        self._clear_inputs()
        self.last_input = now  # the arbiter's teleop watchdog starts now too
        self.last_step = -math.inf
        self.counters["interventions_started"] += 1
        tp = self.integrator
        if self.group is None or tp is None:
            return None
        try:
            if self._pose_target:
                if ee_pose is None:
                    raise KeyError("no measured end-effector pose on /ee_pose")
                tp.start_pose(*ee_pose)
                self.safety.reset_pose_reference(self.group, *ee_pose)
            else:
                tp.start_joints(joint_positions)
                self.safety.reset_reference({j: joint_positions[j] for j in self.robot.groups[self.group].joints})
            self.started = True
        except (KeyError, ValueError) as e:
            return f"teleop cannot start group {self.group!r}: {e}; holding it"
        return None

    def end(self) -> None:
        """Stop integrating; forget the operator's commands."""
        self._clear_inputs()

    def _clear_inputs(self) -> None:
        self.started = False
        self._twist = self._pose = self._jog = None
        self.gripper = None

    # ------------------------------------------------------------------ operator inputs
    def frame_error(self, frame_id: str) -> str | None:
        """Why a Cartesian command's frame is not accepted (only the base frame, or the group's)."""
        g = self.robot.groups.get(self.group) if self.group is not None else None
        if frame_id in ("", self.robot.base_frame) or (g is not None and frame_id == g.frame_id):
            return None
        self.counters["teleop_inputs_ignored"] += 1
        return self.check.rejections(WRONG_FRAME, f"teleop command in frame {frame_id!r}: only the base frame "
                                                  "is accepted")

    def _take_input(self, now: float, mode: Mode) -> bool:
        """An operator command arrived: feeds the watchdogs; False when teleop is not active."""
        self.counters["teleop_inputs"] += 1
        self._seen_input = now
        if not self.moves_robot(mode) and not self.under_halt:
            self.counters["teleop_inputs_ignored"] += 1
            return False
        self.last_input = now
        self.arbiter.note_teleop_command(now)
        return True

    def twist_input(self, twist: np.ndarray, now: float, mode: Mode) -> bool:
        """A base-frame twist ``[vx, vy, vz, wx, wy, wz]``; True when taken."""
        if self.check.twist(twist) is not None:
            self.counters["teleop_rejected"] += 1
            return False
        if not self._take_input(now, mode):
            return False
        self._twist = (twist, now)
        return True

    def pose_input(self, position: Sequence[float], quaternion_xyzw: Sequence[float], now: float,
                   mode: Mode) -> bool:
        """An absolute pose target (servoed at the teleop speed limits); True when taken."""
        try:
            target = homogeneous(position, quaternion_xyzw)
        except ValueError:
            self.counters["teleop_rejected"] += 1
            return False
        if not np.all(np.isfinite(target)):
            self.counters["teleop_rejected"] += 1
            return False
        box = self.robot.workspace
        if box is not None and (np.any(target[:3, 3] < box.min) or np.any(target[:3, 3] > box.max)):
            self.check.rejections(OUT_OF_LIMITS, f"teleop pose {np.round(target[:3, 3], 4).tolist()} outside the "
                                                 f"workspace {list(box.min)}..{list(box.max)}")
            self.counters["teleop_rejected"] += 1
            return False
        if not self._take_input(now, mode):
            return False
        self._pose = (target, now)
        return True

    def jog_input(self, names: Sequence[str], velocities: Sequence[float], now: float, mode: Mode) -> bool:
        """Joint velocities by name; True when taken (a name twice or a missing velocity: rejected)."""
        if len(velocities) != len(names):
            self.check.rejections(LENGTH_MISMATCH, f"teleop joint jog with {len(names)} names and "
                                                   f"{len(velocities)} velocities")
            self.counters["teleop_rejected"] += 1
            return False
        jog = {n: float(v) for n, v in zip(names, velocities)}
        if self.check.joint_jog(jog, names) is not None:
            self.counters["teleop_rejected"] += 1
            return False
        if not self._take_input(now, mode):
            return False
        self._jog = (jog, now)
        return True

    def gripper_input(self, value: float, now: float, mode: Mode) -> bool:
        """A gripper opening; True when taken (a non-finite one is refused and counted)."""
        if not math.isfinite(value):
            self.check.rejections(NON_FINITE, f"teleop gripper {value}")
            self.counters["teleop_rejected"] += 1
            return False
        if self._take_input(now, mode):
            self.gripper = float(value)
            return True
        return False

    # ------------------------------------------------------------------ the tick
    def step_due(self, now: float) -> bool:
        """Whether the target should advance now (started, and at least half a period since the last step)."""
        return self.started and now - self.last_step >= 0.5 * self.period_s

    def advance(self, now: float) -> np.ndarray | None:
        """Integrate the freshest operator command onto the target (one step of ``now - last step``).

        Returns:
            The new target (joint positions, or ``[x, y, z, qx, qy, qz, qw]``); None without an
            integrator. An input the group cannot take (a twist without a kinematic model) is
            counted as ignored and the target holds.
        """
        tp = self.integrator
        if self.group is None or tp is None:
            return None
        dt = now - self.last_step if math.isfinite(self.last_step) else self.period_s
        dt = min(max(dt, 0.0), 2.0 * self.period_s)
        self.last_step = now
        twist = jog = None
        if self._twist is not None and now - self._twist[1] <= TELEOP_INPUT_FRESH_S:
            twist = self._twist[0]
        elif self._pose is not None and now - self._pose[1] <= TELEOP_INPUT_FRESH_S and tp.cartesian_capable:
            twist = tp.servo_twist(self._pose[0])
        if self._jog is not None and now - self._jog[1] <= TELEOP_INPUT_FRESH_S:
            jog = self._jog[0]
        try:
            return tp.step(dt, twist=twist, joint_velocity=jog)
        except RuntimeError:
            self.counters["teleop_inputs_ignored"] += 1
            return tp.step(dt)


def filter_group_command(safety: SafetyFilter, command: GroupCommand, now: float,
                         measured: Mapping[str, float]) -> tuple[SafetyResult, GroupCommand]:
    """Filter a programmatic teleop command of any kind; returns the result and the safe command."""
    if isinstance(command, JointCommand):
        r = (safety.filter_joint_velocity(command.joints, command.values, now, measured)
             if command.kind == "velocity" else safety.filter_joint(command.joints, command.values, now))
        return r, JointCommand(command.group, command.joints, r.values, command.kind)
    if isinstance(command, PoseCommand):
        r = safety.filter_pose(command.group, command.position, command.quaternion, now)
        return r, PoseCommand(command.group, command.frame_id, r.values[:3], r.values[3:])
    if isinstance(command, GripperCommand):
        r = safety.filter_gripper(command.group, command.value, now)
        return r, GripperCommand(command.group, float(r.values[0]))
    r = safety.filter_twist(command.group, command.vx, command.vy, command.wz, now)
    return r, TwistCommand(command.group, *(float(x) for x in r.values))
