"""Camera messages → `CaptureSession` calls: what the capture node and ``f3rm-ros import-bag`` share.

`CaptureInputs` takes the messages a robot camera sends (``sensor_msgs/Image``, ``CompressedImage`` from
image_transport's ``compressed`` and ``compressedDepth`` plugins, ``CameraInfo``, ``PoseStamped``) and feeds one
`CaptureSession`, so a live scan and a recorded one (rosbag2, read with the pip ``rosbags`` library, whose
messages have the same fields) go through the same conversions and the same keyframe gate. Messages are read
by field name only (duck typing): rclpy messages and rosbags' dataclasses both work.

Problems are handed to `report(kind, message, level)` with the topic and what to change; the frame concerned is
skipped (or kept without the bad aligned input) and the caller goes on.

`TfPoseLookup` asks a tf2 buffer (``tf2_ros.Buffer`` or anything with its ``lookup_transform(target, source,
time, timeout)``) for the camera's (or, with a hand-eye calibration, the end effector's) pose at an image stamp.
"""
from __future__ import annotations

# Imported where used (optional): rclpy, only by `TfPoseLookup`; `f3rm-ros import-bag` reads bags without ROS.
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..core.capture.session import CaptureSession, Outcome
from . import conversions as conv

Report = Callable[[str, str, str], None]


def _stamp(msg: Any) -> float:
    return conv.stamp_to_seconds(msg.header.stamp)


class CaptureInputs:
    """Feeds one `CaptureSession` from camera messages (see the module docstring).

    `topics` names the inputs in messages (``{'image': '/camera/camera/color/image_raw', ...}``); `base_frame`
    is what pose messages must be expressed in; `info(text)` receives one-off notes (a new camera model).
    """

    def __init__(self, session: CaptureSession, base_frame: str, report: Report,
                 info: Callable[[str], None] = lambda text: None, topics: Optional[Dict[str, str]] = None,
                 depth_scale: float = 0.001):
        self.session = session
        self.base_frame = base_frame
        self.report = report
        self.info = info
        self.topics = {name: name for name in ('image', 'camera_info', 'depth', 'labels', 'mask', 'camera_pose')}
        self.topics.update(topics or {})
        self.depth_scale = float(depth_scale)
        self.camera_frame = ''
        self._camera_key = None

    # ------------------------------------------------------------------------------------------ camera

    def camera_info(self, msg: Any) -> List[Outcome]:
        """Intrinsics and distortion of the colour images; a model that cannot be used refuses the images."""
        try:
            K, width, height, distortion = conv.camera_info_to_camera(msg)
        except ValueError as error:
            reason = (f'{self.topics["camera_info"]}: {error}; images are skipped until a usable camera_info '
                      'arrives')
            self.session.refuse_camera_info(reason)
            self._camera_key = None
            self.report('camera_info', reason, 'error')
            return []
        key = (K.tobytes(), width, height, distortion)
        if key != self._camera_key:
            self._camera_key = key
            self.session.set_camera_info(K, width, height, distortion)
            if self.session.camera_note:
                self.info(self.session.camera_note)
                self.session.camera_note = ''
        return []

    # ------------------------------------------------------------------------------------------ colour

    def image(self, msg: Any) -> List[Outcome]:
        """Take a raw ``sensor_msgs/Image`` of the colour input."""
        stamp = _stamp(msg)
        self.camera_frame = msg.header.frame_id or self.camera_frame
        try:
            conv.check_colour_encoding(msg.encoding)
        except ValueError as error:
            return [self.session.refuse(stamp, 'encoding', f'{self.topics["image"]}: {error}')]
        return self._after(self.session.add_image(stamp, msg.width, msg.height, lambda: conv.image_to_rgb(msg),
                                                  msg.header.frame_id))

    def compressed_image(self, msg: Any) -> List[Outcome]:
        """Take a jpeg / png ``CompressedImage`` of the colour input (decoded only if it may be kept)."""
        stamp = _stamp(msg)
        self.camera_frame = msg.header.frame_id or self.camera_frame
        camera = self.session.camera
        width, height = (camera.width, camera.height) if camera is not None else (0, 0)
        topic = self.topics['image']

        def load():
            try:
                return conv.compressed_to_rgb(msg)
            except ValueError as error:
                raise ValueError(f'{topic}/compressed: {error}; frame skipped') from error
        return self._after(self.session.add_image(stamp, width, height, load, msg.header.frame_id))

    # ------------------------------------------------------------------------------------------ aligned

    def depth(self, msg: Any) -> List[Outcome]:
        """Take a raw depth image (16UC1 mm or 32FC1 m), aligned to the colour camera."""
        topic = self.topics['depth']
        encoding = msg.encoding

        def load():
            if encoding not in ('16UC1', 'mono16', '32FC1'):
                raise ValueError(f'{topic} has encoding {encoding!r}; expected 16UC1 (mm) or 32FC1 (m) depth')
            return conv.depth_to_metres(msg, self.depth_scale)
        return self._aux('depth', msg, load)

    def compressed_depth(self, msg: Any) -> List[Outcome]:
        """Take a ``compressedDepth`` CompressedImage (16UC1 or 32FC1, PNG after its 12-byte header)."""
        topic = self.topics['depth']

        def load():
            try:
                return conv.compressed_depth_to_metres(msg, self.depth_scale)
            except ValueError as error:
                raise ValueError(f'{topic}/compressedDepth: {error}') from error
        return self._aux('depth', msg, load)

    def labels(self, msg: Any) -> List[Outcome]:
        """Take an object-id image aligned to the colour image (synthetic scans, annotated datasets)."""
        return self._aux('labels', msg, lambda: conv.image_to_labels(msg))

    def mask(self, msg: Any) -> List[Outcome]:
        """Take the per-frame mask image (mono8, aligned; 0 = ignore the pixel, e.g. the gripper's fingers)."""
        topic = self.topics['mask']

        def load():
            try:
                return conv.image_to_mask(msg).astype(np.uint8)
            except ValueError as error:
                raise ValueError(f'{topic}: {error}') from error
        return self._aux('mask', msg, load)

    def _aux(self, kind: str, msg: Any, load: Callable[[], np.ndarray]) -> List[Outcome]:
        return self._after(self.session.add_aux(kind, _stamp(msg), load, msg.header.frame_id))

    # ------------------------------------------------------------------------------------------ poses

    def pose(self, msg: Any) -> List[Outcome]:
        """``geometry_msgs/PoseStamped`` of the camera's optical frame (or the end effector's) in `base_frame`."""
        topic = self.topics['camera_pose']
        if msg.header.frame_id and msg.header.frame_id.lstrip('/') != self.base_frame.lstrip('/'):
            self.report('pose', f'{topic} is in frame {msg.header.frame_id!r}, expected {self.base_frame!r} '
                                '(workspace.base_frame); ignored', 'warn')
            return []
        try:
            T = conv.pose_to_matrix(msg.pose)
            return self._after(self.session.add_pose(_stamp(msg), T))
        except ValueError as error:
            self.report('pose', f'{topic} ignored: {error}', 'warn')
            return []

    def poll(self) -> List[Outcome]:
        """Settle waiting images (their pose or aligned images arrived, or their wait ran out)."""
        return self._after(self.session.poll())

    def _after(self, outcomes: List[Outcome]) -> List[Outcome]:
        for kind, message in self.session.take_problems():
            self.report(kind, message, 'error')
        if self.session.stamp_note:
            self.report('stamp_note', self.session.stamp_note, 'warn')
            self.session.stamp_note = ''
        return outcomes


