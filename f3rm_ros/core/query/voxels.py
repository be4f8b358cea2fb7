"""The workspace voxel grid over a field: occupancy, speck removal, and the occupied voxels' features, cached.

The field's density at every voxel centre becomes ``alpha = 1 - exp(-density * voxel)`` (voxel in field units):
the opacity of one voxel. Voxels with ``alpha >= query.alpha_threshold`` are on or inside a surface; connected
groups of them smaller than `min_component_volume` are the NeRF's floaters and are dropped. The kept voxels'
features and colour (nerfacto's RGB seen from straight above, average appearance embedding) are evaluated
once and cached until `VoxelField.invalidate` (the model changed). Everything is evaluated in chunks of
``query.chunk_size`` points under ``no_grad``: bounded memory on a CPU, large batches on a GPU. Features stay
on the model's device; the host gets the alpha grid once per model and the kept voxels' points and colour.

On a GPU a cold evaluation is bound by launching a few hundred small kernels from Python, not by the GPU's work:
there the grid's density pass and the occupied voxels' features and colour (padded to a power-of-two size)
replay from CUDA graphs (`FieldGraphs`), captured on first use per model; ``F3RM_FAST=0`` or a failed capture
falls back to the eager evaluation (the same kernels).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from scipy import ndimage

from ..config import QueryConfig
from ..geometry import WorkspaceBox
from .grasps import Occupancy

log = logging.getLogger(__name__)

# Occupied groups of voxels smaller than this (m³; 8 cm³ = 8 voxels of 1 cm) are floaters, not objects.
MIN_COMPONENT_VOLUME = 8e-6
# A grid larger than this is a mistyped voxel size, not a workspace (64 M voxels ≈ 1 GB of alpha and indices).
MAX_VOXELS = 64 * 1024 * 1024
FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)
# On a GPU a chunk holds at least this many points (the `gpu` preset's chunk, F3RM's 220k-voxel grid at once):
# there the cost of a chunk is its fixed overhead, and ``query.chunk_size`` of a CPU preset would pay it many times.
GPU_MIN_CHUNK = 262144


@contextlib.contextmanager
def eval_mode(model, lock=None):
    """Hold `lock` (if any) and keep the model in eval mode, restoring its mode afterwards.

    A model already in eval mode (a loaded checkpoint) is left alone: ``Module.train`` walks every submodule,
    about 0.3 ms for nerfacto, paid twice per chunk otherwise.
    """
    with (lock if lock is not None else contextlib.nullcontext()):
        was_training = model.training
        if was_training:
            model.eval()
        try:
            yield model
        finally:
            if was_training:
                model.train(True)


def interior(occupied: np.ndarray) -> np.ndarray:
    """Occupied voxels whose six face neighbours are all occupied (outside the grid counts as free).

    The same as ``ndimage.binary_erosion(occupied, border_value=0)`` with its default cross, by slicing
    (a tenth of the time).
    """
    out = np.zeros_like(occupied)
    if min(occupied.shape) < 3:
        return out
    core = occupied[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for lo in (0, 2):
            index = [slice(1, -1)] * 3
            index[axis] = slice(lo, lo + occupied.shape[axis] - 2)
            core &= occupied[tuple(index)]
    out[1:-1, 1:-1, 1:-1] = core
    return out


def graphs_enabled() -> bool:
    """Tell whether voxel evaluation may replay CUDA graphs (CUDA present, ``F3RM_FAST`` not 0)."""
    if os.environ.get('F3RM_FAST', '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return False
    return torch.cuda.is_available()


class FieldGraphs:
    """CUDA graphs of a `VoxelField`'s evaluation.

    One graph evaluates the whole grid's density pass; one per point-count bucket (powers of two from
    `MIN_BUCKET`) the features and colour of gathered points.

    Graphs read the model's parameters in place (training steps and ``load_state_dict`` update them there) and
    write static output buffers; the caller copies what it keeps. Captured with ``capture_error_mode=
    'thread_local'``: a trainer may keep using the GPU from its own thread.
    """

    MIN_BUCKET = 1024
    WARMUP = 2
    # The features pass (nerfstudio's colour head, the feature field) failed to capture on the H200 (torch 2.11):
    # it runs eagerly unless this is set; a failed capture can leave the CUDA generator unusable for the process.
    capture_points = False

    def __init__(self, voxels: 'VoxelField'):
        self.voxels = voxels
        self.pool = None
        self.stream: Optional[torch.cuda.Stream] = None
        self.density: Optional[tuple] = None              # (graph, (alpha, embedding), the samples it reads)
        self.features: Dict[int, tuple] = {}               # bucket -> (graph, inputs, outputs, samples)

    def _capture(self, function):
        """Warm `function` up on a side stream, then capture it; returns (graph, its outputs)."""
        device = self.voxels.grid_positions().device
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=device)
        self.stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self.stream):
            for _ in range(self.WARMUP):
                function()
        torch.cuda.current_stream(device).wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode='thread_local'):
            outputs = function()
        self.pool = graph.pool()
        return graph, outputs

    def grid(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replay the density pass: (alpha [N], density embedding [N, E]) of every grid voxel, static buffers."""
        v = self.voxels
        if self.density is None:
            positions = v.grid_positions()
            samples = v._ray_samples(positions)
            with eval_mode(v.model, v.lock):
                graph, outputs = self._capture(lambda: v._density_pass(positions, samples))
            # the graph reads the samples' tensors at every replay: they must outlive this call (freed, their
            # memory would be handed to other tensors and later replays would read those)
            self.density = (graph, outputs, samples)
            log.info('voxels: captured the density pass over %d voxels as a CUDA graph', len(positions))
        graph, outputs, _ = self.density
        with (v.lock if v.lock is not None else contextlib.nullcontext()):
            graph.replay()
        return outputs

    def points(self, positions: torch.Tensor, embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replay features and colour of `positions` [n, 3] with their density `embedding`: (features, rgb) views."""
        v = self.voxels
        count = len(positions)
        bucket = max(self.MIN_BUCKET, 1 << max(0, count - 1).bit_length())
        if bucket not in self.features:
            inputs = (torch.zeros((bucket, 3), device=positions.device),
                      torch.zeros((bucket, *embedding.shape[1:]), dtype=embedding.dtype, device=positions.device))
            samples = v._ray_samples(inputs[0])
            with eval_mode(v.model, v.lock):
                graph, outputs = self._capture(lambda: v._features_pass(inputs[0], samples, inputs[1]))
            self.features[bucket] = (graph, inputs, outputs, samples)      # kept alive with the graph
            log.info('voxels: captured the features of %d points as a CUDA graph', bucket)
        graph, inputs, outputs, _ = self.features[bucket]
        inputs[0][:count] = positions
        inputs[1][:count] = embedding
        with (v.lock if v.lock is not None else contextlib.nullcontext()):
            graph.replay()
        return outputs[0][:count], outputs[1][:count]


def model_device(model) -> torch.device:
    """Return the device of the model's parameters."""
    return next(model.parameters()).device


def query_region(box: WorkspaceBox, config: QueryConfig) -> WorkspaceBox:
    """Return the box a query's grid covers: the workspace, or its overlap with ``query.crop_min_xyz/max_xyz``."""
    crop = getattr(config, 'crop', None)
    if crop is None:
        return box
    lo, hi = np.maximum(crop[0], box.min_xyz), np.minimum(crop[1], box.max_xyz)
    if np.any(hi <= lo):
        raise ValueError(f'query crop box {list(crop[0])}..{list(crop[1])} does not overlap the workspace '
                         f'{box.min_xyz.round(3).tolist()}..{box.max_xyz.round(3).tolist()}')
    return WorkspaceBox(lo, hi)


class VoxelField:
    """Occupied voxels of a model over the workspace grid, with their features (see the module docstring).

    Args:
        model: an `F3RMModel` (or anything with ``density_at``, ``features_at`` and nerfacto's ``field``).
        box: the workspace box the grid covers (base_frame).
        config: the query settings (voxel size, alpha threshold, chunk size).
        feature_dim: width of the model's features.
        lock: held while the model is evaluated, one chunk at a time (a live trainer trains between chunks).
        surface_only: publish only occupied voxels with at least one free 6-neighbour (a shell); grasps still
            see the solid occupancy.
        min_component_volume: occupied groups smaller than this (m³) are dropped as floaters (0 keeps them).
    """

    def __init__(self, model, box: WorkspaceBox, config: QueryConfig, feature_dim: int, lock=None,
                 surface_only: bool = False, min_component_volume: float = MIN_COMPONENT_VOLUME):
        counts = np.maximum(1, np.round((box.max_xyz - box.min_xyz) / config.voxel_size))
        if float(np.prod(counts)) > MAX_VOXELS:
            raise ValueError(f'query.voxel_size {config.voxel_size} m makes {int(np.prod(counts)):,} voxels over the '
                             f'{np.round(box.max_xyz - box.min_xyz, 3).tolist()} m workspace (at most {MAX_VOXELS:,}): '
                             'use a larger voxel size or a smaller workspace')
        self.model = model
        self.box = box
        self.config = config
        self.feature_dim = int(feature_dim)
        self.lock = lock
        self.surface_only = surface_only
        self.min_component_volume = float(min_component_volume)
        self.region = query_region(box, config)              # the workspace, or its part inside query.crop
        self.grid = self.region.grid(config.voxel_size)      # [Nx, Ny, Nz, 3] base_frame
        self._centres = self.grid.reshape(-1, 3).astype(np.float32)   # the heatmap's points come from here
        self._grid_field: Optional[torch.Tensor] = None
        self.occupancy: Optional[Occupancy] = None
        self.points = self.alpha = self.rgb = self.coords = None
        self.features: Optional[torch.Tensor] = None
        self._unit_features: Optional[torch.Tensor] = None
        self.use_graphs = True                      # False: evaluate eagerly on a GPU too
        self._field_graphs: Optional[FieldGraphs] = None
        self.device_coords: Optional[torch.Tensor] = None
        # seconds of the last `prepare`: 'density' (grid), 'occupancy' (alpha, specks), 'features' (+ colour)
        self.timings: Dict[str, float] = {}

    @property
    def grid_shape(self) -> Tuple[int, int, int]:
        """Voxels per axis."""
        return tuple(self.grid.shape[:3])

    @property
    def num_voxels(self) -> int:
        """Voxels in the workspace grid."""
        return int(np.prod(self.grid_shape))

    @property
    def cached(self) -> bool:
        """True when the occupied voxels are evaluated and cached."""
        return self.points is not None

    @property
    def num_occupied(self) -> int:
        """Voxels kept by the last `prepare` (0 before it)."""
        return 0 if self.points is None else len(self.points)

    def invalidate(self) -> None:
        """Forget the cached voxels: call after the model changed (training steps, a new checkpoint)."""
        self.points = self.alpha = self.rgb = self.coords = self.features = self.device_coords = None
        self._normals = None
        self._unit_features = None
        self.occupancy = None

    def normals(self) -> Optional[np.ndarray]:
        """Return unit surface normals [N, 3] (base_frame axes) of the cached voxels, or None for a model without them.

        Only a model trained with ``model.predict_normals`` has them (nerfacto's predicted normals,
        `F3RMModel.normals_at`); computed once per cache, in chunks, holding the lock per chunk.
        """
        config = getattr(self.model, 'config', None)
        wanted = getattr(config, 'predict_normals', False) and hasattr(self.model, 'normals_at')
        if self.points is None or not wanted:
            return None
        if getattr(self, '_normals', None) is None or len(self._normals) != len(self.points):
            device = model_device(self.model)
            positions = torch.from_numpy(self.box.to_field(self.points).astype(np.float32)).to(device)
            chunk = self.chunk_size(device)
            out = []
            for start in range(0, len(positions), chunk):
                with eval_mode(self.model, self.lock):
                    out.append(self.model.normals_at(positions[start:start + chunk]).cpu())
            self._normals = (torch.cat(out).numpy() if out else np.zeros((0, 3))).astype(np.float32)
        return self._normals

    def unit_features(self) -> torch.Tensor:
        """Return the cached features, each scaled to unit length (what relevancy compares), computed once per cache."""
        if self._unit_features is None or len(self._unit_features) != len(self.features):
            self._unit_features = torch.nn.functional.normalize(self.features.float(), dim=-1)
        return self._unit_features

    # ---- field evaluation

    def _ray_samples(self, positions: torch.Tensor) -> RaySamples:
        """Point samples looking straight down (base -z; field axes are base axes)."""
        directions = torch.zeros_like(positions)
        directions[:, 2] = -1.0
        zeros = torch.zeros_like(positions[:, :1])
        frustums = Frustums(origins=positions, directions=directions, starts=zeros, ends=zeros,
                            pixel_area=torch.ones_like(zeros))
        return RaySamples(frustums=frustums, camera_indices=torch.zeros_like(positions[:, :1], dtype=torch.long))

    def grid_positions(self) -> torch.Tensor:
        """Every voxel centre in field units [N, 3] on the model's device, made once per device."""
        device = model_device(self.model)
        if self._grid_field is None or self._grid_field.device != device:
            field_points = self.box.to_field(self.grid.reshape(-1, 3)).astype(np.float32)
            self._grid_field = torch.from_numpy(field_points).to(device)
        return self._grid_field

    def chunk_size(self, device: torch.device) -> int:
        """Points per model evaluation: ``query.chunk_size``, at least `GPU_MIN_CHUNK` on a GPU."""
        chunk = int(self.config.chunk_size)
        return max(chunk, GPU_MIN_CHUNK) if device.type == 'cuda' else chunk

    @torch.no_grad()
    def grid_alpha(self) -> np.ndarray:
        """Opacity of every grid voxel, ``1 - exp(-density * voxel)`` [Nx * Ny * Nz] (one transfer from the device)."""
        return self._grid_alpha(keep_embedding=False)[0]

    def opacity(self, density: torch.Tensor) -> torch.Tensor:
        """Return the opacity of voxels of `density` (field units)."""
        return 1.0 - torch.exp(-density.clamp(min=0.0) * (self.config.voxel_size * self.box.scale))

    @torch.no_grad()
    def _density_pass(self, positions: torch.Tensor, samples: RaySamples) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha [N], density embedding [N, E]) of `positions` and their `samples`, in chunks (model in eval mode)."""
        chunk = self.chunk_size(positions.device)
        alpha = torch.empty(len(positions), device=positions.device)
        embedding = None
        for start in range(0, len(positions), chunk):
            values, part = self.model.field.get_density(samples[start:start + chunk])
            if embedding is None:
                embedding = part.new_empty((len(positions), *part.shape[1:]))
            embedding[start:start + chunk] = part
            alpha[start:start + chunk] = self.opacity(values[..., 0].float())
        return alpha, embedding

    @torch.no_grad()
    def _features_pass(self, positions: torch.Tensor, samples: RaySamples,
                       embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D] float32, RGB [N, 3] uint8) of `positions` with their samples and density embedding."""
        colour = self.model.field.get_outputs(samples, density_embedding=embedding)[FieldHeadNames.RGB]
        features = self.model.features_at(positions).float()
        return features, (colour.float().clamp(0, 1) * 255 + 0.5).byte()

    @torch.no_grad()
    def _grid_alpha(self, keep_embedding: bool) -> Tuple[np.ndarray, Optional[torch.Tensor]]:
        """(`grid_alpha`, nerfacto's density embedding of every voxel on the device, or None unless `keep_embedding`).

        The embedding is what the colour head needs; kept, the occupied voxels' colour skips a second density pass.
        """
        positions = self.grid_positions()
        chunk = self.chunk_size(positions.device)
        density = torch.empty(len(positions), device=positions.device)
        embedding = None
        for start in range(0, len(positions), chunk):
            part = positions[start:start + chunk]
            with eval_mode(self.model, self.lock):  # per chunk: a live trainer waits for one chunk at most
                if keep_embedding:
                    values, part_embedding = self.model.field.get_density(self._ray_samples(part))
                    if embedding is None:
                        embedding = part_embedding.new_empty((len(positions), *part_embedding.shape[1:]))
                    embedding[start:start + chunk] = part_embedding
                else:
                    values = self.model.density_at(part)
            density[start:start + chunk] = values[..., 0].float()
        return self.opacity(density).cpu().numpy(), embedding

    @torch.no_grad()
    def features_and_colour(self, positions: torch.Tensor, embedding: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D] float32, RGB [N, 3] uint8), both on the model's device, in chunks.

        `embedding`: the points' density embedding from the grid pass (else the density is evaluated again).
        """
        chunk = self.chunk_size(positions.device)
        features = torch.empty((len(positions), self.feature_dim), device=positions.device)
        rgb = torch.empty((len(positions), 3), dtype=torch.uint8, device=positions.device)
        for start in range(0, len(positions), chunk):
            part = positions[start:start + chunk]
            samples = self._ray_samples(part)
            with eval_mode(self.model, self.lock):
                if embedding is None:
                    _, part_embedding = self.model.field.get_density(samples)
                else:
                    part_embedding = embedding[start:start + chunk]
                features[start:start + chunk], rgb[start:start + chunk] = self._features_pass(part, samples,
                                                                                              part_embedding)
        return features, rgb

    def _graphs(self, device: torch.device) -> Optional[FieldGraphs]:
        """Return the CUDA graphs of this field, or None (a CPU, graphs disabled, or a capture that failed once)."""
        if device.type != 'cuda' or not self.use_graphs or not graphs_enabled():
            return None
        if self._field_graphs is None:
            self._field_graphs = FieldGraphs(self)
        return self._field_graphs

    def _graph_failed(self, error: Exception) -> None:
        log.warning('voxels: CUDA-graph evaluation failed (%s); evaluating eagerly from now on', error)
        self.use_graphs = False
        self._field_graphs = None

    def drop_specks(self, occupied: np.ndarray) -> None:
        """Clear (in place) connected groups of occupied voxels smaller than `min_component_volume`.

        A NeRF leaves small blobs of density in the air that no camera can rule out; what a robot can grasp
        rests on something and so joins the support surface's component (26-connected voxels).
        """
        min_voxels = int(np.ceil(self.min_component_volume / self.config.voxel_size ** 3 - 1e-9))
        if min_voxels <= 1 or not occupied.any():
            return
        # label the occupied voxels' bounding box only (a view: clearing it clears `occupied`)
        box = tuple(slice(int(np.argmax(used)), len(used) - int(np.argmax(used[::-1])))
                    for used in (occupied.any(axis=(1, 2)), occupied.any(axis=(0, 2)), occupied.any(axis=(0, 1))))
        region = occupied[box]
        labels, _ = ndimage.label(region, structure=FULL_CONNECTIVITY)
        small = np.bincount(labels[region]) < min_voxels
        small[0] = False                                        # background
        if small.any():
            log.debug('dropping %d specks', int(small.sum()))
            region[small[labels]] = False

    def prepare(self) -> float:
        """Evaluate and cache the occupied voxels (density, features, colour) if needed; returns seconds."""
        if self.cached:
            return 0.0
        started = time.perf_counter()
        positions = self.grid_positions()
        graphs = self._graphs(positions.device)
        if graphs is not None:
            try:
                alpha_device, embedding = graphs.grid()
                alpha = alpha_device.cpu().numpy()
            except RuntimeError as error:   # a capture that fails (an unsupported op) leaves the eager path
                graphs = self._graph_failed(error)
        if graphs is None:
            # on a GPU the grid pass keeps the density embedding for the colour head (memory there is ample; a
            # CPU recomputes it for the occupied voxels instead of holding it for the whole grid)
            alpha, embedding = self._grid_alpha(keep_embedding=positions.device.type == 'cuda')
        self.timings = {'density': time.perf_counter() - started}
        mark = time.perf_counter()
        occupied = (alpha >= self.config.alpha_threshold).reshape(self.grid_shape)
        self.drop_specks(occupied)
        self.occupancy = Occupancy(occupied.copy(), self.region.min_xyz.copy(), self.config.voxel_size,
                                   alpha.reshape(self.grid_shape).astype(np.float32))   # rim grasps read opacity
        if self.surface_only:
            occupied &= ~interior(occupied)                            # all six neighbours occupied
        index = np.flatnonzero(occupied.ravel())
        self.timings['occupancy'] = time.perf_counter() - mark
        mark = time.perf_counter()
        index_device = torch.from_numpy(index).to(positions.device)
        features = None
        if graphs is not None and graphs.capture_points and len(index):
            try:
                features, rgb = graphs.points(positions[index_device], embedding[index_device])
                features = features.clone()
            except RuntimeError as error:
                self._graph_failed(error)
                features = None
        if features is None:
            features, rgb = self.features_and_colour(positions[index_device],
                                                     None if embedding is None else embedding[index_device])
        del embedding
        # host work while the GPU evaluates; the grid coordinates on the device come from the index there
        self.coords = np.stack(np.unravel_index(index, self.grid_shape), axis=-1).astype(np.int64)
        self.points = self._centres[index]
        self.alpha = alpha[index].astype(np.float32)
        ny, nz = self.grid_shape[1:]
        self.device_coords = torch.stack((index_device // (ny * nz), (index_device // nz) % ny, index_device % nz), -1)
        self.rgb = rgb.cpu().numpy()
        self.features = features
        self._unit_features = None
        self.timings['features'] = time.perf_counter() - mark
        seconds = time.perf_counter() - started
        log.debug('voxels: %d of %d occupied, %.2f s', len(index), self.num_voxels, seconds)
        return seconds
