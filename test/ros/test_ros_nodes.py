"""The nodes over DDS (localhost only, a private domain), in this process: keyframes, bad input, parameters.

Each test builds a node in the probe's context and talks to it through topics and services as a robot would.
"""
import json
import math

import numpy as np
import pytest
from f3rm_ros_interfaces.msg import QueryAnswer
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.diagnostics import status_values
from f3rm_ros.ros.qos import latched_qos
from f3rm_ros.harness.testing import RosProbe

pytestmark = pytest.mark.ros

W, H = 96, 72
K = np.array([[80.0, 0, 48], [0, 80.0, 36], [0, 0, 1]])


@pytest.fixture(scope='module')
def probe():
    probe = RosProbe()
    yield probe
    probe.close()


def textured(seed):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def pose_at(x):
    T = np.eye(4)
    T[0, 3] = x
    return T


def encoded(rgb, encoding, stamp):
    """Build an Image in `encoding` by hand (the inverse of what the capture node must undo)."""
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0)
    msg.header = conv.make_header('cam_optical', stamp)
    pixels = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'mono8': rgb[..., :1],
              'rgba8': np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1),
              '32FC1': np.zeros(rgb.shape[:2] + (4,), np.uint8)}[encoding]
    msg.step = rgb.shape[1] * pixels.shape[2]
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


