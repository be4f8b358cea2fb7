"""The gripper a pose is checked with: finger and palm boxes (or a voxelised mesh) as points in the gripper frame.

Gripper frame, as everywhere in f3rm_ros (core/query/grasps.py): z = approach direction (from the gripper
into the object), y = closing direction of the fingers, x = y × z; the origin is the point between the
fingertips' ends. Each finger reaches from the origin's plane back to ``-finger_length`` along z, its inner
face at ±opening/2; the palm sits behind the fingers.

Collisions are counted on points sampled inside those solids (a lattice no coarser than the occupancy's
voxel), transformed by every candidate pose at once (torch, on the field's device), looked up
in the occupancy grid: one batched gather instead of a box test per voxel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..config import GraspConfig, ManipulationConfig
from ..query.grasps import finger_boxes

Box = Tuple[np.ndarray, np.ndarray]   # (lo, hi) corners in the gripper frame


@dataclass(frozen=True)
class GripperGeometry:
    """Sizes of a parallel-jaw gripper (metres): fingers, palm and how far it opens."""

    name: str
    max_opening: float
    finger_length: float
    finger_width: float     # along x
    finger_depth: float     # along y (finger thickness)
    palm_size: Tuple[float, float, float]   # x, y, z (z: thickness behind the fingers)


# Published outer dimensions, rounded to the millimetre; fingers as their pads' boxes.
PRESETS: Dict[str, GripperGeometry] = {
    'robotiq_2f85': GripperGeometry('robotiq_2f85', 0.085, 0.038, 0.022, 0.010, (0.035, 0.15, 0.06)),
    'robotiq_2f140': GripperGeometry('robotiq_2f140', 0.140, 0.050, 0.027, 0.012, (0.040, 0.22, 0.08)),
    'franka_hand': GripperGeometry('franka_hand', 0.080, 0.045, 0.020, 0.012, (0.060, 0.20, 0.065)),
}


def geometry_from_config(grasp: GraspConfig, manipulation: ManipulationConfig) -> GripperGeometry:
    """Return the gripper `manipulation.gripper` names: a preset, or 'grasp' (the grasp section's fingers + palm)."""
    if manipulation.gripper != 'grasp':
        return PRESETS[manipulation.gripper]
    return GripperGeometry('grasp', grasp.max_opening, grasp.finger_length, grasp.finger_width,
                           grasp.finger_depth, tuple(float(v) for v in manipulation.palm_size))


class GripperModel:
    """Solid points of the gripper at an opening, and batched collision counts against an occupancy grid.

    Args:
        geometry: the sizes.
        spacing: lattice step of the sampled points (m); at most the occupancy's voxel.
        mesh_path: optional mesh (metres, gripper frame) whose voxelised surface replaces the boxes (the opening
            then has no effect: a mesh is one fixed shape).
    """

    def __init__(self, geometry: GripperGeometry, spacing: float, mesh_path: str = ''):
        self.geometry = geometry
        self.spacing = float(spacing)
        self.mesh_path = mesh_path
        self._mesh_points = load_mesh_points(Path(mesh_path), spacing) if mesh_path else None
        self._cache: Dict[float, np.ndarray] = {}

    @property
    def name(self) -> str:
        """The preset's name, or the mesh's file name."""
        return Path(self.mesh_path).name if self.mesh_path else self.geometry.name

    def boxes(self, opening: float) -> List[Box]:
        """Return the two fingers and the palm as (lo, hi) boxes in the gripper frame for an `opening` (m)."""
        g = self.geometry
        boxes = finger_boxes(opening, g.finger_width, g.finger_depth, g.finger_length)
        px, py, pz = g.palm_size
        boxes.append((np.array([-px / 2, -py / 2, -g.finger_length - pz]),
                      np.array([px / 2, py / 2, -g.finger_length])))
        return boxes

    def points(self, opening: float) -> np.ndarray:
        """Points [P, 3] filling the gripper's solids (gripper frame) at `opening`."""
        key = round(float(opening), 6)
        if key not in self._cache:
            if self._mesh_points is not None:
                self._cache[key] = self._mesh_points
            else:
                self._cache[key] = np.concatenate([lattice(lo, hi, self.spacing) for lo, hi in self.boxes(opening)])
        return self._cache[key]

    def contact_points(self, opening: float) -> np.ndarray:
        """Return the points of `points` that collisions count: all but the fingertips' last sampling step.

        A grasp shown with the fingertips just above a surface rests them in the field's fuzz of it, one voxel
        thick: the true screwdriver grasp (tips 6 mm above the table) touched 2-40 voxels of trained fields'
        tables, all of them in that band, and answers that must touch no more than the demonstrations did were
        refused in fields with a thicker fuzz. A gripper deeper than the band hits with the points above it.
        """
        points = self.points(opening)
        return points[points[:, 2] < -self.spacing]

    def finger_solid_points(self, opening: float) -> np.ndarray:
        """Return the points of the fingers [F, 3], fingertips included (a mesh gripper: all its points)."""
        return self._fingers_only(self.points(opening))

    def finger_points(self, opening: float) -> np.ndarray:
        """Return the `contact_points` of the fingers alone [F, 3], the palm behind them excluded.

        The fingers are where a pose turned off its part meets the part first. A mesh gripper has no fingers of
        its own: all its points.
        """
        return self._fingers_only(self.contact_points(opening))

    def _fingers_only(self, points: np.ndarray) -> np.ndarray:
        """Keep the points [K, 3] in front of the palm (all of a mesh gripper's)."""
        if self._mesh_points is not None:
            return points
        return points[points[:, 2] >= -self.geometry.finger_length - 1e-9]

    def collisions(self, poses: torch.Tensor, occupancy: 'OccupancyGrid', opening: float) -> torch.Tensor:
        """Occupied voxels each pose's gripper touches [B] (long), poses [B, 4, 4] in base_frame (`contact_points`)."""
        local = torch.as_tensor(self.contact_points(opening), dtype=poses.dtype, device=poses.device)
        world = torch.einsum('bij,pj->bpi', poses[:, :3, :3], local) + poses[:, None, :3, 3]
        return occupancy.occupied_at(world).sum(dim=1)


def lattice(lo: np.ndarray, hi: np.ndarray, spacing: float) -> np.ndarray:
    """Points [K, 3] on a regular lattice filling the box [lo, hi], its faces included."""
    axes = [np.linspace(a, b, max(2, int(np.ceil((b - a) / spacing)) + 1)) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, 3)


def load_mesh_points(path: Path, spacing: float) -> np.ndarray:
    """Voxel centres [K, 3] of a mesh's surface (open3d voxelisation), the gripper's collision points."""
    import open3d as o3d   # heavy; only a mesh gripper needs it
    if not path.is_file():
        raise FileNotFoundError(f'manipulation.gripper_mesh: {path} does not exist')
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise ValueError(f'manipulation.gripper_mesh: {path} holds no triangles')
    grid = o3d.geometry.VoxelGrid.create_from_triangle_mesh(mesh, voxel_size=spacing)
    indices = np.array([voxel.grid_index for voxel in grid.get_voxels()])
    return np.asarray(grid.origin) + (indices + 0.5) * spacing


class OccupancyGrid:
    """Occupied voxels over a box in base_frame, on a torch device, for batched point look-ups.

    `occupied` is bool [Nx, Ny, Nz]; voxel (i, j, k) is centred at ``origin + ((i, j, k) + 0.5) * voxel_size``.
    Points outside the grid count as free.
    """

    def __init__(self, occupied: torch.Tensor, origin: np.ndarray, voxel_size: float):
        self.occupied = occupied
        self.shape = torch.tensor(occupied.shape, device=occupied.device)
        self.origin = torch.as_tensor(np.asarray(origin, dtype=np.float32), device=occupied.device)
        self.voxel_size = float(voxel_size)

    def occupied_at(self, points: torch.Tensor) -> torch.Tensor:
        """Bool [...] whether each point [..., 3] falls in an occupied voxel."""
        index = torch.floor((points - self.origin.to(points.dtype)) / self.voxel_size).long()
        inside = ((index >= 0) & (index < self.shape)).all(dim=-1)
        index = torch.where(inside[..., None], index, torch.zeros_like(index))
        return self.occupied[index[..., 0], index[..., 1], index[..., 2]] & inside
