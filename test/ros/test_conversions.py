"""Message conversions against hand-computed bytes, and the localhost DDS settings (no rclpy.init)."""
import logging
import math
import os
import struct
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from f3rm_ros.ros import conversions as cv
from f3rm_ros.ros import dds

S45 = math.sqrt(0.5)
# Rotation of +90 deg about z, written by hand: x -> y, y -> -x.
RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(autouse=True)
def checked_fields(monkeypatch):
    """Build every message with ROS_PYTHON_CHECK_FIELDS semantics, so wrong field types fail here."""
    for name, module in list(sys.modules.items()):
        if name.split('.')[0] in ('sensor_msgs', 'geometry_msgs', 'std_msgs', 'visualization_msgs',
                                  'builtin_interfaces') and hasattr(module, 'ros_python_check_fields'):
            monkeypatch.setattr(module, 'ros_python_check_fields', '1')


def roundtrip(msg):
    """Serialise through the C type support (what publishing does) and back."""
    return deserialize_message(serialize_message(msg), type(msg))


def image(encoding, width, height, step, data, bigendian=0):
    """Build an Image message from raw bytes."""
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = bytes(data)
    return msg


# ------------------------------------------------------------------------------------------------ images

def test_bgr8_with_row_padding():
    """A bgr8 image with 2 padding bytes per row comes out as exact RGB."""
    # 2x2 pixels, 6 bytes of pixels + 2 bytes of padding per row (step 8).
    data = [1, 2, 3, 4, 5, 6, 99, 99,
            7, 8, 9, 10, 11, 12, 99, 99]
    rgb = cv.image_to_rgb(image('bgr8', 2, 2, 8, data))
    expected = np.array([[[3, 2, 1], [6, 5, 4]], [[9, 8, 7], [12, 11, 10]]], dtype=np.uint8)
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)


def test_rgb8_is_a_copy_not_a_view():
    """The RGB array never aliases the message buffer."""
    msg = image('rgb8', 1, 1, 3, [10, 20, 30])
    rgb = cv.image_to_rgb(msg)
    np.testing.assert_array_equal(rgb, [[[10, 20, 30]]])
    assert not np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))


def test_rgba8_and_bgra8_drop_alpha():
    """rgba8 and bgra8 (padded) lose alpha and come out in RGB order."""
    rgba = [1, 2, 3, 255, 4, 5, 6, 128,
            7, 8, 9, 0, 10, 11, 12, 1]
    expected = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], dtype=np.uint8)
    np.testing.assert_array_equal(cv.image_to_rgb(image('rgba8', 2, 2, 8, rgba)), expected)
    # bgra8 with a 2-byte pad per row (step 10).
    bgra = [3, 2, 1, 255, 6, 5, 4, 255, 0, 0,
            9, 8, 7, 255, 12, 11, 10, 255, 0, 0]
    np.testing.assert_array_equal(cv.image_to_rgb(image('bgra8', 2, 2, 10, bgra)), expected)


def test_mono8_replicates_grey_and_mono16_keeps_high_byte():
    """Grey images become three equal channels."""
    out = cv.image_to_rgb(image('mono8', 2, 2, 3, [10, 20, 0, 30, 40, 0]))
    np.testing.assert_array_equal(out, np.array([[[10] * 3, [20] * 3], [[30] * 3, [40] * 3]], np.uint8))
    # mono16 0x1234, 0xABCD in big endian and little endian.
    big = cv.image_to_rgb(image('mono16', 2, 1, 4, [0x12, 0x34, 0xAB, 0xCD], bigendian=1))
    little = cv.image_to_rgb(image('mono16', 2, 1, 4, [0x34, 0x12, 0xCD, 0xAB], bigendian=0))
    np.testing.assert_array_equal(big, [[[0x12] * 3, [0xAB] * 3]])
    np.testing.assert_array_equal(little, big)


