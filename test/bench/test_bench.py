"""Benchmarks a user runs: `bench semantic` scores present and absent objects; `bench query` times every stage.

Training quality is asserted in test_query (trained scene); here the plumbing that feeds the scores and timings:
ground truth from any tool's dataset, the RESULT line and its arithmetic, on-object boxes with yaw, the absent
queries, the scene and voxel files the GPU machine uses, and a latency table that includes grasps and packing.
"""
import copy
import json
import os

import numpy as np
import pytest

from f3rm_ros.bench import parse_result_line
from f3rm_ros.bench.query import STAGES, pack_heatmap, timed_queries
from f3rm_ros.bench.semantic import (CATALOGUE_NAMES, absent_names, dataset_scene, grasp_clear, load_scene,
                                     on_object, save_scene)
from f3rm_ros.bench.semantic_scores import (QueryScore, peak_distribution, result_line, separating_bound,
                                            summary_rows)
from f3rm_ros.cli import main
from f3rm_ros.core.query.answer import FieldQuerier
from f3rm_ros.core.query.support import support_under
from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.query.cloud import CLOUD_POINT_STEP
from f3rm_ros.core.capture.frames import read_metadata, write_dataset

from analytic_field import analytic_scene, yaw_matrix

os.environ.setdefault('HF_HUB_OFFLINE', '1')

RESULT_FIELDS = ('layouts', 'queries', 'within_2cm', 'within_5cm', 'on_object', 'absent', 'absent_correct', 'found',
                 'grasped', 'median_cm', 'worst_cm')


@pytest.fixture(scope='module')
def scene_dataset(tmp_path_factory):
    """Write a small synthetic scan as a nerfstudio dataset with labels, objects and workspace."""
    scene = scenes.make_scene(seed=3, object_names=['mug', 'ball'], num_views=12, width=64, height=48)
    root = write_dataset(tmp_path_factory.mktemp('bench') / 'scan', scene.frames, scene.dataset_metadata())
    return scene, root


def test_dataset_ground_truth_round_trip(scene_dataset):
    """Labels, object centres and boxes, workspace and label maps come back as the scene made them."""
    scene, root = scene_dataset
    name, frames, labels, objects, workspace = dataset_scene(root)
    assert labels == scene.labels
    assert set(objects) == {'mug', 'ball'}
    for key, truth in scene.objects.items():
        assert np.allclose(objects[key]['center'], truth['center'])
        assert np.allclose(objects[key]['extent'], truth['extent'])
    assert np.allclose(workspace.min_xyz, scene.workspace.min_xyz)
    assert np.allclose(workspace.max_xyz, scene.workspace.max_xyz)
    assert len(frames) == 12 and all(np.array_equal(f.labels, s.labels) for f, s in zip(frames, scene.frames))


@pytest.mark.parametrize('drop, message', [('labels', 'no "labels"'), ('objects', 'no "objects"'),
                                           ('label_file_path', 'no label_file_path'),
                                           ('center', 'have no "center"')])
