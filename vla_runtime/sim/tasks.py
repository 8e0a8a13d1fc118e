"""The reference tasks of the simulated Panda scene, their success check and a scripted expert.

Pure Python + numpy + MuJoCo (no rclpy): the dataset generator drives the expert directly on a
:class:`~vla_runtime.sim.robot.SimRobot` in simulated time, the evaluation harness uses the same
instructions, target motion and success check against the running node graph, and the unit tests
check all of it without ROS.

Tasks:

* ``touch`` — "touch the {red,green,blue} cube": the cube positions are random (the sim's reset
  seed), so the policy must read both the image (where is each cube) and the words (which one).
* ``touch_dynamic`` — the same, but the target cube slides back and forth along a straight
  segment at a steady speed (:class:`TargetMotion`) for the whole episode.

Success: the tool centre point (the gripper's ``panda_tcp`` site, :data:`TCP_OFFSET_IN_HAND`
below the ``panda_hand`` frame that ``/ee_pose`` reports) comes within :data:`SUCCESS_RADIUS_M`
of the target cube's centre before the task's time limit.

The expert (:class:`ReachExpert`) is a Markov Cartesian velocity field (approach from above,
speed-capped, proportional near the goal) turned into joint targets by damped-least-squares IK
with a null-space pull to the home posture. At every 30 Hz control tick it rolls the field out
``H`` steps from the measured joints and returns the ``H × 7`` joint-position chunk that the
policy learns to imitate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import mujoco
import numpy as np

from vla_runtime.core.rotation import quaternion_to_matrix

COLOURS: tuple[str, ...] = ("red", "green", "blue")
TASKS: tuple[str, ...] = ("touch", "touch_dynamic")
ARM_JOINTS: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
GRIPPER_OPEN = 0.04

#: Success radius around the target cube's centre (m).
SUCCESS_RADIUS_M = 0.03
#: Time limit per task (s of episode time, from the instruction being set).
TIME_LIMIT_S: dict[str, float] = {"touch": 10.0, "touch_dynamic": 10.0}
#: The ``panda_tcp`` site (fingertip centre) in the ``panda_hand`` frame (m).
TCP_OFFSET_IN_HAND = np.array([0.0, 0.0, 0.097])

#: Control rate of the expert and the policy's chunk rate (Hz), and the chunk horizon.
CONTROL_HZ = 30.0
CHUNK_HORIZON = 16

#: Speed of the sliding target in ``touch_dynamic`` (m/s) and the length of its segment (m).
DYNAMIC_SPEED_MPS = 0.05
DYNAMIC_SEGMENT_M = 0.14
#: Where a sliding target may go (base frame x, y ranges; m): inside the arm's comfortable reach.
DYNAMIC_AREA = ((0.36, 0.66), (-0.26, 0.26))

_INSTRUCTION_RE = re.compile(r"\btouch\s+the\s+(red|green|blue)\s+(?:cube|block)\b", re.IGNORECASE)


# --------------------------------------------------------------------------------- instructions
def instruction_for(colour: str) -> str:
    """The instruction of a touch task, e.g. ``"touch the red cube"``.

    Raises:
        ValueError: ``colour`` is not one of :data:`COLOURS`.
    """
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    return f"touch the {colour} cube"


def parse_instruction(text: str) -> str:
    """The target cube's body name (``red_cube`` …) of a touch instruction.

    Raises:
        ValueError: the text names no cube to touch.
    """
    m = _INSTRUCTION_RE.search(text or "")
    if m is None:
        raise ValueError(f"not a touch instruction: {text!r} (expected 'touch the <red|green|blue> cube')")
    return f"{m.group(1).lower()}_cube"


# ------------------------------------------------------------------------------------- success
def tcp_from_hand(position: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """The TCP position from the hand pose (``/ee_pose``: ``panda_hand`` in the base frame, quaternion
    (x, y, z, w))."""
    return np.asarray(position, dtype=float) + quaternion_to_matrix(quaternion) @ TCP_OFFSET_IN_HAND


def is_success(tcp: Sequence[float], target: Sequence[float], radius: float = SUCCESS_RADIUS_M) -> bool:
    """Whether the TCP is within ``radius`` of the target centre."""
    return bool(np.linalg.norm(np.asarray(tcp, float) - np.asarray(target, float)) <= radius)


# ------------------------------------------------------------------------------- target motion
@dataclass(frozen=True)
class TargetMotion:
    """A target sliding back and forth along ``start → start + length · direction`` at ``speed``.

    ``position(t)`` is a triangle wave in time: it leaves ``start`` at ``t = 0``, turns at the far
    end and comes back, forever. ``z`` stays at the start's height (on the table).
    """

    start: tuple[float, float, float]
    direction: tuple[float, float, float]
    speed: float = DYNAMIC_SPEED_MPS
    length: float = DYNAMIC_SEGMENT_M

    def position(self, t: float) -> np.ndarray:
        """Target position at episode time ``t`` (s)."""
        s = max(0.0, float(t)) * self.speed
        period = 2.0 * self.length
        s = s % period
        if s > self.length:
            s = period - s
        return np.asarray(self.start, float) + s * np.asarray(self.direction, float)


def plan_motion(target: str, poses: Mapping[str, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
                speed: float = DYNAMIC_SPEED_MPS, length: float = DYNAMIC_SEGMENT_M) -> TargetMotion:
    """A slide for ``target`` that stays in :data:`DYNAMIC_AREA` and clear of the other cubes.

    Tries random horizontal directions and keeps the one whose segment passes farthest from the
    other cubes (at least 7 cm when one exists).
    """
    start = np.asarray(poses[target][0], float)
    others = [np.asarray(p[0], float)[:2] for n, p in poses.items() if n != target]
    (x0, x1), (y0, y1) = DYNAMIC_AREA
    best, best_clear = None, -1.0
    for ang in rng.uniform(-np.pi, np.pi, size=48):
        d = np.array([np.cos(ang), np.sin(ang)])
        end = start[:2] + length * d
        if not (x0 <= end[0] <= x1 and y0 <= end[1] <= y1):
            continue
        s = np.linspace(0.0, length, 15)[:, None]
        path = start[:2] + s * d
        clear = min((float(np.min(np.linalg.norm(path - o, axis=1))) for o in others), default=1.0)
        if clear > best_clear:
            best, best_clear = d, clear
        if clear >= 0.09:
            break
    if best is None:  # cornered: slide towards the area's centre
        c = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - start[:2]
        best = c / max(np.linalg.norm(c), 1e-9)
    return TargetMotion(tuple(start.tolist()), (float(best[0]), float(best[1]), 0.0), speed, length)


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: task, which cube, the instruction, time limit and (dynamic) target motion."""

    task: str
    colour: str
    target: str
    instruction: str
    time_limit_s: float
    motion: TargetMotion | None = None

    def target_position(self, t: float, static_position: Sequence[float]) -> np.ndarray:
        """The target's position at episode time ``t`` (the static pose when it does not move)."""
        return self.motion.position(t) if self.motion is not None else np.asarray(static_position, float)


