"""replay node: plays a nerfstudio dataset (or a generated synthetic table) as a robot arm's camera would.

Publishes at ``rate_hz``, each frame stamped with the current time: ``image`` (rgb8), ``camera_info``,
``camera_pose`` (PoseStamped of the optical frame in ``base_frame``), ``depth`` (32FC1 metres),
``labels`` (16UC1 object ids) and ``mask`` (mono8, 0 = ignore) when the data has them, ``label_names`` (latched
JSON), and TF
(``base_frame`` → ``camera_frame``) where tf2_ros exists. ``loop`` replays forever; ``~/pause`` and
``~/resume`` (std_srvs/Trigger) hold and continue the arm. Its status on ``/diagnostics`` says how far it got.
"""
from __future__ import annotations

# Imported where used (heavy): core.training.offline (nerfstudio) for a dataset's label names, core.scenes.table
# (open3d) for the synthetic scene.
from pathlib import Path

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.capture.frames import read_dataset, read_metadata
from . import conversions as conv
from .common import expand_path, node_main
from .diagnostics import NodeDiagnostics
from .logs import route_core_logging, unroute_core_logging
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos, make_qos, QOS_CHOICES

try:
    import tf2_ros
    from geometry_msgs.msg import TransformStamped
except ImportError:  # pragma: no cover - depends on the install
    tf2_ros = None

PARAMETERS = [
    ParamSpec('dataset', '', "nerfstudio dataset folder to play ('' = generate a synthetic table scene)"),
    ParamSpec('downscale', 1, 'integer image downscale of the dataset', validator=positive),
    ParamSpec('scene_seed', 0, 'synthetic scene: random seed'),
    ParamSpec('scene_objects', ['mug', 'bowl', 'box'], 'synthetic scene: objects (see core/scenes/table.py CATALOGUE)'),
    ParamSpec('scene_views', 40, 'synthetic scene: number of views', validator=positive),
    ParamSpec('scene_width', 160, 'synthetic scene: image width (px)', validator=positive),
    ParamSpec('scene_height', 120, 'synthetic scene: image height (px)', validator=positive),
    ParamSpec('rate_hz', 2.0, 'frames per second', validator=positive),
    ParamSpec('loop', False, 'start again after the last frame'),
    ParamSpec('start_delay_s', 1.0, 'wait this long before the first frame (subscribers connect)',
              validator=non_negative),
    ParamSpec('camera_frame', 'camera_color_optical_frame', 'frame_id of the images (optical axes)'),
    ParamSpec('base_frame', 'base_link', 'frame of the poses'),
    ParamSpec('publish_depth', True, 'publish aligned depth when the data has it'),
    ParamSpec('publish_labels', True, 'publish object-id images and label_names when the data has them'),
    ParamSpec('publish_tf', True, 'broadcast base_frame -> camera_frame on TF (needs tf2_ros)'),
    ParamSpec('output_qos', 'reliable', 'QoS of the camera outputs: ' + ' | '.join(QOS_CHOICES)
              + ' (reliable reaches reliable and best-effort subscribers alike)', validator=one_of(*QOS_CHOICES)),
]


def load_frames(node_params):
    """(frames, {id: name}) of the dataset or of a synthetic scene built from the parameters."""
    from ..core.training.offline import dataset_labels
    if node_params['dataset']:
        root = Path(expand_path(node_params['dataset']))
        return read_dataset(root, downscale=node_params['downscale']), dataset_labels(read_metadata(root)) or {}
    from ..core.scenes.table import make_scene
    scene = make_scene(node_params['scene_seed'], object_names=list(node_params['scene_objects']),
                       num_views=node_params['scene_views'], width=node_params['scene_width'],
                       height=node_params['scene_height'])
    return scene.frames, scene.labels