class CaptureRig:
    """A capture node plus the probe's publishers and subscribers around it."""

    def __init__(self, probe, tmp_path, **params):
        from f3rm_ros.ros.capture_node import CaptureNode
        overrides = dict(dataset_dir=str(tmp_path / 'scan'), min_interval_s=0.0, min_sharpness=0.0,
                         pose_wait_s=0.3, status_rate_hz=20.0, pose_source='topic',
                         max_stamp_skew_s=0.0, **params)  # the stamps here are seconds after 1970
        self.node = CaptureNode(context=probe.context,
                                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        probe.add_node(self.node)
        self.probe = probe
        self.image = probe.publisher(Image, 'image')
        self.info = probe.publisher(CameraInfo, 'camera_info')
        self.pose = probe.publisher(PoseStamped, 'camera_pose')
        self.status = probe.status('/capture')
        self.kf_image = probe.subscribe(Image, '/capture/keyframe/image', conv_qos())
        self.kf_info = probe.subscribe(CameraInfo, '/capture/keyframe/camera_info', conv_qos())
        self.kf_pose = probe.subscribe(PoseStamped, '/capture/keyframe/pose', conv_qos())
        for publisher in (self.image, self.info, self.pose):
            probe.wait_for_subscribers(publisher)

    def send(self, stamp, x=None, encoding='rgb8', rgb=None, info=True):
        if info:
            self.info.publish(conv.K_to_camera_info(K, W, H, stamp, 'cam_optical'))
        if x is not None:
            self.pose.publish(conv.pose_stamped(pose_at(x), 'base_link', stamp))
        rgb = textured(int(stamp * 100)) if rgb is None else rgb
        self.image.publish(encoded(rgb, encoding, stamp))
        return rgb

    def wait_status(self, predicate, what, timeout=10.0):
        return status_values(self.status.wait(lambda m: predicate(status_values(m)), timeout, what))

    def close(self):
        self.probe.executor.remove_node(self.node)
        self.node.destroy_node()


def conv_qos():
    from f3rm_ros.ros.qos import latched_qos
    return latched_qos(8)


def count(values, key):
    return int(values.get(key, 0))


def test_capture_publishes_keyframes_with_one_stamp_and_survives_bad_input(probe, tmp_path):
    rig = CaptureRig(probe, tmp_path)
    try:
        rig.send(1.0, x=0.0, info=False)                                    # no camera_info yet
        rig.wait_status(lambda v: count(v, 'rejected_camera_info') >= 1, 'missing camera_info')

        rig.info.publish(conv.K_to_camera_info(K, W, H, 1.0, 'cam_optical'))
        rig.wait_status(lambda v: v['camera_info'] == f'{W}x{H}', 'camera_info known')
        rgb = rig.send(1.1, x=0.0, encoding='bgr8')                         # first keyframe
        image = rig.kf_image.wait(what='a keyframe image')
        info = rig.kf_info.wait(what='its camera_info')
        pose = rig.kf_pose.wait(what='its pose')
        assert image.header.stamp == info.header.stamp == pose.header.stamp == conv.seconds_to_stamp(1.1)
        assert image.encoding == 'rgb8' and image.header.frame_id == 'cam_optical'
        np.testing.assert_array_equal(conv.image_to_rgb(image), rgb)     # bgr8 in, exact RGB out
        np.testing.assert_allclose(conv.camera_info_to_K(info)[0], K)
        assert pose.header.frame_id == 'base_link'
        np.testing.assert_allclose(conv.pose_to_matrix(pose.pose), pose_at(0.0), atol=1e-12)

        rig.send(1.1, x=0.0)                                                 # duplicate stamp
        rig.send(1.05, x=0.0)                                                # out of order
        rgb = rig.send(1.2, x=0.1, encoding='rgba8')
        assert np.array_equal(conv.image_to_rgb(rig.kf_image.wait(
            lambda m: m.header.stamp == conv.seconds_to_stamp(1.2), what='the rgba8 keyframe')), rgb)
        rgb = rig.send(1.3, x=0.2, encoding='mono8')
        grey = conv.image_to_rgb(rig.kf_image.wait(lambda m: m.header.stamp == conv.seconds_to_stamp(1.3),
                                                   what='the mono8 keyframe'))
        assert np.array_equal(grey[..., 0], rgb[..., 0]) and np.array_equal(grey[..., 2], rgb[..., 0])

        rig.send(1.4, x=0.3, encoding='32FC1')                               # not a colour encoding
        rig.pose.publish(conv.pose_stamped(pose_at(0.4), 'base_link', 1.5))
        small = Image(height=40, width=50, encoding='rgb8', step=150, data=bytes(6000),
                      header=conv.make_header('cam_optical', 1.5))
        rig.image.publish(small)                                             # differs from camera_info
        nan_pose = PoseStamped(header=conv.make_header('base_link', 1.6))
        nan_pose.pose.orientation.w = math.nan
        rig.pose.publish(nan_pose)                                           # NaN pose
        wrong_frame = conv.pose_stamped(pose_at(0.5), 'odom', 1.6)
        rig.pose.publish(wrong_frame)                                        # pose in another frame
        rig.send(1.6, info=False)                                            # so: no pose for 1.6
        values = rig.wait_status(lambda v: count(v, 'rejected_no_pose') >= 1 and count(v, 'rejected_size') >= 1
                                 and count(v, 'rejected_encoding') >= 1 and count(v, 'problem_pose') >= 2,
                                 'every bad input counted')
        assert count(values, 'rejected_stamp') == 2
        assert values['keyframes'] == '3' and 'no pose' in values['last_problem']

        rig.send(1.7, x=1.0)                                                 # the node is still fine
        values = rig.wait_status(lambda v: v['keyframes'] == '4', 'a fourth keyframe')
        meta = json.loads((tmp_path / 'scan' / 'transforms.json').read_text())
        assert [f['stamp'] for f in meta['frames']] == pytest.approx([1.1, 1.2, 1.3, 1.7])
    finally:
        rig.close()


def test_capture_services_and_parameters(probe, tmp_path):
    rig = CaptureRig(probe, tmp_path, min_translation=0.05)
    try:
        rig.info.publish(conv.K_to_camera_info(K, W, H, 1.0, 'cam_optical'))
        rig.wait_status(lambda v: v['camera_info'] == f'{W}x{H}', 'camera_info known')
        assert probe.call(Trigger, '/capture/stop').success
        rig.send(2.0, x=0.0)
        rig.wait_status(lambda v: count(v, 'rejected_idle') >= 1 and v['scanning'] == 'False', 'a stopped scan')
        assert probe.call(Trigger, '/capture/start').success
        rig.send(2.1, x=0.0)
        rig.wait_status(lambda v: v['keyframes'] == '1', 'a keyframe after ~/start')

        bad = probe.set_parameters('/capture', min_translation=-1.0)[0]
        assert not bad.successful and 'min_translation' in bad.reason and '>= 0' in bad.reason
        fixed = probe.set_parameters('/capture', dataset_dir='/tmp/elsewhere')[0]
        assert not fixed.successful and 'start-up' in fixed.reason
        typed = probe.set_parameters('/capture', min_interval_s='soon')[0]
        assert not typed.successful and 'number' in typed.reason
        assert probe.set_parameters('/capture', min_translation=0.5)[0].successful
        rig.send(2.2, x=0.2)                                                 # 0.2 m < the new 0.5 m
        rig.wait_status(lambda v: count(v, 'rejected_moved_too_little') >= 1, 'the new threshold applied')

        response = probe.call(Trigger, '/capture/clear')
        assert response.success and 'cleared 1' in response.message
        rig.wait_status(lambda v: v['keyframes'] == '0', 'a cleared scan')
        assert json.loads((tmp_path / 'scan' / 'transforms.json').read_text())['frames'] == []
    finally:
        rig.close()


def test_query_node_refuses_empty_queries_and_queries_before_a_model(probe):
    from f3rm_ros.ros.query_node import QueryNode
    node = QueryNode(context=probe.context, parameter_overrides=[Parameter('status_rate_hz', value=20.0)])
    probe.add_node(node)
    try:
        status = probe.status('/query')
        answers = probe.subscribe(QueryAnswer, '/query/answer', latched_qos(10))
        query = probe.publisher(String, '/query/query')
        probe.wait_for_subscribers(query)
        query.publish(String(data=' , '))
        empty = answers.wait(lambda m: m.text == ' , ', 20, 'the answer to an empty query')
        assert empty.status == QueryAnswer.ERROR and 'empty' in empty.reason
        query.publish(String(data='mug'))
        # the empty query was the client's mistake (answered ERROR, not a problem of the node): one problem
        values = status_values(status.wait(lambda m: status_values(m)['answered'] == '2', 20, 'two answers'))
        assert values['problems'] == '1' and 'no model yet' in values['last_problem']
        assert values['last_status'] == 'no_model'
        assert answers.wait(lambda m: m.text == 'mug', 5, 'the answer to mug').status == QueryAnswer.NO_MODEL
        bad = probe.set_parameters('/query', **{'query.temperature': 'hot'})[0]
        assert not bad.successful and 'query.temperature' in bad.reason
        assert probe.set_parameters('/query', **{'query.negatives': ['table', 'wall']})[0].successful
        assert node.params.config.query.negatives == ('table', 'wall')
    finally:
        probe.executor.remove_node(node)
        node.destroy_node()


NODE_UNDER_SIGNALS = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)     # the test asks for every thread's stack if it hangs
from rclpy.node import Node
from sensor_msgs.msg import JointState
from f3rm_ros.ros.common import node_main

