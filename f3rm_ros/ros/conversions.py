"""ROS messages <-> numpy without cv_bridge or sensor_msgs_py (neither exists as a wheel).

Conventions:
* Images come out as H x W x 3 uint8 RGB; depth as H x W float32 metres with 0 = invalid.
* Poses are 4 x 4 float64 homogeneous matrices; NaN or non-rigid input raises ValueError.
* A ``stamp`` argument may be a ``builtin_interfaces/Time``, an ``rclpy.time.Time`` or float seconds.
* Large ``uint8[]`` fields are filled with an ``array.array('B')`` built from the numpy buffer: that is one
  memcpy whether or not ROS_PYTHON_CHECK_FIELDS is set (a ``bytes`` value costs ~0.5 s per 4 MB when it is,
  a numpy array ~1 s always).
* Channel swaps use OpenCV (already a core dependency): 20-30x faster than numpy strided copies.
"""
from __future__ import annotations

import array
import json
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core.capture import compressed
from ..core.query.cloud import (CLOUD_FIELDS, CLOUD_POINT_STEP, NORMAL_FIELDS, NORMALS_POINT_STEP, pack_cloud_points,
                                pack_rgb)
from ..core.capture.distortion import Distortion, from_camera_info
from ..core.geometry import check_rigid, matrix_to_quaternion, quaternion_to_matrix

StampLike = Union[Time, float, int, Any]

# tf2's tolerance on |q|^2 - 1 before it refuses a quaternion as not normalised.
QUATERNION_NORM_TOLERANCE = 1e-2

# encoding -> (channels, bytes per channel)
_COLOR_ENCODINGS = {
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1),
    'mono8': (1, 1), '8UC1': (1, 1), '8UC3': (3, 1), 'mono16': (1, 2),
}
# Encodings of depth / range images (REP 118): on a colour input they are a wiring mistake, not grey pictures.
_NOT_COLOUR = ('16UC1', '32FC1', '16SC1', '32SC1', '64FC1')
_DEPTH_ENCODINGS = {'16UC1': '<u2', 'mono16': '<u2', '32FC1': '<f4'}

# PointField datatype -> numpy dtype (little endian; swapped for big-endian clouds)
_POINTFIELD_DTYPES = {
    PointField.INT8: np.dtype('i1'), PointField.UINT8: np.dtype('u1'),
    PointField.INT16: np.dtype('<i2'), PointField.UINT16: np.dtype('<u2'),
    PointField.INT32: np.dtype('<i4'), PointField.UINT32: np.dtype('<u4'),
    PointField.FLOAT32: np.dtype('<f4'), PointField.FLOAT64: np.dtype('<f8'),
}


# ----------------------------------------------------------------------------------------------- stamps

def stamp_to_seconds(stamp: Time) -> float:
    """``builtin_interfaces/Time`` (or anything with sec/nanosec) → float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds → ``builtin_interfaces/Time`` (nanosecond rounding; negative times allowed)."""
    seconds = float(seconds)
    if not math.isfinite(seconds):
        raise ValueError(f'stamp must be finite, got {seconds}')
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    if not -2 ** 31 <= sec < 2 ** 31:
        raise ValueError(f'stamp {seconds} s does not fit builtin_interfaces/Time (int32 seconds)')
    return Time(sec=int(sec), nanosec=nanosec)


def as_stamp(stamp: StampLike) -> Time:
    """Normalise a stamp argument: builtin Time (copied), rclpy Time (``to_msg``) or float seconds."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return Time(sec=stamp.sec, nanosec=stamp.nanosec)
    if hasattr(stamp, 'to_msg'):
        return stamp.to_msg()
    if hasattr(stamp, 'sec') and hasattr(stamp, 'nanosec'):
        return Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
    return seconds_to_stamp(stamp)


def make_header(frame_id: str, stamp: StampLike) -> Header:
    """``std_msgs/Header`` from a frame id and any stamp-like value."""
    return Header(stamp=as_stamp(stamp), frame_id=str(frame_id))


def as_uint8_array(values: np.ndarray) -> array.array:
    """Contiguous numpy buffer → ``array.array('B')`` (one memcpy), the fast value for uint8[] fields."""
    out = array.array('B')
    out.frombytes(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
    return out


def _buffer(data: Any) -> np.ndarray:
    """Return a message's uint8[] field as a flat uint8 numpy view (array.array, bytes or a list)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