class ReplayNode(Node):
    """A robot arm in a box (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('replay', **kwargs)
        self.params = p = NodeParameters(self, PARAMETERS)
        route_core_logging(self, ('f3rm_ros.core.scenes',))
        self.frames, self.label_names = load_frames(p)
        if not self.frames:
            raise ValueError('nothing to replay: the dataset has no frames')
        qos = make_qos(p['output_qos'])
        self.pub_image = self.create_publisher(Image, 'image', qos)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.pub_pose = self.create_publisher(PoseStamped, 'camera_pose', qos)
        self.pub_depth = self.create_publisher(Image, 'depth', qos)
        self.pub_labels = self.create_publisher(Image, 'labels', qos)
        self.pub_mask = self.create_publisher(Image, 'mask', qos)      # a dataset's per-frame masks (mask_path)
        self.pub_names = self.create_publisher(String, 'label_names', latched_qos())
        self.tf = tf2_ros.TransformBroadcaster(self) if tf2_ros is not None and p['publish_tf'] else None
        if p['publish_labels'] and self.label_names:
            self.pub_names.publish(String(data=conv.encode_label_names(self.label_names)))
        self.index = 0
        self.published = 0
        self.paused = False
        self.create_service(Trigger, '~/pause', lambda req, res: self._set_paused(res, True))
        self.create_service(Trigger, '~/resume', lambda req, res: self._set_paused(res, False))
        self.diagnostics = NodeDiagnostics(self, 1.0, self._health,
                                           f'replay of {p["dataset"] or "a synthetic table"}')
        self._delay = self.create_timer(max(p['start_delay_s'], 1e-3), self._begin)
        self.timer = None
        self.get_logger().info(f'replaying {len(self.frames)} frames at {p["rate_hz"]} Hz '
                               f'({p["dataset"] or "synthetic scene"})')

    def _begin(self) -> None:
        self._delay.cancel()
        self.timer = self.create_timer(1.0 / self.params['rate_hz'], self._tick)

    @property
    def done(self) -> bool:
        """True once every frame was played (never when looping)."""
        return self.index >= len(self.frames) and not self.params['loop']

    def _tick(self) -> None:
        if self.paused or self.done:
            return
        if self.index >= len(self.frames):
            self.index = 0
        frame = self.frames[self.index]
        stamp = self.get_clock().now().to_msg()
        p, camera = self.params, self.params['camera_frame']
        if self.tf is not None:
            transform = TransformStamped(header=conv.make_header(p['base_frame'], stamp), child_frame_id=camera,
                                         transform=conv.matrix_to_transform(frame.T_base_optical))
            self.tf.sendTransform(transform)
        if p['publish_depth'] and frame.depth is not None:
            self.pub_depth.publish(conv.depth_to_image(frame.depth, stamp, camera))
        if p['publish_labels'] and frame.labels is not None:
            self.pub_labels.publish(conv.labels_to_image(frame.labels, stamp, camera))
        if frame.mask is not None:
            self.pub_mask.publish(conv.mask_to_image(frame.mask, stamp, camera))
        self.pub_info.publish(conv.K_to_camera_info(frame.K, frame.width, frame.height, stamp, camera))
        self.pub_pose.publish(conv.pose_stamped(frame.T_base_optical, p['base_frame'], stamp))
        self.pub_image.publish(conv.rgb_to_image(frame.image, stamp, camera))
        self.index += 1
        self.published += 1
        if self.done:
            self.get_logger().info(f'replay finished: {self.published} frames published')

    def _set_paused(self, response, paused: bool):
        self.paused = paused
        response.success = True
        response.message = f'{"paused" if paused else "playing"} at frame {self.index} of {len(self.frames)}'
        return response

    def _health(self):
        state = 'done' if self.done else ('paused' if self.paused else 'playing')
        return ('ok', f'{state}: frame {self.index} of {len(self.frames)}',
                {'state': state, 'published': self.published, 'index': self.index, 'frames': len(self.frames)})

    def destroy_node(self):
        """Stop forwarding core logging here, then destroy the node."""
        unroute_core_logging(self)
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run f3rm_ros replay_node``."""
    return node_main(ReplayNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
