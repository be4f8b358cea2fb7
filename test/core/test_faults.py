"""The fault probe's findings, each fixed at its core object without ROS traffic.

Stamps far from the clock and one outlier stamp, a camera that changes resolution mid-scan, 12 MP frames,
a full disk under the capture's dataset and under the trainer's checkpoints (a real tmpfs when this runs as
root), checkpoints that are unsafe (a pickle payload), truncated or of another scan, the trainer's health
levels, the teacher that will not silently be random, the hub that is not called offline and fails fast
when unreachable, core logging routed to a node's ROS logger, and one YAML overlay for every command.
"""
import argparse
import json
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from f3rm_ros.core.capture.session import CaptureSession, CaptureSettings
from f3rm_ros.core.capture.stamps import STAMP_RECOVERY_FRAMES
from f3rm_ros.core.config import make_config
from f3rm_ros.core.capture.frames import read_dataset
from f3rm_ros.core.training.online import OnlineSession, SessionSettings
from f3rm_ros.core.training.checkpoints import CheckpointError, CheckpointWriteError, atomic_torch_save, read_checkpoint
from f3rm_ros.harness.bad_inputs import fill_disk, PicklePayload

from repo_root import ROOT

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never reach the hub from tests
K = np.array([[80.0, 0, 48], [0, 80.0, 36], [0, 0, 1]])
W, H = 96, 72


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def textured(seed=0, width=W, height=H):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def pose(x):
    T = np.eye(4)
    T[0, 3] = x
    return T


def capture(tmp_path=None, now=None, **settings):
    values = dict(min_interval_s=0.0, min_translation=0.05, min_sharpness=0.0, capacity=50, pose_wait_s=0.5,
                  dataset_dir=str(tmp_path / 'scan') if tmp_path else '')
    values.update(settings)
    s = CaptureSession(CaptureSettings(**values), clock=Clock(), stamp_clock=now)
    s.set_camera_info(K, W, H)
    return s


def offer(s, stamp, x, width=W, height=H, depth=None):
    s.add_pose(stamp, pose(x))
    if depth is not None:
        s.add_aux('depth', stamp, lambda: depth)
    image = textured(int(stamp * 10) % 1000, width, height)
    return s.add_image(stamp, width, height, lambda: image)[0]


# ------------------------------------------------------------------------------------------ stamps, sizes

def test_stamps_minutes_from_the_clock_are_refused_and_one_outlier_does_not_block_the_scan():
    now = Clock(10_000.0)
    s = capture(now=now)
    ahead = offer(s, now.now + 3600, x=0.0)
    assert ahead.kind == 'stamp' and 'ahead of' in ahead.reason and 'synchronise' in ahead.reason
    behind = offer(s, now.now - 3600, x=0.0)
    assert behind.kind == 'stamp' and 'behind' in behind.reason and 'use_sim_time' in behind.reason
    assert offer(s, now.now, x=0.0).kept                    # the refused ones did not become the reference
    outlier = offer(s, now.now + 60, x=0.2)                 # within the skew: kept, and ahead of what follows
    assert outlier.kept
    kinds = [offer(s, now.now + 1 + i, x=0.4 + 0.2 * i).kind for i in range(STAMP_RECOVERY_FRAMES)]
    assert kinds[:-1] == ['stamp'] * (STAMP_RECOVERY_FRAMES - 1) and kinds[-1] == 'keyframe'
    assert 'outlier' in s.stamp_note
    assert offer(s, now.now + 10, x=2.0).kept                # the stream goes on
    s.update_settings(max_stamp_skew_s=0.0)                  # 0 = no check (a bag without --clock, say)
    assert offer(s, now.now + 7200, x=3.0).kept


def test_a_resolution_change_is_refused_until_a_new_scan():
    s = capture()
    assert offer(s, 1.0, x=0.0).kept
    s.set_camera_info(K * [[2], [2], [1]], 2 * W, 2 * H)      # the driver switched to 192 x 144, camera_info too
    refused = offer(s, 1.1, x=0.5, width=2 * W, height=2 * H)
    assert refused.kind == 'resolution' and 'new_scan' in refused.reason and f'{W} x {H}' in refused.reason
    assert s.health() == ('ok', '')
    s.clear()
    assert offer(s, 1.2, x=0.5, width=2 * W, height=2 * H).kept


