"""An imported policy's slow part in the real slow_reasoner node: two cameras (one of another size than
the package's), the robot state into the slow graph, the policy's tokenizer and a K/V-cache latent of
several named tensors, written through POSIX shared memory as one version.

The package is the SmolVLA fixture (LeRobot 0.6.1, tiny random weights): its slow graph takes both
cameras, the tokenized prompt and the state. The test process plays the robot and the cameras and
reads the latent buffer itself; what the node wrote must equal the same slow step run in this process.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState

from test.conftest import ROOT, node_logs, wait_for
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import DIAG_SLOW_PATH
from vla_runtime.core.latent_buffer import open_latent_reader
from vla_runtime.core.policy import LatentSlowStep
from vla_runtime.engines.model_package import load_model_package
from vla_runtime.graph.harness import DiagnosticsWatch
from vla_runtime.graph.supervisor import NODE_MODULES, NodeSpec
from vla_runtime.nodes.common import QOS_SENSOR, latent_buffer_config

pytestmark = pytest.mark.integration

PKG = ROOT / "test" / "fixtures" / "lerobot" / "smolvla"
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
STATE = np.array([0.1, -0.2, 0.05, -2.1, 0.0, 2.0, 0.7, 0.03])
INSTRUCTION = "pick up the red cube"


def _frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # the package's size
    wrist = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)  # twice it: the node fits it
    return {"scene": scene, "wrist": wrist}


def _image(frame: np.ndarray, node) -> Image:
    h, w = frame.shape[:2]
    m = Image(height=h, width=w, encoding="rgb8", step=w * 3)
    m.data = frame.tobytes()
    m.header.stamp = node.get_clock().now().to_msg()
    return m


def test_slow_reasoner_writes_an_imported_policys_kv_cache(supervisor, probe, write_config, domain_id, tmp_path):
    cfg_path = write_config("sim_panda.yaml", {
        "model": {"package": str(PKG)},
        "cameras": [{"name": "scene", "topic": "/camera/scene/image_raw", "width": 64, "height": 48},
                    {"name": "wrist", "topic": "/camera/wrist/image_raw", "width": 128, "height": 96}],
        "instruction": INSTRUCTION,
        "nodes": ["slow_reasoner"],
        "rates": {"slow_hz": 4.0},
        "latent": {"transport": "shm", "name": f"vla_kv_{domain_id}_{os.getpid()}"},
    })
    cfg = load_config(cfg_path)
    frames = _frames()
    with load_model_package(PKG) as pkg:
        step = LatentSlowStep.from_package(pkg, ["scene", "wrist"])
        want = step.run(frames, INSTRUCTION, STATE).tensors
        layout = step.latent_layout()
    reader = open_latent_reader(latent_buffer_config(cfg, (1, 1)).with_tensors(layout))
    node = probe.node
    pubs = {c: node.create_publisher(Image, f"/camera/{c}/image_raw", QOS_SENSOR) for c in frames}
    js_pub = node.create_publisher(JointState, "/joint_states", QOS_SENSOR)
    joints_on = [False]

    def tick() -> None:
        for c, f in frames.items():
            pubs[c].publish(_image(f, node))
        if joints_on[0]:
            m = JointState(name=JOINTS, position=STATE.tolist())
            m.header.stamp = node.get_clock().now().to_msg()
            js_pub.publish(m)

    node.create_timer(0.05, tick)
    diags = DiagnosticsWatch(probe)
    supervisor.start(NodeSpec("slow_reasoner", NODE_MODULES["slow_reasoner"], str(cfg_path)))
    try:
        # Frames but no robot state yet: the slow part takes the state, so nothing is written.
        wait_for(lambda: int(diags.latest(DIAG_SLOW_PATH).get("waiting_for_state", 0) or 0) >= 2, 60,
                 what="the slow path waiting for the robot state")
        assert reader.read() is None
        joints_on[0] = True
        s = reader.wait_for_update(0, 30.0)
        assert s is not None, "no latent written after the joint states came"
        s = reader.wait_for_update(s.version, 10.0)  # a step whose frames and state are both current
        assert s is not None
    except AssertionError as e:
        raise AssertionError(f"{e}\n{node_logs(tmp_path)}") from None
    finally:
        reader.close()
    assert sorted(s.tensors) == sorted(want)
    for name, v in want.items():
        np.testing.assert_allclose(s.tensors[name], v, atol=1e-5, err_msg=name)
    assert 0 < (time.time_ns() - s.obs_stamp_ns) / 1e9 < 5.0
    wait_for(lambda: int(diags.latest(DIAG_SLOW_PATH).get("latent_version", 0) or 0) >= 2, 10,
             what="the version in diagnostics")
