"""What a user gets from rendering and held-out scoring: chunking changes nothing, aligned poses are the refined ones.

`trainer.eval_chunk_rays` (and on CUDA `trainer.render_memory_mb`) only cut a view into chunks: the rendered
picture is the same for any chunk size, wide outputs (features) come back in host memory, and asking for colour
alone skips the feature head. `trainer.eval_poses: aligned` scores a held-out view from the pose refinement of
its nearest training cameras; with no refinement both settings give the same PSNR.
"""
import numpy as np
import pytest
import torch

from f3rm_ros.core.config import make_config
from f3rm_ros.core.training.render import render_camera
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.core.training.trainer import make_cameras

from study_support import labels_trainer


@pytest.fixture(scope='module')
def trainer():
    """Return a cpu-tiny trainer on a small synthetic table after a few steps (pose refinement on: SO3xR3)."""
    scene = make_scene(seed=5, object_names=['mug', 'ball'], num_views=10, width=32, height=24)
    config = make_config('cpu-tiny', overrides={'trainer': {'steps': 20, 'eval_chunk_rays': 4096}})
    trainer, _ = labels_trainer(scene, config)
    for _ in range(5):
        trainer.step()
    return trainer


@pytest.mark.slow
def test_chunk_size_does_not_change_the_picture(trainer):
    """A view rendered 50 rays at a time equals the same view in one chunk; features arrive on the host."""
    frame = trainer.frames[trainer.eval_indices[0]]
    camera = make_cameras([frame], trainer.box, trainer.device)
    whole = render_camera(trainer.model, camera, memory_mb=1024, max_rays=10 ** 6)
    small = render_camera(trainer.model, camera, memory_mb=1024, max_rays=50)
    assert whole['rgb'].shape == (24, 32, 3) and whole['feature'].shape == (24, 32, trainer.teacher.dim)
    assert whole['feature'].device.type == 'cpu'
    for name in ('rgb', 'depth', 'accumulation'):
        assert torch.allclose(whole[name], small[name], atol=1e-5), name
    assert torch.allclose(whole['feature'].float(), small['feature'].float(), atol=1e-2)
    colour = render_camera(trainer.model, camera, memory_mb=1024, max_rays=50, names=('rgb',))
    assert set(colour) == {'rgb'} and torch.allclose(colour['rgb'], whole['rgb'], atol=1e-5)
    assert trainer.model.training and trainer.model.render_features        # left as it was


@pytest.mark.slow
def test_trainer_render_returns_what_it_always_did(trainer):
    """trainer.render: rgb, depth in metres, accumulation, feature as numpy, at the asked size."""
    frame = trainer.frames[0]
    out = trainer.render(frame.T_base_optical, frame.K, frame.width, frame.height)
    assert set(out) == {'rgb', 'depth', 'accumulation', 'feature'}
    assert out['rgb'].shape == (24, 32, 3) and out['depth'].shape == (24, 32) and out['accumulation'].shape == (24, 32)
    assert out['feature'].dtype == np.float32 and out['feature'].shape == (24, 32, trainer.teacher.dim)


@pytest.mark.slow
def test_aligned_held_out_poses_follow_the_refined_training_cameras(trainer):
    """Every training camera refined by the same shift: a held-out view is scored from its pose plus that shift."""
    adjustment = trainer.model.camera_optimizer.pose_adjustment
    saved = adjustment.detach().clone()
    index = trainer.eval_indices[0]
    try:
        with torch.no_grad():
            adjustment.zero_()
            given, aligned = trainer.evaluate(poses='given')['psnr'], trainer.evaluate(poses='aligned')['psnr']
            assert aligned == pytest.approx(given)                           # nothing refined: the same score
            adjustment[trainer.train_indices, 0] = 0.05                      # x translation, field units
            correction = trainer.pose_correction(index)
            assert torch.allclose(correction[:, :3], torch.eye(3), atol=1e-6)
            assert torch.allclose(correction[:, 3], torch.tensor([0.05, 0.0, 0.0]), atol=1e-6)
            shifted = trainer.evaluate([index], poses='aligned')['psnr']
            frame = trainer.frames[index]
            camera = make_cameras([frame], trainer.box, trainer.device, correction[None])
            rgb = render_camera(trainer.model, camera, 1024, 4096, ('rgb',))['rgb']
            expected = -10 * np.log10(torch.mean((rgb - torch.from_numpy(frame.image / 255.0).float()) ** 2).item())
            assert shifted == pytest.approx(expected, abs=1e-3)
            plain = render_camera(trainer.model, make_cameras([frame], trainer.box, trainer.device), 1024, 4096,
                                  ('rgb',))['rgb']
            assert not torch.allclose(rgb, plain, atol=1e-4)                 # the shift moved the view
    finally:
        with torch.no_grad():
            adjustment.copy_(saved)


def test_bad_settings_are_refused_with_the_choices():
    """A typo in the new keys is refused when the config is built, naming what is allowed."""
    with pytest.raises(ValueError, match='live'):
        make_config('cpu-tiny', overrides={'model': {'feature_weights': 'alive'}})
    with pytest.raises(ValueError, match='aligned'):
        make_config('cpu-tiny', overrides={'trainer': {'eval_poses': 'refined'}})
    with pytest.raises(ValueError, match='render_memory_mb'):
        make_config('cpu-tiny', overrides={'trainer': {'render_memory_mb': 0.0}})
    assert make_config('gpu').model.feature_weights == 'detached'
