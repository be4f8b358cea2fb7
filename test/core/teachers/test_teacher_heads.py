"""Teachers beyond CLIP: DINO (random weights), several heads at once, custom feature files, predicted normals."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from f3rm_ros.core.config import TeacherConfig, make_config
from f3rm_ros.core.capture.frames import FrameStore, read_dataset, write_dataset
from f3rm_ros.core.query.relevancy import embed_query
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.core.teachers import RandomTeacherRefused, choose_teacher, is_random, make_teacher, teacher_parts
from f3rm_ros.core.training.checkpoints import read_checkpoint
from f3rm_ros.core.training.trainer import OnlineTrainer, load_model

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never reach the hub from tests

STEPS = 45
CUSTOM_GRID = (6, 8)   # coarser than the labels teacher's 9x12 grid at 96x72: resampled to it


def noise(height, width, seed=0):
    """Make a random RGB image."""
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def dino():
    """DINOv2 ViT-S/14 with random weights at a 42-px shorter side (3 patches): cheap on a CPU."""
    return make_teacher(TeacherConfig(name='dino', dino_weights='', image_size=42, batch_size=2, device='cpu'))


def test_dino_gives_aligned_patch_tokens(dino):
    """384-d tokens, one per 14-px patch, on CLIP's grid at F3RM's 336 px; batches equal single images."""
    assert dino.dim == 384 and dino.patch_size == 14 and is_random(dino)
    at_336 = copy.copy(dino)
    at_336.image_size = 336
    assert at_336.grid_shape(480, 640) == (24, 32) and at_336.grid_shape(640, 480) == (32, 24)  # CLIP ViT-L/14@336
    images = [noise(72, 96, seed) for seed in range(3)]
    features = dino.extract_images(images)
    assert features.shape == (3, 3, 4, 384) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std(dim=(1, 2)).mean() > 0
    assert torch.allclose(features[1:2], dino.extract_images(images[1:2]), atol=1e-4)
    with pytest.raises(ValueError, match='no text encoder'):
        dino.encode_text(['mug'])


@pytest.mark.slow
def test_dino_weights_file_and_refusals(dino, tmp_path):
    """A local weights file is what runs; missing files, the hub offline and random weights are refused."""
    path = tmp_path / 'dinov2_vits14.pth'
    torch.save(dino.model.state_dict(), path)
    loaded = make_teacher(TeacherConfig(name='dino', dino_weights=str(path), image_size=42, device='cpu'))
    assert not is_random(loaded)
    image = [noise(72, 96, 7)]
    assert torch.allclose(loaded.extract_images(image), dino.extract_images(image), atol=1e-5)
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        make_teacher(TeacherConfig(name='dino', dino_weights='/nowhere.pth'))
    with pytest.raises(RuntimeError, match='HF_HUB_OFFLINE'):
        make_teacher(TeacherConfig(name='dino', dino_weights='timm', device='cpu'))
    config = make_config('cpu-tiny', overrides={'teacher': {'dino_weights': '', 'device': 'cpu'}})
    with pytest.raises(RandomTeacherRefused, match='allow_random_teacher'):
        choose_teacher(config, {1: 'mug'}, 'labels+dino', allow_random=False)
    assert teacher_parts('dino+clip') == ['clip', 'dino']
    for bad in ('clip+labels', 'dino+dino', 'sam'):
        with pytest.raises(ValueError):
            teacher_parts(bad)


def write_custom_features(root, frames):
    """Give each frame a 5-channel feature file (cell mean colour, object share, 1) on `CUSTOM_GRID`."""
    meta = json.loads((root / 'transforms.json').read_text())
    (root / 'features').mkdir()
    h, w = CUSTOM_GRID
    for entry, frame in zip(meta['frames'], frames):
        image = frame.image.astype(np.float32) / 255.0
        cells = image.reshape(h, frame.height // h, w, frame.width // w, 3).mean(axis=(1, 3))
        objects = (frame.labels > 1).reshape(h, frame.height // h, w, frame.width // w).mean(axis=(1, 3))
        features = np.concatenate([cells, objects[..., None], np.ones((h, w, 1))], axis=-1).astype(np.float16)
        name = f'features/{frame.name}.npy'
        np.save(root / name, features)
        entry['feature_file_path'] = name
    (root / 'transforms.json').write_text(json.dumps(meta))


@pytest.fixture(scope='module')
def three_heads(tmp_path_factory):
    """Labels (text) + random DINO + custom features from transforms.json, trained together on a tiny table."""
    scene = make_scene(seed=3, object_names=['mug', 'box'], num_views=16, width=96, height=72)
    root = tmp_path_factory.mktemp('custom_scan')
    write_dataset(root, scene.frames, scene.dataset_metadata())
    write_custom_features(root, scene.frames)
    frames = read_dataset(root)
    config = make_config('cpu-tiny', overrides={
        'trainer': {'steps': STEPS, 'rays_per_batch': 384},
        'teacher': {'dino_weights': '', 'dino_image_size': 126, 'device': 'cpu'},   # 9x12 patches at 96x72
        'model': {'head_loss_weights': 'custom:2e-3'}})
    config.workspace = scene.workspace
    teacher, reason = choose_teacher(config, scene.labels, 'dino+labels+custom', frames=frames)
    store = FrameStore(config.trainer.capacity)
    for frame in frames:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    losses = [{k: float(v) for k, v in trainer.step().items()} for _ in range(STEPS)]
    return scene, root, teacher, reason, trainer, losses


@pytest.mark.slow
def test_three_heads_are_sized_from_the_teachers(three_heads):
    """Labels first (the text head), then DINO and the custom files' width; one feature grid for all."""
    _, _, teacher, reason, trainer, _ = three_heads
    assert teacher.name == 'labels+dino+custom' and 'RANDOM' in reason
    assert teacher.heads == [('labels', 16), ('dino', 384), ('custom', 5)]
    field = trainer.config.feature_field
    assert field.feature_dim == 16 and field.extra_heads == 'dino:384,custom:5'
    assert trainer.features.shape[1:] == (9, 12, 16 + 384 + 5)


