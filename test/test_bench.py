"""Benchmarks a user runs: `bench semantic --data` reads ground truth from any tool's dataset; `bench query` runs.

Training quality is asserted in test_query (trained scene); here the plumbing that feeds the scores.
"""
import json
import os

import numpy as np
import pytest

from f3rm_ros.bench.semantic import QueryScore, dataset_scene, summary_rows
from f3rm_ros.cli import main
from f3rm_ros.core import scenes
from f3rm_ros.core.frames import read_metadata, write_dataset

os.environ.setdefault('HF_HUB_OFFLINE', '1')


@pytest.fixture(scope='module')
def scene_dataset(tmp_path_factory):
    """Write a small synthetic scan as a nerfstudio dataset with labels, objects and workspace."""
    scene = scenes.make_scene(seed=3, object_names=['mug', 'ball'], num_views=12, width=64, height=48)
    root = write_dataset(tmp_path_factory.mktemp('bench') / 'scan', scene.frames, scene.dataset_metadata())
    return scene, root


def test_dataset_ground_truth_round_trip(scene_dataset):
    """Labels, object centres, workspace and label maps come back as the scene made them."""
    scene, root = scene_dataset
    name, frames, labels, objects, workspace = dataset_scene(root)
    assert labels == scene.labels
    assert set(objects) == {'mug', 'ball'}
    for key, truth in scene.objects.items():
        assert np.allclose(objects[key]['center'], truth['center'])
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


def test_success_rates_count_errors_within_each_radius():
    """1 cm, 3 cm, 6 cm and a missing cluster: 1 of 4 within 2 cm, 2 of 4 within 5 cm."""
    scores = [QueryScore('s', q, e, e, 1, 0.01 * (i + 1), None, [0, 0, 0])
              for i, (q, e) in enumerate([('a', 0.01), ('b', 0.03), ('c', 0.06), ('d', float('inf'))])]
    summary = summary_rows(scores)
    assert summary['within_2cm'] == 0.25 and summary['within_5cm'] == 0.5
    assert summary['median_error_m'] == pytest.approx(0.045)
    assert summary['median_latency_s'] == pytest.approx(0.025)


def test_bench_semantic_scores_a_dataset(scene_dataset, tmp_path, capsys):
    """`f3rm-ros bench semantic --data` trains, asks for every object and writes one score per object.

    A few steps only: the errors are whatever they are, but each is the distance from the reported
    centroid to the dataset's centre.
    """
    scene, root = scene_dataset
    out = tmp_path / 'semantic.json'
    code = main(['bench', 'semantic', '--data', str(root), '--steps', '10', '--device', 'cpu', '--json', str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'RESULT queries=2' in printed
    data = json.loads(out.read_text())
    assert [q['query'] for q in data['queries']] == ['mug', 'ball']
    for q in data['queries']:
        assert np.allclose(q['truth'], scene.objects[q['query']]['center'])
        if q['centroid'] is not None:
            assert q['error_m'] == pytest.approx(np.linalg.norm(np.subtract(q['centroid'], q['truth'])))
    assert data['scenes'][0]['frames'] == 12 and data['scenes'][0]['steps'] == 10


def test_bench_query_times_every_stage(capsys):
    """`f3rm-ros bench query` on a small untrained model: a table row per kind with every stage."""
    code = main(['bench', 'query', '--preset', 'cpu-tiny', '--queries', '2', '--device', 'cpu',
                 '--occupied', '0.02'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert '70, 90, 35' in printed and '220500 voxels' in printed
    assert 'cold (field evaluated)' in printed and 'warm (voxels cached)' in printed
    assert 'RESULT cold_heatmap_ms=' in printed
