"""The frame store replaces slots, and the trainer takes replaced frames like new ones."""
import numpy as np
import pytest
import torch

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.config import make_config
from f3rm_ros.core.capture.frames import FrameStore
from f3rm_ros.core.teachers import make_teacher
from f3rm_ros.core.training.trainer import OnlineTrainer


@pytest.mark.slow
def test_a_replaced_slot_gets_new_pixels_features_and_a_fresh_camera():
    scene = scenes.make_scene(seed=0, object_names=['mug', 'ball'], num_views=6, width=48, height=36)
    config = make_config('cpu-tiny')
    config.workspace = scene.workspace
    config.trainer.capacity = 4
    teacher = make_teacher(config.teacher, labels=scene.labels)
    config.feature_field.feature_dim = teacher.dim
    store = FrameStore(4)
    for frame in scene.frames[:4]:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    assert trainer.sync_frames() == 4 and trainer.sync_frames() == 0
    trainer.step()
    appearance = trainer.model.field.embedding_appearance
    trained_before = appearance.trained_rows.clone()
    with pytest.raises(IndexError):
        store.replace(4, scene.frames[4])
    store.replace(1, scene.frames[5])
    assert store.state()[1] == [0, 1, 0, 0]
    assert trainer.sync_frames() == 1
    assert torch.equal(trainer.images[1].cpu(), torch.from_numpy(scene.frames[5].image))
    expected = teacher.extract([scene.frames[5]])[0].to(torch.float16)
    assert torch.allclose(trainer.features[1].cpu().float(), expected.float(), atol=1e-3)
    assert not appearance.trained_rows[1] and bool(appearance.trained_rows[0]) == bool(trained_before[0])
    assert np.allclose(trainer.frames[1].T_base_optical, scene.frames[5].T_base_optical)
    trainer.step()                                                     # trains on with the new view
    store.clear()
    store.add(scene.frames[0])
    assert trainer.sync_frames() == 1 and trainer.num_frames == 1
