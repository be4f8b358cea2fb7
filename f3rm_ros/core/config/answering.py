"""Config sections of what answers from a trained field: queries, grasps, manipulation, scene changes."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Optional, Tuple, get_args

from .checks import field_rule, is_finite, is_integer, raise_problems


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
        if any(len(c) != 3 or not all(is_finite(v) for v in c) for c in crop):
            problems.append(f'query.crop_min_xyz / crop_max_xyz must be three numbers each, got {crop}')
        elif crop[0] != crop[1] and not all(lo < hi for lo, hi in zip(*crop)):
            problems.append(f'query.crop_max_xyz {list(crop[1])} must exceed crop_min_xyz {list(crop[0])} on every '
                            'axis (or equal it everywhere: no crop)')
        if self.mode not in ('pairwise_softmax', 'cosine'):
            problems.append(f"query.mode must be 'pairwise_softmax' or 'cosine', got {self.mode!r}")
        if self.threshold not in QUERY_THRESHOLDS:
            problems.append(f'query.threshold must be one of {list(QUERY_THRESHOLDS)}, got {self.threshold!r}')
        if not (is_finite(self.temperature) and self.temperature > 0):
            problems.append(f'query.temperature must be a finite number > 0, got {self.temperature!r}')
        if not (is_finite(self.voxel_size) and 1e-3 <= self.voxel_size <= 0.5):
            problems.append(f'query.voxel_size must be 0.001..0.5 m, got {self.voxel_size!r}')
        if not (is_finite(self.alpha_threshold) and 0 < self.alpha_threshold < 1):
            problems.append(f'query.alpha_threshold must be in (0, 1), got {self.alpha_threshold!r}')
        if not (is_finite(self.percentile) and 0 <= self.percentile <= 100):
            problems.append(f'query.percentile must be 0..100, got {self.percentile!r}')
        for name in ('threshold_value', 'present_relevancy'):
            value = getattr(self, name)
            if not (is_finite(value) and -1 <= value <= 1):
                problems.append(f'query.{name} must be a relevancy in -1..1, got {value!r}')
        if not (is_finite(self.cluster_eps) and self.cluster_eps > 0):
            problems.append(f'query.cluster_eps must be > 0 m, got {self.cluster_eps!r}')
        for name in ('cluster_min_points', 'chunk_size'):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f'query.{name} must be an integer >= 1, got {getattr(self, name)!r}')
        if not (is_finite(self.support_tolerance) and self.support_tolerance > 0):
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
        raise_problems(problems)


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
            if not (is_finite(value) and 0 < value <= 1):
                problems.append(f'grasp.{name} must be 0..1 m and > 0, got {value!r}')
        for name in ('margin', 'side_min_height', 'clearance', 'support_clearance', 'rim_max_wall'):
            value = getattr(self, name)
            if not (is_finite(value) and 0 <= value <= 1):
                problems.append(f'grasp.{name} must be 0..1 m, got {value!r}')
        if not (isinstance(self.max_per_cluster, int) and self.max_per_cluster >= 1):
            problems.append(f'grasp.max_per_cluster must be an integer >= 1, got {self.max_per_cluster!r}')
        raise_problems(problems)


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
    clearance_weight: float = 1.0
    """Cost of the fingers overlapping the field at the demonstrations' opening, subtracted from the cosine as weight x
    the mean opacity inside the fingers (a soft, differentiable collision): a pose turned off a handle's axis needs
    a wider opening to be clear, and its wider fingers end in the table; 0 leaves clearance to the final check."""
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
        rule = functools.partial(field_rule, problems, 'manipulation', self)
        rule(('query_sigma', 'voxel_size', 'lr_translation', 'lr_rotation', 'volume_memory_mb'), 'a positive number',
             lambda v: is_finite(v) and v > 0)
        rule(('mask_margin', 'tilt_weight', 'clearance_weight'), 'a number >= 0', lambda v: is_finite(v) and v >= 0)
        rule(('max_tilt_deg',), 'in (0, 180]', lambda v: is_finite(v) and 0 < v <= 180)
        rule(('num_query_points', 'max_seed_voxels', 'rotations_per_voxel', 'min_candidates', 'start_candidates',
              'top_k'), 'an integer >= 1', lambda v: is_integer(v) and v >= 1)
        rule(('steps', 'max_collisions'), 'an integer >= 0', lambda v: is_integer(v) and v >= 0)
        rule(('keep_fraction',), 'in (0, 1]', lambda v: is_finite(v) and 0 < v <= 1)
        rule(('alpha_threshold',), 'in (0, 1)', lambda v: is_finite(v) and 0 < v < 1)
        rule(('min_score', 'task_min_similarity'), 'in [-1, 1]', lambda v: is_finite(v) and -1 <= v <= 1)
        rule(('gripper',), f'one of {list(GRIPPER_NAMES)}', lambda v: v in GRIPPER_NAMES)
        rule(('palm_size',), 'three positive numbers',
             lambda v: len(tuple(v)) == 3 and all(is_finite(x) and x > 0 for x in v))
        raise_problems(problems)


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
    repair_from_newest: bool = True
    """Count `repair_steps` (and the focus) from the newest keyframe of the change's episode, not from its detection:
    a rescan arc keeps teaching the changed region until its last view (False: from the detection only)."""
    focus_fraction: float = 0.5
    """Fraction of each batch's rays from the change's views through changed voxels, for `repair_steps` (0 = off)."""
    surface_loss_mult: float = 0.0
    """Weight of the surface prior for `repair_steps` (0 = off; 0.01 measured): density is pushed up just behind the
    surfaces the change's views saw by depth in changed voxels and down in front of them (a field that learnt empty
    space there barely feels the photometric loss). Off by default: with a false detection beside the real change,
    the ROS scene-change test's answer went to the falsely changed region in 4 of 6 runs."""
    rewind: float = 0.5
    """After a change the learning rates go back to the schedule's at this fraction of trainer.steps, if lower."""

    def __post_init__(self):
        problems = []
        rule = functools.partial(field_rule, problems, 'changes', self)
        rule(('min_steps', 'max_pixels', 'min_pixels', 'min_voxels', 'episode_frames', 'repair_steps'),
             'an integer >= 0', lambda v: is_integer(v) and v >= 0)
        rule(('depth_tolerance', 'depth_relative', 'color_tolerance', 'margin', 'surface_loss_mult'), '>= 0',
             lambda v: is_finite(v) and v >= 0)
        rule(('voxel_size',), '0.001..0.5 m', lambda v: is_finite(v) and 1e-3 <= v <= 0.5)
        rule(('min_accumulation', 'focus_fraction', 'rewind'), '0..1', lambda v: is_finite(v) and 0 <= v <= 1)
        raise_problems(problems)
