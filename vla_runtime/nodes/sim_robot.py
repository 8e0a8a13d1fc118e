"""MuJoCo robot node: the simulated robot behind ros2_control's public interfaces.

The runtime cannot tell it from hardware: it publishes ``/joint_states``, ``/ee_pose`` and camera
images, listens on every configured controller's command topic, and serves controller_manager's
``list_controllers`` / ``switch_controller`` (only active controllers move the robot).

Threads: the physics runs on its own thread, a :class:`~vla_runtime.core.deadline_loop.DeadlineLoop`
at the joint-state rate (each tick one small batch of physics steps, joint states published after
it): paced to the wall clock in realtime mode, back to back in free-running mode; cameras
render on another thread from a snapshot of the configuration, so the physics never waits for a
frame; the executor thread only converts messages and hands them to the robot under a short lock.

Topics (``<c>`` = a group's ``controller_name``; topics follow the config's ``resolved_topic``):

* pub ``/joint_states`` (sensor_msgs/JointState, reliable) at ``sim.joint_state_hz``
* pub ``/ee_pose`` (geometry_msgs/PoseStamped) of the group with an ``ee_link`` at ``ee_pose_hz``;
  with several such groups, ``/ee_pose/<group>`` each (the first also on ``/ee_pose``)
* pub ``cameras[i].topic`` (sensor_msgs/Image rgb8, sensor-data QoS) at ``cameras[i].rate_hz``
* pub ``/sim/objects`` (std_msgs/String, JSON ``{"frame_id", "stamp", "objects": {name:
  {"position", "orientation"}}}``, base frame, orientation (x, y, z, w), transient local) at ``objects_hz``
* pub ``/diagnostics`` (real-time factor, step overruns, render time, per-controller counts)
* pub ``/clock`` (rosgraph_msgs/Clock) only when ``sim.realtime`` is false (free-running mode)
* sub ``/<c>/joint_trajectory`` (JointTrajectory), ``/<c>/commands`` (Float64MultiArray),
  ``/<c>/target_pose`` (PoseStamped) + ``/<c>/target_stiffness`` (Float64MultiArray),
  ``/<c>/target_joint`` (JointState) + ``/<c>/target_stiffness``, ``/<c>/cmd_vel`` (Twist)
* sub ``/sim/move_object`` (std_msgs/String JSON ``{"name", "position", ["orientation"]}``, as ``/sim/objects``)
* srv ``/controller_manager/list_controllers``, ``/controller_manager/switch_controller``
  (controller_manager_msgs), ``/sim/reset`` (std_srvs/Trigger: home the robot, re-place cubes)

Parameters: ``config_file`` (required), ``ee_pose_hz`` (100.0), ``objects_hz`` (10.0),
``diagnostics_hz`` (1.0). Physics step, joint-state rate, seed and realtime mode come from the
config's ``sim:`` section.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

# The simulator renders offscreen; MuJoCo picks its GL backend when it is first imported, so a
# node started without MUJOCO_GL (e.g. by ros2 launch on a headless robot PC) must choose EGL here.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from controller_manager_msgs.msg import ControllerState
from controller_manager_msgs.srv import ListControllers, SwitchController
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, Twist
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_runtime.core.config import ControllerGroup
from vla_runtime.core.contract import (
    SERVICE_LIST_CONTROLLERS,
    SERVICE_SIM_RESET,
    SERVICE_SWITCH_CONTROLLER,
    TOPIC_DIAGNOSTICS,
    TOPIC_EE_POSE,
    TOPIC_JOINT_STATES,
    TOPIC_SIM_MOVE_OBJECT,
    TOPIC_SIM_OBJECTS,
)
from vla_runtime.core.controller_kinds import KINDS
from vla_runtime.core.deadline_loop import DeadlineLoop
from vla_runtime.nodes.common import (
    QOS_COMMAND,
    QOS_DIAGNOSTICS,
    QOS_LATCHED,
    QOS_SENSOR,
    QOS_STATE,
    load_node_config,
    ns_to_stamp,
    run_node,
    stamp_to_ns,
)
from vla_runtime.sim.controllers import (
    JointTargetCommand,
    PoseCommand,
    StiffnessCommand,
    TrajectoryCommand,
    TwistCommand,
)
from vla_runtime.sim.robot import CameraRenderer, SimRobot

#: The physics catches up (runs late batches back to back) while at most this far behind the wall
#: clock; further behind, the missed batches are skipped and simulated time falls behind.
MAX_LAG_S = 0.05


class SimRobotNode(Node):
    """The simulated robot as a ROS 2 node (see the module docstring for its interfaces)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_robot", **kwargs)
        self.cfg = load_node_config(self)
        self.declare_parameter("ee_pose_hz", 100.0)
        self.declare_parameter("objects_hz", 10.0)
        self.declare_parameter("diagnostics_hz", 1.0)
        sim = self.cfg.sim
        if sim is None:
            self.get_logger().fatal(f"{self.cfg.source}: no sim: section, nothing to simulate")
            raise SystemExit(2)
        try:
            self.robot = SimRobot(self.cfg)
        except (ValueError, KeyError, FileNotFoundError) as e:
            self.get_logger().fatal(f"cannot build the sim robot: {e}")
            raise SystemExit(2) from None
        for cam in self.cfg.cameras:
            if cam.name not in self.robot.scene.cameras:
                self.get_logger().fatal(
                    f"camera {cam.name!r} is not in the {sim.robot} scene; available: {self.robot.scene.cameras}")
                raise SystemExit(2)
        self.realtime = sim.realtime
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dt = float(self.robot.model.opt.timestep)
        self._batch = max(1, round(1.0 / (sim.joint_state_hz * self._dt)))
        self._ee_every = max(1, round(1.0 / (self.get_parameter("ee_pose_hz").value * self._dt * self._batch)))

        # -- publishers
        self._js_pub = self.create_publisher(JointState, TOPIC_JOINT_STATES, QOS_STATE)
        ee_groups = self.robot.ee_groups
        self._ee_pubs: list[tuple[str, list]] = []
        for i, g in enumerate(ee_groups):
            pubs = []
            if i == 0:
                pubs.append(self.create_publisher(PoseStamped, TOPIC_EE_POSE, QOS_STATE))
            if len(ee_groups) > 1:
                pubs.append(self.create_publisher(PoseStamped, f"{TOPIC_EE_POSE}/{g}", QOS_STATE))
            self._ee_pubs.append((g, pubs))
        self._img_pubs = [self.create_publisher(Image, c.topic, QOS_SENSOR) for c in self.cfg.cameras]
        self._obj_pub = self.create_publisher(String, TOPIC_SIM_OBJECTS, QOS_LATCHED)
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, QOS_DIAGNOSTICS)
        self._clock_pub = None if self.realtime else self.create_publisher(Clock, "/clock", QOS_SENSOR)
        self._js_msg = JointState(name=list(self.robot.joint_names))

        # -- command subscriptions, one per configured controller topic
        for gname, group in self.cfg.robot.groups.items():
            self._subscribe_group(gname, group)
        self.create_subscription(String, TOPIC_SIM_MOVE_OBJECT, self._on_move_object, QOS_COMMAND)

        # -- services
        self.create_service(ListControllers, SERVICE_LIST_CONTROLLERS, self._on_list_controllers)
        self.create_service(SwitchController, SERVICE_SWITCH_CONTROLLER, self._on_switch_controller)
        self.create_service(Trigger, SERVICE_SIM_RESET, self._on_reset)

        # -- statistics (written by the physics / render threads, read by the diagnostics timer)
        self._stats = {"frames": 0, "render_s": 0.0, "frames_skipped": 0, "js_published": 0,
                       "state_publish_errors": 0, "frame_publish_errors": 0}
        #: The last publish the middleware refused (physics or render thread); the diagnostics timer logs it.
        self._last_publish_error: Exception | None = None
        self._publish_errors_logged = 0
        self._physics_error_logged = False
        self._diag_prev = (time.monotonic(), self.robot.time, 0)
        self.create_timer(1.0 / self.get_parameter("objects_hz").value, self._publish_objects)
        self.create_timer(1.0 / self.get_parameter("diagnostics_hz").value, self._publish_diagnostics)

        self.context.on_shutdown(self._request_stop)  # threads stop before the context goes away
        self._physics = DeadlineLoop(self._physics_tick, 1.0 / (self._batch * self._dt), name="sim_physics",
                                     paced=self.realtime, max_lag_ns=int(MAX_LAG_S * 1e9), spin_ns=0)
        self._render = threading.Thread(target=self._render_loop, name="sim_render", daemon=True)
        self._physics.start()
        if self.cfg.cameras:
            self._render.start()
        self.get_logger().info(
            f"sim {sim.robot}: dt {self._dt * 1e3:.1f} ms, {self._batch} steps/batch, "
            f"{'realtime' if self.realtime else 'free-running (/clock)'}; controllers "
            f"{[(c.name, c.state) for c in self.robot.list_controllers()]}; cameras "
            f"{[(c.name, c.topic, c.rate_hz) for c in self.cfg.cameras]}")

    # ---------------------------------------------------------------------------------- time
    def _now_ns(self) -> int:
        """Stamp time: ROS time in realtime mode, sim time otherwise."""
        if self.realtime:
            return self.get_clock().now().nanoseconds
        return int(round(self.robot.time * 1e9))

    # ---------------------------------------------------------------------------- subscriptions
    def _subscribe_group(self, gname: str, g: ControllerGroup) -> None:
        name = g.controller_name
        topic = g.resolved_topic
        kind = g.controller
        if kind == "joint_trajectory":
            self.create_subscription(JointTrajectory, topic, lambda m: self._on_trajectory(name, m), QOS_COMMAND)
        elif kind in ("forward_position", "forward_velocity", "gripper"):
            self.create_subscription(Float64MultiArray, topic, lambda m: self._hand(name, np.asarray(m.data, float)),
                                     QOS_COMMAND)
        elif kind == "cartesian_impedance":
            self.create_subscription(PoseStamped, topic, lambda m: self._on_pose(name, g, m), QOS_COMMAND)
        elif kind == "joint_impedance":
            self.create_subscription(JointState, topic, lambda m: self._on_target_joint(name, m), QOS_COMMAND)
        elif kind == "base_twist":
            self.create_subscription(
                Twist, topic, lambda m: self._hand(name, TwistCommand(
                    (m.linear.x, m.linear.y, m.linear.z), (m.angular.x, m.angular.y, m.angular.z))), QOS_COMMAND)
        if kind in ("cartesian_impedance", "joint_impedance"):
            base = topic.rsplit("/", 1)[0] if topic.endswith(KINDS[kind].topic_suffix) else f"/{name}"
            self.create_subscription(Float64MultiArray, f"{base}/target_stiffness",
                                     lambda m: self._hand(name, StiffnessCommand(list(m.data))), QOS_COMMAND)

    def _hand(self, controller: str, command) -> None:
        with self._lock:
            ok = self.robot.accept(controller, command)
            why = "" if ok else self.robot.controllers[controller].last_rejection
        if not ok:
            self.get_logger().warning(f"rejected command: {why}", throttle_duration_sec=1.0)

    def _reject(self, controller: str, why: str) -> None:
        with self._lock:
            self.robot.controllers[controller].reject(f"{controller}: {why}")
        self.get_logger().warning(f"rejected command: {controller}: {why}", throttle_duration_sec=1.0)

    def _on_trajectory(self, controller: str, msg: JointTrajectory) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        with self._lock:
            start = None
            if stamp_ns != 0:
                start = self.robot.time + (stamp_ns - self._now_ns()) * 1e-9
            cmd = TrajectoryCommand(
                list(msg.joint_names), times, [list(p.positions) for p in msg.points],
                [list(p.velocities) or None for p in msg.points],
                [list(p.accelerations) or None for p in msg.points], start)
            ok = self.robot.accept(controller, cmd)
            why = "" if ok else self.robot.controllers[controller].last_rejection
        if not ok:
            self.get_logger().warning(f"rejected trajectory: {why}", throttle_duration_sec=1.0)

    def _on_pose(self, controller: str, g: ControllerGroup, msg: PoseStamped) -> None:
        frame = msg.header.frame_id
        allowed = {"", g.frame_id, self.cfg.robot.base_frame}
        if frame not in allowed:
            self._reject(controller, f"target_pose frame_id {frame!r} is not one of {sorted(allowed - {''})}")
            return
        p, o = msg.pose.position, msg.pose.orientation
        self._hand(controller, PoseCommand((p.x, p.y, p.z), (o.x, o.y, o.z, o.w)))

    def _on_target_joint(self, controller: str, msg: JointState) -> None:
        self._hand(controller, JointTargetCommand(list(msg.name), list(msg.position), list(msg.velocity) or None))

    def _on_move_object(self, msg: String) -> None:
        try:
            req = json.loads(msg.data)
            with self._lock:
                self.robot.move_object(req["name"], req["position"], req.get("orientation"))
        except (ValueError, KeyError, TypeError) as e:
            self.get_logger().warning(f"bad {TOPIC_SIM_MOVE_OBJECT} request {msg.data!r}: {e}")

    # ------------------------------------------------------------------------------- services
    def _on_list_controllers(self, request, response):
        with self._lock:
            infos = self.robot.list_controllers()
            ifaces = {n: c.interface for n, c in self.robot.controllers.items()}
        rate = int(round(1.0 / self._dt))
        for info in infos:
            response.controller.append(ControllerState(
                name=info.name, state=info.state, type=info.type, update_rate=min(rate, 65535),
                claimed_interfaces=info.claimed_interfaces,
                required_command_interfaces=[f"{j}/{ifaces[info.name]}" for j in info.joints],
                required_state_interfaces=[f"{j}/{k}" for j in info.joints for k in ("position", "velocity")]))
        return response

    def _on_switch_controller(self, request, response):
        strict = request.strictness == SwitchController.Request.STRICT
        with self._lock:
            ok, message = self.robot.switch_controller(list(request.activate_controllers),
                                                       list(request.deactivate_controllers), strict=strict)
        response.ok = ok
        response.message = message
        text = (f"switch_controller activate={list(request.activate_controllers)} "
                f"deactivate={list(request.deactivate_controllers)} strict={strict}: {message}")
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)
        return response

    def _on_reset(self, request, response):
        with self._lock:
            self.robot.reset()
        response.success = True
        response.message = "robot homed, objects re-placed"
        return response

    # --------------------------------------------------------------------------------- physics
    def _physics_tick(self, k: int, _scheduled_s: float) -> None:
        """One batch of physics steps, then joint states (and every ``_ee_every`` batches the poses)."""
        with self._lock:
            self.robot.step(self._batch)
            js = self.robot.joint_state()
            poses = ([(g, pubs, self.robot.ee_pose(g)) for g, pubs in self._ee_pubs]
                     if k % self._ee_every == 0 else [])
            stamp = ns_to_stamp(self._now_ns())
        if self._stop.is_set():
            self._physics.stop(0.0)
            return
        try:
            self._publish_state(js, poses, stamp)
        except RCLError as e:
            if self._stop.is_set() or not self.context.ok():
                self._physics.stop(0.0)
                return
            # The middleware refused a publish (Fast DDS's writer gave up under load): physics goes on,
            # as a robot's driver would, and the next batch publishes again. Counted, logged at 1 Hz.
            self._stats["state_publish_errors"] += 1
            self._last_publish_error = e

    def _publish_state(self, js, poses, stamp) -> None:
        msg = self._js_msg
        msg.header.stamp = stamp
        msg.position = js.positions.tolist()
        msg.velocity = js.velocities.tolist()
        msg.effort = js.efforts.tolist()
        self._js_pub.publish(msg)
        self._stats["js_published"] += 1
        for _g, pubs, (p, q) in poses:
            pm = PoseStamped()
            pm.header.stamp = stamp
            pm.header.frame_id = self.cfg.robot.base_frame
            pm.pose.position.x, pm.pose.position.y, pm.pose.position.z = (float(v) for v in p)
            o = pm.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in q)
            for pub in pubs:
                pub.publish(pm)
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=stamp))

    # ---------------------------------------------------------------------------------- render
    def _render_loop(self) -> None:
        renderer = CameraRenderer(self.robot.model)
        try:
            cams = self.cfg.cameras
            due = [time.monotonic()] * len(cams)
            while not self._stop.is_set():
                i = int(np.argmin(due))
                delay = due[i] - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                cam = cams[i]
                with self._lock:
                    qpos = self.robot.qpos()
                    stamp = ns_to_stamp(self._now_ns())
                t0 = time.perf_counter()
                img = renderer.render(qpos, cam.name, cam.width, cam.height)
                self._stats["render_s"] += time.perf_counter() - t0
                self._stats["frames"] += 1
                msg = Image(height=cam.height, width=cam.width, encoding="rgb8", is_bigendian=0, step=cam.width * 3)
                msg.header.stamp = stamp
                msg.header.frame_id = f"{cam.name}_camera"
                msg.data = img.tobytes()
                if self._stop.is_set():
                    break
                try:
                    self._img_pubs[i].publish(msg)
                except RCLError as e:
                    if self._stop.is_set() or not self.context.ok():
                        break
                    self._stats["frame_publish_errors"] += 1  # as the physics thread: counted, go on
                    self._last_publish_error = e
                due[i] += 1.0 / cam.rate_hz
                now = time.monotonic()
                if due[i] < now:  # fell behind: skip the missed frames rather than burst
                    skipped = math.floor((now - due[i]) * cam.rate_hz) + 1
                    self._stats["frames_skipped"] += skipped
                    due[i] += skipped / cam.rate_hz
        finally:
            renderer.close()

    # ------------------------------------------------------------------------------ periodic
    def _publish_objects(self) -> None:
        with self._lock:
            poses = self.robot.object_poses()
            stamp_ns = self._now_ns()
        payload = {"frame_id": self.cfg.robot.base_frame, "stamp": stamp_ns * 1e-9,
                   "objects": {n: {"position": [round(float(v), 5) for v in p],
                                   "orientation": [round(float(v), 5) for v in q]}
                               for n, (p, q) in poses.items()}}
        self._obj_pub.publish(String(data=json.dumps(payload)))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            sim_t = self.robot.time
            ctrl = [(c.name, c.active, c.accepted, c.rejected, c.timeouts, c.last_rejection)
                    for c in self.robot.controllers.values()]
        s = dict(self._stats)
        timing = self._physics.stats.summary()
        error = self._physics.error
        t_prev, sim_prev, js_prev = self._diag_prev
        self._diag_prev = (now, sim_t, s["js_published"])
        wall = max(now - t_prev, 1e-9)
        rtf = (sim_t - sim_prev) / wall
        js_rate = (s["js_published"] - js_prev) / wall
        physics = DiagnosticStatus(name="sim_robot: physics", hardware_id=self.cfg.robot.name)
        slow = self.realtime and rtf < 0.95
        if error is not None:
            physics.level = DiagnosticStatus.ERROR
            physics.message = f"physics loop stopped: {error!r}"
            if not self._physics_error_logged:
                self._physics_error_logged = True
                self.get_logger().error(f"physics loop stopped: {error!r}")
        else:
            physics.level = DiagnosticStatus.WARN if slow else DiagnosticStatus.OK
            physics.message = f"real-time factor {rtf:.3f}" + (" (falling behind)" if slow else "")
        refused = s["state_publish_errors"] + s["frame_publish_errors"]
        last_refusal = self._last_publish_error
        if refused > self._publish_errors_logged:
            self._publish_errors_logged = refused
            self.get_logger().warning(f"{s['state_publish_errors']} joint-state and {s['frame_publish_errors']} "
                                      f"camera publish(es) refused by the middleware so far; last: {last_refusal!r}")

        def ms(key: str, stat: str) -> str:
            v = (timing.get(key) or {}).get(stat)
            return "" if v is None else f"{v:.3f}"

        physics.values = [KeyValue(key=k, value=v) for k, v in (
            ("real_time_factor", f"{rtf:.4f}"), ("sim_time_s", f"{sim_t:.3f}"),
            ("joint_state_rate_hz", f"{js_rate:.1f}"), ("batch_deadline_misses", str(timing["misses"])),
            ("batches_skipped", str(timing["skipped"])),
            ("batch_start_jitter_p99_ms", ms("period_jitter_ms", "p99")),
            ("batch_compute_p50_ms", ms("step_ms", "p50")), ("batch_compute_max_ms", ms("step_ms", "max")),
            ("steps_per_batch", str(self._batch)),
            ("state_publish_errors", str(s["state_publish_errors"])),
            ("last_publish_error", "" if last_refusal is None else repr(last_refusal)))]
        frames = max(s["frames"], 1)
        cams = DiagnosticStatus(name="sim_robot: cameras", hardware_id=self.cfg.robot.name,
                                level=DiagnosticStatus.OK, message=f"{s['frames']} frames")
        cams.values = [KeyValue(key="render_mean_ms", value=f"{1e3 * s['render_s'] / frames:.2f}"),
                       KeyValue(key="frames_skipped", value=str(s["frames_skipped"])),
                       KeyValue(key="frame_publish_errors", value=str(s["frame_publish_errors"]))]
        ctl = DiagnosticStatus(name="sim_robot: controllers", hardware_id=self.cfg.robot.name,
                               level=DiagnosticStatus.OK, message="")
        ctl.values = [KeyValue(key=f"{n}", value=f"{'active' if a else 'inactive'} accepted={acc} rejected={rej} "
                               f"cmd_timeouts={tmo}" + (f" last_rejection={why}" if why else ""))
                      for n, a, acc, rej, tmo, why in ctrl]
        arr = DiagnosticArray(status=[physics, cams, ctl])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    # -------------------------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop physics and rendering (the console script calls this on the way out)."""
        self.shutdown()

    def _request_stop(self) -> None:
        """Tell the physics and render threads to stop (no wait)."""
        self._stop.set()
        self._physics.stop(0.0)

    def shutdown(self) -> None:
        """Stop the physics and render threads (bounded waits)."""
        self._stop.set()
        self._physics.stop(timeout_s=2.0)
        if self._render.is_alive():
            self._render.join(timeout=2.0)


def main(args: list[str] | None = None) -> None:
    """Console script ``sim_robot`` (accepts ``--config FILE``)."""
    run_node(SimRobotNode, args)


if __name__ == "__main__":
    main()
