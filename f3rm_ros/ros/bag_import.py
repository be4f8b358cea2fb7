"""Recorded scans: a rosbag2 (mcap or sqlite3) → a nerfstudio dataset, through the capture node's own path.

``f3rm-ros import-bag BAG --image TOPIC --camera-info TOPIC [--depth TOPIC] [--tf BASE FRAME | --pose TOPIC]
--out DATASET`` reads the bag with the pip ``rosbags`` library (no ROS install needed: ``AnyReader`` finds the
storage, mcap or sqlite3, from the bag's metadata.yaml), and hands its messages, in recording order, to the same
`CaptureInputs` → `CaptureSession` as the live capture node: the same conversions (raw and compressed images,
compressedDepth, distortion, masks), the same keyframe gate and the same dataset writer.

Poses: ``--tf BASE FRAME`` looks ``BASE <- FRAME`` up in the bag's ``/tf`` and ``/tf_static`` at each image
stamp (`core.transforms.TransformTree`: dynamic edges interpolated, never extrapolated beyond the tolerance);
``--pose TOPIC`` reads ``geometry_msgs/PoseStamped`` of the camera (interpolated the same way). With a hand-eye
calibration (``--hand-eye FILE``) FRAME / the pose topic is the end effector's and the camera's pose is composed.

Every pose is read before the images (a first pass over the pose topics), so an image never waits for a pose
recorded after it. The session's clock is the bag's: an aligned image is waited for `pose_wait_s` of bag time.
The dataset is written into a temporary folder next to ``--out`` and renamed at the end: an import that fails
leaves nothing half-written.
"""
from __future__ import annotations

# Imported where used (optional): rosbags, only when a bag is read; its absence is reported as a BagError.
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.capture.camera import read_mask_file
from ..core.capture.session import CaptureSession, CaptureSettings
from ..core.capture.handeye import load_hand_eye
from ..core.capture.transforms import TransformTree
from . import conversions as conv
from .capture_inputs import CaptureInputs

IMAGE_TYPES = {'sensor_msgs/msg/Image': 'raw', 'sensor_msgs/msg/CompressedImage': 'compressed'}
TF_TOPICS = ('/tf', '/tf_static')


class BagError(ValueError):
    """A bag that cannot be imported as asked (missing topics, wrong types ...), with what to change."""


@dataclass
class ImportSettings:
    """What to read from the bag and how to keep keyframes (the capture node's gate parameters)."""

    image: str
    camera_info: str
    depth: str = ''
    labels: str = ''
    mask_topic: str = ''
    tf: Optional[Tuple[str, str]] = None          # (base frame, camera or end-effector frame)
    pose: str = ''                                # PoseStamped topic instead of tf
    mask_file: str = ''
    hand_eye_file: str = ''
    workspace: Optional[Sequence[float]] = None   # xmin ymin zmin xmax ymax zmax, written into transforms.json
    base_frame: str = 'base_link'
    capture: Dict = field(default_factory=dict)   # CaptureSettings overrides (min_translation, ...)


@dataclass
class ImportResult:
    """What an import produced."""

    out: Path
    keyframes: int
    images: int
    rejected: Dict[str, int]
    problems: List[str]
    topics: Dict[str, str]


def _listing(topics: Dict[str, str]) -> str:
    return '; '.join(f'{name} ({kind}, {count} messages)' for name, (kind, count) in sorted(topics.items()))


def _resolve(wanted: str, role: str, topics: Dict[str, Tuple[str, int]], types: Sequence[str],
             suffix: str = '') -> str:
    """Return the topic to read for `role`: `wanted`, or its image_transport sibling ``wanted/suffix`` if only that."""
    candidates = [wanted] + ([f'{wanted.rstrip("/")}/{suffix}'] if suffix else [])
    for name in candidates:
        if name in topics:
            kind = topics[name][0]
            if kind not in types:
                raise BagError(f'{role} topic {name} holds {kind}, expected {" or ".join(types)}')
            return name
    also = f' (nor {candidates[1]})' if suffix else ''
    raise BagError(f'the bag has no {role} topic {wanted}{also}; its topics: {_listing(topics)}')


