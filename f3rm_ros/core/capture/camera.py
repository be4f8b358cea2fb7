"""The colour camera of a scan and what a kept frame's pixels go through before they are stored.

A camera with lens distortion gets an `Undistorter` (maps made once and reused while K, distortion and size stay
the same); a kept image is undistorted once and carries the pinhole ``K_new`` from then on. Images larger than
`max_image_side` are stored downscaled (area filter; K scaled): a 12 MP camera gains nothing in the field (CLIP
sees 224-336 px, nerfacto samples rays) and would cost 36 MB PNGs and the trainer's RAM. A frame's mask is the
static mask (a wrist camera's gripper) AND the frame's own mask AND the pixels the lens saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

from .distortion import Distortion, Undistorter
from ..geometry import resized_intrinsics


def read_mask_file(path: str) -> np.ndarray:
    """Read a static mask image (white = keep, black = ignore: the gripper in a wrist camera) as H x W bool.

    Any 8- or 16-bit grey or colour image; a pixel is kept when its grey value is above half the range.
    ValueError with the path when it cannot be read.
    """
    image = cv2.imread(str(Path(path).expanduser()), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'mask_file {path} cannot be read as an image (a PNG at the camera\'s resolution: white = '
                         'keep, black = ignore)')
    if image.ndim == 3:
        image = image[..., :3].max(axis=2)
    half = 32767 if image.dtype == np.uint16 else 127
    mask = image > half
    if not mask.any():
        raise ValueError(f'mask_file {path} masks every pixel (all black): white = keep, black = ignore')
    return mask


def stored_size(width: int, height: int, max_side: int) -> Tuple[int, int]:
    """Return the (width, height) an image is stored at: the longer side at most `max_side` (0 = any)."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return int(width), int(height)
    scale = max_side / longest
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


@dataclass
class StoredImage:
    """A colour image as it is stored: undistorted and resized, its intrinsics, and the pixels the lens saw."""

    rgb: np.ndarray
    K: np.ndarray
    lens_saw: Optional[np.ndarray]    # H x W bool at the camera's resolution (None = every pixel)
    resized: bool

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) as stored."""
        return self.rgb.shape[1], self.rgb.shape[0]


@dataclass
class Camera:
    """Intrinsics, size and lens distortion of the colour images; `undistorter` is None for a pinhole camera."""

    K: np.ndarray
    width: int
    height: int
    distortion: Optional[Distortion] = None
    undistorter: Optional[Undistorter] = None

    @classmethod
    def from_info(cls, K: np.ndarray, width: int, height: int, distortion: Optional[Distortion],
                  previous: Optional['Camera'] = None) -> Tuple['Camera', str]:
        """Return the camera and a note to log once ('' = nothing new): undistortion starts or stops.

        The previous camera's undistorter is reused while K, distortion and size stay the same.
        """
        K = np.asarray(K, dtype=np.float64)
        if distortion is not None and distortion.is_zero:
            distortion = None
        old = previous.undistorter if previous is not None else None
        if distortion is None:
            note = ('camera_info has no lens distortion now: keyframes are no longer undistorted'
                    if old is not None else '')
            return cls(K, int(width), int(height)), note
        if old is not None and old.matches(K, distortion, width, height):
            return cls(K, int(width), int(height), distortion, old), ''
        undistorter = Undistorter(K, distortion, int(width), int(height))
        Kn = undistorter.K_new
        note = (f'camera_info: {distortion.model} distortion {list(np.round(distortion.coefficients, 5))}: '
                f'keyframes are undistorted once at capture and published with the pinhole K_new '
                f'(fx {Kn[0, 0]:.1f}, fy {Kn[1, 1]:.1f}, cx {Kn[0, 2]:.1f}, cy {Kn[1, 2]:.1f}) and zero '
                'distortion on ~/keyframe/camera_info')
        return cls(K, int(width), int(height), distortion, undistorter), note

    def store(self, rgb: np.ndarray, max_side: int) -> StoredImage:
        """Undistort `rgb` (at the camera's size) and downscale it to `max_side`, with the intrinsics to match."""
        K, lens_saw = self.K, None
        if self.undistorter is not None:
            rgb, K = self.undistorter.image(rgb), self.undistorter.K_new.copy()
            lens_saw = self.undistorter.nearest(np.full(rgb.shape[:2], 255, np.uint8)) > 0
        width, height = stored_size(rgb.shape[1], rgb.shape[0], max_side)
        resized = (width, height) != (rgb.shape[1], rgb.shape[0])
        if resized:
            K = resized_intrinsics(K, rgb.shape[1], rgb.shape[0], width, height)
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return StoredImage(rgb, K, lens_saw, resized)

    def mask(self, frame_mask: Optional[np.ndarray], static_mask: Optional[np.ndarray],
             image: StoredImage) -> Optional[np.ndarray]:
        """Return the static mask AND the frame's stored mask AND the pixels the lens saw (None = all of them)."""
        width, height = image.size
        mask = None if frame_mask is None else frame_mask > 0
        parts = []                                   # at the camera's resolution, undistorted
        if static_mask is not None:
            static = (np.asarray(static_mask) > 0).astype(np.uint8)
            parts.append(static if self.undistorter is None else self.undistorter.nearest(static))
        if image.lens_saw is not None:
            parts.append(image.lens_saw.astype(np.uint8))
        for part in parts:
            if image.resized:
                part = cv2.resize(part, (width, height), interpolation=cv2.INTER_NEAREST)
            mask = part > 0 if mask is None else mask & (part > 0)
        if mask is None or mask.all():
            return None
        return mask
