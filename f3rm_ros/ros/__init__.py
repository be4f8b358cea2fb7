"""ROS 2 adapters: message conversions, DDS settings and the nodes (thin; the logic lives in core)."""
