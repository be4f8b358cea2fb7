"""2D teachers: CLIP (random weights: shapes, batching, MaskCLIP path) and the ground-truth labels teacher."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from f3rm_ros.core.config import TeacherConfig
from f3rm_ros.core.capture.frames import PosedFrame
from f3rm_ros.core.teachers import Teacher, make_teacher

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never reach the hub from tests

K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])


def frame(image, labels=None):
    """Wrap `image` (and `labels`) in a PosedFrame at the origin."""
    return PosedFrame(image=image, K=K, T_base_optical=np.eye(4), labels=labels)


def noise(height, width, seed=0):
    """Make a random RGB image."""
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope='module')
def clip_teacher():
    """Build ViT-L-14-336-quickgelu with random weights on the CPU once (~15 s)."""
    return make_teacher(TeacherConfig(name='clip', pretrained='', batch_size=2, device='cpu'))


@pytest.fixture(scope='module')
def small_clip(clip_teacher):
    """Share the ViT-L at a 28-px shorter side (2 patches) so batching tests stay cheap on a CPU."""
    small = copy.copy(clip_teacher)
    small.image_size = 28
    return small


@pytest.mark.slow
def test_clip_640x480_gives_24x32_patches_of_768(clip_teacher):
    """A 640x480 image → 448x336 pixels → 24x32 patches of 768-d (ViT-L/14)."""
    assert isinstance(clip_teacher, Teacher)
    assert clip_teacher.dim == 768 and clip_teacher.patch_size == 14
    features = clip_teacher.extract([frame(noise(480, 640))])
    assert features.shape == (1, 24, 32, 768)
    assert features.dtype == torch.float32 and features.device.type == 'cpu'
    assert torch.isfinite(features).all()
    assert features.std(dim=(0, 1, 2)).mean() > 0  # patches differ


@pytest.mark.slow
def test_clip_grid_follows_aspect_ratio(clip_teacher, small_clip):
    """Shorter side → image_size, longer side rounded to whole patches; no centre crop."""
    assert clip_teacher.grid_shape(480, 640) == (24, 32)
    assert clip_teacher.grid_shape(640, 480) == (32, 24)
    assert clip_teacher.grid_shape(720, 1280) == (24, 43)  # 336 x 597.3 → 43 patches
    assert clip_teacher.grid_shape(336, 336) == (24, 24)
    # 40x120 → 28x84 → 2x6 patches, and portrait the other way round
    assert small_clip.extract([frame(noise(40, 120))]).shape == (1, 2, 6, 768)
    assert small_clip.extract([frame(noise(120, 40))]).shape == (1, 6, 2, 768)


@pytest.mark.slow
def test_clip_batch_equals_single_images(small_clip):
    """Batching (including a partial last batch) does not change any frame's features."""
    images = [noise(60, 80, seed=1), noise(60, 80, seed=2), noise(60, 80, seed=3)]
    batched = small_clip.extract([frame(image) for image in images])  # batch_size 2: batches of 2 and 1
    assert batched.shape == (3, 2, 3, 768)
    singles = torch.cat([small_clip.extract([frame(image)]) for image in images])
    assert torch.allclose(batched, singles, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


@pytest.mark.slow
def test_clip_rejects_mixed_grids(small_clip):
    """Frames of one call must share a patch grid."""
    with pytest.raises(ValueError, match='patch grid'):
        small_clip.extract([frame(noise(60, 80)), frame(noise(80, 60))])


@pytest.mark.slow
def test_clip_text_features_are_unit_vectors(clip_teacher):
    """Text embeddings are [N, 768], unit norm, distinct and deterministic."""
    text = clip_teacher.encode_text(['a red mug', 'a bowl', 'object'])
    assert text.shape == (3, 768) and text.dtype == torch.float32
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(text[0], text[1])
    assert torch.allclose(clip_teacher.encode_text(['a red mug'])[0], text[0], atol=1e-5)


def test_clip_missing_weights_file_names_the_path(tmp_path):
    """A weights path that does not exist fails before building the model, naming it."""
    missing = tmp_path / 'nowhere' / 'open_clip_pytorch_model.bin'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_teacher(TeacherConfig(name='clip', pretrained=str(missing), device='cpu'))


def test_clip_unknown_tag_suggests_a_file():
    """An unknown hub tag lists the alternatives, a local file among them."""
    with pytest.raises(ValueError, match='weights file'):
        make_teacher(TeacherConfig(name='clip', pretrained='no_such_tag', device='cpu'))


def test_clip_hub_tag_offline_says_how_to_pass_a_file():
    """Offline, a hub tag fails with instructions to pass a local weights file."""
    constants = pytest.importorskip('huggingface_hub.constants')
    if not constants.HF_HUB_OFFLINE:
        pytest.skip('only checked with HF_HUB_OFFLINE=1 (it would download 1.7 GB otherwise)')
    try:
        make_teacher(TeacherConfig(name='clip', pretrained='openai', device='cpu'))
    except RuntimeError as error:
        assert 'teacher.pretrained' in str(error) and 'open_clip_pytorch_model.bin' in str(error)
    else:
        pytest.skip('the openai weights are in the local Hugging Face cache')


def test_maskclip_path_matches_open_clip_modules():
    """Tokens up to the last block equal open_clip's own; the last block is its attention on one token."""
    from open_clip.transformer import VisionTransformer

    from f3rm_ros.core.teachers.clip import interpolate_positional_embedding, maskclip_dense_features

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=42, patch_size=14, width=64, layers=3, heads=4, mlp_ratio=2.0,
                               output_dim=32).eval()
    pixels = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        dense = maskclip_dense_features(visual, pixels)
        tokens = visual._embeds(pixels)
        for block in visual.transformer.resblocks[:-1]:
            tokens = block(tokens)
        last = visual.transformer.resblocks[-1]
        patches = last.ln_1(tokens[:, 1:]).reshape(-1, 1, 64)  # each token attends only to itself
        values = last.attn(patches, patches, patches, need_weights=False)[0].reshape(2, 9, 64)
        expected = (visual.ln_post(values) @ visual.proj).reshape(2, 3, 3, 32)
    assert dense.shape == (2, 3, 3, 32)
    assert torch.allclose(dense, expected, atol=1e-5)

    # positional embedding: native grid untouched; other grids resampled, a constant map stays constant
    assert interpolate_positional_embedding(visual, (3, 3)) is visual.positional_embedding
    with torch.no_grad():
        visual.positional_embedding[1:] = torch.arange(64.0)
    resampled = interpolate_positional_embedding(visual, (4, 7))
    assert resampled.shape == (1 + 28, 64)
    assert torch.allclose(resampled[1:], torch.arange(64.0).expand(28, 64), atol=1e-4)
    assert maskclip_dense_features(visual, torch.randn(1, 3, 56, 98)).shape == (1, 4, 7, 32)