class Flood(Node):
    # a node whose executor is nearly always converting a message (long ones: Python code runs, signals land
    # there): where a raised KeyboardInterrupt used to kill it (about 1 stop in 8 before the fix)
    def __init__(self):
        print('starting', flush=True)                       # node_main's handler is in place from here on
        end = time.monotonic() + float(sys.argv[1])         # a slow start (a teacher loading) that runs Python
        while time.monotonic() < end:                       # code: a SIGINT landing on another thread is acted on
            time.sleep(0.01)                                # at the next step (one long C call would not notice)
        super().__init__('flood')
        self.taken = 0
        self.pub = self.create_publisher(JointState, 'flood', 100)
        self.sub = self.create_subscription(JointState, 'flood', self.on_message, 100)
        message = JointState(name=[f'joint{i}' for i in range(200)], position=[0.0] * 200)
        self.timer = self.create_timer(0.0005, lambda: self.pub.publish(message))

    def on_message(self, msg):
        self.taken += 1
        if self.taken == 100:                                # the executor has been taking messages a while
            print('spinning', flush=True)

    def destroy_node(self):
        print(f'cleaned up after {self.taken} messages', flush=True)
        return super().destroy_node()

sys.exit(node_main(Flood, ['flood']))
"""


def _interrupt_node(start_s: float, interrupts: int, after: str, tmp_path):
    """Start `NODE_UNDER_SIGNALS`, wait for `after` on its stdout, send SIGINTs back to back.

    Returns (exit code, stdout, stderr, seconds from the first SIGINT to the exit).
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from f3rm_ros.harness.testing import pick_domain_id, subprocess_env
    script = tmp_path / 'flood_node.py'
    script.write_text(NODE_UNDER_SIGNALS)
    err_path = tmp_path / 'stderr.txt'
    with open(err_path, 'w') as err:
        proc = subprocess.Popen([sys.executable, str(script), str(start_s)], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=subprocess_env(pick_domain_id()))
        lines = []
        try:
            deadline = time.monotonic() + 120                 # imports on a loaded machine
            while time.monotonic() < deadline and proc.poll() is None:
                lines.append(proc.stdout.readline())
                if after in lines[-1]:
                    break
            assert after in ''.join(lines), f'the node never said {after!r}: ' + ''.join(lines) + err_path.read_text()
            sent = time.monotonic()
            for _ in range(interrupts):
                os.kill(proc.pid, signal.SIGINT)
                time.sleep(0.002)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(2)
                raise AssertionError('no exit 60 s after SIGINT; its threads:\n' + err_path.read_text()) from None
            stopped_s = time.monotonic() - sent
        finally:
            if proc.poll() is None:   # it did not stop: leave no busy process behind
                proc.kill()
                proc.wait()
    return proc.returncode, ''.join(lines) + out, err_path.read_text(), stopped_s


