"""Did the cameras see it? Keyframe support of a cluster, so that a ghost in the field is not reported.

A field can hold density the cameras never showed: a floater where few rays constrain it, an object that has
since gone while older views still teach it. The keyframes say what was there. Each keyframe that a cluster's
voxel centres project into is one of:

- **supporting**: some of the voxels lie on the surface its depth observed (within ``tolerance``), and most are
  not in front of it; without a depth map, being in view counts as support (nothing better is known);
- **contradicting**: most of the voxels it has a depth for lie in front of the observed surface: the camera saw
  through them, so that space was empty when it looked;
- neither (the voxels are hidden behind what it saw, or it has no valid depth there).

Pixels a keyframe's mask excludes (a gripper, a region a scene change took from it) give no evidence. A cluster
is a ghost when fewer than ``min_views`` keyframes support it, or when more contradict it than support it.
Numpy only: the projections are a few thousand points per keyframe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..capture.frames import PosedFrame

# Share of a keyframe's evidence (voxels with a valid depth behind them) in front of its surface that makes it
# contradict: more than half, so that a real object's fringe (blur in front of its surface) never does.
CONTRADICTING_SHARE = 0.5


@dataclass
class ViewSupport:
    """How the keyframes saw one cluster (see the module docstring)."""

    supporting: int = 0
    contradicting: int = 0
    in_view: int = 0

    def ghost(self, min_views: int) -> bool:
        """Whether the cluster is a ghost: too few keyframes support it, or more contradict than support."""
        return self.supporting < min_views or self.contradicting > self.supporting

    def describe(self) -> str:
        """One phrase for a reason: the counts."""
        return (f'{self.supporting} keyframe(s) saw its surface, {self.contradicting} saw through it '
                f'({self.in_view} had it in view)')


def view_support(points: np.ndarray, frames: Sequence[PosedFrame], tolerance: float) -> ViewSupport:
    """Count the keyframes that support or contradict voxel centres `points` [N, 3] (base_frame, m)."""
    support = ViewSupport()
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return support
    for frame in frames:
        world_to_optical = np.linalg.inv(frame.T_base_optical)
        local = points @ world_to_optical[:3, :3].T + world_to_optical[:3, 3]
        z = local[:, 2]
        ahead = z > 1e-6
        if not ahead.any():
            continue
        pixels = (local[ahead] / z[ahead, None]) @ frame.K.T
        u, v = np.floor(pixels[:, 0]).astype(np.int64), np.floor(pixels[:, 1]).astype(np.int64)
        inside = (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
        if not inside.any():
            continue
        u, v, z_in = u[inside], v[inside], z[ahead][inside]
        if frame.mask is not None:
            kept = frame.mask[v, u]
            u, v, z_in = u[kept], v[kept], z_in[kept]
            if not len(z_in):
                continue
        support.in_view += 1
        if frame.depth is None:
            support.supporting += 1
            continue
        observed = frame.depth[v, u].astype(np.float64)
        valid = observed > 0
        if not valid.any():
            continue
        observed, z_in = observed[valid], z_in[valid]
        in_front = z_in < observed - tolerance
        if in_front.mean() > CONTRADICTING_SHARE:
            support.contradicting += 1
        elif (np.abs(z_in - observed) <= tolerance).any():
            support.supporting += 1
    return support
