"""Parallel-jaw grasp candidates for clusters, checked against the field's occupied voxels.

Gripper frame (what every candidate's pose means): z = approach direction (from the gripper into the object),
y = closing direction of the fingers, x = y × z; the origin is the point between the fingertips' ends. Each
finger is a box ``finger_width`` (along x) by ``finger_depth`` (along y) by ``finger_length`` (along z, from the
fingertip back towards the palm), its inner face at ±opening/2.

The support (`GraspPlanner.support`: the table under the cluster's footprint, or the workspace floor) is not an
obstacle: every candidate keeps its fingers at least ``support_clearance`` above it (a fingertip may stop there,
beside a thin object lying on the table), and the occupied voxels at or below it are the support, not
collisions. Everything above it (neighbours, the object's own other parts) collides.

Candidate families per cluster (`GraspConfig`; closing axes always horizontal):

- ``top``: approach straight down, closing at `TOP_YAWS_DEG` from the box's minor axis; across the minor axis
  also at positions along the major axis (`ALONG_FRACTIONS`: a handle, not only the centre). Fingertips go
  ``grasp_depth`` below the object's top, never lower than the support plus ``support_clearance``.
- ``tilted``: the same grasps with the approach leaning `TILT_DEG` towards either side of the closing axis
  (reaches past a neighbour that blocks a finger's palm end).
- ``side``: for objects at least ``side_min_height`` tall, horizontal approaches from `SIDE_DIRECTIONS`
  directions, the fingertips on the object's vertical centre line (where its near face, its nearest voxel, is
  within ``finger_length``), the fingers at the object's mid-height and at least ``clearance`` above the support
  (they travel along it).
- ``rim``: where a horizontal ray from the centre just below the object's top crosses an occupied wall at most
  ``rim_max_wall`` thick with free space inside it (a bowl, a cup, a box without a lid): approach from above,
  one finger inside, one outside, closing across the wall; the opening starts at the wall's thickness plus
  ``margin``.

Each candidate's opening starts at the object's width across the closing axis in the fingers' band (its occupied
voxels inside the cluster's box; the box's width when none) plus ``margin`` and widens, one voxel at a time up to
``max_opening`` (rim: the wall plus margin plus ``finger_depth``), until neither finger, grown by half a voxel (a
voxel is a cube), holds an occupied voxel centre above the support, and nothing but the object lies between the
fingers (`GraspPlanner.foreign_to`: a wider opening that straddles a neighbour would close on it).

Score in [0, 1]: the family's preference (`APPROACH_PREFERENCE`) times ``1 - opening / (2 max_opening)`` (more
room to spare is better) times, off the centre along the major axis, ``1 - 0.25 |offset| / half length`` (a rim
grasp: 0.05 less per shallower depth), times the cluster's mean relevancy. A cluster without a candidate gets a
reason that says how many were tried and why each family failed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .clusters import Cluster
from .support import Support, support_under
from ..config import GraspConfig

TOP, TILTED, SIDE, RIM = 'top', 'tilted', 'side', 'rim'
FAMILIES = (TOP, TILTED, SIDE, RIM)
# Straight down is the surest approach; a tilted one reaches past a neighbour, a side one needs a tall object,
# a rim grasp holds a thin wall only.
APPROACH_PREFERENCE = {TOP: 1.0, TILTED: 0.9, SIDE: 0.8, RIM: 0.7}
# Closing axes of the top-down family, degrees from the box's minor axis (a parallel gripper is symmetric under
# 180 degrees): six yaws, so a round or a yawed object always has one close to its narrowest width.
TOP_YAWS_DEG = (0, 30, 60, 90, 120, 150)
# Grasps across the minor axis also at these positions along the major axis (fractions of its length): a
# screwdriver's handle or a bar's ends, not only its centre.
ALONG_FRACTIONS = (0.0, -0.25, 0.25)
TILT_DEG = 30.0
SIDE_DIRECTIONS = 8
RIM_DIRECTIONS = 8
# How far below the rim the fingertips go (m, at most grasp_depth): a bowl's wall curves inwards below its rim,
# so shallower grasps remain where a deep inner finger would hit it (down to a pinch of the lip).
RIM_DEPTHS = (0.03, 0.02, 0.012, 0.008)
# The support a fingertip stops above: the upper quartile of the surfaces around the object (`support_under`'s
# quantile), not their median. A briefly trained field's table top is fuzzy, a sparse layer of faint voxels one voxel
# above the solid one; with the median the fingertips of a thin object's grasps went into that layer. bench semantic
# (cpu-tiny, 500 steps, seeds 11-13 and 31-35, saved fields re-scored): 36 of 40 objects grasped with the median,
# 38 with the upper quartile (the two bowls remain: their inside is filled with faint voxels too, no wall shows).
SUPPORT_QUANTILE = 0.75
# A rim's wall is what is at least this share as opaque as the densest voxel on its ray; fainter voxels of the
# object (a container's hazy inside) do not block its fingers. Needs the occupancy's opacity (`Occupancy.alpha`).
RIM_HAZE = 0.5


@dataclass
class Candidate:
    """A pose to try before its opening is known: family, pose [4, 4], the width to start from, a position factor."""

    family: str
    pose: np.ndarray
    width: float
    preference: float
    group: Optional[tuple] = None       # of candidates sharing a group only the best is kept (a rim's depths)
    haze: float = 0.0                   # the object's voxels fainter than this (opacity) are passed through


@dataclass
class Grasp:
    """One candidate: pose [4, 4] in base_frame (gripper frame above), opening width (m), score, cluster."""

    pose: np.ndarray
    width: float
    score: float
    cluster_index: int
    approach: str
    haze: float = 0.0      # the object's voxels fainter than this were passed through (a rim grasp in a container)

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
    `alpha` (float, the same shape, optional) is each voxel's opacity, where the field's evaluation kept it.
    """

    grid: np.ndarray
    origin: np.ndarray
    voxel_size: float
    alpha: Optional[np.ndarray] = None

    def alpha_at(self, points: np.ndarray) -> np.ndarray:
        """Return the opacity [N] of the voxel holding each point [N, 3].

        0 outside the grid or where unoccupied; without `alpha`, 1 where occupied.
        """
        cells = np.floor((np.asarray(points, dtype=np.float64) - self.origin) / self.voxel_size).astype(int)
        inside = np.all((cells >= 0) & (cells < np.array(self.grid.shape)), axis=1)
        out = np.zeros(len(cells))
        index = tuple(cells[inside].T)
        occupied = self.grid[index]
        out[inside] = np.where(occupied, 1.0 if self.alpha is None else self.alpha[index], 0.0)
        return out

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

    def occupied(self, points: np.ndarray) -> np.ndarray:
        """Bool [N]: whether each point [N, 3] (base_frame) lies in an occupied voxel (False outside the grid)."""
        cells = np.floor((np.asarray(points, dtype=np.float64) - self.origin) / self.voxel_size).astype(int)
        inside = np.all((cells >= 0) & (cells < np.array(self.grid.shape)), axis=1)
        out = np.zeros(len(cells), bool)
        out[inside] = self.grid[tuple(cells[inside].T)]
        return out

    def centres_near(self, pose: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Occupied voxel centres [K, 3] in the frame `pose` (4 x 4 in base_frame), from the block around [lo, hi].

        Every centre inside the box [lo, hi] (given in that frame) is among them, and some outside it.
        """
        world = box_corners(lo, hi) @ pose[:3, :3].T + pose[:3, 3]
        return (self.centres_around(world.min(axis=0), world.max(axis=0)) - pose[:3, 3]) @ pose[:3, :3]

    def centres_in_box(self, pose: np.ndarray, lo: np.ndarray, hi: np.ndarray, above: Optional[float] = None,
                       ignore: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> int:
        """Count occupied voxel centres inside the box [lo, hi] given in the frame `pose` (4 x 4 in base_frame).

        `above`: count only centres higher than this base z (those at or below it are the support); `ignore`
        (base_frame centres [K, 3] -> bool [K]): centres that do not count.
        """
        local = self.centres_near(pose, lo, hi)
        inside = np.all((local >= lo - 1e-9) & (local <= hi + 1e-9), axis=1)
        world = local @ pose[:3, :3].T + pose[:3, 3]
        if above is not None:
            inside &= world[:, 2] > above
        if ignore is not None and len(world):
            inside &= ~ignore(world)
        return int(np.sum(inside))


@dataclass
class ClusterGrasps:
    """The feasible candidates of one cluster, best first, or the reason there are none."""

    grasps: List[Grasp]
    reason: str = ''
    support: Optional[Support] = None      # the support under the cluster that the fingers kept clear of


def finger_boxes(opening: float, width: float, depth: float, length: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Return two fingers as (lo, hi) corners in the gripper frame.

    Each is `width` along x, `depth` along y outward from its inner face at +-opening/2, and `length` back from the
    fingertips (z = 0) towards the palm.
    """
    boxes = []
    for sign in (-1.0, 1.0):
        inner, outer = sign * opening / 2, sign * (opening / 2 + depth)
        boxes.append((np.array([-width / 2, min(inner, outer), -length]),
                      np.array([width / 2, max(inner, outer), 0.0])))
    return boxes


def gripper_pose(approach: np.ndarray, closing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4 x 4 pose with z = `approach`, y = `closing` (both unit, orthogonal), x = y × z, at `origin`."""
    (cx, cy, cz), (ax, ay, az) = (float(v) for v in closing), (float(v) for v in approach)
    pose = np.eye(4)
    pose[:3, 0] = (cy * az - cz * ay, cz * ax - cx * az, cx * ay - cy * ax)   # np.cross, without its overhead
    pose[:3, 1], pose[:3, 2], pose[:3, 3] = closing, approach, origin
    return pose


class GraspPlanner:
    """Candidates for clusters (see the module docstring), against an `Occupancy` of the field.

    Why one class: every family's candidates go through the same steps on the same state (the config, the one
    occupancy, the cluster's support and object voxels): lifted clear of the support, measured across the closing
    axis, widened until the fingers are free of occupied and foreign voxels, scored and explained per family. A
    family alone is some 20-40 lines of poses (`_candidates`, `_rim_candidates`); split out, each would need all of
    that state passed back in. What stands alone lives beside it: the support (`support`), the finger boxes and
    the gripper pose (functions above), the clusters (`clusters`).
    """

    def __init__(self, config: GraspConfig, occupancy: Optional[Occupancy] = None):
        self.config = config
        self.occupancy = occupancy

    def finger_boxes(self, opening: float) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Return the two fingers as (lo, hi) corners in the gripper frame for an `opening` (m)."""
        g = self.config
        return finger_boxes(opening, g.finger_width, g.finger_depth, g.finger_length)

    def collisions(self, pose: np.ndarray, opening: float, above: Optional[float] = None,
                   ignore: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> int:
        """Count occupied voxel centres inside either finger (0 without an occupancy).

        `above`: only those higher; `ignore`: centres that do not count (`haze_of`).
        """
        if self.occupancy is None:
            return 0
        return sum(self.occupancy.centres_in_box(pose, lo, hi, above, ignore) for lo, hi in self.finger_boxes(opening))

    def first_free_opening(self, pose: np.ndarray, openings: np.ndarray,
                           above: Optional[float] = None) -> Optional[float]:
        """Return the first of `openings` at which `collisions` is 0, or None."""
        return self.first_free_openings([pose], [openings], above)[0]

    def first_free_openings(self, poses: Sequence[np.ndarray], openings: Sequence[np.ndarray],
                            above: Optional[float] = None, inflate: float = 0.0,
                            foreign: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                            ignore: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> List[Optional[float]]:
        """For each pose, the first of its `openings` (ascending) at which `collisions` (with `above`) is 0, or None.

        `inflate` grows both fingers by that much on every side first (the planner passes half a voxel: an
        occupied voxel is a cube, not its centre). `foreign(centres [K, 3]) -> bool [K]` marks voxels that are not
        the object's: such a voxel between the fingers blocks the opening too (the fingers would close on a
        neighbour beside the object, not only on the object). `ignore(centres) -> bool [K]` marks voxels that do
        not count at all (a container's faint inside, for a rim grasp).

        All at once: the occupied centres around every pose's fingers at its widest opening are gathered once,
        moved into each gripper frame, and every opening tests them against its finger boxes (``|x| <= width / 2``,
        ``-length <= z <= 0``, ``opening / 2 <= |y| <= opening / 2 + depth``, the same 1e-9 tolerance as
        `collisions`).
        """
        if self.occupancy is None or not any(len(o) for o in openings):
            return [float(o[0]) if len(o) else None for o in openings]
        g = self.config
        width, depth, length = g.finger_width + 2 * inflate, g.finger_depth + 2 * inflate, g.finger_length + inflate
        reach = max((float(o[-1]) for o in openings if len(o)), default=0.0) / 2 + g.finger_depth + inflate
        lo = np.array([-width / 2, -reach, -length])
        hi = np.array([width / 2, reach, inflate])
        corners = np.concatenate([box_corners(lo, hi) @ pose[:3, :3].T + pose[:3, 3] for pose in poses])
        centres = self.occupancy.centres_around(corners.min(axis=0), corners.max(axis=0))
        if above is not None:
            centres = centres[centres[:, 2] > above]
        if ignore is not None and len(centres):
            centres = centres[~ignore(centres)]
        if len(centres) == 0:
            return [float(o[0]) if len(o) else None for o in openings]
        local = np.stack([(centres - pose[:3, 3]) @ pose[:3, :3] for pose in poses])             # [T, K, 3]
        beside = ((np.abs(local[..., 0]) <= width / 2 + 1e-9) & (local[..., 2] >= -length - 1e-9)
                  & (local[..., 2] <= inflate + 1e-9))
        across = np.where(beside, np.abs(local[..., 1]), np.inf)[:, None, :]                     # [T, 1, K]
        half = np.full((len(poses), max(len(o) for o in openings)), np.nan)
        for row, o in zip(half, openings):
            row[:len(o)] = np.asarray(o, dtype=np.float64) / 2 - inflate
        hit = (across >= half[:, :, None] - 1e-9) & (across <= half[:, :, None] + depth + 1e-9)
        if foreign is not None:
            hit |= foreign(centres)[None, None, :] & (across <= half[:, :, None] + depth + 1e-9)
        free = ~hit.any(axis=-1) & ~np.isnan(half)                                              # [T, O]
        first = np.argmax(free, axis=1)
        return [float(o[i]) if ok else None for o, i, ok in zip(openings, first, free[np.arange(len(poses)), first])]

    def plan(self, cluster: Cluster, cluster_index: int) -> ClusterGrasps:
        """Return the feasible candidates for one cluster, best first (at most ``max_per_cluster``), or why none."""
        g = self.config
        support = self.support(cluster)
        step = self.occupancy.voxel_size if self.occupancy is not None else g.margin
        centres = self.object_centres(cluster, support)
        tried = self._candidates(cluster, support, centres)
        widths = self._object_widths(centres, tried)
        stats = {family: {'tried': 0, 'too_wide': 0, 'blocked': 0} for family in FAMILIES}
        too_wide, tries = [], []
        for candidate, width in zip(tried, widths):
            stats[candidate.family]['tried'] += 1
            needed = (width if candidate.family != RIM else candidate.width) + g.margin
            widest = g.max_opening if candidate.family != RIM else min(g.max_opening, needed + g.finger_depth)
            if needed > widest + 1e-9:
                stats[candidate.family]['too_wide'] += 1
                too_wide.append(width)
                continue
            tries.append((candidate, np.arange(needed, widest + 1e-9, step)))
        # an occupied voxel is a cube: fingers grown by half a voxel keep out of its faces, not only its centre
        foreign, free = self.foreign_to(cluster, support), [None] * len(tries)
        for haze in sorted({c.haze for c, _ in tries}):
            chosen = [i for i, (c, _) in enumerate(tries) if c.haze == haze]
            ignore = None if haze <= 0 else self.haze_of(cluster, haze)
            found = self.first_free_openings([tries[i][0].pose for i in chosen], [tries[i][1] for i in chosen],
                                             above=support.height, inflate=step / 2 if self.occupancy is not None
                                             else 0.0, foreign=foreign, ignore=ignore)
            for i, opening in zip(chosen, found):
                free[i] = opening
        candidates, groups = [], {}
        for (candidate, _), opening in zip(tries, free):
            if opening is None:
                stats[candidate.family]['blocked'] += 1
                continue
            score = (APPROACH_PREFERENCE[candidate.family] * (1 - opening / (2 * g.max_opening))
                     * candidate.preference * cluster.relevancy)
            grasp = Grasp(candidate.pose, float(opening), float(score), cluster_index, candidate.family, candidate.haze)
            if candidate.group is None:
                candidates.append(grasp)
            elif candidate.group not in groups or groups[candidate.group].score < grasp.score:
                groups[candidate.group] = grasp
        candidates += list(groups.values())
        candidates.sort(key=lambda grasp: -grasp.score)
        candidates = candidates[:g.max_per_cluster]
        if candidates:
            return ClusterGrasps(candidates, support=support)
        return ClusterGrasps([], self._reason(cluster, stats, too_wide, support), support)

    def support(self, cluster: Cluster) -> Support:
        """Return the support under a cluster that its grasps keep `support_clearance` above (`SUPPORT_QUANTILE`)."""
        return support_under(self.occupancy, cluster, quantile=SUPPORT_QUANTILE)

    def _reason(self, cluster: Cluster, stats: Dict[str, Dict[str, int]], too_wide: List[float],
                support: Support) -> str:
        """Why a cluster got no candidate: how many were tried, and per family why each failed."""
        g = self.config
        total = sum(s['tried'] for s in stats.values())
        parts = []
        for family in FAMILIES:
            s = stats[family]
            if family == SIDE and s['tried'] == 0:
                if float(cluster.extent[2]) < g.side_min_height:
                    parts.append(f'side: the object is {100 * float(cluster.extent[2]):.1f} cm tall, under '
                                 f'grasp.side_min_height {100 * g.side_min_height:.1f} cm')
                else:
                    parts.append('side: from every direction the object reaches further than grasp.finger_length '
                                 'from its near face to its centre')
                continue
            if family == RIM and s['tried'] == 0:
                parts.append(f'rim: no wall up to grasp.rim_max_wall {100 * g.rim_max_wall:.1f} cm thick with room '
                             'for a finger inside')
                continue
            why = []
            if s['too_wide']:
                why.append(f'{s["too_wide"]} wider than the opening')
            if s['blocked']:
                why.append(f'{s["blocked"]} with a finger in occupied space (a neighbour or the object) at every '
                           'opening')
            parts.append(f'{family} {s["tried"]}: ' + ', '.join(why))
        text = f'no collision-free grasp among {total} candidates ({"; ".join(parts)})'
        if too_wide and len(too_wide) == total:
            text = (f'the object is {100 * min(too_wide):.1f} cm across at its narrowest, and the gripper opens '
                    f'{100 * g.max_opening:.1f} cm (grasp.max_opening, with a {100 * g.margin:.1f} cm margin); '
                    + text)
        where = 'the workspace floor' if support.source == 'floor' else 'the support'
        return f'{text}; fingertips kept {100 * g.support_clearance:.1f} cm above {where} at z {support.height:.3f} m'

    def _candidates(self, cluster: Cluster, support: Support, centres: np.ndarray) -> List['Candidate']:
        """Every family's candidates for a cluster (module docstring), fingers lifted clear of the support."""
        g = self.config
        major, minor = cluster.rotation[:, 0], cluster.rotation[:, 1]
        down = np.array([0.0, 0.0, -1.0])
        floor = support.height + g.support_clearance
        tip_z = max(cluster.top - g.grasp_depth, floor)
        half_length = float(cluster.extent[0]) / 2
        out = []
        for yaw in TOP_YAWS_DEG:
            c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
            closing = _canonical(c * minor + s * major)
            beside = np.cross(closing, down)                            # horizontal, across the closing axis
            fractions = ALONG_FRACTIONS if yaw == 0 else (0.0,)
            for fraction in fractions:
                offset = fraction * 2 * half_length
                point = cluster.centroid + offset * major
                point = np.array([point[0], point[1], tip_z])
                preference = 1 - 0.25 * abs(offset) / half_length if half_length > 0 else 1.0
                out.append(Candidate(TOP, self.lifted(gripper_pose(down, closing, point), floor),
                                     _box_width(cluster, closing), preference))
                for sign in (-1.0, 1.0):
                    lean = np.cos(np.radians(TILT_DEG)) * down + sign * np.sin(np.radians(TILT_DEG)) * beside
                    out.append(Candidate(TILTED, self.lifted(gripper_pose(lean, closing, point), floor),
                                         _box_width(cluster, closing), preference))
        if float(cluster.extent[2]) >= g.side_min_height:
            z = float(cluster.centroid[2])
            size = self.occupancy.voxel_size if self.occupancy is not None else 0.0
            for k in range(SIDE_DIRECTIONS):
                angle = 2 * np.pi * k / SIDE_DIRECTIONS
                direction = np.cos(angle) * major + np.sin(angle) * minor
                closing = _canonical(np.cross(np.array([0.0, 0.0, 1.0]), direction))
                # the near face: the object's farthest voxel towards the gripper (the box's, without voxels)
                near = (float(np.max((cluster.centroid - centres) @ direction)) + size / 2 if len(centres)
                        else _box_width(cluster, direction) / 2)
                if near > g.finger_length:
                    continue      # the palm would reach the object before the fingertips its centre line
                # fingertips on the centre line: across a round object's widest chord (short of it, closing
                # fingers push the object out of the hand)
                pose = gripper_pose(direction, closing, np.array([*cluster.centroid[:2], z]))
                out.append(Candidate(SIDE, self.lifted(pose, support.height + max(g.clearance, g.support_clearance)),
                                     _box_width(cluster, closing), 1.0))
        out += self._rim_candidates(cluster, floor)
        return out

    def _rim_candidates(self, cluster: Cluster, floor: float) -> List['Candidate']:
        """Rim grasps: a wall crossed by horizontal rays from the centre just below the top (module docstring)."""
        g = self.config
        if self.occupancy is None:
            return []
        size = self.occupancy.voxel_size
        z = cluster.top - size                          # a level inside the wall, below its top face
        radius = float(np.linalg.norm(cluster.extent[:2])) / 2 + 2 * size
        radii = np.arange(0.0, radius, size / 2)
        room = g.finger_depth + g.margin                # free space inside the wall that the inner finger needs
        out = []
        for k in range(RIM_DIRECTIONS):
            angle = 2 * np.pi * k / RIM_DIRECTIONS
            direction = np.cos(angle) * cluster.rotation[:, 0] + np.sin(angle) * cluster.rotation[:, 1]
            points = cluster.centroid[None, :2] + radii[:, None] * direction[None, :2]
            opacity = self.occupancy.alpha_at(np.column_stack([points, np.full(len(points), z)]))
            if not opacity.any():
                continue
            # the wall is the outermost run at least half as opaque as the ray's densest voxel: a briefly trained
            # field fills a container's inside with a faint haze (opacity 0.1-0.2 against 0.35-0.6 in the wall of
            # the cpu-tiny bowls), which a finger passes through
            haze = RIM_HAZE * float(opacity.max()) if self.occupancy.alpha is not None else 0.0
            solid = opacity > haze
            outer = int(np.flatnonzero(solid)[-1])
            inner = outer
            while inner > 0 and solid[inner - 1]:
                inner -= 1
            if inner == 0 or solid[radii > radii[inner] - room].sum() != outer - inner + 1:
                continue                                # solid to the centre, or no room for the inner finger
            if radii[inner] - room < 0:
                continue
            thickness = radii[outer] - radii[inner] + size
            if thickness > g.rim_max_wall:
                continue
            middle = (radii[outer] + radii[inner]) / 2
            for rank, depth in enumerate(RIM_DEPTHS):
                tip = max(cluster.top - min(depth, g.grasp_depth), floor)
                point = np.array([*(cluster.centroid[:2] + middle * direction[:2]), tip])
                pose = self.lifted(gripper_pose(np.array([0.0, 0.0, -1.0]), _canonical(direction), point), floor)
                # deeper holds more of the wall; each direction keeps its deepest free depth
                out.append(Candidate(RIM, pose, float(thickness), 1.0 - 0.05 * rank, group=(RIM, k), haze=haze))
        return out

    def haze_of(self, cluster: Cluster, haze: float) -> Callable[[np.ndarray], np.ndarray]:
        """Return `ignore` for `first_free_openings`: the object's voxels (inside its box) fainter than `haze`."""
        size = self.occupancy.voxel_size

        def ignore(centres: np.ndarray) -> np.ndarray:
            return cluster.contains(centres, size) & (self.occupancy.alpha_at(centres) < haze)
        return ignore

    def foreign_to(self, cluster: Cluster, support: Support) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """Return `foreign` for `first_free_openings`: voxels not connected to the cluster above the support.

        The occupied voxels above the support within reach of any finger are grouped (26-connected, scipy's
        label); the object is every group with a voxel centre inside the cluster's box. Its fringe and its parts
        join it; a neighbour across a free voxel does not. Centres outside that block are foreign.
        """
        if self.occupancy is None:
            return None
        g, occupancy = self.config, self.occupancy
        size = occupancy.voxel_size
        reach = g.max_opening / 2 + g.finger_depth + g.finger_length + size
        grown = cluster.extent / 2 + reach
        corners = box_corners(-grown, grown) @ cluster.rotation.T + cluster.centroid
        shape = np.array(occupancy.grid.shape)
        first = np.clip(np.floor((corners.min(axis=0) - occupancy.origin) / size).astype(int), 0, shape)
        last = np.clip(np.ceil((corners.max(axis=0) - occupancy.origin) / size).astype(int), 0, shape)
        first[2] = max(first[2], int(np.clip(np.floor((support.height - occupancy.origin[2]) / size - 0.5) + 1, 0,
                                             shape[2])))           # levels whose centre is above the support
        if np.any(last <= first):
            return None
        block = occupancy.grid[first[0]:last[0], first[1]:last[1], first[2]:last[2]]
        labels, _ = ndimage.label(block, structure=np.ones((3, 3, 3), bool))
        cells = np.argwhere(block)
        centres = occupancy.origin + (cells + first + 0.5) * size
        own = np.unique(labels[tuple(cells[cluster.contains(centres)].T)])
        mine = np.isin(labels, own) & block

        def foreign(points: np.ndarray) -> np.ndarray:
            index = np.floor((points - occupancy.origin) / size).astype(int) - first
            inside = np.all((index >= 0) & (index < np.array(block.shape)), axis=1)
            out = np.ones(len(points), bool)
            out[inside] = ~mine[tuple(index[inside].T)]
            return out
        return foreign

    def lifted(self, pose: np.ndarray, floor: float) -> np.ndarray:
        """Return `pose` raised along base z so that no finger corner is below `floor` (closing axis horizontal)."""
        g = self.config
        corners = box_corners(np.array([-g.finger_width / 2, 0.0, -g.finger_length]),
                              np.array([g.finger_width / 2, 0.0, 0.0]))
        lowest = float(np.min(corners @ pose[2, :3]) + pose[2, 3])
        if lowest < floor:
            pose = pose.copy()
            pose[2, 3] += floor - lowest
        return pose

    def object_centres(self, cluster: Cluster, support: Support) -> np.ndarray:
        """Occupied voxel centres [K, 3] of the object: inside the cluster's box grown by a voxel, above the support."""
        if self.occupancy is None:
            return np.zeros((0, 3))
        size = self.occupancy.voxel_size
        grown = cluster.extent / 2 + size
        corners = box_corners(-grown, grown) @ cluster.rotation.T + cluster.centroid
        centres = self.occupancy.centres_around(corners.min(axis=0), corners.max(axis=0))
        return centres[cluster.contains(centres, size) & (centres[:, 2] > support.height)]

    def _object_widths(self, centres: np.ndarray, candidates: Sequence['Candidate']) -> List[float]:
        """Per candidate: the object's width across its closing axis in the fingers' band (else the box's).

        Twice the farthest of the object's voxel centres (`object_centres`) from the gripper's closing midline,
        among those the fingers' band holds (``|x| <= finger_width / 2``, ``-finger_length <= z <= 0``), plus a
        voxel; candidates whose band holds none keep their box width.
        """
        widths = [c.width for c in candidates]
        if self.occupancy is None or not candidates or len(centres) == 0:
            return widths
        g = self.config
        size = self.occupancy.voxel_size
        for index, candidate in enumerate(candidates):
            if candidate.family == RIM:
                continue
            pose = candidate.pose
            local = (centres - pose[:3, 3]) @ pose[:3, :3]
            band = ((np.abs(local[:, 0]) <= g.finger_width / 2 + 1e-9) & (local[:, 2] >= -g.finger_length - 1e-9)
                    & (local[:, 2] <= 1e-9))
            if band.any():
                widths[index] = float(2 * np.abs(local[band, 1]).max() + size)
        return widths

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


def _box_width(cluster: Cluster, axis: np.ndarray) -> float:
    """Width of the cluster's box across a horizontal `axis` (unit)."""
    return float(np.abs(axis @ cluster.rotation[:, :2]) @ cluster.extent[:2])


def _canonical(closing: np.ndarray) -> np.ndarray:
    """Return the closing axis with its first non-zero component positive (a parallel gripper closes both ways)."""
    closing = np.asarray(closing, dtype=np.float64)
    for value in closing:
        if abs(value) > 1e-9:
            return closing if value > 0 else -closing
    return closing