def test_depth_encodings_on_a_colour_input_are_refused_with_the_reason():
    """A 16UC1 / 32FC1 depth image is a wiring mistake on the colour topic, never a grey keyframe."""
    for encoding, step in (('16UC1', 4), ('32FC1', 8)):
        with pytest.raises(ValueError, match="is a depth image.*remap the depth topic to 'depth'"):
            cv.image_to_rgb(image(encoding, 2, 1, step, [0] * step))


def test_last_row_padding_may_be_omitted():
    """Data that stops after the last pixel of the last row is accepted."""
    data = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12]  # 14 bytes: step 8, last row unpadded
    out = cv.image_to_rgb(image('rgb8', 2, 2, 8, data))
    np.testing.assert_array_equal(out[1, 1], [10, 11, 12])


def test_unsupported_encoding_is_named():
    """An unknown encoding raises and names it."""
    with pytest.raises(ValueError, match='bayer_rggb8'):
        cv.image_to_rgb(image('bayer_rggb8', 2, 2, 2, [0] * 4))


def test_inconsistent_sizes_are_rejected():
    """Data shorter or longer than step x height, or a short step, raise."""
    with pytest.raises(ValueError, match=r'needs 12 bytes of data, got 11'):
        cv.image_to_rgb(image('rgb8', 2, 2, 6, [0] * 11))
    with pytest.raises(ValueError, match=r'needs 12 bytes of data, got 13'):
        cv.image_to_rgb(image('rgb8', 2, 2, 6, [0] * 13))
    with pytest.raises(ValueError, match=r'step 5 is smaller than width 2 x 3 bytes'):
        cv.image_to_rgb(image('rgb8', 2, 2, 5, [0] * 10))
    with pytest.raises(ValueError, match='no pixels'):
        cv.image_to_rgb(image('rgb8', 0, 0, 0, []))


def test_depth_16uc1_millimetres_and_32fc1_metres():
    """Depth in mm or m becomes float32 metres with 0 for invalid."""
    mm = struct.pack('<4H', 1000, 0, 1500, 65535)
    depth = cv.depth_to_metres(image('16UC1', 2, 2, 4, mm))
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, [[1.0, 0.0], [1.5, 65.535]], rtol=1e-6)
    big = cv.depth_to_metres(image('16UC1', 2, 2, 4, struct.pack('>4H', 1000, 0, 1500, 65535), bigendian=1))
    np.testing.assert_array_equal(big, depth)
    metres = struct.pack('<4f', 0.5, float('nan'), -1.0, float('inf'))
    out = cv.depth_to_metres(image('32FC1', 2, 2, 8, metres))
    np.testing.assert_array_equal(out, np.array([[0.5, 0.0], [0.0, 0.0]], np.float32))
    with pytest.raises(ValueError, match="'rgb8'"):
        cv.depth_to_metres(image('rgb8', 1, 1, 3, [0, 0, 0]))


def test_rgb_to_image_bytes_and_round_trip():
    """rgb_to_image writes exact bytes and round-trips."""
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)
    msg = cv.rgb_to_image(rgb, 12.5, 'camera_optical')
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == (1, 2, 6, 'rgb8', 0)
    assert bytes(msg.data) == bytes([1, 2, 3, 4, 5, 6])
    stamp = msg.header.stamp
    assert (msg.header.frame_id, stamp.sec, stamp.nanosec) == ('camera_optical', 12, 500_000_000)
    bgr = cv.rgb_to_image(rgb, 0.0, 'c', encoding='bgr8')
    assert bytes(bgr.data) == bytes([3, 2, 1, 6, 5, 4])
    for m in (msg, bgr):
        np.testing.assert_array_equal(cv.image_to_rgb(roundtrip(m)), rgb)
    grey = cv.rgb_to_image(np.array([[7, 8]], np.uint8), 0.0, 'c', encoding='mono8')
    assert grey.step == 2 and bytes(grey.data) == b'\x07\x08'
    with pytest.raises(ValueError, match='yuv422'):
        cv.rgb_to_image(rgb, 0.0, 'c', encoding='yuv422')
    with pytest.raises(ValueError, match='uint8'):
        cv.rgb_to_image(rgb.astype(np.float32), 0.0, 'c')


