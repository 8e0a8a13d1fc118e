"""Packaging for vla_runtime (ament_python; also a plain pip-installable package).

The version lives only in package.xml; this file reads it from there.
"""

import os
import xml.etree.ElementTree as ET
from glob import glob

from setuptools import Extension, find_packages, setup

PACKAGE = "vla_runtime"
HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    return ET.parse(os.path.join(HERE, "package.xml")).getroot().findtext("version").strip()


def _tree(src: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install every file below ``src`` under share/<pkg>/<src>."""
    out = []
    for root, _dirs, files in os.walk(os.path.join(HERE, src)):
        rel = os.path.relpath(root, HERE)
        paths = [os.path.join(rel, f) for f in files if not f.endswith((".pyc", ".engine"))]
        if paths:
            out.append((os.path.join("share", PACKAGE, rel), paths))
    return out


NODES = {
    "slow_reasoner": "vla_runtime.nodes.slow_reasoner:main",
    "action_chunk_node": "vla_runtime.nodes.action_chunk_node:main",
    "controller_bridge": "vla_runtime.nodes.controller_bridge:main",
    "sim_robot": "vla_runtime.nodes.sim_robot:main",
    "teleop": "vla_runtime.nodes.teleop:main",
    "recorder": "vla_runtime.nodes.recorder:main",
    "failure_detector": "vla_runtime.nodes.failure_detector:main",
}

#: The ChunkScheduler's sampling in C (the 30 Hz loop's numerics; numpy is the fallback). Optional:
#: an install without a C compiler still works, slower; the fast path logs which one runs.
#: -ffp-contract=off: no fused multiply-adds, so results match the numpy reference bit for bit.
KERNELS = [
    Extension(f"{PACKAGE}.core._fastpath", [f"{PACKAGE}/core/_fastpath.c"],
              extra_compile_args=["-O2", "-ffp-contract=off", "-std=c99"], optional=True),
]

setup(
    name=PACKAGE,
    version=_version(),
    packages=find_packages(exclude=["test", "test.*"]),
    ext_modules=KERNELS,
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
        *_tree("models"),
    ],
    install_requires=[
        "numpy",
        "pyyaml",
        "pydantic>=2",
        "onnxruntime",
        "pyzmq",
        "msgpack",
    ],
    extras_require={
        "sim": ["mujoco>=3", "opencv-python-headless"],
        "train": ["torch", "onnx"],
        "test": ["pytest"],
    },
    zip_safe=True,
    maintainer="vla_runtime maintainers",
    maintainer_email="maintainers@vla-runtime.dev",
    description="Fast-slow VLA policy runtime for ROS 2 and ros2_control",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in NODES.items()]
        + ["vla-runtime = vla_runtime.cli:main"],
    },
)