def make_episode(task: str, seed: int, poses: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 colour: str | None = None) -> EpisodeSpec:
    """The episode of ``task`` for ``seed`` in a scene with cube ``poses`` (base frame).

    Args:
        task: ``touch`` or ``touch_dynamic``.
        seed: picks the colour (unless given) and the slide direction.
        poses: cube name → (position, quaternion), e.g. ``SimRobot.object_poses()``.
        colour: force the target colour.

    Raises:
        ValueError: unknown task or colour.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    rng = np.random.default_rng([int(seed), 7919])
    colour = colour or COLOURS[int(rng.integers(len(COLOURS)))]
    instruction = instruction_for(colour)
    target = parse_instruction(instruction)
    motion = plan_motion(target, poses, rng) if task == "touch_dynamic" else None
    return EpisodeSpec(task, colour, target, instruction, TIME_LIMIT_S[task], motion)


# --------------------------------------------------------------------------------------- expert
@dataclass
class ExpertConfig:
    """Shape of the expert's Cartesian velocity field."""

    goal_dz: float = 0.01         # TCP goal above the cube centre (m): 2 cm inside the success ball
    hover_slope: float = 1.0      # approach height per metre of horizontal distance
    max_hover: float = 0.15       # highest approach height above the goal (m)
    kp: float = 4.0               # proportional gain (1/s)
    vmax: float = 0.25            # TCP speed cap (m/s)
    rot_gain: float = 3.0         # orientation correction (1/s)
    damping: float = 0.05         # DLS damping
    null_gain: float = 1.0        # null-space pull to home (1/s)
    max_qdot: float = 1.0         # joint speed cap in the rollout (rad/s)


