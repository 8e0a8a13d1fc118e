"""vla_runtime: a fast-slow Vision-Language-Action policy runtime for ROS 2 and ros2_control."""

from vla_runtime._version import __version__

__all__ = ["__version__"]
