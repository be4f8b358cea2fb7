"""Catalogue of bad inputs an operator's robot sends the nodes, each with the clear error it must get back.

Used by ``f3rm-ros bench faults`` (`fault_campaign`): every case is sent in a burst to a running node, which
must answer with an error naming the problem (on ``/diagnostics`` as ``last_problem``, in the parameter
service's reason, or in the query answer's reason), log it at most a few times (throttled), and go on serving.

A case is one of three kinds:

* `CaptureCase`: messages on the capture node's inputs (``image``, ``camera_info``, ``camera_pose``, ``depth``,
  ``labels``, ``mask``, ``label_names``) built by ``make(stamp)``; the status must name ``expect``.
* `ParameterCase`: a value set through ``<node>/set_parameters``; refused with a reason naming ``expect``.
* `QueryCase`: text on ``query/query``; answered ERROR with a reason naming ``expect`` (or, for text DDS itself
  cuts short, anything but FOUND).

Beside the messages, two faults of the host: a hostile checkpoint (`PicklePayload`) and a full disk (`fill_disk`).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple

import numpy as np
from std_msgs.msg import String

from ..ros import conversions as conv

W, H = 96, 72
K = np.array([[80.0, 0.0, 48.0], [0.0, 80.0, 36.0], [0.0, 0.0, 1.0]])
CAMERA_FRAME = 'cam_optical'
BASE_FRAME = 'base_link'

Message = Tuple[str, Any]   # (input topic relative to the capture node, message)


@dataclass(frozen=True)
class CaptureCase:
    """Bad messages for the capture node."""

    name: str
    make: Callable[[float, float], Sequence[Message]]   # (stamp, camera x in m) -> messages
    expect: str


@dataclass(frozen=True)
class ParameterCase:
    """A parameter value that would break a node."""

    name: str
    node: str
    parameter: str
    value: Any
    expect: str


@dataclass(frozen=True)
class QueryCase:
    """A query text that must be answered ERROR (or, with `not_found`, anything but FOUND)."""

    name: str
    text: str
    expect: str
    not_found: bool = False


def textured(seed: int, width: int = W, height: int = H) -> np.ndarray:
    """Sharp random texture (passes any blur test)."""
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def camera_pose(x: float, stamp: float, frame: str = BASE_FRAME):
    """Return the PoseStamped of an optical frame looking down the base's z axis from x metres along the base's x."""
    T = np.eye(4)
    T[0, 3] = x
    return conv.pose_stamped(T, frame, stamp)


def camera_info(stamp: float, width: int = W, height: int = H, K_: np.ndarray = K, model: str = 'plumb_bob',
                D: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0)):
    """Return a CameraInfo with the given intrinsics and distortion."""
    msg = conv.K_to_camera_info(K, width, height, stamp, CAMERA_FRAME)
    msg.k = [float(v) for v in np.asarray(K_, float).flatten()]   # set after: the converter refuses bad K
    msg.distortion_model = model
    msg.d = [float(v) for v in D]
    return msg


def good_frame(stamp: float, x: float, seed: int = 0) -> List[Message]:
    """One frame the capture node keeps: camera_info, the pose at the stamp, the image."""
    return [('camera_info', camera_info(stamp)), ('camera_pose', camera_pose(x, stamp)),
            ('image', conv.rgb_to_image(textured(seed), stamp, CAMERA_FRAME))]


def _raw_image(stamp: float, width: int, height: int, encoding: str, step: int, data: bytes, frame=CAMERA_FRAME):
    msg = conv.rgb_to_image(textured(0, 4, 4), stamp, frame)
    msg.width, msg.height, msg.encoding, msg.step = width, height, encoding, step
    msg.data = data
    return msg


def _with_pose(stamp: float, x: float, *messages: Message) -> List[Message]:
    """`messages` after camera_info and a pose at the stamp (so only the bad part is wrong)."""
    return [('camera_info', camera_info(stamp)), ('camera_pose', camera_pose(x, stamp)), *messages]


def _pose(stamp: float, x: float = 0.0, position=None, quaternion=(0.0, 0.0, 0.0, 1.0), frame=BASE_FRAME):
    msg = camera_pose(x, stamp, frame)
    if position is not None:
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = position
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = quaternion
    return msg


def _image_with_pose(stamp: float, pose_msg) -> List[Message]:
    return [('camera_info', camera_info(stamp)), ('camera_pose', pose_msg),
            ('image', conv.rgb_to_image(textured(1), stamp, CAMERA_FRAME))]


def _aux(stamp: float, x: float, topic: str, msg) -> List[Message]:
    """Send a good image with a bad aligned image (depth, labels, mask) at the same stamp."""
    return _with_pose(stamp, x, (topic, msg), ('image', conv.rgb_to_image(textured(2), stamp, CAMERA_FRAME)))


def _depth(width: int, height: int, stamp: float, frame: str = CAMERA_FRAME):
    return conv.depth_to_image(np.ones((height, width), np.float32), stamp, frame)


def capture_cases() -> List[CaptureCase]:
    """Every bad capture input of the campaign."""
    u16 = conv.as_uint8_array(np.ones((H, W), '<u2'))
    return [
        CaptureCase('unknown image encoding (yuv422 is not read)',
                    lambda s, x: _with_pose(s, x, ('image', _raw_image(s, W, H, 'yuv422', W * 2, bytes(W * H * 2)))),
                    'encoding'),
        CaptureCase('a 16UC1 depth image on the colour topic',
                    lambda s, x: _with_pose(s, x, ('image', _raw_image(s, W, H, '16UC1', W * 2, u16.tobytes()))),
                    '16UC1'),
        CaptureCase('image data shorter than step x height',
                    lambda s, x: _with_pose(s, x, ('image', _raw_image(s, W, H, 'rgb8', W * 3, bytes(W * 3 * 10)))),
                    'bytes'),
        CaptureCase('image step smaller than width x channels',
                    lambda s, x: _with_pose(s, x, ('image', _raw_image(s, W, H, 'rgb8', W, bytes(W * H * 3)))),
                    'step'),
        CaptureCase('an empty 0 x 0 image',
                    lambda s, x: _with_pose(s, x, ('image', _raw_image(s, 0, 0, 'rgb8', 0, b''))), '0 x 0'),
        CaptureCase('a 4000 x 3000 image while camera_info says 96 x 72',
                    lambda s, x: _with_pose(s, x, ('image', conv.rgb_to_image(
                        np.zeros((3000, 4000, 3), np.uint8), s, CAMERA_FRAME))), '4000 x 3000'),
        CaptureCase('image stamped 1 h in the future',
                    lambda s, x: _image_with_pose(s + 3600, camera_pose(x, s + 3600)), 'ahead of'),
        CaptureCase('image stamped 1 h in the past (stale)',
                    lambda s, x: _image_with_pose(s - 3600, camera_pose(x, s - 3600)), 'behind'),
        CaptureCase('image with a zero stamp (unstamped driver)',
                    lambda s, x: [('image', conv.rgb_to_image(textured(1), 0.0, CAMERA_FRAME))], 'zero or invalid'),
        CaptureCase('pose with a NaN position',
                    lambda s, x: _image_with_pose(s, _pose(s, position=(math.nan, 0.0, 0.0))), 'NaN'),
        CaptureCase('pose with a non-unit quaternion (norm 2)',
                    lambda s, x: _image_with_pose(s, _pose(s, x=x, quaternion=(0.0, 0.0, 0.0, 2.0))),
                    'not normalised'),
        CaptureCase('pose with a zero quaternion',
                    lambda s, x: _image_with_pose(s, _pose(s, x=x, quaternion=(0.0, 0.0, 0.0, 0.0))), 'quaternion'),
        CaptureCase('pose in another frame (map instead of base_link)',
                    lambda s, x: _image_with_pose(s, _pose(s, x=x, frame='map')), "'map'"),
        CaptureCase('image without any pose near its stamp',
                    lambda s, x: [('camera_info', camera_info(s)), ('camera_pose', camera_pose(x, s - 10.0)),
                                  ('image', conv.rgb_to_image(textured(1), s, CAMERA_FRAME))], 'no pose'),
        CaptureCase('camera_info with an all-zero K',
                    lambda s, x: [('camera_info', camera_info(s, K_=np.zeros((3, 3))))], 'camera_info'),
        CaptureCase('camera_info with NaN in K',
                    lambda s, x: [('camera_info', camera_info(s, K_=np.where(K > 0, np.nan, 0.0)))], 'camera_info'),
        CaptureCase('camera_info of another size (640 x 480) than the images',
                    lambda s, x: [('camera_info', camera_info(s, 640, 480)), ('camera_pose', camera_pose(x, s)),
                                  ('image', conv.rgb_to_image(textured(1), s, CAMERA_FRAME))], '640 x 480'),
        CaptureCase('an unknown distortion model',
                    lambda s, x: [('camera_info', camera_info(s, model='fisheye_xyz', D=(0.1, 0.0, 0.0, 0.0)))],
                    'fisheye_xyz'),
        CaptureCase('plumb_bob distortion with 8 coefficients',
                    lambda s, x: [('camera_info', camera_info(s, D=(0.1, 0.01, 0, 0, 0, 0.2, 0, 0)))], 'takes 5'),
        CaptureCase('a NaN distortion coefficient',
                    lambda s, x: [('camera_info', camera_info(s, D=(0.1, math.nan, 0, 0, 0)))], 'finite'),
        CaptureCase('depth of another size than the colour image',
                    lambda s, x: _aux(s, x, 'depth', _depth(W // 2, H // 2, s)), 'depth'),
        CaptureCase('depth as rgb8',
                    lambda s, x: _aux(s, x, 'depth', conv.rgb_to_image(textured(3), s, CAMERA_FRAME)), 'rgb8'),
        CaptureCase('depth in another frame than the colour image',
                    lambda s, x: _aux(s, x, 'depth', _depth(W, H, s, frame='camera_depth_optical_frame')),
                    'camera_depth_optical_frame'),
        CaptureCase('mask of another size',
                    lambda s, x: _aux(s, x, 'mask', conv.mask_to_image(np.ones((H // 2, W // 2), bool), s,
                                                                       CAMERA_FRAME)), 'mask'),
        CaptureCase('labels as rgb8',
                    lambda s, x: _aux(s, x, 'labels', conv.rgb_to_image(textured(4), s, CAMERA_FRAME)), 'labels'),
        CaptureCase('label_names that are not JSON',
                    lambda s, x: [('label_names', _string('{mug: 1'))], 'label_names'),
        CaptureCase('label_names as a JSON list',
                    lambda s, x: [('label_names', _string(json.dumps(['mug', 'bowl'])))], 'label_names'),
    ]


def _string(text: str):
    return String(data=text)


def parameter_cases() -> List[ParameterCase]:
    """Parameter values the nodes must refuse with a reason."""
    return [
        ParameterCase('capture min_interval_s = -1', 'capture', 'min_interval_s', -1.0, 'min_interval_s'),
        ParameterCase('capture max_image_side = 5 px', 'capture', 'max_image_side', 5, '>= 32'),
        ParameterCase('capture min_sharpness = NaN', 'capture', 'min_sharpness', math.nan, 'min_sharpness'),
        ParameterCase('query query.voxel_size = 1e-5 m (838 TiB of voxels)', 'query', 'query.voxel_size', 1e-5,
                      'voxel_size'),
        ParameterCase('query query.voxel_size = 0', 'query', 'query.voxel_size', 0.0, 'voxel_size'),
        ParameterCase('query query.temperature = NaN', 'query', 'query.temperature', math.nan, 'temperature'),
        ParameterCase('query query.temperature = -1', 'query', 'query.temperature', -1.0, 'temperature'),
        ParameterCase('query query.alpha_threshold = 2.0', 'query', 'query.alpha_threshold', 2.0,
                      'alpha_threshold'),
        ParameterCase('query image_width = 0', 'query', 'image_width', 0, 'image_width'),
    ]


def query_cases() -> List[QueryCase]:
    """Query texts that must be answered ERROR with a reason."""
    return [
        # DDS strings end at a NUL: the node receives 'mu', which must not be found on a table of mug, ball, box
        QueryCase('a query cut by a NUL byte (mu\\0g)', 'mu\x00g', "'mu'", not_found=True),
        QueryCase('a 10,000-character query', 'mug ' * 2500, 'characters'),
        QueryCase('an empty query', '', 'empty'),
        QueryCase('a query of separators only', ' , ,, ', 'empty'),
    ]


class PicklePayload:
    """A hostile checkpoint's object: unpickling it creates a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def fill_disk(folder: Path, leave_kb: int) -> Path:
    """Write a ballast file that leaves about `leave_kb` KB free; returns it (delete it to free the space)."""
    ballast = folder / 'ballast'
    free = shutil.disk_usage(folder).free
    with open(ballast, 'wb') as handle:
        handle.write(b'\0' * max(0, free - leave_kb * 1024))
    return ballast