class TfPoseLookup:
    """Pose at an image stamp from a tf2 buffer: ``base_frame`` ← `frame` (the camera's, or the end effector's).

    `frame_of(stamp)` names the source frame of the image at that stamp (its header.frame_id) when `frame` is
    empty. tf2's exceptions (lookup, connectivity, extrapolation) come back as the reason; the capture waits
    (`pose_wait_s`) for TF that is late and then refuses the frame with it.
    """

    def __init__(self, buffer: Any, base_frame: str, frame: str = '',
                 frame_of: Callable[[float], str] = lambda stamp: '', timeout_s: float = 0.0):
        self.buffer = buffer
        self.base_frame = base_frame
        self.frame = frame
        self.frame_of = frame_of
        self.timeout_s = float(timeout_s)

    def __call__(self, stamp: float):
        """Return (T_base_frame or None, how / why not)."""
        from rclpy.duration import Duration
        from rclpy.time import Time
        frame = self.frame or self.frame_of(stamp)
        if not frame:
            return None, 'the image has no header.frame_id and camera_frame is empty'
        try:
            transform = self.buffer.lookup_transform(self.base_frame, frame, Time(nanoseconds=int(round(stamp * 1e9))),
                                                     Duration(seconds=self.timeout_s))
            return conv.transform_to_matrix(transform.transform), f'tf {self.base_frame} <- {frame}'
        except Exception as error:  # tf2 raises several exception types; all mean "not (yet) at this stamp"
            return None, f'tf {self.base_frame} <- {frame} at {stamp:.3f} s: {type(error).__name__}: {error}'
