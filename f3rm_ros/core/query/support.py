"""The surface an object rests on, estimated from the field's occupancy around the object's footprint.

Objects on a table are seen from above and beside; under them the field is unknown, but the table around them
is well observed. So the support under a footprint is read from a ring of grid columns around it: each column's
surface is the top of its highest occupied voxel below a ceiling (the object's top); the support is the median
(or another `quantile`) of those surfaces when enough of the ring has one (a neighbour or the object's own
fringe covers less than half of the ring, so the median is the table). When too little of the ring is
occupied (an object at the table's edge, a grid that holds no table), the support falls back to the workspace
floor: the bottom of the grid.

Used by the grasp planner (fingertips stop a clearance above the support instead of treating it as an
obstacle) and by the query's cluster checks (what floats above the support). Public API: `Support`,
`support_under`, `support_under_box`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# Ring around the footprint that is read: from one voxel beyond the footprint (the object's own fringe) out to
# this distance (m). 4 cm holds a few hundred columns at 1 cm voxels and stays on a table between objects.
RING_OUTER = 0.04
# Share of the ring's columns that must have a surface below the ceiling for the median to be the support.
MIN_COVERAGE = 0.5


@dataclass
class Support:
    """The support surface under a footprint, in base_frame.

    Attributes:
        height: z of the support's top surface (m): the top face of its highest occupied voxels.
        source: 'occupancy' (read from the ring of columns) or 'floor' (the grid's bottom, the fallback).
        coverage: share of the ring's columns that had a surface below the ceiling (0 for an empty ring).
        columns: number of columns in the ring.
    """

    height: float
    source: str
    coverage: float
    columns: int

    def as_dict(self) -> dict:
        """Plain JSON-able summary."""
        return {'height': self.height, 'source': self.source, 'coverage': self.coverage, 'columns': self.columns}


def support_under_box(occupancy, centre: np.ndarray, extent: np.ndarray, rotation: np.ndarray, ceiling: float,
                      floor: Optional[float] = None, ring: float = RING_OUTER,
                      min_coverage: float = MIN_COVERAGE, quantile: float = 0.5) -> Support:
    """Return the support under a gravity-aligned box's footprint.

    Args:
        occupancy: an `Occupancy` of the field (grid, origin, voxel_size), or None (the floor is returned).
        centre: [3] box centre in base_frame (only x, y are used).
        extent: [3] box size along its own axes (only the first two are used).
        rotation: [3, 3] box axes as columns (x, y horizontal).
        ceiling: only voxels whose centre is below this height count (the object's top: a taller neighbour's
            upper part is not a support).
        floor: the fallback height; None is the grid's bottom (``occupancy.origin[2]``, the workspace floor).
        ring: the ring reaches this far beyond the footprint (m).
        min_coverage: share of the ring's columns that must have a surface.
        quantile: of the columns' surfaces, the one taken (0.5: the median; higher reads a fuzzy surface's top).
    """
    if occupancy is None:
        return Support(float(0.0 if floor is None else floor), 'floor', 0.0, 0)
    grid, origin, size = occupancy.grid, np.asarray(occupancy.origin, dtype=np.float64), float(occupancy.voxel_size)
    floor = float(origin[2]) if floor is None else float(floor)
    axes = np.asarray(rotation, dtype=np.float64)[:2, :2]
    half = np.asarray(extent, dtype=np.float64)[:2] / 2
    reach = np.abs(axes) @ (half + ring)                       # the grown footprint's axis-aligned half size
    centre = np.asarray(centre, dtype=np.float64)
    first = np.clip(np.floor((centre[:2] - reach - origin[:2]) / size).astype(int), 0, np.array(grid.shape[:2]))
    last = np.clip(np.ceil((centre[:2] + reach - origin[:2]) / size).astype(int), 0, np.array(grid.shape[:2]))
    top_level = int(np.clip(np.ceil((ceiling - origin[2]) / size - 0.5), 0, grid.shape[2]))   # centres < ceiling
    if np.any(last <= first) or top_level == 0:
        return Support(floor, 'floor', 0.0, 0)
    ii, jj = np.meshgrid(np.arange(first[0], last[0]), np.arange(first[1], last[1]), indexing='ij')
    xy = origin[:2] + (np.stack([ii, jj], -1) + 0.5) * size
    local = np.abs((xy - centre[:2]) @ axes)                    # column centres in the box's axes
    # outside the footprint grown by a voxel (the object's fringe), inside the ring
    in_ring = np.all(local <= half + ring, axis=-1) & ~np.all(local <= half + size, axis=-1)
    if not in_ring.any():
        return Support(floor, 'floor', 0.0, 0)
    columns = grid[ii[in_ring], jj[in_ring], :top_level]        # [C, levels below the ceiling]
    has = columns.any(axis=1)
    coverage = float(has.mean())
    if coverage < min_coverage:
        return Support(floor, 'floor', coverage, int(in_ring.sum()))
    highest = top_level - 1 - np.argmax(columns[has, ::-1], axis=1)     # highest occupied level per column
    surface = origin[2] + (highest + 1) * size                           # its top face
    return Support(float(np.quantile(surface, quantile)), 'occupancy', coverage, int(in_ring.sum()))


def support_under(occupancy, cluster, floor: Optional[float] = None, ring: float = RING_OUTER,
                  min_coverage: float = MIN_COVERAGE, quantile: float = 0.5) -> Support:
    """Return the support under a `Cluster`'s box footprint, voxels below its top counting (`support_under_box`)."""
    return support_under_box(occupancy, cluster.centroid, cluster.extent, cluster.rotation, cluster.top, floor,
                             ring, min_coverage, quantile)