# ---------------------------------------------------------------------------------------- camera info

def test_camera_info_slots_and_round_trip():
    """K, R, P and D land in the right slots and come back."""
    K = np.array([[500.0, 0.0, 320.5], [0.0, 510.0, 240.25], [0.0, 0.0, 1.0]])
    info = cv.K_to_camera_info(K, 640, 480, 3.0, 'camera_optical')
    assert (info.width, info.height, info.distortion_model) == (640, 480, 'plumb_bob')
    assert list(info.d) == [0.0] * 5
    assert list(info.k) == [500.0, 0.0, 320.5, 0.0, 510.0, 240.25, 0.0, 0.0, 1.0]
    assert list(info.r) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert list(info.p) == [500.0, 0.0, 320.5, 0.0, 0.0, 510.0, 240.25, 0.0, 0.0, 0.0, 1.0, 0.0]
    K2, width, height = cv.camera_info_to_K(roundtrip(info))
    np.testing.assert_array_equal(K2, K)
    assert (width, height) == (640, 480)


@pytest.mark.parametrize('fx, fy', [(0.0, 0.0), (float('nan'), 500.0), (500.0, -1.0)])
def test_uncalibrated_camera_info_is_rejected(fx, fy):
    """Zero, NaN or negative focal lengths and empty sizes raise."""
    info = CameraInfo(width=640, height=480)
    info.k = np.array([fx, 0, 320, 0, fy, 240, 0, 0, 1], dtype=np.float64)
    with pytest.raises(ValueError, match='not calibrated'):
        cv.camera_info_to_K(info)
    info.k = np.array([500.0, 0, 320, 0, 500.0, 240, 0, 0, 1])
    info.width = 0
    with pytest.raises(ValueError, match='no image size'):
        cv.camera_info_to_K(info)


# ------------------------------------------------------------------------------------------------ poses

def test_pose_with_known_quaternion():
    """A 90 deg yaw quaternion gives the hand-written matrix, and back."""
    pose = Pose(position=Point(x=1.0, y=2.0, z=3.0), orientation=Quaternion(x=0.0, y=0.0, z=S45, w=S45))
    T = cv.pose_to_matrix(pose)
    expected = np.eye(4)
    expected[:3, :3] = RZ90
    expected[:3, 3] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(T, expected, atol=1e-12)
    back = cv.matrix_to_pose(expected)
    assert (back.position.x, back.position.y, back.position.z) == (1.0, 2.0, 3.0)
    q = back.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w],
                               [0.0, 0.0, S45, S45], atol=1e-12)
    stamped = cv.pose_stamped(expected, 'base_link', Time(sec=4, nanosec=5))
    assert stamped.header.frame_id == 'base_link' and stamped.header.stamp == Time(sec=4, nanosec=5)
    np.testing.assert_allclose(cv.pose_to_matrix(roundtrip(stamped).pose), expected, atol=1e-12)


def test_transform_with_known_quaternion():
    """Transform conversions match the hand-written matrix."""
    tf = Transform(translation=Vector3(x=-1.0, y=0.5, z=0.0), rotation=Quaternion(z=S45, w=S45))
    T = cv.transform_to_matrix(tf)
    np.testing.assert_allclose(T[:3, :3], RZ90, atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [-1.0, 0.5, 0.0])
    back = cv.matrix_to_transform(T)
    np.testing.assert_allclose(cv.transform_to_matrix(back), T, atol=1e-12)
    assert back.rotation.w == pytest.approx(S45)


