"""When a training model counts as settled (`core.training.maturity`), on an analytic field whose changes are known."""
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from f3rm_ros.core.training.maturity import MaturityTracker, field_change

from analytic_field import analytic_scene


def session_of(model, config, step=0, frames=12, state='training', target=500):
    """Stand in for an `OnlineSession` (what the tracker reads) around an analytic model."""
    trainer = SimpleNamespace(model=model, box=model.box, lock=threading.Lock(), step_count=step, num_frames=frames,
                              last_checkpoint=None)
    return SimpleNamespace(trainer=trainer, store=type('Store', (), {'version': 1, '__len__': lambda self: frames})(),
                           step=step, target_steps=target, state=state, config=config)


def advance(session, steps):
    session.trainer.step_count += steps
    session.step = session.trainer.step_count


def test_unchanged_field_settles_after_a_window_and_a_keyframe_unsettles_it():
    config, teacher, model = analytic_scene()
    session = session_of(model, config, step=100)
    tracker = MaturityTracker(session, window_steps=50, threshold=0.02)
    first = tracker.update()
    assert not first.settled and first.change == -1.0 and first.step == 100 and first.keyframes == 12
    advance(session, 49)
    assert not tracker.update().settled                          # the window is not over
    advance(session, 1)
    settled = tracker.update()
    assert settled.settled and settled.change == pytest.approx(0.0, abs=1e-6) and settled.settled_since_step == 100
    tracker.note_keyframe()
    assert not tracker.last.settled and tracker.last.settled_since_step == 0
    advance(session, 10)
    assert not tracker.update().settled and tracker.last.since_keyframe_s >= 0.0


def test_a_changing_field_does_not_settle_until_training_is_done():
    config, teacher, model = analytic_scene()
    session = session_of(model, config, step=0, target=100)
    tracker = MaturityTracker(session, window_steps=50, threshold=0.02)
    tracker.update()
    model.add_speck(np.array([0.5, 0.0, 0.2]), 0.08)             # a large blob appears: the field changed
    advance(session, 50)
    changed = tracker.update()
    assert not changed.settled and changed.change > 0.02
    model.add_speck(np.array([0.3, 0.2, 0.2]), 0.08)             # and changes again over the last window
    advance(session, 50)
    session.state = 'done'
    done = tracker.update()                                      # but training is done: settled at its last step
    assert done.settled and done.settled_since_step == 100 and done.change > 0.02


def test_field_change_counts_only_occupied_probes():
    alpha = np.array([0.0, 0.0, 1.0, 1.0])
    features = np.eye(4)
    assert field_change((alpha, features), (alpha, features)) == 0.0
    moved = np.array([0.0, 0.0, 1.0, 0.0])
    assert field_change((alpha, features), (moved, features)) == pytest.approx(0.5)   # 1 of 2 occupied probes
    assert np.isnan(field_change((np.zeros(4), features), (np.zeros(4), features)))
