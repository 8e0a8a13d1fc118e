"""The simulated robot behind a ros2_control-like controller manager (pure Python, no rclpy).

:class:`SimRobot` owns the MuJoCo model and data, builds one controller per profile group (plus
the profile's hold controller, which claims every group joint), and exposes what a ros2_control
system exposes: ``list_controllers``, ``switch_controller`` with exclusive joint claims, joint
states, end-effector poses. Joints with a motor that no active controller claims are held by the
robot's "brakes" (a stiff hold at the position they had when they were released), as a real arm
with no active controller does; the GR1's legs are always held this way.

Not thread-safe: the ROS node serialises access with one lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_runtime.core.config import ControllerGroup, RuntimeConfig
from vla_runtime.core.rotation import matrix_to_quaternion, normalize_quaternion, quaternion_multiply, to_mujoco_wxyz
from vla_runtime.sim.controllers import (
    BaseTwistController,
    CartesianImpedanceController,
    Controller,
    ForwardPositionController,
    ForwardVelocityController,
    GripperController,
    HoldPositionController,
    JointImpedanceController,
    JointSet,
    JointTrajectoryController,
)
from vla_runtime.sim.scene import Scene, build_scene, sample_cube_poses


@dataclass(frozen=True)
class JointStateSample:
    """Joint state in profile order at sim time ``time``."""

    time: float
    names: list[str]
    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray


@dataclass(frozen=True)
class ControllerInfo:
    """One row of ``list_controllers``."""

    name: str
    state: str  # "active" | "inactive"
    type: str
    claimed_interfaces: list[str]
    joints: list[str]


class CameraRenderer:
    """Offscreen renderer with its own MjData (use from one thread: EGL contexts are per thread)."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self.data = mujoco.MjData(model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0  # hide marker sites

    def render(self, qpos: np.ndarray, camera: str, width: int, height: int) -> np.ndarray:
        """Image (H, W, 3) uint8 of configuration ``qpos`` seen by ``camera``."""
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        key = (width, height)
        r = self._renderers.get(key)
        if r is None:
            r = self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
        r.update_scene(self.data, camera=camera, scene_option=self._option)
        return r.render()

    def close(self) -> None:
        """Free the GL contexts."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


class SimRobot:
    """A MuJoCo robot with ros2_control controller semantics.

    Args:
        cfg: the runtime config (its ``robot`` profile and ``sim`` section).
        scene: a prebuilt scene (default: built from ``cfg.sim``).

    Raises:
        ValueError: the config has no sim section, a profile joint is not in the model, or a
            controller named in ``sim.initially_active`` does not exist.
    """

    def __init__(self, cfg: RuntimeConfig, scene: Scene | None = None):
        if cfg.sim is None:
            raise ValueError("the config has no sim: section")
        self.cfg = cfg
        self.profile = cfg.robot
        offscreen = (max([c.width for c in cfg.cameras] + [640]), max([c.height for c in cfg.cameras] + [480]))
        self.scene = scene or build_scene(cfg.sim.robot, cfg.sim.seed, cfg.sim.physics_dt, offscreen)
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.joint_names = self.profile.joint_names
        missing = [n for n in self.joint_names if mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) < 0]
        if missing:
            raise ValueError(f"profile joint(s) {missing} are not in the {cfg.sim.robot} sim model")
        limits = {j.name: (j.position[0], j.position[1], j.velocity, j.effort) for j in self.profile.joints}
        self._limits = limits
        self._profile_set = JointSet.from_model(m, self.joint_names, limits)
        # Motors enforce the profile's effort limits.
        for a, e in zip(self._profile_set.actuators, self._profile_set.effort):
            m.actuator_ctrlrange[a] = (-e, e)
        self.base_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, self.profile.base_frame)
        if self.base_body < 0:
            self.base_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, self.scene.base_body)
        # Every motor-driven joint (the brakes hold the unclaimed ones).
        motor_joints = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(m.actuator_trnid[a, 0]))
                        for a in range(m.nu) if m.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT]
        self._motor_set = JointSet.from_model(m, motor_joints, limits)
        self._brake_q = np.zeros(len(motor_joints))
        self._brake_mask = np.ones(len(motor_joints), dtype=bool)
        self._brake = HoldPositionController("_brakes", self._motor_set, omega=30.0)
        self.home = {j.name: j.home for j in self.profile.joints if j.home is not None}

        self.controllers: dict[str, Controller] = {}
        self.groups: dict[str, str] = {}  # controller name -> group name
        self._ee_body: dict[str, int] = {}
        for gname, group in self.profile.groups.items():
            self.controllers[group.controller_name] = self._make_controller(gname, group)
            self.groups[group.controller_name] = gname
        if self.profile.hold_controller:
            names = [j for g in self.profile.groups.values() for j in g.joints]
            self.controllers[self.profile.hold_controller] = HoldPositionController(
                self.profile.hold_controller, JointSet.from_model(m, names, limits))
        wanted = cfg.sim.initially_active
        if wanted is None:
            wanted = [g.controller_name for g in self.profile.groups.values()]
        unknown = [n for n in wanted if n not in self.controllers]
        if unknown:
            raise ValueError(f"sim.initially_active names unknown controller(s) {unknown}; "
                             f"known: {sorted(self.controllers)}")
        self._initially_active = list(wanted)
        self.reset(cfg.sim.seed)

    # ------------------------------------------------------------------------------ construction
    def _make_controller(self, gname: str, g: ControllerGroup) -> Controller:
        c = self._build_controller(gname, g)
        c.cmd_timeout_s = g.cmd_timeout_s
        return c

    def _build_controller(self, gname: str, g: ControllerGroup) -> Controller:
        m = self.model
        joints = JointSet.from_model(m, g.joints, self._limits) if g.joints else JointSet.from_model(m, [])
        if g.ee_link:
            body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, g.ee_link)
            if body < 0:
                raise ValueError(f"group {gname!r}: ee_link {g.ee_link!r} is not a body of the sim model")
            self._ee_body[gname] = body
        kind = g.controller
        if kind == "joint_trajectory":
            return JointTrajectoryController(g.controller_name, joints)
        if kind == "forward_position":
            return ForwardPositionController(g.controller_name, joints)
        if kind == "forward_velocity":
            return ForwardVelocityController(g.controller_name, joints)
        if kind == "gripper":
            return GripperController(g.controller_name, joints, g.gripper_range)
        if kind == "joint_impedance":
            return JointImpedanceController(g.controller_name, joints, g.stiffness, g.stiffness_limits)
        if kind == "cartesian_impedance":
            home = np.array([self.home.get(j, 0.0) for j in g.joints])
            return CartesianImpedanceController(g.controller_name, joints, self._ee_body[gname], self.base_body,
                                                home, g.stiffness, g.stiffness_limits)
        if kind == "base_twist":
            return BaseTwistController(g.controller_name, joints)
        raise ValueError(f"group {gname!r}: unsupported controller type {kind!r}")

    # ---------------------------------------------------------------------------------- state
    @property
    def time(self) -> float:
        """Simulated time (s)."""
        return float(self.data.time)

    def reset(self, seed: int | None = None) -> None:
        """Home the robot, re-place the cubes (``seed``: new random placement) and restart the
        controllers that should be active at start."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for name, q in self.home.items():
            d.qpos[m.joint(name).qposadr[0]] = q
        if "panda_finger_joint2" in self.home or "panda_finger_joint1" in self.home:
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "panda_finger_joint2")
            if jid >= 0:
                d.qpos[m.jnt_qposadr[jid]] = -self.home.get("panda_finger_joint1", 0.0)
        poses = sample_cube_poses(self.cfg.sim.seed if seed is None else seed, self.scene.robot)
        for name, (pos, quat) in poses.items():
            self._set_free(name, pos, quat)
        mujoco.mj_forward(m, d)
        for c in self.controllers.values():
            c.deactivate()
        for n in self._initially_active:
            self.controllers[n].activate(m, d, self.time)
        self._brake_q = d.qpos[self._motor_set.qpos].copy()
        self._update_brake_mask()

    def _set_free(self, body: str, pos, quat=None) -> None:
        """Place a free body at world ``pos`` with world orientation ``quat`` (x, y, z, w) and stop it."""
        m, d = self.model, self.data
        bid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, body)
        if bid < 0 or m.body_jntnum[bid] != 1 or m.jnt_type[m.body_jntadr[bid]] != mujoco.mjtJoint.mjJNT_FREE:
            raise KeyError(f"{body!r} is not a free object of the scene ({self.scene.cubes})")
        j = m.body_jntadr[bid]
        a, v = m.jnt_qposadr[j], m.jnt_dofadr[j]
        d.qpos[a:a + 3] = pos
        if quat is not None:
            d.qpos[a + 3:a + 7] = to_mujoco_wxyz(quat)
        d.qvel[v:v + 6] = 0.0

    def move_object(self, name: str, pos: Sequence[float], quaternion: Sequence[float] | None = None) -> None:
        """Teleport a scene object (cube) to ``pos`` and orientation ``quaternion`` (x, y, z, w; None: keep
        it), both in the base frame, and stop it.

        Raises:
            ValueError: A position that is not 3 finite numbers, or a quaternion that cannot be normalised.
            KeyError: ``name`` is not a free object of the scene.
        """
        p = np.asarray(pos, float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"object position must be 3 finite numbers, got {pos!r}")
        pb, rb = self._base_pose()
        q = None
        if quaternion is not None:
            q = quaternion_multiply(matrix_to_quaternion(rb), normalize_quaternion(quaternion))
        self._set_free(name, pb + rb @ p, q)
        mujoco.mj_forward(self.model, self.data)

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Scene objects' poses in the base frame: name → (position, quaternion (x, y, z, w))."""
        return {n: self._body_pose(mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, n))
                for n in self.scene.cubes}

    def _base_pose(self) -> tuple[np.ndarray, np.ndarray]:
        if self.base_body < 0:
            return np.zeros(3), np.eye(3)
        return self.data.xpos[self.base_body].copy(), self.data.xmat[self.base_body].reshape(3, 3).copy()

    def _body_pose(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        pb, rb = self._base_pose()
        p = rb.T @ (self.data.xpos[body] - pb)
        return p, matrix_to_quaternion(rb.T @ self.data.xmat[body].reshape(3, 3))

    @property
    def ee_groups(self) -> list[str]:
        """Groups with an end-effector link (their pose is published)."""
        return list(self._ee_body)

    def ee_pose(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """Pose of a group's ``ee_link`` in the base frame: (position, quaternion (x, y, z, w))."""
        if group not in self._ee_body:
            raise KeyError(f"group {group!r} has no ee_link; groups with one: {self.ee_groups}")
        return self._body_pose(self._ee_body[group])

    def joint_state(self) -> JointStateSample:
        """Positions, velocities and (motor) efforts of the profile joints, in profile order."""
        s, d = self._profile_set, self.data
        return JointStateSample(self.time, list(self.joint_names), d.qpos[s.qpos].copy(), d.qvel[s.dof].copy(),
                                d.qfrc_actuator[s.dof].copy())

    # ------------------------------------------------------------------------ controller manager
    def accept(self, controller: str, command) -> bool:
        """Hand a command to a controller at the current sim time; False if rejected."""
        c = self.controllers.get(controller)
        if c is None:
            raise KeyError(f"unknown controller {controller!r}")
        return c.accept(command, self.time)

    def list_controllers(self) -> list[ControllerInfo]:
        """Every controller with its state, type and claimed interfaces (those while active)."""
        return [ControllerInfo(c.name, "active" if c.active else "inactive", c.type_name,
                               c.claimed_interfaces if c.active else [], list(c.joints.names))
                for c in self.controllers.values()]

    def switch_controller(self, activate: Sequence[str], deactivate: Sequence[str],
                          strict: bool = True) -> tuple[bool, str]:
        """Deactivate then activate controllers, keeping joint claims exclusive.

        STRICT: any unknown name, activating an active controller, deactivating an inactive one,
        or a joint claimed by two controllers that would be active afterwards fails the whole call
        and changes nothing. BEST_EFFORT: the offending entries are skipped and the rest applied.

        Returns:
            (ok, message) — the message names each problem.
        """
        problems: list[str] = []
        act = list(dict.fromkeys(activate))
        deact = list(dict.fromkeys(deactivate))
        for n in [n for n in act if n in deact]:
            problems.append(f"{n!r} is both activated and deactivated")
            act.remove(n)
            deact.remove(n)
        for lst, verb in ((act, "activate"), (deact, "deactivate")):
            for n in list(lst):
                c = self.controllers.get(n)
                if c is None:
                    problems.append(f"cannot {verb} unknown controller {n!r} (known: {sorted(self.controllers)})")
                    lst.remove(n)
                elif verb == "activate" and c.active:
                    problems.append(f"controller {n!r} is already active")
                    lst.remove(n)
                elif verb == "deactivate" and not c.active:
                    problems.append(f"controller {n!r} is not active")
                    lst.remove(n)
        owner: dict[str, str] = {}
        for c in self.controllers.values():
            if c.active and c.name not in deact:
                for j in c.joints.names:
                    owner[j] = c.name
        for n in list(act):
            clash = [(j, owner[j]) for j in self.controllers[n].joints.names if j in owner]
            if clash:
                j, other = clash[0]
                problems.append(f"cannot activate {n!r}: joint {j!r} is claimed by active controller {other!r} "
                                f"(deactivate it in the same call)")
                act.remove(n)
            else:
                for j in self.controllers[n].joints.names:
                    owner[j] = n
        if problems and strict:
            return False, "STRICT switch refused: " + "; ".join(problems)
        for n in deact:
            self.controllers[n].deactivate()
        for n in act:
            self.controllers[n].activate(self.model, self.data, self.time)
        self._update_brake_mask()
        msg = "; ".join(problems) if problems else "ok"
        return (not problems) or (not strict), msg

    def _update_brake_mask(self) -> None:
        claimed = {j for c in self.controllers.values() if c.active for j in c.joints.names}
        new_mask = np.array([n not in claimed for n in self._motor_set.names], dtype=bool)
        released = new_mask & ~self._brake_mask
        q = self.data.qpos[self._motor_set.qpos]
        self._brake_q[released] = q[released]
        self._brake_mask = new_mask

    # -------------------------------------------------------------------------------- physics
    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps, running every active controller (and the brakes) each step."""
        m, d = self.model, self.data
        active = [c for c in self.controllers.values() if c.active and len(c.joints)]
        twist = [c for c in self.controllers.values() if c.active and not len(c.joints)]
        brake_any = bool(self._brake_mask.any())
        for _ in range(n):
            mujoco.mj_step1(m, d)
            now = d.time
            for c in active:
                c.expire(d, now)
                d.ctrl[c.joints.actuators] = c.update(m, d, now)
            for c in twist:
                c.expire(d, now)
                c.update(m, d, now)
            if brake_any:
                self._brake.hold_q = self._brake_q
                tau = self._brake.update(m, d, now)
                d.ctrl[self._motor_set.actuators[self._brake_mask]] = tau[self._brake_mask]
            mujoco.mj_step2(m, d)

    def qpos(self) -> np.ndarray:
        """A copy of the full configuration (for rendering elsewhere)."""
        return self.data.qpos.copy()

    def render(self, camera: str, width: int = 224, height: int = 224) -> np.ndarray:
        """Render the current state from a scene camera: (height, width, 3) uint8."""
        if camera not in self.scene.cameras:
            raise KeyError(f"unknown camera {camera!r}; the scene has {self.scene.cameras}")
        if not hasattr(self, "_renderer"):
            self._renderer = CameraRenderer(self.model)
        return self._renderer.render(self.data.qpos, camera, width, height)
