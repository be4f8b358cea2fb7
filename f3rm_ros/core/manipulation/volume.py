"""A trained field sampled on a grid around where a pose is sought: opacity-weighted features, occupancy.

F3RM reads the field at a pose's query points: the feature f(x) weighted by alpha(x) = 1 - exp(-density(x) *
delta). Candidates number in the thousands and each moves for a hundred steps, so instead of running the
network for every point of every step, the field is evaluated once on a grid (the query's `VoxelField`,
cropped to the region and at ``manipulation.voxel_size``, so delta is that voxel) and read back with trilinear
interpolation by `torch.nn.functional.grid_sample`, which is differentiable in the sample positions: the pose
gradients come from the interpolation, whatever hash-grid implementation (tiny-cuda-nn, Triton, torch) the
field runs on.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np
import torch

from .gripper import OccupancyGrid
from ..config import F3RMConfig
from ..geometry import WorkspaceBox
from ..query.grasps import Occupancy
from ..query.voxels import VoxelField

log = logging.getLogger(__name__)

# Sample points per grid_sample call: bounds the [points, D] output (CLIP's 768-d features on a GPU included).
SAMPLE_CHUNK_VALUES = 1 << 26


class FieldVolume:
    """Opacity-weighted unit features [D] on a grid over `region`, and its occupancy, on one device.

    Attributes:
        region: the box the grid covers (base_frame).
        voxel_size: grid step (m).
        features: [1, D, Nz, Ny, Nx] alpha * unit feature per voxel (0 where the field is empty): the layout
            grid_sample reads (its x, y, z index the last three axes in reverse).
        occupancy: the occupied voxels, for gripper collisions.
        alpha: [1, 1, Nz, Ny, Nx] the opacity per voxel (0 below the occupancy threshold), same layout: read by
            the optimisation's clearance cost (a soft, differentiable collision).
        occupancy_on_host: the same occupied voxels as numpy (`Occupancy`), for reading the support under the
            fingers (`support_under_box`); None when not kept.
    """

    def __init__(self, region: WorkspaceBox, voxel_size: float, features: torch.Tensor, occupancy: OccupancyGrid,
                 alpha: Optional[torch.Tensor] = None, occupancy_on_host: Optional[Occupancy] = None):
        self.region = region
        self.voxel_size = float(voxel_size)
        self.features = features
        self.occupancy = occupancy
        self.alpha = alpha if alpha is not None else torch.zeros_like(features[:, :1])
        self.occupancy_on_host = occupancy_on_host
        counts = torch.tensor(features.shape[2:][::-1], dtype=torch.float32)   # Nx, Ny, Nz
        first = torch.as_tensor(region.min_xyz + voxel_size / 2, dtype=torch.float32)
        span = torch.clamp((counts - 1) * self.voxel_size, min=self.voxel_size)
        self._first = first.to(features.device)
        self._span = span.to(features.device)

    @property
    def dim(self) -> int:
        """Feature width D."""
        return int(self.features.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the grid lives (the field's device)."""
        return self.features.device

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """alpha-weighted unit features [..., D] at points [..., 3] (base_frame); zero outside the region.

        Trilinear between voxel centres, differentiable with respect to `points`.
        """
        return self._read(self.features, points)

    def sample_alpha(self, points: torch.Tensor) -> torch.Tensor:
        """Opacity [...] at points [..., 3] (base_frame), trilinear and differentiable; zero outside the region."""
        return self._read(self.alpha, points)[..., 0]

    def _read(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Trilinear values [..., C] of a [1, C, Nz, Ny, Nx] grid over the region at points [..., 3]."""
        shape = points.shape[:-1]
        channels = int(grid.shape[1])
        flat = points.reshape(-1, 3)
        normalised = 2.0 * (flat - self._first.to(flat.dtype)) / self._span.to(flat.dtype) - 1.0
        chunk = max(1, SAMPLE_CHUNK_VALUES // max(channels, 1))
        out = []
        for start in range(0, len(normalised), chunk):
            where = normalised[start:start + chunk].view(1, -1, 1, 1, 3).to(grid.dtype)
            values = torch.nn.functional.grid_sample(grid, where, mode='bilinear', padding_mode='zeros',
                                                     align_corners=True)          # [1, C, n, 1, 1]
            out.append(values[0, :, :, 0, 0].transpose(0, 1))
        return torch.cat(out).float().reshape(*shape, channels)


def sample_field(model, config: F3RMConfig, region: WorkspaceBox, lock=None) -> FieldVolume:
    """Evaluate the model on a grid over `region` (clipped to the workspace): a `FieldVolume`.

    The grid step is ``manipulation.voxel_size``, coarsened until the volume fits ``manipulation.volume_memory_mb``.
    Voxels of opacity below ``manipulation.alpha_threshold`` hold no feature and are free for collisions.
    """
    m = config.manipulation
    box = WorkspaceBox.from_config(config.workspace)
    lo, hi = np.maximum(region.min_xyz, box.min_xyz), np.minimum(region.max_xyz, box.max_xyz)
    if np.any(hi - lo < m.voxel_size):
        raise ValueError(f'the region {lo.round(3).tolist()}..{hi.round(3).tolist()} lies outside the workspace')
    dim = int(config.feature_field.feature_dim)
    voxel = float(m.voxel_size)
    device_type = next(model.parameters()).device.type
    bytes_per_value = 2 if device_type == 'cuda' else 4
    while np.prod(np.round((hi - lo) / voxel)) * dim * bytes_per_value > m.volume_memory_mb * 2 ** 20:
        voxel *= 1.25
    if voxel != m.voxel_size:
        log.info('manipulation: sampling the field at %.1f mm, not %.1f mm, to stay within %.0f MB',
                 voxel * 1000, m.voxel_size * 1000, m.volume_memory_mb)
    query = dataclasses.replace(config.query, voxel_size=voxel, alpha_threshold=m.alpha_threshold,
                                crop_min_xyz=tuple(float(v) for v in lo), crop_max_xyz=tuple(float(v) for v in hi))
    voxels = VoxelField(model, box, query, dim, lock=lock, surface_only=False)
    voxels.prepare()
    shape = voxels.grid_shape
    device = voxels.features.device
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    dense = torch.zeros((dim, *shape), dtype=dtype, device=device)
    opacity = torch.zeros((1, *shape), dtype=torch.float32, device=device)
    if voxels.num_occupied:
        alpha = torch.from_numpy(voxels.alpha).to(device)
        weighted = voxels.unit_features() * alpha[:, None]
        c = voxels.device_coords
        dense[:, c[:, 0], c[:, 1], c[:, 2]] = weighted.t().to(dtype)
        opacity[0, c[:, 0], c[:, 1], c[:, 2]] = alpha.float()
    features = dense.permute(0, 3, 2, 1).unsqueeze(0).contiguous()       # [1, D, Nz, Ny, Nx]
    opacity = opacity.permute(0, 3, 2, 1).unsqueeze(0).contiguous()      # [1, 1, Nz, Ny, Nx]
    occupied = torch.from_numpy(voxels.occupancy.grid).to(device)
    occupancy = OccupancyGrid(occupied, voxels.occupancy.origin, voxel)
    return FieldVolume(voxels.region, voxel, features, occupancy, opacity, voxels.occupancy)


def region_around(points: np.ndarray, margin: float) -> Optional[WorkspaceBox]:
    """Return the axis-aligned box around `points` [K, 3] grown by `margin` (m); None without points."""
    if len(points) == 0:
        return None
    return WorkspaceBox(points.min(axis=0) - margin, points.max(axis=0) + margin)