def import_bag(bag: Path, out: Path, settings: ImportSettings, report: Callable[[str], None] = print,
               overwrite: bool = False) -> ImportResult:
    """Import `bag` into the dataset folder `out` (see the module docstring); BagError says what to change."""
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as error:  # pragma: no cover - requirements-ml.txt has it
        raise BagError('reading bags needs the rosbags library: pip install rosbags') from error
    bag, out = Path(bag).expanduser(), Path(out).expanduser()
    if not bag.exists():
        raise BagError(f'{bag} does not exist (give the bag folder, the one holding metadata.yaml)')
    if (out / 'transforms.json').exists() and not overwrite:
        raise BagError(f'{out} already holds a dataset; choose another --out or pass --overwrite')
    if (settings.tf is None) == (not settings.pose):
        raise BagError('give the camera poses with either --tf BASE CAMERA_FRAME (the bag\'s /tf and /tf_static) or '
                       '--pose TOPIC (geometry_msgs/PoseStamped), not both')
    hand_eye = load_hand_eye(Path(settings.hand_eye_file)) if settings.hand_eye_file else None
    static_mask = read_mask_file(settings.mask_file) if settings.mask_file else None
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as error:  # rosbags raises its own error types for unreadable bags
        raise BagError(f'cannot read {bag} as a rosbag2 (mcap or sqlite3): {type(error).__name__}: {error}') from error
    try:
        return _import(reader, bag, out, settings, hand_eye, static_mask, report, overwrite)
    finally:
        reader.close()


def _import(reader, bag: Path, out: Path, settings: ImportSettings, hand_eye, static_mask,
            report: Callable[[str], None], overwrite: bool) -> ImportResult:
    topics = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    chosen = {'image': _resolve(settings.image, 'image', topics, tuple(IMAGE_TYPES), 'compressed'),
              'camera_info': _resolve(settings.camera_info, 'camera_info', topics, ('sensor_msgs/msg/CameraInfo',))}
    if settings.depth:
        chosen['depth'] = _resolve(settings.depth, 'depth', topics, tuple(IMAGE_TYPES), 'compressedDepth')
    if settings.labels:
        chosen['labels'] = _resolve(settings.labels, 'labels', topics, ('sensor_msgs/msg/Image',))
    if settings.mask_topic:
        chosen['mask'] = _resolve(settings.mask_topic, 'mask', topics, ('sensor_msgs/msg/Image',))
    if settings.pose:
        chosen['camera_pose'] = _resolve(settings.pose, 'pose', topics, ('geometry_msgs/msg/PoseStamped',))
    elif not any(name in topics for name in TF_TOPICS):
        raise BagError(f'--tf needs /tf or /tf_static in the bag; its topics: {_listing(topics)} (record them, or give '
                       '--pose TOPIC)')
    for role, name in chosen.items():
        if topics[name][1] == 0:
            raise BagError(f'{role} topic {name} has no messages in {bag}')

    capture = dict(settings.capture)
    tolerance = float(capture.get('pose_tolerance_s', CaptureSettings.pose_tolerance_s))
    max_gap = float(capture.get('pose_max_gap_s', CaptureSettings.pose_max_gap_s))
    lookup, base_frame = None, settings.base_frame
    if settings.tf is not None:
        base_frame, frame = settings.tf
        lookup = _TreeLookup(_read_tf(reader, tolerance, max_gap), base_frame, frame)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.importing-', dir=parent))
    try:
        metadata_workspace = None
        if settings.workspace is not None:
            values = [float(v) for v in settings.workspace]
            metadata_workspace = {'min': values[:3], 'max': values[3:]}
        clock = _BagClock()
        session = CaptureSession(
            CaptureSettings(**{'base_frame': base_frame, 'dataset_dir': str(staging), 'max_stamp_skew_s': 0.0,
                               'capacity': 100000, 'hand_eye': hand_eye, 'static_mask': static_mask,
                               'workspace': metadata_workspace, **capture}),
            pose_lookup=lookup, clock=clock)
        problems = _Problems(report)
        inputs = CaptureInputs(session, base_frame, problems, lambda text: report(f'import-bag: {text}'),
                               topics={role: name for role, name in chosen.items()})
        handlers = _handlers(inputs, chosen, topics)
        if 'camera_pose' in chosen:  # every pose first: an image never waits for a pose recorded after it
            connections = [c for c in reader.connections if c.topic == chosen['camera_pose']]
            for connection, timestamp, raw in reader.messages(connections=connections):
                clock.now = timestamp * 1e-9
                inputs.pose(reader.deserialize(raw, connection.msgtype))
        connections = [c for c in reader.connections if c.topic in handlers]
        images = 0
        for connection, timestamp, raw in reader.messages(connections=connections):
            clock.now = timestamp * 1e-9
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as error:  # a truncated record: skip it like a corrupt payload
                problems(f'{connection.topic}_record', f'{connection.topic}: message at {clock.now:.3f} s cannot be '
                                                       f'deserialised ({error}); skipped', 'error')
                continue
            images += connection.topic == chosen['image']
            handlers[connection.topic](msg)
        clock.now += 3600.0            # the end of the bag: settle what still waits for an aligned image
        inputs.poll()
        kept = session.num_keyframes
        if kept == 0:
            reasons = ', '.join(f'{k} {v}' for k, v in session.stats.rejected.most_common()) or 'none received'
            raise BagError(f'no keyframe from {images} images on {chosen["image"]} (refused: {reasons}; last problem: '
                           f'{session.stats.last_problem or "-"})')
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rejected = dict(session.stats.rejected)
    report(f'import-bag: {kept} keyframes from {images} images of {bag} written to {out} '
           + (f'(not kept: {", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))})' if rejected else ''))
    return ImportResult(out, kept, images, rejected, problems.messages, chosen)


