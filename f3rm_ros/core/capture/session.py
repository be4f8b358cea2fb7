"""What the capture node decides, without ROS: which camera frames become keyframes of a scan.

A `CaptureSession` receives images (lazily: a loader it calls only when it needs the pixels), intrinsics
with their lens distortion, poses by stamp (or a pose-lookup function, e.g. tf2) and optional aligned depth,
label and mask images paired with their colour image by stamp (`pairing`: nearest within `depth_slop_s`; drivers
stamp depth a few milliseconds after colour). For each image it decides, cheapest test first:

1. stamp sanity (`stamps`: non-zero, finite, within `max_stamp_skew_s` of the node's clock, newer than the
   previous good image; a run of frames older than one outlier is followed), scan running, camera_info known
   and of the same size, the scan's resolution (a camera that changes resolution mid-scan is refused: call
   ``new_scan``), capacity and RAM budget left;
2. the minimum interval since the last keyframe (no pose needed: most frames of a 30 Hz stream stop here);
3. the pose at the image stamp (interpolated between the samples around it, never extrapolated beyond
   `pose_tolerance_s`, never "the latest"; with a hand-eye calibration the pose is the end effector's and
   ``T_base_ee @ T_ee_optical`` is the camera's), waiting up to `pose_wait_s` for a pose or an aligned image
   that is late;
4. camera motion since the last keyframe (`KeyframeGate`), then blur (variance of the Laplacian) on the
   converted image.

A kept frame is undistorted once and stored at most `max_image_side` large, with the pinhole ``K_new`` and
its mask: the static mask AND the frame's own mask AND the pixels the lens saw (`camera`; depth, labels and masks
nearest). Problems with an aligned input (a depth image in another frame than the colour one, of another size,
undecodable) are queued for the caller (`take_problems`) with what to change; the keyframe goes on without that
input.

A kept frame is appended to the scan's nerfstudio dataset on disk before it is reported (`scan_folder`); a
failed write (disk full) is reported (`health` ERROR) and the next keyframe tries again. A session started on a
folder that already holds a scan continues it (`resume`); every scan has an id (`scan_id`, stored in
``transforms.json``) that a trainer compares with its own.
"""
from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .camera import Camera, stored_size
from .distortion import Distortion
from .frames import PosedFrame
from ..geometry import check_rigid, opengl_to_optical
from .keyframes import KeyframeGate, PoseBuffer, sharpness
from .pairing import AlignedImages, Loader
from .scan_folder import ScanFolder
from .stamps import StampCheck

PoseLookup = Callable[[float], Tuple[Optional[np.ndarray], str]]
# until the image stamps tell the frame period, aligned images pair with colour within this (half of 30 Hz)
DEFAULT_SLOP_S = 1.0 / 60.0
# `capacity` 0 (the node's default): the scan on disk keeps up to this many keyframes; the trainer keeps the
# best-spread `trainer.capacity` of them (a full trainer replaces its most redundant view)
DISK_CAPACITY = 1000


