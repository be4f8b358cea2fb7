"""``f3rm-ros check-calibration``: draw the base-frame workspace box into camera images, to see the calibration.

Sources: a dataset (``--data``: a scan the capture node wrote, or an imported bag), a rosbag2 (``--bag`` with
the ``import-bag`` options) or the live robot (``--live`` with the same topic options: the frames are taken
through the capture node's own conversions, distortion, TF / pose topic and hand-eye composition). The box comes
from ``--workspace``, else the ``workspace`` section of ``--config`` (your params file), else the dataset's
``workspace`` entry, else the configuration's default; the output says which.
"""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): rclpy, tf2_ros, the ROS messages
# and the capture, training and config modules (cv2, scipy, torch, yaml).
import tempfile
import time
from pathlib import Path

import numpy as np

from . import add_dds_arguments
from .import_bag import add_import_arguments, settings_from_args


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('check-calibration', help='project the workspace box into camera images (a picture)',
                            description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--data', help='a nerfstudio dataset (a capture scan or an imported bag)')
    source.add_argument('--bag', help='a rosbag2 folder (topics and poses as for import-bag)')
    source.add_argument('--live', action='store_true', help='take frames from the live topics (--image, '
                                                            '--camera-info, --tf or --pose ...)')
    parser.add_argument('--frames', type=int, default=4, help='how many views to draw (default 4)')
    parser.add_argument('--timeout', type=float, default=30.0, help='--live: seconds to wait for the views')
    parser.add_argument('--config', action='append', help='params / config YAML with a workspace section')
    parser.add_argument('--out', default='outputs/calibration.png', help='picture to write')
    add_import_arguments(parser)
    add_dds_arguments(parser)
    parser.set_defaults(func=run)


def _workspace(args, meta):
    from ..core.config import make_config
    if args.workspace:
        return args.workspace[:3], args.workspace[3:], '--workspace'
    if args.config:
        config = make_config('gpu', [Path(p) for p in args.config])
        return config.workspace.min_xyz, config.workspace.max_xyz, f'the workspace section of {", ".join(args.config)}'
    if meta and 'workspace' in meta:
        return meta['workspace']['min'], meta['workspace']['max'], 'the dataset\'s "workspace" entry'
    config = make_config('gpu')
    return (config.workspace.min_xyz, config.workspace.max_xyz,
            f'the default configuration ({np.round(config.workspace.min_xyz, 2).tolist()} .. '
            f'{np.round(config.workspace.max_xyz, 2).tolist()}; pass --config your params file or --workspace)')


def _spread(frames, count):
    if len(frames) <= count:
        return list(frames)
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)] if count > 1 else frames[:1]


def run(args) -> int:
    """Draw and report."""
    from ..core.capture.calibration import box_in_view, contact_sheet, depth_inside_box, draw_workspace
    from ..core.capture.frames import read_dataset, read_metadata
    from ..core.training.render import save_png
    meta = None
    if args.data:
        meta = read_metadata(Path(args.data))
        frames = read_dataset(Path(args.data))
    elif args.bag:
        from ..ros.bag_import import import_bag
        with tempfile.TemporaryDirectory() as folder:
            import_bag(Path(args.bag), Path(folder) / 'scan', settings_from_args(args))
            frames = read_dataset(Path(folder) / 'scan')
    else:
        frames = live_frames(args)
    if not frames:
        raise ValueError('no posed camera frame to draw on')
    lo, hi, where = _workspace(args, meta)
    pictures = []
    print(f'workspace box from {where}: min {np.round(lo, 3).tolist()} max {np.round(hi, 3).tolist()} (base frame)')
    for frame in _spread(frames, max(1, args.frames)):
        seen, inside = box_in_view(frame, lo, hi), depth_inside_box(frame, lo, hi)
        depth_text = '' if np.isnan(inside) else f', {inside:.0%} of depth points inside the box'
        print(f'  {frame.name or frame.stamp}: {seen:.0%} of the box corners in view{depth_text}')
        pictures.append(draw_workspace(frame, lo, hi, f'{frame.name or f"{frame.stamp:.2f} s"}: box corners in view '
                                                      f'{seen:.0%}{depth_text}'))
    path = save_png(Path(args.out), contact_sheet(pictures))
    print(f'picture: {path} (yellow: the workspace box; red/green/blue: the base frame\'s x/y/z, 10 cm). The box '
          'must sit where you measured it in every view; one that slides or tilts between views means a wrong '
          'hand-eye calibration, base frame or intrinsics')
    return 0


def live_frames(args):
    """Keyframes from the live topics, through the capture node's conversions (first views, spread by the gate)."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from ..core.capture.camera import read_mask_file
    from ..core.capture.session import CaptureSession, CaptureSettings
    from ..core.capture.handeye import load_hand_eye
    from ..ros.capture_inputs import CaptureInputs, TfPoseLookup
    if (args.tf is None) == (not args.pose):
        raise ValueError('give the poses with --tf BASE FRAME (tf2) or --pose TOPIC')
    rclpy.init()
    node = rclpy.create_node('f3rm_check_calibration')
    try:
        lookup, base = None, 'base_link'
        held = []   # the tf listener fills `buffer` only while something references it
        if args.tf:
            try:
                import tf2_ros
            except ImportError as error:
                raise ValueError('--tf needs tf2_ros (a ROS install); use --pose TOPIC') from error
            buffer = tf2_ros.Buffer()
            held.append(tf2_ros.TransformListener(buffer, node))
            base = args.tf[0]
            lookup = TfPoseLookup(buffer, base, args.tf[1])
        session = CaptureSession(CaptureSettings(
            base_frame=base, min_sharpness=0.0, min_interval_s=args.min_interval, min_translation=args.min_translation,
            min_rotation_deg=args.min_rotation_deg, max_stamp_skew_s=0.0, capacity=args.frames,
            hand_eye=load_hand_eye(Path(args.hand_eye)) if args.hand_eye else None,
            static_mask=read_mask_file(args.mask) if args.mask else None), pose_lookup=lookup)
        frames = []
        inputs = CaptureInputs(session, base, lambda kind, text, level: node.get_logger().warning(text),
                               node.get_logger().info, {'image': args.image, 'depth': args.depth or 'depth'})

        def take(outcomes):
            frames.extend(o.frame for o in outcomes if o.kept)
        from ..ros.qos import sensor_subscription
        if args.image.endswith('/compressed'):
            sensor_subscription(node, CompressedImage, args.image, lambda m: take(inputs.compressed_image(m)))
        else:
            sensor_subscription(node, Image, args.image, lambda m: take(inputs.image(m)))
        sensor_subscription(node, CameraInfo, args.camera_info, inputs.camera_info)
        if args.depth:
            sensor_subscription(node, Image, args.depth, lambda m: take(inputs.depth(m)))
        if args.pose:
            sensor_subscription(node, PoseStamped, args.pose, lambda m: take(inputs.pose(m)))
        deadline = time.monotonic() + args.timeout
        print(f'waiting up to {args.timeout:.0f} s for {args.frames} views on {args.image} (move the arm between '
              'them) ...')
        while len(frames) < args.frames and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
            take(inputs.poll())
        if not frames:
            raise ValueError(f'no posed frame within {args.timeout:.0f} s: {session.stats.last_problem or "no image"}')
        return frames
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
