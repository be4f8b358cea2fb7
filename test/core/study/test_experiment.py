"""``f3rm-ros experiment frames | seeds | grid``: subsets keep the ends, masks variants, grids, CSV + plot."""
import csv

import numpy as np
import pytest

from f3rm_ros.cli import main
from f3rm_ros.core.study.experiments import fraction_count, spread

from study_support import tiny_dataset, tiny_scene


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp('experiment')
    scene = tiny_scene(views=10, width=48, height=36)
    plain = tiny_dataset(root / 'plain', scene)
    for frame in scene.frames:          # a gripper in the lower right corner of every view, masked
        frame.mask = np.ones(frame.image.shape[:2], bool)
        frame.mask[24:, 32:] = False
    masked = tiny_dataset(root / 'masked', scene)
    return root, plain, masked


def read_rows(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


COMMON = ['--preset', 'cpu-tiny', '--steps', '3', '--downscale', '1', '--eval-frames', '4',
          '--config', 'config/f3rm.yaml']


def test_subsets_are_spread_and_keep_the_first_and_last_frames():
    pool = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert spread(pool, 2) == [0, 9] and spread(pool, 3) == [0, 5, 9] and spread(pool, 1) == [0]
    assert spread(pool, 9) == pool and fraction_count(0.5, 9) == 4 and fraction_count(0.01, 9) == 1
    with pytest.raises(ValueError, match='empty frame subset'):
        spread(pool, 0)
    with pytest.raises(ValueError, match='only 9 are available'):
        spread(pool, 10)
    with pytest.raises(ValueError, match=r'in \(0, 1\]'):
        fraction_count(0.0, 9)


@pytest.mark.slow
def test_frames_study_writes_runs_summary_and_plot(datasets, capsys):
    root, plain, _ = datasets
    out = root / 'frames'
    assert main(['experiment', 'frames', '--data', str(plain), '--fractions', '0.5', '--counts', '2',
                 '--output', str(out), *COMMON]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out / 'runs.csv')
    shown = [(r['subset'], r['train_frames'], r['step']) for r in rows]
    assert shown == [('fraction 0.5', '4', '3'), ('count 2', '2', '3')]
    assert all(float(r['psnr']) > 0 and float(r['feature_cosine']) <= 1 and float(r['train_seconds']) > 0
               for r in rows)
    summary = read_rows(out / 'summary.csv')
    assert [s['subset'] for s in summary] == ['fraction 0.5', 'count 2'] and summary[0]['runs'] == '1'
    assert (out / 'plot.png').stat().st_size > 10000
    assert f'plot: {out / "plot.png"}' in printed and 'fraction 0.5' in printed


@pytest.mark.slow
def test_seeds_study_with_masks_dropped_and_corrupted(datasets):
    root, _, masked = datasets
    out = root / 'seeds'
    assert main(['experiment', 'seeds', '--data', str(masked), '--seeds', '0', '1', '--mask-drop',
                 '--mask-corrupt', '1',
                 '--output', str(out), *COMMON]) == 0
    rows = read_rows(out / 'runs.csv')
    assert [(r['masks'], r['seed']) for r in rows] == [('as recorded', '0'), ('as recorded', '1'),
                                                       ('dropped', '0'), ('dropped', '1'),
                                                       ('1 corrupt', '0'), ('1 corrupt', '1')]
    summary = read_rows(out / 'summary.csv')
    assert [(s['masks'], s['runs']) for s in summary] == [('as recorded', '2'), ('dropped', '2'), ('1 corrupt', '2')]
    assert float(summary[0]['psnr_std']) >= 0
    # seeds change the result
    assert rows[0]['psnr'] != rows[1]['psnr']


@pytest.mark.slow
def test_grid_checkpoints_every_n_steps_and_scores_each(datasets):
    root, plain, _ = datasets
    out = root / 'grid'
    args = [a for a in COMMON if a not in ('--steps', '3')]
    assert main(['experiment', 'grid', '--data', str(plain), '--set', 'trainer.steps=2,3',
                 '--set', 'trainer.rays_per_batch=128', '--checkpoint-every', '2', '--output', str(out), *args]) == 0
    rows = read_rows(out / 'runs.csv')
    assert [(r['trainer.steps'], r['step']) for r in rows] == [('2', '2'), ('3', '2'), ('3', '3')]
    assert all((root / 'grid' / 'runs').glob('*/checkpoints/step_000002.ckpt'))
    assert float(rows[2]['train_seconds']) > float(rows[1]['train_seconds'])


@pytest.mark.parametrize('extra, message', [
    (['frames', '--counts', '0'], 'empty frame subset'),
    (['frames', '--fractions', '1.5'], 'must be in (0, 1]'),
    (['seeds', '--mask-corrupt', '2'], 'need masks'),
    (['grid', '--set', 'trainer.nothing=1,2'], 'trainer.nothing'),
    (['frames', '--eval-frames', '40'], 'out of range'),
])
def test_bad_studies_are_refused_before_training(datasets, capsys, extra, message):
    root, plain, _ = datasets
    out = root / 'bad'
    args = ['experiment', extra[0], '--data', str(plain), '--output', str(out), *COMMON, *extra[1:]]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (out / 'runs.csv').exists()
