"""Grasps as a planner receives them: the Query service's response decoded from the wire, on analytic tables.

Three tables a heuristic planner used to refuse or get wrong: a screwdriver-like bar lying on the
table (the table under it is the support, not an obstacle), a bowl wider than the gripper (held by its rim), and
a bar 1 cm from a wall of boxes (no finger in the boxes, none straddling them). Every check reads the decoded
``GraspCandidate`` poses (scipy quaternions), widths and approach codes, and tests the fingers' volume, sampled
from the configured gripper geometry, against the shapes' true geometry.
"""
import numpy as np
import pytest
from f3rm_ros_interfaces.msg import GraspCandidate, QueryAnswer
from f3rm_ros_interfaces.srv import Query
from rclpy.parameter import Parameter
from scipy.spatial.transform import Rotation

from f3rm_ros.harness.testing import RosProbe

from analytic_field import TABLE_TOP, analytic_scene, yaw_matrix
from test_ros_query import LiveSession

pytestmark = pytest.mark.ros

ROBOTIQ_2F140 = 0.14     # grasp.max_opening of the bench's gripper


@pytest.fixture(scope='module')
def rig():
    """Start a query node serving a `LiveSession` (test_ros_query's stand-in), and a probe to call it."""
    from f3rm_ros.ros.query_node import QueryNode
    probe = RosProbe()
    live = LiveSession()
    node = QueryNode(live=live, context=probe.context, parameter_overrides=[
        Parameter('similarity_image', value=False), Parameter('preset', value='cpu-tiny'),
        Parameter('grasp.max_opening', value=ROBOTIQ_2F140)])
    probe.add_node(node)
    yield probe, live
    probe.executor.remove_node(node)
    node.destroy_node()
    probe.close()


def ask(probe, name):
    """Call ~/locate for `name` and return the decoded QueryAnswer."""
    return probe.call(Query, '/query/locate', Query.Request(positives=[name]), timeout=60).answer


def pose_matrix(grasp):
    """4 x 4 of a decoded GraspCandidate's pose."""
    p, q = grasp.pose.pose.position, grasp.pose.pose.orientation
    out = np.eye(4)
    out[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    out[:3, 3] = (p.x, p.y, p.z)
    return out


def fingers(config, grasp, samples=9):
    """Two arrays [N, 3] of points filling each finger (gripper frame: y closing, z approach) in base_frame."""
    g, pose = config.grasp, pose_matrix(grasp)
    out = []
    for sign in (-1.0, 1.0):
        inner, outer = sign * grasp.width / 2, sign * (grasp.width / 2 + g.finger_depth)
        axes = [np.linspace(-g.finger_width / 2, g.finger_width / 2, samples), np.linspace(inner, outer, samples),
                np.linspace(-g.finger_length, 0.0, samples)]
        local = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)
        out.append(local @ pose[:3, :3].T + pose[:3, 3])
    return out


def between(config, grasp, samples=9):
    """Points [N, 3] filling the space the fingers close over (between their inner faces)."""
    g, pose = config.grasp, pose_matrix(grasp)
    axes = [np.linspace(-g.finger_width / 2, g.finger_width / 2, samples),
            np.linspace(-grasp.width / 2, grasp.width / 2, samples), np.linspace(-g.finger_length, 0.0, samples)]
    local = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)
    return local @ pose[:3, :3].T + pose[:3, 3]


def in_box(points, centre, size, yaw):
    """Bool [N]: points inside a box of `size` at `centre` yawed by `yaw` degrees."""
    local = (points - np.asarray(centre)) @ yaw_matrix(yaw)
    return np.all(np.abs(local) <= np.asarray(size) / 2, axis=1)


