"""A real arm driven by the fast-slow policy through ros2_control.

    ros2 launch vla_runtime arm.launch.py robot:=fr3      # Franka FR3 (config/franka_fr3.yaml)
    ros2 launch vla_runtime arm.launch.py robot:=ur5e     # UR5e (config/ur5e.yaml)
    ros2 launch vla_runtime arm.launch.py \
        config:=$(ros2 pkg prefix vla_runtime)/share/vla_runtime/config/jetson_orin.yaml

The robot driver (franka_ros2 / Universal_Robots_ROS2_Driver) and its controllers are started by
their own bringup, not here; run ``vla-runtime check <config>`` first. See docs/deployment.md.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from vla_runtime.graph.launch_support import graph_from_arguments


def generate_launch_description() -> LaunchDescription:
    config_dir = PathJoinSubstitution([FindPackageShare("vla_runtime"), "config"])
    profiles = {
        "fr3": PathJoinSubstitution([config_dir, "franka_fr3.yaml"]),
        "ur5e": PathJoinSubstitution([config_dir, "ur5e.yaml"]),
    }
    return LaunchDescription([
        DeclareLaunchArgument(
            "robot",
            default_value="fr3",
            choices=sorted(profiles),
            description="Arm profile: fr3 (config/franka_fr3.yaml) or ur5e (config/ur5e.yaml).",
        ),
        DeclareLaunchArgument(
            "config",
            default_value="",
            description="Runtime config YAML (e.g. config/jetson_orin.yaml); when set it replaces the robot:= profile.",
        ),
        graph_from_arguments("robot", profiles),
    ])