def test_bad_poses_are_rejected():
    """NaN, unnormalised quaternions and non-rigid matrices raise."""
    with pytest.raises(ValueError, match='NaN'):
        cv.pose_to_matrix(Pose(position=Point(x=float('nan')), orientation=Quaternion(w=1.0)))
    with pytest.raises(ValueError, match='NaN'):
        cv.pose_to_matrix(Pose(orientation=Quaternion(x=float('nan'), w=1.0)))
    with pytest.raises(ValueError, match='not normalised'):
        cv.pose_to_matrix(Pose(orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=0.0)))
    with pytest.raises(ValueError, match='not normalised'):
        cv.transform_to_matrix(Transform(rotation=Quaternion(w=2.0)))
    scaled = np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match='orthonormal'):
        cv.matrix_to_pose(scaled)
    nan = np.eye(4)
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        cv.matrix_to_transform(nan)
    with pytest.raises(ValueError):
        cv.make_pose_array([np.eye(4), scaled], 'base_link', 0.0)


def test_pose_array():
    """Pose arrays keep order, frame and values."""
    T = np.eye(4)
    T[:3, :3] = RZ90
    T[:3, 3] = [0.1, 0.2, 0.3]
    msg = roundtrip(cv.make_pose_array([np.eye(4), T], 'base_link', 1.0))
    assert msg.header.frame_id == 'base_link' and len(msg.poses) == 2
    assert msg.poses[0].orientation.w == 1.0
    np.testing.assert_allclose(cv.pose_to_matrix(msg.poses[1]), T, atol=1e-12)


# ----------------------------------------------------------------------------------------------- stamps

def test_stamps():
    """Float seconds <-> builtin Time, with carry, negatives and range checks."""
    assert cv.seconds_to_stamp(1.5) == Time(sec=1, nanosec=500_000_000)
    assert cv.seconds_to_stamp(-0.25) == Time(sec=-1, nanosec=750_000_000)
    assert cv.seconds_to_stamp(0.9999999999) == Time(sec=1, nanosec=0)
    assert cv.stamp_to_seconds(Time(sec=3, nanosec=250_000_000)) == 3.25
    big = 1_700_000_000.123456
    assert abs(cv.stamp_to_seconds(cv.seconds_to_stamp(big)) - big) < 1e-6
    for bad in (float('nan'), float('inf'), 3e9):
        with pytest.raises(ValueError):
            cv.seconds_to_stamp(bad)
    stamp = Time(sec=7, nanosec=8)
    assert cv.as_stamp(stamp) == stamp and cv.as_stamp(stamp) is not stamp
    assert cv.as_stamp(2.0) == Time(sec=2, nanosec=0)


# ----------------------------------------------------------------------------------------- point clouds

def test_point_cloud2_exact_bytes():
    """Two points give exactly the 40 hand-packed bytes and the documented fields."""
    xyz = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    rgb = np.array([[255, 128, 0], [0, 16, 255]], dtype=np.uint8)
    similarity = np.array([0.25, 0.75])
    msg = cv.make_point_cloud2(xyz, rgb, similarity, 'base_link', Time(sec=1, nanosec=2))
    expected = (struct.pack('<fffIf', 1.0, 2.0, 3.0, 0x00FF8000, 0.25)
                + struct.pack('<fffIf', -1.0, 0.5, 4.0, 0x000010FF, 0.75))
    assert len(expected) == 40
    assert bytes(msg.data) == expected
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1), ('z', 8, PointField.FLOAT32, 1),
        ('rgb', 12, PointField.FLOAT32, 1), ('similarity', 16, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 20, 40)
    assert msg.is_dense is True and msg.is_bigendian is False
    assert msg.header.frame_id == 'base_link' and msg.header.stamp == Time(sec=1, nanosec=2)
    # The rgb float, read as a float and reinterpreted, is the 0x00RRGGBB bit pattern.
    rgb_float = struct.unpack_from('<f', bytes(msg.data), 12)[0]
    assert struct.unpack('<I', struct.pack('<f', rgb_float))[0] == 0xFF8000
    xyz2, rgb2, sim2 = cv.point_cloud2_to_arrays(roundtrip(msg))
    np.testing.assert_array_equal(xyz2, xyz.astype(np.float32))
    np.testing.assert_array_equal(rgb2, rgb)
    np.testing.assert_array_equal(sim2, similarity.astype(np.float32))


