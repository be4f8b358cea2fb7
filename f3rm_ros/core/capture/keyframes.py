"""Which camera frames become training keyframes, and which pose belongs to a frame (no ROS here).

* `KeyframeGate`: keep a frame when the camera moved enough since the last kept keyframe (translation OR
  rotation), enough time has passed, and the image is not blurred.
* `PoseBuffer`: poses by stamp; a frame gets the pose interpolated at its own stamp between the samples
  around it, never extrapolated and never "the latest pose" (an arm at 0.5 m/s travels 25 mm in 50 ms).

Times are float seconds; poses are 4 x 4 ``T_base_optical`` matrices.
"""
from __future__ import annotations

import bisect
import math
import threading
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from ..geometry import check_rigid


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low means blurred (scale depends on scene and size).

    Measured on 640 x 480 tabletop frames: 30-400 when sharp, ~2-3 after a Gaussian blur of sigma 3 px.
    """
    image = np.asarray(rgb)
    if image.ndim == 3 and image.shape[2] == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        grey = image.reshape(image.shape[:2])
    else:
        raise ValueError(f'sharpness needs an H x W x 3 or H x W image, got {image.shape}')
    if grey.dtype != np.uint8:
        grey = grey.astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the rotation taking `R_a` to `R_b`, in degrees (0 to 180)."""
    cos = (np.trace(np.asarray(R_a).T @ np.asarray(R_b)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, float(cos)))))


class KeyframeGate:
    """Decide whether a posed frame is worth keeping for training.

    A frame is kept if it is the first one, or if, relative to the last *accepted* keyframe, the camera
    moved at least `min_translation` metres OR turned at least `min_rotation_deg` degrees, at least
    `min_interval_s` seconds have passed, and `sharpness(rgb) >= min_sharpness` (0 disables the blur test).

    `evaluate` only decides; `accept` records a frame as kept, so a caller may still drop an approved
    frame for its own reasons (store full, no pose) without moving the reference.
    """

    def __init__(self, min_translation: float = 0.05, min_rotation_deg: float = 10.0,
                 min_interval_s: float = 0.5, min_sharpness: float = 20.0):
        for name, value in (('min_translation', min_translation), ('min_rotation_deg', min_rotation_deg),
                            ('min_interval_s', min_interval_s), ('min_sharpness', min_sharpness)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be a finite value >= 0, got {value}')
        self.min_translation = float(min_translation)
        self.min_rotation_deg = float(min_rotation_deg)
        self.min_interval_s = float(min_interval_s)
        self.min_sharpness = float(min_sharpness)
        self.last_pose: Optional[np.ndarray] = None
        self.last_stamp: Optional[float] = None
        self.count = 0

    def reset(self) -> None:
        """Forget the last keyframe: the next valid frame is kept as a first one."""
        self.last_pose = None
        self.last_stamp = None
        self.count = 0

    def evaluate(self, T_base_optical: np.ndarray, stamp: float,
                 rgb: Optional[np.ndarray] = None) -> Tuple[bool, str]:
        """Return (keep, reason) for a frame; see the class docstring for the rules.

        Never raises on bad input: an invalid pose gives (False, 'invalid pose: ...'). `rgb` None skips the
        blur test. Checks run cheapest first (interval, motion, blur).
        """
        T = np.asarray(T_base_optical, dtype=np.float64)
        try:
            check_rigid(T)
        except ValueError as error:
            return False, f'invalid pose: {error}'
        stamp = float(stamp)
        if not math.isfinite(stamp):
            return False, f'invalid stamp {stamp}'
        first = self.last_pose is None
        if not first:
            dt = stamp - self.last_stamp
            if dt < 0:
                return False, (f'stamp {stamp:.3f} s is {-dt:.3f} s before the last keyframe '
                               f'({self.last_stamp:.3f} s): clock jumped back? reset() the gate')
            if dt < self.min_interval_s:
                return False, f'too soon ({dt:.3f} s < {self.min_interval_s:.3f} s since the last keyframe)'
            moved = float(np.linalg.norm(T[:3, 3] - self.last_pose[:3, 3]))
            turned = rotation_angle_deg(self.last_pose[:3, :3], T[:3, :3])
            if moved < self.min_translation and turned < self.min_rotation_deg:
                return False, f'moved too little ({moved:.3f} m, {turned:.1f} deg)'
        if rgb is not None and self.min_sharpness > 0:
            value = sharpness(rgb)
            if value < self.min_sharpness:
                return False, f'blurred (sharpness {value:.1f} < {self.min_sharpness:.1f})'
        if first:
            return True, 'first keyframe'
        return True, f'moved {moved:.3f} m, {turned:.1f} deg'

    def accept(self, T_base_optical: np.ndarray, stamp: float) -> None:
        """Record a frame as kept: later frames are measured against it."""
        T = np.array(T_base_optical, dtype=np.float64)
        check_rigid(T)
        self.last_pose = T
        self.last_stamp = float(stamp)
        self.count += 1


def view_distance(T_a: np.ndarray, T_b: np.ndarray, metres: float = 0.05, degrees: float = 10.0) -> float:
    """How different two camera views are: translation in units of `metres` plus rotation in units of `degrees`."""
    return float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]) / metres
                 + rotation_angle_deg(T_a[:3, :3], T_b[:3, :3]) / degrees)


