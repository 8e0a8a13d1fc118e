"""Shared code of the ``launch/*.launch.py`` files: a config file → one launch Node per node process.

The launch files and ``vla-runtime up`` must start the same graph from the same YAML, so the node
list always comes from :func:`vla_runtime.graph.supervisor.graph_for_config`; this module only
translates its :class:`~vla_runtime.graph.supervisor.NodeSpec` list into launch actions.

``launch`` and ``launch_ros`` are imported inside the functions that need them, so the pure part
(:func:`launch_node_args`, :func:`select_config`) imports and is tested where ROS 2's launch
system is not installed.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from vla_runtime.graph.supervisor import NodeSpec, graph_for_config

if TYPE_CHECKING:  # pragma: no cover - type names only
    from launch.actions import OpaqueFunction

    from launch import LaunchContext, LaunchDescriptionEntity

PACKAGE = "vla_runtime"

#: Launch argument that names a config file explicitly (overrides any profile choice).
CONFIG_ARG = "config"


class LaunchNodeArgs(NamedTuple):
    """The keyword arguments of one ``launch_ros.actions.Node`` (plus an optional prefix).

    Attributes:
        package: ROS package of the executable.
        executable: Console script; equal to the node name (see setup.py ``NODES``).
        name: Node name.
        parameters: The ``parameters=`` list: one dict with ``config_file`` and any extra params.
        prefix: Command prefix applying the config's CPU pinning and niceness
            (``taskset -c 4,5 nice -n -10``), or None when the config sets neither.
    """

    package: str
    executable: str
    name: str
    parameters: list[dict[str, str | int | float | bool]]
    prefix: str | None = None


def process_prefix(cpu_affinity: Sequence[int] = (), nice: int | None = None) -> str | None:
    """The command prefix that places a node process like the supervisor does.

    Args:
        cpu_affinity: CPU ids the process may run on (``taskset -c``).
        nice: Niceness (``nice -n``); a negative value needs CAP_SYS_NICE, without it
            ``nice`` prints a warning and starts the node at the default priority.

    Returns:
        ``"taskset -c 4,5 nice -n -10"`` style prefix, or None when there is nothing to apply.
    """
    parts: list[str] = []
    if cpu_affinity:
        parts += ["taskset", "-c", ",".join(str(int(c)) for c in cpu_affinity)]
    if nice is not None:
        parts += ["nice", "-n", str(int(nice))]
    return shlex.join(parts) if parts else None


def launch_node_args(specs: Sequence[NodeSpec]) -> list[LaunchNodeArgs]:
    """Map node specs (from :func:`graph_for_config`) to launch Node arguments, in start order."""
    return [
        LaunchNodeArgs(
            package=PACKAGE,
            executable=s.name,
            name=s.name,
            parameters=[{"config_file": s.config_file, **s.params}],
            prefix=process_prefix(s.cpu_affinity, s.nice),
        )
        for s in specs
    ]


def select_config(config_arg: str, profile: str | None = None, profiles: Mapping[str, str] | None = None) -> str:
    """The config file a launch should load.

    Args:
        config_arg: Value of the ``config`` argument; when non-empty it wins.
        profile: The profile argument's value (``robot:=fr3``), used when ``config`` is empty.
        profiles: Profile name → config file path.

    Returns:
        An absolute path (``~`` expanded) to an existing file.

    Raises:
        ValueError: Neither a config nor a known profile was given, or the file does not exist.
    """
    if config_arg.strip():
        path = os.path.abspath(os.path.expanduser(config_arg.strip()))
    else:
        profiles = dict(profiles or {})
        if profile not in profiles:
            raise ValueError(
                f"unknown profile {profile!r}: choose one of {sorted(profiles)} or pass {CONFIG_ARG}:=<yaml>"
            )
        path = os.path.abspath(os.path.expanduser(profiles[profile]))
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    return path


def node_actions(config_file: str) -> list[Any]:
    """Load and validate a config and return one ``launch_ros.actions.Node`` per node it lists.

    Raises:
        vla_runtime.core.config.ConfigError: The config is invalid (every bad field listed).
    """
    from launch_ros.actions import Node

    from vla_runtime.core.config import load_config

    cfg = load_config(config_file)
    actions = []
    for a in launch_node_args(graph_for_config(cfg, config_file)):
        kwargs: dict[str, Any] = {}
        if a.prefix is not None:
            kwargs["prefix"] = a.prefix
        actions.append(
            Node(
                package=a.package,
                executable=a.executable,
                name=a.name,
                parameters=a.parameters,
                output="screen",
                **kwargs,
            )
        )
    return actions


def graph_from_arguments(profile_arg: str | None = None, profiles: Mapping[str, Any] | None = None) -> OpaqueFunction:
    """An OpaqueFunction that picks the config from the launch arguments and emits the node graph.

    Args:
        profile_arg: Name of the launch argument choosing a profile (``robot``), or None when the
            launch file has only ``config``.
        profiles: Profile name → config path (a string or a launch substitution such as
            ``PathJoinSubstitution([FindPackageShare('vla_runtime'), 'config', 'ur5e.yaml'])``).

    Returns:
        The action to add to a LaunchDescription after the DeclareLaunchArgument actions.
    """
    from launch.actions import OpaqueFunction as _OpaqueFunction

    def _emit(context: LaunchContext) -> list[LaunchDescriptionEntity]:
        from launch.actions import LogInfo
        from launch.substitutions import LaunchConfiguration
        from launch.utilities import perform_substitutions

        def _perform(value: Any) -> str:
            if isinstance(value, str):
                return value
            subs = value if isinstance(value, (list, tuple)) else [value]
            return perform_substitutions(context, list(subs))

        config_arg = LaunchConfiguration(CONFIG_ARG).perform(context)
        profile = LaunchConfiguration(profile_arg).perform(context) if profile_arg else None
        resolved = {k: _perform(v) for k, v in (profiles or {}).items()}
        path = select_config(config_arg, profile, resolved)
        return [LogInfo(msg=f"vla_runtime: starting the graph of {path}"), *node_actions(path)]

    return _OpaqueFunction(function=_emit)