@pytest.mark.slow
def test_second_heads_distil_while_the_text_head_answers(three_heads):
    """The DINO and custom losses fall; the labels head's query peaks on the named object of a held-out view."""
    scene, _, teacher, _, trainer, losses = three_heads
    for name in ('feature_loss', 'feature_dino_loss', 'feature_custom_loss'):
        first, last = np.mean([s[name] for s in losses[:5]]), np.mean([s[name] for s in losses[-5:]])
        print(f'{name}: {first:.2e} -> {last:.2e}')
        assert last < 0.6 * first, name
    label = scene.objects['mug']['label']
    frame = max((scene.frames[i] for i in trainer.eval_indices), key=lambda f: (f.labels == label).sum())
    trainer.model.set_query(embed_query(teacher, ['mug'], ['object', 'things', 'stuff', 'texture']))
    try:
        rendered = trainer.render(frame.T_base_optical, frame.K, frame.width, frame.height,
                                  names=('rgb', 'similarity', 'feature', 'feature_dino', 'feature_custom'))
    finally:
        trainer.model.set_query(None)
    assert rendered['feature_dino'].shape == (72, 96, 384) and rendered['feature_custom'].shape == (72, 96, 5)
    regions = {int(i): float(rendered['similarity'][frame.labels == i].mean()) for i in np.unique(frame.labels)}
    print({scene.labels.get(i, 'background'): round(v, 3) for i, v in regions.items()})
    assert max(regions, key=regions.get) == label
    points = torch.zeros((7, 3))
    assert trainer.model.features_at(points).shape == (7, 16)
    assert trainer.model.features_at(points, head='dino').shape == (7, 384)