# --------------------------------------------------------------------------------------------- labels

LABELS = {1: 'Mug', 2: 'bowl ', 3: 'mug'}


def two_region_map():
    """Make 32 x 48 ids: left half background, right half a mug (id 1), the bottom patch row a bowl."""
    label_map = np.zeros((32, 48), dtype=np.uint16)
    label_map[:, 24:] = 1
    label_map[24:, :] = 2
    return label_map


def labels_teacher(dim=16, patch_size=8):
    """Build a labels teacher through make_teacher."""
    return make_teacher(TeacherConfig(name='labels', labels_dim=dim, patch_size=patch_size), labels=LABELS)


def test_labels_grid_cells_match_regions():
    """Cells inside one region hold exactly that region's vector."""
    teacher = labels_teacher()
    assert teacher.vocabulary == ['background', 'bowl', 'mug']
    features = teacher.extract([frame(noise(32, 48), two_region_map())])
    assert features.shape == (1, 4, 6, 16) and features.dtype == torch.float32
    mug, bowl, background = (teacher.encode_text([n])[0] for n in ('mug', 'bowl', 'background'))
    grid = features[0]
    assert torch.allclose(grid[:3, 3:], mug.expand(3, 3, 16), atol=1e-6)
    assert torch.allclose(grid[:3, :3], background.expand(3, 3, 16), atol=1e-6)
    assert torch.allclose(grid[3], bowl.expand(6, 16), atol=1e-6)


