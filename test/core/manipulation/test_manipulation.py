"""Teaching by demonstration on a field of known shapes: embeddings, task files, retrieval, the pose search.

The analytic field (test/analytic_field.py) holds a "tool": a block (its body) with a bar sticking out of one side
(its handle), each with its own label vector. A grasp of the bar from above is shown in two layouts; in a third
layout the tool is moved and turned half a turn (the awkward case: every axis flips sign), and the answer's top
pose must be the bar grasp there (within 1.5 cm and 15 degrees, or of its 180-degree twin about the approach).
"""
import dataclasses

import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.transform import Rotation

from analytic_field import analytic_scene
from f3rm_ros.core.manipulation.gripper import PRESETS, GripperModel, OccupancyGrid, geometry_from_config
from f3rm_ros.core.manipulation.optimise import Cancelled, Manipulator
from f3rm_ros.core.manipulation.search import PoseSearch, sample_rotations, tip_clearance
from f3rm_ros.core.manipulation.task import (Demonstration, Task, TaskFileError, TaskLibrary, choose_task,
                                             query_points)
from f3rm_ros.core.manipulation.volume import region_around, sample_field
from f3rm_ros.core.scenes.truth import pose_error

BODY = np.array([0.06, 0.06, 0.08])
HANDLE_OFFSET, HANDLE = np.array([0.045, 0.0, 0.035]), np.array([0.03, 0.016, 0.016])
GRASP_IN_TOOL = np.eye(4)
GRASP_IN_TOOL[:3, :3] = np.column_stack([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # x = y x z
GRASP_IN_TOOL[:3, 3] = HANDLE_OFFSET + [0.005, 0.0, -0.002]
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def tool_pose(x, y, yaw_deg):
    """T_base_tool of the tool standing on the table at (x, y), turned by `yaw_deg`."""
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler('z', yaw_deg, degrees=True).as_matrix()
    pose[:3, 3] = (x, y, 0.0)
    return pose


def tool_scene(x, y, yaw_deg, manipulation=None):
    """(config, teacher, model, T_base_tool) of a table with the tool (block 'block' + bar 'bar') and an apple."""
    pose = tool_pose(x, y, yaw_deg)
    body_centre = pose[:3, 3] + [0.0, 0.0, BODY[2] / 2]
    handle_centre = pose[:3, :3] @ HANDLE_OFFSET + pose[:3, 3]
    boxes = {'block': (body_centre, BODY, yaw_deg), 'bar': (handle_centre, HANDLE, yaw_deg)}
    config, teacher, model = analytic_scene(spheres={'apple': (np.array([0.35, 0.2, 0.04]), 0.04)}, boxes=boxes,
                                            voxel_size=0.005, cluster_min_points=4)
    config.manipulation.max_seed_voxels = 64
    config.manipulation.rotations_per_voxel = 48
    config.manipulation.steps = 40
    config.manipulation.start_candidates = 256
    for key, value in (manipulation or {}).items():
        setattr(config.manipulation, key, value)
    return config, teacher, model, pose


def grasp_task(manipulator, name='bar grasp', description='bar'):
    m = manipulator.config.manipulation
    return Task(name=name, description=description, kind='grasp', gripper=manipulator.gripper.geometry, width=0.04,
                num_points=m.num_query_points, sigma=m.query_sigma, seed=m.query_seed, teacher=manipulator.teacher.name)


def shown_in_two_layouts(scene_and_grasp):
    """Return a 'bar grasp' task shown once in each of two layouts (turned 0 and 90 degrees).

    `scene_and_grasp(x, y, yaw)` returns (config, teacher, model, the true grasp there).
    """
    task = None
    for x, y, yaw in ((0.45, -0.05, 0.0), (0.55, 0.05, 90.0)):
        config, teacher, model, grasp = scene_and_grasp(x, y, yaw)
        manipulator = Manipulator(model, teacher, config)
        task = task or grasp_task(manipulator)
        task.demos.append(manipulator.embed(grasp, task).demonstration(grasp))
    return task


@pytest.fixture(scope='module')
def taught():
    """Show the bar grasp of the tool in two layouts."""
    def scene_and_grasp(x, y, yaw):
        config, teacher, model, pose = tool_scene(x, y, yaw)
        return config, teacher, model, pose @ GRASP_IN_TOOL
    task = shown_in_two_layouts(scene_and_grasp)
    assert all(demo.touched == 0 for demo in task.demos)    # the demonstrated grasp is clear of the tool
    return task


def test_query_points_are_a_seeded_gaussian():
    points = query_points(5000, 0.0075, 3)
    assert points.shape == (5000, 3) and points.dtype == np.float32
    assert np.array_equal(points, query_points(5000, 0.0075, 3))
    assert not np.array_equal(points, query_points(5000, 0.0075, 4))
    assert np.allclose(points.std(axis=0), 0.0075, rtol=0.05) and np.allclose(points.mean(axis=0), 0.0, atol=5e-4)


@pytest.mark.parametrize('approach', [[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.6, 0.0, -0.8]])
def test_candidate_rotations_fill_the_cone_around_the_demos_approach(approach):
    """Fill the cone around straight down (the half-turn case), straight up and a slanted approach.

    Every rotation is proper, its z axis within the cone and the cone filled out to its rim; the turn about the
    approach is free.
    """
    approach = np.array(approach)
    rotations = sample_rotations(4000, approach, 60.0, np.random.default_rng(0))
    assert np.allclose(np.linalg.det(rotations), 1.0)
    assert np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    tilt = np.degrees(np.arccos(np.clip(rotations[:, :, 2] @ approach, -1, 1)))
    assert tilt.max() <= 60.0 + 1e-6 and np.quantile(tilt, 0.99) > 55.0
    assert np.mean(tilt < 41.4) == pytest.approx(0.5, abs=0.03)        # uniform on the cap: half below cos = 0.75
    closing = rotations[:, :, 1] - (rotations[:, :, 1] @ approach)[:, None] * approach
    assert np.linalg.norm(closing.mean(axis=0)) < 0.05 * np.linalg.norm(closing, axis=1).mean()    # any turn
    assert np.array_equal(rotations, sample_rotations(4000, approach, 60.0, np.random.default_rng(0)))
    anywhere = sample_rotations(4000, None, 60.0, np.random.default_rng(1))[:, :, 2]
    assert np.abs(anywhere.mean(axis=0)).max() < 0.05                  # no demos' approach: every direction


def test_the_demos_approach_is_their_mean_and_none_when_they_disagree(taught):
    assert np.allclose(taught.approach, [0.0, 0.0, -1.0])
    task = Task(name='t', description='t', kind='grasp', gripper=PRESETS['franka_hand'], width=0.04, num_points=4,
                sigma=0.01, seed=0, teacher='labels')
    assert task.approach is None                                      # no demonstrations yet
    up, down = np.eye(4), np.diag([1.0, -1.0, -1.0, 1.0])
    task.demos = [Demonstration(pose=up, embedding=np.zeros((4, 2), np.float32)),
                  Demonstration(pose=down, embedding=np.zeros((4, 2), np.float32))]
    assert task.approach is None                                      # opposite approaches: no prior


def test_the_volume_reads_the_field_trilinearly_and_zero_outside():
    config, teacher, model, _ = tool_scene(0.5, 0.0, 0.0)
    volume = sample_field(model, config, region_around(np.array([[0.5, 0.0, 0.04]]), 0.08))
    inside_body = torch.tensor([[0.5, 0.0, 0.04]])
    feature = volume.sample(inside_body)[0]
    expected = teacher.vector('block') / teacher.vector('block').norm()
    assert torch.allclose(feature, expected * (1 - np.exp(-100 * volume.voxel_size * model.box.scale)), atol=1e-4)
    assert float(volume.sample(torch.tensor([[0.5, 0.0, 0.2]])).abs().sum()) == 0.0         # air above it
    assert float(volume.sample(torch.tensor([[1.5, 0.0, 0.04]])).abs().sum()) == 0.0         # outside the grid
    points = torch.tensor([[0.47, 0.0, 0.04]], requires_grad=True)                          # on the body's face
    volume.sample(points).sum().backward()
    assert points.grad.abs().sum() > 0                                                      # poses can follow it


def test_fingers_turned_into_the_bar_pay_a_clearance_cost_that_turns_them_back(taught):
    """The optimisation's soft collision: zero at the demonstrated grasp, high a quarter turn off it.

    Turned about its approach, a finger goes through the bar; the rotation's gradient turns it back out.
    """
    config, teacher, model, pose = tool_scene(0.5, 0.0, 0.0)
    manipulator = Manipulator(model, teacher, config)
    volume = sample_field(model, config, region_around(pose[None, :3, 3], 0.15))
    search = PoseSearch(volume, taught, manipulator.gripper, config.manipulation)
    demo = pose @ GRASP_IN_TOOL
    turned = demo.copy()
    turned[:3, :3] = demo[:3, :3] @ Rotation.from_euler('z', 90, degrees=True).as_matrix()
    poses = torch.as_tensor(np.stack([demo, turned]), dtype=torch.float32)
    clear, blocked = search.finger_opacity(poses).tolist()
    assert clear < 0.02 and blocked > 0.1, (clear, blocked)
    rotation = torch.zeros((1, 3), requires_grad=True)
    start = poses[1:2, :3, :3]
    search.finger_opacity(PoseSearch.compose(start, rotation, poses[1:2, :3, 3])).sum().backward()
    step = -0.05 * rotation.grad / rotation.grad.norm()                     # a small step down the gradient
    after = float(search.finger_opacity(PoseSearch.compose(start, step, poses[1:2, :3, 3]))[0])
    assert after < blocked, (after, blocked)


def test_an_answer_below_the_demos_fingertip_clearance_is_raised_to_it(taught):
    """The demonstrations held the fingertips 3.3 cm above the table (the bar's height).

    Taught as if that were 1.5 cm (within NEAR_SUPPORT: a grasp near the table), an answer a few millimetres lower
    is raised back; one far lower (beyond MAX_TIP_LIFT: the support read is not its table) is left alone; at the
    true 3.3 cm (no table near the fingers) nothing is lifted.
    """
    assert taught.tip_clearance == pytest.approx(0.033, abs=0.006)      # the field's table top is a voxel coarse
    high = Task(**{**taught.__dict__, 'demos': list(taught.demos)})
    taught = Task(**{**taught.__dict__, 'demos': [dataclasses.replace(d, tip_clearance=0.015) for d in taught.demos]})
    config, teacher, model, pose = tool_scene(0.42, 0.08, -125.0)
    manipulator = Manipulator(model, teacher, config)
    volume = sample_field(model, config, region_around(pose[None, :3, 3], 0.15))
    search = PoseSearch(volume, taught, manipulator.gripper, config.manipulation)
    demo = pose @ GRASP_IN_TOOL
    demo[2, 3] -= 0.033 - 0.015                                          # fingertips 1.5 cm over the table
    poses = np.stack([demo, demo, demo])
    poses[1, 2, 3] -= 0.004
    poses[2, 2, 3] -= 0.03
    lifted = search.lifted(torch.as_tensor(poses, dtype=torch.float32)).numpy()
    unlifted = PoseSearch(volume, high, manipulator.gripper, config.manipulation).lifted(
        torch.as_tensor(poses, dtype=torch.float32)).numpy()
    assert np.allclose(unlifted, poses, atol=1e-6)                       # demos high above the table: no floor
    before = [tip_clearance(volume, manipulator.gripper, p, taught.width) for p in poses]
    after = [tip_clearance(volume, manipulator.gripper, p.astype(np.float64), taught.width) for p in lifted]
    assert np.allclose(lifted[0], poses[0], atol=1e-6)                   # as high as the demos: unchanged
    assert after[1] == pytest.approx(taught.tip_clearance, abs=1e-4) and before[1] < taught.tip_clearance - 0.003
    assert np.allclose(lifted[1][:3, :3], poses[1][:3, :3]) and lifted[1][2, 3] > poses[1][2, 3]   # straight up
    assert np.allclose(lifted[2], poses[2], atol=1e-6)                   # 3 cm too low: not this rule's to fix


def test_the_demonstrations_agree_and_a_pose_on_another_part_differs(taught):
    a, b = (d.embedding.ravel() for d in taught.demos)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9
    config, teacher, model, pose = tool_scene(0.5, 0.0, 0.0)
    manipulator = Manipulator(model, teacher, config)
    on_the_body = pose @ GRASP_IN_TOOL
    on_the_body[:3, 3] = pose[:3, :3] @ [0.0, 0.0, HANDLE_OFFSET[2]] + pose[:3, 3]    # same height, in the block
    c = manipulator.embed(on_the_body, taught)[0].ravel()
    assert a @ c / np.linalg.norm(a) / max(np.linalg.norm(c), 1e-9) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize('yaw', [180.0, -125.0])
def test_the_top_pose_grasps_the_bar_of_a_moved_and_turned_tool(taught, yaw):
    config, teacher, model, pose = tool_scene(0.42, 0.08, yaw)
    manipulator = Manipulator(model, teacher, config)
    stages = []
    result = manipulator.answer([taught], text='bar', progress=lambda stage, counts: stages.append(stage))
    assert result.status == 'found', result.reason
    assert result.task == 'bar grasp' and result.kind == 'grasp'
    truth = pose @ GRASP_IN_TOOL
    error_m, error_deg = pose_error(result.candidates[0].pose, [truth, truth @ FLIP])
    assert error_m < 0.015 and error_deg < 15, (error_m, error_deg, result.candidates[0].pose)
    assert [s for s in dict.fromkeys(stages)] == ['retrieval', 'mask', 'field', 'candidates', 'collisions',
                                                  'optimise', 'rank']
    counts = result.counts
    assert counts['candidates'] >= counts['collision_free'] >= counts['optimised'] >= counts['returned'] >= 1
    for candidate in result.candidates:    # every returned gripper is clear of the true shapes (not a voxel grid's)
        points = manipulator.gripper.contact_points(candidate.width) @ candidate.pose[:3, :3].T + candidate.pose[:3, 3]
        density = model.density_at(torch.as_tensor(model.box.to_field(points), dtype=torch.float32))
        assert int((density > 0).sum()) == 0, candidate.as_dict()
    # ranked by the similarity less the tilt and clearance costs, every pose within the tilt limit of the demos'
    # approach (down); the clearance cost is read from another grid here (another origin): equal to a voxel's blur
    m = config.manipulation
    tilts = [1.0 - c.pose[:3, 2] @ taught.approach for c in result.candidates]
    assert all(t <= 1.0 - np.cos(np.radians(m.max_tilt_deg)) + 1e-6 for t in tilts)
    objective = [c.objective for c in result.candidates]
    assert all(a >= b - 1e-5 for a, b in zip(objective, objective[1:])), objective     # float32 ranking
    volume = sample_field(model, config, region_around(result.candidates[0].pose[None, :3, 3], 0.2))
    search = PoseSearch(volume, taught, manipulator.gripper, m)
    poses = torch.as_tensor(np.stack([c.pose for c in result.candidates]), dtype=torch.float32)
    clearance = search.finger_opacity(poses).numpy()
    recomputed = [c.score - m.tilt_weight * t - m.clearance_weight * f
                  for c, t, f in zip(result.candidates, tilts, clearance)]
    assert np.allclose(objective, recomputed, atol=0.02), (objective, recomputed)


@pytest.mark.slow
def test_answers_are_deterministic(taught):
    config, teacher, model, _ = tool_scene(0.42, 0.08, 180.0, {'steps': 5})
    manipulator = Manipulator(model, teacher, config)
    first, second = (manipulator.answer([taught], task_name='bar grasp') for _ in range(2))
    assert [c.pose.tolist() for c in first.candidates] == [c.pose.tolist() for c in second.candidates]


@pytest.mark.slow
def test_unknown_task_text_and_absent_object_are_answers_not_crashes(taught):
    config, teacher, model, _ = tool_scene(0.42, 0.08, 0.0, {'steps': 2})
    manipulator = Manipulator(model, teacher, config)
    assert manipulator.answer([taught], task_name='pour water').status == 'no_task'
    assert manipulator.answer([], text='bar').status == 'no_task'
    unlike = manipulator.answer([taught], text='banana')
    assert unlike.status == 'no_task' and 'bar grasp' in unlike.reason
    config, teacher, model = analytic_scene(voxel_size=0.005, cluster_min_points=4)   # apple and ball, no tool
    absent = Manipulator(model, teacher, config).answer([taught], task_name='bar grasp')
    assert absent.status == 'not_present' and 'bar' in absent.reason


@pytest.mark.slow
def test_a_cancel_stops_the_optimisation(taught):
    config, teacher, model, _ = tool_scene(0.42, 0.08, 0.0, {'steps': 50})
    manipulator = Manipulator(model, teacher, config)
    seen = []

    def progress(stage, counts):
        seen.append(stage)
        if seen.count('optimise') == 3:
            raise Cancelled('cancelled by the test')
    with pytest.raises(Cancelled):
        manipulator.answer([taught], text='bar', progress=progress)
    assert seen.count('optimise') == 3 and 'rank' not in seen


def test_a_task_of_another_gripper_is_refused_with_the_reason(taught):
    config, teacher, model, _ = tool_scene(0.42, 0.08, 0.0, {'gripper': 'robotiq_2f140'})
    result = Manipulator(model, teacher, config).answer([taught], task_name='bar grasp')
    assert result.status == 'error' and 'robotiq_2f140' in result.reason and 'gripper' in result.reason


def test_task_files_round_trip_and_refuse_corruption(taught, tmp_path):
    library = TaskLibrary(tmp_path)
    stored = None
    for demo in taught.demos:
        fresh = Task(**{**taught.__dict__, 'demos': []})
        stored = library.record(fresh, demo)
    assert len(stored.demos) == 2 and library.names() == ['bar grasp']
    loaded = library.load('Bar Grasp')
    assert np.array_equal(loaded.embedding, taught.embedding)
    assert np.allclose(loaded.demos[1].pose, taught.demos[1].pose, atol=1e-6)
    assert loaded.tip_clearance == pytest.approx(taught.tip_clearance, abs=1e-6)
    text = yaml.safe_load((tmp_path / 'bar_grasp.yaml').read_text())
    older = dict(text, demos=[{k: v for k, v in d.items() if k != 'tip_clearance'} for d in text['demos']])
    (tmp_path / 'bar_grasp.yaml').write_text(yaml.safe_dump(older))        # a file written before the field
    assert library.load('bar grasp').tip_clearance is None
    (tmp_path / 'bar_grasp.yaml').write_text(yaml.safe_dump(text))
    assert text['format'] == 'f3rm_ros.task/1' and text['gripper']['name'] == taught.gripper.name
    assert len(text['demos']) == 2 and set(text['demos'][0]['pose']) == {'xyz', 'quat_xyzw'}

    npz = tmp_path / 'bar_grasp.npz'
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(TaskFileError, match='SHA-256'):
        library.load('bar grasp')
    assert 'bar_grasp.yaml' in library.problems() and library.load_all() == []
    (tmp_path / 'bar_grasp.yaml').write_text('format: f3rm_ros.task/0\n')
    with pytest.raises(TaskFileError, match='format'):
        library.load('bar grasp')


def test_forgetting_the_last_demonstration_removes_the_task(taught, tmp_path):
    library = TaskLibrary(tmp_path)
    for demo in taught.demos:
        library.record(Task(**{**taught.__dict__, 'demos': []}), demo)
    assert len(library.forget('bar grasp', 0).demos) == 1
    with pytest.raises(IndexError):
        library.forget('bar grasp', 5)
    assert library.forget('bar grasp', -1).demos == [] and library.names() == []


def test_retrieval_by_name_and_by_description():
    config, teacher, model, _ = tool_scene(0.5, 0.0, 0.0)
    manipulator = Manipulator(model, teacher, config)
    one = grasp_task(manipulator, 'bar grasp', 'bar')
    other = grasp_task(manipulator, 'block push', 'block')
    for task in (one, other):
        task.demos.append(Demonstration(pose=np.eye(4), embedding=np.ones((task.num_points, teacher.dim), np.float32)))
    assert choose_task([one, other], manipulator.text_embeddings, 'block', '', 0.5)[0] is other
    assert choose_task([one, other], manipulator.text_embeddings, '', 'Bar Grasp', 0.5)[0] is one
    assert choose_task([one, other], manipulator.text_embeddings, 'apple', '', 0.5)[0] is None


def test_gripper_presets_and_collisions_count_what_the_boxes_hold():
    config, teacher, model, _ = tool_scene(0.5, 0.0, 0.0)
    assert geometry_from_config(config.grasp, config.manipulation).max_opening == config.grasp.max_opening
    assert PRESETS['robotiq_2f140'].max_opening == pytest.approx(0.14)
    gripper = GripperModel(PRESETS['franka_hand'], 0.0025)
    volume = sample_field(model, config, region_around(np.array([[0.5, 0.0, 0.04]]), 0.15))
    above = np.eye(4)
    above[:3, :3] = np.diag([-1.0, 1.0, -1.0])            # approach straight down
    above[:3, 3] = (0.5, 0.0, 0.2)                        # fingertips 12 cm above the body's top
    into = above.copy()
    into[2, 3] = 0.04                                     # fingers inside the body
    counts = gripper.collisions(torch.as_tensor(np.stack([above, into]), dtype=torch.float32), volume.occupancy,
                                0.04)
    assert int(counts[0]) == 0 and int(counts[1]) > 0


def test_fingertips_resting_in_a_surfaces_fuzz_do_not_count_deeper_ones_do():
    """The fingertips' last sampling step may lie in a one-voxel-thick surface; a centimetre deeper, the fingers hit."""
    voxel = 0.005
    occupied = torch.zeros((40, 40, 20), dtype=torch.bool)
    occupied[:, :, 10] = True                                        # a table top: z in [0, 5 mm)
    grid = OccupancyGrid(occupied, np.array([-0.1, -0.1, -0.05]), voxel)
    gripper = GripperModel(PRESETS['franka_hand'], voxel)
    down = np.eye(4)
    down[:3, :3] = np.diag([-1.0, 1.0, -1.0])                        # approach straight down
    poses = np.stack([down, down])
    poses[0, 2, 3], poses[1, 2, 3] = 0.004, -0.006                   # tips 1 mm into the top voxel; 11 mm deep
    counts = gripper.collisions(torch.as_tensor(poses, dtype=torch.float32), grid, 0.04)
    assert int(counts[0]) == 0 and int(counts[1]) > 0
    assert len(gripper.contact_points(0.04)) < len(gripper.points(0.04))   # the band is what is left out
