"""Scoring against a synthetic scene's truth without open3d: pose errors and a voxelised copy of the true objects.

Kept apart from the scene builders (which need open3d) so that a machine without open3d (the GPU machine) can score
answers against truth rendered and saved elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np


@dataclass
class TruthOccupancy:
    """Where the true objects and the table are: a bool grid over the workspace (what the bench checks grippers on).

    Made where open3d exists (`true_occupancy`) and saved with a rendered scan, so a machine without open3d (the
    GPU machine) checks collisions against the same truth.
    """

    grid: np.ndarray        # bool [Nx, Ny, Nz]
    origin: np.ndarray      # [3] corner of voxel (0, 0, 0), metres
    voxel: float

    def hits(self, points: np.ndarray) -> int:
        """How many of the points [P, 3] (base_frame) lie in occupied cells."""
        index = np.floor((np.asarray(points) - self.origin) / self.voxel).astype(int)
        inside = np.all((index >= 0) & (index < self.grid.shape), axis=1)
        index = index[inside]
        return int(self.grid[index[:, 0], index[:, 1], index[:, 2]].sum())


def pose_error(pose: np.ndarray, truths: List[np.ndarray]) -> Tuple[float, float]:
    """(metres, degrees) from `pose` to the nearest true pose (nearest by the larger of cm/1.5 and deg/15)."""
    best = None
    for truth in truths:
        distance = float(np.linalg.norm(pose[:3, 3] - truth[:3, 3]))
        cos = (np.trace(pose[:3, :3].T @ truth[:3, :3]) - 1) / 2
        angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
        key = max(distance / 0.015, angle / 15.0)
        if best is None or key < best[0]:
            best = (key, distance, angle)
    return best[1], best[2]