# ----------------------------------------------------------------------------------------------- images

def _image_view(msg: Image, channels: int, dtype: np.dtype) -> np.ndarray:
    """H x W x C view of an image message's pixels, honouring ``step`` padding; checks all sizes."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f'{msg.encoding!r} image has no pixels ({width} x {height})')
    pixel_bytes = channels * dtype.itemsize
    if step < width * pixel_bytes:
        raise ValueError(f'{msg.encoding!r} image step {step} is smaller than width {width} x '
                         f'{pixel_bytes} bytes per pixel = {width * pixel_bytes}')
    data = _buffer(msg.data)
    # The last row's padding may be left out; anything shorter (or longer than step * height) is corrupt.
    needed = step * (height - 1) + width * pixel_bytes
    if not needed <= data.size <= step * height:
        raise ValueError(f'{msg.encoding!r} image of {width} x {height} with step {step} needs '
                         f'{step * height} bytes of data, got {data.size}')
    if msg.is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder('>')
    return np.ndarray((height, width, channels), dtype=dtype, buffer=data,
                      strides=(step, pixel_bytes, dtype.itemsize))


def check_colour_encoding(encoding: str) -> None:
    """Raise ValueError with the reason unless `encoding` is a colour or grey encoding `image_to_rgb` reads."""
    if encoding in _NOT_COLOUR:
        raise ValueError(f'encoding {encoding!r} is a depth image, not a colour one: remap the depth topic to '
                         "'depth', and the camera's colour topic to 'image' (a 16-bit grey camera publishes mono16)")
    if encoding not in _COLOR_ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}; expected one of '
                         f'{", ".join(sorted(_COLOR_ENCODINGS))}')


def image_to_rgb(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` → H x W x 3 uint8 RGB (a fresh contiguous array).

    Encodings: rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 / 8UC1 (grey replicated), 8UC3 (taken as
    BGR, OpenCV's order), mono16 (top 8 bits). Row padding (``step``) and ``is_bigendian`` are honoured.
    Depth encodings (16UC1, 32FC1 ...) are refused with a reason: a depth image on a colour input.
    """
    check_colour_encoding(msg.encoding)
    encoding = msg.encoding
    channels, item = _COLOR_ENCODINGS[encoding]
    pixels = _image_view(msg, channels, np.dtype('u1') if item == 1 else np.dtype('<u2'))
    # Every branch returns a new array, never a view of the message buffer.
    if encoding == 'mono16':
        return cv2.cvtColor((pixels[..., 0] >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    if channels == 1:
        return cv2.cvtColor(pixels[..., 0], cv2.COLOR_GRAY2RGB)
    if encoding in ('bgr8', '8UC3'):
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    return np.array(pixels, order='C')


def depth_to_metres(msg: Image, depth_scale: float = 0.001) -> np.ndarray:
    """Depth image → H x W float32 metres, 0 where invalid (0, NaN, inf or negative).

    16UC1 / mono16 hold millimetres (``depth_scale`` metres per unit); 32FC1 holds metres.
    """
    if msg.encoding not in _DEPTH_ENCODINGS:
        raise ValueError(f'unsupported depth encoding {msg.encoding!r}; expected one of '
                         f'{", ".join(sorted(_DEPTH_ENCODINGS))}')
    raw = _image_view(msg, 1, np.dtype(_DEPTH_ENCODINGS[msg.encoding]))[..., 0]
    if msg.encoding == '32FC1':
        depth = raw.astype(np.float32)
    else:
        depth = raw.astype(np.float32) * np.float32(depth_scale)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def rgb_to_image(rgb: np.ndarray, stamp: StampLike, frame_id: str, encoding: str = 'rgb8') -> Image:
    """H x W x 3 uint8 RGB (or H x W grey for mono8) → ``sensor_msgs/Image`` with a tight ``step``.

    `encoding` is rgb8, bgr8 (channels are swapped here) or mono8.
    """
    pixels = np.asarray(rgb)
    if pixels.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {pixels.dtype}')
    if encoding in ('rgb8', 'bgr8'):
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f'{encoding} image must be H x W x 3, got {pixels.shape}')
        if encoding == 'bgr8':
            pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)
    elif encoding == 'mono8':
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[..., 0]
        if pixels.ndim != 2:
            raise ValueError(f'mono8 image must be H x W, got {pixels.shape}')
    else:
        raise ValueError(f'unsupported output encoding {encoding!r}; expected rgb8, bgr8 or mono8')
    height, width = pixels.shape[:2]
    msg = Image()
    msg.header = make_header(frame_id, stamp)
    msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, encoding, 0
    msg.step = width * (1 if pixels.ndim == 2 else 3)
    msg.data = as_uint8_array(pixels)
    return msg


