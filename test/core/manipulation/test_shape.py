"""The local shape under a gripper: a handle lying on the table sets the turn of an answer about its approach.

The analytic field holds a bar lying on the table (a screwdriver's handle: 12 x 2.4 x 2.4 cm) and a ball. A grasp
across the bar from above is shown in two layouts; in a third (the bar turned 37 degrees) poses at the true grasp
but turned about their approach are turned back by `PoseSearch.aligned`, a turn past `MAX_TURN_DEG` and the
180-degree twin are left alone, and a round ball sets nothing.
"""
import dataclasses

import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.transform import Rotation

from analytic_field import analytic_scene
from test_manipulation import shown_in_two_layouts
from f3rm_ros.core.manipulation.optimise import Manipulator
from f3rm_ros.core.manipulation.search import PoseSearch
from f3rm_ros.core.manipulation.shape import (MAX_TURN_DEG, LocalShape, agreed_axis, local_shape,
                                              turn_about_approach, turned)
from f3rm_ros.core.manipulation.task import Task, TaskLibrary
from f3rm_ros.core.manipulation.volume import region_around, sample_field
from f3rm_ros.core.scenes.truth import pose_error

BAR = np.array([0.12, 0.024, 0.024])
BALL = (np.array([0.35, 0.2, 0.04]), 0.04)


def bar_scene(x, y, yaw_deg):
    """(config, teacher, model, true grasp) of the bar lying at (x, y) along `yaw_deg`, grasped across from above."""
    centre = np.array([x, y, BAR[2] / 2])
    config, teacher, model = analytic_scene(spheres={'ball': BALL}, boxes={'bar': (centre, BAR, yaw_deg)},
                                            voxel_size=0.005, cluster_min_points=4)
    along = Rotation.from_euler('z', yaw_deg, degrees=True).as_matrix()[:, 0]
    closing = np.cross([0.0, 0.0, 1.0], along)                 # across the bar
    approach = np.array([0.0, 0.0, -1.0])
    grasp = np.eye(4)
    grasp[:3, :3] = np.column_stack([np.cross(closing, approach), closing, approach])
    grasp[:3, 3] = centre + [0.0, 0.0, -0.004]                 # fingertips' ends a little below the bar's middle
    return config, teacher, model, grasp


def about_approach(pose, degrees):
    return turned(pose, np.radians(degrees))


@pytest.fixture(scope='module')
def bar_task():
    return shown_in_two_layouts(bar_scene)


def test_a_bar_reads_long_along_itself_and_a_ball_reads_round(bar_task):
    for demo in bar_task.demos:
        shape = demo.shape
        assert shape is not None and shape.usable and shape.elongation > 2.0, shape
        assert abs(shape.axis[0]) > 0.98          # gripper x: along the bar (the fingers close across it)
    assert np.allclose(np.abs(bar_task.shape_axis), [1.0, 0.0, 0.0], atol=0.05)
    config, teacher, model, _ = bar_scene(0.45, -0.05, 0.0)
    volume = sample_field(model, config, region_around(BALL[0][None], 0.1))
    over_the_ball = np.eye(4)
    over_the_ball[:3, :3] = np.diag([1.0, -1.0, -1.0])
    over_the_ball[:3, 3] = BALL[0]
    ball = local_shape(volume.occupancy_on_host, over_the_ball)
    assert ball is not None and not ball.usable and ball.elongation < 1.3


def test_the_turn_about_the_approach_is_sign_free_and_the_shorter_way():
    target = np.array([1.0, 0.0, 0.0])
    for degrees in (30.0, -75.0, 150.0):          # 150 degrees is -30 for an axis without a sign
        current = Rotation.from_euler('z', degrees, degrees=True).apply(target)
        angle = np.degrees(turn_about_approach(current, target))
        assert angle == pytest.approx((degrees + 90.0) % 180.0 - 90.0)
        pose = about_approach(np.eye(4), angle)
        read = pose[:3, :3].T @ current             # the same world axis in the turned gripper frame
        assert abs(read @ target) == pytest.approx(1.0)
    assert turn_about_approach(-target, target) == pytest.approx(0.0)


