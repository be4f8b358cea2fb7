"""Frame conventions, in one place (docs/frames.md).

* Robot side (REP 103/105): poses are ``T_base_optical``, the camera's optical frame (x right, y down,
  z forward) expressed in ``base_frame``.
* nerfstudio side: camera-to-world in OpenGL axes (x right, y up, z back):
  ``c2w_gl = T_base_optical @ diag(1, -1, -1, 1)`` (the same matrix converts back).
* The field lives in a unit box: the workspace box is centred and scaled isotropically so its longest
  side spans [-1, 1]; nerfacto's scene contraction then keeps the workspace un-warped. Every output is
  mapped back to ``base_frame`` with the inverse of this fixed similarity transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

OPTICAL_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def optical_to_opengl(T_base_optical: np.ndarray) -> np.ndarray:
    """Convert a camera pose with optical axes to nerfstudio/OpenGL axes (works on [..., 4, 4])."""
    return np.asarray(T_base_optical, dtype=np.float64) @ OPTICAL_TO_OPENGL


def opengl_to_optical(c2w_gl: np.ndarray) -> np.ndarray:
    """Inverse of `optical_to_opengl` (the flip is its own inverse)."""
    return np.asarray(c2w_gl, dtype=np.float64) @ OPTICAL_TO_OPENGL


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Convert a quaternion (x, y, z, w), ROS order, to a 3x3 rotation; raises on zero or non-finite input."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    norm = np.linalg.norm(q)
    if q.shape != (4,) or not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f'quaternion {q.tolist()} is zero, not finite or not 4 values')
    return Rotation.from_quat(q / norm).as_matrix()


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation → unit quaternion (x, y, z, w) with w >= 0 (exact for 180° turns, unlike sign-copying)."""
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat(canonical=True)


def pose_matrix(translation: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a translation and a ROS quaternion."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(q_xyzw)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def check_rigid(T: np.ndarray, tol: float = 1e-3) -> None:
    """Raise ValueError unless `T` is a finite 4x4 rigid transform (orthonormal rotation, det +1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f'pose must be 4x4, got {T.shape}')
    if not np.all(np.isfinite(T)):
        raise ValueError('pose contains NaN or inf')
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > tol or abs(np.linalg.det(R) - 1.0) > tol:
        raise ValueError('pose rotation is not orthonormal with determinant +1')
    if np.abs(T[3] - [0, 0, 0, 1]).max() > tol:
        raise ValueError('pose bottom row is not [0, 0, 0, 1]')


@dataclass(frozen=True)
class WorkspaceBox:
    """Fixed similarity transform between ``base_frame`` and the field's unit box."""

    min_xyz: np.ndarray
    max_xyz: np.ndarray

    def __post_init__(self):
        lo = np.asarray(self.min_xyz, dtype=np.float64)
        hi = np.asarray(self.max_xyz, dtype=np.float64)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise ValueError(f'workspace bounds must be two finite xyz triples, got {lo} and {hi}')
        if np.any(hi <= lo):
            raise ValueError(f'workspace max {hi.tolist()} must exceed min {lo.tolist()} on every axis')
        object.__setattr__(self, 'min_xyz', lo)
        object.__setattr__(self, 'max_xyz', hi)

    @classmethod
    def from_config(cls, workspace) -> 'WorkspaceBox':
        """Build from a `WorkspaceConfig`."""
        return cls(np.array(workspace.min_xyz), np.array(workspace.max_xyz))

    @property
    def center(self) -> np.ndarray:
        """Centre of the box in base_frame."""
        return (self.min_xyz + self.max_xyz) / 2

    @property
    def scale(self) -> float:
        """Field units per metre: the longest side becomes 2 (spans [-1, 1])."""
        return 2.0 / float(np.max(self.max_xyz - self.min_xyz))

    def to_field(self, points_base: np.ndarray) -> np.ndarray:
        """Points [..., 3] in base_frame metres → field units."""
        return (np.asarray(points_base) - self.center) * self.scale

    def to_base(self, points_field: np.ndarray) -> np.ndarray:
        """Points [..., 3] in field units → base_frame metres."""
        return np.asarray(points_field) / self.scale + self.center

    def pose_to_field(self, c2w_base: np.ndarray) -> np.ndarray:
        """Camera-to-world [..., 4, 4] in base_frame → field units (rotation unchanged)."""
        out = np.array(c2w_base, dtype=np.float64, copy=True)
        out[..., :3, 3] = self.to_field(out[..., :3, 3])
        return out

    def pose_to_base(self, c2w_field: np.ndarray) -> np.ndarray:
        """Inverse of `pose_to_field`."""
        out = np.array(c2w_field, dtype=np.float64, copy=True)
        out[..., :3, 3] = self.to_base(out[..., :3, 3])
        return out

    def contains(self, points_base: np.ndarray) -> np.ndarray:
        """Boolean mask of points inside the box."""
        p = np.asarray(points_base)
        return np.all((p >= self.min_xyz) & (p <= self.max_xyz), axis=-1)

    def grid(self, voxel_size: float) -> np.ndarray:
        """Voxel centres [Nx, Ny, Nz, 3] in base_frame covering the box at `voxel_size` metres."""
        if voxel_size <= 0:
            raise ValueError(f'voxel_size must be positive, got {voxel_size}')
        counts = np.maximum(1, np.round((self.max_xyz - self.min_xyz) / voxel_size).astype(int))
        axes = [self.min_xyz[i] + (np.arange(counts[i]) + 0.5) * voxel_size for i in range(3)]
        return np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1)


def resized_intrinsics(K: np.ndarray, width: int, height: int, new_width: int, new_height: int) -> np.ndarray:
    """Intrinsics of the same camera for an image resized from width x height to new_width x new_height.

    Pixel centres sit at integer coordinates, so the principal point maps as (c + 0.5) * s - 0.5.
    """
    sx, sy = new_width / width, new_height / height
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0], out[0, 1], out[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def backproject(depth: np.ndarray, K: np.ndarray, T_base_optical: np.ndarray, stride: int = 1) -> np.ndarray:
    """Lift valid z-depth pixels (sampled every `stride`) to points [N, 3] in base_frame.

    Pixel centres are at (u + 0.5, v + 0.5), the convention nerfstudio casts rays with.
    """
    v, u = np.nonzero(depth[::stride, ::stride] > 0)
    v, u = v * stride, u * stride
    z = depth[v, u].astype(np.float64)
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    points = np.stack([x, y, z], axis=-1)
    return points @ T_base_optical[:3, :3].T + T_base_optical[:3, 3]
