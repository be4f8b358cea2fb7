"""Posed keyframes in memory (a bounded store that grows while training reads it) and on disk.

On disk a scan is a nerfstudio dataset (``transforms.json`` + images, optional depth and label maps).

The dataset is written one frame at a time with an atomic replace of ``transforms.json``, so a crash
never loses a frame that was already kept, and a restarted process can resume from the folder.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .distortion import Undistorter, from_dataset
from ..geometry import backproject, check_rigid, opengl_to_optical, optical_to_opengl

log = logging.getLogger(__name__)

DEPTH_UNIT = 0.001  # depth PNGs hold millimetres, as nerfstudio's default depth_unit_scale_factor


@dataclass
class PosedFrame:
    """One RGB image with intrinsics and the pose of its optical frame in ``base_frame``."""

    image: np.ndarray            # H x W x 3 uint8, RGB
    K: np.ndarray                # 3 x 3 pinhole intrinsics, pixels
    T_base_optical: np.ndarray   # 4 x 4, optical axes (x right, y down, z forward)
    stamp: float = 0.0           # seconds
    depth: Optional[np.ndarray] = None   # H x W float32 metres, 0 = invalid
    labels: Optional[np.ndarray] = None  # H x W uint16 object ids, 0 = background
    name: str = ''
    mask: Optional[np.ndarray] = None    # H x W bool, False = not the scene (a gripper in view): never trained on
    feature_path: str = ''               # custom teacher's [h, w, C] .npy (transforms.json feature_file_path)

    def __post_init__(self):
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'image must be HxWx3 uint8, got {image.shape} {image.dtype}')
        self.K = np.asarray(self.K, dtype=np.float64)
        if self.K.shape != (3, 3) or not np.all(np.isfinite(self.K)) or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise ValueError(f'K must be a finite 3x3 with positive focal lengths, got {self.K.tolist()}')
        self.T_base_optical = np.asarray(self.T_base_optical, dtype=np.float64)
        check_rigid(self.T_base_optical)
        if self.mask is not None:
            self.mask = np.asarray(self.mask).astype(bool)
        for name in ('depth', 'labels', 'mask'):
            extra = getattr(self, name)
            if extra is not None and extra.shape[:2] != image.shape[:2]:
                raise ValueError(f'{name} shape {extra.shape[:2]} differs from image {image.shape[:2]}')

    @property
    def height(self) -> int:
        """Image rows."""
        return self.image.shape[0]

    @property
    def width(self) -> int:
        """Image columns."""
        return self.image.shape[1]


class FrameStore:
    """Fixed-capacity keyframe list, safe to change while a trainer reads.

    All frames share one resolution (one camera). `version` increases with every change and `revisions[i]`
    with every replacement of slot i, so a reader can tell new frames from replaced ones.
    """

    def __init__(self, capacity: int, ram_budget_bytes: Optional[int] = None):
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self.capacity = capacity
        self.ram_budget_bytes = ram_budget_bytes
        self.lock = threading.Lock()
        self.frames: List[PosedFrame] = []
        self.revisions: List[int] = []
        self._resolution: Optional[tuple] = None
        self.version = 0

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def full(self) -> bool:
        """Whether no further frame fits (capacity or RAM budget)."""
        if len(self.frames) >= self.capacity:
            return True
        if self.ram_budget_bytes is not None and self.frames:
            per_frame = self.frames[0].image.nbytes
            return (len(self.frames) + 1) * per_frame > self.ram_budget_bytes
        return False

    @property
    def resolution(self) -> Optional[tuple]:
        """(height, width) shared by all frames, or None while empty."""
        return self._resolution

    def _check_size(self, frame: PosedFrame) -> None:
        if self._resolution is None:
            self._resolution = frame.image.shape[:2]
        elif frame.image.shape[:2] != self._resolution:
            raise ValueError(f'frame is {frame.image.shape[:2]} but the store holds {self._resolution}')

    def add(self, frame: PosedFrame) -> int:
        """Append a frame and return its index; raises when full or when the resolution differs."""
        with self.lock:
            if self.full:
                raise OverflowError(f'frame store is full ({len(self.frames)} of {self.capacity} frames)')
            self._check_size(frame)
            self.frames.append(frame)
            self.revisions.append(0)
            self.version += 1
            return len(self.frames) - 1

    def replace(self, index: int, frame: PosedFrame) -> None:
        """Put `frame` in slot `index` instead of the frame there (a full store keeping coverage)."""
        with self.lock:
            if not 0 <= index < len(self.frames):
                raise IndexError(f'no frame {index} to replace ({len(self.frames)} frames)')
            self._check_size(frame)
            self.frames[index] = frame
            self.revisions[index] += 1
            self.version += 1

    def clear(self) -> None:
        """Forget every frame (the resolution is kept: the same camera)."""
        with self.lock:
            self.frames.clear()
            self.revisions.clear()
            self.version += 1

    def state(self) -> Tuple[List[PosedFrame], List[int]]:
        """Return a consistent (frames, revisions) pair."""
        with self.lock:
            return list(self.frames), list(self.revisions)

    def snapshot(self) -> List[PosedFrame]:
        """Return a consistent list of the frames kept so far."""
        with self.lock:
            return list(self.frames)

    def intrinsics(self) -> np.ndarray:
        """[N, 4] fx, fy, cx, cy of the kept frames."""
        frames = self.snapshot()
        return np.array([[f.K[0, 0], f.K[1, 1], f.K[0, 2], f.K[1, 2]] for f in frames]).reshape(-1, 4)

    def poses(self) -> np.ndarray:
        """[N, 4, 4] T_base_optical of the kept frames."""
        return np.array([f.T_base_optical for f in self.snapshot()]).reshape(-1, 4, 4)


def _space_note(folder: Path) -> str:
    """Say how much room is left where a write failed: ': disk full (0.0 MB free)' or ' (12.3 MB free there)'."""
    try:
        free = shutil.disk_usage(folder).free / 1e6
    except OSError:
        return ''
    return f': disk full ({free:.1f} MB free)' if free < 1.0 else f' ({free:.1f} MB free there)'


def _atomic_write(path: Path, data: bytes, tmp: Path) -> None:
    """Write `data` to `tmp`, flush it to the disk, rename it to `path`; nothing half-written stays behind."""
    try:
        with open(tmp, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, f'could not write {path}: {error.strerror or error}'
                      f'{_space_note(path.parent)}') from error


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode(), path.with_name(path.name + '.tmp'))


def _atomic_imwrite(path: Path, image: np.ndarray) -> None:
    # Encoded in memory and written by Python: a failed write says why (ENOSPC ...), where cv2.imwrite only
    # returns False (and libpng prints to stderr).
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(errno.EINVAL, f'could not encode {path.name} ({image.shape}, {image.dtype})')
    _atomic_write(path, encoded.tobytes(), path.with_name('.tmp-' + path.name))


CAMERA_KEYS = ('fl_x', 'fl_y', 'cx', 'cy', 'w', 'h')


class DatasetWriter:
    """Appends frames to a nerfstudio dataset folder; `transforms.json` is replaced atomically."""

    def __init__(self, root: Path, base_frame: str = 'base_link', metadata: Optional[Dict] = None):
        self.root = Path(root)
        (self.root / 'images').mkdir(parents=True, exist_ok=True)
        self.meta_path = self.root / 'transforms.json'
        if self.meta_path.exists():
            self.meta = json.loads(self.meta_path.read_text())
        else:
            self.meta = {'camera_model': 'OPENCV', 'base_frame': base_frame, 'frames': []}
        if metadata:
            self.meta.update(metadata)
            self.flush()

    def __len__(self) -> int:
        return len(self.meta['frames'])

    def append(self, frame: PosedFrame) -> None:
        """Write the frame's files first, then publish it in transforms.json (crash-safe order)."""
        index = len(self.meta['frames'])
        name = frame.name or f'frame_{index:05d}'
        entry = {
            'file_path': f'images/{name}.png',
            'fl_x': frame.K[0, 0], 'fl_y': frame.K[1, 1], 'cx': frame.K[0, 2], 'cy': frame.K[1, 2],
            'w': frame.width, 'h': frame.height,
            'transform_matrix': optical_to_opengl(frame.T_base_optical).tolist(),
            'stamp': frame.stamp,
        }
        _atomic_imwrite(self.root / entry['file_path'], cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if frame.depth is not None:
            (self.root / 'depth').mkdir(exist_ok=True)
            entry['depth_file_path'] = f'depth/{name}.png'
            depth_mm = np.clip(np.round(np.nan_to_num(frame.depth) / DEPTH_UNIT), 0, 65535).astype(np.uint16)
            _atomic_imwrite(self.root / entry['depth_file_path'], depth_mm)
        if frame.labels is not None:
            (self.root / 'labels').mkdir(exist_ok=True)
            entry['label_file_path'] = f'labels/{name}.png'
            _atomic_imwrite(self.root / entry['label_file_path'], frame.labels.astype(np.uint16))
        if frame.mask is not None:  # nerfstudio's convention: 0 = ignore the pixel, 255 = use it
            (self.root / 'masks').mkdir(exist_ok=True)
            entry['mask_path'] = f'masks/{name}.png'
            _atomic_imwrite(self.root / entry['mask_path'], frame.mask.astype(np.uint8) * 255)
        self.meta['frames'].append(entry)
        try:
            self.flush()
        except OSError:  # not published: forget it, so the next append (space back) writes a clean entry
            self.meta['frames'].pop()
            raise

    def clear(self) -> None:
        """Drop every frame from transforms.json (files are left for inspection)."""
        self.meta['frames'] = []
        self.flush()

    def flush(self) -> None:
        # One camera for every frame (the usual scan) is also written at the top level, where tools that do not
        # read nerfstudio's per-frame intrinsics look (instant-ngp style readers, the nerfstudio baseline bench).
        cameras = {tuple(frame.get(key) for key in CAMERA_KEYS) for frame in self.meta['frames']}
        for key in CAMERA_KEYS:
            self.meta.pop(key, None)
        if len(cameras) == 1:
            self.meta.update(zip(CAMERA_KEYS, cameras.pop()))
        _atomic_write_text(self.meta_path, json.dumps(self.meta, indent=1))


def write_dataset(root: Path, frames: Sequence[PosedFrame], metadata: Optional[Dict] = None) -> Path:
    """Write all `frames` as a fresh nerfstudio dataset in `root`."""
    root = Path(root)
    if (root / 'transforms.json').exists():
        (root / 'transforms.json').unlink()
    writer = DatasetWriter(root, metadata=metadata)
    for frame in frames:
        writer.append(frame)
    return root


def read_metadata(root: Path) -> Dict:
    """Parse a dataset folder's transforms.json, with a clear error if it is missing."""
    path = Path(root) / 'transforms.json'
    if not path.exists():
        raise FileNotFoundError(f'{root} is not a nerfstudio dataset: {path} does not exist')
    return json.loads(path.read_text())


def read_dataset(root: Path, downscale: int = 1, limit: Optional[int] = None) -> List[PosedFrame]:
    """Read a nerfstudio dataset (ours or any other tool's) into PosedFrames (`iter_dataset`, as a list)."""
    return list(iter_dataset(root, downscale, limit))


def iter_dataset(root: Path, downscale: int = 1, limit: Optional[int] = None) -> Iterator[PosedFrame]:
    """Yield the frames of a nerfstudio dataset (ours or any other tool's) one at a time, as PosedFrames.

    Intrinsics may be per frame or global; lens distortion (``camera_model`` OPENCV / OPENCV_FISHEYE with
    k1.. p2) is removed on reading (`distortion.Undistorter`: the frames get the pinhole K of the undistorted
    images); depth is read from ``depth_file_path`` (``depth_unit_scale_factor``, default 1 mm), object ids
    from ``label_file_path`` and masks from ``mask_path`` (nerfstudio's: 0 = ignore the pixel). `downscale`
    shrinks images, depth, labels and masks by an integer factor.
    """
    root = Path(root)
    meta = read_metadata(root)
    undistorter: Optional[Undistorter] = None
    depth_unit = float(meta.get('depth_unit_scale_factor', DEPTH_UNIT))
    entries = meta['frames'][:limit] if limit else meta['frames']
    for index, entry in enumerate(entries):
        def get(key, entry=entry):
            if key in entry:
                return float(entry[key])
            if key in meta:
                return float(meta[key])
            raise KeyError(f'{root}: frame {index} has no {key!r} (neither per frame nor global)')
        bgr = cv2.imread(str(root / entry['file_path']), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f'cannot read image {root / entry["file_path"]}')
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        # Intrinsics refer to the size in the metadata; rescale if the image on disk differs.
        sx = w / float(entry.get('w', meta.get('w', w)))
        sy = h / float(entry.get('h', meta.get('h', h)))
        K = np.array([[get('fl_x') * sx, 0, get('cx') * sx], [0, get('fl_y') * sy, get('cy') * sy], [0, 0, 1]])
        depth = labels = None
        if 'depth_file_path' in entry:
            raw = cv2.imread(str(root / entry['depth_file_path']), cv2.IMREAD_UNCHANGED)
            if raw is not None:
                depth = raw.astype(np.float32) * depth_unit
                depth[(raw == 0) | (raw == 65535)] = 0.0
                if depth.shape != (h, w):
                    depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        if 'label_file_path' in entry:
            labels = cv2.imread(str(root / entry['label_file_path']), cv2.IMREAD_UNCHANGED)
            if labels is None:
                raise FileNotFoundError(f'cannot read label map {root / entry["label_file_path"]}')
            labels = labels.astype(np.uint16)
        mask = None
        if 'mask_path' in entry:
            raw = cv2.imread(str(root / entry['mask_path']), cv2.IMREAD_GRAYSCALE)
            if raw is None:
                raise FileNotFoundError(f'cannot read mask {root / entry["mask_path"]}')
            if raw.shape != (h, w):
                raise ValueError(f'mask {root / entry["mask_path"]} is {raw.shape[1]} x {raw.shape[0]}, its image '
                                 f'{w} x {h}')
            mask = raw > 0
        feature_path = str(root / entry['feature_file_path']) if entry.get('feature_file_path') else ''
        distortion = from_dataset(meta, entry)
        if distortion is not None:
            if undistorter is None or not undistorter.matches(K, distortion, w, h):
                undistorter = Undistorter(K, distortion, w, h)
                log.info('%s: removing %s lens distortion %s', root, distortion.model, distortion.coefficients)
            image, K = undistorter.image(image), undistorter.K_new.copy()
            depth = None if depth is None else undistorter.nearest(depth)
            labels = None if labels is None else undistorter.nearest(labels)
            # pixels the lens never saw come out 0: not part of the scan either
            valid = undistorter.nearest(np.full((h, w), 255, np.uint8)) > 0
            mask = valid if mask is None else (undistorter.nearest(mask.astype(np.uint8)) > 0) & valid
        if downscale > 1:
            size = (w // downscale, h // downscale)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            K[:2] /= downscale
            if depth is not None:
                depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            if labels is not None:
                labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            if mask is not None:
                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        T = opengl_to_optical(np.array(entry['transform_matrix'], dtype=np.float64))
        yield PosedFrame(image=image, K=K, T_base_optical=T, stamp=float(entry.get('stamp', index)), depth=depth,
                         labels=labels, name=Path(entry['file_path']).stem, mask=mask, feature_path=feature_path)


def dataset_workspace(meta: Dict, frames: Sequence[PosedFrame], margin: float = 0.05):
    """Return workspace (min, max) for a dataset, and say where it came from in the log.

    Its ``workspace`` entry; else the 2-98 % range of its depth points plus `margin`; else (COLMAP or phone
    captures: no depth) `cameras_workspace`, the box around the point the cameras look at.
    """
    if 'workspace' in meta:
        return np.asarray(meta['workspace']['min'], float), np.asarray(meta['workspace']['max'], float)
    with_depth = [f for f in frames if f.depth is not None]
    if not with_depth:
        lo, hi = cameras_workspace(frames, margin)
        log.info('workspace from the cameras (no "workspace" entry, no depth): %s .. %s m (override with '
                 '--workspace XMIN YMIN ZMIN XMAX YMAX ZMAX)', np.round(lo, 3).tolist(), np.round(hi, 3).tolist())
        return lo, hi
    stride = max(1, with_depth[0].width // 80)
    points = np.concatenate([backproject(f.depth, f.K, f.T_base_optical, stride) for f in with_depth])
    lo, hi = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
    return lo - margin, hi + margin


def cameras_workspace(frames: Sequence[PosedFrame], margin: float = 0.05):
    """Return (min, max) of a cube around the point where the cameras' optical axes converge.

    The point is the least-squares closest point to every optical axis (what an object-centred capture looks
    at); the cube's half size is the median camera distance to it times the tangent of half the narrower field
    of view (what one camera sees around that point), plus `margin`. Raises when the axes do not converge
    (all parallel, or the point behind the cameras).
    """
    if len(frames) < 2:
        raise ValueError('the workspace needs depth maps, a "workspace" entry, or at least two camera views '
                         '(or give --workspace XMIN YMIN ZMIN XMAX YMAX ZMAX)')
    origins = np.array([f.T_base_optical[:3, 3] for f in frames])
    axes = np.array([f.T_base_optical[:3, 2] for f in frames])
    projectors = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]     # onto each axis's normal plane
    A, b = projectors.sum(axis=0), np.einsum('nij,nj->i', projectors, origins)
    if np.linalg.cond(A) > 1e6:
        raise ValueError('the cameras look in parallel directions: their axes do not converge on a workspace '
                         '(give --workspace XMIN YMIN ZMIN XMAX YMAX ZMAX)')
    centre = np.linalg.solve(A, b)
    ahead = np.einsum('ni,ni->n', centre - origins, axes)
    if np.median(ahead) <= 0:
        raise ValueError('the cameras\' axes converge behind them: give --workspace XMIN YMIN ZMIN XMAX YMAX ZMAX')
    half_fov = np.array([np.arctan(min(f.width / (2 * f.K[0, 0]), f.height / (2 * f.K[1, 1]))) for f in frames])
    half = float(np.median(np.linalg.norm(centre - origins, axis=1) * np.tan(half_fov))) + margin
    return centre - half, centre + half
