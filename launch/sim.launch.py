"""Simulated robot + the full fast-slow stack, from one config file.

    ros2 launch vla_runtime sim.launch.py                  # MuJoCo Panda (config/sim_panda.yaml)
    ros2 launch vla_runtime sim.launch.py robot:=gr1       # MuJoCo GR-1 humanoid (config/sim_gr1.yaml)
    ros2 launch vla_runtime sim.launch.py config:=/path/to/my_sim.yaml

The node list comes from the config's ``nodes:`` (via ``vla_runtime.graph.supervisor.graph_for_config``),
exactly as ``vla-runtime up <config>`` starts it.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from vla_runtime.graph.launch_support import graph_from_arguments


def generate_launch_description() -> LaunchDescription:
    config_dir = PathJoinSubstitution([FindPackageShare("vla_runtime"), "config"])
    profiles = {
        "panda": PathJoinSubstitution([config_dir, "sim_panda.yaml"]),
        "gr1": PathJoinSubstitution([config_dir, "sim_gr1.yaml"]),
    }
    return LaunchDescription([
        DeclareLaunchArgument(
            "robot",
            default_value="panda",
            choices=sorted(profiles),
            description="Simulated robot: panda (config/sim_panda.yaml) or gr1 (config/sim_gr1.yaml).",
        ),
        DeclareLaunchArgument(
            "config",
            default_value="",
            description="Runtime config YAML; when set it replaces the robot:= profile.",
        ),
        graph_from_arguments("robot", profiles),
    ])
