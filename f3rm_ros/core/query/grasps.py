"""Parallel-jaw grasp candidates for clusters, checked against the field's occupied voxels.

Gripper frame (what every candidate's pose means): z = approach direction (from the gripper into the
object), y = closing direction of the fingers, x = y × z; the origin is the point between the fingertips'
ends. Each finger is a box ``finger_width`` (along x) by ``finger_depth`` (along y) by ``finger_length``
(along z, from the fingertip back towards the palm), its inner face at ±opening/2.

Candidates per cluster (`GraspConfig`): top-down (approach -z of the base) closing across the box's minor
axis, and across its major axis when that fits; for objects at least ``side_min_height`` tall, side
approaches along the box's four horizontal directions. The opening starts at the object's extent across
the closing axis plus ``margin`` and widens (one voxel at a time, up to ``max_opening``) until neither finger
holds an occupied voxel centre of the field: a neighbour or the table under a flat object rejects the
candidate instead of being grasped. Score in [0, 1]: the approach's preference (top 1.0, side 0.8) times
``1 - opening / (2 max_opening)`` (more room to spare is better) times the cluster's mean relevancy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .clusters import Cluster
from ..config import GraspConfig

TOP, SIDE = 'top', 'side'
APPROACH_PREFERENCE = {TOP: 1.0, SIDE: 0.8}


@dataclass
class Grasp:
    """One candidate: pose [4, 4] in base_frame (gripper frame above), opening width (m), score, cluster."""

    pose: np.ndarray
    width: float
    score: float
    cluster_index: int
    approach: str

    def as_dict(self) -> dict:
        """Plain JSON-able summary."""
        return {'pose': self.pose.tolist(), 'width': self.width, 'score': self.score,
                'cluster_index': self.cluster_index, 'approach': self.approach}


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return the 8 corners [8, 3] of the box [lo, hi]."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


@dataclass
class Occupancy:
    """Solid occupied voxels of the field.

    `grid` is bool [Nx, Ny, Nz]; voxel (i, j, k) is centred at ``origin + ((i, j, k) + 0.5) * voxel_size``.
    """

    grid: np.ndarray
    origin: np.ndarray
    voxel_size: float

    def centres_around(self, world_lo: np.ndarray, world_hi: np.ndarray) -> np.ndarray:
        """Occupied voxel centres [K, 3] (base_frame) of the grid block around the axis-aligned [world_lo, world_hi].

        Every centre inside the box is among them, and some outside it (the block reaches half a voxel beyond).
        """
        first = np.floor((world_lo - self.origin) / self.voxel_size - 0.5).astype(int)
        last = np.ceil((world_hi - self.origin) / self.voxel_size - 0.5).astype(int)
        first = np.clip(first, 0, np.array(self.grid.shape) - 1)
        last = np.clip(last, -1, np.array(self.grid.shape) - 1)
        if np.any(last < first):
            return np.zeros((0, 3))
        block = self.grid[first[0]:last[0] + 1, first[1]:last[1] + 1, first[2]:last[2] + 1]
        cells = np.argwhere(block)
        return self.origin + (cells + first + 0.5) * self.voxel_size

    def centres_near(self, pose: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Occupied voxel centres [K, 3] in the frame `pose` (4 x 4 in base_frame), from the block around [lo, hi].

        Every centre inside the box [lo, hi] (given in that frame) is among them, and some outside it.
        """
        world = box_corners(lo, hi) @ pose[:3, :3].T + pose[:3, 3]
        return (self.centres_around(world.min(axis=0), world.max(axis=0)) - pose[:3, 3]) @ pose[:3, :3]

    def centres_in_box(self, pose: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
        """Count occupied voxel centres inside the box [lo, hi] given in the frame `pose` (4 x 4 in base_frame)."""
        local = self.centres_near(pose, lo, hi)
        return int(np.sum(np.all((local >= lo - 1e-9) & (local <= hi + 1e-9), axis=1)))


@dataclass
class ClusterGrasps:
    """The feasible candidates of one cluster, best first, or the reason there are none."""

    grasps: List[Grasp]
    reason: str = ''


def gripper_pose(approach: np.ndarray, closing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4 x 4 pose with z = `approach`, y = `closing` (both unit, orthogonal), x = y × z, at `origin`."""
    (cx, cy, cz), (ax, ay, az) = (float(v) for v in closing), (float(v) for v in approach)
    pose = np.eye(4)
    pose[:3, 0] = (cy * az - cz * ay, cz * ax - cx * az, cx * ay - cy * ax)   # np.cross, without its overhead
    pose[:3, 1], pose[:3, 2], pose[:3, 3] = closing, approach, origin
    return pose


class GraspPlanner:
    """Candidates for clusters (see the module docstring), against an `Occupancy` of the field."""

    def __init__(self, config: GraspConfig, occupancy: Optional[Occupancy] = None):
        self.config = config
        self.occupancy = occupancy

    def finger_boxes(self, opening: float) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Return the two fingers as (lo, hi) corners in the gripper frame for an `opening` (m)."""
        g = self.config
        boxes = []
        for sign in (-1.0, 1.0):
            inner, outer = sign * opening / 2, sign * (opening / 2 + g.finger_depth)
            boxes.append((np.array([-g.finger_width / 2, min(inner, outer), -g.finger_length]),
                          np.array([g.finger_width / 2, max(inner, outer), 0.0])))
        return boxes

    def collisions(self, pose: np.ndarray, opening: float) -> int:
        """Occupied voxel centres inside either finger (0 without an occupancy)."""
        if self.occupancy is None:
            return 0
        return sum(self.occupancy.centres_in_box(pose, lo, hi) for lo, hi in self.finger_boxes(opening))

    def first_free_opening(self, pose: np.ndarray, openings: np.ndarray) -> Optional[float]:
        """Return the first of `openings` at which `collisions` is 0, or None."""
        return self.first_free_openings([pose], [openings])[0]

    def first_free_openings(self, poses: Sequence[np.ndarray], openings: Sequence[np.ndarray]) -> List[Optional[float]]:
        """For each pose, the first of its `openings` (ascending) at which `collisions` is 0, or None.

        All at once: the occupied centres around every pose's fingers at its widest opening are gathered once,
        moved into each gripper frame, and every opening tests them against its finger boxes (``|x| <= width / 2``,
        ``-length <= z <= 0``, ``opening / 2 <= |y| <= opening / 2 + depth``, the same 1e-9 tolerance as
        `collisions`).
        """
        if self.occupancy is None or not any(len(o) for o in openings):
            return [float(o[0]) if len(o) else None for o in openings]
        g = self.config
        reach = max((float(o[-1]) for o in openings if len(o)), default=0.0) / 2 + g.finger_depth
        lo = np.array([-g.finger_width / 2, -reach, -g.finger_length])
        hi = np.array([g.finger_width / 2, reach, 0.0])
        corners = np.concatenate([box_corners(lo, hi) @ pose[:3, :3].T + pose[:3, 3] for pose in poses])
        centres = self.occupancy.centres_around(corners.min(axis=0), corners.max(axis=0))
        if len(centres) == 0:
            return [float(o[0]) if len(o) else None for o in openings]
        local = np.stack([(centres - pose[:3, 3]) @ pose[:3, :3] for pose in poses])             # [T, K, 3]
        beside = ((np.abs(local[..., 0]) <= g.finger_width / 2 + 1e-9) & (local[..., 2] >= -g.finger_length - 1e-9)
                  & (local[..., 2] <= 1e-9))
        across = np.where(beside, np.abs(local[..., 1]), np.inf)[:, None, :]                     # [T, 1, K]
        half = np.full((len(poses), max(len(o) for o in openings)), np.nan)
        for row, o in zip(half, openings):
            row[:len(o)] = np.asarray(o, dtype=np.float64) / 2
        hit = (across >= half[:, :, None] - 1e-9) & (across <= half[:, :, None] + g.finger_depth + 1e-9)
        free = ~hit.any(axis=-1) & ~np.isnan(half)                                              # [T, O]
        first = np.argmax(free, axis=1)
        return [float(o[i]) if ok else None for o, i, ok in zip(openings, first, free[np.arange(len(poses)), first])]

    def _orientations(self, cluster: Cluster) -> List[Tuple[str, np.ndarray, np.ndarray, float, np.ndarray]]:
        """(approach kind, approach, closing, object extent across closing, fingertip point) per candidate."""
        g = self.config
        major, minor = cluster.rotation[:, 0], cluster.rotation[:, 1]
        down = np.array([0.0, 0.0, -1.0])
        height = float(cluster.extent[2])
        bottom = float(cluster.centroid[2] - height / 2)
        tip_z = max(cluster.top - min(g.grasp_depth, height / 2), bottom)
        top_point = np.array([cluster.centroid[0], cluster.centroid[1], tip_z])
        out = [(TOP, down, minor, float(cluster.extent[1]), top_point),
               (TOP, down, major, float(cluster.extent[0]), top_point)]
        if height >= g.side_min_height:
            z = max(float(cluster.centroid[2]), bottom + g.finger_width / 2 + g.clearance)
            sides = ((major, minor, cluster.extent[0], cluster.extent[1]),
                     (minor, major, cluster.extent[1], cluster.extent[0]))
            for axis, across, along_extent, across_extent in sides:
                for direction in (axis, -axis):
                    reach = min(g.grasp_depth - along_extent / 2, 0.0)  # fingertips `grasp_depth` past the near face
                    point = cluster.centroid + direction * reach
                    out.append((SIDE, direction, across, float(across_extent), np.array([point[0], point[1], z])))
        return out

    def plan(self, cluster: Cluster, cluster_index: int) -> ClusterGrasps:
        """Return the feasible candidates for one cluster, best first (at most ``max_per_cluster``), or why none."""
        g = self.config
        step = self.occupancy.voxel_size if self.occupancy is not None else g.margin
        candidates, too_wide, blocked, tries = [], [], 0, []
        for kind, approach, closing, extent, point in self._orientations(cluster):
            needed = extent + g.margin
            if needed > g.max_opening:
                too_wide.append(extent)
                continue
            tries.append((kind, gripper_pose(approach, _canonical(closing), point),
                          np.arange(needed, g.max_opening + 1e-9, step)))
        free = self.first_free_openings([pose for _, pose, _ in tries], [openings for _, _, openings in tries])
        for (kind, pose, _), opening in zip(tries, free):
            if opening is None:
                blocked += 1
                continue
            score = APPROACH_PREFERENCE[kind] * (1 - opening / (2 * g.max_opening)) * cluster.relevancy
            candidates.append(Grasp(pose, float(opening), float(score), cluster_index, kind))
        candidates.sort(key=lambda grasp: -grasp.score)
        candidates = candidates[:g.max_per_cluster]
        if candidates:
            return ClusterGrasps(candidates)
        if too_wide and not blocked:
            return ClusterGrasps([], f'the object is {100 * min(too_wide):.1f} cm across at its narrowest, and '
                                     f'the gripper opens {100 * g.max_opening:.1f} cm (grasp.max_opening, '
                                     f'with a {100 * g.margin:.1f} cm margin)')
        return ClusterGrasps([], f'every candidate ({blocked} tried) puts a finger into occupied space '
                                 '(a neighbour or the support) at every opening up to grasp.max_opening')

    def plan_all(self, clusters: Sequence[Cluster]) -> Tuple[List[Grasp], List[str]]:
        """Plan every cluster: (candidates, the best cluster's first; per cluster why it has none, or '').

        Each cluster's candidates come best first.
        """
        grasps, reasons = [], []
        for index, cluster in enumerate(clusters):
            planned = self.plan(cluster, index)
            grasps += planned.grasps
            reasons.append(planned.reason)
        return grasps, reasons


def _canonical(closing: np.ndarray) -> np.ndarray:
    """Return the closing axis with its first non-zero component positive (a parallel gripper closes both ways)."""
    closing = np.asarray(closing, dtype=np.float64)
    for value in closing:
        if abs(value) > 1e-9:
            return closing if value > 0 else -closing
    return closing
