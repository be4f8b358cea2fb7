"""Every tunable of the core as dataclasses; `config/*.yaml` mirrors them field for field.

A configuration is built from a preset (``cpu-tiny`` for tests, ``cpu`` for a laptop-sized run,
``gpu`` for the F3RM defaults, ``auto`` for ``gpu`` where CUDA is available and ``cpu`` elsewhere) and then
overlaid with YAML files and keyword overrides, so the launch
file, the one-process pipeline and the CLI all read the same numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, get_args

import yaml


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
        _check(problems)

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
        if not (_finite(self.render_memory_mb) and self.render_memory_mb > 0):
            problems.append(f'trainer.render_memory_mb must be > 0, got {self.render_memory_mb!r}')
        _check(problems)


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


def _check(problems: List[str]) -> None:
    """Raise one ValueError listing every problem (a config section's __post_init__ helper)."""
    if problems:
        raise ValueError('; '.join(problems))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rule(problems: List[str], section: str, values: Any, names: Sequence[str], what: str,
          ok: Callable[[Any], bool]) -> None:
    """Append '<section>.<name> must be <what>, got <value>' for each of `names` whose value fails `ok`."""
    for name in names:
        value = getattr(values, name)
        if not ok(value):
            problems.append(f'{section}.{name} must be {what}, got {value!r}')


@dataclass
class QueryConfig:
    """Text query → relevancy → heatmap, clusters and an answer (found / not present)."""

    # phrases every query is contrasted with (a request may give its own)
    negatives: Tuple[str, ...] = ('object', 'things', 'stuff', 'texture')
    temperature: float = 0.1  # softmax temperature of the pairwise relevancy (> 0; lower = sharper)
    mode: str = 'pairwise_softmax'  # or 'cosine' (relevancy then lies in -1..1)
    voxel_size: float = 0.01  # query grid spacing (m, > 0)
    alpha_threshold: float = 0.1  # F3RM's value; 0.05 keeps thousands of air voxels
    threshold: str = 'otsu'  # 'otsu', 'percentile' (of `percentile`) or 'value' (`threshold_value` itself)
    percentile: float = 99.0  # threshold 'percentile': voxels above this percentile (0..100) are selected
    threshold_value: float = 0.6  # threshold 'value': the relevancy itself (-1..1; 0.5 = no more than a negative)
    # Not present unless the best cluster's peak relevancy (mean of its 10 most relevant voxels) reaches this;
    # negative = the teacher's own bound (core/query/answer.py PRESENT_RELEVANCY: calibrated for the labels teacher,
    # a cautious one for CLIP until you calibrate yours with `f3rm-ros bench semantic --data`).
    present_relevancy: float = -1.0
    cluster_eps: float = 0.02  # selected voxels this close (m, Chebyshev on the grid) join one cluster
    cluster_min_points: int = 10  # smaller groups of selected voxels are noise (voxels, >= 1)
    max_clusters: int = 10  # 0 = all
    # Keyframes that must have seen a cluster's surface where it is (core/query/views.py) where the querier has them
    # (a live session, the benches); a cluster fewer keyframes saw is a ghost and not reported (0 = no check)
    min_support_views: int = 2
    support_tolerance: float = 0.02  # m between a voxel centre and a keyframe's observed depth: "on its surface"
    text_cache_size: int = 256  # phrases whose embeddings are kept: a repeated query skips the text tower
    chunk_size: int = 65536  # points per field evaluation (memory bound; at least 262144 on a GPU)
    colormap: str = 'turbo'  # matplotlib colormap of the relevancy colours and pictures
    # Cut-away box (base_frame metres): only voxels inside it are queried, e.g. to drop what stands in front of
    # the region of interest. Equal min and max (the default) = no crop, the whole workspace.
    crop_min_xyz: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    crop_max_xyz: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def crop(self) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        """(min, max) of the crop box, or None when there is none."""
        if tuple(self.crop_min_xyz) == tuple(self.crop_max_xyz):
            return None
        return tuple(self.crop_min_xyz), tuple(self.crop_max_xyz)

    def __post_init__(self):
        problems = []
        crop = (tuple(self.crop_min_xyz), tuple(self.crop_max_xyz))
        if any(len(c) != 3 or not all(_finite(v) for v in c) for c in crop):
            problems.append(f'query.crop_min_xyz / crop_max_xyz must be three numbers each, got {crop}')
        elif crop[0] != crop[1] and not all(lo < hi for lo, hi in zip(*crop)):
            problems.append(f'query.crop_max_xyz {list(crop[1])} must exceed crop_min_xyz {list(crop[0])} on every '
                            'axis (or equal it everywhere: no crop)')
        if self.mode not in ('pairwise_softmax', 'cosine'):
            problems.append(f"query.mode must be 'pairwise_softmax' or 'cosine', got {self.mode!r}")
        if self.threshold not in QUERY_THRESHOLDS:
            problems.append(f'query.threshold must be one of {list(QUERY_THRESHOLDS)}, got {self.threshold!r}')
        if not (_finite(self.temperature) and self.temperature > 0):
            problems.append(f'query.temperature must be a finite number > 0, got {self.temperature!r}')
        if not (_finite(self.voxel_size) and 1e-3 <= self.voxel_size <= 0.5):
            problems.append(f'query.voxel_size must be 0.001..0.5 m, got {self.voxel_size!r}')
        if not (_finite(self.alpha_threshold) and 0 < self.alpha_threshold < 1):
            problems.append(f'query.alpha_threshold must be in (0, 1), got {self.alpha_threshold!r}')
        if not (_finite(self.percentile) and 0 <= self.percentile <= 100):
            problems.append(f'query.percentile must be 0..100, got {self.percentile!r}')
        for name in ('threshold_value', 'present_relevancy'):
            value = getattr(self, name)
            if not (_finite(value) and -1 <= value <= 1):
                problems.append(f'query.{name} must be a relevancy in -1..1, got {value!r}')
        if not (_finite(self.cluster_eps) and self.cluster_eps > 0):
            problems.append(f'query.cluster_eps must be > 0 m, got {self.cluster_eps!r}')
        for name in ('cluster_min_points', 'chunk_size'):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f'query.{name} must be an integer >= 1, got {getattr(self, name)!r}')
        if not (_finite(self.support_tolerance) and self.support_tolerance > 0):
            problems.append(f'query.support_tolerance must be > 0 m, got {self.support_tolerance!r}')
        for name in ('max_clusters', 'text_cache_size', 'min_support_views'):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                problems.append(f'query.{name} must be an integer >= 0, got {getattr(self, name)!r}')
        if any(not isinstance(n, str) for n in self.negatives):
            problems.append(f'query.negatives must be phrases, got {self.negatives!r}')
        elif self.mode == 'pairwise_softmax' and not [n for n in self.negatives if n.strip()]:
            problems.append('query.negatives is empty, but pairwise_softmax relevancy compares the query with '
                            'negatives (without them every answer is "not present"); give some, or set '
                            'query.mode: cosine for plain cosine similarity')
        _check(problems)