class ReachExpert:
    """Scripted reaching expert on the MuJoCo model (its own scratch ``MjData``).

    Args:
        model: the scene's compiled model (``SimRobot.model``).
        home: home joint positions of the 7 arm joints.
        config: velocity-field parameters.
    """

    def __init__(self, model: mujoco.MjModel, home: Sequence[float], config: ExpertConfig | None = None):
        self.model = model
        self.data = mujoco.MjData(model)
        self.cfg = config or ExpertConfig()
        self.qadr = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self.dadr = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self.site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "panda_tcp")
        if self.site < 0:
            raise ValueError("the model has no panda_tcp site")
        self.lo = np.array([model.jnt_range[model.joint(n).id][0] for n in ARM_JOINTS])
        self.hi = np.array([model.jnt_range[model.joint(n).id][1] for n in ARM_JOINTS])
        self.home = np.asarray(home, float)
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))
        _, self.r_des = self.tcp(self.home)  # keep the home orientation (pointing down)

    def tcp(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and rotation matrix at arm configuration ``q`` (world = base frame)."""
        d = self.data
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self.site].copy(), d.site_xmat[self.site].reshape(3, 3).copy()

    def velocity(self, p: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Desired TCP velocity at ``p`` for a target cube centred at ``target``."""
        c = self.cfg
        goal = np.asarray(target, float) + np.array([0.0, 0.0, c.goal_dz])
        exy = float(np.linalg.norm(goal[:2] - p[:2]))
        carrot = goal + np.array([0.0, 0.0, min(c.hover_slope * exy, c.max_hover)])
        v = c.kp * (carrot - p)
        n = float(np.linalg.norm(v))
        return v if n <= c.vmax else v * (c.vmax / n)

    def step(self, q: np.ndarray, target: np.ndarray, dt: float) -> np.ndarray:
        """One IK step of the velocity field: the next arm configuration after ``dt``."""
        c = self.cfg
        p, r = self.tcp(q)
        v = self.velocity(p, target)
        w = c.rot_gain * 0.5 * sum(np.cross(r[:, i], self.r_des[:, i]) for i in range(3))
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
        jac = np.vstack([self._jp[:, self.dadr], self._jr[:, self.dadr]])
        jjt = jac @ jac.T + (c.damping ** 2) * np.eye(6)
        pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
        qdot = pinv @ np.concatenate([v, w])
        qdot += (np.eye(7) - pinv @ jac) @ (c.null_gain * (self.home - q))
        peak = float(np.max(np.abs(qdot)))
        if peak > c.max_qdot:
            qdot *= c.max_qdot / peak
        return np.clip(q + qdot * dt, self.lo, self.hi)

    def chunk(self, q: np.ndarray, target: np.ndarray, horizon: int = CHUNK_HORIZON,
              dt: float = 1.0 / CONTROL_HZ) -> np.ndarray:
        """The next ``horizon`` joint targets (``horizon × 7``): row ``i`` is for ``now + i·dt``.

        Rolled out from the measured ``q`` one step ahead (row 0 is already ``dt`` along the
        field), which leads the trajectory controller's tracking lag by one tick.
        """
        out = np.empty((horizon, len(ARM_JOINTS)))
        qi = np.asarray(q, float).copy()
        for i in range(horizon):
            qi = self.step(qi, target, dt)
            out[i] = qi
        return out


# ------------------------------------------------------------------------------- sim episodes
@dataclass
class EpisodeLog:
    """What happened in a simulated episode (ticks at :data:`CONTROL_HZ`)."""

    spec: EpisodeSpec
    seed: int
    times: np.ndarray                      # (T,)
    joints: np.ndarray                     # (T, 7) measured arm joints
    gripper: np.ndarray                    # (T,) measured finger position
    actions: np.ndarray                    # (T, H, 7) expert chunks (the labels)
    tcp: np.ndarray                        # (T, 3)
    target: np.ndarray                     # (T, 3)
    frames: np.ndarray                     # (F, h, w, 3) uint8 images
    frame_ticks: np.ndarray                # (F,) tick index of each frame
    success_time_s: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.success_time_s is not None

    @property
    def min_distance(self) -> float:
        return float(np.min(np.linalg.norm(self.tcp - self.target, axis=1)))


def run_expert_episode(robot, task: str, seed: int, duration_s: float | None = None, colour: str | None = None,
                       render_every: int = 0, image_size: tuple[int, int] = (96, 96), camera: str = "scene",
                       noise: Callable[[int, np.ndarray], np.ndarray] | None = None,
                       stop_on_success: bool = False) -> EpisodeLog:
    """Run the expert for one episode on a :class:`~vla_runtime.sim.robot.SimRobot`, in sim time.

    Args:
        robot: the sim robot (reset here with ``seed``: new cube placement).
        task: ``touch`` or ``touch_dynamic``.
        seed: cube placement, target colour and slide direction.
        duration_s: episode length (default: the task's time limit).
        colour: force the target colour.
        render_every: render the camera every this many ticks (0: no images).
        image_size: (width, height) of the rendered images.
        camera: scene camera to render.
        noise: ``noise(tick, chunk) → offset`` added to the EXECUTED chunk (not to the label), so
            the data covers recoveries from states the expert itself would not visit.
        stop_on_success: end at the first success.

    Returns:
        The episode log (labels are always the clean expert chunks at the measured state).
    """
    from vla_runtime.sim.controllers import TrajectoryCommand

    robot.reset(seed)
    poses = robot.object_poses()
    spec = make_episode(task, seed, poses, colour)
    home = np.array([robot.home[j] for j in ARM_JOINTS])
    expert = ReachExpert(robot.model, home)
    dt = 1.0 / CONTROL_HZ
    n_ticks = int(round((duration_s or spec.time_limit_s) * CONTROL_HZ))
    names = list(robot.joint_names)
    idx = np.array([names.index(j) for j in ARM_JOINTS])
    finger = names.index("panda_finger_joint1") if "panda_finger_joint1" in names else None
    static = poses[spec.target][0]
    times, joints, grip, actions, tcps, targets, frames, frame_ticks = [], [], [], [], [], [], [], []
    t0 = robot.time
    success_t = None
    point_times = [i * dt for i in range(CHUNK_HORIZON)]
    for k in range(n_ticks):
        t = k * dt
        target = spec.target_position(t, static)
        if spec.motion is not None:
            robot.move_object(spec.target, target)
        js = robot.joint_state()
        q = js.positions[idx]
        p, _ = expert.tcp(q)
        if success_t is None and is_success(p, target):
            success_t = t
        if render_every and k % render_every == 0:
            frames.append(robot.render(camera, image_size[0], image_size[1]))
            frame_ticks.append(k)
        chunk = expert.chunk(q, target)
        times.append(t)
        joints.append(q)
        grip.append(js.positions[finger] if finger is not None else GRIPPER_OPEN)
        actions.append(chunk)
        tcps.append(p)
        targets.append(target)
        if stop_on_success and success_t is not None:
            break
        run = chunk if noise is None else chunk + noise(k, chunk)
        robot.accept("arm_controller", TrajectoryCommand(list(ARM_JOINTS), point_times, run.tolist()))
        steps = int(round((t0 + (k + 1) * dt - robot.time) / robot.model.opt.timestep))
        robot.step(max(steps, 1))
    h, w = image_size[1], image_size[0]
    return EpisodeLog(
        spec=spec, seed=seed, times=np.array(times), joints=np.array(joints), gripper=np.array(grip),
        actions=np.array(actions), tcp=np.array(tcps), target=np.array(targets),
        frames=np.array(frames, dtype=np.uint8) if frames else np.zeros((0, h, w, 3), np.uint8),
        frame_ticks=np.array(frame_ticks, dtype=np.int64), success_time_s=success_t,
    )
