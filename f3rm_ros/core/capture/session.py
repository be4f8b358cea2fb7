"""What the capture node decides, without ROS: which camera frames become keyframes of a scan.

A `CaptureSession` receives images (lazily: a loader it calls only when it needs the pixels), intrinsics
with their lens distortion, poses by stamp (or a pose-lookup function, e.g. tf2) and optional aligned depth,
label and mask images paired with their colour image by stamp (`pairing`: nearest within `depth_slop_s`; drivers
stamp depth a few milliseconds after colour). For each image it decides, cheapest test first:

1. stamp sanity (non-zero, finite, within `max_stamp_skew_s` of the node's clock, newer than the previous
   good image: duplicates and out-of-order are refused, but a run of `STAMP_RECOVERY_FRAMES` consistent
   frames older than one outlier is followed), scan running, camera_info known and of the same size, the
   scan's resolution (a camera that changes resolution mid-scan is refused: call ``new_scan``), capacity
   and RAM budget left;
2. the minimum interval since the last keyframe (no pose needed: most frames of a 30 Hz stream stop here);
3. the pose at the image stamp (interpolated between the samples around it, never extrapolated beyond
   `pose_tolerance_s`, never "the latest"; with a hand-eye calibration the pose is the end effector's and
   ``T_base_ee @ T_ee_optical`` is the camera's), waiting up to `pose_wait_s` for a pose or an aligned image
   that is late;
4. camera motion since the last keyframe (`KeyframeGate`), then blur (variance of the Laplacian) on the
   converted image.

A kept frame is undistorted once (`distortion.Undistorter`, maps made once per camera: colour bilinear;
depth, labels and masks nearest) and carries the pinhole ``K_new`` from then on; its mask is the static mask
(a wrist camera's gripper) AND the frame's own mask AND the pixels the lens saw. Problems with an aligned
input (a depth image in another frame than the colour one, of another size, undecodable) are queued for
the caller (`take_problems`) with what to change; the keyframe goes on without that input.

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

from .distortion import Distortion, Undistorter
from .frames import DatasetWriter, PosedFrame
from ..geometry import check_rigid, opengl_to_optical, resized_intrinsics
from .keyframes import KeyframeGate, PoseBuffer, sharpness
from .pairing import AlignedImages, Loader

PoseLookup = Callable[[float], Tuple[Optional[np.ndarray], str]]
# until the image stamps tell the frame period, aligned images pair with colour within this (half of 30 Hz)
DEFAULT_SLOP_S = 1.0 / 60.0
# `capacity` 0 (the node's default): the scan on disk keeps up to this many keyframes; the trainer keeps the
# best-spread `trainer.capacity` of them (a full trainer replaces its most redundant view)
DISK_CAPACITY = 1000
# Frames stamped before an outlier in a row, each newer than the last, after which the outlier is forgotten.
STAMP_RECOVERY_FRAMES = 5


def new_scan_id() -> str:
    """Return a fresh scan id: date, time of day and a random suffix (``20261130-142501-3fa2c1``)."""
    return time.strftime('%Y%m%d-%H%M%S') + '-' + uuid.uuid4().hex[:6]


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
    depth_slop_s: float = 0.0          # aligned images pair within this of the colour stamp (0 = half a frame period)
    pose_max_gap_s: float = 0.25       # interpolate only between pose samples at most this far apart
    hand_eye: Optional[np.ndarray] = None      # T_ee_optical: poses are the end effector's (None = the camera's)
    static_mask: Optional[np.ndarray] = None   # H x W bool at the camera's resolution, False = ignore (a gripper)
    trainer_capacity: int = 0          # keyframes the trainer holds at most (the RAM budget counts these; 0 = all)

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
        for name in ('depth_slop_s', 'pose_max_gap_s'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
        if self.hand_eye is not None:
            check_rigid(np.asarray(self.hand_eye, dtype=np.float64))
        if self.static_mask is not None and np.asarray(self.static_mask).ndim != 2:
            raise ValueError(f'the static mask must be an H x W image, got shape {np.asarray(self.static_mask).shape}')


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
    distortion: Optional[Distortion] = None


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
    `pose_lookup` (stamp → (T or None, reason)) replaces the internal `PoseBuffer`; T is ``T_base_optical``,
    or ``T_base_ee`` when `settings.hand_eye` is set (both paths compose the hand-eye transform here).
    `stamp_clock` says the time now in the stamps' time base (the node's ROS clock; 0 or None = unknown):
    image stamps further than `max_stamp_skew_s` from it are refused.

    Why one class: its checks run in order on one scan's state that every input updates (camera and undistorter,
    gate reference, pending images, dataset writer, counters); what stands alone lives beside it (`keyframes`,
    `pairing`, `distortion`, `frames`).
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
        self.poses = PoseBuffer(settings.pose_tolerance_s, maxlen=2000, max_gap_s=settings.pose_max_gap_s)
        self.pose_lookup: PoseLookup = pose_lookup or self.poses.lookup
        self.undistorter: Optional[Undistorter] = None
        self.camera_problem = ''                           # why the last camera_info was refused ('' = fine)
        self.camera_note = ''                              # a new camera model to log once (undistortion ...)
        self.problems: List[Tuple[str, str]] = []          # (kind, message) for the caller: `take_problems`
        self._periods: List[float] = []                    # recent image stamp differences (the frame period)
        self.colour_frame = ''                             # header.frame_id of the colour images
        self.gate = KeyframeGate(settings.min_translation, settings.min_rotation_deg, settings.min_interval_s,
                                 settings.min_sharpness)
        self.camera: Optional[_Camera] = None
        self.pending: List[_Pending] = []
        self.aligned = AlignedImages()                     # depth, labels and masks waiting for their colour image
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
            self.writer.flush()
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
        self.poses.max_gap_s = float(candidate.pose_max_gap_s)

    # ------------------------------------------------------------------------------------------ state

    @property
    def num_keyframes(self) -> int:
        """Keyframes of the scan (including those of a resumed folder)."""
        return self.gate.count

    @staticmethod
    def _bytes_per_frame(width: int, height: int, depth: bool, labels: bool) -> int:
        return width * height * (3 + (4 if depth else 0) + (2 if labels else 0))

    def full_reason(self) -> str:
        """Why no further keyframe fits, or '' when one does.

        The RAM budget counts what a trainer holds: at most `trainer_capacity` keyframes (a full trainer
        replaces views instead of adding them), so a scan on disk may grow past it.
        """
        if self.num_keyframes >= self.settings.capacity:
            return f'capacity reached ({self.num_keyframes} of {self.settings.capacity} keyframes)'
        budget = self.settings.ram_budget_mb * 1e6
        held = self.num_keyframes + 1
        if self.settings.trainer_capacity > 0:
            held = min(held, int(self.settings.trainer_capacity))
        if budget > 0 and self.frame_bytes and held * self.frame_bytes > budget:
            return (f'RAM budget reached ({held - 1} keyframes x {self.frame_bytes / 1e6:.1f} MB > '
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

    def set_camera_info(self, K: np.ndarray, width: int, height: int,
                        distortion: Optional[Distortion] = None) -> None:
        """Intrinsics (and lens distortion) of the images that follow (validated by the caller's conversion).

        A distorted camera gets an `Undistorter` (maps computed once, reused while K, distortion and size stay
        the same); `camera_note` then says so once, with the pinhole K the keyframes will carry.
        """
        K = np.asarray(K, dtype=np.float64)
        if distortion is not None and distortion.is_zero:
            distortion = None
        self.camera_problem = ''
        self.camera = _Camera(K, int(width), int(height), distortion)
        if distortion is None:
            if self.undistorter is not None:
                self.camera_note = 'camera_info has no lens distortion now: keyframes are no longer undistorted'
            self.undistorter = None
            return
        if self.undistorter is not None and self.undistorter.matches(K, distortion, width, height):
            return
        self.undistorter = Undistorter(K, distortion, int(width), int(height))
        Kn = self.undistorter.K_new
        self.camera_note = (f'camera_info: {distortion.model} distortion {list(np.round(distortion.coefficients, 5))}: '
                            f'keyframes are undistorted once at capture and published with the pinhole K_new '
                            f'(fx {Kn[0, 0]:.1f}, fy {Kn[1, 1]:.1f}, cx {Kn[0, 2]:.1f}, cy {Kn[1, 2]:.1f}) and zero '
                            'distortion on ~/keyframe/camera_info')

    def refuse_camera_info(self, reason: str) -> None:
        """Forget the camera: images are refused with `reason` until a usable camera_info arrives."""
        self.camera = None
        self.undistorter = None
        self.camera_problem = reason

    def take_problems(self) -> List[Tuple[str, str]]:
        """Return and forget the queued (kind, message) problems with aligned inputs."""
        out, self.problems = self.problems, []
        return out

    def _problem(self, kind: str, message: str) -> None:
        self.problems.append((kind, message))
        self.stats.rejected[kind] += 1
        self.stats.last_problem = message

    @property
    def slop_s(self) -> float:
        """How far an aligned image's stamp may be from its colour image's: `depth_slop_s`, or half a frame."""
        if self.settings.depth_slop_s > 0:
            return float(self.settings.depth_slop_s)
        if len(self._periods) >= 3:
            return 0.5 * float(np.median(self._periods))
        return DEFAULT_SLOP_S

    def set_label_names(self, names: Mapping[int, str]) -> bool:
        """Object id → name for label images; stored in transforms.json. True when it changed."""
        names = {int(k): str(v) for k, v in names.items()}
        if names == self.label_names:
            return False
        self.label_names = names
        if self.writer is not None:
            self.writer.meta['labels'] = {str(k): v for k, v in sorted(names.items())}
            self.writer.flush()
        return True

    def add_pose(self, stamp: float, T_base_optical: np.ndarray) -> List[Outcome]:
        """Store a pose (ValueError for a bad one) and settle images that were waiting for it."""
        self.poses.add(stamp, T_base_optical)
        return self.poll()

    def add_aux(self, kind: str, stamp: float, load: Loader, frame_id: str = '') -> List[Outcome]:
        """Register an aligned depth (metres), label (object ids) or mask (non-zero = keep) image.

        It pairs with the colour image whose stamp is nearest, within `slop_s`. One in another frame than the
        colour images is refused (queued problem naming the fix); the colour images do not wait for it.
        """
        problem = self.aligned.add(kind, stamp, load, frame_id, self.colour_frame, 4 * self.settings.max_pending)
        if problem:
            self._problem(f'{kind}_frame', problem)
        return self.poll()

    def add_image(self, stamp: float, width: int, height: int, load_rgb: Loader,
                  frame_id: str = '') -> List[Outcome]:
        """Offer a colour image; returns what was settled now (this image and any waiting ones)."""
        stamp = float(stamp)
        self.stats.received += 1
        self.colour_frame = frame_id or self.colour_frame
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
        if previous is not None and 0 < stamp - previous < 5.0:
            self._periods = (self._periods + [stamp - previous])[-30:]
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
            return Outcome(stamp, 'camera_info', self.camera_problem or 'no camera_info received yet')
        mask = self.settings.static_mask
        if mask is not None and tuple(np.asarray(mask).shape[:2]) != (height, width):
            shape = np.asarray(mask).shape
            return Outcome(stamp, 'mask', f'the static mask (mask_file) is {shape[1]} x {shape[0]} but the images are '
                                          f'{width} x {height}: make the mask at the camera\'s resolution (white = '
                                          'keep, black = ignore)')
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
            T, why = self._pose(item.stamp)
            missing = self.aligned.missing(item.stamp, self.slop_s)
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

    def _pose(self, stamp: float) -> Tuple[Optional[np.ndarray], str]:
        """Return the camera pose at `stamp`: the lookup's, composed with the hand-eye transform if there is one."""
        T, why = self.pose_lookup(stamp)
        if T is not None and self.settings.hand_eye is not None:
            T = np.asarray(T, dtype=np.float64) @ np.asarray(self.settings.hand_eye, dtype=np.float64)
            why = f'{why}, composed with the hand-eye transform'
        return T, why

    def _forget_old_aux(self) -> None:
        horizon = min([p.stamp for p in self.pending], default=self.last_image_stamp)
        if horizon is not None:
            self.aligned.forget_before(horizon)

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
        camera = self.camera
        if rgb.shape[:2] != (camera.height, camera.width):
            return Outcome(item.stamp, 'size', f'image is {rgb.shape[1]} x {rgb.shape[0]} but camera_info says '
                                               f'{camera.width} x {camera.height}')
        K, valid = camera.K, None
        undistorter = self.undistorter
        if undistorter is not None:
            rgb, K = undistorter.image(rgb), undistorter.K_new.copy()
            valid = undistorter.nearest(np.full(rgb.shape[:2], 255, np.uint8)) > 0   # pixels the lens saw
        width, height = stored_size(rgb.shape[1], rgb.shape[0], self.settings.max_image_side)
        resized = (width, height) != (rgb.shape[1], rgb.shape[0])
        if resized:
            K = resized_intrinsics(K, rgb.shape[1], rgb.shape[0], width, height)
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        if self.settings.min_sharpness > 0:
            value = sharpness(rgb)
            if value < self.settings.min_sharpness:
                return Outcome(item.stamp, 'blurred', f'blurred (sharpness {value:.1f} < '
                                                      f'{self.settings.min_sharpness:.1f})')
        taken = self.aligned.take(item.stamp, self.slop_s, item.frame_id, (camera.width, camera.height), undistorter,
                                  (width, height) if resized else None)
        for kind, problem in taken.problems:
            self._problem(kind, problem)
        if taken.refusal:
            return Outcome(item.stamp, 'mask', taken.refusal)
        extras, notes = taken.extras, [f'no aligned {kind} image' for kind in missing] + taken.notes
        mask = self._mask(extras.pop('mask', None), valid, (width, height), resized)
        name = f'frame_{self.num_keyframes:05d}'
        try:
            frame = PosedFrame(rgb, K, T, stamp=item.stamp, name=name, mask=mask, **extras)
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
        if resized:
            notes.append(f'stored at {frame.width} x {frame.height} (max_image_side {self.settings.max_image_side})')
        text = reason + ('; ' + '; '.join(notes) if notes else '')
        return Outcome(item.stamp, 'keyframe', text, frame=frame, index=self.num_keyframes - 1)

    def _mask(self, frame_mask: Optional[np.ndarray], valid: Optional[np.ndarray], size: Tuple[int, int],
              resized: bool) -> Optional[np.ndarray]:
        """Combine the static mask, the frame's mask and the pixels the lens saw, at the stored size (None = all)."""
        width, height = size
        mask = None if frame_mask is None else frame_mask > 0
        parts = []                                   # at the camera's resolution, undistorted
        if self.settings.static_mask is not None:
            static = (np.asarray(self.settings.static_mask) > 0).astype(np.uint8)
            parts.append(static if self.undistorter is None else self.undistorter.nearest(static))
        if valid is not None:
            parts.append(valid.astype(np.uint8))
        for part in parts:
            if resized:
                part = cv2.resize(part, (width, height), interpolation=cv2.INTER_NEAREST)
            mask = part > 0 if mask is None else mask & (part > 0)
        if mask is None or mask.all():
            return None
        return mask

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
               'write_error': self.write_error,
               'distortion': (self.camera.distortion.model if self.camera and self.camera.distortion else 'none'),
               'slop_ms': round(self.slop_s * 1e3, 2)}
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