QUERY_THRESHOLDS = ('otsu', 'percentile', 'value')


@dataclass
class GraspConfig:
    """Parallel-jaw gripper geometry and candidate generation (core/query/grasps.py); defaults near a Franka Hand."""

    max_opening: float = 0.08    # widest the fingers open (m)
    margin: float = 0.01         # opening beyond the object's width across the closing axis (m)
    finger_length: float = 0.045  # along the approach, fingertip to palm (m)
    finger_width: float = 0.02   # across the approach and the closing axis (m)
    finger_depth: float = 0.012  # finger thickness along the closing axis (m)
    grasp_depth: float = 0.03    # how far the fingertips go past the object's top (or near face) (m)
    side_min_height: float = 0.06  # objects at least this tall also get side approaches (m)
    clearance: float = 0.005     # side grasps keep the fingers this far above the support (they move along it) (m)
    support_clearance: float = 0.003  # fingers stay this far above the support under the object (table, floor) (m)
    rim_max_wall: float = 0.03   # walls up to this thick (a bowl's, a cup's) also get rim grasps across them (m)
    max_per_cluster: int = 4

    def __post_init__(self):
        problems = []
        for name in ('max_opening', 'finger_length', 'finger_width', 'finger_depth', 'grasp_depth'):
            value = getattr(self, name)
            if not (_finite(value) and 0 < value <= 1):
                problems.append(f'grasp.{name} must be 0..1 m and > 0, got {value!r}')
        for name in ('margin', 'side_min_height', 'clearance', 'support_clearance', 'rim_max_wall'):
            value = getattr(self, name)
            if not (_finite(value) and 0 <= value <= 1):
                problems.append(f'grasp.{name} must be 0..1 m, got {value!r}')
        if not (isinstance(self.max_per_cluster, int) and self.max_per_cluster >= 1):
            problems.append(f'grasp.max_per_cluster must be an integer >= 1, got {self.max_per_cluster!r}')
        _check(problems)


