"""Stopping an online session is prompt whatever its thread is doing, and the last checkpoint is written.

A node under ``ros2 launch`` has 5 s between SIGINT and SIGTERM. Here the teacher takes 1.5 s per chunk of
frames (a CPU CLIP would take longer), twelve new keyframes make three chunks, and `stop` comes in the middle
of the first: the thread must end after that chunk without starting the next, and the checkpoint on disk must
hold the last trained step. (How long a stop takes is measured where numbers belong: `f3rm-ros bench faults`.)
"""
import time

import pytest

from f3rm_ros.core.config import make_config
from f3rm_ros.core.training.online import OnlineSession, SessionSettings
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.core.teachers.labels import LabelsTeacher
from f3rm_ros.core.training.trainer import load_model

CHUNK_S = 1.5


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.02)


@pytest.mark.slow
def test_stop_during_teacher_extraction_returns_within_a_chunk_and_saves(tmp_path, monkeypatch):
    scene = make_scene(seed=3, object_names=['mug', 'box'], num_views=16, width=48, height=36)
    config = make_config('cpu-tiny', overrides={'trainer': {'steps': 1000, 'checkpoint_every': 0, 'eval_every': 0,
                                                            'rays_per_batch': 128}})
    session = OnlineSession(config, SessionSettings(min_frames=4, checkpoint_dir=str(tmp_path / 'ckpt'),
                                                    teacher_choice='labels'), labels=scene.labels)
    original = LabelsTeacher.extract
    slow = {'on': False, 'chunks': 0}

    def extract(self, frames):
        if slow['on']:
            slow['chunks'] += 1
            time.sleep(CHUNK_S)
        return original(self, frames)
    monkeypatch.setattr(LabelsTeacher, 'extract', extract)
    try:
        for frame in scene.frames[:4]:
            assert session.add_frame(frame)[0]
        session.start()
        wait(lambda: session.step >= 3, 120, 'a few training steps')
        slow['on'] = True
        for frame in scene.frames[4:]:
            assert session.add_frame(frame)[0]
        wait(lambda: session.state == 'extracting teacher features', 30, 'the slow extraction')
        time.sleep(0.2)
        started = time.monotonic()
        ended = session.stop(timeout=5.0, save=True)
        took = time.monotonic() - started
    finally:
        session.stop(timeout=10.0)
    assert ended and slow['chunks'] == 1, slow  # the interrupted chunk ended the extraction
    assert session.trainer.num_frames == 4  # the interrupted chunk was not taken (a later sync would take it)
    model, _, state = load_model(session.checkpoints.path, device='cpu')
    assert state['step'] == session.step >= 3
    print(f'stop during teacher extraction: {took:.2f} s (chunk {CHUNK_S} s), checkpoint at step {state["step"]}')
