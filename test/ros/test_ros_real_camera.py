"""The capture node as a RealSense on an arm drives it, over DDS on this machine.

A wrist camera publishing distorted JPEGs on ``<image>/compressed`` and 16UC1 ``compressedDepth`` 7 ms after
each colour frame, poses from TF (a fake tf2 buffer with tf2's lookup API is injected: this venv has no
tf2_ros) of the end effector composed with a hand-eye calibration, and a static gripper mask: the keyframes
come out undistorted with the pinhole K_new and zero D, with depth and mask, at the composed camera pose.
A corrupt JPEG and an unknown distortion model are reported on /diagnostics with the topic, the frame is
skipped and the node goes on.
"""
import array
import time

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from f3rm_ros.core.capture import compressed
from f3rm_ros.core.capture.distortion import Distortion, Undistorter
from f3rm_ros.core.capture.handeye import hand_eye_matrix
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.diagnostics import status_values
from f3rm_ros.ros.qos import latched_qos
from f3rm_ros.harness.testing import RosProbe

pytestmark = pytest.mark.ros

W, H = 160, 120
K = np.array([[130.0, 0, 80], [0, 130.0, 60], [0, 0, 1]])
LENS = Distortion('plumb_bob', (-0.2, 0.05, 0.0, 0.0, 0.0))
HAND_EYE = hand_eye_matrix([0.05, -0.02, 0.08], [0.5, -0.5, 0.5, -0.5])
FRAME = 'camera_color_optical_frame'


@pytest.fixture(scope='module')
def probe():
    probe = RosProbe()
    yield probe
    probe.close()


class FakeBuffer:
    """``tf2_ros.Buffer.lookup_transform(target, source, time, timeout)`` over end-effector poses by stamp."""

    def __init__(self):
        self.poses = {}

    def lookup_transform(self, target, source, time, timeout):
        stamp = round(time.nanoseconds * 1e-9, 6)
        if (target, source) != ('base_link', 'tool0'):
            raise LookupException(f'no frame {source}')
        if stamp not in self.poses:
            raise ExtrapolationException(f'Lookup would require extrapolation at time {stamp}')
        msg = TransformStamped()
        msg.transform = conv.matrix_to_transform(self.poses[stamp])
        return msg


class LookupException(Exception):
    """tf2's name."""


class ExtrapolationException(Exception):
    """tf2's name."""


def ee_pose(i):
    T = np.eye(4)
    T[:3, 3] = (0.3 + 0.1 * i, 0.0, 0.5)
    return T


def test_a_wrist_camera_with_compressed_distorted_images_tf_hand_eye_and_a_gripper_mask(probe, tmp_path):
    from f3rm_ros.ros.capture_node import CaptureNode
    mask = np.full((H, W), 255, np.uint8)
    mask[90:, 60:100] = 0
    cv2.imwrite(str(tmp_path / 'gripper.png'), mask)
    buffer = FakeBuffer()
    values = dict(dataset_dir=str(tmp_path / 'scan'), min_interval_s=0.0, min_sharpness=0.0, pose_wait_s=0.3,
                  status_rate_hz=20.0, pose_source='tf', pose_is_end_effector=True, ee_frame='tool0',
                  hand_eye_xyz=[0.05, -0.02, 0.08], hand_eye_quaternion_xyzw=[0.5, -0.5, 0.5, -0.5],
                  image_transport='compressed', depth_transport='compressedDepth',
                  mask_file=str(tmp_path / 'gripper.png'))
    node = CaptureNode(tf_buffer=buffer, context=probe.context,
                       parameter_overrides=[Parameter(k, value=v) for k, v in values.items()],
                       cli_args=['--ros-args', '-r', 'image:=/camera/camera/color/image_raw',
                                 '-r', 'depth:=/camera/camera/aligned_depth_to_color/image_raw'])
    probe.add_node(node)
    status = probe.status('/capture')
    infos = probe.subscribe(CameraInfo, '/capture/keyframe/camera_info', latched_qos(8))
    masks = probe.subscribe(Image, '/capture/keyframe/mask', latched_qos(8))
    poses = probe.subscribe(PoseStamped, '/capture/keyframe/pose', latched_qos(8))
    depths = probe.subscribe(Image, '/capture/keyframe/depth', latched_qos(8))
    try:
        image = probe.publisher(CompressedImage, '/camera/camera/color/image_raw/compressed', qos_profile_sensor_data)
        depth = probe.publisher(CompressedImage, '/camera/camera/aligned_depth_to_color/image_raw/compressedDepth',
                                qos_profile_sensor_data)
        info = probe.publisher(CameraInfo, '/camera_info', qos_profile_sensor_data)
        for publisher in (image, depth, info):
            probe.wait_for_subscribers(publisher)

        def camera_info(model='plumb_bob', d=LENS.coefficients):
            msg = conv.K_to_camera_info(K, W, H, time.time(), FRAME)
            msg.distortion_model, msg.d = model, array.array('d', d)
            info.publish(msg)

        def send(i, payload=None):
            stamp = round(time.time(), 3)
            buffer.poses[stamp] = ee_pose(i)
            rgb = np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8)
            fmt, data = compressed.encode_colour(rgb, 'jpeg')
            msg = CompressedImage(format=fmt)
            msg.header = conv.make_header(FRAME, stamp)
            msg.data = array.array('B', payload if payload is not None else data)
            image.publish(msg)
            fmt, data = compressed.encode_depth(np.full((H, W), 0.6, np.float32))
            msg = CompressedImage(format=fmt)
            msg.header = conv.make_header(FRAME, stamp + 0.007)
            msg.data = array.array('B', data)
            depth.publish(msg)
            return stamp

        camera_info()
        probe.wait_until(lambda: node.session.camera is not None, 10, 'camera_info at the node')
        send(0)
        time.sleep(0.1)
        send(1)
        probe.wait_until(lambda: len(poses.messages) >= 2, 20, 'two keyframes')
        K_new = Undistorter(K, LENS, W, H).K_new
        kf_info = infos.last
        assert list(kf_info.d) == [0.0] * len(kf_info.d) and np.allclose(np.reshape(kf_info.k, (3, 3)), K_new)
        pose = conv.pose_to_matrix(poses.last.pose)
        np.testing.assert_allclose(pose, ee_pose(1) @ HAND_EYE, atol=1e-6)
        kf_mask = conv.image_to_mask(masks.last)
        assert not kf_mask[110, 80] and kf_mask[20, 20]                     # the fingers are masked
        kf_depth = conv.depth_to_metres(depths.last)                        # paired 7 ms apart
        assert np.allclose(kf_depth[kf_depth > 0], 0.6, atol=1e-3) and (kf_depth > 0).mean() > 0.9

        send(2, payload=b'\xff\xd8\xff' + b'\x00' * 50)                    # a corrupt JPEG
        text = status.wait(lambda m: status_values(m).get('rejected_image') == '1', 20, 'the corrupt frame').message
        assert '/camera/camera/color/image_raw/compressed' in text and 'corrupt' in text
        camera_info('fisheye_kb8', (0.1, 0.0, 0.0, 0.0))                    # an unknown model
        status.wait(lambda m: 'fisheye_kb8' in m.message, 20, 'the model named on /diagnostics')
        send(3)
        status.wait(lambda m: status_values(m).get('rejected_camera_info') == '1', 20, 'the frame skipped')
        camera_info()                                                       # the node goes on
        time.sleep(0.2)
        send(4)
        probe.wait_until(lambda: len(poses.messages) >= 3, 20, 'a keyframe after the problems')
    finally:
        probe.executor.remove_node(node)
        node.destroy_node()