GripperName = Literal['grasp', 'robotiq_2f85', 'robotiq_2f140', 'franka_hand']
GRIPPER_NAMES = get_args(GripperName)


@dataclass
class ManipulationConfig:
    """Grasps and placements taught by demonstration (core/manipulation/): F3RM's few-shot pose optimisation."""

    num_query_points: int = 100
    """Query points per task, drawn once in the gripper frame and stored with the task (F3RM: 100)."""
    query_sigma: float = 0.02
    """Standard deviation (m) of the isotropic Gaussian the query points are drawn from. F3RM used 7.5 mm; on a
    handle-like part that leaves the turn about the part's axis free (10-50 degree errors measured on the test
    suite's analytic tool), while 2 cm also sees the context (the body beside it, the table under it): 1-3 degrees."""
    query_seed: int = 0
    """Seed of the query points' draw; stored with the task so its embedding can be recomputed."""
    voxel_size: float = 0.005
    """Grid step (m) the field is sampled on for embeddings and collisions; also the alpha's step delta."""
    alpha_threshold: float = 0.1
    """Opacity above which a voxel is occupied: candidate positions and gripper collisions."""
    language_mask: bool = True
    """Seed candidates only where the text (or the task's description) is relevant, grown by `mask_margin`."""
    mask_margin: float = 0.02
    """Growth (m) of the relevancy mask: a grasp centre sits beside the part it names, not only on it."""
    max_seed_voxels: int = 256
    """Occupied voxels (evenly subsampled) that seed candidates."""
    rotations_per_voxel: int = 64
    """Random orientations tried at every seed voxel."""
    steps: int = 100
    """Adam steps of the pose optimisation (F3RM: 200)."""
    keep_fraction: float = 0.95
    """Fraction of candidates kept after each optimisation step, the worst pruned (F3RM: 0.975)."""
    min_candidates: int = 64
    """Pruning never goes below this many candidates (F3RM: 2048 on a GPU)."""
    start_candidates: int = 1024
    """The best candidates by similarity before optimisation that the optimisation starts from."""
    lr_translation: float = 0.002
    """Adam step (m) for the translation."""
    lr_rotation: float = 0.03
    """Adam step (rad) for the rotation (axis-angle increment)."""
    top_k: int = 5
    """Poses returned, best first."""
    max_tilt_deg: float = 60.0
    """Largest angle between an answer's approach axis and the demonstrations' (base frame, z up): an object turned
    about the vertical keeps its demo's approach, a gripper from below the table never does. 180 lifts the limit
    (tipped-over objects taught upright)."""
    tilt_weight: float = 0.5
    """Cost of tilting away from the demonstrations' approach, subtracted from the cosine as weight x (1 - cos
    tilt): a round part (a handle, a peg) looks alike turned about its own axis, so the similarity alone leaves
    that turn free and a finger corner ends in the table; 0 ranks by the similarity alone."""
    max_collisions: int = 0
    """Occupied voxels a returned gripper may touch beyond what it touched at the demonstrations (a grasp shown with
    the fingertips just above the table touches the table's fuzzy surface, and so may its answers)."""
    min_score: float = 0.5
    """A pose less similar than this to the demonstrations (cosine) is not returned: below it the task's object is
    taken to be absent (NOT_PRESENT)."""
    task_min_similarity: float = 0.5
    """A text picks a task only when its embedding is at least this similar to the task's description."""
    gripper: GripperName = 'grasp'
    """Gripper the poses are checked with: 'grasp' = the `grasp` section's fingers plus `palm_size`, or a preset."""
    palm_size: Tuple[float, float, float] = (0.03, 0.16, 0.05)
    """Palm box behind the fingers of the 'grasp' gripper (m): along x, along the closing axis y, along -z."""
    gripper_mesh: str = ''
    """Optional mesh (PLY/STL/OBJ, metres, gripper frame) voxelised and checked instead of the boxes."""
    volume_memory_mb: float = 1024.0
    """Memory the sampled feature volume may take; the grid coarsens until it fits."""

    def __post_init__(self):
        problems = []
        rule = functools.partial(_rule, problems, 'manipulation', self)
        rule(('query_sigma', 'voxel_size', 'lr_translation', 'lr_rotation', 'volume_memory_mb'), 'a positive number',
             lambda v: _finite(v) and v > 0)
        rule(('mask_margin', 'tilt_weight'), 'a number >= 0', lambda v: _finite(v) and v >= 0)
        rule(('max_tilt_deg',), 'in (0, 180]', lambda v: _finite(v) and 0 < v <= 180)
        rule(('num_query_points', 'max_seed_voxels', 'rotations_per_voxel', 'min_candidates', 'start_candidates',
              'top_k'), 'an integer >= 1', lambda v: _integer(v) and v >= 1)
        rule(('steps', 'max_collisions'), 'an integer >= 0', lambda v: _integer(v) and v >= 0)
        rule(('keep_fraction',), 'in (0, 1]', lambda v: _finite(v) and 0 < v <= 1)
        rule(('alpha_threshold',), 'in (0, 1)', lambda v: _finite(v) and 0 < v < 1)
        rule(('min_score', 'task_min_similarity'), 'in [-1, 1]', lambda v: _finite(v) and -1 <= v <= 1)
        rule(('gripper',), f'one of {list(GRIPPER_NAMES)}', lambda v: v in GRIPPER_NAMES)
        rule(('palm_size',), 'three positive numbers',
             lambda v: len(tuple(v)) == 3 and all(_finite(x) and x > 0 for x in v))
        _check(problems)


