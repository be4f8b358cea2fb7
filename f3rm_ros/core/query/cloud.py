"""The heatmap cloud's point layout, shared by the query node's PointCloud2 and the benchmarks (numpy only).

Fields x, y, z, rgb, similarity, all FLOAT32, little endian, 20 bytes per point; ``rgb`` holds the uint32
0x00RRGGBB bit pattern (the PCL/RViz convention). Clouds with surface normals add normal_x, normal_y, normal_z
(FLOAT32, unit length, base_frame axes): 32 bytes per point.
"""
from typing import Optional

import numpy as np

CLOUD_FIELDS = (('x', 0), ('y', 4), ('z', 8), ('rgb', 12), ('similarity', 16))
CLOUD_POINT_STEP = 20
# With surface normals (a model trained with model.predict_normals): three more FLOAT32 fields, 32 bytes a point.
NORMAL_FIELDS = (('normal_x', 20), ('normal_y', 24), ('normal_z', 28))
NORMALS_POINT_STEP = 32


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 → [N] uint32 0x00RRGGBB (reinterpret as float32 for PCL/RViz ``rgb`` fields)."""
    rgb = np.asarray(rgb).astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def pack_cloud_points(xyz: np.ndarray, rgb: Optional[np.ndarray], similarity: Optional[np.ndarray],
                      normals: Optional[np.ndarray] = None) -> np.ndarray:
    """Heatmap points → [N, 5] little-endian float32 rows in the `CLOUD_FIELDS` layout (PointCloud2 data).

    `rgb` None → white; `similarity` None → 0. With `normals` [N, 3]: [N, 8] rows, `NORMAL_FIELDS` appended.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f'xyz must be [N, 3], got {xyz.shape}')
    n = xyz.shape[0]
    packed = np.full(n, 0xFFFFFF, np.uint32)
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != (n, 3):
            raise ValueError(f'rgb must be [{n}, 3] like xyz, got {rgb.shape}')
        if rgb.dtype != np.uint8:
            raise ValueError(f'rgb must be uint8, got {rgb.dtype}')
        packed = pack_rgb(rgb)
    points = np.empty((n, 5), dtype='<f4')
    points[:, :3] = xyz
    points.view('<u4')[:, 3] = packed
    if similarity is None:
        points[:, 4] = 0.0
    else:
        similarity = np.asarray(similarity).reshape(-1)
        if similarity.shape != (n,):
            raise ValueError(f'similarity must have {n} values like xyz, got {similarity.shape}')
        points[:, 4] = similarity
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != (n, 3):
            raise ValueError(f'normals must be [{n}, 3] like xyz, got {normals.shape}')
        points = np.concatenate([points, normals.astype('<f4')], axis=1)
    return points
