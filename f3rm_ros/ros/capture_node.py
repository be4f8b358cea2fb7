"""capture node: camera stream + poses → keyframes (topics with one stamp, and a nerfstudio dataset on disk).

Inputs (relative names, remap them): ``image`` (rgb8/bgr8/rgba8/bgra8/mono8...; with ``image_transport:
compressed`` the ``sensor_msgs/CompressedImage`` jpeg/png on ``<image>/compressed``), ``camera_info`` (K, and the
lens distortion D of plumb_bob / rational_polynomial / equidistant: each keyframe is undistorted once and
republished with the pinhole K_new and zero D; a rectified stream's P is used as it is), the pose from tf2
(``base_frame`` ← the image's optical frame, or ← ``ee_frame`` with a hand-eye calibration, at the image stamp)
or ``camera_pose`` (``geometry_msgs/PoseStamped`` of the optical frame, or of the end effector with
``pose_is_end_effector``, in ``base_frame``; interpolated at the image stamp, never extrapolated beyond
``pose_tolerance_s``), and optionally ``depth`` (aligned to colour, 16UC1 mm or 32FC1 m, paired within
``depth_slop_s``; ``depth_transport: compressedDepth`` reads ``<depth>/compressedDepth``), ``labels`` (object
ids, 16UC1), ``mask`` (mono8, 0 = ignore the pixel; ANDed with the static ``mask_file``) and ``label_names``
(String, JSON ``{"1": "mug"}``). Camera inputs use sensor-data QoS (best effort, keep last 5: matches
best-effort and reliable drivers) with the standard ``qos_overrides.<topic>.subscription.{reliability,history,
depth}`` parameters.
Outputs: ``~/keyframe/{image,camera_info,pose,depth,labels,mask}`` (one stamp per keyframe; reliable + transient
local so a restarted trainer gets the newest ones), ``~/keyframe/label_names`` (latched), ``~/keyframe/scan``
(latched String: the scan id; a trainer that hears a new one drops its model and keyframes), and its health on
``/diagnostics``. Services (std_srvs/Trigger): ``~/start``, ``~/stop``, ``~/new_scan`` (a new scan for capture
and, through ``~/keyframe/scan``, the trainer; ``~/clear`` is the same). A new node starts a new scan unless
``resume: true``. Bad input (an unknown distortion model, depth in another frame or of another size, a corrupt
compressed payload, TF that cannot be had at the stamp, a mask of the wrong size) is a throttled error naming
the topic and what to change; the frame is skipped (or kept without that input) and the node goes on. The
decisions live in `f3rm_ros.core.capture.session.CaptureSession`, the message handling in `capture_inputs.CaptureInputs`
(shared with ``f3rm-ros import-bag``).
"""
from __future__ import annotations

import time
from typing import List, Optional

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.capture.camera import read_mask_file
from ..core.capture.session import DISK_CAPACITY, ROUTINE, CaptureSession, CaptureSettings, Outcome
from ..core.capture.handeye import hand_eye_from_parameters
from . import conversions as conv
from .capture_inputs import CaptureInputs, TfPoseLookup
from .common import expand_path, node_main
from .diagnostics import NodeDiagnostics, ProblemLog, worse
from .logs import route_core_logging, unroute_core_logging
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos, sensor_subscription

try:  # tf2_ros has no pip wheel: the PoseStamped topic is the fallback
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the install
    tf2_ros = None