@dataclass
class ChangesConfig:
    """Online change detection and repair (core/changes/): each new keyframe against the field's view of its pose."""

    detect: bool = True
    """Compare each keyframe arriving after `min_steps` with the field's render of its pose (False: declared only)."""
    min_steps: int = 200
    """Keyframes that arrive before this many training steps are not compared (an immature field disagrees)."""
    max_pixels: int = 12000
    """The comparison renders at most this many pixels (the keyframe shrunk by an integer factor)."""
    depth_tolerance: float = 0.015
    """A pixel disagrees in depth when observed and rendered z differ by more than this (m) plus `depth_relative`."""
    depth_relative: float = 0.02
    """Fraction of the observed depth added to `depth_tolerance` (a depth camera's noise grows with distance)."""
    color_tolerance: float = 0.2
    """Mean absolute RGB difference (0..1) above which a pixel disagrees (flat objects barely change the depth)."""
    min_pixels: int = 12
    """Disagreeing groups smaller than this (pixels of the comparison, after a 3x3 opening) are noise."""
    min_accumulation: float = 0.5
    """Rendered opacity a pixel needs for the field to claim a surface there ("something was here")."""
    voxel_size: float = 0.02
    """Size (m) of the changed-voxel grid over the workspace."""
    margin: float = 0.03
    """Growth (m) of changed voxels: one view sees one side of an object, the margin covers the rest."""
    min_voxels: int = 5
    """Connected groups of fewer changed voxels than this are noise (stray pixels on a blurry field's silhouettes)."""
    episode_frames: int = 12
    """Keyframes after a detection that belong to the same change: they add to it and are never masked for it."""
    repair_steps: int = 300
    """Training goes on at least this many steps after a change (the step budget may be spent by then)."""
    focus_fraction: float = 0.5
    """Fraction of each batch's rays from the change's views through changed voxels, for `repair_steps` (0 = off)."""
    rewind: float = 0.5
    """After a change the learning rates go back to the schedule's at this fraction of trainer.steps, if lower."""

    def __post_init__(self):
        problems = []
        rule = functools.partial(_rule, problems, 'changes', self)
        rule(('min_steps', 'max_pixels', 'min_pixels', 'min_voxels', 'episode_frames', 'repair_steps'),
             'an integer >= 0', lambda v: _integer(v) and v >= 0)
        rule(('depth_tolerance', 'depth_relative', 'color_tolerance', 'margin'), '>= 0',
             lambda v: _finite(v) and v >= 0)
        rule(('voxel_size',), '0.001..0.5 m', lambda v: _finite(v) and 1e-3 <= v <= 0.5)
        rule(('min_accumulation', 'focus_fraction', 'rewind'), '0..1', lambda v: _finite(v) and 0 <= v <= 1)
        _check(problems)


