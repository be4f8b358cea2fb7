"""Masks: a wrist camera's gripper, fixed in image space, must not be distilled into the field.

A synthetic scan (24 views, 60 steps) whose every view shows a dark "gripper" block at the bottom centre,
labelled as a gripper in the label maps (the labels teacher then distils "gripper" features wherever the field
puts them). Trained without a mask, the field learns gripper features in the scene (a phantom that a "gripper"
query finds); with the mask those pixels are never trained on: "gripper" is not present, and held-out views are
better.
"""
import numpy as np
import pytest
import torch

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.config import make_config
from f3rm_ros.core.capture.frames import PosedFrame, read_dataset, write_dataset
from labels_trainer import labels_trainer

W, H = 64, 48
STEPS = 60
ROWS, COLS = slice(34, 48), slice(22, 42)       # the gripper block: bottom centre
GRIPPER = 99                                     # its label id


def with_gripper(frame, masked):
    image, depth, labels = frame.image.copy(), frame.depth.copy(), frame.labels.copy()
    image[ROWS, COLS] = (40, 40, 45)
    depth[ROWS, COLS] = 0.0                     # closer than a depth camera's minimum range
    labels[ROWS, COLS] = GRIPPER
    mask = None
    if masked:
        mask = np.ones((H, W), bool)
        mask[ROWS, COLS] = False
    return PosedFrame(image, frame.K, frame.T_base_optical, frame.stamp, depth, labels, frame.name, mask)


def make_trainer(frames, scene, seed=0):
    """Build an OnlineTrainer (cpu-tiny, labels teacher) holding `frames`."""
    torch.manual_seed(seed)
    return labels_trainer(make_config('cpu-tiny'), scene, frames, labels={**scene.labels, GRIPPER: 'gripper'})


def train(frames, scene):
    trainer = make_trainer(frames, scene)
    for _ in range(STEPS):
        trainer.step()
    return trainer


def gripper_peak(trainer):
    """Ask a trained field for 'gripper': (status, peak relevancy of its best cluster, 0.5 when none)."""
    from f3rm_ros.core.query.answer import FieldQuerier
    result = FieldQuerier(trainer.model, trainer.teacher, trainer.config, lock=trainer.lock).query('gripper')
    return result.status, 0.5 if np.isnan(result.peak) else result.peak


@pytest.fixture(scope='module')
def scene():
    return scenes.make_scene(seed=0, object_names=['mug', 'box'], num_views=24, width=W, height=H)


@pytest.mark.slow
def test_the_gripper_is_distilled_without_the_mask_and_not_with_it(scene):
    masked = train([with_gripper(f, True) for f in scene.frames], scene)
    unmasked = train([with_gripper(f, False) for f in scene.frames], scene)
    (with_status, with_peak), (without_status, without_peak) = gripper_peak(masked), gripper_peak(unmasked)
    with_psnr, without_psnr = masked.evaluate()['psnr'], unmasked.evaluate()['psnr']
    print(f'\n"gripper": with the mask {with_status} (peak {with_peak:.3f}), without {without_status} (peak '
          f'{without_peak:.3f}); held-out PSNR (gripper pixels excluded) {with_psnr:.2f} / {without_psnr:.2f} dB')
    assert with_status == 'not_present'
    assert without_peak > with_peak + 0.1


def test_masks_round_trip_through_a_dataset_and_every_pixel_masked_is_an_error(scene, tmp_path):
    frames = [with_gripper(f, True) for f in scene.frames[:3]]
    root = write_dataset(tmp_path / 'scan', frames)
    read = read_dataset(root)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(frames, read))
    assert read_dataset(root, downscale=2)[0].mask.shape == (H // 2, W // 2)
    blind = [PosedFrame(f.image, f.K, f.T_base_optical, f.stamp, labels=f.labels, mask=np.zeros((H, W), bool))
             for f in frames]
    trainer = make_trainer(blind, scene)
    with pytest.raises(RuntimeError, match='every training pixel is masked'):
        trainer.step()
