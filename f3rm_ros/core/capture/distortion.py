"""Lens distortion: undistort a keyframe once, so everything after capture sees a pinhole camera.

Models, named as ROS ``sensor_msgs/CameraInfo.distortion_model`` names them, with OpenCV's coefficient order:

* ``plumb_bob``: k1 k2 p1 p2 k3 (fewer coefficients are zero-padded);
* ``rational_polynomial``: k1 k2 p1 p2 k3 k4 k5 k6;
* ``equidistant`` (fisheye): k1 k2 k3 k4.

nerfstudio datasets say ``camera_model`` OPENCV (k1 k2 p1 p2, optional k3 k4 become the radial terms) or
OPENCV_FISHEYE (k1 k2 k3 k4); PINHOLE / SIMPLE_PINHOLE have none.

Why undistort at capture instead of handing the coefficients to nerfstudio's cameras: the 2D teacher's patch
grid, the keyframe gate's blur test, depth back-projection, label maps and masks all assume pinhole pixels;
one remap per keyframe (a few milliseconds with maps computed once per camera) keeps a single camera model
everywhere, and the republished keyframes say what they are (the new K, zero distortion). The new K keeps
only valid pixels (OpenCV's ``alpha=0`` / ``balance=0``): no black borders to train on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

MODEL_SIZES = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}
DATASET_MODELS = {'OPENCV': 'rational_polynomial', 'OPENCV_FISHEYE': 'equidistant', 'PINHOLE': None,
                  'SIMPLE_PINHOLE': None}


@dataclass(frozen=True)
class Distortion:
    """A distortion model and its coefficients in OpenCV's order (see the module docstring)."""

    model: str
    coefficients: Tuple[float, ...]

    def __post_init__(self):
        if self.model not in MODEL_SIZES:
            raise ValueError(f'unsupported distortion model {self.model!r}; supported: {sorted(MODEL_SIZES)} '
                             '(or publish rectified images, image_rect, with their CameraInfo)')
        values = [float(v) for v in self.coefficients]
        size = MODEL_SIZES[self.model]
        if len(values) > size and any(abs(v) > 0 for v in values[size:]):
            raise ValueError(f'{self.model} takes {size} coefficients, got {len(values)}: {values}')
        if not all(np.isfinite(values)):
            raise ValueError(f'distortion coefficients must be finite, got {values}')
        object.__setattr__(self, 'coefficients', tuple(values[:size] + [0.0] * (size - len(values[:size]))))

    @property
    def is_zero(self) -> bool:
        """True when every coefficient is zero (a pinhole camera)."""
        return not any(self.coefficients)

    @property
    def fisheye(self) -> bool:
        """True for the equidistant (fisheye) model."""
        return self.model == 'equidistant'

    def array(self) -> np.ndarray:
        """Return the coefficients as OpenCV wants them."""
        return np.array(self.coefficients, dtype=np.float64)


def from_camera_info(model: str, D: Sequence[float], K: np.ndarray,
                     P: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[Distortion]]:
    """Return (K to use, distortion or None) from a CameraInfo's ``distortion_model``, ``d``, ``k`` and ``p``.

    All-zero (or empty) D is a pinhole or a rectified stream: then P's left 3 x 3 is the camera (a rectified
    stream's K may still describe the raw sensor), when P is given and non-zero.
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    values = [float(v) for v in D]
    if not any(values):
        if P is not None:
            P = np.asarray(P, dtype=np.float64).reshape(3, 4)
            if P[0, 0] > 0 and P[1, 1] > 0:
                return P[:, :3].copy(), None
        return K, None
    if not model:
        raise ValueError(f'camera_info has distortion coefficients {values} but no distortion_model')
    return K, Distortion(model, tuple(values))


def from_dataset(meta: Dict, entry: Optional[Dict] = None) -> Optional[Distortion]:
    """Return the distortion of a nerfstudio dataset frame (per-frame keys override the global ones), or None."""
    def get(key: str) -> float:
        if entry is not None and key in entry:
            return float(entry[key])
        return float(meta.get(key, 0.0))
    camera_model = (entry or {}).get('camera_model', meta.get('camera_model', 'OPENCV'))
    if camera_model not in DATASET_MODELS:
        raise ValueError(f'unsupported camera_model {camera_model!r}; supported: {sorted(DATASET_MODELS)}')
    model = DATASET_MODELS[camera_model]
    if model is None:
        return None
    if model == 'equidistant':
        values = (get('k1'), get('k2'), get('k3'), get('k4'))
    else:  # OpenCV order k1 k2 p1 p2 k3 k4 (k5 k6 are not in nerfstudio's files)
        values = (get('k1'), get('k2'), get('p1'), get('p2'), get('k3'), get('k4'), 0.0, 0.0)
    distortion = Distortion(model, values)
    return None if distortion.is_zero else distortion


def _to_opencv(K: np.ndarray) -> np.ndarray:
    """Our K puts pixel centres at (u + 0.5, v + 0.5) (nerfstudio's rays); OpenCV puts them at (u, v)."""
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 2] -= 0.5
    out[1, 2] -= 0.5
    return out