@pytest.mark.parametrize('yaw', [0.0, 35.0, 90.0, 140.0])
def test_a_bar_lying_on_the_table_is_taken_from_above_across_its_narrow_side(rig, yaw):
    """Take a bar lying on the table from above, across its narrow side, fingertips just above the table.

    A screwdriver-sized bar (11 x 2.6 x 2.6 cm): the best grasp comes straight down, closes across the narrow
    side, and its fingertips stop `grasp.support_clearance` above the table top, beside the bar: no finger point
    inside the bar or below the table top plus the clearance.
    """
    probe, live = rig
    bar = ((0.5, 0.05, TABLE_TOP + 0.013), (0.11, 0.026, 0.026), yaw)
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': bar})
    live.show(model, config, teacher)
    answer = ask(probe, 'bar')
    assert answer.status == QueryAnswer.FOUND and answer.grasps, answer.reason
    best = answer.grasps[0]
    assert best.approach == GraspCandidate.APPROACH_TOP and best.cluster_index == 0
    pose = pose_matrix(best)
    assert np.allclose(pose[:3, 2], [0, 0, -1], atol=1e-6)
    narrow = yaw_matrix(yaw)[:, 1]
    assert abs(pose[:3, 1] @ narrow) > np.cos(np.radians(5)), f'closes along {pose[:3, 1]}, narrow side {narrow}'
    clearance = config.grasp.support_clearance
    assert pose[2, 3] == pytest.approx(TABLE_TOP + clearance, abs=1e-6)     # fingertips: the table + clearance
    # the bar fits between the fingers; the opening is its voxelised width plus the margin, not much wider
    assert 0.026 < best.width <= 0.026 + config.grasp.margin + config.query.voxel_size
    for grasp in answer.grasps:
        for finger in fingers(config, grasp):
            assert finger[:, 2].min() >= TABLE_TOP + clearance - 1e-6
            assert not in_box(finger, *bar).any(), f'{grasp.approach}: a finger inside the bar'


def test_a_bowl_wider_than_the_gripper_is_held_by_its_rim(rig):
    """Hold a bowl wider than the opening by its rim: one finger inside, one outside, across the wall.

    A bowl 18 cm across with a 1 cm wall (the gripper opens 14 cm): only rim grasps, closing radially with an
    opening of the wall's thickness plus the margin (voxelised).
    """
    probe, live = rig
    rim_centre, radius, wall = np.array([0.5, 0.0, 0.085]), 0.09, 0.01
    config, teacher, model = analytic_scene(spheres={}, bowls={'block': (rim_centre, radius, wall)})
    live.show(model, config, teacher)
    answer = ask(probe, 'block')                     # the analytic vocabulary's name for the bowl here
    assert answer.status == QueryAnswer.FOUND and answer.grasps, answer.reason
    assert {g.approach for g in answer.grasps} == {GraspCandidate.APPROACH_RIM}, 'the bowl is wider than 14 cm'
    for grasp in answer.grasps:
        pose = pose_matrix(grasp)
        assert np.allclose(pose[:3, 2], [0, 0, -1], atol=1e-6)
        assert wall + config.grasp.margin <= grasp.width <= wall + config.grasp.margin + 2 * config.query.voxel_size
        radial = pose[:2, 3] - rim_centre[:2]
        assert abs(abs(pose[:3, 1] @ np.append(radial / np.linalg.norm(radial), 0.0)) - 1) < 1e-6  # across the wall
        inside, outside = fingers(config, grasp)
        if np.linalg.norm(inside[:, :2] - rim_centre[:2], axis=1).mean() > np.linalg.norm(
                outside[:, :2] - rim_centre[:2], axis=1).mean():
            inside, outside = outside, inside
        assert np.linalg.norm(inside - rim_centre, axis=1).max() < radius - wall, 'inner finger touches the wall'
        assert np.linalg.norm(outside[:, :2] - rim_centre[:2], axis=1).min() > radius, 'outer finger in the wall'


def test_a_bar_one_centimetre_from_a_wall_of_boxes_gets_no_finger_in_the_boxes(rig):
    """Keep every finger out of a wall of boxes 1 cm from a bar, and close over nothing but the bar.

    A finger cannot fit the 1 cm gap, so no grasp closes across the bar's narrow side (that finger would be in a
    box, or the opening would straddle the boxes); the grasps that remain keep every finger out of every box.
    """
    probe, live = rig
    bar = ((0.5, 0.0, TABLE_TOP + 0.013), (0.11, 0.026, 0.026), 0.0)
    boxes = {'bar': bar, 'block': ((0.5, 0.013 + 0.01 + 0.02, 0.05), (0.30, 0.04, 0.10), 0.0)}
    config, teacher, model = analytic_scene(spheres={}, boxes=boxes)
    live.show(model, config, teacher)
    answer = ask(probe, 'bar')
    assert answer.status == QueryAnswer.FOUND, answer.reason
    assert answer.grasps, answer.reason               # across the long side: 11 cm + margin fits 14 cm
    for grasp in answer.grasps:
        assert abs(pose_matrix(grasp)[1, 1]) < np.cos(np.radians(30)), 'closes across the 1 cm gap'
        for finger in fingers(config, grasp):
            assert not in_box(finger, *boxes['block']).any(), 'a finger inside the boxes'
            assert not in_box(finger, *bar).any(), 'a finger inside the bar'
        assert not in_box(between(config, grasp), *boxes['block']).any(), 'the fingers close over the boxes'
