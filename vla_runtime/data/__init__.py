"""Recorded data: crash-safe rosbag2/MCAP bags (no rclpy) and what reads them."""
