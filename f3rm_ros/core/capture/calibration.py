"""Check a robot's camera calibration by eye: draw the base-frame workspace box into camera images.

With a right hand-eye calibration (and intrinsics, and TF), the box drawn from ``workspace.min_xyz`` /
``max_xyz`` sits on the table where you measured it, its vertical edges stay vertical as the arm moves, and the
base frame's axes (x red, y green, z blue, 10 cm) start at the robot's base when it is in view. A wrong
calibration shows as a box that slides, tilts or floats between views. With depth, `depth_inside_box` also
says which share of the depth points land inside the box (low when the poses are wrong, or the box is).
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .frames import PosedFrame
from ..geometry import backproject

NEAR = 0.01                 # m in front of the camera: edges behind it are clipped here
BOX_COLOUR = (255, 210, 0)  # RGB
AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (60, 90, 255))


def box_corners(lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """[8, 3] corners of the axis-aligned box, index bits (x, y, z) = (i & 1, i & 2, i & 4)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.array([[hi[0] if i & 1 else lo[0], hi[1] if i & 2 else lo[1], hi[2] if i & 4 else lo[2]]
                     for i in range(8)])


BOX_EDGES = [(a, b) for a, b in itertools.combinations(range(8), 2) if bin(a ^ b).count('1') == 1]


def project(points: np.ndarray, K: np.ndarray, T_base_optical: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Base-frame points [N, 3] → (pixel coordinates [N, 2] with centres at +0.5, depth z [N] in the camera)."""
    T_optical_base = np.linalg.inv(T_base_optical)
    camera = np.asarray(points, float) @ T_optical_base[:3, :3].T + T_optical_base[:3, 3]
    z = camera[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        uv = (camera[:, :2] / z[:, None]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, z


def _segment(a: np.ndarray, b: np.ndarray, K: np.ndarray, T: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Project the 3D segment a-b, clipped to the part in front of the camera; None when all of it is behind."""
    T_optical_base = np.linalg.inv(T)
    ca, cb = (T_optical_base[:3, :3] @ p + T_optical_base[:3, 3] for p in (a, b))
    if ca[2] < NEAR and cb[2] < NEAR:
        return None
    if ca[2] < NEAR or cb[2] < NEAR:
        t = (NEAR - ca[2]) / (cb[2] - ca[2])
        clipped = ca + t * (cb - ca)
        ca, cb = (clipped, cb) if ca[2] < NEAR else (ca, clipped)
    out = []
    for c in (ca, cb):
        out.append(np.array([K[0, 0] * c[0] / c[2] + K[0, 2], K[1, 1] * c[1] / c[2] + K[1, 2]]))
    return out[0], out[1]


def draw_workspace(frame: PosedFrame, lo: Sequence[float], hi: Sequence[float], caption: str = '',
                   axes: float = 0.1) -> np.ndarray:
    """Return the frame's image (RGB) with the workspace box, the base axes and a caption drawn on it."""
    image = np.ascontiguousarray(frame.image.copy())
    scale = max(1, int(round(max(frame.width, frame.height) / 640)))
    corners = box_corners(lo, hi)

    def line(a, b, colour, thickness):
        segment = _segment(a, b, frame.K, frame.T_base_optical)
        if segment is None:
            return
        (u0, v0), (u1, v1) = (p - 0.5 for p in segment)   # our pixel centres are at +0.5, OpenCV's at 0
        limit = 1e5
        p0 = (int(np.clip(u0, -limit, limit)), int(np.clip(v0, -limit, limit)))
        p1 = (int(np.clip(u1, -limit, limit)), int(np.clip(v1, -limit, limit)))
        cv2.line(image, p0, p1, colour, thickness, cv2.LINE_AA)

    for a, b in BOX_EDGES:
        line(corners[a], corners[b], BOX_COLOUR, 2 * scale)
    if axes > 0:
        origin = np.zeros(3)
        for axis, colour in enumerate(AXIS_COLOURS):
            tip = np.zeros(3)
            tip[axis] = axes
            line(origin, tip, colour, 3 * scale)
    if caption:
        bar = np.full((22 * scale, image.shape[1], 3), 32, np.uint8)
        cv2.putText(bar, caption, (4, 15 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        image = np.concatenate([bar, image])
    return image


def depth_inside_box(frame: PosedFrame, lo: Sequence[float], hi: Sequence[float], margin: float = 0.02) -> float:
    """Share (0..1) of the frame's valid depth points that land inside the box (grown by `margin`); nan without."""
    if frame.depth is None or not np.any(frame.depth > 0):
        return float('nan')
    points = backproject(frame.depth, frame.K, frame.T_base_optical, max(1, frame.width // 160))
    lo, hi = np.asarray(lo, float) - margin, np.asarray(hi, float) + margin
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    return float(inside.mean())


def box_in_view(frame: PosedFrame, lo: Sequence[float], hi: Sequence[float]) -> float:
    """Share (0..1) of the box's corners that project inside the image in front of the camera."""
    uv, z = project(box_corners(lo, hi), frame.K, frame.T_base_optical)
    inside = (z > NEAR) & (uv[:, 0] >= 0) & (uv[:, 0] <= frame.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= frame.height)
    return float(inside.mean())


def contact_sheet(images: List[np.ndarray], columns: int = 2) -> np.ndarray:
    """Tile RGB images (padded to the largest) into one picture."""
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    tiles = [np.pad(i, ((0, height - i.shape[0]), (0, width - i.shape[1]), (0, 0))) for i in images]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)
