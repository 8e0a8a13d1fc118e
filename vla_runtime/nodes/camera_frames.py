"""Camera frames into a node: the newest frame of each camera, judged at the boundary, never queued.

A ``sensor_msgs/Image`` (rgb8 or bgr8) becomes an H×W×3 uint8 RGB view of the message's own bytes
(no copy: a bgr8 frame is a reversed-channel view). Malformed frames (unknown encoding, a size that
does not match the data, a step shorter than a row) and frames stamped ahead of this host's clock by
more than ``safety.max_stamp_lead_s`` (a latent or a chunk computed from one would look fresh for as
long as the lead lasts) are refused and counted per reason (core/validation); the frame before them
stays the newest.

The callbacks only store a reference under a short lock: whatever the policy does with a frame
(fitting it to the package's size, layout) happens on the thread that runs the policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
from sensor_msgs.msg import Image

from vla_runtime.core.validation import FUTURE_STAMP, MALFORMED, Rejections, stamp_lead
from vla_runtime.nodes.common import QOS_SENSOR, guarded, stamp_to_ns

#: Encodings taken, and whether their channels are reversed (BGR).
ENCODINGS = {"rgb8": False, "bgr8": True}

#: One camera's newest frame: (H×W×3 uint8 RGB, header stamp in wall ns, receive time in monotonic s).
Frame = tuple[np.ndarray, int, float]


def image_array(msg: Image) -> np.ndarray:
    """A ``sensor_msgs/Image`` (rgb8, bgr8) → H×W×3 uint8 RGB, a view of the message's bytes.

    Raises:
        ValueError: Another encoding, or a size that does not match the data (the bad values named).
    """
    bgr = ENCODINGS.get(msg.encoding)
    if bgr is None:
        raise ValueError(f"encoding {msg.encoding!r} (taken: {sorted(ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0 or step < w * 3 or len(msg.data) != h * step:
        raise ValueError(f"{msg.encoding} {w}x{h} step {step} with {len(msg.data)} bytes")
    img = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * 3].reshape(h, w, 3)
    return img[..., ::-1] if bgr else img


class CameraFrames:
    """Subscribes to cameras and keeps the newest valid frame of each.

    Args:
        node: The node that owns the subscriptions (its executor runs the callbacks).
        topics: Camera name → image topic.
        max_stamp_lead_s: A frame stamped further ahead of this host's clock is refused.
        rejections: Where refusals are counted per reason.
        on_frame: Called (from the callback) after each accepted frame, e.g. to wake a thread.
    """

    def __init__(self, node, topics: Mapping[str, str], max_stamp_lead_s: float, rejections: Rejections,
                 on_frame: Callable[[], None] | None = None) -> None:
        self.rejections = rejections
        self.max_stamp_lead_s = float(max_stamp_lead_s)
        self.on_frame = on_frame
        #: Frames refused since start.
        self.rejected = 0
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self.cameras = list(topics)
        self._subs = [node.create_subscription(Image, topic, guarded(node, self._callback(name)), QOS_SENSOR)
                      for name, topic in topics.items()]

    def _callback(self, camera: str) -> Callable[[Image], None]:
        def cb(msg: Image) -> None:
            try:
                img = image_array(msg)
            except ValueError as e:
                self.rejected += 1
                self.rejections(MALFORMED, f"camera {camera}: {e}")
                return
            stamp = stamp_to_ns(msg.header.stamp)
            why = stamp_lead(stamp, time.time_ns(), self.max_stamp_lead_s)
            if why is not None:
                self.rejected += 1
                self.rejections(FUTURE_STAMP, f"camera {camera}: {why}")
                return
            with self._lock:
                self._frames[camera] = (img, stamp, time.monotonic())
            if self.on_frame is not None:
                self.on_frame()

        cb.__name__ = f"camera_{camera}"
        return cb

    def snapshot(self) -> dict[str, Frame]:
        """The newest frame of each camera that has sent one (a new dict; the frames are not copied)."""
        with self._lock:
            return dict(self._frames)