@pytest.mark.slow
def test_checkpoint_restores_heads_without_building_dino(three_heads, tmp_path):
    """A query-only load rebuilds the text teacher at once and leaves DINO unbuilt (it is never needed there)."""
    _, _, teacher, _, trainer, _ = three_heads
    path = trainer.save_checkpoint(tmp_path / 'latest.ckpt')
    model, config, state = load_model(path, device='cpu')
    restored = make_teacher(config.teacher, state=read_checkpoint(path)['teacher']['state'])
    assert restored.name == teacher.name and restored.heads == teacher.heads and is_random(restored)
    assert not restored.parts[1].is_built
    assert torch.equal(restored.encode_text(['mug']), teacher.encode_text(['mug']))
    assert [name for name, _ in model.feature_heads] == ['feature', 'feature_dino', 'feature_custom']
    from f3rm_ros.cli import main   # f3rm-ros query exports the DINO head's per-voxel features beside the heatmap
    assert main(['query', '--checkpoint', str(path), '--text', 'mug', '--output', str(tmp_path / 'q'), '--device',
                 'cpu', '--width', '48', '--voxel-size', '0.02', '--alpha-threshold', '0.02']) == 0  # 45 steps: faint
    exported = np.load(tmp_path / 'q' / 'heatmap_dino.npz')
    assert exported['features'].shape == (len(exported['points']), 384) and len(exported['points']) > 100
    assert np.isfinite(exported['features']).all() and len(exported['relevancy']) == len(exported['points'])


@pytest.mark.slow
def test_custom_feature_files_are_checked(three_heads, tmp_path):
    """Another channel count, a missing file and a non-float array are refused with the file named."""
    _, root, teacher, _, _, _ = three_heads
    frames = read_dataset(root, limit=2)
    custom = teacher.parts[2]
    assert custom.grid == CUSTOM_GRID and custom.dim == 5
    np.save(tmp_path / 'wide.npy', np.zeros((6, 8, 7), np.float32))
    np.save(tmp_path / 'ints.npy', np.zeros((6, 8, 5), np.int32))
    for name, match in (('wide.npy', '7 channels'), ('missing.npy', 'not found'), ('ints.npy', 'float')):
        frames[0].feature_path = str(tmp_path / name)
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            custom.extract(frames[:1])


@pytest.mark.slow
def test_ros_parameter_and_status_name_the_heads(three_heads):
    """teacher_choice takes head sets (refusing unknown teachers); the trainer's status lists the heads."""
    from f3rm_ros.core.training.online import OnlineSession, SessionSettings
    from f3rm_ros.ros.trainer_node import teacher_choice
    _, _, teacher, _, trainer, _ = three_heads
    assert teacher_choice('auto') is None and teacher_choice('clip+dino') is None
    assert 'unknown teacher' in teacher_choice('dinov3')
    SessionSettings(teacher_choice='clip+dino').validate()
    with pytest.raises(ValueError, match='unknown teacher'):
        SessionSettings(teacher_choice='clip+sam').validate()
    session = OnlineSession(copy.deepcopy(trainer.config), SessionSettings(teacher_choice='labels+dino'))
    assert session.choice.needs_labels()  # the labels head waits for label images like the labels teacher
    session.choice.teacher = teacher
    assert session.status()['heads'] == 'labels 16, dino 384, custom 5'
    assert session.choice.judge().startswith('RANDOM-WEIGHT teacher (labels+dino+custom)')  # WARN on /diagnostics


@pytest.mark.slow
def test_train_pictures_per_head_and_the_teacher_option(three_heads, tmp_path):
    """`f3rm-ros train` writes a PCA picture per head (DINO's for matching); --teacher takes head sets."""
    from f3rm_ros.cli import build_parser
    from f3rm_ros.core.training.offline import write_view_renders
    scene, _, _, _, trainer, _ = three_heads
    paths = write_view_renders(trainer, scene.frames[trainer.eval_indices[0]], tmp_path)['paths']
    for name in ('feature_pca', 'dino_pca', 'custom_pca'):
        assert (tmp_path / f'heldout_{name}.png').is_file() and paths[name].endswith(f'heldout_{name}.png')
    assert 'normals' not in paths  # this model does not predict normals (test_normals: one that does)
    args = build_parser().parse_args(['train', '--data', 'scan', '--teacher', 'dino+clip', '--dino-weights', ''])
    assert args.teacher == 'clip+dino' and args.dino_weights == ''
    with pytest.raises(SystemExit):
        build_parser().parse_args(['train', '--data', 'scan', '--teacher', 'clip+sam'])