def test_large_frames_are_stored_downscaled_with_their_intrinsics(tmp_path):
    s = capture(tmp_path, max_image_side=64)
    s.set_camera_info(K, W, H)
    depth = np.full((H, W), 1.5, np.float32)
    kept = offer(s, 1.0, x=0.0, depth=depth)
    frame = kept.frame
    assert (frame.width, frame.height) == (64, 48) and 'stored at 64 x 48' in kept.reason
    np.testing.assert_allclose(frame.K[:2], K[:2] * (64 / 96), rtol=1e-3, atol=0.5)
    assert frame.depth.shape == (48, 64) and np.all(frame.depth == 1.5)
    on_disk = read_dataset(tmp_path / 'scan')[0]
    assert on_disk.image.shape == (48, 64, 3)
    assert offer(s, 1.1, x=0.5, depth=depth).kept           # the same camera: the same stored size


# ------------------------------------------------------------------------------------------ disk full

@contextmanager
def small_disk(tmp_path, size_kb):
    """Mount a tmpfs of `size_kb` KB (root only; skips otherwise), unmounted afterwards whatever happens."""
    folder = tmp_path / 'small_disk'
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs needs root')
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs', str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    try:
        yield folder
    finally:
        subprocess.run(['umount', '-l', str(folder)], capture_output=True)


def test_capture_on_a_full_disk_reports_an_error_leaves_nothing_half_written_and_recovers(tmp_path):
    with small_disk(tmp_path, 1024) as disk:
        s = capture(dataset_dir=str(disk / 'scan'))
        assert offer(s, 1.0, x=0.0).kept
        ballast = fill_disk(disk, 4)
        failed = offer(s, 1.1, x=0.5)
        assert failed.kind == 'disk' and 'disk full' in failed.reason and 'tries again' in failed.reason
        level, why = s.health()
        assert level == 'error' and 'disk full' in why
        assert not [p.name for p in disk.rglob('*') if '.tmp' in p.name]
        assert len(json.loads((disk / 'scan' / 'transforms.json').read_text())['frames']) == 1
        ballast.unlink()                                     # space comes back
        kept = offer(s, 1.2, x=0.5)
        assert kept.kept and 'works again' in kept.reason and s.health() == ('ok', '')
        frames = read_dataset(disk / 'scan')
        assert [f.stamp for f in frames] == pytest.approx([1.0, 1.2])


class FakeTrainer:
    """What OnlineSession needs of a trainer to save: a checkpoint of `mb` MB through the real atomic writer."""

    def __init__(self, mb=1.2):
        self.step_count, self.num_frames, self.device, self.last_checkpoint = 7, 3, 'cpu', None
        self.tensor = torch.zeros(int(mb * 1e6 / 4))

    def save_checkpoint(self, path, scan_id=''):
        atomic_torch_save({'meta_json': json.dumps({'step': self.step_count}), 'model': {'x': self.tensor}}, path)
        self.last_checkpoint = path
        return path


def test_trainer_on_a_full_disk_says_disk_full_leaves_no_temporary_and_recovers(tmp_path):
    with small_disk(tmp_path, 2048) as disk:
        session = OnlineSession(make_config('cpu-tiny'), SessionSettings(checkpoint_dir=str(disk / 'ckpt')))
        session.loop.trainer = FakeTrainer()
        (disk / 'ckpt').mkdir()
        ballast = fill_disk(disk, 600)
        assert not session.checkpoints.try_save(session.trainer, '')   # the training loop: reported, not fatal
        level, why = session.health()
        assert level == 'error' and 'disk full' in why and 'no space left' in why
        assert not (disk / 'ckpt' / '.tmp-latest.ckpt').exists() and not session.checkpoints.path.exists()
        with pytest.raises(CheckpointWriteError, match='disk full'):
            session.save()                                               # the ~/save service says so too
        ballast.unlink()
        session.save()
        assert session.checkpoints.path.exists() and not session.checkpoints.write_error
        assert session.health() == ('ok', '')


# ------------------------------------------------------------------------------------------ checkpoints

