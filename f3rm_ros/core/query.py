"""Text queries over a trained field: workspace heatmap, clusters and grasp candidates, plus pictures.

What a grasp planner gets for "mug" (DESIGN.md §1, issue 4):

1. A voxel grid over the workspace (``query.voxel_size`` metres). The field's density at every voxel centre
   becomes ``alpha = 1 - exp(-density * voxel)`` (voxel in field units): the opacity of one voxel. Voxels
   with ``alpha >= query.alpha_threshold`` are on or inside a surface; only those are kept (minus isolated
   specks of a few voxels, the NeRF's floaters), so the cloud shows objects, not air. Their features and
   colour (nerfacto's RGB seen from straight above, average appearance embedding) are evaluated once and
   cached until `FieldQuerier.invalidate` (the model changed).
   Everything is evaluated in chunks of ``query.chunk_size`` points under ``no_grad``: bounded memory on a
   CPU, large batches on a GPU.
2. The text is split into comma-separated positives (averaged) and the configured negatives; relevancy per
   kept voxel is `relevancy.relevancy` (min over negatives of the pairwise softmax, or cosine).
3. Voxels above a threshold (Otsu on the relevancy histogram, or a percentile) are clustered with open3d's
   DBSCAN. Each cluster gets a gravity-aligned oriented box and a top-down grasp candidate.

All outputs are in ``base_frame`` metres (the workspace's frame); nothing here imports rclpy.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames

from .config import F3RMConfig
from .frames import PosedFrame
from .geometry import WorkspaceBox
from .relevancy import TextQuery, embed_query, relevancy, split_phrases
from .render import colorize, feature_pca, overlay

log = logging.getLogger(__name__)

# Relevancy of a voxel that is exactly as close to the query as to its closest negative: in pairwise-softmax
# mode nothing at or below it is "the queried thing", whatever Otsu says (no negatives: no floor). Selection
# needs a margin above it: a phrase that is also a negative scores 0.5 give or take a float32 rounding.
SOFTMAX_FLOOR = 0.5
FLOOR_MARGIN = 1e-6
# Relevancy values above the floor that span less than this are one mode, not two for Otsu to separate.
OTSU_MIN_SPREAD = 0.05
# Occupied groups of voxels smaller than this (m³; 8 cm³ = 8 voxels of 1 cm) are floaters, not objects.
MIN_COMPONENT_VOLUME = 8e-6
# Default grasp depth: how far below the top of a cluster the fingertips' centre goes (capped at half height).
GRASP_DEPTH = 0.03


# -------------------------------------------------------------------------------------------- data types

@dataclass
class Heatmap:
    """Relevancy over the occupied voxels of the workspace, in ``base_frame``.

    Attributes:
        points: [N, 3] float32 voxel centres (metres).
        rgb: [N, 3] uint8 reconstructed colour (viewed from above).
        relevancy: [N] float32 relevancy of each point to the query.
        alpha: [N] float32 per-voxel opacity ``1 - exp(-density * voxel)``.
        selected: [N] bool, relevancy above the query's threshold (the points that were clustered).
        voxel_size: grid spacing in metres.
        base_frame: frame the points are in.
    """

    points: np.ndarray
    rgb: np.ndarray
    relevancy: np.ndarray
    alpha: np.ndarray
    selected: np.ndarray
    voxel_size: float
    base_frame: str = 'base_link'

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def colors(self, mode: str = 'relevancy', colormap: str = 'turbo', lo: Optional[float] = None,
               hi: Optional[float] = None) -> np.ndarray:
        """[N, 3] uint8: the relevancy through `colormap` (``mode='relevancy'``) or the RGB (``'rgb'``)."""
        if mode == 'rgb':
            return self.rgb
        if mode != 'relevancy':
            raise ValueError(f"colour mode must be 'relevancy' or 'rgb', got {mode!r}")
        if len(self) == 0:
            return np.zeros((0, 3), np.uint8)
        lo = float(np.min(self.relevancy)) if lo is None else lo
        hi = float(np.max(self.relevancy)) if hi is None else hi
        return (colorize(self.relevancy, colormap, lo, hi) * 255 + 0.5).astype(np.uint8)


@dataclass
class Cluster:
    """A group of relevant points and a grasp candidate for it, in ``base_frame``.

    The box is fitted to the cluster's core, its more relevant half (see `core_points`), and is gravity
    aligned (objects rest on a table): its z axis is base z, its x axis the major and its y axis the minor
    horizontal principal axis of the core points.

    Attributes:
        centroid: [3] centre of the oriented box (metres): the object's position for a planner.
        extent: [3] box size along its own axes (major, minor, vertical), voxel footprint included.
        rotation: [3, 3] box axes as columns in base_frame (right-handed).
        score: mean relevancy of the points.
        max_relevancy: highest relevancy of the points.
        num_points: number of voxels in the cluster.
        evidence: ranking key, sum over points of (relevancy - threshold); see `FieldQuerier.query`.
        mean: [3] mean of the points (differs from `centroid` for lopsided objects, e.g. a mug's handle).
        grasp: [4, 4] gripper pose in base_frame. Gripper frame: z = approach direction (pointing from the
            gripper into the object), y = closing direction of the fingers, x = y × z; the origin is the
            point between the fingertips. Candidates approach top-down (z = -base z), closing across the
            box's minor horizontal axis, with the fingertips `GRASP_DEPTH` below the core's top (90th
            percentile of its heights; at most half way down the box).
        indices: [num_points] indices of the points in the query's `Heatmap`.
    """

    centroid: np.ndarray
    extent: np.ndarray
    rotation: np.ndarray
    score: float
    max_relevancy: float
    num_points: int
    evidence: float
    mean: np.ndarray
    grasp: np.ndarray
    indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    @property
    def box_min(self) -> np.ndarray:
        """Lower corner of the box in its own axes (relative to the centroid)."""
        return -self.extent / 2

    @property
    def grasp_width(self) -> float:
        """Opening the gripper needs: the box size along the closing direction (metres)."""
        return float(self.extent[1])

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Bool [...]: points [..., 3] in base_frame inside the oriented box grown by `margin` metres."""
        local = (np.asarray(points, dtype=np.float64) - self.centroid) @ self.rotation
        return np.all(np.abs(local) <= self.extent / 2 + margin + 1e-9, axis=-1)  # points on a face count

    def as_dict(self) -> Dict:
        """Plain JSON-able summary (no point indices)."""
        return {'centroid': self.centroid.tolist(), 'extent': self.extent.tolist(),
                'rotation': self.rotation.tolist(), 'score': self.score, 'max_relevancy': self.max_relevancy,
                'num_points': self.num_points, 'evidence': self.evidence, 'mean': self.mean.tolist(),
                'grasp': self.grasp.tolist()}


@dataclass
class QueryResult:
    """Everything one text query produced.

    Attributes:
        text: the query as given.
        positives: phrases averaged into the query embedding.
        negatives: phrases the positives were contrasted with.
        heatmap: the occupied voxels with their relevancy.
        clusters: best first (see `FieldQuerier.query` for the ranking).
        timings: seconds per stage: 'text', 'field' (0 when the voxel cache was warm), 'relevancy',
            'cluster', and 'total'.
        threshold: relevancy threshold the clustered points passed (nan with no occupied voxels).
    """

    text: str
    positives: List[str]
    negatives: List[str]
    heatmap: Heatmap
    clusters: List[Cluster]
    timings: Dict[str, float]
    threshold: float

    @property
    def best(self) -> Optional[Cluster]:
        """The top cluster, or None."""
        return self.clusters[0] if self.clusters else None


# -------------------------------------------------------------------------------------------- helpers

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values`: the histogram split that maximises the between-class variance.

    Returns a bin edge (the middle one when several splits tie, as across an empty gap), so ``values > t``
    is the upper class; when all values are equal it returns that value (nothing is above it).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float('nan')
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return hi
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)          # split after bin i: low = 0..i
    weight_high = values.size - weight_low
    sum_low = np.cumsum(counts * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.sum(counts * centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # Every split inside an empty gap of the histogram scores the same: take the middle of the gap.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def oriented_box(points: np.ndarray, voxel_size: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gravity-aligned oriented box of points [N, 3]: (centre [3], extent [3], rotation [3, 3]).

    Axes: x = major horizontal principal direction, y = minor horizontal, z = base z. Extents are the span
    of the points along each axis plus `voxel_size` (each point stands for a voxel).
    """
    points = np.asarray(points, dtype=np.float64)
    xy = points[:, :2] - points[:, :2].mean(axis=0)
    if len(points) >= 2 and np.abs(xy).max() > 0:
        _, vectors = np.linalg.eigh(xy.T @ xy)      # ascending eigenvalues
        major = vectors[:, 1]
    else:
        major = np.array([1.0, 0.0])
    major = major * (1.0 if major[0] >= 0 else -1.0)  # deterministic sign: x axis points forward
    rotation = np.array([[major[0], -major[1], 0.0], [major[1], major[0], 0.0], [0.0, 0.0, 1.0]])
    local = points @ rotation
    lo, hi = local.min(axis=0), local.max(axis=0)
    centre = rotation @ ((lo + hi) / 2)
    return centre, (hi - lo) + voxel_size, rotation


def core_points(points: np.ndarray, values: np.ndarray, min_points: int = 10) -> np.ndarray:
    """Return the cluster's more relevant half: points at or above the median relevancy (at least `min_points`).

    Relevancy fades out over a few centimetres around an object, because the 2D teacher's patches mix the
    object with its surroundings; the fringe lies on the support surface and skews a box fitted to all
    points (a small ball's box can be twice its size). The upper half is the object itself.
    """
    if len(points) <= min_points:
        return points
    keep = values >= np.median(values)
    if keep.sum() < min_points:
        keep = np.argsort(-values)[:min_points]
    return points[keep]


def top_down_grasp(centroid: np.ndarray, extent: np.ndarray, rotation: np.ndarray,
                   depth: float = GRASP_DEPTH, top: Optional[float] = None) -> np.ndarray:
    """Gripper pose [4, 4] (z = approach, y = closing) above a gravity-aligned box, fingers across its minor axis.

    The fingertips' centre goes `depth` below `top` (default: the box top), at most half way down the box.
    """
    approach = np.array([0.0, 0.0, -1.0])
    closing = rotation[:, 1].copy()
    closing[2] = 0.0
    closing /= np.linalg.norm(closing)
    x_axis = np.cross(closing, approach)
    grasp = np.eye(4)
    grasp[:3, 0], grasp[:3, 1], grasp[:3, 2] = x_axis, closing, approach
    top = centroid[2] + extent[2] / 2 if top is None else top
    grasp[:3, 3] = [centroid[0], centroid[1], top - min(depth, extent[2] / 2)]
    return grasp


def grid_components(mask: np.ndarray) -> np.ndarray:
    """Label the connected components (26-neighbourhood) of a boolean 3D grid: 0.. per cell, -1 outside.

    Union-find over neighbour pairs with pointer jumping, vectorised in numpy (no scipy).
    """
    shape = mask.shape
    flat = np.flatnonzero(mask.ravel())
    parent = np.arange(len(flat))
    if len(flat) == 0:
        return np.full(shape, -1, dtype=np.int64)
    position = np.full(mask.size, -1, dtype=np.int64)
    position[flat] = np.arange(len(flat))
    coords = np.stack(np.unravel_index(flat, shape), axis=-1)
    sources, targets = [], []
    # 13 of the 26 offsets: each neighbour pair once.
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1) if (dx, dy, dz) > (0, 0, 0)]
    for offset in offsets:
        other = coords + offset
        inside = np.all((other >= 0) & (other < shape), axis=1)
        neighbour = position[np.ravel_multi_index(tuple(other[inside].T), shape)]
        linked = neighbour >= 0
        sources.append(np.flatnonzero(inside)[linked])
        targets.append(neighbour[linked])
    sources, targets = np.concatenate(sources), np.concatenate(targets)
    while True:
        a, b = parent[sources], parent[targets]
        differ = a != b
        if not differ.any():
            break
        np.minimum.at(parent, np.maximum(a, b)[differ], np.minimum(a, b)[differ])
        while True:  # pointer jumping: every cell points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    _, labels = np.unique(parent, return_inverse=True)
    out = np.full(mask.size, -1, dtype=np.int64)
    out[flat] = labels
    return out.reshape(shape)


def _open3d():
    """Import open3d on first use, so the field and relevancy stages also run where it is not installed."""
    try:
        import open3d
    except ImportError as error:
        raise ImportError('open3d is needed for clustering and PLY files: pip install open3d-cpu '
                          '(and apt install libusb-1.0-0)') from error
    return open3d


def _quiet(o3d):
    return o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error)


def cluster_points(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """DBSCAN labels [N] (int, -1 = noise) of points [N, 3] with open3d."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    o3d = _open3d()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    with _quiet(o3d):
        labels = cloud.cluster_dbscan(eps=float(eps), min_points=int(min_points), print_progress=False)
    return np.asarray(labels, dtype=np.int64)


def write_heatmap_ply(path: Union[str, Path], heatmap: Heatmap, color: str = 'relevancy',
                      colormap: str = 'turbo') -> Path:
    """Write the heatmap as a PLY point cloud (open3d): xyz, colour, and per-point ``relevancy`` and ``alpha``.

    `color` is 'relevancy' (through `colormap`) or 'rgb' (the reconstructed colour).
    """
    o3d = _open3d()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(np.asarray(heatmap.points, dtype=np.float32).reshape(-1, 3))
    colors = heatmap.colors(color, colormap).astype(np.float32).reshape(-1, 3) / 255.0
    cloud.point.colors = o3d.core.Tensor(colors)
    cloud.point.relevancy = o3d.core.Tensor(np.asarray(heatmap.relevancy, dtype=np.float32).reshape(-1, 1))
    cloud.point.alpha = o3d.core.Tensor(np.asarray(heatmap.alpha, dtype=np.float32).reshape(-1, 1))
    with _quiet(o3d):
        ok = o3d.t.io.write_point_cloud(str(path), cloud, write_ascii=False)
    if not ok:
        raise OSError(f'could not write {path}')
    return path


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model, lock=None):
    """Hold `lock` (if any) and keep the model in eval mode, restoring its mode afterwards."""
    with (lock if lock is not None else contextlib.nullcontext()):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)


# -------------------------------------------------------------------------------------------- querier

class FieldQuerier:
    """Answers text queries over a trained `F3RMModel` (see the module docstring for the stages).

    Args:
        model: the F3RM model (eval or train mode; its mode is restored after every evaluation).
        teacher: the teacher the field was distilled from (its text encoder embeds the query).
        config: the configuration; `workspace` and `query` are used.
        lock: held while the model is evaluated, one chunk at a time (the `OnlineTrainer.lock` of a live
            trainer: training goes on between chunks, so a heatmap of a live model may mix a few steps).
        surface_only: keep only occupied voxels with at least one free 6-neighbour (a shell), instead of
            every occupied voxel; fewer points for RViz, same objects.
        min_component_volume: occupied voxels in connected groups smaller than this (m³) are dropped as
            floaters (0 keeps them); see `_drop_specks`.
    """

    def __init__(self, model, teacher, config: F3RMConfig, lock=None, surface_only: bool = False,
                 min_component_volume: float = MIN_COMPONENT_VOLUME):
        self.model = model
        self.teacher = teacher
        self.config = config
        self.lock = lock
        self.surface_only = surface_only
        self.min_component_volume = float(min_component_volume)
        self.box = WorkspaceBox.from_config(config.workspace)
        q = config.query
        if q.voxel_size <= 0:
            raise ValueError(f'query.voxel_size must be positive, got {q.voxel_size}')
        if q.chunk_size < 1:
            raise ValueError(f'query.chunk_size must be >= 1, got {q.chunk_size}')
        if q.threshold not in ('otsu', 'percentile'):
            raise ValueError(f"query.threshold must be 'otsu' or 'percentile', got {q.threshold!r}")
        if q.mode not in ('pairwise_softmax', 'cosine'):
            raise ValueError(f"query.mode must be 'pairwise_softmax' or 'cosine', got {q.mode!r}")
        self.grid = self.box.grid(q.voxel_size)                 # [Nx, Ny, Nz, 3] base_frame
        self._cache: Optional[Dict[str, np.ndarray]] = None
        self._features: Optional[torch.Tensor] = None
        self._grid_field: Optional[torch.Tensor] = None
        self._negative_embeddings: Dict[Tuple[str, ...], torch.Tensor] = {}
        # seconds of the last `prepare`: 'density' (grid), 'occupancy' (alpha, specks), 'features' (+ colour)
        self.prepare_timings: Dict[str, float] = {}

    @property
    def grid_shape(self) -> Tuple[int, int, int]:
        """Voxels per axis."""
        return tuple(self.grid.shape[:3])

    @property
    def num_voxels(self) -> int:
        """Voxels in the workspace grid."""
        return int(np.prod(self.grid_shape))

    def invalidate(self) -> None:
        """Forget the cached voxels: call after the model changed (training steps, a new checkpoint)."""
        self._cache = None
        self._features = None

    @property
    def num_occupied(self) -> int:
        """Voxels kept as occupied by the last `prepare` (0 before it)."""
        return 0 if self._cache is None else len(self._cache['index'])

    @property
    def cached(self) -> bool:
        """True when the occupied voxels are evaluated and cached."""
        return self._cache is not None

    # ---- field evaluation

    def _positions_field(self, points_base: np.ndarray) -> torch.Tensor:
        field_points = self.box.to_field(points_base).astype(np.float32)
        return torch.from_numpy(field_points).to(_model_device(self.model))

    def _ray_samples(self, positions: torch.Tensor) -> RaySamples:
        """Point samples looking straight down (base -z; field axes are base axes)."""
        directions = torch.zeros_like(positions)
        directions[:, 2] = -1.0
        zeros = torch.zeros_like(positions[:, :1])
        frustums = Frustums(origins=positions, directions=directions, starts=zeros, ends=zeros,
                            pixel_area=torch.ones_like(zeros))
        return RaySamples(frustums=frustums,
                          camera_indices=torch.zeros_like(positions[:, :1], dtype=torch.long))

    @torch.no_grad()
    def grid_alpha(self) -> np.ndarray:
        """Opacity of every grid voxel, ``1 - exp(-density * voxel)`` [Nx * Ny * Nz] (one transfer from the device)."""
        density = self._density(self._grid_positions())
        voxel_field = self.config.query.voxel_size * self.box.scale
        return (1.0 - torch.exp(-density.clamp(min=0.0) * voxel_field)).cpu().numpy()

    def _grid_positions(self) -> torch.Tensor:
        """Every voxel centre in field units [N, 3] on the model's device, made once per device."""
        device = _model_device(self.model)
        if self._grid_field is None or self._grid_field.device != device:
            self._grid_field = self._positions_field(self.grid.reshape(-1, 3))
        return self._grid_field

    def _density(self, positions: torch.Tensor) -> torch.Tensor:
        """Density [N] float32 on the model's device at field-unit positions [N, 3], in chunks."""
        chunk = self.config.query.chunk_size
        out = torch.empty(len(positions), device=positions.device)
        for start in range(0, len(positions), chunk):
            with _eval_mode(self.model, self.lock):  # per chunk: a live trainer waits for one chunk at most
                out[start:start + chunk] = self.model.density_at(positions[start:start + chunk])[..., 0].float()
        return out

    def _features_and_colour(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D] float32, RGB [N, 3] uint8), both on the model's device, in chunks."""
        chunk = self.config.query.chunk_size
        features = torch.empty((len(positions), self.config.feature_field.feature_dim), device=positions.device)
        rgb = torch.empty((len(positions), 3), dtype=torch.uint8, device=positions.device)
        for start in range(0, len(positions), chunk):
            part = positions[start:start + chunk]
            samples = self._ray_samples(part)
            with _eval_mode(self.model, self.lock):
                _, embedding = self.model.field.get_density(samples)
                colour = self.model.field.get_outputs(samples, density_embedding=embedding)[FieldHeadNames.RGB]
                features[start:start + chunk] = self.model.features_at(part).float()
            rgb[start:start + chunk] = (colour.float().clamp(0, 1) * 255 + 0.5).byte()
        return features, rgb

    def _occupied(self) -> Tuple[np.ndarray, np.ndarray]:
        """(flat indices of kept voxels, their alpha) from one density pass over the grid."""
        started = time.perf_counter()
        alpha = self.grid_alpha()
        self.prepare_timings = {'density': time.perf_counter() - started}
        started = time.perf_counter()
        occupied = (alpha >= self.config.query.alpha_threshold).reshape(self.grid_shape)
        self._drop_specks(occupied)
        if self.surface_only:
            padded = np.pad(occupied, 1, constant_values=False)
            interior = np.ones_like(occupied)
            for axis in range(3):
                for shift in (-1, 1):
                    interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
            occupied &= ~interior
        index = np.flatnonzero(occupied.ravel())
        self.prepare_timings['occupancy'] = time.perf_counter() - started
        return index, alpha[index].astype(np.float32)

    def _drop_specks(self, occupied: np.ndarray) -> None:
        """Clear (in place) connected groups of occupied voxels smaller than `min_component_volume`.

        A NeRF leaves small blobs of density in the air that no camera can rule out; what a robot can grasp
        rests on something and so joins the support surface's component (26-connected voxels).
        """
        voxel = self.config.query.voxel_size
        min_voxels = int(np.ceil(self.min_component_volume / voxel ** 3 - 1e-9))
        if min_voxels <= 1 or not occupied.any():
            return
        labels = grid_components(occupied)
        sizes = np.bincount(labels[labels >= 0])
        small = (labels >= 0) & (sizes[np.maximum(labels, 0)] < min_voxels)
        if small.any():
            log.debug('dropping %d voxels in %d specks', int(small.sum()), int(np.sum(sizes < min_voxels)))
            occupied[small] = False

    def prepare(self) -> float:
        """Evaluate and cache the occupied voxels (density, features, colour) if needed; returns seconds."""
        if self._cache is not None:
            return 0.0
        started = time.perf_counter()
        index, alpha = self._occupied()
        points = self.grid.reshape(-1, 3)[index].astype(np.float32)
        features_started = time.perf_counter()
        positions = self._grid_positions()[torch.from_numpy(index).to(self._grid_field.device)]
        features, rgb = self._features_and_colour(positions)
        rgb = rgb.cpu().numpy()
        self.prepare_timings['features'] = time.perf_counter() - features_started
        self._cache = {'index': index, 'points': points, 'alpha': alpha, 'rgb': rgb}
        self._features = features
        seconds = time.perf_counter() - started
        log.debug('query cache: %d of %d voxels occupied, %.2f s', len(index), self.num_voxels, seconds)
        return seconds

    # ---- queries

    def embed(self, text: str) -> Tuple[TextQuery, List[str], List[str]]:
        """(TextQuery, positives, negatives) for comma-separated `text`; ValueError when it is empty."""
        positives = split_phrases(text or '')
        if not positives:
            raise ValueError(f'the query {text!r} is empty: give at least one phrase, e.g. "mug" or '
                             f'"mug, coffee cup"')
        q = self.config.query
        negatives = [n for n in (s.strip() for s in q.negatives) if n]
        query = embed_query(self.teacher, positives, negatives, q.temperature, q.mode, self._negative_embeddings)
        return query, positives, negatives

    def relevancy_of(self, query: TextQuery) -> np.ndarray:
        """Relevancy [N] float32 of the cached voxels (call `prepare` first), in chunks."""
        chunk = self.config.query.chunk_size
        query = query.to(self._features.device)
        out = np.empty(len(self._features), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(self._features), chunk):
                out[start:start + chunk] = relevancy(self._features[start:start + chunk], query).float().cpu().numpy()
        return out

    def threshold_of(self, values: np.ndarray, query: Optional[TextQuery] = None) -> float:
        """Threshold of `values` by `query.threshold` (Otsu or percentile).

        For a pairwise-softmax `query` with negatives it is at least `SOFTMAX_FLOOR`, and Otsu splits only the
        values above that floor: most voxels (the table, the room) sit near 0.5, like no negative and unlike the
        query, and a split of the whole histogram would fall among them, letting a broad region of barely
        relevant surface join the object's cluster.
        """
        q = self.config.query
        if values.size == 0:
            return float('nan')
        floor = -np.inf
        if query is not None and query.contrastive:
            floor = SOFTMAX_FLOOR + FLOOR_MARGIN
        if q.threshold == 'percentile':
            threshold = float(np.percentile(values, q.percentile))
        else:
            above = values[values > floor]
            # one tight mode above the floor (an ideal field: the object alone) has nothing to split
            split = above.size > 0 and np.ptp(above) > OTSU_MIN_SPREAD
            threshold = otsu_threshold(above) if split else floor
        return max(threshold, floor)

    def query(self, text: str, cluster: bool = True) -> QueryResult:
        """Heatmap, ranked clusters and grasp candidates for comma-separated positive phrases.

        `cluster` False gives the heatmap alone (no clusters, no open3d needed).

        Clusters are ranked by their evidence, the sum over their points of (relevancy - threshold): a
        cluster wins by being both clearly relevant and big. Mean relevancy alone would let a handful of
        stray voxels beat the object (DBSCAN's `min_points` bounds them only from below); size alone would
        let a large, barely-relevant region (a table edge) beat it; the sum weighs both. Ties keep the
        higher maximum first.

        Raises:
            ValueError: the text has no phrase.
        """
        q = self.config.query
        started = time.perf_counter()
        text_query, positives, negatives = self.embed(text)
        timings = {'text': time.perf_counter() - started}
        timings['field'] = self.prepare()
        cache = self._cache

        started = time.perf_counter()
        values = self.relevancy_of(text_query)
        threshold = self.threshold_of(values, text_query)
        selected = values > threshold if values.size else np.zeros(0, dtype=bool)
        timings['relevancy'] = time.perf_counter() - started

        started = time.perf_counter()
        clusters = self._clusters(cache['points'], values, selected, threshold) if cluster else []
        timings['cluster'] = time.perf_counter() - started
        timings['total'] = sum(timings.values())

        heatmap = Heatmap(points=cache['points'].copy(), rgb=cache['rgb'].copy(), relevancy=values,
                          alpha=cache['alpha'].copy(), selected=selected, voxel_size=q.voxel_size,
                          base_frame=self.config.workspace.base_frame)
        return QueryResult(text=text, positives=positives, negatives=negatives, heatmap=heatmap,
                           clusters=clusters, timings=timings, threshold=threshold)

    def _clusters(self, points: np.ndarray, values: np.ndarray, selected: np.ndarray,
                  threshold: float) -> List[Cluster]:
        q = self.config.query
        chosen = np.flatnonzero(selected)
        labels = cluster_points(points[chosen], q.cluster_eps, q.cluster_min_points)
        clusters = []
        for label in range(labels.max() + 1 if labels.size else 0):
            members = chosen[labels == label]
            member_points = points[members].astype(np.float64)
            member_values = values[members].astype(np.float64)
            core = core_points(member_points, member_values)
            centre, extent, rotation = oriented_box(core, q.voxel_size)
            top = float(np.percentile(core[:, 2], 90)) + q.voxel_size / 2
            clusters.append(Cluster(
                centroid=centre, extent=extent, rotation=rotation,
                score=float(member_values.mean()), max_relevancy=float(member_values.max()),
                num_points=int(len(members)), evidence=float(np.sum(member_values - threshold)),
                mean=member_points.mean(axis=0), grasp=top_down_grasp(centre, extent, rotation, top=top),
                indices=members))
        clusters.sort(key=lambda c: (-c.evidence, -c.max_relevancy))
        return clusters


# -------------------------------------------------------------------------------------------- pictures

def _view_arguments(pose: Union[PosedFrame, np.ndarray], K, width, height):
    if isinstance(pose, PosedFrame):
        return pose.T_base_optical, pose.K, pose.width, pose.height
    if K is None or width is None or height is None:
        raise ValueError('a bare pose needs K, width and height (or pass a PosedFrame)')
    return np.asarray(pose, dtype=np.float64), np.asarray(K, dtype=np.float64), int(width), int(height)


def default_view(box: WorkspaceBox, width: int = 320, height: int = 240,
                 hfov_deg: float = 60.0) -> PosedFrame:
    """Return a probe frame (black image) looking at the workspace from behind and above (the robot's side).

    The camera sits on the -x side of the workspace centre at 50° elevation, far enough for the whole box.
    """
    from .scenes import look_at, pinhole_intrinsics
    K = pinhole_intrinsics(width, height, hfov_deg)
    size = box.max_xyz - box.min_xyz
    distance = 1.1 * np.linalg.norm(size) / (2 * np.tan(np.radians(hfov_deg) / 2) * min(1.0, height / width))
    elevation = np.radians(50.0)
    eye = box.center + distance * np.array([-np.cos(elevation), 0.0, np.sin(elevation)])
    return PosedFrame(np.zeros((height, width, 3), np.uint8), K, look_at(eye, box.center))


def render_view(source, pose: Union[PosedFrame, np.ndarray], K: Optional[np.ndarray] = None,
                width: Optional[int] = None, height: Optional[int] = None, query: Optional[TextQuery] = None,
                box: Optional[WorkspaceBox] = None, lock=None) -> Dict[str, np.ndarray]:
    """Render a view of a trainer or a model: rgb [H, W, 3], depth [H, W] (metres), accumulation, feature.

    `source` is an `OnlineTrainer` (its lock and box are used) or an `F3RMModel` (then give `box`, and the
    `lock` if a trainer uses the model). `pose` is a PosedFrame or a 4x4 T_base_optical with `K`, `width`,
    `height`. With `query`, the result has `similarity` [H, W]; the model's own query is restored after.
    """
    T, K, width, height = _view_arguments(pose, K, width, height)
    if hasattr(source, 'render') and hasattr(source, 'model'):       # an OnlineTrainer
        model, lock, box = source.model, source.lock, source.box
        render = source.render
    else:
        model = source
        if box is None:
            raise ValueError('rendering a bare model needs its workspace box (box=WorkspaceBox...)')
        render = None
    with (lock if lock is not None else contextlib.nullcontext()):
        previous = model.query
        model.set_query(query)
        try:
            if render is not None:
                return render(T, K, width, height)
            from .trainer import render_model
            return render_model(model, box, T, K, width, height)
        finally:
            model.query = previous


def similarity_overlay(view: Dict[str, np.ndarray], query: Optional[TextQuery] = None,
                       colormap: str = 'turbo', alpha: float = 0.6) -> np.ndarray:
    """Float RGB [H, W, 3]: a rendered view's similarity over its RGB, desaturated so the heat stands out.

    In pairwise-softmax mode the colour scale starts at 0.5 (no more like the query than a negative), as
    LERF/F3RM show it; in cosine mode it spans the image's range. The view's colours are mostly greyed out:
    a red mug under a red heat would otherwise look the same as without it.
    """
    if 'similarity' not in view:
        raise ValueError('the view has no similarity: render it with a query')
    lo = hi = None
    if query is not None and query.contrastive:
        lo, hi = SOFTMAX_FLOOR, max(float(np.nanmax(view['similarity'])), SOFTMAX_FLOOR + 1e-3)
    rgb = np.clip(view['rgb'], 0, 1)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    muted = 0.25 * rgb + 0.75 * grey[..., None]
    return overlay(muted, view['similarity'], colormap, alpha, lo, hi)


def similarity_view(source, pose: Union[PosedFrame, np.ndarray], query: TextQuery,
                    K: Optional[np.ndarray] = None, width: Optional[int] = None, height: Optional[int] = None,
                    box: Optional[WorkspaceBox] = None, lock=None, colormap: str = 'turbo') -> np.ndarray:
    """Render a view (see `render_view`) and return its similarity overlay, float RGB [H, W, 3] in [0, 1]."""
    view = render_view(source, pose, K, width, height, query=query, box=box, lock=lock)
    return similarity_overlay(view, query, colormap)


def feature_pca_image(view: Dict[str, np.ndarray]) -> np.ndarray:
    """Float RGB [H, W, 3]: the first three principal components of a rendered view's features."""
    return feature_pca(view['feature'])


def cluster_table(clusters: Sequence[Cluster], limit: int = 10) -> str:
    """Human-readable lines: rank, centroid, extent, score, points (metres)."""
    if not clusters:
        return 'no clusters above the threshold'
    lines = [f'{"#":>2}  {"centroid x y z (m)":<24} {"extent (m)":<21} {"score":>6} {"points":>6}']
    for rank, cluster in enumerate(clusters[:limit]):
        c, e = cluster.centroid, cluster.extent
        lines.append(f'{rank:>2}  {c[0]:7.3f} {c[1]:7.3f} {c[2]:7.3f}  {e[0]:6.3f} {e[1]:6.3f} {e[2]:6.3f} '
                     f'{cluster.score:6.3f} {cluster.num_points:6d}')
    return '\n'.join(lines)
