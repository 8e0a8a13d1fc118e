"""The contract between the runtime's nodes and its tools: names, HOLD reasons, the feature layout.

Pure Python + numpy (no rclpy): the nodes, the commands (demo, eval, replay, detector tools), the
benchmarks and the tests all read these names from here. The QoS profiles that go with the
topics are rclpy objects and live with the nodes (:mod:`vla_runtime.nodes.common`).

Topics between the runtime's own nodes (all under ``/vla``):

* ``/vla/action_chunk`` (trajectory_msgs/JointTrajectory, reliable depth 1) — action_chunk_node →
  controller_bridge. The scheduled command trajectory of the next few command periods, already
  delay-compensated, blended and interpolated at the command rate. ``joint_names`` are the
  action dimension names (joint names; ``<group>/x``… for Cartesian dims; ``<group>/gripper``),
  ``header.stamp`` is the time of the first point, ``positions`` carry the values.
  A message with **no points** is the policy asking for HOLD (stale latent, missing joint state,
  engine overrun); ``header.frame_id`` then carries the reason (one of ``HOLD_*`` below).
* ``/vla/policy_features`` (std_msgs/Float32MultiArray, best effort) — the fast path's features
  for the failure detector, laid out as :class:`FeatureLayout` says (its label is the message's
  ``layout.dim[0].label``).
* ``/vla/safety_state`` (diagnostic_msgs/DiagnosticStatus, transient local) — the bridge's mode
  (POLICY/TELEOP/HOLD/HALTED) and the reason of the last transition.
* ``/vla/halt`` (std_msgs/String, reliable, transient local) — a halt request with its reason; an
  EMPTY string says the cause has cleared (``/vla/reset`` is refused until then).
* ``/vla/detector_heartbeat`` (std_msgs/Header, best effort) — failure detector liveness.
* ``/vla/instruction`` (std_msgs/String, reliable, transient local) — the task instruction.
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) — rates, latencies, ages per node, under the
  ``DIAG_*`` status names below.

Teleoperation (front ends → bridge): ``/vla/teleop/{engage,twist,pose,joint_jog,gripper}`` and
``/vla/intervention`` (see the ``TOPIC_TELEOP_*`` constants).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# ------------------------------------------------------------------------------ runtime topics
TOPIC_ACTION_CHUNK = "/vla/action_chunk"
TOPIC_POLICY_FEATURES = "/vla/policy_features"
TOPIC_SAFETY_STATE = "/vla/safety_state"
TOPIC_HALT = "/vla/halt"
TOPIC_DETECTOR_HEARTBEAT = "/vla/detector_heartbeat"
TOPIC_INSTRUCTION = "/vla/instruction"
#: Stop-and-go (synchronous) baseline: the fast path asks the slow path for one step on a fresh frame.
TOPIC_SYNC_REQUEST = "/vla/sync/request"
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_EE_POSE = "/ee_pose"
TOPIC_DIAGNOSTICS = "/diagnostics"
SERVICE_SET_INSTRUCTION = "/vla/set_instruction"
SERVICE_RESET = "/vla/reset"
SERVICE_HOLD = "/vla/hold"
SERVICE_RESUME = "/vla/resume"
#: The fast path's service that restarts its timing statistics (benchmarks call it once warm).
SERVICE_FAST_RESET_STATS = "/action_chunk_node/reset_stats"

# ------------------------------------------------------------------------------ ros2_control
SERVICE_LIST_CONTROLLERS = "/controller_manager/list_controllers"
SERVICE_SWITCH_CONTROLLER = "/controller_manager/switch_controller"

# ------------------------------------------------------------------------------ simulator
TOPIC_SIM_OBJECTS = "/sim/objects"
TOPIC_SIM_MOVE_OBJECT = "/sim/move_object"
SERVICE_SIM_RESET = "/sim/reset"


def camera_topic(camera: str) -> str:
    """The default image topic of a camera (``cameras[].topic`` in a config overrides it)."""
    return f"/camera/{camera}/image_raw"


# ------------------------------------------------------------------------------ teleoperation
#: Operator commands to the bridge (geometry_msgs/TwistStamped, base frame, m/s and rad/s).
TOPIC_TELEOP_TWIST = "/vla/teleop/twist"
#: Absolute end-effector target to the bridge (geometry_msgs/PoseStamped, base frame).
TOPIC_TELEOP_POSE = "/vla/teleop/pose"
#: Joint jog to the bridge (sensor_msgs/JointState: ``name`` + ``velocity`` in rad/s).
TOPIC_TELEOP_JOINT_JOG = "/vla/teleop/joint_jog"
#: Gripper opening to the bridge (std_msgs/Float64, the gripper group's unit).
TOPIC_TELEOP_GRIPPER = "/vla/teleop/gripper"
#: Operator intent (std_msgs/Bool): True = deadman held (take over), False = released (HOLD).
TOPIC_TELEOP_ENGAGE = "/vla/teleop/engage"
#: Device inputs of the teleop node.
TOPIC_JOY = "/joy"
TOPIC_TELEOP_IN_TWIST = "/vla/teleop/input/twist"
TOPIC_TELEOP_IN_POSE = "/vla/teleop/input/pose"
#: Interventions for HG-DAgger style training (std_msgs/String: "start: …" / "end: …").
TOPIC_INTERVENTION = "/vla/intervention"
SERVICE_TELEOP_TAKE = "/vla/teleop/take"
SERVICE_TELEOP_RELEASE = "/vla/teleop/release"

# ------------------------------------------------------------------------------ diagnostics
#: ``DiagnosticStatus.name`` of each node's entry on ``/diagnostics``.
DIAG_FAST_PATH = "vla/action_chunk_node"
DIAG_SLOW_PATH = "vla/slow_reasoner"
DIAG_DETECTOR = "vla/failure_detector"
DIAG_RECORDER = "vla/recorder"


def diag_bridge(node_name: str) -> str:
    """The bridge's status name (it carries the node's name: one bridge per robot)."""
    return f"vla_runtime: {node_name}"


# ------------------------------------------------------------------------------ HOLD reasons
#: Why the fast path asks for HOLD (header.frame_id of an empty trajectory on /vla/action_chunk).
HOLD_NO_JOINT_STATE = "hold: no joint state"
HOLD_STALE_JOINT_STATE = "hold: stale joint state"
HOLD_NO_LATENT = "hold: no latent yet"
HOLD_STALE_LATENT = "hold: stale latent"
HOLD_PROPRIO_INCOMPLETE = "hold: proprio incomplete"
HOLD_OVERRUN = "hold: inference over budget"
HOLD_BAD_OUTPUT = "hold: non-finite model output"
#: The newest latent's observation stamp lies ahead of the fast path's clock (refused, not trusted:
#: its age would read as fresh forever).
HOLD_FUTURE_LATENT = "hold: latent stamped in the future"
#: A package without a slow part (its fast part takes the cameras, e.g. ACT): no frame yet from a
#: camera it takes, or the newest one is older than ``latent.max_age_s`` (the frames stand in for the
#: latent: the policy would act on a scene that is no longer there).
HOLD_NO_FRAME = "hold: no camera frame yet"
HOLD_STALE_FRAME = "hold: stale camera frame"
HOLD_PLAN_ENDED = "hold: plan ended"
HOLD_STOPPED = "hold: fast path stopped"
#: A tick of the fast loop raised (a bug or an input no check foresaw): counted, held, and the loop
#: goes on; the detector's HOLD streak escalates one that persists.
HOLD_TICK_ERROR = "hold: fast path error"
#: Inference off the tick (``scheduler.inference`` async/sync): no plan to execute while the worker
#: computes one (at start, after a hold, between the chunks of stop-and-go, or when the plan ran out
#: during a slow inference). Bounded by ``scheduler.max_inference_s``, after which the wait is an
#: engine stall (:data:`HOLD_OVERRUN`).
HOLD_AWAITING_CHUNK = "hold: awaiting a chunk"
#: A new instruction came (``/vla/instruction``): the old plan was brought to rest (core/interruption)
#: and the fast path waits for a latent computed after the instruction. Bounded by
#: ``latent.max_age_s``, after which the wait is a stale latent (:data:`HOLD_STALE_LATENT`).
HOLD_NEW_INSTRUCTION = "hold: new instruction, awaiting its latent"
#: Holds the bridge makes on its own (``safety.joint_state_timeout_s``) and the detector's
#: joint-state monitor escalates: the detector's HOLD-streak monitor does not count them.
JOINT_STATE_HOLDS = (HOLD_NO_JOINT_STATE, HOLD_STALE_JOINT_STATE)
#: Holds the detector's HOLD-streak monitor does not count: the joint-state ones (escalated by their
#: own monitor), waiting for a chunk in flight (escalated as a stall once it lasts too long) and
#: waiting for a new instruction's latent (a stale latent once it lasts too long).
STREAK_EXEMPT_HOLDS = (*JOINT_STATE_HOLDS, HOLD_AWAITING_CHUNK, HOLD_NEW_INSTRUCTION)


# ------------------------------------------------------------------------------ feature layout
_LABEL = re.compile(r"latent_mean:(\d+)\|chunk_raw:(\d+)x(\d+)\|latent_age_s,infer_ms,hold")


@dataclass(frozen=True)
class FeatureLayout:
    """Where things are in a ``/vla/policy_features`` vector; packing and parsing share it.

    The vector is ``latent mean (D) ⊕ raw chunk (H·A) ⊕ [latent_age_s, infer_ms, hold]`` and its
    label ``latent_mean:{D}|chunk_raw:{H}x{A}|latent_age_s,infer_ms,hold``.
    """

    latent_dim: int
    horizon: int
    action_dim: int

    @property
    def size(self) -> int:
        """Length of the raw feature vector."""
        return self.latent_dim + self.horizon * self.action_dim + 3

    @property
    def step_size(self) -> int:
        """Length of the learned detector's per-step input (``failure_detection.step_features``)."""
        return self.latent_dim + 3 * self.action_dim + 2

    @property
    def label(self) -> str:
        return (f"latent_mean:{self.latent_dim}|chunk_raw:{self.horizon}x{self.action_dim}|"
                "latent_age_s,infer_ms,hold")

    @classmethod
    def parse(cls, label: str, size: int | None = None) -> FeatureLayout:
        """Parse a layout label; ValueError naming the label when it is not one."""
        m = _LABEL.fullmatch(label.strip())
        if m is None:
            raise ValueError(f"unknown policy feature layout {label!r}")
        layout = cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if size is not None and size != layout.size:
            raise ValueError(f"policy feature layout {label!r} means {layout.size} values, got {size}")
        return layout

    def pack_into(self, out: np.ndarray, latent: np.ndarray, chunk_raw: np.ndarray, latent_age_s: float,
                  infer_ms: float, hold: bool) -> np.ndarray:
        """Write one feature vector into ``out`` (preallocated, shape (size,)); returns ``out``.

        ``latent`` is the K×D latent (its mean over the K tokens is packed), ``chunk_raw`` the
        model's raw output with H·A values.
        """
        d, n = self.latent_dim, self.horizon * self.action_dim
        out[:d] = latent.reshape(-1, d).mean(axis=0)
        out[d : d + n] = chunk_raw.reshape(-1)
        out[d + n :] = (latent_age_s, infer_ms, float(hold))
        return out

    def split(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        """(latent mean (D,), chunk (H, A), latent_age_s, infer_ms, hold)."""
        v = np.asarray(vec)
        if v.shape != (self.size,):
            raise ValueError(f"feature vector must have shape ({self.size},), got {v.shape}")
        d, n = self.latent_dim, self.horizon * self.action_dim
        chunk = v[d : d + n].reshape(self.horizon, self.action_dim)
        return v[:d], chunk, float(v[d + n]), float(v[d + n + 1]), float(v[d + n + 2])

    @staticmethod
    def tail(vec) -> tuple[float, float, float]:
        """(latent_age_s, infer_ms, hold) of a feature vector without knowing its layout."""
        age, infer_ms, hold = (float(x) for x in vec[-3:])
        return age, infer_ms, hold
