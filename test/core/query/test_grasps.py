"""Grasp candidates: openings, scores and collisions with the field's occupied voxels, on analytic scenes.

Gripper frame: z = approach, y = closing, origin between the fingertips' ends (core/query/grasps.py).
"""
import re

import numpy as np
import pytest

from f3rm_ros.core.query.clusters import Cluster
from f3rm_ros.core.config import GraspConfig
from f3rm_ros.core.query.grasps import GraspPlanner, Occupancy
from f3rm_ros.core.query.answer import FOUND, FieldQuerier

from analytic_field import analytic_scene, yaw_matrix


def finger_points(planner, grasp, samples=7):
    """Points [N, 3] in base_frame filling both finger boxes of a candidate."""
    out = []
    for lo, hi in planner.finger_boxes(grasp.width):
        axes = [np.linspace(lo[i], hi[i], samples) for i in range(3)]
        local = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)
        out.append(local @ grasp.pose[:3, :3].T + grasp.pose[:3, 3])
    return np.concatenate(out)


def inside_box(points, centre, size, yaw):
    """Bool [N]: points inside a box of `size` at `centre` yawed by `yaw` degrees."""
    local = (points - centre) @ yaw_matrix(yaw)
    return np.all(np.abs(local) <= np.asarray(size) / 2, axis=1)


def test_two_objects_six_centimetres_apart_no_finger_enters_the_neighbour():
    """Keep every finger out of a neighbour 6 cm away, and still grasp each object.

    A 5 x 4 x 8 cm block with a twin 6 cm away (centre to centre along x, a 1 cm gap): every candidate of
    either block keeps both fingers out of the other.
    """
    size = (0.05, 0.04, 0.08)
    boxes = {'bar': ((0.47, 0.0, 0.04), size, 0.0), 'block': ((0.53, 0.0, 0.04), size, 0.0)}
    config, teacher, model = analytic_scene(spheres={}, boxes=boxes)
    querier = FieldQuerier(model, teacher, config)
    for name, other in (('bar', 'block'), ('block', 'bar')):
        result = querier.query(name)
        assert result.status == FOUND and len(result.clusters) == 1, result.reason
        assert result.grasps, result.grasp_reasons
        for grasp in result.grasps:
            points = finger_points(querier.grasp_planner, grasp)
            assert not inside_box(points, *boxes[other]).any(), f'{name}: a finger enters {other}'
            assert not inside_box(points, *boxes[name]).any(), f'{name}: a finger enters the object itself'
            assert points[:, 2].min() >= -1e-9, 'a finger is in the table'
            # closing straight across x from above would need a 1.2 cm finger in the 1 cm gap: rejected
            assert not (grasp.approach == 'top' and abs(grasp.pose[0, 1]) == pytest.approx(1.0, abs=1e-9))


def test_without_the_neighbour_the_same_block_is_also_grasped_across_x():
    """The closing direction blocked by the neighbour is feasible when the block stands alone."""
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': ((0.47, 0.0, 0.04), (0.04, 0.04, 0.08), 0.0)})
    result = FieldQuerier(model, teacher, config).query('bar')
    closing_x = [g for g in result.grasps if g.approach == 'top' and abs(g.pose[0, 1]) == pytest.approx(1.0)]
    assert closing_x


def test_an_object_wider_than_the_opening_gets_no_candidate_and_says_why():
    """A 12 x 10 x 5 cm block: 10 cm at its narrowest plus the margin exceeds the 8 cm opening."""
    config, teacher, model = analytic_scene(spheres={}, boxes={'block': ((0.5, 0.0, 0.025), (0.12, 0.10, 0.05), 20.0)})
    result = FieldQuerier(model, teacher, config).query('block')
    assert result.status == FOUND and result.grasps == []
    assert result.grasp_reasons == [result.grasp_reasons[0]]
    across = re.search(r'is ([0-9.]+) cm across', result.grasp_reasons[0])
    assert across and 10.0 <= float(across.group(1)) <= 11.0          # voxelised at a 20° yaw
    assert 'opens 8.0 cm' in result.grasp_reasons[0]


def test_a_flat_object_is_taken_from_above_with_the_fingertips_above_the_table():
    """A 1 cm tall tile on the table: the fingertips stop within its height, never below the table top."""
    tile = ((0.5, 0.0, 0.005), (0.06, 0.03, 0.01), 0.0)
    config, teacher, model = analytic_scene(spheres={}, boxes={'block': tile})
    result = FieldQuerier(model, teacher, config).query('block')
    assert result.grasps, result.grasp_reasons
    for grasp in result.grasps:
        points = finger_points(FieldQuerier(model, teacher, config).grasp_planner, grasp)
        assert grasp.approach in ('top', 'tilted') and grasp.pose[2, 3] <= 0.01
        assert points[:, 2].min() >= config.grasp.support_clearance - 1e-9     # above the table top (z 0)
        assert not inside_box(points, *tile).any()


