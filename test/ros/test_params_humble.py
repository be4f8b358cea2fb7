"""Run-time parameter changes work with and without rclpy's post-set callback (Jazzy+; Humble has none).

docs/robot-setup.md, "In a ROS 2 workspace", promises that the nodes start on an rclpy without
``add_post_set_parameters_callback`` and apply accepted values in the set callback instead. A node class that
hides the method stands in for Humble's rclpy.
"""
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from f3rm_ros.ros.params import NodeParameters, ParamSpec, positive
from f3rm_ros.harness.testing import RosProbe

pytestmark = pytest.mark.ros


class HumbleNode(Node):
    """A node whose rclpy has no post-set parameter callback (rclpy before Jazzy)."""

    def __getattribute__(self, name):
        if name == 'add_post_set_parameters_callback':
            raise AttributeError(name)
        return super().__getattribute__(name)


@pytest.mark.parametrize('node_class', [Node, HumbleNode], ids=['jazzy+', 'humble'])
def test_runtime_parameter_changes_are_applied_and_bad_ones_refused(node_class):
    probe = RosProbe(name='params_probe')
    node = None
    try:
        node = node_class('params_under_test', context=probe.context)
        changes = []
        params = NodeParameters(node, [ParamSpec('rate_hz', 2.0, 'a rate', runtime=True, validator=positive),
                                       ParamSpec('fixed', 1, 'read at start-up')],
                                on_change=lambda name, value: changes.append((name, value)))
        assert params.uses_post_set == (node_class is Node)
        result, = node.set_parameters([Parameter('rate_hz', value=5.0)])
        assert result.successful and params['rate_hz'] == 5.0 and changes == [('rate_hz', 5.0)]
        refused, = node.set_parameters([Parameter('rate_hz', value=-1.0)])
        assert not refused.successful and 'must be' in refused.reason and params['rate_hz'] == 5.0
        fixed, = node.set_parameters([Parameter('fixed', value=3)])
        assert not fixed.successful and 'start-up' in fixed.reason and params['fixed'] == 1
        assert changes == [('rate_hz', 5.0)]
    finally:
        if node is not None:
            node.destroy_node()
        probe.close()
