"""The remote slow path: the latent crosses an authenticated ZeroMQ (CURVE) link between processes.

Two real node processes over DDS (slow_reasoner as the CURVE server that binds, action_chunk_node
as the authorised client) on loopback, with keys made by ``vla_runtime.commands.deploy.write_keys`` the way
``vla-runtime keys`` makes them. The test process plays the robot (joint states) and the camera.
It checks that plans flow over the link, that losing the slow path ends in HOLD within
``latent.max_age_s``, and that peers without an authorised key receive nothing.
"""

import shutil
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from test.conftest import node_logs, wait_for
from vla_runtime.commands.deploy import write_keys
from vla_runtime.core.latent_buffer import load_curve_keypair, load_curve_public_key
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.nodes.common import QOS_COMMAND, QOS_SENSOR

pytestmark = pytest.mark.integration

JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785, 0.04]
MAX_AGE_S = 1.0
HOLD_STALE = "hold: stale latent"


class FakeRobotAndCamera:
    """Publishes joint states (200 Hz) and camera images (10 Hz) from the probe's node."""

    def __init__(self, probe, camera_topic: str):
        node = probe.node
        self.js_pub = node.create_publisher(JointState, "/joint_states", QOS_SENSOR)
        self.img_pub = node.create_publisher(Image, camera_topic, QOS_SENSOR)
        self.rng = np.random.default_rng(0)
        self.node = node
        node.create_timer(1 / 200, self._joints)
        node.create_timer(1 / 10, self._image)

    def _joints(self):
        m = JointState(name=JOINTS, position=HOME)
        m.header.stamp = self.node.get_clock().now().to_msg()
        self.js_pub.publish(m)

    def _image(self):
        img = Image(height=96, width=96, encoding="rgb8", step=96 * 3)
        img.data = self.rng.integers(0, 255, 96 * 96 * 3, dtype=np.uint8).tobytes()
        img.header.stamp = self.node.get_clock().now().to_msg()
        self.img_pub.publish(img)


def _fast_latent_version(diags) -> int:
    """Newest latent version the fast node reports in /diagnostics (0 before any)."""
    for _, arr in reversed(diags):
        for st in arr.status:
            if st.name == "vla/action_chunk_node":
                return int(next((kv.value for kv in st.values if kv.key == "latent_version"), 0) or 0)
    return 0


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen(endpoint: str, curve: tuple[bytes, bytes, bytes] | None, seconds: float) -> list[bytes]:
    """Subscribe to the writer for ``seconds``; curve = (server public, client public, client secret)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    got: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                got.append(sock.recv(zmq.NOBLOCK))
    finally:
        sock.close(0)
    return got


@pytest.fixture
def remote_config(tmp_path, write_config):
    """Keys as `vla-runtime keys slow_path fast_path --dir keys` makes them, and a zmq config."""
    keys = tmp_path / "keys"
    write_keys(keys, ["slow_path", "fast_path"])
    (keys / "authorized").mkdir(mode=0o700)
    shutil.copy(keys / "fast_path.key", keys / "authorized" / "fast_path.key")  # public half only
    endpoint = f"tcp://127.0.0.1:{_free_tcp_port()}"
    cfg = write_config("sim_panda.yaml", {
        "nodes": ["slow_reasoner", "action_chunk_node"],
        "latent": {
            "transport": "zmq", "endpoint": endpoint, "bind": "writer",
            "server_key": str(keys / "slow_path"), "client_key": str(keys / "fast_path"),
            "authorized_clients_dir": str(keys / "authorized"), "max_age_s": MAX_AGE_S,
        },
        "safety": {"joint_state_timeout_s": 0.2},
    })
    return cfg, endpoint, keys


def test_latent_over_curve_link_plans_holds_on_loss_and_refuses_strangers(
    supervisor, probe, remote_config, tmp_path
):
    cfg, endpoint, keys = remote_config
    plans = probe.collect(JointTrajectory, "/vla/action_chunk", QOS_COMMAND)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    FakeRobotAndCamera(probe, "/camera/scene/image_raw")
    supervisor.start(NodeSpec("slow_reasoner", NODE_MODULES["slow_reasoner"], str(cfg)))
    supervisor.start(NodeSpec("action_chunk_node", NODE_MODULES["action_chunk_node"], str(cfg)))

    # (a) Plans flow: the fast path only plans on a latent, and the only latent is the one that
    # crossed the CURVE link from the other process.
    try:
        wait_for(lambda: sum(1 for _, m in plans if m.points) >= 10, 30, what="plans over the zmq link")
    except AssertionError:
        raise AssertionError(node_logs(tmp_path)) from None

    # (c) Strangers receive nothing while the authorised key (positive control) and the fast path
    # keep receiving. All three listen in the same 2 s window.
    server_pub = load_curve_public_key(keys / "slow_path.key")
    fast_pub, fast_sec = load_curve_keypair(keys / "fast_path.key_secret")
    stranger_pub, stranger_sec = zmq.curve_keypair()
    results: dict[str, list[bytes]] = {}
    listeners = {
        "plain": None,
        "unknown_key": (server_pub, stranger_pub, stranger_sec),
        "authorised": (server_pub, fast_pub, fast_sec),
    }
    threads = [
        threading.Thread(target=lambda k=k, c=c: results.__setitem__(k, _listen(endpoint, c, 2.0)))
        for k, c in listeners.items()
    ]
    n_before = len(plans)
    v_before = _fast_latent_version(diags)
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)
    assert results["plain"] == [], "a peer without CURVE received latents"
    assert results["unknown_key"] == [], "a CURVE peer with an unauthorised key received latents"
    assert results["authorised"], "control: the authorised key received nothing in 2 s"
    frame = msgpack.unpackb(results["authorised"][-1], raw=False)
    assert frame["fmt"] == "vla_latent/1" and frame["version"] >= 1
    during = [m for _, m in plans[n_before:]]
    latent_holds = [m.header.frame_id for m in during if m.header.frame_id in (HOLD_STALE, "hold: no latent yet")]
    assert not latent_holds, f"the fast path lost its latent while strangers knocked: {latent_holds[:3]}"
    assert sum(1 for m in during if m.points) >= 20, "the fast path stopped planning while strangers knocked"
    wait_for(lambda: _fast_latent_version(diags) > v_before, 3.0,
             what="the fast path's latent version to advance (it keeps receiving)")

    # (b) The slow path dies (no goodbye on the link): the latent ages past max_age_s → HOLD.
    n_kill = len(plans)
    t_kill = time.monotonic()
    supervisor.kill("slow_reasoner")
    wait_for(lambda: any(m.header.frame_id == HOLD_STALE for _, m in plans[n_kill:]), MAX_AGE_S + 1.0,
             what=f"HOLD ({HOLD_STALE!r}) within max_age_s + 1 s of losing the slow path")
    t_hold = next(t for t, m in plans[n_kill:] if m.header.frame_id == HOLD_STALE)
    assert t_hold - t_kill <= MAX_AGE_S + 1.0
    time.sleep(1.0)
    after = [m for t, m in plans if t >= t_hold]
    assert after and all(not m.points for m in after), "a plan went out after HOLD on a stale latent"
    assert all(m.header.frame_id.startswith("hold:") for m in after), {m.header.frame_id for m in after}
    assert supervisor.poll()["action_chunk_node"] is None, "the fast path must keep running (holding)"
