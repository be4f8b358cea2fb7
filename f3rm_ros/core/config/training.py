"""Config sections of what is trained: the workspace box, the feature field, the model, the trainer, the teacher."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .checks import is_finite, raise_problems


@dataclass
class WorkspaceConfig:
    """Axis-aligned box in ``base_frame`` (metres) that the field's unit box is made from."""

    min_xyz: Tuple[float, float, float] = (0.2, -0.3, -0.02)
    max_xyz: Tuple[float, float, float] = (0.8, 0.3, 0.30)
    base_frame: str = 'base_link'


@dataclass
class FeatureFieldConfig:
    """F3RM's parallel feature field: multiresolution hash grid + positional encoding + small MLP."""

    feature_dim: int = 768
    num_levels: int = 12
    features_per_level: int = 8
    log2_hashmap_size: int = 19
    min_resolution: int = 16
    max_resolution: int = 128
    pe_frequencies: int = 6
    hidden_dim: int = 64
    num_layers: int = 2
    # 'auto' uses tiny-cuda-nn when it imports, else the torch implementation.
    implementation: str = 'auto'
    # Feature heads after the text head (`feature_dim` wide), as 'name:width,...' (e.g. 'dino:384'); set from the
    # teacher (teachers.size_field), like feature_dim. Each is rendered with the same density weights.
    extra_heads: str = ''
    # 'shared': one hash grid and MLP trunk, one output layer for all heads (one projection each);
    # 'separate': a hash grid + MLP per head. `f3rm-ros bench teachers --layouts` measures both.
    head_layout: str = 'shared'

    def __post_init__(self):
        problems = []
        if self.head_layout not in HEAD_LAYOUTS:
            problems.append(f'feature_field.head_layout must be one of {list(HEAD_LAYOUTS)}, got {self.head_layout!r}')
        try:
            parse_heads(self.extra_heads)
        except ValueError as error:
            problems.append(str(error))
        raise_problems(problems)

    @property
    def heads(self) -> List[Tuple[str, int]]:
        """``[(name, width)]`` of every feature head, the text head (``feature``, `feature_dim`) first."""
        return [('feature', int(self.feature_dim))] + parse_heads(self.extra_heads)


HEAD_LAYOUTS = ('shared', 'separate')


def parse_heads(spec: str) -> List[Tuple[str, int]]:
    """'dino:384,custom:64' -> [('dino', 384), ('custom', 64)]; ValueError for a malformed entry."""
    heads = []
    for entry in (spec or '').split(','):
        if not entry.strip():
            continue
        name, _, width = entry.strip().partition(':')
        if not name.strip().isidentifier() or not width.strip().isdigit() or int(width) < 1:
            raise ValueError(f"feature_field.extra_heads must be 'name:width,...' (e.g. 'dino:384'), got {spec!r}")
        heads.append((name.strip(), int(width)))
    if len({name for name, _ in heads}) != len(heads) or any(name == 'feature' for name, _ in heads):
        raise ValueError(f'feature_field.extra_heads names a head twice (or "feature"): {spec!r}')
    return heads


@dataclass
class ModelConfig:
    """The nerfacto knobs we expose, plus the feature head's loss weight."""

    hidden_dim: int = 64
    hidden_dim_color: int = 64
    num_levels: int = 16
    base_resolution: int = 16
    max_resolution: int = 2048
    log2_hashmap_size: int = 19
    features_per_level: int = 2
    num_proposal_samples_per_ray: Tuple[int, ...] = (256, 96)
    num_nerf_samples_per_ray: int = 48
    proposal_net_max_res: Tuple[int, ...] = (128, 256)
    proposal_net_log2_hashmap_size: int = 17
    appearance_embed_dim: int = 32
    camera_optimizer: str = 'SO3xR3'
    near_plane: float = 0.05
    far_plane: float = 1000.0
    background_color: str = 'last_sample'
    feature_loss_weight: float = 1e-3
    # Depth supervision (DS-NeRF loss, as nerfstudio's depth-nerfacto) when keyframes carry depth, e.g. from
    # an RGB-D wrist camera: geometry converges in far fewer rays. 0 turns it off (pure F3RM).
    depth_loss_mult: float = 1e-3
    depth_sigma: float = 0.01  # metres
    predict_normals: bool = False
    # How the feature loss sees nerfacto's density weights: 'live' = F3RM's gradient (the feature loss also
    # shapes density), 'detached' = features fit the geometry the colour made and never move it.
    # The default comes from `f3rm-ros bench train --feature-weights live,detached` (docs/performance.md).
    feature_weights: str = 'detached'
    # Loss weights of the extra feature heads (feature_field.extra_heads), 'name:weight,...' (e.g. 'dino:5e-4');
    # a head not named here uses feature_loss_weight.
    head_loss_weights: str = ''

    def __post_init__(self):
        if self.feature_weights not in FEATURE_WEIGHTS:
            raise ValueError(f'model.feature_weights must be one of {list(FEATURE_WEIGHTS)}, '
                             f'got {self.feature_weights!r}')
        self.loss_weight_of('')  # a malformed head_loss_weights fails here, not at the first step

    def loss_weight_of(self, head: str) -> float:
        """Return the loss weight of feature head `head` (`head_loss_weights`, else `feature_loss_weight`)."""
        return head_loss_weight(self.head_loss_weights, head, self.feature_loss_weight)


