"""An `OnlineTrainer` on a synthetic scene with the ground-truth labels teacher, as training and query tests use it."""
from f3rm_ros.core.capture.frames import FrameStore
from f3rm_ros.core.teachers import make_teacher
from f3rm_ros.core.training.trainer import OnlineTrainer


def labels_trainer(config, scene, frames=None, labels=None):
    """Return an `OnlineTrainer` of `config` holding `frames` (default the scene's), synced.

    The config gets the scene's workspace and the teacher's width; `labels` (default the scene's) name the ids.
    """
    config.workspace = scene.workspace
    teacher = make_teacher(config.teacher, labels=scene.labels if labels is None else labels)
    config.feature_field.feature_dim = teacher.dim
    store = FrameStore(config.trainer.capacity)
    for frame in scene.frames if frames is None else frames:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    return trainer