@dataclass
class F3RMConfig:
    """Everything together; the unit a YAML file or a preset describes."""

    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    feature_field: FeatureFieldConfig = field(default_factory=FeatureFieldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    grasp: GraspConfig = field(default_factory=GraspConfig)
    changes: ChangesConfig = field(default_factory=ChangesConfig)
    manipulation: ManipulationConfig = field(default_factory=ManipulationConfig)


PRESETS: Dict[str, Dict[str, Any]] = {
    # F3RM's published settings, for a workstation GPU; a query evaluates the 220k-voxel grid in one chunk.
    'gpu': {'query': {'chunk_size': 262144}},
    # Small enough to learn a synthetic table in about a minute on 2 CPU cores.
    'cpu-tiny': {
        'feature_field': {'feature_dim': 16, 'num_levels': 6, 'features_per_level': 2,
                          'log2_hashmap_size': 15, 'min_resolution': 8, 'max_resolution': 64,
                          'pe_frequencies': 4, 'hidden_dim': 32, 'num_layers': 1},
        'model': {'hidden_dim': 32, 'hidden_dim_color': 32, 'num_levels': 8, 'max_resolution': 256,
                  'log2_hashmap_size': 15, 'num_proposal_samples_per_ray': (48, 24),
                  'num_nerf_samples_per_ray': 24, 'proposal_net_max_res': (64, 128),
                  'proposal_net_log2_hashmap_size': 13, 'appearance_embed_dim': 8,
                  # a few hundred CPU steps: lean on depth harder so geometry (and so features) forms
                  'depth_loss_mult': 1e-2},
        'trainer': {'steps': 400, 'rays_per_batch': 512, 'capacity': 64, 'eval_every': 200,
                    'checkpoint_every': 200, 'mixed_precision': False, 'eval_chunk_rays': 4096,
                    'lr_fields': 2e-2, 'lr_proposal': 2e-2, 'lr_feature': 2e-2},
        'teacher': {'name': 'labels', 'patch_size': 8, 'labels_dim': 16},
        'query': {'voxel_size': 0.01, 'chunk_size': 32768},
    },
    # A real scan on a CPU: a few minutes, recognisable renders, not a quality run. ViT-L-14-336 costs
    # 10-20 s per image on two cores; ViT-B-16 about a second.
    'cpu': {
        'teacher': {'model_name': 'ViT-B-16', 'image_size': 224},
        'feature_field': {'feature_dim': 512, 'num_levels': 8, 'features_per_level': 4,
                          'log2_hashmap_size': 16, 'min_resolution': 16, 'max_resolution': 128,
                          'pe_frequencies': 6, 'hidden_dim': 64, 'num_layers': 2},
        'model': {'hidden_dim': 48, 'hidden_dim_color': 48, 'num_levels': 12, 'max_resolution': 1024,
                  'log2_hashmap_size': 17, 'num_proposal_samples_per_ray': (48, 24),
                  'num_nerf_samples_per_ray': 24, 'proposal_net_max_res': (64, 128),
                  'proposal_net_log2_hashmap_size': 14, 'appearance_embed_dim': 16, 'depth_loss_mult': 1e-2},
        'trainer': {'steps': 500, 'rays_per_batch': 1024, 'capacity': 128, 'eval_every': 250,
                    'checkpoint_every': 250, 'mixed_precision': False, 'eval_chunk_rays': 4096},
    },
}


def merge_into(obj: Any, overrides: Dict[str, Any], path: str = '') -> Any:
    """Return a copy of dataclass `obj` with nested `overrides` applied; unknown keys are errors."""
    if not dataclasses.is_dataclass(obj):
        raise TypeError(f'{path or "config"} is not a section')
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise KeyError(f'unknown config key {path + key!r}; known: {sorted(names)}')
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f'{path + key} must be a mapping, got {value!r}')
            changes[key] = merge_into(current, value, path + key + '.')
        else:
            changes[key] = _coerce(value, current, path + key)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert YAML/ROS values to the type of the default (lists → tuples, ints → floats)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str) and all(isinstance(c, str) for c in current):
                # ROS string parameters carry lists of names comma-separated.
                return tuple(s.strip() for s in value.split(',') if s.strip())
            raise TypeError(f'{name} must be a list, got {value!r}')
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError(f'{name} must be true/false, got {value!r}')
        return value
    if isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str) and isinstance(value, str):
        return value
    if current is None:
        return value
    raise TypeError(f'{name} must be {type(current).__name__}, got {value!r}')


SECTIONS = tuple(f.name for f in dataclasses.fields(F3RMConfig))


