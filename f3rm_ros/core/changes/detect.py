"""One keyframe against the field's view of its pose, and the coarse grid of changed voxels.

`compare_view` returns the 3D points where the keyframe and the field disagree, split into "appeared" (the
keyframe sees a surface nearer than the field, or another colour at about the same depth: lifted with the
keyframe's depth) and "vanished" (the field holds a surface nearer than the keyframe sees, or, without depth,
another colour: lifted with the field's rendered depth). Disagreements thinner than three pixels (silhouettes the
field blurs) and groups smaller than ``changes.min_pixels`` are noise. `confirm` asks the earlier keyframes
whether the scene changed there or the field was wrong. `ChangeMap` turns points into changed voxels, grown by
``changes.margin``; `pixels_through` tells which pixels of a keyframe look at or through given voxels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage

from ..capture.frames import PosedFrame
from ..config import ChangesConfig
from ..geometry import WorkspaceBox, resized_intrinsics

# Half the diagonal of a unit cube: a voxel's projection is covered by a disc of this many voxel sizes.
HALF_DIAGONAL = math.sqrt(3.0) / 2


def comparison_size(frame: PosedFrame, max_pixels: int) -> Tuple[int, int, np.ndarray]:
    """(width, height, K) the comparison renders: the keyframe shrunk by an integer factor to <= `max_pixels`."""
    shrink = max(1, math.ceil(math.sqrt(frame.width * frame.height / max(1, max_pixels))))
    width, height = frame.width // shrink, frame.height // shrink
    return width, height, resized_intrinsics(frame.K, frame.width, frame.height, width, height)


def ray_z(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Optical z per unit of distance along each pixel's ray [H, W] (rendered depth is a distance, not z)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return 1.0 / np.sqrt(x * x + y * y + 1.0)


def lift(depth: np.ndarray, K: np.ndarray, T_base_optical: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Points [N, 3] in the base frame of the z-depth pixels `where` (pixel centres at u + 0.5)."""
    v, u = np.nonzero(where)
    z = depth[v, u].astype(np.float64)
    points = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    return points @ T_base_optical[:3, :3].T + T_base_optical[:3, 3]


