"""A triangle mesh of a field's surfaces: marching cubes on its opacity inside the workspace, vertex colours.

The opacity grid is the query's (`voxels.VoxelField`: ``1 - exp(-density x voxel)`` over the workspace), so a mesh
shows what a query calls occupied; scikit-image's marching cubes extracts the level set, the field's colour head
colours the vertices, and open3d writes PLY (MeshLab, Blender, a motion planner's collision object) or OBJ.
"""
from __future__ import annotations

# Imported where used: open3d (heavy, and a machine may lack it), only to drop small pieces and write the file.
import dataclasses
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from skimage.measure import marching_cubes
from tqdm import tqdm

from ..config import QueryConfig
from ..geometry import WorkspaceBox
from ..query.voxels import VoxelField, eval_mode


def auto_voxel_size(box: WorkspaceBox, voxel_size: float, max_cells: int = 256) -> float:
    """Return `voxel_size`, grown so that the longest side of the workspace has at most `max_cells` voxels."""
    return max(float(voxel_size), float(np.max(box.max_xyz - box.min_xyz)) / max_cells)


def extract_mesh(model, box: WorkspaceBox, query: QueryConfig, feature_dim: int, voxel_size: float,
                 level: Optional[float] = None, crop: Optional[Sequence[np.ndarray]] = None,
                 min_triangles: int = 0, progress: bool = False) -> Dict[str, np.ndarray]:
    """Marching cubes at opacity `level` (default ``query.alpha_threshold``) over the workspace or `crop` box.

    Returns ``vertices`` [V, 3] (base_frame metres), ``triangles`` [T, 3], ``colors`` [V, 3] in [0, 1],
    ``normals`` [V, 3] (pointing out of the surface). Connected pieces with fewer than `min_triangles` triangles
    (floaters) are dropped. Raises ValueError when nothing reaches the level.
    """
    if crop is not None:
        query = dataclasses.replace(query, crop_min_xyz=tuple(map(float, crop[0])),
                                    crop_max_xyz=tuple(map(float, crop[1])))
    level = query.alpha_threshold if level is None else float(level)
    if not 0 < level < 1:
        raise ValueError(f'the opacity level must be in (0, 1), got {level}')
    voxels = VoxelField(model, box, dataclasses.replace(query, voxel_size=voxel_size), feature_dim)
    region = voxels.region               # the workspace, or its part inside the crop box
    alpha = _grid_alpha(voxels, progress).reshape(voxels.grid_shape)
    if alpha.max() < level:
        raise ValueError(f'no voxel reaches opacity {level} (the densest is {alpha.max():.3f}): an untrained field, '
                         'or lower --level')
    # pad with empty space so surfaces touching the box are closed
    padded = np.pad(alpha, 1, constant_values=0.0)
    vertices, triangles, normals, _ = marching_cubes(padded, level=level, spacing=(voxel_size,) * 3)
    vertices = vertices - voxel_size + voxels.grid[0, 0, 0]     # padded index 0 is one voxel before the first
    vertices = np.clip(vertices, region.min_xyz, region.max_xyz)  # the closing caps lie on the box's faces
    if min_triangles > 0:
        vertices, triangles, normals = _drop_small_pieces(vertices, triangles, normals, min_triangles)
    positions = torch.from_numpy(box.to_field(vertices).astype(np.float32)).to(next(model.parameters()).device)
    # the query's own pass: colour from nerfacto's colour head, looking straight down
    _, rgb = voxels.features_and_colour(positions)
    return {'vertices': vertices, 'triangles': triangles.astype(np.int64), 'normals': normals,
            'colors': rgb.cpu().numpy().astype(np.float64) / 255.0}


@torch.no_grad()
def _grid_alpha(voxels: VoxelField, progress: bool) -> np.ndarray:
    """Return `VoxelField.grid_alpha`, evaluated chunk by chunk with a progress bar (a large grid takes minutes)."""
    positions = voxels.grid_positions()
    chunk = voxels.chunk_size(positions.device)
    alpha = np.empty(len(positions), np.float32)
    with eval_mode(voxels.model):
        for start in tqdm(range(0, len(positions), chunk), desc='density grid', unit='chunk', disable=not progress):
            density = voxels.model.density_at(positions[start:start + chunk])[..., 0].float()
            alpha[start:start + chunk] = voxels.opacity(density).cpu().numpy()
    return alpha


def _drop_small_pieces(vertices, triangles, normals, min_triangles: int):
    """Keep the connected pieces of at least `min_triangles` triangles (open3d's triangle clustering)."""
    import open3d as o3d
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))
    clusters, counts, _ = mesh.cluster_connected_triangles()
    keep = np.asarray(counts)[np.asarray(clusters)] >= min_triangles
    triangles = triangles[keep]
    used = np.unique(triangles)
    remap = -np.ones(len(vertices), np.int64)
    remap[used] = np.arange(len(used))
    if not len(used):
        raise ValueError(f'every piece of the mesh has fewer than {min_triangles} triangles')
    return vertices[used], remap[triangles], normals[used]


def write_mesh(mesh: Dict[str, np.ndarray], path: Path) -> Path:
    """Write PLY or OBJ (by the suffix) with vertex colours and normals through open3d."""
    import open3d as o3d
    path = Path(path)
    if path.suffix.lower() not in ('.ply', '.obj'):
        raise ValueError(f'{path}: mesh files are .ply or .obj')
    path.parent.mkdir(parents=True, exist_ok=True)
    out = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh['vertices']),
                                    o3d.utility.Vector3iVector(mesh['triangles']))
    out.vertex_colors = o3d.utility.Vector3dVector(np.clip(mesh['colors'], 0, 1))
    out.vertex_normals = o3d.utility.Vector3dVector(mesh['normals'])
    if not o3d.io.write_triangle_mesh(str(path), out, write_vertex_colors=True, write_vertex_normals=True):
        raise OSError(f'open3d could not write {path}')
    return path


def surface_area(mesh: Dict[str, np.ndarray]) -> float:
    """Total triangle area (m²)."""
    a, b, c = (mesh['vertices'][mesh['triangles'][:, i]] for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2) if len(mesh['triangles']) else 0.0