def _floats(count: int):
    def check(value):
        if (not isinstance(value, (list, tuple)) or len(value) != count
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return f'must be a list of {count} numbers, got {value!r}'
        return None
    return check


PARAMETERS = [
    ParamSpec('pose_source', 'auto', "where poses come from: 'tf' (tf2), 'topic' (camera_pose), "
              "'auto' (tf when tf2_ros imports)", validator=one_of('auto', 'tf', 'topic')),
    ParamSpec('camera_frame', '', "optical frame for tf lookups ('' = the image's header.frame_id)"),
    ParamSpec('pose_tolerance_s', 0.02, 'a frame at most this far before the first / after the last pose sample gets '
              'that sample; never extrapolated further (s)', True, non_negative),
    ParamSpec('pose_max_gap_s', 0.25, 'interpolate the pose only between samples at most this far apart (s)', True,
              non_negative),
    ParamSpec('pose_wait_s', 0.5, 'how long an image waits for its pose / aligned images (s)', True, non_negative),
    ParamSpec('pose_is_end_effector', False, 'poses (camera_pose topic, or tf base_frame <- ee_frame) are the end '
              "effector's: the camera's is T_base_ee @ T_ee_optical (hand_eye_*)"),
    ParamSpec('ee_frame', '', "end-effector frame for tf lookups with pose_is_end_effector (e.g. tool0, fr3_link8)"),
    ParamSpec('hand_eye_xyz', [0.0, 0.0, 0.0], 'hand-eye calibration T_ee_optical: translation (m)',
              validator=_floats(3)),
    ParamSpec('hand_eye_quaternion_xyzw', [0.0, 0.0, 0.0, 1.0], 'hand-eye calibration T_ee_optical: rotation '
              '(x, y, z, w) to the camera OPTICAL frame (z forward)', validator=_floats(4)),
    ParamSpec('hand_eye_file', '', "YAML hand-eye calibration instead of hand_eye_xyz / _quaternion_xyzw ('' = "
              'none; formats: f3rm_ros.core.capture.handeye)'),
    ParamSpec('image_transport', 'raw', "colour input: 'raw' (sensor_msgs/Image on image) or 'compressed' "
              '(CompressedImage jpeg/png on image/compressed)', validator=one_of('raw', 'compressed')),
    ParamSpec('depth_transport', 'raw', "depth input: 'raw' (Image on depth) or 'compressedDepth' (CompressedImage on "
              'depth/compressedDepth)', validator=one_of('raw', 'compressedDepth')),
    ParamSpec('depth_slop_s', 0.0, 'pair depth / labels / mask with the colour image stamped within this (s; 0 = half '
              'a frame period, from the image stamps)', True, non_negative),
    ParamSpec('depth_scale', 0.001, 'metres per unit of 16UC1 depth (0.001: millimetres)', validator=positive),
    ParamSpec('mask_file', '', "static mask image at the camera's resolution (white = keep, black = ignore: the "
              "gripper in a wrist camera; '' = none)"),
    ParamSpec('min_translation', 0.05, 'keyframe when the camera moved this far (m) ...', True, non_negative),
    ParamSpec('min_rotation_deg', 10.0, '... or turned this much (deg) since the last keyframe', True,
              non_negative),
    ParamSpec('min_interval_s', 0.5, 'minimum time between keyframes (s)', True, non_negative),
    ParamSpec('min_sharpness', 20.0, 'blur test: variance of the Laplacian below this is blurred (0 = off)', True,
              non_negative),
    ParamSpec('capacity', 0, f'most keyframes of the scan on disk (0 = {DISK_CAPACITY}; the trainer keeps the '
              'best-spread trainer.capacity of them)', True, non_negative),
    ParamSpec('ram_budget_mb', 4096.0, 'most MB of keyframe pixels a trainer must hold (0 = no limit)', True,
              non_negative),
    ParamSpec('dataset_dir', '', "nerfstudio dataset folder the scan is written to ('' = none)"),
    ParamSpec('resume', False, 'continue the scan found in dataset_dir (false: a new scan, the default)'),
    ParamSpec('max_stamp_skew_s', 120.0, "refuse image stamps further than this from the node's clock (s; 0 = "
              'no check): one future-stamped frame must not block the scan', True, non_negative),
    ParamSpec('max_image_side', 1280, 'store images whose longer side exceeds this downscaled to it (px; 0 = as '
              'they come)', True, lambda v: None if v == 0 or v >= 32 else f'must be 0 or >= 32, got {v!r}'),
    ParamSpec('start_scanning', True, 'keep keyframes from the start (else wait for ~/start)'),
    ParamSpec('keyframe_history', 8, 'keyframes a late or restarted subscriber still receives', validator=positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of the status on /diagnostics (Hz)', validator=positive),
    ParamSpec('hardware_id', '', "hardware_id of the status on /diagnostics ('' = the camera's frame id)"),
]
# how long a problem (a refused image, a failed write) keeps the status at WARN / ERROR (s)
PROBLEM_WINDOW_S = 10.0
CONFIG_SECTIONS = ('workspace', 'trainer')
RUNTIME_SETTINGS = ('pose_tolerance_s', 'pose_wait_s', 'pose_max_gap_s', 'min_translation', 'min_rotation_deg',
                    'min_interval_s', 'min_sharpness', 'capacity', 'ram_budget_mb', 'max_stamp_skew_s',
                    'max_image_side', 'depth_slop_s')


class CaptureNode(Node):
    """Keyframe selection for one camera (see the module docstring).

    `tf_buffer`: a tf2 buffer to use instead of creating ``tf2_ros.Buffer`` (anything with its
    ``lookup_transform(target, source, time, timeout)``; tests inject one where tf2_ros does not import).
    """

    def __init__(self, tf_buffer=None, **kwargs):
        super().__init__('capture', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS, on_change=self._on_parameter)
        p, workspace = self.params, self.params.config.workspace
        self.base_frame = workspace.base_frame
        self.problems = ProblemLog(self.get_logger())
        source = p['pose_source']
        if source == 'tf' and tf2_ros is None and tf_buffer is None:
            raise ValueError("pose_source is 'tf' but tf2_ros does not import; use 'topic' (camera_pose)")
        self.use_tf = source == 'tf' or (source == 'auto' and (tf2_ros is not None or tf_buffer is not None))
        hand_eye = None
        if p['pose_is_end_effector']:
            try:
                hand_eye = hand_eye_from_parameters(p['hand_eye_xyz'], p['hand_eye_quaternion_xyzw'],
                                                    expand_path(p['hand_eye_file']))
            except ValueError as error:
                raise ValueError(f'pose_is_end_effector: {error}') from error
            if self.use_tf and not p['ee_frame']:
                raise ValueError('pose_is_end_effector with tf poses needs ee_frame (the end-effector frame the '
                                 'hand-eye calibration starts from, e.g. tool0 or fr3_link8)')
        static_mask = read_mask_file(expand_path(p['mask_file'])) if p['mask_file'] else None
        settings = CaptureSettings(
            base_frame=self.base_frame, capacity=self._capacity(), ram_budget_mb=p['ram_budget_mb'],
            min_translation=p['min_translation'], min_rotation_deg=p['min_rotation_deg'],
            min_interval_s=p['min_interval_s'], min_sharpness=p['min_sharpness'],
            pose_tolerance_s=p['pose_tolerance_s'], pose_wait_s=p['pose_wait_s'],
            pose_max_gap_s=p['pose_max_gap_s'], depth_slop_s=p['depth_slop_s'], hand_eye=hand_eye,
            static_mask=static_mask, trainer_capacity=self.params.config.trainer.capacity,
            dataset_dir=expand_path(p['dataset_dir']), resume=p['resume'],
            max_stamp_skew_s=p['max_stamp_skew_s'], max_image_side=p['max_image_side'],
            workspace={'min': list(workspace.min_xyz), 'max': list(workspace.max_xyz)})
        route_core_logging(self, ('f3rm_ros.core.capture',))
        self._frame_frames: dict = {}
        lookup = None
        if self.use_tf:
            self.tf_buffer = tf_buffer if tf_buffer is not None else tf2_ros.Buffer()
            if tf_buffer is None:
                self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
            frame = p['ee_frame'] if hand_eye is not None else p['camera_frame']
            lookup = TfPoseLookup(self.tf_buffer, self.base_frame, frame, self._frame_frames.get)
        self.session = CaptureSession(settings, pose_lookup=lookup,
                                      stamp_clock=lambda: self.get_clock().now().nanoseconds * 1e-9)
        if not p['start_scanning']:
            self.session.stop()
        self.frame_ms = self.keyframe_ms = 0.0
        self.frame_ms_max = 0.0
        self.camera_frame = ''

        topics = {name: self.resolve_topic_name(name)
                  for name in ('image', 'camera_info', 'depth', 'labels', 'mask', 'camera_pose')}
        self.inputs = CaptureInputs(self.session, self.base_frame, self._report, self.get_logger().info, topics,
                                    depth_scale=p['depth_scale'])
        if not self.use_tf:
            sensor_subscription(self, PoseStamped, 'camera_pose', lambda msg: self._handle(self.inputs.pose(msg)))
        if p['image_transport'] == 'compressed':   # image_transport's names: <base topic>/compressed
            sensor_subscription(self, CompressedImage, topics['image'] + '/compressed',
                                lambda msg: self._on_image(msg, self.inputs.compressed_image))
        else:
            sensor_subscription(self, Image, 'image', lambda msg: self._on_image(msg, self.inputs.image))
        sensor_subscription(self, CameraInfo, 'camera_info', self.inputs.camera_info)
        if p['depth_transport'] == 'compressedDepth':
            sensor_subscription(self, CompressedImage, topics['depth'] + '/compressedDepth',
                                lambda msg: self._handle(self.inputs.compressed_depth(msg)))
        else:
            sensor_subscription(self, Image, 'depth', lambda msg: self._handle(self.inputs.depth(msg)))
        sensor_subscription(self, Image, 'labels', lambda msg: self._handle(self.inputs.labels(msg)))
        sensor_subscription(self, Image, 'mask', lambda msg: self._handle(self.inputs.mask(msg)))
        self.create_subscription(String, 'label_names', self._on_label_names, latched_qos())

        self.keyframe_publishers = {}
        self._create_keyframe_publishers()
        self.pub_names = self.create_publisher(String, '~/keyframe/label_names', latched_qos())
        self.pub_scan = self.create_publisher(String, '~/keyframe/scan', latched_qos())
        self.pub_scan.publish(String(data=self.session.scan_id))
        self.create_service(Trigger, '~/start', lambda req, res: self._trigger(res, self.session.start))
        self.create_service(Trigger, '~/stop', lambda req, res: self._trigger(res, self.session.stop))
        self.create_service(Trigger, '~/new_scan', lambda req, res: self._trigger(res, self.new_scan))
        self.create_service(Trigger, '~/clear', lambda req, res: self._trigger(res, self.new_scan))
        self.create_timer(0.05, self._poll)
        self.diagnostics = NodeDiagnostics(self, p['status_rate_hz'], self._health,
                                           lambda: p['hardware_id'] or self.camera_frame or 'camera',
                                           problems=self.problems)
        if self.session.label_names:
            self.pub_names.publish(String(data=conv.encode_label_names(self.session.label_names)))
        if self.use_tf:
            poses = f'tf2 ({self.base_frame} <- {lookup.frame or "the image frame"})'
        else:
            poses = f'the {topics["camera_pose"]} topic'
        self.get_logger().info(
            f'capture: poses from {poses}'
            + (', composed with the hand-eye calibration T_ee_optical' if hand_eye is not None else '')
            + f', images {p["image_transport"]} on {topics["image"]}'
            + ('/compressed' if p['image_transport'] == 'compressed' else '')
            + f', depth {p["depth_transport"]}, base frame {self.base_frame!r}'
            + (f', static mask {p["mask_file"]}' if static_mask is not None else '')
            + f', dataset {settings.dataset_dir or "(none)"} (up to {settings.capacity} keyframes)'
            + (f', resumed {self.session.resumed} keyframes of scan {self.session.scan_id}' if self.session.resumed
               else f', new scan {self.session.scan_id}'))

    def _create_keyframe_publishers(self) -> None:
        """(Re)create the latched keyframe outputs: a new scan must not hand its predecessor's to a trainer."""
        for publisher in self.keyframe_publishers.values():
            self.destroy_publisher(publisher)
        out = latched_qos(self.params['keyframe_history'])
        self.keyframe_publishers = {part: self.create_publisher(kind, f'~/keyframe/{part}', out) for part, kind in (
            ('image', Image), ('camera_info', CameraInfo), ('pose', PoseStamped), ('depth', Image),
            ('labels', Image), ('mask', Image))}

    def new_scan(self) -> str:
        """Start a new scan here and, through ``~/keyframe/scan``, in every trainer listening."""
        message = self.session.clear()
        self._create_keyframe_publishers()
        self.pub_scan.publish(String(data=self.session.scan_id))
        return message

    # ------------------------------------------------------------------------------------------ inputs

    def _on_label_names(self, msg: String) -> None:
        try:
            names = conv.decode_label_names(msg.data)
        except ValueError as error:
            self.problems.report('label_names', f'label_names ignored: {error}')
            return
        if self.session.set_label_names(names):
            self.pub_names.publish(String(data=conv.encode_label_names(names)))

    def _report(self, kind: str, message: str, level: str) -> None:
        if kind == 'stamp_note':
            self.get_logger().warning(message)
            return
        self.problems.report(kind, message, level=level)

    def _on_image(self, msg, handle) -> None:
        started = time.perf_counter()
        stamp = conv.stamp_to_seconds(msg.header.stamp)
        self.camera_frame = msg.header.frame_id or self.camera_frame
        if self.use_tf:
            self._frame_frames[stamp] = msg.header.frame_id
            while len(self._frame_frames) > 64:
                del self._frame_frames[next(iter(self._frame_frames))]
        kept = self._handle(handle(msg), msg.header.frame_id)
        elapsed = (time.perf_counter() - started) * 1e3
        self.frame_ms = 0.9 * self.frame_ms + 0.1 * elapsed if self.frame_ms else elapsed
        self.frame_ms_max = max(self.frame_ms_max * 0.999, elapsed)
        if kept:
            self.keyframe_ms = 0.7 * self.keyframe_ms + 0.3 * elapsed if self.keyframe_ms else elapsed

    def _poll(self) -> None:
        self._handle(self.inputs.poll())

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
                self.problems.report(outcome.kind, f'image {outcome.stamp:.3f} s not kept: {outcome.reason}',
                                     level='error' if outcome.kind == 'disk' else 'warn')
        return kept

    def _publish_keyframe(self, outcome: Outcome, frame_id: Optional[str]) -> None:
        frame = outcome.frame
        stamp = conv.seconds_to_stamp(frame.stamp)
        camera_frame = self.params['camera_frame'] or frame_id or 'camera_optical_frame'
        out = self.keyframe_publishers
        if frame.depth is not None:
            out['depth'].publish(conv.depth_to_image(frame.depth, stamp, camera_frame))
        if frame.labels is not None:
            out['labels'].publish(conv.labels_to_image(frame.labels, stamp, camera_frame))
        if frame.mask is not None:
            out['mask'].publish(conv.mask_to_image(frame.mask, stamp, camera_frame))
        out['camera_info'].publish(conv.K_to_camera_info(frame.K, frame.width, frame.height, stamp, camera_frame))
        out['pose'].publish(conv.pose_stamped(frame.T_base_optical, self.base_frame, stamp))
        out['image'].publish(conv.rgb_to_image(frame.image, stamp, camera_frame))
        self.get_logger().info(f'keyframe {outcome.index} at {frame.stamp:.3f} s: {outcome.reason}')

    def _health(self):
        """(level, message, values) of the status on /diagnostics (`NodeDiagnostics`)."""
        values = self.session.status()
        values.update({'frame_ms': round(self.frame_ms, 3), 'frame_ms_max': round(self.frame_ms_max, 3),
                       'keyframe_ms': round(self.keyframe_ms, 3),
                       'pose_source': 'tf' if self.use_tf else 'topic'})
        values.update({f'problem_{kind}': count for kind, count in sorted(self.problems.counts.items())})
        values['last_problem'] = self.problems.last_problem
        level, why = worse(self.session.health(), self.problems.recent(PROBLEM_WINDOW_S))
        message = (f'{"scanning" if values["scanning"] else "stopped"}, {values["keyframes"]} keyframes'
                   + (f'; {why}' if why else ''))
        return level, message, values

    def _trigger(self, response, action):
        response.message = action()
        response.success = True
        self.get_logger().info(response.message)
        return response

    def _capacity(self) -> int:
        return self.params['capacity'] or DISK_CAPACITY

    def _on_parameter(self, name: str, value) -> None:
        if name == 'capacity':
            value = self._capacity()
        if name in RUNTIME_SETTINGS:
            self.session.update_settings(**{name: value})

    def destroy_node(self):
        """Stop forwarding core logging here, then destroy the node."""
        unroute_core_logging(self)
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run f3rm_ros capture_node``."""
    return node_main(CaptureNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