# ----------------------------------------------------------------------- aligned images and label names

LABEL_ENCODINGS = ('16UC1', 'mono16', '8UC1', 'mono8')


def depth_to_image(depth: np.ndarray, stamp, frame_id: str) -> Image:
    """H x W float32 metres (0 = invalid) → ``32FC1`` Image (little endian, tight step)."""
    values = np.ascontiguousarray(np.asarray(depth, dtype='<f4'))
    if values.ndim != 2:
        raise ValueError(f'depth must be H x W, got {values.shape}')
    return _raw_image(values, '32FC1', 4, stamp, frame_id)


def labels_to_image(labels: np.ndarray, stamp, frame_id: str) -> Image:
    """H x W object ids (0 = background) → ``16UC1`` Image (little endian, tight step)."""
    values = np.asarray(labels)
    if values.ndim != 2:
        raise ValueError(f'label image must be H x W, got {values.shape}')
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError('object ids must be in 0..65535')
    return _raw_image(np.ascontiguousarray(values.astype('<u2')), '16UC1', 2, stamp, frame_id)


def _raw_image(values: np.ndarray, encoding: str, itemsize: int, stamp, frame_id: str) -> Image:
    msg = Image()
    msg.header = make_header(frame_id, stamp)
    msg.height, msg.width = values.shape
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, values.shape[1] * itemsize
    msg.data = as_uint8_array(values)
    return msg


def image_to_mask(msg: Image) -> np.ndarray:
    """Mask Image (mono8 / 8UC1, non-zero = keep the pixel, 0 = ignore it: a gripper in view) → H x W bool."""
    if msg.encoding not in ('mono8', '8UC1'):
        raise ValueError(f'unsupported mask encoding {msg.encoding!r}; expected mono8 (255 = keep, 0 = ignore)')
    return _image_view(msg, 1, np.dtype('u1'))[..., 0] > 0


def mask_to_image(mask: np.ndarray, stamp, frame_id: str) -> Image:
    """H x W bool (True = keep) → ``mono8`` Image, 255 = keep, 0 = ignore (nerfstudio's mask convention)."""
    values = np.asarray(mask)
    if values.ndim != 2:
        raise ValueError(f'mask must be H x W, got {values.shape}')
    return _raw_image(np.ascontiguousarray((values > 0).astype(np.uint8) * 255), 'mono8', 1, stamp, frame_id)


# ----------------------------------------------------------------------------------- compressed images

def compressed_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg / png, image_transport ``compressed``) → H x W x 3 uint8 RGB."""
    return compressed.decode_colour(str(msg.format), msg.data)


def compressed_depth_to_metres(msg: Any, depth_scale: float = 0.001) -> np.ndarray:
    """``compressedDepth`` CompressedImage (16UC1 mm or 32FC1 m, PNG after a 12-byte header) → H x W metres."""
    return compressed.decode_depth(str(msg.format), msg.data, depth_scale)


def image_to_labels(msg: Image) -> np.ndarray:
    """Label Image (16UC1 / mono16 / 8UC1 / mono8 object ids) → H x W uint16."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ValueError(f'unsupported label encoding {msg.encoding!r}; expected one of {LABEL_ENCODINGS}')
    if msg.encoding in ('16UC1', 'mono16'):
        # depth_to_metres with scale 1 returns the raw 16-bit values as float32: exact for 0..65535.
        return depth_to_metres(msg, 1.0).astype(np.uint16)
    return image_to_rgb(msg)[..., 0].astype(np.uint16)


