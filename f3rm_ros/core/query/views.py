"""Did the cameras see it? Keyframe support of a cluster, so that a ghost in the field is not reported.

A field can hold density the cameras never showed: a floater where few rays constrain it, hanging in the air
where every camera saw the table behind it. The keyframes say what was there. A keyframe *supports* a cluster
when, of the cluster's voxels it would see first (the nearest along each pixel's ray), at least `MIN_SURFACE_SHARE`
lie on the surface its depth observed (within ``tolerance``); without a depth map, having the cluster in view
counts (nothing better is known). Pixels a keyframe's mask excludes (a gripper, a region a scene change took from
it) give no evidence. A cluster fewer than ``min_views`` keyframes support is a ghost.

Why not also "seen through" (voxels in front of the observed surface) as evidence against: a briefly trained
field wraps real objects in haze 1-3 cm thick, so most first-seen voxels of a real bowl lie in front of the
surface the depth saw (78 % measured on a cpu-tiny field); only the share on the surface tells real from ghost.
Numpy only: the projections are a few thousand points per keyframe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..capture.frames import PosedFrame

# Share of a cluster's first-seen voxels that must lie on a keyframe's observed surface for it to support the
# cluster: real objects measured at 14 % or more in every view (cpu-tiny fields), a floater at none.
MIN_SURFACE_SHARE = 0.1


@dataclass
class ViewSupport:
    """How the keyframes saw one cluster (see the module docstring)."""

    supporting: int = 0
    in_view: int = 0

    def ghost(self, min_views: int) -> bool:
        """Whether the cluster is a ghost: fewer than `min_views` keyframes support it."""
        return self.supporting < min_views

    def describe(self) -> str:
        """One phrase for a reason: the counts."""
        return f'{self.supporting} keyframe(s) saw its surface ({self.in_view} had it in view)'


def view_support(points: np.ndarray, frames: Sequence[PosedFrame], tolerance: float) -> ViewSupport:
    """Count the keyframes that support voxel centres `points` [N, 3] (base_frame, m) of one cluster."""
    support = ViewSupport()
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return support
    for frame in frames:
        pixels, z = first_seen(points, frame)
        if not len(z):
            continue
        support.in_view += 1
        if frame.depth is None:
            support.supporting += 1
            continue
        observed = frame.depth.reshape(-1)[pixels].astype(np.float64)
        valid = observed > 0
        if valid.any() and np.mean(np.abs(z[valid] - observed[valid]) <= tolerance) >= MIN_SURFACE_SHARE:
            support.supporting += 1
    return support


def first_seen(points: np.ndarray, frame: PosedFrame):
    """(flat pixel index [M], optical depth [M]) of the nearest of `points` in each pixel they fall in (unmasked)."""
    world_to_optical = np.linalg.inv(frame.T_base_optical)
    local = points @ world_to_optical[:3, :3].T + world_to_optical[:3, 3]
    local = local[local[:, 2] > 1e-6]
    projected = (local / local[:, 2:3]) @ frame.K.T
    u, v = np.floor(projected[:, 0]).astype(np.int64), np.floor(projected[:, 1]).astype(np.int64)
    inside = (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
    pixels, z = v[inside] * frame.width + u[inside], local[inside, 2]
    if frame.mask is not None:
        kept = frame.mask.reshape(-1)[pixels]
        pixels, z = pixels[kept], z[kept]
    order = np.lexsort((z, pixels))                      # by pixel, nearest first
    pixels, z = pixels[order], z[order]
    first = np.ones(len(pixels), dtype=bool)
    first[1:] = pixels[1:] != pixels[:-1]
    return pixels[first], z[first]