@pytest.mark.parametrize('attempt', range(8))
def test_ctrl_c_plus_launchs_forwarded_sigint_stop_a_busy_node_once_and_cleanly(attempt, tmp_path):
    """A terminal's Ctrl-C and launch's forwarded SIGINT, back to back, while the node takes messages nonstop.

    Before: the first raised KeyboardInterrupt inside rclpy's message conversion (pybind11 made it a RuntimeError,
    exit 1 with a traceback), or the second landed inside the clean-up (exit -2).
    """
    code, out, err, _ = _interrupt_node(0.0, 2, 'spinning', tmp_path)
    assert code == 0, err
    assert out.count('cleaned up after') == 1, out
    assert int(out.split('cleaned up after ')[1].split()[0]) > 0, out     # it was busy when stopped
    assert 'Traceback' not in err, err
    # (two SIGINTs that arrive before Python runs its handler are one call: whether the second is reported as
    # ignored depends on timing; the gate's own test below covers that path)


def test_the_interrupt_gate_raises_only_while_starting_and_ignores_every_later_sigint(capsys):
    import signal
    from f3rm_ros.ros.common import InterruptGate
    starting = InterruptGate()
    with pytest.raises(KeyboardInterrupt):
        starting(signal.SIGINT, None)                  # building the node: stop at once
    starting(signal.SIGINT, None)                      # the forwarded one: ignored, said
    spinning = InterruptGate()
    spinning.spinning = True
    spinning(signal.SIGINT, None)                      # rclpy's handler stops the spin: nothing raised here
    assert capsys.readouterr().err.count('interrupt ignored: already stopping') == 1
    spinning(signal.SIGINT, None)
    assert 'interrupt ignored' in capsys.readouterr().err


def test_a_sigint_while_the_node_starts_stops_it_at_once(tmp_path):
    """Launch stopped before the node was built (a slow teacher load): no waiting it out, exit 0, nothing to clean."""
    code, out, err, stopped_s = _interrupt_node(90.0, 1, 'starting', tmp_path)
    assert code == 0, err
    assert stopped_s < 60, f'{stopped_s:.0f} s: the 90 s start ran on after the interrupt'
    assert 'spinning' not in out and 'cleaned up' not in out and 'Traceback' not in err, out + err