def test_point_cloud2_defaults_and_validation():
    """Defaults for rgb/similarity, is_dense, empty clouds, shape errors."""
    msg = cv.make_point_cloud2(np.array([[0.0, 0.0, np.nan]]), None, None, 'base_link', 0.0)
    assert msg.is_dense is False
    assert bytes(msg.data)[12:20] == struct.pack('<If', 0xFFFFFF, 0.0)
    empty = cv.make_point_cloud2(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), 'b', 0.0)
    assert empty.width == 0 and len(empty.data) == 0
    xyz, rgb, sim = cv.point_cloud2_to_arrays(roundtrip(empty))
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3) and sim.shape == (0,)
    with pytest.raises(ValueError, match=r'xyz must be \[N, 3\]'):
        cv.make_point_cloud2(np.zeros((2, 2)), None, None, 'b', 0.0)
    with pytest.raises(ValueError, match='rgb must be'):
        cv.make_point_cloud2(np.zeros((2, 3)), np.zeros((3, 3), np.uint8), None, 'b', 0.0)
    with pytest.raises(ValueError, match='similarity must have 2'):
        cv.make_point_cloud2(np.zeros((2, 3)), None, np.zeros(3), 'b', 0.0)


def test_point_cloud2_to_arrays_honours_any_layout():
    """Reading honours offsets, point/row padding, big endian."""
    # 2 rows x 1 point, point_step 24 (z first, x at 8, y at 16, uint32 rgb at 4, 4 pad bytes), row
    # padding of 8 bytes, big endian, no similarity field.
    fields = [PointField(name='z', offset=0, datatype=PointField.FLOAT32, count=1),
              PointField(name='rgb', offset=4, datatype=PointField.UINT32, count=1),
              PointField(name='x', offset=8, datatype=PointField.FLOAT64, count=1),
              PointField(name='y', offset=16, datatype=PointField.FLOAT32, count=1)]
    row0 = struct.pack('>fIdf', 3.0, 0x00010203, 1.0, 2.0) + b'\0' * 4 + b'\xEE' * 8
    row1 = struct.pack('>fIdf', 6.0, 0x00A0B0C0, 4.0, 5.0) + b'\0' * 4 + b'\xEE' * 8
    msg = PointCloud2(height=2, width=1, fields=fields, is_bigendian=True, point_step=24, row_step=32)
    msg.data = row0 + row1
    xyz, rgb, similarity = cv.point_cloud2_to_arrays(msg)
    np.testing.assert_array_equal(xyz, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(rgb, [[1, 2, 3], [0xA0, 0xB0, 0xC0]])
    assert similarity is None
    msg.data = (row0 + row1)[:50]
    with pytest.raises(ValueError, match='needs 56 bytes'):
        cv.point_cloud2_to_arrays(msg)
    with pytest.raises(ValueError, match='no x/y field'):
        cv.point_cloud2_to_arrays(PointCloud2(fields=fields[:1]))


def test_point_cloud2_round_trips_a_full_size_heatmap():
    """A 220k-point heatmap (a 1 cm grid over a table) packs and unpacks exactly; its cost is `bench query`'s pack."""
    n = 220_000
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (n, 3))
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    similarity = rng.uniform(0, 1, n)
    msg = cv.make_point_cloud2(xyz, rgb, similarity, 'base_link', 0.0)
    assert len(msg.data) == 20 * n
    xyz2, rgb2, _ = cv.point_cloud2_to_arrays(msg)
    np.testing.assert_array_equal(rgb2, rgb)
    np.testing.assert_allclose(xyz2, xyz, atol=1e-6)


# ---------------------------------------------------------------------------------------------- markers

@dataclass
class Box:
    """A cluster given as a dataclass instead of a dict."""

    centroid: np.ndarray
    extent: np.ndarray
    relevancy: float
    rotation: np.ndarray = None


