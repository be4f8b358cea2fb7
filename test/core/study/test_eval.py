"""``f3rm-ros eval``: one CSV row per checkpoint on held-out views; splits; tolerant loading; bad input."""
import csv
import json

import pytest
import torch

from f3rm_ros.cli import main
from f3rm_ros.core.study.evaluation import load_for_study, parse_indices, read_split_file, write_csv_atomic
from f3rm_ros.core.capture.frames import read_dataset

from study_support import tiny_checkpoint, tiny_dataset, tiny_scene


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    scene = tiny_scene()
    data = tiny_dataset(root / 'data', scene)
    first, _ = tiny_checkpoint(root / 'a.ckpt', scene, steps=12, rays_per_batch=128)
    # fewer steps: another configuration (trainer.steps), so a row with its own config id
    second, _ = tiny_checkpoint(root / 'b.ckpt', scene, steps=4, rays_per_batch=128)
    return root, data, first, second


def read_rows(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_eval_writes_a_row_per_checkpoint_and_prints_the_table(study, capsys):
    root, data, first, second = study
    out = root / 'out'
    assert main(['eval', '--checkpoint', str(first), str(second), '--data', str(data), '--downscale', '1',
                 '--eval-frames', '4', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out / 'eval.csv')
    assert [r['step'] for r in rows] == ['12', '4']
    for row in rows:
        assert 5 < float(row['psnr']) < 60 and 0 < float(row['ssim']) <= 1
        assert row['lpips'] == 'n/a' and 'AlexNet weights' in row['notes']       # offline: said why
        assert float(row['depth_mae_m']) >= 0 and -1 <= float(row['feature_cosine']) <= 1
        assert float(row['rays_per_s']) > 0 and float(row['s_per_image']) > 0
        assert row['teacher'] == 'labels' and row['frames'] == '1'
    configs = json.loads((out / 'configs.json').read_text())
    assert set(configs) == {r['config_id'] for r in rows} and rows[0]['config_id'] != rows[1]['config_id']
    assert 'psnr' in printed and 'feature_cosine' in printed and f'results: {out / "eval.csv"}' in printed
    # the longer-trained checkpoint agrees better with its teacher
    assert float(rows[0]['feature_cosine']) > float(rows[1]['feature_cosine'])


@pytest.mark.slow
def test_a_checkpoint_that_partly_fits_is_loaded_with_what_did_not_named(study, tmp_path):
    _, _, first, _ = study
    raw = torch.load(first, weights_only=True)
    name = next(k for k in raw['model'] if k.startswith('feature_field.') and raw['model'][k].ndim == 2)
    raw['model'][name] = torch.zeros(3, 3)          # a tensor of another shape
    raw['model']['stale.weight'] = torch.zeros(2)   # and one the model does not have
    edited = tmp_path / 'edited.ckpt'
    torch.save(raw, edited)
    _, _, state, notes = load_for_study(edited, 'cpu')
    assert state['step'] == 12
    assert any(name in n and 'does not fit' in n for n in notes)
    assert any('stale.weight' in n for n in notes)


@pytest.mark.slow
def test_splits_from_a_file_or_a_list(study, tmp_path):
    _, data, _, _ = study
    frames = read_dataset(data)
    assert parse_indices('1, 3-5,9') == [1, 3, 4, 5, 9]
    split = tmp_path / 'split_indices.json'
    split.write_text(json.dumps({'train': [0, 1, 2, 'frame_00005'], 'test': ['frame_00003.png', 4]}))
    assert read_split_file(split, frames) == ([0, 1, 2, 5], [3, 4])
    split.write_text(json.dumps({'train': [0, 1], 'eval': [1]}))
    with pytest.raises(ValueError, match='both trained on and evaluated'):
        read_split_file(split, frames)
    split.write_text(json.dumps({'eval': [99]}))
    with pytest.raises(ValueError, match='out of range'):
        read_split_file(split, frames)
    split.write_text('[1, 2]')
    with pytest.raises(ValueError, match='expected'):
        read_split_file(split, frames)


@pytest.mark.slow
def test_bad_input_is_refused_without_a_partial_csv(study, capsys):
    root, data, first, _ = study
    out = root / 'bad'
    assert main(['eval', '--checkpoint', str(first), str(root / 'missing.ckpt'), '--data', str(data),
                 '--output', str(out)]) == 2
    assert 'missing.ckpt not found' in capsys.readouterr().err
    assert not (out / 'eval.csv').exists()
    garbage = root / 'garbage.ckpt'
    garbage.write_bytes(b'not a checkpoint')
    assert main(['eval', '--checkpoint', str(first), str(garbage), '--data', str(data), '--output', str(out)]) == 2
    assert 'garbage.ckpt refused' in capsys.readouterr().err     # checked before any work: no row at all
    assert not (out / 'eval.csv').exists()


def test_csv_rows_are_written_whole(tmp_path):
    path = write_csv_atomic(tmp_path / 'x.csv', [{'a': 1.0, 'b': None}, {'a': 2, 'c': 'z'}])
    assert path.read_text().splitlines() == ['a,b,c', '1,n/a,', '2,,z']
    assert not list(tmp_path.glob('.tmp-*'))


def test_lpips_says_why_it_is_not_available(tmp_path, monkeypatch):
    from f3rm_ros.core.study.evaluation import ALEXNET_WEIGHTS, lpips_metric
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    metric, why = lpips_metric(torch.device('cpu'))
    assert metric is None and 'AlexNet weights not in' in why and 'nothing downloaded' in why
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / ALEXNET_WEIGHTS).write_bytes(b'not weights')      # a broken cache file
    metric, why = lpips_metric(torch.device('cpu'))
    assert metric is None and why.startswith('LPIPS n/a: ')
