"""capture node: camera stream + poses → keyframes (topics with one stamp, and a nerfstudio dataset on disk).

Inputs (relative names, remap them): ``image`` (rgb8/bgr8/rgba8/bgra8/mono8...), ``camera_info``, the pose
from tf2 (``base_frame`` ← the image's optical frame at the image stamp) or ``camera_pose``
(``geometry_msgs/PoseStamped`` of the optical frame in ``base_frame``), and optionally ``depth`` (aligned,
16UC1 mm or 32FC1 m), ``labels`` (object ids, 16UC1) and ``label_names`` (String, JSON ``{"1": "mug"}``).
Outputs: ``~/keyframe/{image,camera_info,pose,depth,labels}`` (one stamp per keyframe; reliable + transient
local so a restarted trainer gets the newest ones), ``~/keyframe/label_names`` (latched), ``~/status``.
Services (std_srvs/Trigger): ``~/start``, ``~/stop``, ``~/clear``. The decisions live in
`f3rm_ros.core.capture.CaptureSession`.
"""
from __future__ import annotations

import time
from typing import List, Optional

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time as RosTime
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.capture import ROUTINE, CaptureSession, CaptureSettings, Outcome
from . import conversions as conv
from .common import expand_path, node_main
from .diagnostics import ProblemLog, status_message
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos, make_qos, QOS_CHOICES

try:  # tf2_ros has no pip wheel: the PoseStamped topic is the fallback
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the install
    tf2_ros = None

