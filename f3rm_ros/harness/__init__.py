"""What drives the product from outside; nodes never import from here.

The demo, the test harness (a private ROS domain, node processes), the fault campaign with its bad-input
catalogue, and the capture bench.
"""
