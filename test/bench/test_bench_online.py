"""`bench online` and `bench teachers` as a user runs them, on scans small enough for a CPU; the warm-up at start.

The numbers (time to every object within 2 cm, teacher images/s) are measured on a GPU (docs/performance.md);
here: what the commands write, that the scan files they carry there are read back, and that a session warms up
before keyframes and still stops promptly.
"""
import json
import logging
import os
import time

import pytest

from f3rm_ros.bench import parse_result_line
from f3rm_ros.cli import main
from f3rm_ros.core.config import make_config
from f3rm_ros.core.training.online import OnlineSession, SessionSettings

os.environ.setdefault('HF_HUB_OFFLINE', '1')

TINY_SCAN = ['--views', '8', '--width', '48', '--height', '36', '--seed', '3']


@pytest.mark.slow
def test_bench_online_reports_every_round_and_gives_up_at_the_timeout(tmp_path, capsys):
    out = tmp_path / 'online.json'
    assert main(['bench', 'online', *TINY_SCAN, '--scenes', str(tmp_path / 'scenes'), '--render-only']) == 0
    assert (tmp_path / 'scenes' / 'seed_3_5x8_48x36.npz').exists()
    # 3 training steps cannot find five objects: the bench must say so (exit 1), not report a time
    code = main(['bench', 'online', '--preset', 'cpu-tiny', *TINY_SCAN, '--scenes', str(tmp_path / 'scenes'),
                 '--rate', '40', '--steps', '3', '--min-frames', '2', '--poll', '0.2', '--timeout', '8',
                 '--json', str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert parse_result_line(printed)['found_all_s'] == 'None'
    assert 'start-up (imports, device)' in printed and 'not within --timeout' in printed
    data = json.loads(out.read_text())
    result, rounds = data['result'], data['rounds']
    assert result['keyframes'] == 8 and result['found_all_s'] is None and result['startup_s'] >= 0
    assert result['scan_s'] > 0
    names = set(result['first_within_s'])
    assert len(names) == 5 and all(v is None for v in result['first_within_s'].values())
    assert rounds and all({f'{n}_cm' for n in names} <= set(r) for r in rounds)
    late = [r for r in rounds if r['after_last_keyframe']]
    assert late and all(r['keyframes'] == 8 for r in late)           # only rounds after the scan are scored
    assert all(any(r[f'{n}_cm'] > 2.0 for n in names) for r in late)  # no round had all five within 2 cm


@pytest.mark.slow
def test_bench_teachers_times_batches_against_the_bare_encoder_on_a_carried_scan(tmp_path, capsys):
    scenes = tmp_path / 'scenes'
    assert main(['bench', 'teachers', '--views', '6', '--width', '48', '--height', '36', '--scenes', str(scenes),
                 '--render-only']) == 0
    rendered = sorted(p.name for p in scenes.iterdir())
    assert rendered == ['seed_0_5x6_48x36.npz']
    out = tmp_path / 'teachers.json'
    code = main(['bench', 'teachers', '--preset', 'cpu-tiny', '--teachers', 'dino', '--batches', '1,2', '--images', '2',
                 '--image-size', '112x84', '--head-sets', 'labels', '--steps', '3', '--warmup', '1', '--views', '6',
                 '--width', '48', '--height', '36', '--layout-repeats', '0', '--scenes', str(scenes),
                 '--json', str(out)])
    assert code == 0, capsys.readouterr().out
    assert sorted(p.name for p in scenes.iterdir()) == rendered     # read back, not rendered again
    data = json.loads(out.read_text())
    teachers = data['teachers']
    assert [row['batch'] for row in teachers] == [1, 2]
    for row in teachers:
        assert row['teacher'] == 'dino' and row['weights'] == 'random' and row['dim'] == 384
        assert row['images_per_s'] > 0 and row['model_only_images_per_s'] > 0
        gh, gw = (int(v) for v in row['grid'].split('x'))
        assert gw > gh                                               # a 4:3 image keeps its aspect on the grid
    (heads,) = data['heads']
    assert heads['heads'] == 'labels' and heads['steps'] == 3 and heads['rays_per_s'] > 0
    assert -1.0 <= heads['text_cosine'] <= 1.0


@pytest.mark.slow
def test_session_warms_up_before_keyframes_and_still_stops_promptly(caplog):
    caplog.set_level(logging.INFO, logger='f3rm_ros.core.training.loop')
    session = OnlineSession(make_config('cpu-tiny'), SessionSettings())
    session.start()
    deadline = time.monotonic() + 60
    while session.state != 'waiting for keyframes (0 of 5)' and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.state == 'waiting for keyframes (0 of 5)', session.status()
    assert any('warmed up in' in r.getMessage() for r in caplog.records)
    assert session.trainer is None                                  # the throwaway model is not the trainer
    assert session.stop(timeout=5.0)
    # stopped while warming up: the thread ends once the (uninterruptible) build returns, well within a launch's 5 s
    session = OnlineSession(make_config('cpu-tiny'), SessionSettings())
    session.start()
    assert session.stop(timeout=5.0) and session.trainer is None
