"""What the capture node decides, without ROS: which camera frames become keyframes of a scan.

A `CaptureSession` receives images (lazily: a loader it calls only when it needs the pixels), intrinsics,
poses by stamp (or a pose-lookup function, e.g. tf2) and optional aligned depth / label images with the
same stamp as their colour image. For each image it decides, cheapest test first:

1. stamp sanity (non-zero, finite, within `max_stamp_skew_s` of the node's clock, newer than the previous
   good image: duplicates and out-of-order are refused, but a run of `STAMP_RECOVERY_FRAMES` consistent
   frames older than one outlier is followed), scan running, camera_info known and of the same size, the
   scan's resolution (a camera that changes resolution mid-scan is refused: call ``new_scan``), capacity
   and RAM budget left;
2. the minimum interval since the last keyframe (no pose needed: most frames of a 30 Hz stream stop here);
3. the pose at the image stamp (nearest within a tolerance, never "the latest"), waiting up to `pose_wait_s`
   for a pose or an aligned depth / label image that is late;
4. camera motion since the last keyframe (`KeyframeGate`), then blur (variance of the Laplacian) on the
   converted image.

Images larger than `max_image_side` are stored downscaled (area filter; depth and labels nearest; K
scaled): a 12 MP camera gains nothing in the field (CLIP sees 224-336 px, nerfacto samples rays) and
would cost 36 MB PNGs and the trainer's RAM.

A kept frame is appended to a nerfstudio dataset on disk (``transforms.json`` replaced atomically, images
first) before it is reported, so a crash never loses a keyframe that any reader saw; a failed write (disk
full) leaves no partial entry, is reported (`health` ERROR) and the next keyframe tries again. A session
started on a folder that already holds a scan continues it (`resume`); every scan has an id (`scan_id`,
stored in ``transforms.json``) that a trainer compares with its own.
"""
from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from .frames import DatasetWriter, PosedFrame
from .geometry import opengl_to_optical, resized_intrinsics
from .keyframes import KeyframeGate, PoseBuffer, sharpness

PoseLookup = Callable[[float], Tuple[Optional[np.ndarray], str]]
Loader = Callable[[], np.ndarray]
AUX_KINDS = ('depth', 'labels')
# Frames stamped before an outlier in a row, each newer than the last, after which the outlier is forgotten.
STAMP_RECOVERY_FRAMES = 5


def new_scan_id() -> str:
    """Return a fresh scan id: date, time of day and a random suffix (``20261130-142501-3fa2c1``)."""
    return time.strftime('%Y%m%d-%H%M%S') + '-' + uuid.uuid4().hex[:6]


