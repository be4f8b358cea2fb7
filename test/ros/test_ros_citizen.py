"""The nodes as a good citizen of a robot's ROS 2 system, over DDS on this machine.

Camera inputs hear best-effort and reliable drivers and take ``qos_overrides``; every node's health is
decoded from ``/diagnostics`` (levels, hardware_id, key values); ``capture/new_scan`` starts capture and
trainer afresh together; a checkpoint announced on the query node's ``checkpoint`` topic that holds a pickle
payload is refused with the reason and runs nothing, as is one planted in a restarting trainer's folder;
parameter values that would break answers are refused through the parameter service with the reason.
"""
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from f3rm_ros_interfaces.msg import QueryAnswer
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from f3rm_ros.core.config import make_config
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.diagnostics import level_name, status_values
from f3rm_ros.harness.bad_inputs import PicklePayload
from f3rm_ros.ros.qos import latched_qos
from f3rm_ros.harness.testing import RosProbe
from f3rm_ros.ros.topics import remap_arguments, trainer_remaps
from test_ros_nodes import H, K, W, pose_at, textured   # the same small camera and poses

pytestmark = pytest.mark.ros

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope='module')
def probe():
    probe = RosProbe()
    yield probe
    probe.close()


def now_s():
    return time.time()


class Camera:
    """A camera driver and an arm: image, camera_info and pose publishers with the QoS asked for."""

    def __init__(self, probe, image_qos=qos_profile_sensor_data, info_qos=RELIABLE):
        self.probe = probe
        self.image = probe.publisher(Image, 'image', image_qos)
        self.info = probe.publisher(CameraInfo, 'camera_info', info_qos)
        self.pose = probe.publisher(PoseStamped, 'camera_pose', qos_profile_sensor_data)

    def wait(self, status):
        """Wait for the capture node's subscriptions, then until it knows the camera (camera_info first)."""
        for publisher in (self.image, self.info, self.pose):
            self.probe.wait_for_subscribers(publisher)
        self.info.publish(conv.K_to_camera_info(K, W, H, now_s(), 'cam_optical'))
        status.wait(lambda m: status_values(m).get('camera_info') == f'{W}x{H}', 10, 'camera_info known')

    def send(self, stamp, x, seed=0, encoding='rgb8'):
        self.info.publish(conv.K_to_camera_info(K, W, H, stamp, 'cam_optical'))
        self.pose.publish(conv.pose_stamped(pose_at(x), 'base_link', stamp))
        if encoding == 'rgb8':
            self.image.publish(conv.rgb_to_image(textured(seed), stamp, 'cam_optical'))
        else:  # a depth image on the colour topic
            msg = conv.depth_to_image(np.ones((H, W), np.float32), stamp, 'cam_optical')
            msg.encoding, msg.step = '16UC1', W * 2
            msg.data = conv.as_uint8_array(np.ones((H, W), '<u2'))
            self.image.publish(msg)