def test_markers_from_clusters():
    """DELETEALL first, then cube + label per cluster in the given (best-first) order."""
    clusters = [
        Box(centroid=np.array([0.5, -0.2, 0.05]), extent=np.array([0.1, 0.2, 0.0]), relevancy=0.9, rotation=RZ90),
        {'centroid': [0.1, 0.2, 0.3], 'extent': [0.04, 0.06, 0.1], 'relevancy': 0.31},
    ]
    msg = roundtrip(cv.markers_from_clusters(clusters, 'mug', 'base_link', 2.0))
    assert isinstance(msg, MarkerArray) and len(msg.markers) == 5
    clear = msg.markers[0]
    assert clear.action == Marker.DELETEALL and clear.ns == ''          # clears every earlier answer's markers
    assert {m.ns for m in msg.markers[1:]} == {'f3rm'}
    best_cube, best_text, cube, text = msg.markers[1:]
    # The first cluster (the query's best) gets the first colour and ids 0/1.
    assert (best_cube.type, best_cube.id, best_cube.action) == (Marker.CUBE, 0, Marker.ADD)
    assert (best_text.type, best_text.id, best_text.text) == (Marker.TEXT_VIEW_FACING, 1, 'mug 0.90')
    assert (best_cube.color.r, best_cube.color.g, best_cube.color.b) == pytest.approx(cv.RANK_COLOURS[0])
    assert best_cube.color.a == pytest.approx(0.5)
    p = best_cube.pose
    assert (p.position.x, p.position.y, p.position.z) == (0.5, -0.2, 0.05)
    assert (p.orientation.z, p.orientation.w) == (pytest.approx(S45), pytest.approx(S45))
    assert (best_cube.scale.x, best_cube.scale.y, best_cube.scale.z) == (0.1, 0.2, 0.001)  # zero clamped
    assert (cube.id, text.id, text.text) == (2, 3, 'mug 0.31')
    assert (cube.scale.x, cube.scale.y, cube.scale.z) == (0.04, 0.06, 0.1)
    assert (cube.color.r, cube.color.g, cube.color.b) == pytest.approx(cv.RANK_COLOURS[1])
    # The label floats above the box top (0.3 + 0.05) by the text height.
    assert (text.pose.position.x, text.pose.position.y) == (0.1, 0.2)
    assert text.pose.position.z == pytest.approx(0.3 + 0.05 + 0.03)
    assert all(m.header.frame_id == 'base_link' and m.header.stamp.sec == 2 for m in msg.markers)
    only_clear = cv.markers_from_clusters([], 'mug', 'base_link', 0.0, namespace='other')
    assert [(m.action, m.ns) for m in only_clear.markers] == [(Marker.DELETEALL, '')]


# ------------------------------------------------------------------------------------------------- DDS

def test_localhost_dds_env_sets_both_variables():
    """Both variables are set explicitly, whatever the environment had (an explicit SUBNET, another profile)."""
    env = dds.localhost_dds_env({'PATH': '/usr/bin', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                                 'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/mine.xml'})
    assert env['PATH'] == '/usr/bin'
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    profile = Path(env['FASTDDS_DEFAULT_PROFILES_FILE'])
    assert profile.is_file() and profile.name == 'fastdds_localhost.xml'
    # The undocumented opt-out variable of old is gone: asking for confinement confines.
    env = dds.localhost_dds_env({'F3RM_ROS_DDS_LOCALHOST': '0'})
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST' and env['FASTDDS_DEFAULT_PROFILES_FILE'] == str(profile)


def test_confine_dds_to_localhost(monkeypatch):
    """os.environ is updated once; a second call changes nothing."""
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/mine.xml')
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    changed = dds.confine_dds_to_localhost()
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] == str(dds.fastdds_profile_path())
    assert set(changed) == {'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE'}
    assert dds.confine_dds_to_localhost() == {}
    assert 'LOCALHOST' in dds.describe_localhost() and str(dds.fastdds_profile_path()) in dds.describe_localhost()