def test_candidates_are_proper_rotations_with_the_documented_axes_and_widths():
    """Top-down: z = -base z; side approaches only for tall objects; width = extent + margin (or wider)."""
    g = GraspConfig()
    planner = GraspPlanner(g, Occupancy(np.zeros((10, 10, 10), bool), np.zeros(3), 0.01))
    tall = Cluster(centroid=np.array([0.05, 0.05, 0.05]), extent=np.array([0.05, 0.03, 0.10]), rotation=yaw_matrix(30),
                   relevancy=0.9, max_relevancy=0.95, num_points=100, evidence=10.0, mean=np.zeros(3), top=0.10)
    planned = planner.plan(tall, 0)
    assert planned.reason == '' and len(planned.grasps) == g.max_per_cluster
    assert planned.grasps[0].approach == 'top' and planned.grasps[0].width == pytest.approx(0.03 + g.margin)
    scores = [grasp.score for grasp in planned.grasps]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for grasp in planned.grasps:
        R = grasp.pose[:3, :3]
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
        assert abs(R[2, 1]) < 1e-12                                     # closing axis horizontal
        if grasp.approach == 'top':
            assert np.allclose(R[:, 2], [0, 0, -1])
        elif grasp.approach == 'tilted':
            assert R[2, 2] == pytest.approx(-np.cos(np.radians(30)))       # leaning 30 degrees off vertical
        else:
            assert grasp.approach == 'side' and abs(R[2, 2]) < 1e-12     # horizontal approach
    low = Cluster(centroid=np.array([0.05, 0.05, 0.02]), extent=np.array([0.05, 0.03, 0.04]), rotation=np.eye(3),
                  relevancy=0.9, max_relevancy=0.95, num_points=100, evidence=10.0, mean=np.zeros(3), top=0.04)
    low_planned = GraspPlanner(GraspConfig(max_per_cluster=100), planner.occupancy).plan(low, 0)
    assert {grasp.approach for grasp in low_planned.grasps} == {'top', 'tilted'}     # no side: 4 cm < 6 cm


def test_gripper_parameters_are_validated():
    """Non-positive or absurd gripper sizes are refused with the parameter's name."""
    with pytest.raises(ValueError, match='grasp.max_opening'):
        GraspConfig(max_opening=0.0)
    with pytest.raises(ValueError, match='grasp.finger_length'):
        GraspConfig(finger_length=float('nan'))
    with pytest.raises(ValueError, match='grasp.max_per_cluster'):
        GraspConfig(max_per_cluster=0)


def hazy_bowl(with_alpha):
    """Occupancy of a 16 cm bowl (a 1 cm wall of opacity 0.5) filled with a faint haze (0.15), on a table."""
    size, shape = 0.01, (40, 40, 12)
    origin = np.array([0.3, -0.2, -0.02])
    centres = origin + (np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1) + 0.5) * size
    radius = np.linalg.norm(centres[..., :2] - np.array([0.5, 0.0]), axis=-1)
    z = centres[..., 2]
    alpha = np.zeros(shape, np.float32)
    alpha[z < 0] = 0.9                                                     # the table
    inside = (z > 0) & (z < 0.05)
    alpha[inside & (radius < 0.07)] = 0.15                                  # haze inside the bowl
    alpha[inside & (radius >= 0.07) & (radius < 0.08)] = 0.5                # the wall
    grid = alpha >= 0.1
    return Occupancy(grid, origin, size, alpha if with_alpha else None)


def test_a_bowl_filled_with_haze_is_held_by_its_rim_when_the_opacity_is_known():
    """A briefly trained field fills a container with faint voxels; the wall is twice as opaque.

    With the opacity, the rim is found (the wall: at least half the ray's densest voxel) and the inner finger
    passes the haze; without it the bowl is a solid 16 cm disc, wider than the 14 cm opening: no grasp, and the
    reason says which families were tried and why none fits.
    """
    bowl = Cluster(centroid=np.array([0.5, 0.0, 0.025]), extent=np.array([0.16, 0.16, 0.05]), rotation=np.eye(3),
                   relevancy=0.9, max_relevancy=0.95, num_points=500, evidence=10.0, mean=np.zeros(3), top=0.05)
    config = GraspConfig(max_opening=0.14)
    planned = GraspPlanner(config, hazy_bowl(True)).plan(bowl, 0)
    assert planned.grasps and {g.approach for g in planned.grasps} == {'rim'}, planned.reason
    for grasp in planned.grasps:
        radial = np.linalg.norm(grasp.pose[:2, 3] - bowl.centroid[:2])
        assert 0.07 <= radial <= 0.08 and grasp.width <= 0.01 + config.margin + 0.011   # across the 1 cm wall
        assert 0 < grasp.haze <= 0.5 * 0.5                                  # passes only what is fainter
    blind = GraspPlanner(config, hazy_bowl(False)).plan(bowl, 0)
    assert blind.grasps == [] and 'opens 14.0 cm' in blind.reason and 'rim: no wall' in blind.reason