def capture_node(probe, tmp_path, **params):
    from f3rm_ros.ros.capture_node import CaptureNode
    values = dict(dataset_dir=str(tmp_path / 'scan'), min_interval_s=0.0, min_sharpness=0.0, pose_wait_s=0.5,
                  status_rate_hz=20.0, pose_source='topic', min_translation=0.05, **params)
    node = CaptureNode(context=probe.context,
                       parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    probe.add_node(node)
    return node


def close(probe, node):
    probe.executor.remove_node(node)
    node.destroy_node()


def wait_values(inbox, predicate, what, timeout=20.0, since=0):
    msg = inbox.wait(lambda m: predicate(status_values(m), m), timeout, what, since)
    return status_values(msg), msg


def test_camera_inputs_hear_best_effort_and_reliable_drivers_and_take_qos_overrides(probe, tmp_path):
    node = capture_node(probe, tmp_path)
    status = probe.status('/capture')
    try:
        assert node.get_parameter('qos_overrides./image.subscription.reliability').value == 'best_effort'
        assert node.get_parameter('qos_overrides./image.subscription.depth').value == 5
        camera = Camera(probe)                      # images best effort (v4l2_camera, Isaac Sim), info reliable
        camera.wait(status)
        start = now_s()
        for i in range(3):
            camera.send(start + 0.1 * i, x=0.2 * i, seed=i)
        values, msg = wait_values(status, lambda v, m: v['keyframes'] == '3', 'three keyframes')
        assert values['camera_info'] == f'{W}x{H}' and level_name(msg) == 'ok'
    finally:
        close(probe, node)

    node = capture_node(probe, tmp_path / 'b', **{'qos_overrides./image.subscription.reliability': 'reliable',
                                                  'qos_overrides./image.subscription.depth': 20})
    status = probe.status('/capture')
    try:
        mine = [info for info in probe.node.get_subscriptions_info_by_topic('/image')
                if info.node_name == 'capture']
        assert [info.qos_profile.reliability for info in mine] == [ReliabilityPolicy.RELIABLE]
        image_subscription = next(sub for sub in node.subscriptions if sub.topic_name == '/image')
        assert image_subscription.qos_profile.depth == 20
        best_effort = Camera(probe)                 # a reliable subscription never hears a best-effort driver
        start = now_s()
        best_effort.image.publish(conv.rgb_to_image(textured(9), start, 'cam_optical'))
        reliable = Camera(probe, image_qos=RELIABLE)
        reliable.wait(status)
        reliable.send(start + 0.5, x=0.0)
        values, _ = wait_values(status, lambda v, m: v['keyframes'] == '1', 'a keyframe from the reliable driver')
        assert values['received'] == '1'
    finally:
        close(probe, node)


def test_diagnostics_say_what_is_wrong_and_where(probe, tmp_path):
    node = capture_node(probe, tmp_path, hardware_id='wrist_camera')
    status = probe.status('/capture')
    try:
        camera = Camera(probe)
        camera.wait(status)
        start = now_s()
        camera.send(start, x=0.0)
        values, msg = wait_values(status, lambda v, m: v['keyframes'] == '1', 'a keyframe')
        assert (msg.name, msg.hardware_id, msg.level) == ('/capture', 'wrist_camera', DiagnosticStatus.OK)
        assert values['scan_id'] and 'scanning, 1 keyframes' in msg.message

        camera.send(start + 0.1, x=0.2, encoding='16UC1')                    # depth on the colour topic
        values, msg = wait_values(status, lambda v, m: v.get('rejected_encoding') == '1', 'the 16UC1 refused')
        assert level_name(msg) == 'warn' and 'is a depth image' in msg.message

        camera.send(start + 3600, x=0.4)                                      # a clock an hour ahead
        values, msg = wait_values(status, lambda v, m: v.get('rejected_stamp') == '1', 'the future stamp')
        assert 'ahead of' in msg.message and level_name(msg) == 'warn'
        camera.send(start + 0.3, x=0.6, seed=3)                               # the scan goes on
        wait_values(status, lambda v, m: v['keyframes'] == '2', 'a keyframe after the future stamp')
    finally:
        close(probe, node)


def test_new_scan_starts_capture_and_trainer_afresh(probe, tmp_path):
    from f3rm_ros.ros.trainer_node import TrainerNode
    capture = capture_node(probe, tmp_path)
    trainer = TrainerNode(context=probe.context, cli_args=['--ros-args', *remap_arguments(trainer_remaps())],
                          parameter_overrides=[Parameter(k, value=v) for k, v in dict(
                              preset='cpu-tiny', min_frames=50, status_rate_hz=20.0, assembly_wait_s=1.0,
                              teacher_choice='clip').items()])  # no label images here; never built
    probe.add_node(trainer)
    capture_status, trainer_status = probe.status('/capture'), probe.status('/trainer')
    try:
        camera = Camera(probe)
        camera.wait(capture_status)
        start = now_s()
        for i in range(3):
            camera.send(start + 0.1 * i, x=0.2 * i, seed=i)
        old, _ = wait_values(trainer_status, lambda v, m: v['frames'] == '3', 'three keyframes at the trainer')
        response = probe.call(Trigger, '/capture/new_scan')
        assert response.success and 'cleared 3 keyframes' in response.message
        new_id = response.message.split()[2].rstrip(':')
        values, _ = wait_values(trainer_status, lambda v, m: v['scan_id'] == new_id and v['frames'] == '0',
                                'the trainer on the new scan')
        assert new_id != old['scan_id']
        for i in range(2):
            camera.send(start + 1 + 0.1 * i, x=0.2 * i, seed=10 + i)
        wait_values(trainer_status, lambda v, m: v['frames'] == '2', 'the new scan\'s keyframes, nothing else')
        wait_values(capture_status, lambda v, m: v['keyframes'] == '2' and v['scan_id'] == new_id, 'capture')
    finally:
        close(probe, trainer)
        close(probe, capture)


def test_query_node_refuses_a_payload_announced_on_the_checkpoint_topic(probe, tmp_path):
    from f3rm_ros.ros.query_node import QueryNode
    marker = tmp_path / 'payload-ran'
    (tmp_path / 'ckpt').mkdir()
    outside, inside = tmp_path / 'evil.ckpt', tmp_path / 'ckpt' / 'latest.ckpt'
    for path in (outside, inside):
        torch.save({'meta_json': '{}', 'model': {}, 'x': PicklePayload(marker)}, path)
    node = QueryNode(context=probe.context, parameter_overrides=[
        Parameter('status_rate_hz', value=20.0), Parameter('checkpoint_dir', value=str(tmp_path / 'ckpt'))])
    probe.add_node(node)
    status = probe.status('/query')
    try:
        announce = probe.publisher(String, '/checkpoint', latched_qos())
        answers = probe.subscribe(QueryAnswer, '/query/answer', latched_qos(10))
        query = probe.publisher(String, '/query/query')
        probe.wait_for_subscribers(announce)
        probe.wait_for_subscribers(query)
        announce.publish(String(data=str(outside)))
        values, msg = wait_values(status, lambda v, m: 'refused' in v['model_problem'], 'the outside path refused')
        assert level_name(msg) == 'error' and 'not inside checkpoint_dir' in msg.message
        announce.publish(String(data=str(inside)))
        # judged when announced, before anyone asks
        values, msg = wait_values(status, lambda v, m: 'Python objects' in v['model_problem'], 'the refusal')
        assert level_name(msg) == 'error' and node.models.latest_path == str(inside) and node.answered == 0
        query.publish(String(data='mug'))
        answer = answers.wait(lambda m: m.text == 'mug', 30, 'the answer')
        assert answer.status == QueryAnswer.NO_MODEL and 'holds Python objects' in answer.reason
        assert not marker.exists()
    finally:
        close(probe, node)


def test_query_parameters_that_break_answers_are_refused_with_the_reason(probe):
    from f3rm_ros.ros.query_node import QueryNode
    big = make_config('cpu-tiny')
    big.workspace.min_xyz, big.workspace.max_xyz = (-2.0, -2.0, 0.0), (2.0, 2.0, 2.0)
    live = SimpleNamespace(trainer=None, config=big, teacher=None, model_version=0, state='waiting')
    node = QueryNode(live=live, context=probe.context, parameter_overrides=[Parameter('preset', value='cpu-tiny')])
    probe.add_node(node)
    try:
        bad = [('query.voxel_size', 1e-5, 'voxel_size'), ('query.voxel_size', 0.0, 'voxel_size'),
               ('query.voxel_size', -0.01, 'voxel_size'), ('query.voxel_size', 0.001, 'voxels over'),
               ('query.temperature', 0.0, 'temperature'), ('query.temperature', -1.0, 'temperature'),
               ('query.temperature', float('nan'), 'temperature'), ('query.alpha_threshold', 2.0, 'alpha_threshold'),
               ('query.negatives', [], 'negatives is empty')]
        for name, value, words in bad:
            result = probe.set_parameters('/query', **{name: value})[0]
            assert not result.successful and words in result.reason, (name, value, result.reason)
        assert node.params.config.query.voxel_size == 0.01 and node.params.config.query.negatives
        assert probe.set_parameters('/query', **{'query.voxel_size': 0.02})[0].successful
    finally:
        close(probe, node)


def test_a_restarting_trainer_refuses_a_planted_checkpoint_and_trains_from_scratch(probe, tmp_path):
    from f3rm_ros.core.capture.frames import write_dataset
    from f3rm_ros.core.scenes.table import make_scene
    from f3rm_ros.ros.trainer_node import TrainerNode
    scene = make_scene(seed=0, object_names=['mug'], num_views=6, width=48, height=36)
    meta = scene.dataset_metadata()
    meta['scan_id'] = 'the-scan'
    write_dataset(tmp_path / 'scan', scene.frames, metadata=meta)
    marker = tmp_path / 'payload-ran'
    (tmp_path / 'ckpt').mkdir()
    torch.save({'meta_json': json.dumps({'version': 2}), 'model': {}, 'x': PicklePayload(marker)},
               tmp_path / 'ckpt' / 'latest.ckpt')
    trainer = TrainerNode(context=probe.context, parameter_overrides=[Parameter(k, value=v) for k, v in dict(
        preset='cpu-tiny', resume=True, dataset_dir=str(tmp_path / 'scan'), checkpoint_dir=str(tmp_path / 'ckpt'),
        min_frames=4, status_rate_hz=20.0, torch_threads=1, **{'trainer.steps': 2}).items()])
    probe.add_node(trainer)
    status = probe.status('/trainer')
    try:
        values, msg = wait_values(status, lambda v, m: 'checkpoint refused' in m.message, 'the refusal', 120)
        assert level_name(msg) == 'error' and 'Python objects' in msg.message and 'from scratch' in msg.message
        assert values['scan_id'] == 'the-scan' and values['resumed_frames'] == '6'
        assert (tmp_path / 'ckpt' / 'latest.ckpt.refused').exists() and not marker.exists()
        values, msg = wait_values(status, lambda v, m: v['state'] == 'done', 'two steps and a good checkpoint', 120)
        assert level_name(msg) == 'ok' and values['resumed_step'] == '0'
    finally:
        close(probe, trainer)
