"""A stop during a long training step writes a consistent checkpoint without waiting for that step.

F3RM's gpu sizes on two CPU cores took 12 s a step; ``ros2 launch`` sends SIGTERM 5 s after SIGINT. Here each
step is made long (the real step, then a 2 s wait holding the trainer's lock, as a slow backward pass would):
a stop in the middle of one cannot take the lock, so it writes the state copied after the previous step. The
checkpoint must hold exactly the parameters that step left (not the live ones, which the step in progress has
changed since: a copy that shares storage would show them), and say that step.
"""
import threading

import torch

from f3rm_ros.core.config import make_config
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.core.training import checkpoints
from f3rm_ros.core.training.online import OnlineSession, SessionSettings
from f3rm_ros.core.training.trainer import OnlineTrainer, load_model

LONG_S = 2.0


def test_stop_in_a_long_step_writes_the_state_after_the_previous_step(tmp_path, monkeypatch):
    assert LONG_S >= checkpoints.LONG_STEP_S            # the session copies the state after such a step
    scene = make_scene(seed=3, object_names=['mug', 'box'], num_views=8, width=48, height=36)
    config = make_config('cpu-tiny', overrides={'trainer': {'steps': 1000, 'checkpoint_every': 0, 'eval_every': 0,
                                                            'rays_per_batch': 64}})
    session = OnlineSession(config, SessionSettings(min_frames=4, checkpoint_dir=str(tmp_path / 'ckpt'),
                                                    teacher_choice='labels'), labels=scene.labels)
    original = OnlineTrainer.step
    after = {}                                   # step -> the parameters it left
    inside = threading.Event()

    def long_step(self):
        with self.lock:
            stats = original(self)
            after[self.step_count] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.step_count >= 3:
                inside.set()
            threading.Event().wait(LONG_S)       # still holding the lock: the step is not over
        return stats
    monkeypatch.setattr(OnlineTrainer, 'step', long_step)
    try:
        for frame in scene.frames[:4]:
            assert session.add_frame(frame)[0]
        session.start()
        assert inside.wait(300), session.state
        ended = session.stop(timeout=0.3, save=True)
        reached = session.step
    finally:
        session.stop(timeout=30.0)
    assert not ended                              # the long step was still running
    _, _, state = load_model(session.checkpoints.path, device='cpu')       # loads
    written = state['step']
    assert written == session.checkpoints.saved_step and written < reached, (written, reached)
    assert written in after
    saved = read_model_state(session.checkpoints.path)
    live_then = after[reached]
    changed = [k for k in saved if not torch.equal(after[written][k], live_then[k])]
    assert changed, 'the step in progress changed no parameter: the test would not tell a copy from the live state'
    for name, value in saved.items():
        assert torch.equal(value, after[written][name]), f'{name} is not the state after step {written}'


def read_model_state(path):
    """Return the model tensors of a checkpoint."""
    from f3rm_ros.core.training.checkpoints import read_checkpoint
    return read_checkpoint(path)['model']