def test_labels_pure_cell_has_cosine_one_and_mixed_cell_is_the_mean():
    """Pure cells equal their name's text vector; mixed cells average without re-normalising."""
    teacher = labels_teacher()
    label_map = two_region_map()
    label_map[:8, 20:28] = 0
    label_map[:8, 20:24] = 3  # 'mug' again, through another id
    grid = teacher.extract([frame(noise(32, 48), label_map)])[0]
    mug, background = teacher.encode_text(['MUG', 'background'])
    pure = grid[1, 4]
    assert torch.cosine_similarity(pure, mug, dim=0) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(grid[0, 2], 0.5 * mug + 0.5 * background, atol=1e-6)  # not re-normalised
    assert grid[0, 2].norm() == pytest.approx(0.5 ** 0.5, abs=1e-5)


def test_labels_names_orthonormal_and_unknown_text_unrelated():
    """Vocabulary vectors are orthonormal; other texts are fixed unit vectors orthogonal to them."""
    teacher = labels_teacher()
    vocabulary = teacher.encode_text(teacher.vocabulary)
    assert torch.allclose(vocabulary @ vocabulary.T, torch.eye(3), atol=1e-6)
    unknown = teacher.encode_text(['object', 'a red mug', 'things'])
    assert torch.allclose(unknown.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert (unknown @ vocabulary.T).abs().max() < 1e-5
    assert not torch.allclose(unknown[0], unknown[2])
    # deterministic, case- and space-insensitive
    assert torch.equal(teacher.encode_text([' Object'])[0], unknown[0])
    assert torch.equal(labels_teacher().encode_text(['object'])[0], unknown[0])


def test_labels_unknown_text_when_dim_equals_vocabulary():
    """With no spare dimensions unknown texts still get unit vectors."""
    teacher = labels_teacher(dim=3)
    text = teacher.encode_text(['object', 'mug'])
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.equal(text[1], teacher.vector('mug'))


def test_labels_same_vocabulary_same_vectors_and_state_round_trip():
    """Same vocabulary → same vectors; state() rebuilds an identical teacher."""
    teacher = labels_teacher()
    again = make_teacher(TeacherConfig(name='labels', labels_dim=16, patch_size=8),
                         labels={7: 'bowl', 9: 'MUG'})
    assert torch.equal(again.vector('mug'), teacher.vector('mug'))
    state = json.loads(json.dumps(teacher.state()))  # JSON-able
    rebuilt = make_teacher(TeacherConfig(name='labels', labels_dim=99, patch_size=3), state=state)
    assert (rebuilt.dim, rebuilt.patch_size) == (16, 8)
    names = teacher.vocabulary + ['object', 'a red mug']
    assert torch.equal(rebuilt.encode_text(names), teacher.encode_text(names))
    label_map = two_region_map()
    assert torch.equal(rebuilt.extract([frame(noise(32, 48), label_map)]),
                       teacher.extract([frame(noise(32, 48), label_map)]))
    # a new scene of the same objects keeps the stored vectors under new ids
    remapped = make_teacher(TeacherConfig(name='labels'), labels={5: 'mug'}, state=state)
    assert torch.equal(remapped.vector('bowl'), teacher.vector('bowl'))
    with pytest.raises(ValueError, match='vocabulary'):
        make_teacher(TeacherConfig(name='labels'), labels={5: 'spoon'}, state=state)
    with pytest.raises(ValueError, match='labels'):
        make_teacher(TeacherConfig(name='clip'), state=state)


def test_labels_errors():
    """Too-small dim, missing labels, unknown teacher, frames without or with unknown ids."""
    with pytest.raises(ValueError, match='labels_dim'):
        labels_teacher(dim=2)
    with pytest.raises(ValueError, match='id'):
        make_teacher(TeacherConfig(name='labels'))
    with pytest.raises(ValueError, match='unknown teacher'):
        make_teacher(TeacherConfig(name='sam'))
    teacher = labels_teacher()
    with pytest.raises(ValueError, match='no label map'):
        teacher.extract([frame(noise(32, 48))])
    label_map = two_region_map()
    label_map[0, 0] = 42
    with pytest.raises(ValueError, match='42'):
        teacher.extract([frame(noise(32, 48), label_map)])