def _from_opencv(K: np.ndarray) -> np.ndarray:
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 2] += 0.5
    out[1, 2] += 0.5
    return out


class Undistorter:
    """Remap images of one camera (K, distortion, size) to a pinhole camera `K_new` of the same size.

    The maps are computed once; `image` interpolates (colour), `nearest` keeps values (depth, labels, masks).
    """

    def __init__(self, K: np.ndarray, distortion: Distortion, width: int, height: int):
        self.K = np.asarray(K, dtype=np.float64)
        self.distortion = distortion
        self.size = (int(width), int(height))
        D, K_cv = distortion.array(), _to_opencv(self.K)
        if distortion.fisheye:
            K_new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K_cv, D, self.size, np.eye(3), balance=0.0)
            self.maps = cv2.fisheye.initUndistortRectifyMap(K_cv, D, np.eye(3), K_new, self.size, cv2.CV_32FC1)
        else:
            K_new, _ = cv2.getOptimalNewCameraMatrix(K_cv, D, self.size, 0.0, self.size)
            self.maps = cv2.initUndistortRectifyMap(K_cv, D, np.eye(3), K_new, self.size, cv2.CV_32FC1)
        self.K_new = _from_opencv(K_new)

    def matches(self, K: np.ndarray, distortion: Distortion, width: int, height: int) -> bool:
        """Tell whether this undistorter was made for that camera (reuse its maps)."""
        return (self.size == (int(width), int(height)) and self.distortion == distortion
                and np.allclose(self.K, K))

    def _check(self, array: np.ndarray) -> None:
        if array.shape[1::-1] != self.size:
            raise ValueError(f'image is {array.shape[1]} x {array.shape[0]}, the camera {self.size[0]} x '
                             f'{self.size[1]}')

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """Remap a colour image to the pinhole camera (bilinear)."""
        self._check(rgb)
        return cv2.remap(rgb, *self.maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def nearest(self, values: np.ndarray) -> np.ndarray:
        """Remap a depth, label or mask image (nearest value: no blending across edges); 0 outside."""
        self._check(values)
        return cv2.remap(values, *self.maps, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


def distort_image(pinhole: np.ndarray, K_pinhole: np.ndarray, K: np.ndarray, distortion: Distortion,
                  width: int, height: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Render what a distorted camera (K, distortion, width x height) sees, from a pinhole image of the same view.

    For synthetic scans and tests: each distorted pixel is traced back to its ray (OpenCV's undistortPoints)
    and sampled from `pinhole` (intrinsics `K_pinhole`, which should see wider than the distorted camera).
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pixels = np.stack([u, v], axis=-1).reshape(-1, 1, 2)
    K_cv, K_pin = _to_opencv(K), _to_opencv(K_pinhole)
    if distortion.fisheye:
        rays = cv2.fisheye.undistortPoints(pixels, K_cv, distortion.array())
    else:
        rays = cv2.undistortPoints(pixels, K_cv, distortion.array())
    rays = rays.reshape(height, width, 2)
    map_x = (K_pin[0, 0] * rays[..., 0] + K_pin[0, 2]).astype(np.float32)
    map_y = (K_pin[1, 1] * rays[..., 1] + K_pin[1, 2]).astype(np.float32)
    return cv2.remap(pinhole, map_x, map_y, interpolation=interpolation, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)