def stored_size(width: int, height: int, max_side: int) -> Tuple[int, int]:
    """Return the (width, height) an image is stored at: the longer side at most `max_side` (0 = any)."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return int(width), int(height)
    scale = max_side / longest
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


@dataclass
class CaptureSettings:
    """Tunables of a scan (the capture node's parameters)."""

    base_frame: str = 'base_link'
    min_translation: float = 0.05      # metres since the last keyframe (or ...)
    min_rotation_deg: float = 10.0     # ... degrees
    min_interval_s: float = 0.5
    min_sharpness: float = 20.0        # variance of the Laplacian; 0 disables the blur test
    capacity: int = 256
    ram_budget_mb: float = 4096.0      # keyframes' pixels (RGB + depth + labels) a trainer must hold; 0 = none
    pose_tolerance_s: float = 0.02
    pose_wait_s: float = 0.5           # how long an image waits for its pose / aligned images
    dataset_dir: str = ''              # '' = keep nothing on disk
    resume: bool = False               # continue a scan found in dataset_dir (else start a new scan there)
    max_stamp_skew_s: float = 120.0    # refuse stamps further than this from the clock (0 = no check)
    max_image_side: int = 1280         # store larger images downscaled to this longer side (0 = as they come)
    max_pending: int = 30
    workspace: Optional[Dict] = None   # {'min': [3], 'max': [3]} written into transforms.json

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        for name in ('min_translation', 'min_rotation_deg', 'min_interval_s', 'min_sharpness',
                     'ram_budget_mb', 'pose_tolerance_s', 'pose_wait_s', 'max_stamp_skew_s'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
        if int(self.capacity) < 1:
            raise ValueError(f'capacity must be >= 1, got {self.capacity}')
        if int(self.max_pending) < 1:
            raise ValueError(f'max_pending must be >= 1, got {self.max_pending}')
        if int(self.max_image_side) < 0 or 0 < int(self.max_image_side) < 32:
            raise ValueError(f'max_image_side must be 0 (off) or >= 32 px, got {self.max_image_side}')


@dataclass
class Outcome:
    """What happened to one image: kept (`frame` set) or not (`kind` names why, `reason` says it)."""

    stamp: float
    kind: str            # 'keyframe' or a rejection kind: 'stamp', 'idle', 'camera_info', 'size', 'full', ...
    reason: str = ''
    frame: Optional[PosedFrame] = None
    index: int = -1

    @property
    def kept(self) -> bool:
        """True for a new keyframe."""
        return self.frame is not None


# Rejections that are a normal part of scanning (logged at debug level), not a problem with the input.
ROUTINE = frozenset({'keyframe', 'idle', 'too_soon', 'moved_too_little'})


@dataclass
class _Pending:
    stamp: float
    width: int
    height: int
    load_rgb: Loader
    arrived: float
    frame_id: str = ''


@dataclass
class _Camera:
    K: np.ndarray
    width: int
    height: int


@dataclass
class CaptureStats:
    """Counters for the status topic."""

    received: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    last_problem: str = ''

    def as_dict(self) -> Dict[str, object]:
        """Plain values."""
        out = {'received': self.received, 'kept': self.kept, 'last_problem': self.last_problem}
        out.update({f'rejected_{k}': v for k, v in sorted(self.rejected.items())})
        return out


class CaptureSession:
    """Keyframe selection and dataset writing for one camera (see the module docstring).

    Not thread-safe: call it from one thread (a ROS node's mutually exclusive callback group).
    `pose_lookup` (stamp → (T_base_optical or None, reason)) replaces the internal `PoseBuffer`.
    `stamp_clock` says the time now in the stamps' time base (the node's ROS clock; 0 or None = unknown):
    image stamps further than `max_stamp_skew_s` from it are refused.
    """

    def __init__(self, settings: CaptureSettings, pose_lookup: Optional[PoseLookup] = None,
                 clock: Callable[[], float] = time.monotonic,
                 stamp_clock: Optional[Callable[[], float]] = None):
        settings.validate()
        self.settings = settings
        self.clock = clock
        self.stamp_clock = stamp_clock
        self.scan_id = new_scan_id()
        self.scan_size: Optional[Tuple[int, int]] = None   # stored (w, h) of this scan's keyframes
        self.write_error = ''                              # the last keyframe write failed (until one succeeds)
        self._behind: List[float] = []                     # stamps refused as older than an outlier, in a row
        self.stamp_note = ''                               # set when an outlier stamp was left behind
        self.poses = PoseBuffer(settings.pose_tolerance_s, maxlen=2000)
        self.pose_lookup: PoseLookup = pose_lookup or self.poses.lookup
        self.gate = KeyframeGate(settings.min_translation, settings.min_rotation_deg, settings.min_interval_s,
                                 settings.min_sharpness)
        self.camera: Optional[_Camera] = None
        self.pending: List[_Pending] = []
        self.aux: Dict[str, Dict[float, Loader]] = {kind: {} for kind in AUX_KINDS}
        self.aux_seen = {kind: False for kind in AUX_KINDS}
        self.last_image_stamp: Optional[float] = None
        self.scanning = True
        self.stats = CaptureStats()
        self.label_names: Dict[int, str] = {}
        self.frame_bytes: Optional[int] = None
        self.writer: Optional[DatasetWriter] = None
        self.resumed = 0
        if settings.dataset_dir:
            self._open_dataset(Path(settings.dataset_dir).expanduser())

    # ------------------------------------------------------------------------------------------ setup

    def _open_dataset(self, root: Path) -> None:
        metadata = {'base_frame': self.settings.base_frame}
        if self.settings.workspace:
            metadata['workspace'] = self.settings.workspace
        existing = (root / 'transforms.json').exists()
        self.writer = DatasetWriter(root, base_frame=self.settings.base_frame, metadata=metadata)
        if existing and not self.settings.resume:
            self.writer.clear()
        frames = self.writer.meta['frames']
        if frames:  # continue the scan: the gate measures motion from its last keyframe
            last = frames[-1]
            self.gate.accept(opengl_to_optical(np.array(last['transform_matrix'], dtype=np.float64)),
                             float(last.get('stamp', 0.0)))
            self.gate.count = len(frames)
            self.resumed = len(frames)
            self.frame_bytes = self._bytes_per_frame(int(last['w']), int(last['h']), 'depth_file_path' in last,
                                                     'label_file_path' in last)
            self.scan_size = (int(last['w']), int(last['h']))
            self.scan_id = str(self.writer.meta.get('scan_id') or self.scan_id)
        if self.writer.meta.get('scan_id') != self.scan_id:
            self.writer.meta['scan_id'] = self.scan_id
            self.writer._flush()
        labels = self.writer.meta.get('labels')
        if isinstance(labels, dict):
            self.label_names = {int(k): str(v) for k, v in labels.items()}

    def update_settings(self, **changes) -> None:
        """Change thresholds at run time (gate, tolerance, wait, capacity, budget); ValueError if invalid."""
        candidate = CaptureSettings(**{**self.settings.__dict__, **changes})
        candidate.validate()
        self.settings = candidate
        self.gate.min_translation = float(candidate.min_translation)
        self.gate.min_rotation_deg = float(candidate.min_rotation_deg)
        self.gate.min_interval_s = float(candidate.min_interval_s)
        self.gate.min_sharpness = float(candidate.min_sharpness)
        self.poses.tolerance_s = float(candidate.pose_tolerance_s)

    # ------------------------------------------------------------------------------------------ state

    @property
    def num_keyframes(self) -> int:
        """Keyframes of the scan (including those of a resumed folder)."""
        return self.gate.count

    @staticmethod
    def _bytes_per_frame(width: int, height: int, depth: bool, labels: bool) -> int:
        return width * height * (3 + (4 if depth else 0) + (2 if labels else 0))

    def full_reason(self) -> str:
        """Why no further keyframe fits, or '' when one does."""
        if self.num_keyframes >= self.settings.capacity:
            return f'capacity reached ({self.num_keyframes} of {self.settings.capacity} keyframes)'
        budget = self.settings.ram_budget_mb * 1e6
        if budget > 0 and self.frame_bytes and (self.num_keyframes + 1) * self.frame_bytes > budget:
            return (f'RAM budget reached ({self.num_keyframes} keyframes x {self.frame_bytes / 1e6:.1f} MB > '
                    f'{self.settings.ram_budget_mb:.0f} MB)')
        return ''

    def start(self) -> str:
        """Start (or continue) scanning."""
        self.scanning = True
        return f'scanning ({self.num_keyframes} keyframes so far)'

    def stop(self) -> str:
        """Stop keeping frames (inputs are still received and counted)."""
        self.scanning = False
        self.pending.clear()
        return f'stopped with {self.num_keyframes} keyframes'

    def clear(self) -> str:
        """Start a new scan with a new `scan_id`.

        Keyframes, gate reference, resolution and dataset entries are forgotten (image files stay on disk
        until overwritten).
        """
        dropped = self.num_keyframes
        self.gate.reset()
        self.pending.clear()
        self.last_image_stamp = None
        self._behind.clear()
        self.frame_bytes = None
        self.scan_size = None
        self.resumed = 0
        self.scan_id = new_scan_id()
        note = ''
        if self.writer is not None:
            self.writer.meta['scan_id'] = self.scan_id
            try:
                self.writer.clear()
            except OSError as error:  # e.g. disk full: the scan on disk is stale until a keyframe is written
                self.write_error = str(error)
                note = f' (the dataset on disk could not be updated: {error})'
        return f'new scan {self.scan_id}: cleared {dropped} keyframes{note}'

    # ------------------------------------------------------------------------------------------ inputs

    def set_camera_info(self, K: np.ndarray, width: int, height: int) -> None:
        """Intrinsics of the images that follow (validated by the caller's conversion)."""
        self.camera = _Camera(np.asarray(K, dtype=np.float64), int(width), int(height))

    def set_label_names(self, names: Mapping[int, str]) -> bool:
        """Object id → name for label images; stored in transforms.json. True when it changed."""
        names = {int(k): str(v) for k, v in names.items()}
        if names == self.label_names:
            return False
        self.label_names = names
        if self.writer is not None:
            self.writer.meta['labels'] = {str(k): v for k, v in sorted(names.items())}
            self.writer._flush()
        return True

    def add_pose(self, stamp: float, T_base_optical: np.ndarray) -> List[Outcome]:
        """Store a pose (ValueError for a bad one) and settle images that were waiting for it."""
        self.poses.add(stamp, T_base_optical)
        return self.poll()

    def add_aux(self, kind: str, stamp: float, load: Loader) -> List[Outcome]:
        """Register an aligned depth (metres) or label (object ids) image of the colour image at `stamp`."""
        if kind not in self.aux:
            raise ValueError(f'unknown aligned image kind {kind!r}; expected one of {AUX_KINDS}')
        self.aux_seen[kind] = True
        store = self.aux[kind]
        store[float(stamp)] = load
        while len(store) > 4 * self.settings.max_pending:
            del store[min(store)]
        return self.poll()

    def add_image(self, stamp: float, width: int, height: int, load_rgb: Loader,
                  frame_id: str = '') -> List[Outcome]:
        """Offer a colour image; returns what was settled now (this image and any waiting ones)."""
        stamp = float(stamp)
        self.stats.received += 1
        early = self._precheck(stamp, int(width), int(height))
        if early is not None:
            return [self._count(early)] + self.poll()
        self.pending.append(_Pending(stamp, int(width), int(height), load_rgb, self.clock(), frame_id))
        outcomes = []
        while len(self.pending) > self.settings.max_pending:
            dropped = self.pending.pop(0)
            outcomes.append(self._count(Outcome(dropped.stamp, 'backlog', 'dropped: more than '
                                                f'{self.settings.max_pending} images waiting for poses')))
        return outcomes + self.poll()

    def _check_stamp(self, stamp: float) -> Optional[Outcome]:
        """Refuse a bad stamp with the reason; otherwise make it the reference of the next one."""
        if not math.isfinite(stamp) or stamp <= 0:
            return Outcome(stamp, 'stamp', f'image stamp {stamp} is zero or invalid: the driver must stamp '
                                           'images with their capture time')
        now = self.stamp_clock() if self.stamp_clock is not None else 0.0
        skew = self.settings.max_stamp_skew_s
        if now > 0 and skew > 0 and abs(stamp - now) > skew:
            if stamp > now:
                why = ('a camera clock ahead of this computer (synchronise the clocks, e.g. chrony/PTP)')
            else:
                why = ('a recorded stream? play it with --clock and set use_sim_time: true (or raise '
                       'max_stamp_skew_s)')
            return Outcome(stamp, 'stamp', f'image stamp {stamp:.3f} s is {abs(stamp - now):.0f} s '
                                           f'{"ahead of" if stamp > now else "behind"} this node\'s clock '
                                           f'({now:.3f} s; max_stamp_skew_s {skew:g}): {why}')
        previous = self.last_image_stamp
        if previous is not None and stamp <= previous:
            if stamp < previous and (not self._behind or stamp > self._behind[-1]):
                self._behind.append(stamp)
            else:
                self._behind = [stamp] if stamp < previous else []
            if len(self._behind) < STAMP_RECOVERY_FRAMES:
                word = 'duplicate' if stamp == previous else 'out-of-order'
                return Outcome(stamp, 'stamp', f'{word} image stamp {stamp:.6f} s (previous {previous:.6f} s)')
            # frames keep coming, in order among themselves, older than one earlier frame: that frame was the
            # outlier (a glitch of the driver's clock); follow the stream again
            self.stamp_note = (f'image stamps went back from {previous:.3f} s to {stamp:.3f} s for '
                               f'{len(self._behind)} frames in a row: {previous:.3f} s was an outlier, followed them')
            if self.gate.last_stamp is not None and self.gate.last_stamp > stamp:
                self.gate.last_stamp = stamp - self.gate.min_interval_s  # the interval test restarts from here
        self._behind = []
        self.last_image_stamp = stamp
        return None

    def _precheck(self, stamp: float, width: int, height: int) -> Optional[Outcome]:
        bad_stamp = self._check_stamp(stamp)
        if bad_stamp is not None:
            return bad_stamp
        if not self.scanning:
            return Outcome(stamp, 'idle', 'scan stopped (call ~/start)')
        if self.camera is None:
            return Outcome(stamp, 'camera_info', 'no camera_info received yet')
        if (width, height) != (self.camera.width, self.camera.height):
            return Outcome(stamp, 'size', f'image is {width} x {height} but camera_info says '
                                          f'{self.camera.width} x {self.camera.height}')
        size = stored_size(width, height, self.settings.max_image_side)
        if self.scan_size is not None and size != self.scan_size:
            return Outcome(stamp, 'resolution', f'the camera resolution changed to {width} x {height} (stored at '
                                                f'{size[0]} x {size[1]}) but this scan\'s keyframes are '
                                                f'{self.scan_size[0]} x {self.scan_size[1]}: one resolution per '
                                                'scan; call new_scan to start a new scan at the new resolution')
        full = self.full_reason()
        if full:
            return Outcome(stamp, 'full', full)
        gate = self.gate
        if gate.last_stamp is not None and 0 <= stamp - gate.last_stamp < gate.min_interval_s:
            return Outcome(stamp, 'too_soon', f'too soon ({stamp - gate.last_stamp:.3f} s < '
                                              f'{gate.min_interval_s:.3f} s since the last keyframe)')
        return None

    # ------------------------------------------------------------------------------------------ settling

    def poll(self) -> List[Outcome]:
        """Settle waiting images whose pose (and aligned images) arrived, or whose wait ran out."""
        outcomes, waiting = [], []
        now = self.clock()
        for item in self.pending:
            T, why = self.pose_lookup(item.stamp)
            missing = [kind for kind in AUX_KINDS if self.aux_seen[kind] and item.stamp not in self.aux[kind]]
            timed_out = now - item.arrived >= self.settings.pose_wait_s
            if T is None or missing:
                if not timed_out:
                    waiting.append(item)
                    continue
                if T is None:
                    outcomes.append(self._count(Outcome(item.stamp, 'no_pose', f'no pose for the image at '
                                                        f'{item.stamp:.3f} s: {why}')))
                    continue
            outcomes.append(self._count(self._settle(item, T, missing)))
        self.pending = waiting
        self._forget_old_aux()
        return outcomes

    def _forget_old_aux(self) -> None:
        horizon = min([p.stamp for p in self.pending], default=self.last_image_stamp)
        if horizon is None:
            return
        for store in self.aux.values():
            for stamp in [s for s in store if s < horizon - 5.0]:
                del store[stamp]

    def _settle(self, item: _Pending, T: np.ndarray, missing: List[str]) -> Outcome:
        full = self.full_reason()
        if full:
            return Outcome(item.stamp, 'full', full)
        keep, reason = self.gate.evaluate(T, item.stamp, None)
        if not keep:
            kind = 'moved_too_little' if reason.startswith('moved too little') else (
                'too_soon' if reason.startswith('too soon') else 'pose')
            return Outcome(item.stamp, kind, reason)
        try:
            rgb = item.load_rgb()
        except (ValueError, TypeError) as error:
            return Outcome(item.stamp, 'image', f'bad image: {error}')
        width, height = stored_size(rgb.shape[1], rgb.shape[0], self.settings.max_image_side)
        K = self.camera.K
        if (width, height) != (rgb.shape[1], rgb.shape[0]):
            K = resized_intrinsics(K, rgb.shape[1], rgb.shape[0], width, height)
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        if self.settings.min_sharpness > 0:
            value = sharpness(rgb)
            if value < self.settings.min_sharpness:
                return Outcome(item.stamp, 'blurred', f'blurred (sharpness {value:.1f} < '
                                                      f'{self.settings.min_sharpness:.1f})')
        extras, notes = {}, [f'no aligned {kind} image' for kind in missing]
        for kind in AUX_KINDS:
            load = self.aux[kind].pop(item.stamp, None)
            if load is None:
                continue
            try:
                value = load()
            except (ValueError, TypeError) as error:
                notes.append(f'bad {kind} image ignored: {error}')
                continue
            if value.shape[:2] == (self.camera.height, self.camera.width) and value.shape[:2] != rgb.shape[:2]:
                value = cv2.resize(value, (width, height), interpolation=cv2.INTER_NEAREST)  # downscaled too
            if value.shape[:2] != rgb.shape[:2]:
                notes.append(f'{kind} image {value.shape[1]} x {value.shape[0]} differs from the colour image; '
                             'ignored')
                continue
            extras[kind] = value
        name = f'frame_{self.num_keyframes:05d}'
        try:
            frame = PosedFrame(rgb, K, T, stamp=item.stamp, name=name, **extras)
        except ValueError as error:
            return Outcome(item.stamp, 'image', f'cannot build a keyframe: {error}')
        if self.frame_bytes is None:
            self.frame_bytes = self._bytes_per_frame(frame.width, frame.height, 'depth' in extras,
                                                     'labels' in extras)
            full = self.full_reason()
            if full:
                self.frame_bytes = None
                return Outcome(item.stamp, 'full', full)
        if self.writer is not None:
            try:
                self.writer.append(frame)
            except OSError as error:
                self.write_error = f'could not write the keyframe: {error}'
                return Outcome(item.stamp, 'disk', f'{self.write_error}; not kept, the next keyframe tries again')
            if self.write_error:
                notes.append('writing keyframes works again')
                self.write_error = ''
        self.gate.accept(T, item.stamp)
        self.scan_size = (frame.width, frame.height)
        if (frame.width, frame.height) != (self.camera.width, self.camera.height):
            notes.append(f'stored at {frame.width} x {frame.height} (max_image_side {self.settings.max_image_side})')
        text = reason + ('; ' + '; '.join(notes) if notes else '')
        return Outcome(item.stamp, 'keyframe', text, frame=frame, index=self.num_keyframes - 1)

    def refuse(self, stamp: float, kind: str, reason: str) -> Outcome:
        """Count an image the caller refused before offering it (e.g. a depth encoding on the colour input)."""
        self.stats.received += 1
        return self._count(Outcome(float(stamp), kind, reason))

    def _count(self, outcome: Outcome) -> Outcome:
        if outcome.kept:
            self.stats.kept += 1
        else:
            self.stats.rejected[outcome.kind] += 1
            if outcome.kind not in ROUTINE:
                self.stats.last_problem = outcome.reason
        return outcome

    def status(self) -> Dict[str, object]:
        """Counters and state for the status topic."""
        out = {'scanning': self.scanning, 'keyframes': self.num_keyframes, 'capacity': self.settings.capacity,
               'resumed_keyframes': self.resumed, 'pending': len(self.pending),
               'camera_info': f'{self.camera.width}x{self.camera.height}' if self.camera else 'none',
               'dataset_dir': str(self.writer.root) if self.writer is not None else '',
               'full': self.full_reason(), 'scan_id': self.scan_id,
               'scan_size': f'{self.scan_size[0]}x{self.scan_size[1]}' if self.scan_size else '',
               'write_error': self.write_error}
        out.update(self.stats.as_dict())
        return out

    def health(self) -> Tuple[str, str]:
        """('ok' | 'warn' | 'error', why): ERROR while keyframes cannot be written, WARN when the scan is full."""
        if self.write_error:
            return 'error', self.write_error
        full = self.full_reason()
        if full:
            return 'warn', f'scan full: {full}'
        return 'ok', ''
