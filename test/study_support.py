"""A tiny synthetic dataset and a briefly trained checkpoint for the study tools' tests (eval, render, export)."""
import os
from pathlib import Path

from f3rm_ros.core.config import make_config
from f3rm_ros.core.capture.frames import FrameStore, write_dataset
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.core.teachers import choose_teacher
from f3rm_ros.core.training.trainer import OnlineTrainer

os.environ.setdefault('HF_HUB_OFFLINE', '1')

OBJECTS = ['mug', 'ball', 'box']


def tiny_scene(views: int = 16, width: int = 64, height: int = 48, seed: int = 3):
    """Return the test table at a small size (cheap to render and to train on)."""
    return make_scene(seed=seed, object_names=OBJECTS, num_views=views, width=width, height=height)


def tiny_dataset(root: Path, scene=None) -> Path:
    """Write the scene as a nerfstudio dataset with labels, workspace and object boxes."""
    scene = scene or tiny_scene()
    return write_dataset(Path(root), scene.frames, metadata=scene.dataset_metadata())


def labels_trainer(scene, config):
    """Return (trainer, teacher): an OnlineTrainer on every frame of `scene` with its labels teacher.

    `config.workspace` is set to the scene's.
    """
    config.workspace = scene.workspace
    teacher, _ = choose_teacher(config, scene.labels, 'labels')
    store = FrameStore(config.trainer.capacity)
    for frame in scene.frames:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    return trainer, teacher


def tiny_checkpoint(path: Path, scene, steps: int = 40, **trainer):
    """Train cpu-tiny briefly with the labels teacher and save a checkpoint; returns (path, trainer)."""
    config = make_config('cpu-tiny', overrides={'trainer': {'steps': steps, **trainer}})
    model_trainer, _ = labels_trainer(scene, config)
    for _ in range(steps):
        model_trainer.step()
    return model_trainer.save_checkpoint(Path(path)), model_trainer