PARAMETERS = [
    ParamSpec('pose_source', 'auto', "where poses come from: 'tf' (tf2), 'topic' (camera_pose), "
              "'auto' (tf when tf2_ros imports)", validator=one_of('auto', 'tf', 'topic')),
    ParamSpec('camera_frame', '', "optical frame for tf lookups ('' = the image's header.frame_id)"),
    ParamSpec('input_qos', 'reliable', 'QoS of the camera inputs: ' + ' | '.join(QOS_CHOICES),
              validator=one_of(*QOS_CHOICES)),
    ParamSpec('pose_tolerance_s', 0.02, 'largest |pose stamp - image stamp| accepted (s)', True, non_negative),
    ParamSpec('pose_wait_s', 0.5, 'how long an image waits for its pose / aligned images (s)', True, non_negative),
    ParamSpec('min_translation', 0.05, 'keyframe when the camera moved this far (m) ...', True, non_negative),
    ParamSpec('min_rotation_deg', 10.0, '... or turned this much (deg) since the last keyframe', True,
              non_negative),
    ParamSpec('min_interval_s', 0.5, 'minimum time between keyframes (s)', True, non_negative),
    ParamSpec('min_sharpness', 20.0, 'blur test: variance of the Laplacian below this is blurred (0 = off)', True,
              non_negative),
    ParamSpec('capacity', 0, 'most keyframes per scan (0 = trainer.capacity, what the trainer can hold)', True,
              non_negative),
    ParamSpec('ram_budget_mb', 4096.0, 'most MB of keyframe pixels a trainer must hold (0 = no limit)', True,
              non_negative),
    ParamSpec('dataset_dir', '', "nerfstudio dataset folder the scan is written to ('' = none)"),
    ParamSpec('resume', True, 'continue a scan found in dataset_dir (false: start it afresh)'),
    ParamSpec('start_scanning', True, 'keep keyframes from the start (else wait for ~/start)'),
    ParamSpec('keyframe_history', 8, 'keyframes a late or restarted subscriber still receives', validator=positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of ~/status (Hz)', validator=positive),
]
CONFIG_SECTIONS = ('workspace', 'trainer')


class CaptureNode(Node):
    """Keyframe selection for one camera (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('capture', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS, on_change=self._on_parameter)
        p, workspace = self.params, self.params.config.workspace
        self.base_frame = workspace.base_frame
        self.problems = ProblemLog(self.get_logger())
        source = p['pose_source']
        if source == 'tf' and tf2_ros is None:
            raise ValueError("pose_source is 'tf' but tf2_ros does not import; use 'topic' (camera_pose)")
        self.use_tf = source == 'tf' or (source == 'auto' and tf2_ros is not None)
        settings = CaptureSettings(
            base_frame=self.base_frame, capacity=self._capacity(), ram_budget_mb=p['ram_budget_mb'],
            min_translation=p['min_translation'], min_rotation_deg=p['min_rotation_deg'],
            min_interval_s=p['min_interval_s'], min_sharpness=p['min_sharpness'],
            pose_tolerance_s=p['pose_tolerance_s'], pose_wait_s=p['pose_wait_s'],
            dataset_dir=expand_path(p['dataset_dir']), resume=p['resume'],
            workspace={'min': list(workspace.min_xyz), 'max': list(workspace.max_xyz)})
        self.session = CaptureSession(settings, pose_lookup=self._tf_lookup if self.use_tf else None)
        if not p['start_scanning']:
            self.session.stop()
        self.frame_ms = self.keyframe_ms = 0.0
        self.frame_ms_max = 0.0
        self._frame_frames: dict = {}

        qos = make_qos(p['input_qos'])
        if self.use_tf:
            self.tf_buffer = tf2_ros.Buffer()
            self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
        else:
            self.create_subscription(PoseStamped, 'camera_pose', self._on_pose, qos)
        self.create_subscription(Image, 'image', self._on_image, qos)
        self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos)
        self.create_subscription(Image, 'depth', lambda msg: self._on_aligned('depth', msg), qos)
        self.create_subscription(Image, 'labels', lambda msg: self._on_aligned('labels', msg), qos)
        self.create_subscription(String, 'label_names', self._on_label_names, latched_qos())

        out = latched_qos(p['keyframe_history'])
        self.pub_image = self.create_publisher(Image, '~/keyframe/image', out)
        self.pub_info = self.create_publisher(CameraInfo, '~/keyframe/camera_info', out)
        self.pub_pose = self.create_publisher(PoseStamped, '~/keyframe/pose', out)
        self.pub_depth = self.create_publisher(Image, '~/keyframe/depth', out)
        self.pub_labels = self.create_publisher(Image, '~/keyframe/labels', out)
        self.pub_names = self.create_publisher(String, '~/keyframe/label_names', latched_qos())
        self.pub_status = self.create_publisher(DiagnosticStatus, '~/status', 10)
        self.create_service(Trigger, '~/start', lambda req, res: self._trigger(res, self.session.start))
        self.create_service(Trigger, '~/stop', lambda req, res: self._trigger(res, self.session.stop))
        self.create_service(Trigger, '~/clear', lambda req, res: self._trigger(res, self.session.clear))
        self.create_timer(0.05, self._poll)
        self.status_timer = self.create_timer(1.0 / p['status_rate_hz'], self._publish_status)
        if self.session.label_names:
            self.pub_names.publish(String(data=conv.encode_label_names(self.session.label_names)))
        self.get_logger().info(
            f'capture: poses from {"tf2" if self.use_tf else "the camera_pose topic"}, base frame '
            f'{self.base_frame!r}, dataset {settings.dataset_dir or "(none)"}'
            + (f', resumed {self.session.resumed} keyframes' if self.session.resumed else ''))

    # ------------------------------------------------------------------------------------------ inputs

    def _tf_lookup(self, stamp: float):
        frame = self.params['camera_frame'] or self._frame_frames.get(stamp, '')
        if not frame:
            return None, 'the image has no header.frame_id and camera_frame is empty'
        try:
            transform = self.tf_buffer.lookup_transform(self.base_frame, frame, RosTime(seconds=stamp))
            return conv.transform_to_matrix(transform.transform), 'tf'
        except Exception as error:  # tf2 raises several exception types; all mean "not now"
            return None, f'tf {self.base_frame} <- {frame}: {error}'

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K, width, height = conv.camera_info_to_K(msg)
        except ValueError as error:
            self.problems.report('camera_info', f'camera_info ignored: {error}')
            return
        self.session.set_camera_info(K, width, height)

    def _on_pose(self, msg: PoseStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id != self.base_frame:
            self.problems.report('pose', f'camera_pose is in frame {msg.header.frame_id!r}, expected '
                                         f'{self.base_frame!r} (workspace.base_frame); ignored')
            return
        try:
            T = conv.pose_to_matrix(msg.pose)
            self._handle(self.session.add_pose(conv.stamp_to_seconds(msg.header.stamp), T))
        except ValueError as error:
            self.problems.report('pose', f'camera_pose ignored: {error}')

    def _on_aligned(self, kind: str, msg: Image) -> None:
        convert = (lambda: conv.depth_to_metres(msg)) if kind == 'depth' else (lambda: conv.image_to_labels(msg))
        self._handle(self.session.add_aux(kind, conv.stamp_to_seconds(msg.header.stamp), convert))

    def _on_label_names(self, msg: String) -> None:
        try:
            names = conv.decode_label_names(msg.data)
        except ValueError as error:
            self.problems.report('label_names', f'label_names ignored: {error}')
            return
        if self.session.set_label_names(names):
            self.pub_names.publish(String(data=conv.encode_label_names(names)))

    def _on_image(self, msg: Image) -> None:
        started = time.perf_counter()
        stamp = conv.stamp_to_seconds(msg.header.stamp)
        if self.use_tf:
            self._frame_frames[stamp] = msg.header.frame_id
            while len(self._frame_frames) > 64:
                del self._frame_frames[next(iter(self._frame_frames))]
        outcomes = self.session.add_image(stamp, msg.width, msg.height, lambda: conv.image_to_rgb(msg),
                                          msg.header.frame_id)
        kept = self._handle(outcomes, msg.header.frame_id)
        elapsed = (time.perf_counter() - started) * 1e3
        self.frame_ms = 0.9 * self.frame_ms + 0.1 * elapsed if self.frame_ms else elapsed
        self.frame_ms_max = max(self.frame_ms_max * 0.999, elapsed)
        if kept:
            self.keyframe_ms = 0.7 * self.keyframe_ms + 0.3 * elapsed if self.keyframe_ms else elapsed

    def _poll(self) -> None:
        self._handle(self.session.poll())

    # ------------------------------------------------------------------------------------------ outputs

    def _handle(self, outcomes: List[Outcome], frame_id: Optional[str] = None) -> int:
        kept = 0
        for outcome in outcomes:
            if outcome.kept:
                kept += 1
                self._publish_keyframe(outcome, frame_id)
            elif outcome.kind in ROUTINE:
                self.get_logger().debug(f'frame {outcome.stamp:.3f}: {outcome.reason}')
            else:
                self.problems.report(outcome.kind, f'image {outcome.stamp:.3f} s not kept: {outcome.reason}')
        return kept

    def _publish_keyframe(self, outcome: Outcome, frame_id: Optional[str]) -> None:
        frame = outcome.frame
        stamp = conv.seconds_to_stamp(frame.stamp)
        camera_frame = self.params['camera_frame'] or frame_id or 'camera_optical_frame'
        if frame.depth is not None:
            self.pub_depth.publish(conv.depth_to_image(frame.depth, stamp, camera_frame))
        if frame.labels is not None:
            self.pub_labels.publish(conv.labels_to_image(frame.labels, stamp, camera_frame))
        self.pub_info.publish(conv.K_to_camera_info(frame.K, frame.width, frame.height, stamp, camera_frame))
        self.pub_pose.publish(conv.pose_stamped(frame.T_base_optical, self.base_frame, stamp))
        self.pub_image.publish(conv.rgb_to_image(frame.image, stamp, camera_frame))
        self.get_logger().info(f'keyframe {outcome.index} at {frame.stamp:.3f} s: {outcome.reason}')

    def _publish_status(self) -> None:
        values = self.session.status()
        values.update({'frame_ms': round(self.frame_ms, 3), 'frame_ms_max': round(self.frame_ms_max, 3),
                       'keyframe_ms': round(self.keyframe_ms, 3),
                       'pose_source': 'tf' if self.use_tf else 'topic'})
        values.update({f'problem_{kind}': count for kind, count in sorted(self.problems.counts.items())})
        values['last_problem'] = self.problems.last_problem
        problem = values.get('last_problem') or values.get('full')
        level = DiagnosticStatus.WARN if values.get('full') else DiagnosticStatus.OK
        self.pub_status.publish(status_message(
            self.get_fully_qualified_name(), values, level,
            f'{"scanning" if values["scanning"] else "stopped"}, {values["keyframes"]} keyframes'
            + (f'; {problem}' if problem else '')))

    def _trigger(self, response, action):
        response.message = action()
        response.success = True
        self.get_logger().info(response.message)
        return response

    def _capacity(self) -> int:
        return self.params['capacity'] or self.params.config.trainer.capacity

    def _on_parameter(self, name: str, value) -> None:
        if name == 'capacity':
            value = self._capacity()
        names = ('pose_tolerance_s', 'pose_wait_s', 'min_translation', 'min_rotation_deg', 'min_interval_s',
                 'min_sharpness', 'capacity', 'ram_budget_mb')
        if name in names:
            self.session.update_settings(**{name: value})


def main(args=None) -> int:
    """``ros2 run f3rm_ros capture_node``."""
    return node_main(CaptureNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
