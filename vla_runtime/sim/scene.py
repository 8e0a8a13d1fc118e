"""MuJoCo scenes for the simulated robots, built with :class:`mujoco.MjSpec` from packaged assets.

Two robots are supported, both from robosuite's asset tree (robosuite is installed only for its
assets and is never imported: its directory is located with :func:`importlib.util.find_spec`):

* ``panda`` — the Franka Panda (``robots/panda/robot.xml``, torque motors) with the Panda gripper
  attached at the hand, on a table with a red, a green and a blue cube, a fixed scene camera and an
  optional wrist camera. Names follow the ROS Franka description: ``panda_link0..7``,
  ``panda_hand``, ``panda_joint1..7``, ``panda_finger_joint1/2``. The two fingers are coupled by a
  joint equality (``finger2 = -finger1``), like the real gripper's mechanism, and only
  ``panda_finger_joint1`` carries a motor: the gripper is commanded through one joint.
* ``gr1`` — the Fourier GR1 humanoid with its free joint removed (the pelvis is welded to the
  world), Fourier hands attached at both wrists, standing at a table with the same cubes.

Every actuated joint of the returned model is driven by a ``motor`` (torque) actuator of gear 1
named after its joint; the position/velocity/impedance behaviour comes from the controllers in
:mod:`vla_runtime.sim.controllers`, which compute joint torques with gravity compensation. The
gripper and hand position actuators of the original assets are replaced by motors for this reason.

The world frame of the Panda scene is the robot base (``panda_link0``): the table top is the plane
``z = 0``. In the GR1 scene the pelvis (``base``) stands 0.97 m above the floor.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from vla_runtime.core.rotation import matrix_to_quaternion, to_mujoco_wxyz

CUBE_NAMES: tuple[str, ...] = ("red_cube", "green_cube", "blue_cube")
CUBE_RGBA: dict[str, tuple[float, float, float, float]] = {
    "red_cube": (0.85, 0.1, 0.1, 1.0),
    "green_cube": (0.1, 0.7, 0.15, 1.0),
    "blue_cube": (0.1, 0.25, 0.85, 1.0),
}
CUBE_HALF_SIZE = 0.02

#: Joint groups of the GR1 scene (pelvis welded; the legs are held by the robot's brakes).
GR1_GROUPS: dict[str, list[str]] = {
    "waist": ["torso_waist_yaw", "torso_waist_pitch", "torso_waist_roll"],
    "head": ["head_yaw", "head_roll", "head_pitch"],
    "left_arm": [f"l_{j}" for j in ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow_pitch",
                                     "wrist_yaw", "wrist_roll", "wrist_pitch")],
    "right_arm": [f"r_{j}" for j in ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow_pitch",
                                      "wrist_yaw", "wrist_roll", "wrist_pitch")],
    "left_hand": [f"L_{f}_joint" for f in (
        "thumb_proximal_yaw", "thumb_proximal_pitch", "thumb_distal", "index_proximal", "index_intermediate",
        "middle_proximal", "middle_intermediate", "ring_proximal", "ring_intermediate", "pinky_proximal",
        "pinky_intermediate")],
    "right_hand": [f"R_{f}_joint" for f in (
        "thumb_proximal_yaw", "thumb_proximal_pitch", "thumb_distal", "index_proximal", "index_intermediate",
        "middle_proximal", "middle_intermediate", "ring_proximal", "ring_intermediate", "pinky_proximal",
        "pinky_intermediate")],
    "legs": [f"{s}_leg_{j}" for s in ("l", "r") for j in (
        "hip_roll", "hip_yaw", "hip_pitch", "knee_pitch", "ankle_pitch", "ankle_roll")],
}
#: End-effector bodies of the GR1 scene (the hands' grip frames).
GR1_EE_LINKS: dict[str, str] = {"left_arm": "left_eef", "right_arm": "right_eef"}


@dataclass
class Scene:
    """A compiled scene and the names a :class:`~vla_runtime.sim.robot.SimRobot` needs.

    Attributes:
        model: the compiled MuJoCo model.
        robot: ``"panda"`` or ``"gr1"``.
        base_body: body whose frame is the robot base frame (poses are reported in it).
        cameras: MuJoCo camera names available for rendering.
        cubes: cube body names.
        ee_links: suggested end-effector body per arm.
        hands_attached: GR1 only: whether the Fourier hands were attached (else hands are absent).
    """

    model: mujoco.MjModel
    robot: str
    base_body: str
    cameras: list[str] = field(default_factory=list)
    cubes: list[str] = field(default_factory=list)
    ee_links: dict[str, str] = field(default_factory=dict)
    hands_attached: bool = False


def robosuite_assets() -> Path:
    """Directory ``robosuite/models/assets`` of the installed robosuite package, without importing it.

    Raises:
        FileNotFoundError: robosuite is not installed (``pip install --no-deps robosuite``).
    """
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "robosuite is not installed; the simulated robots use its assets: pip install --no-deps robosuite==1.5.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "assets"
    if not path.is_dir():
        raise FileNotFoundError(f"robosuite assets not found at {path}")
    return path


def _load(path: Path) -> mujoco.MjSpec:
    """Load an MJCF file and make its mesh paths absolute so it can be attached elsewhere."""
    spec = mujoco.MjSpec.from_file(str(path))
    meshdir = Path(spec.meshdir) if spec.meshdir else Path()
    base = path.parent / meshdir
    for mesh in spec.meshes:
        if mesh.file and not os.path.isabs(mesh.file):
            mesh.file = str((base / mesh.file).resolve())
    spec.meshdir = ""
    return spec


def _look_at(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orientation (x, y, z, w) of a MuJoCo camera at ``pos`` looking at ``target`` (z up)."""
    fwd = target - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return matrix_to_quaternion(np.column_stack([right, up, -fwd]))  # camera looks along its -z


