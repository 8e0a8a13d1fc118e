"""A humanoid's upper body (per-group ros2_control controllers) driven by the fast-slow policy.

    ros2 launch vla_runtime humanoid.launch.py                      # config/humanoid_gr1.yaml
    ros2 launch vla_runtime humanoid.launch.py config:=/path/to/my_humanoid.yaml

The robot's own bringup (hardware interface, leg/stance control, controller_manager and the
group controllers) runs outside this launch file. See docs/deployment.md.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from vla_runtime.graph.launch_support import graph_from_arguments


def generate_launch_description() -> LaunchDescription:
    profiles = {"gr1": PathJoinSubstitution([FindPackageShare("vla_runtime"), "config", "humanoid_gr1.yaml"])}
    return LaunchDescription([
        DeclareLaunchArgument(
            "robot",
            default_value="gr1",
            choices=sorted(profiles),
            description="Humanoid profile: gr1 (Fourier GR-1 upper body, config/humanoid_gr1.yaml).",
        ),
        DeclareLaunchArgument(
            "config",
            default_value="",
            description="Runtime config YAML; when set it replaces the robot:= profile.",
        ),
        graph_from_arguments("robot", profiles),
    ])