def denoise(disagree: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop slivers (a 3x3 opening) and groups of fewer than `min_pixels` pixels from a disagreement mask."""
    opened = cv2.morphologyEx(disagree.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


@dataclass
class Comparison:
    """What one keyframe said against the field: the lifted points and pixel counts."""

    appeared: np.ndarray     # [N, 3] base frame: surfaces the keyframe sees where the field had none in front
    vanished: np.ndarray     # [M, 3] base frame: surfaces the field holds that the keyframe no longer sees
    appeared_rgb: np.ndarray  # [N, 3] 0..1: the keyframe's colour of each appeared point
    pixels: Dict[str, int]   # 'compared', 'appeared', 'vanished' (after denoising), 'colour' (no depth)
    disagree: np.ndarray     # [h, w] bool: the kept disagreeing pixels of the comparison image


def compare_view(frame: PosedFrame, rendered: Dict[str, np.ndarray], K: np.ndarray,
                 config: ChangesConfig) -> Comparison:
    """Compare `frame` with the field's render of its pose (`rendered`: rgb, depth as distance, accumulation).

    `rendered` and `K` are at the comparison size (`comparison_size`); the keyframe is shrunk to it (area average
    for colour, nearest for depth).
    """
    height, width = rendered['depth'].shape
    image = frame.image if (frame.width, frame.height) == (width, height) else cv2.resize(
        frame.image, (width, height), interpolation=cv2.INTER_AREA)
    observed_rgb = image.astype(np.float32) / 255.0
    field_z = rendered['depth'] * ray_z(K, width, height)
    surface = rendered['accumulation'] >= config.min_accumulation
    keep = np.ones((height, width), bool)
    if frame.mask is not None:  # a gripper in view is not the scene
        keep = cv2.resize(frame.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    if frame.depth is not None:
        observed_z = cv2.resize(np.nan_to_num(frame.depth).astype(np.float32), (width, height),
                                interpolation=cv2.INTER_NEAREST)
        valid = keep & (observed_z > 0)
        tolerance = config.depth_tolerance + config.depth_relative * observed_z
        appeared = valid & (observed_z < field_z - tolerance)
        vanished = valid & surface & (observed_z > field_z + tolerance)
    else:
        observed_z = np.zeros((height, width), np.float32)
        valid = keep & surface
        appeared = vanished = np.zeros_like(valid)
    # another colour at about the same depth (a flat object put down or taken away), or anywhere without depth
    colour = keep & surface & ~appeared & ~vanished & (
        np.abs(observed_rgb - rendered['rgb']).mean(axis=-1) > config.color_tolerance)
    appeared = denoise(appeared, config.min_pixels)
    vanished = denoise(vanished, config.min_pixels)
    colour = denoise(colour, config.min_pixels)
    T = frame.T_base_optical
    depth_known = observed_z > 0
    points_appeared = np.concatenate([lift(observed_z, K, T, appeared), lift(observed_z, K, T, colour & depth_known)])
    points_vanished = np.concatenate([lift(field_z, K, T, vanished), lift(field_z, K, T, colour & ~depth_known)])
    rgb_appeared = np.concatenate([observed_rgb[appeared], observed_rgb[colour & depth_known]])
    return Comparison(points_appeared, points_vanished, rgb_appeared,
                      {'compared': int(valid.sum()), 'appeared': int(appeared.sum()),
                       'vanished': int(vanished.sum()), 'colour': int(colour.sum())},
                      appeared | vanished | colour)


def confirm(points: np.ndarray, colours: Optional[np.ndarray], appeared: bool, frames: Sequence[PosedFrame],
            config: ChangesConfig) -> np.ndarray:
    """Which points [N] the keyframes of before (with depth) say really changed, not that the field was wrong.

    Each point is projected into every earlier keyframe with depth that is not hidden there. Appeared points (a
    surface the new keyframe sees): changed where those keyframes saw empty space at the point, or a surface there
    of another colour. Vanished points (a surface the field holds that the new keyframe sees past): changed where
    those keyframes saw a surface at the point; where they saw through it the field held a floater. A point no
    earlier keyframe saw is not confirmed (the field never knew it: the new keyframe teaches it anyway).
    """
    votes = np.zeros(len(points))
    informed = np.zeros(len(points))
    for frame in frames:
        if frame.depth is None or not len(points):
            continue
        T = frame.T_base_optical
        local = (points - T[:3, 3]) @ T[:3, :3]
        z = local[:, 2]
        ahead = z > 0.02
        u = np.full(len(points), -1, np.int64)
        v = np.full(len(points), -1, np.int64)
        u[ahead] = np.floor(frame.K[0, 0] * local[ahead, 0] / z[ahead] + frame.K[0, 2]).astype(np.int64)
        v[ahead] = np.floor(frame.K[1, 1] * local[ahead, 1] / z[ahead] + frame.K[1, 2]).astype(np.int64)
        inside = ahead & (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
        seen = np.zeros(len(points))
        seen[inside] = np.nan_to_num(frame.depth[v[inside], u[inside]])
        if frame.mask is not None:
            seen[inside] *= frame.mask[v[inside], u[inside]]
        seen_any = inside & (seen > 0)
        # clearly in front of what it saw (empty then), or on it within half a voxel (a surface then); points in
        # between say nothing: a blurry field's surface lies a little off the real one
        empty = seen_any & (z < seen - (config.depth_tolerance + config.depth_relative * seen))
        surface = seen_any & (np.abs(z - seen) <= config.voxel_size / 2)
        known = empty | surface
        if appeared:
            change = empty.copy()
            if colours is not None:
                old = frame.image[v[surface], u[surface]].astype(np.float32) / 255.0
                change[surface] = np.abs(old - colours[surface]).mean(axis=-1) > config.color_tolerance
        else:
            change = surface
        votes += change
        informed += known
    return (informed > 0) & (votes >= 0.5 * informed)


class ChangeMap:
    """Changed voxels on a grid of ``voxel_size`` over the workspace (base frame)."""

    def __init__(self, box: WorkspaceBox, voxel_size: float, margin: float):
        self.box = box
        self.voxel_size = float(voxel_size)
        self.shape = tuple(int(n) for n in np.maximum(1, np.ceil((box.max_xyz - box.min_xyz) / voxel_size)))
        self.changed = np.zeros(self.shape, bool)
        self.grow = int(math.ceil(margin / voxel_size - 1e-9))

    def _cells(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(grid cells [N, 3] of the points, [N] bool: inside the workspace)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cells = np.floor((points - self.box.min_xyz) / self.voxel_size).astype(np.int64)
        return cells, np.all((cells >= 0) & (cells < self.shape), axis=1)

    def index(self, points: np.ndarray) -> np.ndarray:
        """Flat voxel indices of the points inside the workspace (others dropped)."""
        cells, inside = self._cells(points)
        return np.ravel_multi_index(tuple(cells[inside].T), self.shape)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """[N] bool: which points lie in a changed voxel (outside the workspace: False)."""
        cells, inside = self._cells(points)
        out = np.zeros(len(cells), bool)
        out[inside] = self.changed[tuple(cells[inside].T)]
        return out

    def mark(self, points: np.ndarray, min_voxels: int = 1) -> np.ndarray:
        """Mark the voxels of `points` (grown by the margin) as changed; returns the flat indices newly marked.

        Points in voxels already changed add nothing (the field is expected to disagree there until it has
        relearned); connected groups of fewer than `min_voxels` new voxels are noise (stray pixels along the
        silhouettes of a blurry field), a changed object forms a solid group.
        """
        seeds = np.zeros(self.shape, bool)
        seeds.flat[self.index(points)] = True
        seeds &= ~self.changed
        if min_voxels > 1 and seeds.any():
            labels, _ = ndimage.label(seeds, structure=np.ones((3, 3, 3), bool))
            small = np.bincount(labels.ravel()) < min_voxels
            small[0] = False
            seeds[small[labels]] = False
        if not seeds.any():
            return np.zeros(0, np.int64)
        if self.grow:
            seeds = ndimage.binary_dilation(seeds, iterations=self.grow, structure=np.ones((3, 3, 3), bool))
        new = seeds & ~self.changed
        self.changed |= new
        return np.flatnonzero(new)

    def mark_box(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Mark every voxel whose centre is inside the box [lo, hi] (base frame); returns the flat indices new."""
        centres = self.centres(np.arange(self.changed.size))
        inside = np.all((centres >= np.asarray(lo)) & (centres <= np.asarray(hi)), axis=1)
        new = inside & ~self.changed.ravel()
        self.changed.flat[np.flatnonzero(new)] = True
        return np.flatnonzero(new)

    def centres(self, flat: np.ndarray) -> np.ndarray:
        """Base-frame centres [N, 3] of flat voxel indices."""
        cells = np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape), axis=-1)
        return self.box.min_xyz + (cells + 0.5) * self.voxel_size

    def bounds(self, flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(min, max) corners of the voxels `flat` (base frame)."""
        centres = self.centres(flat)
        half = self.voxel_size / 2
        return centres.min(axis=0) - half, centres.max(axis=0) + half

    def clear(self) -> None:
        """Forget every changed voxel (a new scan)."""
        self.changed[:] = False


def pixels_through(centres: np.ndarray, voxel_size: float, frame: PosedFrame, tolerance: float = 0.0,
                   near: float = 0.02) -> np.ndarray:
    """Pixels [H, W] bool of `frame` whose rays meet one of the voxels (centres, base frame) in front of its surface.

    Each voxel covers the disc of its half diagonal around its projected centre; a pixel counts when the voxel's
    near side is no farther than the frame's depth there plus `tolerance` (the ray reaches it), or anywhere the
    frame has no depth (nothing says the voxel is hidden).
    """
    height, width = frame.height, frame.width
    out = np.zeros((height, width), bool)
    if len(centres) == 0:
        return out
    T = frame.T_base_optical
    local = (np.asarray(centres, dtype=np.float64) - T[:3, 3]) @ T[:3, :3]       # base -> optical
    z = local[:, 2]
    ahead = z > near
    local, z = local[ahead], z[ahead]
    if len(z) == 0:
        return out
    K = frame.K
    u = K[0, 0] * local[:, 0] / z + K[0, 2] - 0.5       # pixel index whose centre is nearest
    v = K[1, 1] * local[:, 1] / z + K[1, 2] - 0.5
    radius = HALF_DIAGONAL * voxel_size * K[0, 0] / z
    nearest = z - HALF_DIAGONAL * voxel_size
    reach = int(min(np.ceil(radius.max()), max(width, height)))
    zbuffer = np.full(height * width, np.inf)
    for dv in range(-reach, reach + 1):
        for du in range(-reach, reach + 1):
            pick = du * du + dv * dv <= (radius + 0.5) ** 2
            uu, vv = np.round(u[pick] + du).astype(np.int64), np.round(v[pick] + dv).astype(np.int64)
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            np.minimum.at(zbuffer, vv[inside] * width + uu[inside], nearest[pick][inside])
    zbuffer = zbuffer.reshape(height, width)
    hit = np.isfinite(zbuffer)
    if frame.depth is None:
        return hit
    depth = np.nan_to_num(frame.depth)
    return hit & ((depth <= 0) | (zbuffer <= depth + tolerance))