def test_a_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'evil.ckpt'
    torch.save({'meta_json': '{}', 'model': {}, 'x': PicklePayload(marker)}, path)
    with pytest.raises(CheckpointError, match='refused: it holds Python objects') as error:
        read_checkpoint(path)
    assert 'GLOBAL io.open' in str(error.value) and not marker.exists()


def test_a_resuming_session_sets_aside_truncated_unsafe_and_foreign_checkpoints(tmp_path):
    marker = tmp_path / 'payload-ran'
    cases = {'truncated': b'PK\x03\x04' + b'\0' * 100, 'empty': b'',
             'unsafe': None, 'foreign': None}
    for name in cases:
        ckpt = tmp_path / name
        ckpt.mkdir()
        path = ckpt / 'latest.ckpt'
        if name in ('truncated', 'empty'):
            path.write_bytes(cases[name])
        elif name == 'unsafe':
            torch.save({'meta_json': '{}', 'model': {}, 'x': PicklePayload(marker)}, path)
        else:
            torch.save({'meta_json': json.dumps({'version': 2, 'step': 5, 'num_frames': 1, 'capacity': 4,
                                                 'config': {}, 'teacher': {}, 'scan_id': 'yesterday'}),
                        'model': {}}, path)
        session = OnlineSession(make_config('cpu-tiny'), SessionSettings(checkpoint_dir=str(ckpt), resume=True))
        assert session.checkpoints.read_for_resume('today') is None
        level, why = session.health()
        expected = {'truncated': 'truncated or corrupt', 'empty': '0 bytes; truncated or corrupt',
                    'unsafe': 'Python objects', 'foreign': 'scan yesterday'}
        assert level == 'error' and expected[name] in why and 'training from scratch' in why, why
        assert not path.exists() and (ckpt / 'latest.ckpt.refused').exists()
    assert not marker.exists()


def test_a_new_scan_keeps_the_old_checkpoint_as_previous(tmp_path):
    (tmp_path / 'ckpt').mkdir()
    (tmp_path / 'ckpt' / 'latest.ckpt').write_bytes(b'yesterday')
    session = OnlineSession(make_config('cpu-tiny'), SessionSettings(checkpoint_dir=str(tmp_path / 'ckpt'),
                                                                     dataset_dir=str(tmp_path / 'scan')))
    summary = session.resume_from_disk()                     # resume is false by default: a new scan
    assert summary['previous'].endswith('previous.ckpt') and summary['frames'] == 0
    assert (tmp_path / 'ckpt' / 'previous.ckpt').read_bytes() == b'yesterday'


# ------------------------------------------------------------------------------------------ health, scans

def test_trainer_health_levels():
    session = OnlineSession(make_config('cpu-tiny'), SessionSettings(stall_timeout_s=5.0))
    assert session.health() == ('ok', '')
    session.loop.trainer = FakeTrainer()
    session.loop.target_steps = 100
    session.progress.last = time.monotonic() - 6.0
    session.progress.state = 'training'
    level, why = session.health()
    assert level == 'error' and 'stalled: no step for 6 s' in why
    session.progress.state = 'extracting teacher features'
    assert session.health()[0] == 'warn'
    session.pause()                                          # paused: not expected to step
    assert session.health() == ('ok', '')
    session.choice.warning = 'labels teacher instead of clip: CLIP weights could not be loaded'
    assert session.health() == ('warn', session.choice.warning)


def test_a_new_scan_id_resets_the_session_but_the_first_one_is_adopted():
    from f3rm_ros.core.scenes.table import make_scene
    frames = make_scene(seed=0, object_names=['mug'], num_views=3, width=32, height=24).frames
    session = OnlineSession(make_config('cpu-tiny'), SessionSettings())
    session.add_frame(frames[0])
    assert not session.set_scan('scan-a') and len(session.store) == 1      # adopted: the frame is of scan-a
    assert session.set_scan('scan-b') and session.status()['scan_id'] == 'scan-b'
    assert session.add_frame(frames[1])[0]                  # arrives while the reset is pending: kept for after
    session.loop.apply_reset()                              # what the training thread does next
    assert [f.stamp for f in session.store.snapshot()] == [frames[1].stamp]


# ------------------------------------------------------------------------------------------ teacher