class _TreeLookup:
    """Pose lookup over the bag's transforms: ``base <- frame`` at a stamp."""

    def __init__(self, tree: TransformTree, base: str, frame: str):
        self.tree, self.base, self.frame = tree, base, frame

    def __call__(self, stamp: float):
        T, why = self.tree.lookup(self.base, self.frame, stamp)
        return T, why if T is not None else f'/tf {self.base} <- {self.frame}: {why}'


class _BagClock:
    """The session's clock: the recording time of the message being read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Problems:
    """Collects reported problems; prints the first of each kind (the rest are counted)."""

    def __init__(self, report: Callable[[str], None]):
        self.report = report
        self.counts: Counter = Counter()
        self.messages: List[str] = []

    def __call__(self, kind: str, message: str, level: str = 'warn') -> None:
        self.counts[kind] += 1
        self.messages.append(message)
        if self.counts[kind] == 1:
            self.report(f'import-bag: {level}: {message}')


def _handlers(inputs: CaptureInputs, chosen: Dict[str, str], topics) -> Dict[str, Callable]:
    handlers = {chosen['camera_info']: inputs.camera_info}
    image_kind = IMAGE_TYPES[topics[chosen['image']][0]]
    handlers[chosen['image']] = inputs.compressed_image if image_kind == 'compressed' else inputs.image
    if 'depth' in chosen:
        kind = IMAGE_TYPES[topics[chosen['depth']][0]]
        handlers[chosen['depth']] = inputs.compressed_depth if kind == 'compressed' else inputs.depth
    if 'labels' in chosen:
        handlers[chosen['labels']] = inputs.labels
    if 'mask' in chosen:
        handlers[chosen['mask']] = inputs.mask
    return handlers


def _read_tf(reader, tolerance_s: float, max_gap_s: float) -> TransformTree:
    """Every transform of the bag's /tf and /tf_static (tf2_msgs/TFMessage) in a `TransformTree`."""
    tree = TransformTree(tolerance_s=tolerance_s, max_gap_s=max_gap_s)
    connections = [c for c in reader.connections if c.topic in TF_TOPICS]
    for connection, _, raw in reader.messages(connections=connections):
        message = reader.deserialize(raw, connection.msgtype)
        for transform in message.transforms:
            try:
                T = conv.transform_to_matrix(transform.transform)
                tree.add(transform.header.frame_id, transform.child_frame_id,
                         conv.stamp_to_seconds(transform.header.stamp), T, static=connection.topic == '/tf_static')
            except ValueError:
                continue  # a NaN transform: tf2 would refuse it too
    return tree


def parse_workspace(values: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    """Check ``--workspace XMIN YMIN ZMIN XMAX YMAX ZMAX`` (min < max on every axis)."""
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (6,) or not np.all(values[:3] < values[3:]):
        raise BagError(f'--workspace needs XMIN YMIN ZMIN XMAX YMAX ZMAX with min < max, got {values.tolist()}')
    return values