def _environment_at_rclpy_init(monkeypatch, start):
    """Run `start()` with rclpy.init replaced by a recorder (no DDS participant is ever created here)."""
    import rclpy
    seen = {}

    def fake_init(*args, **kwargs):
        seen.update({k: os.environ.get(k) for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE')})
    monkeypatch.setattr(rclpy, 'init', fake_init)
    start()
    return seen


def test_nodes_leave_dds_alone_by_default(monkeypatch):
    """init_ros (every node, the pipeline, the demo) keeps the user's discovery range and profile."""
    from f3rm_ros.ros.common import init_ros
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/robot_profile.xml')
    seen = _environment_at_rclpy_init(monkeypatch, lambda: init_ros(['node']))
    assert seen == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                    'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/robot_profile.xml'}
    monkeypatch.delenv('ROS_AUTOMATIC_DISCOVERY_RANGE')
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE')
    seen = _environment_at_rclpy_init(monkeypatch, lambda: init_ros(['node']))
    assert seen == {'ROS_AUTOMATIC_DISCOVERY_RANGE': None, 'FASTDDS_DEFAULT_PROFILES_FILE': None}


@pytest.mark.parametrize('argv, confined', [
    (['pipeline'], False), (['pipeline', '--localhost-only'], True), (['--localhost-only', 'pipeline'], True),
    (['demo', '--localhost-only'], True), (['bench', '--localhost-only', 'query'], True)])
def test_cli_localhost_only_flag(monkeypatch, caplog, argv, confined):
    """`f3rm-ros <command> --localhost-only` sets both variables before the command runs; without it, nothing.

    The user's own Fast DDS profile it replaces is named in a warning (it was once replaced silently).
    """
    import importlib

    from f3rm_ros import cli
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/robot_profile.xml')
    seen = {}

    def fake_run(args):
        seen.update({k: os.environ.get(k) for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE')})
        return 0
    module = {'pipeline': 'f3rm_ros.commands.pipeline', 'demo': 'f3rm_ros.commands.demo',
              'bench': 'f3rm_ros.bench.query'}[next(a for a in argv if not a.startswith('-'))]
    monkeypatch.setattr(importlib.import_module(module), 'run', fake_run)
    with caplog.at_level(logging.WARNING, logger='f3rm_ros'):
        assert cli.main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if 'replaces your Fast DDS profile' in r.getMessage()]
    assert len(warned) == int(confined) and all('/etc/robot_profile.xml' in w for w in warned)
    if confined:
        assert seen == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                        'FASTDDS_DEFAULT_PROFILES_FILE': str(dds.fastdds_profile_path())}
        assert dds.user_profile_replaced() == ''                 # ours now: nothing more to warn about
    else:
        assert seen == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                        'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/robot_profile.xml'}


def test_profile_is_loopback_and_shared_memory_only():
    """The profile holds SHM (32 MiB) + UDPv4 on 127.0.0.1 only."""
    ns = {'d': 'http://www.eprosima.com'}
    root = ET.parse(dds.fastdds_profile_path()).getroot()
    descriptors = root.findall('.//d:transport_descriptor', ns)
    kinds = {d.find('d:transport_id', ns).text: d.find('d:type', ns).text for d in descriptors}
    assert sorted(kinds.values()) == ['SHM', 'UDPv4']
    for d in descriptors:
        if d.find('d:type', ns).text == 'SHM':
            assert int(d.find('d:segment_size', ns).text) == 32 * 1024 * 1024
        else:
            addresses = [a.text for a in d.findall('d:interfaceWhiteList/*', ns)]
            assert addresses == ['127.0.0.1']
    participants = root.findall('.//d:participant', ns)
    assert len(participants) == 1 and participants[0].get('is_default_profile') == 'true'
    rtps = participants[0].find('d:rtps', ns)
    assert rtps.find('d:useBuiltinTransports', ns).text == 'false'
    assert sorted(t.text for t in rtps.findall('d:userTransports/d:transport_id', ns)) == sorted(kinds)