def test_random_weight_clip_is_refused_unless_allowed():
    from f3rm_ros.core.teachers import RandomTeacherRefused, choose_teacher
    config = make_config('cpu-tiny')
    config.teacher.name = 'clip'
    with pytest.raises(RandomTeacherRefused, match='allow_random_teacher: true') as error:
        choose_teacher(config, labels=None, choice='auto', allow_random=False)
    assert 'HF_HUB_OFFLINE' in str(error.value)


def test_the_hub_is_not_contacted_offline_and_an_unreachable_hub_fails_within_2_s(monkeypatch):
    import socket

    from huggingface_hub import constants

    from f3rm_ros.core.teachers import clip
    import open_clip
    if clip.cached_hub_file(open_clip.get_pretrained_cfg('ViT-B-16', 'openai')['hf_hub']):
        pytest.skip('the openai ViT-B-16 weights are in the local Hugging Face cache')
    calls = []
    real = socket.create_connection
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(RuntimeError, match='HF_HUB_OFFLINE is set'):
        clip.load_clip('ViT-B-16', 'openai', torch.device('cpu'))
    assert calls == []
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'https://10.255.255.1')   # a black hole: never answers
    with pytest.raises(RuntimeError, match='did not answer within 2 s'):
        clip.load_clip('ViT-B-16', 'openai', torch.device('cpu'))


def test_core_logging_reaches_the_owning_node_logger(monkeypatch):
    from f3rm_ros.ros.logs import route_core_logging, unroute_core_logging

    class Recorder:
        def __init__(self):
            self.lines = []

        def __getattr__(self, level):
            return lambda text: self.lines.append((level, text))

    # once the real launch library is imported (test_ros_launch, same process) new loggers are its LaunchLogger,
    # which does not propagate; nodes never run in the launch process, so make these plain loggers again
    for name in ('f3rm_ros.core.teachers.clip', 'f3rm_ros.core.query.answer', 'f3rm_ros.core.geometry'):
        monkeypatch.setattr(logging.getLogger(name), 'propagate', True)
    trainer, query = SimpleNamespace(log=Recorder()), SimpleNamespace(log=Recorder())
    trainer.get_logger = lambda: trainer.log
    query.get_logger = lambda: query.log
    route_core_logging(trainer, ('f3rm_ros.core.training.online', 'f3rm_ros.core.teachers'))
    route_core_logging(query, ('f3rm_ros.core.query.answer',))
    try:
        logging.getLogger('f3rm_ros.core.teachers.clip').warning('RANDOM weights')
        logging.getLogger('f3rm_ros.core.query.answer').info('answered')
        logging.getLogger('f3rm_ros.core.geometry').error('nobody claims this')
    finally:
        unroute_core_logging(trainer)
        unroute_core_logging(query)
    assert trainer.log.lines == [('warning', '[f3rm_ros.core.teachers.clip] RANDOM weights'),
                                 ('error', '[f3rm_ros.core.geometry] nobody claims this')]
    assert query.log.lines == [('info', '[f3rm_ros.core.query.answer] answered')]
    assert not [h for h in logging.getLogger('f3rm_ros').handlers if type(h).__name__ == 'RosLogHandler']


# ------------------------------------------------------------------------------------------ config

def test_query_command_reads_the_yaml_train_reads():
    from f3rm_ros.commands.query import query_config
    checkpoint_config = make_config('cpu-tiny')
    checkpoint_config.workspace.min_xyz = (-1.0, -1.0, 0.0)
    args = argparse.Namespace(config=[str(ROOT / 'config' / 'f3rm.yaml')], negatives=None, threshold=None,
                              percentile=None, alpha_threshold=None, voxel_size=None, clip_weights=None,
                              device='auto', crop=None)
    config = query_config(checkpoint_config, args)          # was KeyError: 'trainer.ros__parameters'
    assert config.query.negatives == ('object', 'things', 'stuff', 'texture') and config.grasp.max_opening == 0.08
    assert config.workspace.min_xyz == (-1.0, -1.0, 0.0)      # the checkpoint's field is not overlaid
    args.negatives = ''
    assert query_config(checkpoint_config, args).query.mode == 'cosine'
