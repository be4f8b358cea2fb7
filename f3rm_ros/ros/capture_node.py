"""capture node: camera stream + poses → keyframes (topics with one stamp, and a nerfstudio dataset on disk).

Inputs (relative names, remap them): ``image`` (rgb8/bgr8/rgba8/bgra8/mono8...), ``camera_info``, the pose
from tf2 (``base_frame`` ← the image's optical frame at the image stamp) or ``camera_pose``
(``geometry_msgs/PoseStamped`` of the optical frame in ``base_frame``), and optionally ``depth`` (aligned,
16UC1 mm or 32FC1 m), ``labels`` (object ids, 16UC1) and ``label_names`` (String, JSON ``{"1": "mug"}``).
Camera inputs use sensor-data QoS (best effort, keep last 5: matches best-effort and reliable drivers) with the
standard ``qos_overrides.<topic>.subscription.{reliability,history,depth}`` parameters.
Outputs: ``~/keyframe/{image,camera_info,pose,depth,labels}`` (one stamp per keyframe; reliable + transient
local so a restarted trainer gets the newest ones), ``~/keyframe/label_names`` (latched), ``~/keyframe/scan``
(latched String: the scan id; a trainer that hears a new one drops its model and keyframes), and its health on
``/diagnostics``. Services (std_srvs/Trigger): ``~/start``, ``~/stop``, ``~/new_scan`` (a new scan for capture
and, through ``~/keyframe/scan``, the trainer; ``~/clear`` is the same). A new node starts a new scan unless
``resume: true``. The decisions live in `f3rm_ros.core.capture.CaptureSession`.
"""
from __future__ import annotations

import time
from typing import List, Optional

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time as RosTime
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.capture import ROUTINE, CaptureSession, CaptureSettings, Outcome
from . import conversions as conv
from .common import expand_path, node_main
from .diagnostics import NodeDiagnostics, ProblemLog, worse
from .logs import route_core_logging, unroute_core_logging
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos, sensor_subscription

try:  # tf2_ros has no pip wheel: the PoseStamped topic is the fallback
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the install
    tf2_ros = None

PARAMETERS = [
    ParamSpec('pose_source', 'auto', "where poses come from: 'tf' (tf2), 'topic' (camera_pose), "
              "'auto' (tf when tf2_ros imports)", validator=one_of('auto', 'tf', 'topic')),
    ParamSpec('camera_frame', '', "optical frame for tf lookups ('' = the image's header.frame_id)"),
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
            max_stamp_skew_s=p['max_stamp_skew_s'], max_image_side=p['max_image_side'],
            workspace={'min': list(workspace.min_xyz), 'max': list(workspace.max_xyz)})
        route_core_logging(self, ('f3rm_ros.core.capture', 'f3rm_ros.core.keyframes', 'f3rm_ros.core.frames'))
        self.session = CaptureSession(settings, pose_lookup=self._tf_lookup if self.use_tf else None,
                                      stamp_clock=lambda: self.get_clock().now().nanoseconds * 1e-9)
        if not p['start_scanning']:
            self.session.stop()
        self.frame_ms = self.keyframe_ms = 0.0
        self.frame_ms_max = 0.0
        self._frame_frames: dict = {}
        self.camera_frame = ''

        if self.use_tf:
            self.tf_buffer = tf2_ros.Buffer()
            self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
        else:
            sensor_subscription(self, PoseStamped, 'camera_pose', self._on_pose)
        sensor_subscription(self, Image, 'image', self._on_image)
        sensor_subscription(self, CameraInfo, 'camera_info', self._on_camera_info)
        sensor_subscription(self, Image, 'depth', lambda msg: self._on_aligned('depth', msg))
        sensor_subscription(self, Image, 'labels', lambda msg: self._on_aligned('labels', msg))
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
                                           lambda: p['hardware_id'] or self.camera_frame or 'camera')
        if self.session.label_names:
            self.pub_names.publish(String(data=conv.encode_label_names(self.session.label_names)))
        self.get_logger().info(
            f'capture: poses from {"tf2" if self.use_tf else "the camera_pose topic"}, base frame '
            f'{self.base_frame!r}, dataset {settings.dataset_dir or "(none)"}'
            + (f', resumed {self.session.resumed} keyframes of scan {self.session.scan_id}' if self.session.resumed
               else f', new scan {self.session.scan_id}'))

    def _create_keyframe_publishers(self) -> None:
        """(Re)create the latched keyframe outputs: a new scan must not hand its predecessor's to a trainer."""
        for publisher in self.keyframe_publishers.values():
            self.destroy_publisher(publisher)
        out = latched_qos(self.params['keyframe_history'])
        self.keyframe_publishers = {part: self.create_publisher(kind, f'~/keyframe/{part}', out) for part, kind in (
            ('image', Image), ('camera_info', CameraInfo), ('pose', PoseStamped), ('depth', Image),
            ('labels', Image))}

    def new_scan(self) -> str:
        """Start a new scan here and, through ``~/keyframe/scan``, in every trainer listening."""
        message = self.session.clear()
        self._create_keyframe_publishers()
        self.pub_scan.publish(String(data=self.session.scan_id))
        return message

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
        self.camera_frame = msg.header.frame_id or self.camera_frame
        try:
            conv.check_colour_encoding(msg.encoding)
        except ValueError as error:
            self._handle([self.session.refuse(stamp, 'encoding', str(error))])
            return
        if self.use_tf:
            self._frame_frames[stamp] = msg.header.frame_id
            while len(self._frame_frames) > 64:
                del self._frame_frames[next(iter(self._frame_frames))]
        outcomes = self.session.add_image(stamp, msg.width, msg.height, lambda: conv.image_to_rgb(msg),
                                          msg.header.frame_id)
        if self.session.stamp_note:
            self.get_logger().warning(self.session.stamp_note)
            self.session.stamp_note = ''
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
        return self.params['capacity'] or self.params.config.trainer.capacity

    def _on_parameter(self, name: str, value) -> None:
        if name == 'capacity':
            value = self._capacity()
        names = ('pose_tolerance_s', 'pose_wait_s', 'min_translation', 'min_rotation_deg', 'min_interval_s',
                 'min_sharpness', 'capacity', 'ram_budget_mb', 'max_stamp_skew_s', 'max_image_side')
        if name in names:
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