def sample_cube_poses(seed: int, robot: str = "panda") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random, non-overlapping cube poses on the table, in reach of the arm(s).

    Args:
        seed: random seed; the same seed gives the same poses.
        robot: ``"panda"`` or ``"gr1"`` (different tables).

    Returns:
        name → (position xyz in the world, quaternion (x, y, z, w)).
    """
    rng = np.random.default_rng(seed)
    if robot == "panda":
        lo, hi, z = np.array([0.40, -0.22]), np.array([0.62, 0.22]), CUBE_HALF_SIZE
    else:
        lo, hi, z = np.array([0.30, -0.25]), np.array([0.45, 0.25]), GR1_TABLE_TOP + CUBE_HALF_SIZE
    poses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    placed: list[np.ndarray] = []
    for name in CUBE_NAMES:
        for _ in range(1000):
            xy = rng.uniform(lo, hi)
            if all(np.linalg.norm(xy - p) >= 0.08 for p in placed):
                break
        placed.append(xy)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        poses[name] = (np.array([xy[0], xy[1], z]), np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)]))
    return poses


GR1_TABLE_TOP = 0.80  # world z of the GR1 table top; the pelvis is at z = 0.97


def _add_world(spec: mujoco.MjSpec, table_center: tuple[float, float], table_half: tuple[float, float],
               table_top: float, floor_z: float) -> None:
    """Floor, table, lights and materials."""
    spec.add_texture(name="floor_tex", type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, rgb1=[0.25, 0.27, 0.3], rgb2=[0.32, 0.34, 0.37],
                     width=256, height=256)
    spec.add_material(name="floor_mat", textures=["", "floor_tex"], texrepeat=[8, 8], reflectance=0.05)
    spec.add_material(name="table_mat", rgba=[0.62, 0.48, 0.33, 1.0])
    wb = spec.worldbody
    wb.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, pos=[0, 0, floor_z], size=[3, 3, 0.05],
                material="floor_mat")
    table = wb.add_body(name="table", pos=[table_center[0], table_center[1], table_top])
    table.add_geom(name="table_top", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[0, 0, -0.025],
                   size=[table_half[0], table_half[1], 0.025], material="table_mat", friction=[1.0, 0.005, 0.0001])
    leg_h = (table_top - 0.05 - floor_z) / 2
    for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
        table.add_geom(name=f"table_leg{i}", type=mujoco.mjtGeom.mjGEOM_BOX,
                       pos=[sx * (table_half[0] - 0.05), sy * (table_half[1] - 0.05), -0.05 - leg_h],
                       size=[0.03, 0.03, leg_h], material="table_mat", contype=0, conaffinity=0)
    wb.add_light(name="key_light", pos=[0.6, -0.8, 2.5], dir=[-0.2, 0.3, -1.0],
                 type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                 diffuse=[0.7, 0.7, 0.7], specular=[0.2, 0.2, 0.2], castshadow=False)
    wb.add_light(name="fill_light", pos=[-0.5, 0.8, 2.0], dir=[0.3, -0.3, -1.0],
                 type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                 diffuse=[0.35, 0.35, 0.35], specular=[0.0, 0.0, 0.0], castshadow=False)
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.3, 0.3, 0.3]


def _add_cubes(spec: mujoco.MjSpec, poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name in CUBE_NAMES:
        pos, quat = poses[name]
        body = spec.worldbody.add_body(name=name, pos=pos.tolist(), quat=to_mujoco_wxyz(quat).tolist())
        body.add_freejoint(name=f"{name}_joint")
        body.add_geom(name=f"{name}_geom", type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF_SIZE] * 3,
                      rgba=list(CUBE_RGBA[name]), mass=0.05, friction=[1.0, 0.01, 0.001], condim=4)
        body.add_site(name=f"{name}_site", size=[0.005, 0.005, 0.005], rgba=[0, 0, 0, 0])


def _add_camera(spec: mujoco.MjSpec, name: str, pos: tuple[float, float, float],
                target: tuple[float, float, float], fovy: float = 45.0) -> None:
    p = np.asarray(pos, float)
    quat = to_mujoco_wxyz(_look_at(p, np.asarray(target, float)))
    spec.worldbody.add_camera(name=name, pos=p.tolist(), quat=quat.tolist(), fovy=fovy)


def _motors_for_unactuated(spec: mujoco.MjSpec, effort: float, skip: tuple[str, ...] = ()) -> None:
    """Replace every non-motor actuator by nothing and give each hinge/slide joint one motor."""
    for act in list(spec.actuators):
        if act.gaintype != mujoco.mjtGain.mjGAIN_FIXED or act.biastype != mujoco.mjtBias.mjBIAS_NONE:
            spec.delete(act)
    driven = {a.target for a in spec.actuators}
    for j in spec.joints:
        if j.type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE) and j.name not in driven \
                and j.name not in skip:
            spec.add_actuator(name=j.name, target=j.name, trntype=mujoco.mjtTrn.mjTRN_JOINT,
                              gainprm=[1.0] + [0.0] * 9, ctrllimited=True, ctrlrange=[-effort, effort])


def _finish(spec: mujoco.MjSpec, physics_dt: float, offscreen: tuple[int, int]) -> None:
    spec.option.timestep = physics_dt
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.visual.global_.offwidth = max(int(offscreen[0]), 640)
    spec.visual.global_.offheight = max(int(offscreen[1]), 480)


def build_panda(seed: int = 0, physics_dt: float = 0.002, wrist_camera: bool = True,
                offscreen: tuple[int, int] = (640, 480)) -> Scene:
    """The Panda with its gripper on a table with three cubes.

    Args:
        seed: cube placement seed.
        physics_dt: physics time step (s).
        wrist_camera: keep the camera on the hand (``wrist``).
        offscreen: largest (width, height) any camera renders at.

    Returns:
        The compiled :class:`Scene`.
    """
    assets = robosuite_assets()
    spec = _load(assets / "robots" / "panda" / "robot.xml")
    spec.modelname = "panda_scene"
    for i in range(1, 8):
        spec.joint(f"joint{i}").name = f"panda_joint{i}"
        act = spec.actuator(f"torq_j{i}")
        act.name = act.target = f"panda_joint{i}"
    for i in range(0, 8):
        spec.body(f"link{i}").name = f"panda_link{i}"
    spec.body("base").name = "panda_base"
    hand = spec.body("right_hand")
    hand.name = "panda_hand"
    cam = spec.camera("eye_in_hand")
    if wrist_camera:
        cam.name = "wrist"
    else:
        spec.delete(cam)
    spec.delete(spec.camera("robotview"))
    spec.delete(spec.site("right_center"))

    gripper = _load(assets / "grippers" / "panda_gripper.xml")
    for act in list(gripper.actuators):
        gripper.delete(act)
    for s in list(gripper.sensors):
        gripper.delete(s)
    frame = hand.add_frame()
    spec.attach(gripper, prefix="gripper/", frame=frame)
    for kind, old, new in (("joint", "finger_joint1", "panda_finger_joint1"),
                           ("joint", "finger_joint2", "panda_finger_joint2"),
                           ("body", "leftfinger", "panda_leftfinger"), ("body", "rightfinger", "panda_rightfinger"),
                           ("body", "right_gripper", "panda_gripper"), ("site", "grip_site", "panda_tcp")):
        getattr(spec, kind)(f"gripper/{old}").name = new
    spec.add_equality(name="finger_coupling", type=mujoco.mjtEq.mjEQ_JOINT, name1="panda_finger_joint2",
                      name2="panda_finger_joint1", data=[0.0, -1.0, 0.0, 0.0, 0.0] + [0.0] * (mujoco.mjNEQDATA - 5))
    spec.add_actuator(name="panda_finger_joint1", target="panda_finger_joint1", trntype=mujoco.mjtTrn.mjTRN_JOINT,
                      gainprm=[1.0] + [0.0] * 9, ctrllimited=True, ctrlrange=[-70.0, 70.0])
    spec.body("panda_link0").add_site(name="panda_link0_site", size=[0.01] * 3, rgba=[0, 0, 0, 0])

    _add_world(spec, table_center=(0.45, 0.0), table_half=(0.6, 0.75), table_top=0.0, floor_z=-0.75)
    _add_cubes(spec, sample_cube_poses(seed, "panda"))
    _add_camera(spec, "scene", pos=(1.35, 0.0, 0.75), target=(0.45, 0.0, 0.05), fovy=45.0)
    _finish(spec, physics_dt, offscreen)
    model = spec.compile()
    cams = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    return Scene(model=model, robot="panda", base_body="panda_link0", cameras=cams, cubes=list(CUBE_NAMES),
                 ee_links={"arm": "panda_hand"})


def build_gr1(seed: int = 0, physics_dt: float = 0.002, hands: bool = True,
              offscreen: tuple[int, int] = (640, 480)) -> Scene:
    """The GR1 humanoid, pelvis welded to the world, with Fourier hands, at a table with three cubes.

    Args:
        seed: cube placement seed.
        physics_dt: physics time step (s).
        hands: attach the Fourier hands (11 motor-driven joints each).
        offscreen: largest (width, height) any camera renders at.

    Returns:
        The compiled :class:`Scene`.
    """
    assets = robosuite_assets()
    spec = _load(assets / "robots" / "gr1" / "robot.xml")
    spec.modelname = "gr1_scene"
    base = spec.body("base")
    for j in list(base.joints):
        spec.delete(j)  # the free joint: the pelvis is welded to the world
    base.pos = [0.0, 0.0, 0.97]
    spec.delete(spec.geom("floor"))
    attached = False
    if hands:
        for side, mount in (("left", "left_mount"), ("right", "right_mount")):
            hand = _load(assets / "grippers" / f"fourier_{side}_hand.xml")
            for s in list(hand.sensors):
                hand.delete(s)
            frame = spec.body(mount).add_frame()
            spec.attach(hand, prefix=f"{side}_hand/", frame=frame)
        # Joint names stay those of the hand description (L_*/R_* are unique already).
        for j in spec.joints:
            for side in ("left", "right"):
                if j.name.startswith(f"{side}_hand/"):
                    j.name = j.name.removeprefix(f"{side}_hand/")
        attached = True
    # No self-collision (the hands touch the forearms at rest); the robot still touches the world.
    for g in spec.geoms:
        if g.contype or g.conaffinity:
            g.contype, g.conaffinity = 2, 1
    _motors_for_unactuated(spec, effort=20.0)
    # Reflected rotor inertia and viscous friction, as on the real drives: the asset has none,
    # and its light links (fingers, wrists) are not stable under stiff torque control without.
    for j in spec.joints:
        if j.type == mujoco.mjtJoint.mjJNT_HINGE:
            hand_joint = j.name[:2] in ("L_", "R_")
            j.armature = 0.002 if hand_joint else 0.05
            damping = np.array(j.damping, dtype=float).reshape(-1)
            damping[0] = max(damping[0], 0.05 if hand_joint else 0.5)
            j.damping = damping
    for act in spec.actuators:  # one motor per joint, named after it
        act.name = act.target
    _add_world(spec, table_center=(0.6, 0.0), table_half=(0.3, 0.6), table_top=GR1_TABLE_TOP, floor_z=0.0)
    _add_cubes(spec, sample_cube_poses(seed, "gr1"))
    _add_camera(spec, "scene", pos=(1.8, 0.0, 1.6), target=(0.4, 0.0, 0.85), fovy=45.0)
    # The head camera a real GR-1 carries (and humanoid_gr1.yaml names): the MJCF's head-mounted
    # "robotview" under the name the profile uses.
    robotview = spec.camera("robotview")
    if robotview is not None:
        head_cam = robotview.parent.add_camera(name="head", pos=list(robotview.pos), quat=list(robotview.quat),
                                               fovy=robotview.fovy)
        head_cam.alt = robotview.alt
    _finish(spec, physics_dt, offscreen)
    model = spec.compile()
    cams = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    return Scene(model=model, robot="gr1", base_body="base", cameras=cams, cubes=list(CUBE_NAMES),
                 ee_links=dict(GR1_EE_LINKS), hands_attached=attached)


def build_scene(robot: str, seed: int = 0, physics_dt: float = 0.002,
                offscreen: tuple[int, int] = (640, 480)) -> Scene:
    """Build the scene of ``robot`` (``panda`` or ``gr1``).

    Raises:
        ValueError: unknown robot name.
    """
    if robot == "panda":
        return build_panda(seed, physics_dt, offscreen=offscreen)
    if robot == "gr1":
        return build_gr1(seed, physics_dt, offscreen=offscreen)
    raise ValueError(f"unknown sim robot {robot!r}: expected 'panda' or 'gr1'")