def yaml_config_section(data: Dict[str, Any]) -> Dict[str, Any]:
    """Return the config part of a parsed YAML file, in any of the three shapes config/*.yaml may take.

    * ``f3rm: {trainer: {...}, ...}``: the section under ``f3rm``;
    * a ROS 2 parameters file (``/**: {ros__parameters: {...}}`` plus per-node sections, as the launch
      file reads it): the ``/**`` parameters, keeping only the config sections (``trainer``, ``query``...;
      dotted names such as ``trainer.steps`` too) and ignoring node settings (``preset``, ``dataset_dir``);
    * the sections at the top level.
    """
    if not isinstance(data, dict):
        raise TypeError(f'a config file must hold a mapping, got {type(data).__name__}')
    if 'f3rm' in data:
        return data['f3rm']
    ros = data.get('/**')
    if isinstance(ros, dict) and isinstance(ros.get('ros__parameters'), dict):
        params = ros['ros__parameters']
        flat = {k: v for k, v in params.items() if '.' in k and k.split('.')[0] in SECTIONS}
        section = {k: v for k, v in params.items() if k in SECTIONS}
        for name, value in unflatten(flat).items():
            section[name] = {**section.get(name, {}), **value}
        return section
    return data


def apply_yaml_files(config: F3RMConfig, yaml_files: Sequence[Path] = ()) -> F3RMConfig:
    """Overlay YAML files (any shape `yaml_config_section` reads) on `config`, in order: every command's path."""
    for path in yaml_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        config = merge_into(config, yaml_config_section(data))
    return config


# The preset that picks one for the machine (`resolve_preset`), and what it picks without CUDA: F3RM's `gpu`
# sizes on two CPU cores took 12 s a step and could not stop within launch's 5 s.
AUTO_PRESET = 'auto'
CPU_PRESET = 'cpu'
PRESET_NAMES = (AUTO_PRESET, *PRESETS)


def resolve_preset(preset: str) -> Tuple[str, str]:
    """Return (the preset to build, a sentence saying which and why).

    ``auto`` becomes ``gpu`` where CUDA is available and `CPU_PRESET` elsewhere; any other name stays as given.

    Raises:
        KeyError: an unknown preset.
    """
    if preset != AUTO_PRESET:
        if preset not in PRESETS:
            raise KeyError(f'unknown preset {preset!r}; choose one of {list(PRESET_NAMES)}')
        return preset, f'preset {preset} (as configured)'
    import torch
    if torch.cuda.is_available():
        return 'gpu', f'preset auto: gpu (CUDA device {torch.cuda.get_device_name(0)})'
    return CPU_PRESET, f'preset auto: {CPU_PRESET} (no CUDA device; set preset: gpu to train F3RM\'s sizes anyway)'


def make_config(preset: str = 'gpu', yaml_files: Sequence[Path] = (),
                overrides: Optional[Dict[str, Any]] = None) -> F3RMConfig:
    """Build a config: preset (``auto``: `resolve_preset`), then each YAML file in order, then `overrides`."""
    preset = resolve_preset(preset)[0]
    config = apply_yaml_files(merge_into(F3RMConfig(), PRESETS[preset]), yaml_files)
    if overrides:
        config = merge_into(config, overrides)
    return config


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML and checkpoints."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


# Fields renamed to nerfstudio's names: (section, old name) -> new name. Checkpoints written before keep loading.
RENAMED_FIELDS = {('model', 'depth_loss_weight'): 'depth_loss_mult'}


def from_dict(data: Dict[str, Any]) -> F3RMConfig:
    """Inverse of `to_dict` (a checkpoint's configuration; fields of `RENAMED_FIELDS` under their old name too)."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for (section, old), new in RENAMED_FIELDS.items():
        values = data.get(section)
        if isinstance(values, dict) and old in values and new not in values:
            values[new] = values.pop(old)
    return merge_into(F3RMConfig(), data)


def flatten(config: Any, prefix: str = '') -> List[Tuple[str, Any]]:
    """(dotted.name, value) pairs: how ROS parameters name the config fields."""
    items = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            items.extend(flatten(value, prefix + f.name + '.'))
        else:
            items.append((prefix + f.name, value))
    return items


def unflatten(pairs: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of `flatten` for a subset of names: {'a.b': 1} → {'a': {'b': 1}}."""
    nested: Dict[str, Any] = {}
    for name, value in pairs.items():
        node = nested
        *parents, leaf = name.split('.')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