def replacement_slot(kept: Sequence[np.ndarray], candidate: np.ndarray, metres: float = 0.05,
                     degrees: float = 10.0) -> Optional[int]:
    """Choose the kept view a new one should replace in a full store so that coverage grows, or None.

    The most redundant kept view is the one closest to its nearest neighbour (`view_distance`; exact ties: the
    older, lower slot). The candidate replaces it when the candidate is farther from every other kept view than
    that: the scan's spread grows, and a camera lingering on one spot stops crowding out new ground.
    """
    poses = [np.asarray(T, dtype=np.float64) for T in kept]
    if len(poses) < 2:
        return None
    distances = np.full((len(poses), len(poses)), np.inf)
    for i in range(len(poses)):
        for j in range(i + 1, len(poses)):
            distances[i, j] = distances[j, i] = view_distance(poses[i], poses[j], metres, degrees)
    nearest = distances.min(axis=1)
    victim = int(np.argmin(nearest))                          # argmin takes the first of exact ties
    others = [view_distance(candidate, T, metres, degrees) for i, T in enumerate(poses) if i != victim]
    return victim if min(others) > nearest[victim] else None


class PoseBuffer:
    """Time-sorted poses; `lookup` interpolates the pose at an image's stamp.

    Between two samples at most `max_gap_s` apart the pose is interpolated (rotation by spherical linear
    interpolation, translation linearly: 30 Hz poses of an arm at 0.3 m/s come out within a fraction of a
    millimetre). Outside the samples it never extrapolates: a stamp at most `tolerance_s` beyond the first or
    last sample gets that sample (a clock jitter), anything further is refused with the reason (the capture
    waits for the next pose). With `hand_eye` (T_ee_optical, a hand-eye calibration) the samples are
    end-effector poses T_base_ee and `lookup` returns ``T_base_ee @ T_ee_optical``.

    Thread-safe (a pose subscriber and an image callback may run on different executor threads).
    Holds at most `maxlen` poses; the oldest stamps are dropped first.
    """

    def __init__(self, tolerance_s: float = 0.02, maxlen: int = 500, max_gap_s: float = 0.25,
                 hand_eye: Optional[np.ndarray] = None):
        for name, value in (('tolerance_s', tolerance_s), ('max_gap_s', max_gap_s)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be a finite value >= 0, got {value}')
        if maxlen < 1:
            raise ValueError(f'maxlen must be >= 1, got {maxlen}')
        self.tolerance_s = float(tolerance_s)
        self.max_gap_s = float(max_gap_s)
        self.maxlen = int(maxlen)
        self.hand_eye = None
        if hand_eye is not None:
            self.hand_eye = np.array(hand_eye, dtype=np.float64)
            check_rigid(self.hand_eye)
        self._stamps: List[float] = []
        self._poses: List[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self) -> None:
        """Drop every pose."""
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    @property
    def stamps(self) -> List[float]:
        """The stored stamps, ascending (a copy)."""
        with self._lock:
            return list(self._stamps)

    def add(self, stamp: float, T: np.ndarray) -> None:
        """Store a pose; out-of-order stamps are inserted in place; an identical stamp replaces its pose.

        Raises ValueError for a non-finite stamp or a NaN / non-rigid pose.
        """
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f'pose stamp must be finite, got {stamp}')
        T = np.array(T, dtype=np.float64)
        check_rigid(T)
        with self._lock:
            index = bisect.bisect_left(self._stamps, stamp)
            if index < len(self._stamps) and self._stamps[index] == stamp:
                self._poses[index] = T
                return
            self._stamps.insert(index, stamp)
            self._poses.insert(index, T)
            if len(self._stamps) > self.maxlen:
                del self._stamps[0]
                del self._poses[0]

    def lookup(self, stamp: float) -> Tuple[Optional[np.ndarray], str]:
        """Return (pose at `stamp`, how it was found) or (None, why not)."""
        T, how = self._sample(float(stamp))
        if T is not None and self.hand_eye is not None:
            T = T @ self.hand_eye
        return T, how

    def _sample(self, stamp: float) -> Tuple[Optional[np.ndarray], str]:
        with self._lock:
            if not self._stamps:
                return None, 'no poses yet'
            index = bisect.bisect_left(self._stamps, stamp)
            if index < len(self._stamps) and self._stamps[index] == stamp:
                return self._poses[index].copy(), 'exact pose'
            if index == 0 or index == len(self._stamps):
                edge = 0 if index == 0 else len(self._stamps) - 1
                gap = abs(self._stamps[edge] - stamp)
                if gap <= self.tolerance_s:
                    return self._poses[edge].copy(), f'nearest pose {gap:.3f} s away'
                where = 'before the oldest' if index == 0 else 'after the newest'
                return None, (f'the frame is {gap:.3f} s {where} pose: not extrapolating beyond '
                              f'{self.tolerance_s:.3f} s (pose_tolerance_s)')
            t0, t1 = self._stamps[index - 1], self._stamps[index]
            T0, T1 = self._poses[index - 1], self._poses[index]
        if t1 - t0 > self.max_gap_s + 1e-9:
            return None, (f'the poses around the frame are {t1 - t0:.3f} s apart (more than {self.max_gap_s:.3f} s '
                          'to interpolate across)')
        return interpolate_pose(T0, T1, (stamp - t0) / (t1 - t0)), f'interpolated between poses {t1 - t0:.3f} s apart'


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, fraction: float) -> np.ndarray:
    """Pose `fraction` (0..1) of the way from T0 to T1: slerp of the rotation, linear in translation."""
    rotations = Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]]))
    T = np.eye(4)
    T[:3, :3] = Slerp([0.0, 1.0], rotations)([fraction]).as_matrix()[0]
    T[:3, 3] = (1 - fraction) * T0[:3, 3] + fraction * T1[:3, 3]
    return T