def encode_label_names(names: Mapping[int, str]) -> str:
    """{id: name} → JSON text for a ``std_msgs/String`` (``{"1": "mug", ...}``)."""
    return json.dumps({str(int(k)): str(v) for k, v in sorted(names.items())})


def decode_label_names(text: str) -> Dict[int, str]:
    """JSON ``{"1": "mug"}`` → {1: 'mug'}; ValueError with the reason for anything else."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f'label names are not JSON: {error}') from error
    if not isinstance(data, dict):
        raise ValueError(f'label names must be a JSON object {{"id": "name"}}, got {type(data).__name__}')
    try:
        return {int(k): str(v) for k, v in data.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f'label ids must be integers: {error}') from error


# --------------------------------------------------------------------------------------- camera info

def camera_info_to_K(msg: CameraInfo) -> Tuple[np.ndarray, int, int]:
    """``sensor_msgs/CameraInfo`` → (K 3 x 3 float64, width, height); raises on an uncalibrated camera.

    K alone, as the message says it: for the camera of raw images with their distortion see `camera_info_to_camera`
    (the trainer reads the capture's keyframe camera_info, which is pinhole with zero distortion).
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ValueError(f'camera_info has no image size ({width} x {height})')
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not np.all(np.isfinite(K)) or not (fx > 0 and fy > 0):
        raise ValueError(f'camera_info is not calibrated: fx={fx}, fy={fy} (K={K.reshape(-1).tolist()})')
    if not (np.isfinite(cx) and np.isfinite(cy)):
        raise ValueError(f'camera_info principal point is not finite: cx={cx}, cy={cy}')
    return K, width, height


def camera_info_to_camera(msg: Any) -> Tuple[np.ndarray, int, int, Optional[Distortion]]:
    """``sensor_msgs/CameraInfo`` → (K, width, height, lens distortion or None) of the images it describes.

    ``distortion_model`` plumb_bob, rational_polynomial or equidistant with non-zero ``d``: K and that
    distortion (the capture undistorts each keyframe once). All-zero ``d`` (a pinhole or a rectified stream,
    ``image_rect``): the camera is P's left 3 x 3 when P is set (a rectified stream's K may describe the raw
    sensor). ValueError for an uncalibrated camera or an unknown model (naming it).
    """
    K, width, height = camera_info_to_K(msg)
    P = np.asarray(msg.p, dtype=np.float64) if len(msg.p) == 12 else None
    try:
        K, distortion = from_camera_info(str(msg.distortion_model), list(msg.d), K, P)
    except ValueError as error:
        raise ValueError(f'camera_info distortion: {error}') from error
    return K, width, height, distortion


def K_to_camera_info(K: np.ndarray, width: int, height: int, stamp: StampLike,
                     frame_id: str) -> CameraInfo:
    """Pinhole intrinsics → ``sensor_msgs/CameraInfo`` (plumb_bob, zero distortion, R = I, P = [K | 0])."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'K must be a finite 3 x 3 with positive focal lengths, got {K.tolist()}')
    msg = CameraInfo()
    msg.header = make_header(frame_id, stamp)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = 'plumb_bob'
    msg.d = array.array('d', [0.0] * 5)
    msg.k = K.reshape(-1).copy()
    msg.r = np.eye(3).reshape(-1)
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = P.reshape(-1)
    return msg


# ------------------------------------------------------------------------------------------------ poses

def _quaternion_xyzw(q: Quaternion) -> np.ndarray:
    """Message quaternion → normalised array, refusing NaN, zero or clearly unnormalised values (as tf2)."""
    values = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f'quaternion contains NaN or inf: {values.tolist()}')
    if abs(float(values @ values) - 1.0) > QUATERNION_NORM_TOLERANCE:
        norm = np.linalg.norm(values)
        raise ValueError(f'quaternion {values.tolist()} is not normalised (norm {norm:.4f})')
    return values / np.linalg.norm(values)


def _matrix(translation: Sequence[float], q: Quaternion) -> np.ndarray:
    t = np.array(translation, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f'translation contains NaN or inf: {t.tolist()}')
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(_quaternion_xyzw(q))
    T[:3, 3] = t
    return T


def _checked(T: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Return (translation, quaternion xyzw) of a rigid 4 x 4; ValueError otherwise."""
    T = np.asarray(T, dtype=np.float64)
    check_rigid(T)
    return T[:3, 3], matrix_to_quaternion(T[:3, :3])


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` → 4 x 4 float64."""
    return _matrix((pose.position.x, pose.position.y, pose.position.z), pose.orientation)


def matrix_to_pose(T: np.ndarray) -> Pose:
    """Rigid 4 x 4 → ``geometry_msgs/Pose``."""
    t, q = _checked(T)
    return Pose(position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def pose_stamped(T: np.ndarray, frame_id: str, stamp: StampLike) -> PoseStamped:
    """Rigid 4 x 4 → ``geometry_msgs/PoseStamped`` in `frame_id`."""
    return PoseStamped(header=make_header(frame_id, stamp), pose=matrix_to_pose(T))


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """``geometry_msgs/Transform`` (e.g. ``TransformStamped.transform`` from tf2) → 4 x 4 float64."""
    v = transform.translation
    return _matrix((v.x, v.y, v.z), transform.rotation)


def matrix_to_transform(T: np.ndarray) -> Transform:
    """Rigid 4 x 4 → ``geometry_msgs/Transform``."""
    t, q = _checked(T)
    return Transform(translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                     rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def make_pose_array(poses: Iterable[np.ndarray], frame_id: str, stamp: StampLike) -> PoseArray:
    """List of rigid 4 x 4 → ``geometry_msgs/PoseArray``."""
    return PoseArray(header=make_header(frame_id, stamp), poses=[matrix_to_pose(T) for T in poses])


# ---------------------------------------------------------------------------------------- point clouds

def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """[N] uint32 0x00RRGGBB (or its float32 bit pattern) → [N, 3] uint8."""
    packed = np.ascontiguousarray(packed)
    if packed.dtype.kind == 'f':
        packed = packed.astype(packed.dtype.newbyteorder('=')).view(np.uint32)
    packed = packed.astype(np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)


def make_point_cloud2(xyz: np.ndarray, rgb: Optional[np.ndarray], similarity: Optional[np.ndarray],
                      frame_id: str, stamp: StampLike, normals: Optional[np.ndarray] = None) -> PointCloud2:
    """Heatmap points → ``sensor_msgs/PointCloud2`` with fields x, y, z, rgb, similarity (all FLOAT32).

    Layout: offsets 0, 4, 8, 12, 16; point_step 20; height 1; little endian. ``rgb`` holds the uint32
    0x00RRGGBB bit pattern (the PCL/RViz convention). `rgb` None → white; `similarity` None → 0.
    With `normals` [N, 3] (unit surface normals), normal_x, normal_y, normal_z follow at 20, 24, 28 (point_step
    32: PCL's PointXYZRGBNormal names, as RViz and grasp planners read them).
    ``is_dense`` is True unless some coordinate is NaN or inf.
    """
    points = pack_cloud_points(xyz, rgb, similarity, normals)
    n = points.shape[0]
    fields, step = (CLOUD_FIELDS, CLOUD_POINT_STEP) if normals is None else (CLOUD_FIELDS + NORMAL_FIELDS,
                                                                             NORMALS_POINT_STEP)
    msg = PointCloud2()
    msg.header = make_header(frame_id, stamp)
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in fields]
    msg.is_bigendian = False
    msg.point_step = step
    msg.row_step = step * n
    msg.is_dense = bool(np.isfinite(points[:, :3]).all())
    msg.data = as_uint8_array(points)
    return msg


def point_cloud2_normals(msg: PointCloud2) -> Optional[np.ndarray]:
    """Return the normal_x/y/z fields of a ``PointCloud2`` as [N, 3] float32, or None when it has none.

    Any layout, as `point_cloud2_to_arrays` reads it.
    """
    names = [name for name, _ in NORMAL_FIELDS]
    fields = {f.name: f for f in msg.fields}
    if not all(name in fields for name in names):
        return None
    height, width, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    formats = []
    for name in names:
        if fields[name].datatype not in _POINTFIELD_DTYPES:
            raise ValueError(f'point cloud field {name!r} has unknown datatype {fields[name].datatype}')
        dtype = _POINTFIELD_DTYPES[fields[name].datatype]
        formats.append(dtype.newbyteorder('>') if msg.is_bigendian else dtype)
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': [fields[n].offset for n in names],
                      'itemsize': point_step})
    if height * width == 0:
        return np.zeros((0, 3), np.float32)
    points = np.ndarray((height, width), dtype=dtype, buffer=_buffer(msg.data), strides=(row_step, point_step))
    points = points.reshape(-1)
    return np.stack([points[name] for name in names], axis=-1).astype(np.float32)


def point_cloud2_to_arrays(msg: PointCloud2) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """``sensor_msgs/PointCloud2`` → (xyz [N, 3] float32, rgb [N, 3] uint8 or None, similarity [N] or None).

    Any layout: field offsets, ``point_step``, ``row_step`` padding, height > 1 and big-endian data are
    honoured; ``rgb`` (or ``rgba``) may be FLOAT32 or UINT32.
    """
    fields = {f.name: f for f in msg.fields}
    missing = [name for name in 'xyz' if name not in fields]
    if missing:
        raise ValueError(f'point cloud has no {"/".join(missing)} field (fields: {sorted(fields)})')
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if point_step <= 0 or row_step < width * point_step:
        raise ValueError(f'point cloud point_step {point_step} / row_step {row_step} do not fit '
                         f'width {width}')
    names, formats, offsets = [], [], []
    for name in ('x', 'y', 'z', 'rgb', 'rgba', 'similarity'):
        field = fields.get(name)
        if field is None:
            continue
        if field.datatype not in _POINTFIELD_DTYPES:
            raise ValueError(f'point cloud field {name!r} has unknown datatype {field.datatype}')
        dtype = _POINTFIELD_DTYPES[field.datatype]
        if field.offset + dtype.itemsize > point_step:
            raise ValueError(f'point cloud field {name!r} at offset {field.offset} overruns point_step '
                             f'{point_step}')
        names.append(name)
        formats.append(dtype.newbyteorder('>') if msg.is_bigendian else dtype)
        offsets.append(field.offset)
    data = _buffer(msg.data)
    needed = row_step * (height - 1) + width * point_step if height > 0 else 0
    if data.size < needed:
        raise ValueError(f'point cloud of {width} x {height} points (point_step {point_step}, row_step '
                         f'{row_step}) needs {needed} bytes of data, got {data.size}')
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': point_step})
    if height * width == 0:
        points = np.zeros(0, dtype=dtype)
    else:
        points = np.ndarray((height, width), dtype=dtype, buffer=data, strides=(row_step, point_step))
        points = points.reshape(-1)
    xyz = np.stack([points['x'], points['y'], points['z']], axis=-1).astype(np.float32)
    rgb_name = 'rgb' if 'rgb' in names else ('rgba' if 'rgba' in names else None)
    rgb = unpack_rgb(points[rgb_name]) if rgb_name else None
    similarity = points['similarity'].astype(np.float32) if 'similarity' in names else None
    return xyz, rgb, similarity


# --------------------------------------------------------------------------------------------- markers

# Colour by rank (best first): red, orange, yellow, green, cyan, blue, violet; then repeats.
RANK_COLOURS = ((0.90, 0.10, 0.10), (1.00, 0.55, 0.00), (0.95, 0.90, 0.10), (0.20, 0.80, 0.20),
                (0.10, 0.80, 0.85), (0.20, 0.35, 0.95), (0.65, 0.25, 0.90))


def _get(cluster: Any, key: str, default: Any = None) -> Any:
    if isinstance(cluster, Mapping):
        return cluster.get(key, default)
    return getattr(cluster, key, default)


def markers_from_clusters(clusters: Sequence[Any], query: str, frame_id: str, stamp: StampLike,
                          namespace: str = 'f3rm', text_height: float = 0.03,
                          alpha: float = 0.5) -> MarkerArray:
    """Clusters → ``visualization_msgs/MarkerArray``: DELETEALL, then per cluster a CUBE and a label.

    Each cluster is a mapping or object with ``centroid`` [3], ``extent`` [3] (box size, metres), ``relevancy``
    and optionally ``rotation`` (3 x 3, box axes in `frame_id`). Clusters come best first (the order the
    query ranked them, shared with the grasp PoseArray): rank r gets
    ids 2r (cube) and 2r + 1 (TEXT_VIEW_FACING ``"<query> <mean relevancy>"`` just above the box) and colour
    ``RANK_COLOURS[r]``.
    """
    header = make_header(frame_id, stamp)
    out = MarkerArray()
    # An empty namespace clears every earlier answer's markers, whatever namespace they used.
    out.markers.append(Marker(header=header, ns='', id=0, action=Marker.DELETEALL))
    ranked = list(clusters)
    for rank, cluster in enumerate(ranked):
        centroid = np.asarray(_get(cluster, 'centroid'), dtype=np.float64).reshape(3)
        extent = np.asarray(_get(cluster, 'extent'), dtype=np.float64).reshape(3)
        relevancy = float(_get(cluster, 'relevancy', 0.0))
        rotation = _get(cluster, 'rotation')
        T = np.eye(4)
        T[:3, 3] = centroid
        if rotation is not None:
            T[:3, :3] = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        pose = matrix_to_pose(T)
        size = np.maximum(np.abs(extent), 1e-3)  # RViz warns about (and may hide) zero-size boxes
        r, g, b = RANK_COLOURS[rank % len(RANK_COLOURS)]
        cube = Marker(header=header, ns=namespace, id=2 * rank, type=Marker.CUBE, action=Marker.ADD,
                      pose=pose, scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
                      color=ColorRGBA(r=r, g=g, b=b, a=float(alpha)))
        # Put the label above the box's highest corner, whatever its rotation.
        half_height = 0.5 * float(np.abs(T[2, :3]) @ size)
        label_pose = Pose(position=Point(x=float(centroid[0]), y=float(centroid[1]),
                                         z=float(centroid[2] + half_height + text_height)),
                          orientation=Quaternion(w=1.0))
        label = Marker(header=header, ns=namespace, id=2 * rank + 1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, pose=label_pose, scale=Vector3(z=float(text_height)),
                       color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0), text=f'{query} {relevancy:.2f}')
        out.markers.extend([cube, label])
    return out


__all__: List[str] = [
    'stamp_to_seconds', 'seconds_to_stamp', 'as_stamp', 'make_header',
    'check_colour_encoding', 'image_to_rgb', 'depth_to_metres', 'rgb_to_image', 'depth_to_image', 'labels_to_image',
    'image_to_labels', 'encode_label_names', 'decode_label_names', 'LABEL_ENCODINGS',
    'image_to_mask', 'mask_to_image', 'compressed_to_rgb', 'compressed_depth_to_metres',
    'camera_info_to_K', 'camera_info_to_camera', 'K_to_camera_info',
    'pose_to_matrix', 'matrix_to_pose', 'pose_stamped', 'transform_to_matrix', 'matrix_to_transform',
    'make_pose_array', 'pack_rgb', 'unpack_rgb', 'make_point_cloud2', 'point_cloud2_to_arrays', 'point_cloud2_normals',
    'markers_from_clusters', 'CLOUD_FIELDS', 'CLOUD_POINT_STEP', 'RANK_COLOURS',
]
