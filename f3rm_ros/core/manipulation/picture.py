"""Pictures of gripper poses: the gripper's boxes drawn into a rendered view of the field (OpenCV lines)."""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

from .gripper import GripperModel
from ..capture.frames import PosedFrame
from ..geometry import WorkspaceBox
from ..study.views import default_view, render_view

# Box edges as pairs of corner indices (corners ordered as `box_corners`: x slowest, z fastest).
EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))
# Where the close-up camera sits relative to the pose it looks at (m): behind (the robot's side) and above.
CLOSE_UP_OFFSET = np.array([-0.30, 0.0, 0.36])
# RGB colours: best pose first.
POSE_COLOURS = ((40, 220, 90), (250, 200, 40), (60, 160, 250), (230, 80, 200), (200, 200, 200))


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return the 8 corners [8, 3] of the box [lo, hi]."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def project(points: np.ndarray, K: np.ndarray, T_base_optical: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(pixels [N, 2], in front [N] bool) of base_frame points seen by a pinhole camera (optical axes)."""
    local = (points - T_base_optical[:3, 3]) @ T_base_optical[:3, :3]
    front = local[:, 2] > 1e-3
    z = np.where(front, local[:, 2], 1.0)
    pixels = np.stack([K[0, 0] * local[:, 0] / z + K[0, 2], K[1, 1] * local[:, 1] / z + K[1, 2]], axis=-1)
    return pixels, front


def draw_grippers(image: np.ndarray, K: np.ndarray, T_base_optical: np.ndarray, gripper: GripperModel,
                  poses: Sequence[np.ndarray], widths: Sequence[float]) -> np.ndarray:
    """Return a copy of `image` (RGB uint8) with the gripper's boxes at every pose outlined, the first pose thickest."""
    out = np.ascontiguousarray(image.copy())
    for rank in reversed(range(len(poses))):
        pose, colour = np.asarray(poses[rank]), POSE_COLOURS[rank % len(POSE_COLOURS)]
        for lo, hi in gripper.boxes(float(widths[rank])):
            corners = box_corners(lo, hi) @ pose[:3, :3].T + pose[:3, 3]
            pixels, front = project(corners, K, T_base_optical)
            for a, b in EDGES:
                if front[a] and front[b]:
                    cv2.line(out, tuple(int(round(v)) for v in pixels[a]), tuple(int(round(v)) for v in pixels[b]),
                             colour, 2 if rank == 0 else 1, cv2.LINE_AA)
    return out


def gripper_picture(model, box: WorkspaceBox, gripper: GripperModel, poses: Sequence[np.ndarray],
                    widths: Sequence[float], width: int = 480, height: int = 360) -> np.ndarray:
    """Render the field around the first pose (from the robot's side, above) and draw the grippers in.

    Without poses the whole workspace is shown from the default overview.
    """
    from ..scenes.table import look_at, pinhole_intrinsics   # open3d-backed module: only pictures need it
    if len(poses):
        centre = np.asarray(poses[0])[:3, 3]
        eye = centre + CLOSE_UP_OFFSET
        view = PosedFrame(np.zeros((height, width, 3), np.uint8), pinhole_intrinsics(width, height, 50.0),
                          look_at(eye, centre))
    else:
        view = default_view(box, width, height)
    rendered = render_view(model, view, box=box)
    rgb = (np.clip(rendered['rgb'], 0, 1) * 255).astype(np.uint8) if rendered['rgb'].dtype != np.uint8 \
        else rendered['rgb']
    return draw_grippers(rgb, view.K, view.T_base_optical, gripper, poses, widths)
