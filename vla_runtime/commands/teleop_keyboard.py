"""Keyboard teleop for the simulated demo: keys in a terminal → the bridge's teleop topics.

``vla-runtime teleop --keyboard`` runs :func:`run_keyboard`. It reads single key presses from the
controlling TTY (termios raw mode, non-blocking reads, restored on exit) and publishes directly on
the bridge's topics (it is its own operator front end; no teleop node needed):

====================  =======================================================
``space``             take over / hand back (toggles ``/vla/teleop/engage``)
``w`` / ``s``         +x / −x        ``a`` / ``d``   +y / −y
``r`` / ``f``         +z / −z        ``i`` / ``k``   roll ±
``j`` / ``l``         pitch ±        ``u`` / ``o``   yaw ±
``g``                 gripper open/close
``q`` or Ctrl-C       hand back and quit
====================  =======================================================

A terminal sends no key-up events: a key moves the arm while it repeats and for ``hold_s`` after
its last repeat, then the twist drops to zero (the robot never keeps moving on its own). While
engaged a twist is published at ``rate_hz`` (zero when no key is down), which keeps the bridge's
teleop watchdog fed; quitting (or losing the terminal) hands back.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass

import numpy as np

from vla_runtime.core.config import RuntimeConfig, TeleopConfig

#: key → (twist index, sign)
KEY_AXES: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "i": (3, 1.0), "k": (3, -1.0), "j": (4, 1.0), "l": (4, -1.0), "u": (5, 1.0), "o": (5, -1.0),
}
HELP = ("keyboard teleop: SPACE take/hand back · w/s x · a/d y · r/f z · i/k roll · j/l pitch · u/o yaw · "
        "g gripper · q quit")


class KeyboardTeleopError(RuntimeError):
    """Keyboard teleop cannot run here (no TTY)."""


@dataclass(frozen=True)
class KeyEvent:
    """What one key press did."""

    twist: np.ndarray
    engage_changed: bool = False
    gripper_toggled: bool = False
    quit: bool = False


class KeyboardMapper:
    """Key presses → twist / engage / gripper / quit (pure; times are arguments).

    Args:
        cfg: The teleop section (speed limits).
        hold_s: How long a key keeps moving after its last (auto-repeated) press.
    """

    def __init__(self, cfg: TeleopConfig, hold_s: float = 0.15) -> None:
        self.cfg = cfg
        self.hold_s = float(hold_s)
        self.engaged = False
        self.gripper_open = True
        self._pressed: dict[int, tuple[float, float]] = {}  # axis → (sign, last press time)

    def feed(self, key: str, now_s: float) -> KeyEvent:
        """One key press at ``now_s``."""
        k = key.lower()
        if k in ("q", "\x03", "\x04"):
            self.engaged = False
            return KeyEvent(np.zeros(6), engage_changed=True, quit=True)
        if k == " ":
            self.engaged = not self.engaged
            self._pressed.clear()
            return KeyEvent(self.twist(now_s), engage_changed=True)
        if k == "g":
            self.gripper_open = not self.gripper_open
            return KeyEvent(self.twist(now_s), gripper_toggled=True)
        if k in KEY_AXES:
            axis, sign = KEY_AXES[k]
            self._pressed[axis] = (sign, now_s)
        return KeyEvent(self.twist(now_s))

    def twist(self, now_s: float) -> np.ndarray:
        """The twist of the keys still considered down at ``now_s``."""
        out = np.zeros(6)
        for axis, (sign, t) in list(self._pressed.items()):
            if now_s - t > self.hold_s:
                del self._pressed[axis]
                continue
            out[axis] = sign * (self.cfg.max_linear_mps if axis < 3 else self.cfg.max_angular_rps)
        return out


def _read_keys(fd: int, timeout_s: float) -> str:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return ""
    try:
        return os.read(fd, 64).decode(errors="ignore")
    except BlockingIOError:
        return ""


def run_keyboard(config: RuntimeConfig, stdin=None, rate_hz: float = 50.0, domain_id: int | None = None) -> int:
    """Keyboard teleop until ``q`` / Ctrl-C / EOF. Returns an exit code.

    Args:
        config: The runtime config (teleop speed limits, base frame, gripper range).
        stdin: The terminal to read (default ``sys.stdin``); must be a TTY.
        rate_hz: Publish rate while engaged.
        domain_id: ROS domain (default: ``ROS_DOMAIN_ID`` of the environment).

    Raises:
        KeyboardTeleopError: ``stdin`` is not a TTY (e.g. piped or under a supervisor).
    """
    import termios
    import tty

    stream = sys.stdin if stdin is None else stdin
    if not hasattr(stream, "fileno") or not os.isatty(stream.fileno()):
        raise KeyboardTeleopError("keyboard teleop needs an interactive terminal: stdin is not a TTY "
                                  "(run `vla-runtime teleop --keyboard` in a terminal, not piped or in the background)")
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import Bool, Float64

    from vla_runtime.core.contract import (
        TOPIC_TELEOP_ENGAGE,
        TOPIC_TELEOP_GRIPPER,
        TOPIC_TELEOP_TWIST,
    )
    from vla_runtime.graph.probe import Probe
    from vla_runtime.nodes.common import QOS_COMMAND, QOS_DIAGNOSTICS

    fd = stream.fileno()
    mapper = KeyboardMapper(config.teleop)
    grippers = [g for g in config.robot.groups.values() if g.controller == "gripper" and g.gripper_range]
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0")) if domain_id is None else domain_id
    probe = Probe(domain, name="teleop_keyboard")
    node = probe.node
    engage_pub = node.create_publisher(Bool, TOPIC_TELEOP_ENGAGE, QOS_DIAGNOSTICS)
    twist_pub = node.create_publisher(TwistStamped, TOPIC_TELEOP_TWIST, QOS_COMMAND)
    grip_pub = node.create_publisher(Float64, TOPIC_TELEOP_GRIPPER, QOS_COMMAND)
    old = termios.tcgetattr(fd)
    period = 1.0 / rate_hz
    print(HELP + "\r", flush=True)
    try:
        tty.setcbreak(fd)
        next_pub = time.monotonic()
        while True:
            keys = _read_keys(fd, max(0.0, next_pub - time.monotonic()))
            now = time.monotonic()
            quit_ = False
            for ch in keys:
                ev = mapper.feed(ch, now)
                if ev.engage_changed:
                    engage_pub.publish(Bool(data=mapper.engaged))
                    print(("TAKEN OVER — you drive" if mapper.engaged else "handed back") + "\r", flush=True)
                if ev.gripper_toggled and grippers:
                    closed, opened = grippers[0].gripper_range
                    grip_pub.publish(Float64(data=float(opened if mapper.gripper_open else closed)))
                quit_ = quit_ or ev.quit
            if quit_:
                return 0
            if now >= next_pub:
                next_pub = now + period
                if mapper.engaged:
                    msg = TwistStamped()
                    msg.header.stamp = node.get_clock().now().to_msg()
                    msg.header.frame_id = config.robot.base_frame
                    t = mapper.twist(now)
                    tw = msg.twist
                    tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z = (
                        float(v) for v in t)
                    twist_pub.publish(msg)
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            engage_pub.publish(Bool(data=False))
            time.sleep(0.05)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
            probe.close()