def head_loss_weight(spec: str, head: str, default: float) -> float:
    """Weight of `head` in a 'name:weight,...' spec (model.head_loss_weights), else `default`."""
    weights = {}
    for entry in (spec or '').split(','):
        if entry.strip():
            name, _, value = entry.partition(':')
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"model.head_loss_weights must be 'name:weight,...' (e.g. 'dino:5e-4'), got "
                                 f'{spec!r}') from None
    return weights.get(head, default)


FEATURE_WEIGHTS = ('live', 'detached')


@dataclass
class TrainerConfig:
    """Online training schedule; `capacity` sizes per-camera parameters so checkpoints stay loadable."""

    steps: int = 5000
    rays_per_batch: int = 4096
    capacity: int = 256
    lr_fields: float = 1e-2
    lr_proposal: float = 1e-2
    lr_feature: float = 1e-2
    lr_camera: float = 1e-3
    lr_final_ratio: float = 0.01
    eval_every: int = 500
    checkpoint_every: int = 1000
    holdout_every: int = 8
    device: str = 'auto'
    mixed_precision: bool = True
    # On CUDA with the fast path: replay forward + backward from CUDA graphs (fast/graphs.py); same results.
    cuda_graphs: bool = True
    # With cuda_graphs: compile the captured forward and losses with torch.compile first: 0.63x the step time,
    # but the first start compiles for ~100 s (~20 s with inductor's cache warm), which an online scan would wait
    # for; worth it for long offline runs (docs/performance.md).
    compile: bool = False
    # On CUDA with the fast path: Adam skips hash-table entries whose gradient is zero (Instant-NGP's rule;
    # fast/lazy_adam.py) instead of moving every entry every step: +9 % rays/s, same held-out PSNR (H200).
    lazy_hash_adam: bool = True
    seed: int = 0
    # Rendering (held-out evaluation, pictures, similarity images) runs in chunks of rays: on CUDA as many as
    # fit in `render_memory_mb` of GPU memory (measured per ray on a probe chunk), at most `eval_chunk_rays`
    # (the chunk on a CPU); per-pixel outputs leave the GPU chunk by chunk, so the full image never sits there.
    eval_chunk_rays: int = 8192
    render_memory_mb: float = 1024.0
    # Held-out views scored by `evaluate`: 'aligned' = with the pose correction that pose refinement gave the
    # training cameras nearest to them (the field moved with those cameras), 'given' = as recorded (what
    # nerfstudio's evaluation does); both are the same with model.camera_optimizer: off.
    eval_poses: str = 'aligned'

    def __post_init__(self):
        problems = []
        if self.eval_poses not in EVAL_POSES:
            problems.append(f'trainer.eval_poses must be one of {list(EVAL_POSES)}, got {self.eval_poses!r}')
        if not (is_finite(self.render_memory_mb) and self.render_memory_mb > 0):
            problems.append(f'trainer.render_memory_mb must be > 0, got {self.render_memory_mb!r}')
        raise_problems(problems)


EVAL_POSES = ('aligned', 'given')


@dataclass
class TeacherConfig:
    """2D feature teacher: `clip` (open_clip, MaskCLIP dense features) or `labels` (ground truth)."""

    name: str = 'clip'
    model_name: str = 'ViT-L-14-336-quickgelu'
    # A hub tag ('openai'), a local weights file, or '' for random weights (plumbing tests only).
    pretrained: str = 'openai'
    image_size: int = 336
    batch_size: int = 4
    # The labels teacher mimics CLIP's patch grid; `labels_dim` is its embedding width.
    patch_size: int = 14
    labels_dim: int = 768
    device: str = 'auto'
    # DINO head (teachers/dino.py): a timm ViT; weights 'timm' (hub), a local checkpoint file, or '' for random
    # weights (plumbing tests only); image size 0 = `image_size` (14-px patches at 336 px: CLIP's grid).
    dino_model: str = 'vit_small_patch14_dinov2'
    dino_weights: str = 'timm'
    dino_image_size: int = 0
