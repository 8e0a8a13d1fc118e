"""Launch support: the config's node graph → launch Node arguments; the launch files' shape.

The pure mapping (NodeSpec → package/executable/name/parameters) is tested everywhere; building
real ``launch_ros`` actions needs a ROS 2 install with ``launch_ros`` and is skipped without it.
"""

import ast
import re
from pathlib import Path

import pytest

from vla_runtime.core.config import load_config
from vla_runtime.graph.launch_support import LaunchNodeArgs, launch_node_args, process_prefix, select_config
from vla_runtime.graph.supervisor import START_ORDER, NodeSpec, graph_for_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def _console_scripts() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    block = text[text.index("NODES = {"): text.index("}", text.index("NODES = {"))]
    return set(re.findall(r'"(\w+)":', block))


@pytest.mark.parametrize("name", ["sim_panda.yaml", "franka_fr3.yaml", "ur5e.yaml", "humanoid_gr1.yaml",
                                  "jetson_orin.yaml"])
def test_every_config_node_becomes_one_launch_node(name):
    path = str(CONFIG / name)
    cfg = load_config(path)
    args = launch_node_args(graph_for_config(cfg, path))
    assert [a.name for a in args] == sorted(cfg.nodes, key=START_ORDER.index)
    for a in args:
        assert a.package == "vla_runtime"
        assert a.executable == a.name, "console-script names equal node names"
        assert a.parameters == [{"config_file": path}]
    # Every node a shipped config starts has a console script to run it.
    assert {a.executable for a in args} <= _console_scripts()


def test_jetson_pinning_becomes_a_process_prefix():
    path = str(CONFIG / "jetson_orin.yaml")
    by_name = {a.name: a for a in launch_node_args(graph_for_config(load_config(path), path))}
    assert by_name["action_chunk_node"].prefix == "taskset -c 4,5 nice -n -10"
    assert by_name["controller_bridge"].prefix == "taskset -c 6 nice -n -10"
    assert by_name["slow_reasoner"].prefix == "taskset -c 0,1,2,3"


def test_node_spec_params_travel_with_config_file():
    spec = NodeSpec("slow_reasoner", "vla_runtime.nodes.slow_reasoner", "/c.yaml", params={"extra_latency_ms": 5.0})
    assert launch_node_args([spec]) == [
        LaunchNodeArgs("vla_runtime", "slow_reasoner", "slow_reasoner",
                       [{"config_file": "/c.yaml", "extra_latency_ms": 5.0}], None)
    ]


@pytest.mark.parametrize(
    ("cpus", "nice", "expected"),
    [((), None, None), ((3,), None, "taskset -c 3"), ((), 5, "nice -n 5"), ((0, 2), -5, "taskset -c 0,2 nice -n -5")],
)
def test_process_prefix(cpus, nice, expected):
    assert process_prefix(cpus, nice) == expected


def test_select_config_prefers_explicit_file_over_profile(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("{}")
    profiles = {"fr3": str(CONFIG / "franka_fr3.yaml"), "ur5e": str(CONFIG / "ur5e.yaml")}
    assert select_config("", "ur5e", profiles) == str(CONFIG / "ur5e.yaml")
    assert select_config(str(mine), "ur5e", profiles) == str(mine)
    with pytest.raises(ValueError, match="unknown profile 'kuka'"):
        select_config("", "kuka", profiles)
    with pytest.raises(ValueError, match="config file not found"):
        select_config(str(tmp_path / "missing.yaml"), "fr3", profiles)


# ------------------------------------------------------------------- launch files
def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_typed_documented_and_uses_the_shared_graph(path):
    tree = ast.parse(path.read_text(), str(path))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description")
    assert isinstance(fn.returns, ast.Name) and fn.returns.id == "LaunchDescription"
    args = _calls(tree, "DeclareLaunchArgument")
    assert args, "declares its arguments"
    for call in args:
        kw = {k.arg for k in call.keywords}
        assert "description" in kw, f"argument {ast.unparse(call.args[0])} has no description"
    assert any(ast.unparse(c.args[0]) == "'config'" for c in args), "every launch file takes config:="
    assert _calls(tree, "FindPackageShare"), "config paths come from the installed share directory"
    assert _calls(tree, "graph_from_arguments"), "nodes come from graph_for_config via launch_support"
    for c in _calls(tree, "PathJoinSubstitution"):
        for s in ast.walk(c):
            if isinstance(s, ast.Constant) and isinstance(s.value, str) and s.value.endswith(".yaml"):
                assert (CONFIG / s.value).is_file(), f"{path.name} names a missing config {s.value}"


def test_arm_launch_offers_both_arm_profiles():
    tree = ast.parse((ROOT / "launch" / "arm.launch.py").read_text())
    yamls = {s.value for s in ast.walk(tree) if isinstance(s, ast.Constant) and str(s.value).endswith(".yaml")}
    assert yamls == {"franka_fr3.yaml", "ur5e.yaml"}


# ---------------------------------------------------------- real launch actions
def test_node_actions_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (ROS 2 launch is not on PyPI)")
    from launch_ros.actions import Node

    from vla_runtime.graph.launch_support import node_actions

    path = str(CONFIG / "franka_fr3.yaml")
    actions = node_actions(path)
    assert all(isinstance(a, Node) for a in actions)
    assert [a.node_executable for a in actions] == [a.name for a in launch_node_args(
        graph_for_config(load_config(path), path))]


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_loads_with_launch_ros(path):
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (ROS 2 launch is not on PyPI)")
    import importlib.util

    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    assert {a.name for a in ld.get_launch_arguments()} >= {"config", "robot"}
