"""ROS-free core of f3rm_ros: importable in a notebook, no rclpy anywhere below here."""