def test_dataset_without_ground_truth_is_refused_clearly(scene_dataset, tmp_path, drop, message):
    """A dataset that cannot be scored says what is missing, before any training."""
    scene, root = scene_dataset
    meta = read_metadata(root)
    if drop == 'label_file_path':
        meta['frames'][2].pop('label_file_path')
    elif drop == 'center':
        meta['objects']['mug'].pop('center')
    else:
        meta.pop(drop)
    copy = tmp_path / 'scan'
    copy.mkdir()
    for item in root.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / 'transforms.json').unlink()
    (copy / 'transforms.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        dataset_scene(copy)


def score(query, present=True, status='found', error=0.01, on=True, peak=0.99, scene='s'):
    """Return a QueryScore with what the summary reads."""
    return QueryScore(scene=scene, query=query, present=present, status=status, peak=peak, best_relevancy=peak,
                      error_m=error if present else float('nan'), error_xy_m=error if present else float('nan'),
                      on_object=on if present else None, clusters=1, latency_s=0.002, centroid=None,
                      truth=[0, 0, 0] if present else None)


def test_summary_rates_and_the_result_line():
    """Present rates over present queries only, absent_correct over absent ones, every RESULT field parsed back.

    Present: 1 cm, 3 cm, 6 cm (still on a large object) and a not-found (inf, off the object): 1/4 within 2 cm,
    2/4 within 5 cm, 3/4 on the object, 3/4 found. Absent: 2 not_present and 1 found: 2/3 correct.
    """
    scores = [score('a', error=0.01), score('b', error=0.03), score('c', error=0.06),
              score('d', status='not_present', error=float('inf'), on=False, peak=0.7),
              score('x', present=False, status='not_present', peak=0.55, scene='t'),
              score('y', present=False, status='not_present', peak=float('nan'), scene='t'),
              score('z', present=False, status='found', peak=0.95, scene='t')]
    summary = summary_rows(scores)
    assert summary['within_2cm'] == 0.25 and summary['within_5cm'] == 0.5
    assert summary['on_object'] == 0.75 and summary['found'] == 0.75
    assert summary['absent'] == 3 and summary['absent_correct'] == pytest.approx(2 / 3)
    assert summary['queries'] == 4 and summary['layouts'] == 2
    assert summary['median_error_m'] == pytest.approx(0.045)
    fields = parse_result_line(result_line(summary))
    assert set(RESULT_FIELDS) <= set(fields)
    assert fields['absent_correct'] == '0.667' and fields['within_2cm'] == '0.250' and fields['median_cm'] == '4.50'
    assert fields['worst_cm'] == 'inf'                                        # the missed object is the worst
    assert parse_result_line(result_line(summary_rows(scores[:3])))['worst_cm'] == '6.00'
    assert np.isnan(summary_rows([score('a')])['absent_correct'])             # no absent query: not a rate
    assert np.isnan(summary['grasped'])                                       # no grasp was scored

    # grasped: over found present objects whose grasps were checked (not over misses or absent queries)
    checked = [score('a'), score('b'), score('c'), score('d', status='not_present', error=float('inf'))]
    checked[0].grasped, checked[1].grasped, checked[2].grasped = True, True, False
    assert summary_rows(checked)['grasped'] == pytest.approx(2 / 3)
    assert parse_result_line(result_line(summary_rows(checked)))['grasped'] == '0.667'

    peaks = peak_distribution(scores)
    assert peaks['present']['min'] == 0.7 and peaks['present']['n'] == 4
    assert peaks['absent']['no_cluster'] == 1 and peaks['absent']['max'] == 0.95
    assert separating_bound(peaks) is None                      # 0.95 absent above 0.7 present
    assert separating_bound(peak_distribution(scores[:2] + scores[4:6])) == (0.55, 0.99)


def test_on_object_is_the_true_box_plus_a_centimetre_in_the_object_frame():
    """Inside the box grown by 1 cm; with a yaw the box turns with the object; no extent: not scored."""
    truth = {'center': [0.5, 0.0, 0.05], 'extent': [0.10, 0.02, 0.10]}
    assert on_object(np.array([0.5 + 0.059, 0.0, 0.05]), truth)
    assert not on_object(np.array([0.5 + 0.061, 0.0, 0.05]), truth)
    assert not on_object(np.array([0.5, 0.03, 0.05]), truth)
    turned = dict(truth, yaw=np.pi / 2)                          # long side along base y now
    assert on_object(np.array([0.5, 0.059, 0.05]), turned) and not on_object(np.array([0.53, 0.0, 0.05]), turned)
    assert on_object(None, truth) is False and on_object(np.zeros(3), {'center': [0, 0, 0]}) is None


def test_absent_queries_are_the_catalogue_objects_the_scene_lacks():
    """Every catalogue name not on the table (nor a label); an explicit list wins."""
    assert list(CATALOGUE_NAMES) == list(scenes.CATALOGUE)
    scene = scenes.make_scene(seed=3, object_names=['mug', 'ball'], num_views=1, width=16, height=12)
    absent = absent_names(scene.objects, scene.labels)
    assert absent == [name for name in scenes.CATALOGUE if name not in ('mug', 'ball')]
    assert absent_names(scene.objects, scene.labels, ['kettle']) == ['kettle']


def test_saved_scenes_come_back_exactly(tmp_path):
    """The GPU machine has no open3d: a rendered scan saved here is read back there frame for frame."""
    scene = scenes.make_scene(seed=3, object_names=['mug', 'ball'], num_views=3, width=32, height=24)
    path = save_scene(tmp_path / 'seed.npz', 'seed 3', scene.frames, scene.labels, scene.objects, scene.workspace)
    name, frames, labels, objects, workspace = load_scene(path)
    assert name == 'seed 3' and labels == scene.labels and workspace == scene.workspace
    for a, b in zip(frames, scene.frames):
        for key in ('image', 'depth', 'labels', 'K', 'T_base_optical'):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key
        assert (a.stamp, a.name) == (b.stamp, b.name)
    for key, truth in scene.objects.items():
        assert np.array_equal(objects[key]['center'], truth['center'])
        assert np.array_equal(objects[key]['extent'], truth['extent'])


def test_grasp_clear_checks_the_fingers_against_the_field_and_the_truth():
    """A planned grasp of a bar is clear; moved into a neighbour's true box, or below the table top, it is not.

    The same grasp is judged three ways: as planned (clear of the field above the support and of the other
    object's true box); shifted so that a finger enters the neighbour's box (the field check fails too, as the
    neighbour is occupied there); and with the truth's table top put above its fingertips.
    """
    bar, other = ((0.45, 0.0, 0.013), (0.11, 0.026, 0.026), 0.0), ((0.6, 0.0, 0.04), (0.04, 0.04, 0.08), 0.0)
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': bar, 'block': other})
    config.grasp.max_opening = 0.14
    querier = FieldQuerier(model, teacher, config)
    result = querier.query('bar')
    assert result.grasps, result.grasp_reasons
    planner, grasp = querier.grasp_planner, result.grasps[0]
    support = support_under(planner.occupancy, result.best).height
    truth = {'center': np.array(other[0]), 'extent': np.abs(yaw_matrix(other[2])) @ np.array(other[1])}
    assert grasp_clear(planner, grasp, support, [truth], table_top=0.0)
    moved = copy.deepcopy(grasp)
    moved.pose[:3, 3] = np.array(other[0]) - moved.pose[:3, 1] * (moved.width / 2 + 0.006)   # a finger in the block
    assert not grasp_clear(planner, moved, support, [truth], table_top=0.0)
    assert not grasp_clear(planner, grasp, support, [], table_top=grasp.pose[2, 3] + 0.001)


@pytest.mark.slow
def test_bench_semantic_scores_a_dataset_and_its_absent_objects(scene_dataset, tmp_path, capsys):
    """`f3rm-ros bench semantic --data` trains, asks for every object and every absent catalogue object.

    A few steps only: the errors are whatever they are, but each is the distance from the reported centroid to
    the dataset's centre, every absent query is counted, and the saved voxels score the same again.
    """
    scene, root = scene_dataset
    out, voxels = tmp_path / 'semantic.json', tmp_path / 'voxels'
    code = main(['bench', 'semantic', '--data', str(root), '--steps', '10', '--device', 'cpu', '--json', str(out),
                 '--save-voxels', str(voxels)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    fields = parse_result_line(printed)
    assert set(RESULT_FIELDS) <= set(fields) and fields['queries'] == '2' and fields['absent'] == '6'
    assert 'Peak relevancy of the best cluster' in printed
    data = json.loads(out.read_text())
    absent_names_expected = [n for n in CATALOGUE_NAMES if n not in ('mug', 'ball')]
    assert [q['query'] for q in data['queries']] == ['mug', 'ball'] + absent_names_expected
    for q in data['queries']:
        assert q['status'] in ('found', 'not_present')
        if not q['present']:
            continue
        assert np.allclose(q['truth'], scene.objects[q['query']]['center'])
        if q['centroid'] is not None:
            assert q['error_m'] == pytest.approx(np.linalg.norm(np.subtract(q['centroid'], q['truth'])))
    absent = [q for q in data['queries'] if not q['present']]
    assert data['summary']['absent_correct'] == pytest.approx(np.mean([q['status'] == 'not_present' for q in absent]))
    assert data['scenes'][0]['frames'] == 12 and data['scenes'][0]['steps'] == 10

    saved = sorted(voxels.glob('*.npz'))
    assert len(saved) == 1
    code = main(['bench', 'semantic', '--voxels', str(saved[0]), '--json', str(tmp_path / 'again.json')])
    assert code == 0
    again = json.loads((tmp_path / 'again.json').read_text())
    assert [(q['query'], q['status'], q['centroid']) for q in again['queries']] == \
        [(q['query'], q['status'], q['centroid']) for q in data['queries']]


def test_latency_rows_include_grasps_and_packing():
    """Every stage a planner pays, grasps and the PointCloud2 bytes included; cold queries re-evaluate the voxels."""
    from f3rm_ros.core.query.answer import FieldQuerier
    config, teacher, model = analytic_scene()
    config.grasp.max_opening = 0.14
    querier = FieldQuerier(model, teacher, config, surface_only=True)
    cold = timed_queries(querier, ['ball', 'apple'], 2, cold=True)
    warm = timed_queries(querier, ['ball'], 2, cold=False)
    for row in cold + warm:
        assert set(STAGES) <= set(row) and row['total'] >= sum(row[s] for s in STAGES) * 0.5
        assert row['grasps'] > 0 and row['pack'] > 0 and row['grasp_candidates'] > 0 and row['found'] == 1
    assert all(row['density'] > 0 and row['features'] > 0 for row in cold)
    assert all(row['density'] == 0 and row['features'] == 0 for row in warm)
    heatmap = querier.query('ball').heatmap
    assert len(pack_heatmap(heatmap)) == CLOUD_POINT_STEP * len(heatmap)


@pytest.mark.slow
def test_bench_query_times_a_trained_field(tmp_path, capsys):
    """`f3rm-ros bench query` trains a tiny layout itself and prints the table and the RESULT line."""
    code = main(['bench', 'query', '--steps', '5', '--views', '8', '--width', '48', '--height', '36', '--queries', '2',
                 '--device', 'cpu', '--json', str(tmp_path / 'query.json')])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'cold (voxels evaluated)' in printed and 'warm (voxels cached)' in printed
    assert 'grasps (ms)' in printed and 'pack (ms)' in printed and '115200 voxels' in printed
    fields = parse_result_line(printed)
    assert {'cold_ms', 'warm_ms', 'cold_goal_met', 'warm_goal_met', 'voxels', 'occupied'} <= set(fields)
    assert fields['consistent'] == '1'                          # every cold evaluation kept the same voxels
    data = json.loads((tmp_path / 'query.json').read_text())
    assert len(data['timings']['cold']) == 2 and set(STAGES) <= set(data['timings']['warm'][0])


def test_manipulate_result_lines_count_misses_collisions_and_answers_without_a_pose():
    """One RESULT line per task: fractions over its trials, medians, and a trial with no pose as the worst (inf)."""
    from f3rm_ros.bench.manipulate import Trial, summary_lines
    trials = [Trial('mug handle', 301, 'found', 0.5, 4.0, True, True, 0.8, 0.9, ''),
              Trial('mug handle', 302, 'found', 2.5, 30.0, False, False, 1.2, 0.7, ''),
              Trial('mug handle', 303, 'found', 1.0, 10.0, True, True, 1.0, 0.8, ''),
              Trial('rack peg', 301, 'not_present', float('inf'), float('inf'), False, True, 0.5, float('nan'),
                    'every candidate collides')]
    lines = summary_lines(trials)
    assert [line.split()[1] for line in lines] == ['task=mug_handle', 'task=rack_peg']
    mug = parse_result_line(lines[0])
    assert mug['trials'] == '3' and mug['within'] == '0.67' and mug['collision_free'] == '0.67'
    assert (mug['median_cm'], mug['median_deg'], mug['worst_cm'], mug['worst_deg'], mug['median_s']) == (
        '1.00', '10.0', '2.50', '30.0', '1.00')
    rack = parse_result_line(lines[1])
    assert rack['within'] == '0.00' and rack['worst_cm'] == 'inf' and rack['trials'] == '1'