def test_demonstrations_make_an_axis_only_when_they_agree():
    along = LocalShape(np.array([1.0, 0.0, 0.0]), 3.0)
    flipped = LocalShape(np.array([-1.0, 0.05, 0.0]) / np.linalg.norm([1.0, 0.05]), 2.5)
    assert agreed_axis([along, flipped]) @ along.axis == pytest.approx(1.0, abs=0.01)
    off = LocalShape(Rotation.from_euler('z', 40, degrees=True).apply(along.axis), 3.0)
    assert agreed_axis([along, off]) is None                                # 40 degrees apart
    assert agreed_axis([along, LocalShape(along.axis, 1.2)]) is None        # one round reading
    assert agreed_axis([along, None]) is None and agreed_axis([]) is None
    upright = LocalShape(np.array([0.3, 0.0, 0.95]) / np.linalg.norm([0.3, 0.0, 0.95]), 3.0)
    assert agreed_axis([upright, upright]) is None                          # along the approach: no turn sets it


def test_answers_turned_about_the_approach_are_turned_back_to_the_bar(bar_task):
    config, teacher, model, grasp = bar_scene(0.42, 0.08, 37.0)
    manipulator = Manipulator(model, teacher, config)
    volume = sample_field(model, config, region_around(grasp[None, :3, 3], 0.15))
    search = PoseSearch(volume, bar_task, manipulator.gripper, config.manipulation)
    turns = [0.0, 25.0, -40.0, MAX_TURN_DEG + 15.0, 180.0]
    poses = torch.as_tensor(np.stack([about_approach(grasp, t) for t in turns]), dtype=torch.float32)
    out = search.aligned(poses).numpy().astype(np.float64)
    errors = [pose_error(pose, [grasp, about_approach(grasp, 180.0)])[1] for pose in out]
    assert errors[0] < 3.0 and errors[1] < 3.0 and errors[2] < 3.0, errors
    assert np.allclose(out[3], poses[3].numpy(), atol=1e-6)         # too far off: left as the similarity put it
    assert errors[4] < 3.0                                           # the twin turned half a turn stays the twin
    assert np.allclose(out[:, :3, 3], poses[:, :3, 3].numpy(), atol=1e-6)   # turned in place


def test_a_task_without_an_axis_leaves_answers_alone_and_files_keep_the_shape(bar_task, tmp_path):
    config, teacher, model, grasp = bar_scene(0.42, 0.08, 37.0)
    manipulator = Manipulator(model, teacher, config)
    volume = sample_field(model, config, region_around(grasp[None, :3, 3], 0.15))
    round_task = Task(**{**bar_task.__dict__,
                         'demos': [dataclasses.replace(d, shape=None) for d in bar_task.demos]})
    poses = torch.as_tensor(about_approach(grasp, 25.0)[None], dtype=torch.float32)
    search = PoseSearch(volume, round_task, manipulator.gripper, config.manipulation)
    assert search.aligned(poses) is poses

    library = TaskLibrary(tmp_path)
    for demo in bar_task.demos:
        library.record(Task(**{**bar_task.__dict__, 'demos': []}), demo)
    loaded = library.load('bar grasp')
    assert np.allclose(loaded.shape_axis, bar_task.shape_axis, atol=1e-5)
    text = yaml.safe_load((tmp_path / 'bar_grasp.yaml').read_text())
    assert set(text['demos'][0]['shape']) == {'axis', 'elongation'}
    older = dict(text, demos=[{k: v for k, v in d.items() if k != 'shape'} for d in text['demos']])
    (tmp_path / 'bar_grasp.yaml').write_text(yaml.safe_dump(older))         # a file written before the field
    assert library.load('bar grasp').shape_axis is None


def test_a_pose_that_diverged_is_no_answer(bar_task):
    """A NaN pose (the optimisation in a field that diverged) is dropped, not passed to the support reading."""
    config, teacher, model, grasp = bar_scene(0.42, 0.08, 37.0)
    manipulator = Manipulator(model, teacher, config)
    volume = sample_field(model, config, region_around(grasp[None, :3, 3], 0.15))
    search = PoseSearch(volume, bar_task, manipulator.gripper, config.manipulation)
    broken = grasp.copy()
    broken[:3, 3] = np.nan
    poses = torch.as_tensor(np.stack([broken, about_approach(grasp, 20.0)]), dtype=torch.float32)
    ranked = search.rank(poses, top_k=5, allowed=config.manipulation.max_collisions + bar_task.touched)
    assert len(ranked) == 1 and np.isfinite(ranked[0].pose).all()
    assert pose_error(ranked[0].pose, [grasp, about_approach(grasp, 180.0)])[1] < 3.0