def new_scan_id() -> str:
    """Return a fresh scan id: date, time of day and a random suffix (``20261130-142501-3fa2c1``)."""
    return time.strftime('%Y%m%d-%H%M%S') + '-' + uuid.uuid4().hex[:6]


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

    Why one class: its checks run in order on one scan's state that every input updates (camera, gate reference,
    pending images, keyframe count and RAM budget, counters); what stands alone lives beside it: stamp sanity
    (`stamps`), the camera and a kept image's undistortion, size and mask (`camera`), aligned images (`pairing`),
    the gate and poses (`keyframes`), the dataset on disk (`scan_folder`).
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
        self.stamps = StampCheck()
        self.stamp_note = ''                               # set when an outlier stamp was left behind
        self.poses = PoseBuffer(settings.pose_tolerance_s, maxlen=2000, max_gap_s=settings.pose_max_gap_s)
        self.pose_lookup: PoseLookup = pose_lookup or self.poses.lookup
        self.camera_problem = ''                           # why the last camera_info was refused ('' = fine)
        self.camera_note = ''                              # a new camera model to log once (undistortion ...)
        self.problems: List[Tuple[str, str]] = []          # (kind, message) for the caller: `take_problems`
        self.colour_frame = ''                             # header.frame_id of the colour images
        self.gate = KeyframeGate(settings.min_translation, settings.min_rotation_deg, settings.min_interval_s,
                                 settings.min_sharpness)
        self.camera: Optional[Camera] = None
        self.pending: List[_Pending] = []
        self.aligned = AlignedImages()                     # depth, labels and masks waiting for their colour image
        self.scanning = True
        self.stats = CaptureStats()
        self.label_names: Dict[int, str] = {}
        self.frame_bytes: Optional[int] = None
        self.folder: Optional[ScanFolder] = None
        self.resumed = 0
        if settings.dataset_dir:
            self._open_dataset(Path(settings.dataset_dir).expanduser())

    # ------------------------------------------------------------------------------------------ setup

    def _open_dataset(self, root: Path) -> None:
        self.folder = ScanFolder(root, self.settings.base_frame, self.settings.workspace, self.settings.resume)
        frames = self.folder.frames
        if frames:  # continue the scan: the gate measures motion from its last keyframe
            last = frames[-1]
            self.gate.accept(opengl_to_optical(np.array(last['transform_matrix'], dtype=np.float64)),
                             float(last.get('stamp', 0.0)))
            self.gate.count = len(frames)
            self.resumed = len(frames)
            self.frame_bytes = self._bytes_per_frame(int(last['w']), int(last['h']), 'depth_file_path' in last,
                                                     'label_file_path' in last)
            self.scan_size = (int(last['w']), int(last['h']))
        self.scan_id = self.folder.adopt_scan_id(self.scan_id)
        self.label_names = self.folder.label_names()

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
    def write_error(self) -> str:
        """Why the last keyframe write failed ('' = it worked, or nothing is kept on disk)."""
        return self.folder.write_error if self.folder is not None else ''

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
        self.stamps.restart()
        self.frame_bytes = None
        self.scan_size = None
        self.resumed = 0
        self.scan_id = new_scan_id()
        note = self.folder.clear(self.scan_id) if self.folder is not None else ''
        return f'new scan {self.scan_id}: cleared {dropped} keyframes{note}'

    # ------------------------------------------------------------------------------------------ inputs

    def set_camera_info(self, K: np.ndarray, width: int, height: int,
                        distortion: Optional[Distortion] = None) -> None:
        """Intrinsics (and lens distortion) of the images that follow (validated by the caller's conversion).

        A distorted camera gets an undistorter (`Camera.from_info`); `camera_note` then says so once, with the
        pinhole K the keyframes will carry.
        """
        self.camera_problem = ''
        self.camera, note = Camera.from_info(K, width, height, distortion, self.camera)
        if note:
            self.camera_note = note

    def refuse_camera_info(self, reason: str) -> None:
        """Forget the camera: images are refused with `reason` until a usable camera_info arrives."""
        self.camera = None
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
        period = self.stamps.frame_period()
        return 0.5 * period if period is not None else DEFAULT_SLOP_S

    def set_label_names(self, names: Mapping[int, str]) -> bool:
        """Object id → name for label images; stored in transforms.json. True when it changed."""
        names = {int(k): str(v) for k, v in names.items()}
        if names == self.label_names:
            return False
        self.label_names = names
        if self.folder is not None:
            self.folder.store_label_names(names)
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
        """Refuse a bad stamp with the reason (`StampCheck`); after an outlier, restart the interval test."""
        now = self.stamp_clock() if self.stamp_clock is not None else 0.0
        refusal, note = self.stamps.check(stamp, now, self.settings.max_stamp_skew_s)
        if refusal:
            return Outcome(stamp, 'stamp', refusal)
        if note:
            self.stamp_note = note
            if self.gate.last_stamp is not None and self.gate.last_stamp > stamp:
                self.gate.last_stamp = stamp - self.gate.min_interval_s  # the interval test restarts from here
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
        horizon = min([p.stamp for p in self.pending], default=self.stamps.last)
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
        image = camera.store(rgb, self.settings.max_image_side)
        if self.settings.min_sharpness > 0:
            value = sharpness(image.rgb)
            if value < self.settings.min_sharpness:
                return Outcome(item.stamp, 'blurred', f'blurred (sharpness {value:.1f} < '
                                                      f'{self.settings.min_sharpness:.1f})')
        taken = self.aligned.take(item.stamp, self.slop_s, item.frame_id, (camera.width, camera.height),
                                  camera.undistorter, image.size if image.resized else None)
        for kind, problem in taken.problems:
            self._problem(kind, problem)
        if taken.refusal:
            return Outcome(item.stamp, 'mask', taken.refusal)
        extras, notes = taken.extras, [f'no aligned {kind} image' for kind in missing] + taken.notes
        mask = camera.mask(extras.pop('mask', None), self.settings.static_mask, image)
        name = f'frame_{self.num_keyframes:05d}'
        try:
            frame = PosedFrame(image.rgb, image.K, T, stamp=item.stamp, name=name, mask=mask, **extras)
        except ValueError as error:
            return Outcome(item.stamp, 'image', f'cannot build a keyframe: {error}')
        if self.frame_bytes is None:
            self.frame_bytes = self._bytes_per_frame(frame.width, frame.height, 'depth' in extras,
                                                     'labels' in extras)
            full = self.full_reason()
            if full:
                self.frame_bytes = None
                return Outcome(item.stamp, 'full', full)
        if self.folder is not None:
            try:
                works_again = self.folder.append(frame)
            except OSError:
                return Outcome(item.stamp, 'disk', f'{self.write_error}; not kept, the next keyframe tries again')
            if works_again:
                notes.append(works_again)
        self.gate.accept(T, item.stamp)
        self.scan_size = (frame.width, frame.height)
        if image.resized:
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
               'dataset_dir': str(self.folder.root) if self.folder is not None else '',
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
