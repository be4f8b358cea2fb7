"""The local shape under a gripper: the long axis of the occupied voxels around its fingertips, in the gripper frame.

A handle lying on the table or a peg is long and thin. Its features are much alike turned a few tens of degrees
about the approach (the field learns a part's features at patch resolution, a fat handle), so the similarity
alone left the screwdriver's grasp turned 15-45 degrees in 6 of 20 held-out layouts. Its occupancy says which way
it runs: the principal axis of the occupied voxels within `RADIUS` of the fingertips, above the support under
them. A demonstration records that axis in its gripper frame; an answer is turned about its approach until its own
local axis lies the same way (`turn_about_approach`). Measured on held-out layouts at the true grasps: the
screwdriver handle's and the rack peg's axes lie within 8 degrees of the demonstrations' in the gripper frame; the
mug handle's voxels (handle and body together) are too round (elongation about 1.45) and are left alone.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from ..query.support import support_under_box

RADIUS = 0.06               # m around the point `CENTRE_BACK` behind the fingertips' ends
CENTRE_BACK = 0.01          # m from the fingertips' ends back along the approach: between the fingers
MIN_ELONGATION = 1.6        # sqrt of the largest over the middle variance: a handle or a peg, not a round blob
MIN_ACROSS = 0.7            # the axis's length across the approach: a turn about the approach can align it
AGREE_DEG = 20.0            # demonstrations' axes this close (sign-free) make a task axis
MAX_TURN_DEG = 60.0         # an answer further off is left as the similarity put it
MIN_VOXELS = 20             # fewer occupied voxels say nothing of a shape
SUPPORT_FOOTPRINT = 0.04    # m, the square under the centre whose support is read (its voxels are not the shape)


class LocalShape(NamedTuple):
    """The long axis of the occupied voxels around a gripper's fingertips."""

    axis: np.ndarray        # [3] unit, gripper frame; sign-free (its largest component positive)
    elongation: float       # sqrt(largest / middle variance) along the principal axes

    @property
    def usable(self) -> bool:
        """Whether the shape is long enough, and lies across the approach, to set a turn about the approach."""
        return self.elongation >= MIN_ELONGATION and float(np.linalg.norm(self.axis[:2])) >= MIN_ACROSS


def local_shape(occupancy, pose: np.ndarray) -> Optional[LocalShape]:
    """Return the `LocalShape` under gripper `pose` [4, 4] in an `Occupancy` (grid, origin, voxel_size), or None.

    None: no occupancy, or fewer than `MIN_VOXELS` occupied voxels above the support within `RADIUS`.
    """
    if occupancy is None:
        return None
    grid, origin, size = occupancy.grid, np.asarray(occupancy.origin, dtype=np.float64), float(occupancy.voxel_size)
    pose = np.asarray(pose, dtype=np.float64)
    centre = pose[:3, 3] - CENTRE_BACK * pose[:3, 2]
    first = np.clip(np.floor((centre - RADIUS - origin) / size).astype(int), 0, grid.shape)
    last = np.clip(np.ceil((centre + RADIUS - origin) / size).astype(int), 0, grid.shape)
    index = np.argwhere(grid[first[0]:last[0], first[1]:last[1], first[2]:last[2]]) + first
    points = origin + (index + 0.5) * size
    support = support_under_box(occupancy, centre, np.full(3, SUPPORT_FOOTPRINT), np.eye(3),
                                ceiling=float(centre[2]) + SUPPORT_FOOTPRINT / 2)
    keep = (np.linalg.norm(points - centre, axis=1) < RADIUS) & (points[:, 2] > support.height + size)
    if int(keep.sum()) < MIN_VOXELS:
        return None
    local = (points[keep] - centre) @ pose[:3, :3]          # gripper frame
    variances, axes = np.linalg.eigh(np.cov(local.T))       # ascending
    axis = axes[:, 2] * np.sign(axes[np.argmax(np.abs(axes[:, 2])), 2])
    return LocalShape(axis, float(np.sqrt(variances[2] / max(variances[1], 1e-12))))


def agreed_axis(shapes: Sequence[Optional[LocalShape]]) -> Optional[np.ndarray]:
    """Return the demonstrations' common axis [3] (gripper frame, unit) or None.

    None unless every demonstration read a usable shape and all axes lie within `AGREE_DEG` of the first's.
    """
    if not shapes or any(shape is None or not shape.usable for shape in shapes):
        return None
    first = shapes[0].axis
    aligned = [shape.axis * (1.0 if float(shape.axis @ first) >= 0 else -1.0) for shape in shapes]
    if min(float(axis @ first) for axis in aligned) < np.cos(np.radians(AGREE_DEG)):
        return None
    mean = np.mean(aligned, axis=0)
    return mean / np.linalg.norm(mean)


def turn_about_approach(current: np.ndarray, target: np.ndarray) -> float:
    """Return the angle (rad, in [-pi/2, pi/2)) to turn a gripper about its z so its local axis reads `target`.

    Both axes are in the gripper frame and sign-free. Turned by `angle`, the pose's rotation becomes R @ Rz(angle)
    and an axis `current` in the old frame reads Rz(-angle) @ current in the new one; only their parts across the
    approach (x, y) count.
    """
    angle = np.arctan2(current[1], current[0]) - np.arctan2(target[1], target[0])
    return float((angle + np.pi / 2) % np.pi - np.pi / 2)


def turned(pose: np.ndarray, angle: float) -> np.ndarray:
    """Return `pose` [4, 4] turned by `angle` (rad) about its own z axis (the approach), its origin kept."""
    out = np.array(pose, dtype=np.float64, copy=True)
    out[:3, :3] = out[:3, :3] @ Rotation.from_rotvec([0.0, 0.0, angle]).as_matrix()
    return out
