"""The controller bridge's logic, without ROS (pure Python + numpy, times passed in).

:mod:`vla_runtime.nodes.controller_bridge` is the rclpy shell; what it decides lives here, one
place each, driven by plain pytest:

* :mod:`.controller_bridge` — :class:`~.controller_bridge.ControllerBridge`, what the node runs
  under its lock: each event (chunk, joint state, halt, operator input, command tick, supervision)
  is one call; it wires the pieces below around the arbiter and performs the mode transitions'
  effects (the hold out at once, the teleop target at the measured state, the hold controller).
* :mod:`.chunks` — :class:`~.chunks.ChunkValidator` (a received policy chunk → a
  :class:`~.chunks.ValidChunk` or a named :class:`~.chunks.ChunkRejection`), the policy track a
  streaming group samples every tick, and :class:`~.chunks.ResumeRebase` (after teleop the
  policy's commands start at the held state; the offset fades out over ``REBASE_S``).
* :mod:`.groups` — :class:`~.groups.GroupState`, a controller group's runtime state (policy
  track, what was sent, hold and teleop targets), and the hold targets captured from the
  measured state.
* :mod:`.teleop_session` — :class:`~.teleop_session.TeleopSession`: engage/release, teleop under
  a latched halt, operator input freshness and timeouts, the engage retry while the deadman is
  held, and what the teleop target integrator is fed each tick.
* :mod:`.controller_switching` — :class:`~.controller_switching.ControllerSwitching`:
  controller_manager's ``list_controllers`` checks and ``switch_controller`` calls with
  deadlines, one in flight and one queued, through an injected client.

The per-controller-kind message building (one output adapter per kind) is ROS and lives in
:mod:`vla_runtime.nodes.bridge_outputs`.
"""
