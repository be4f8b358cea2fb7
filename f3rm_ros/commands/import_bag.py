"""``f3rm-ros import-bag``: a recorded rosbag2 (mcap or sqlite3) → a nerfstudio dataset, as capture keeps it."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): ros.bag_import (cv2, scipy, ROS
# messages).
from pathlib import Path

WORKSPACE_HELP = ('workspace box XMIN YMIN ZMIN XMAX YMAX ZMAX in the base frame (m), written into the dataset '
                  '(default: from its depth maps when it has some, else where the cameras\' optical axes converge; '
                  'the command that reads the dataset logs which)')


def add_import_arguments(parser, bag_required: bool = True) -> None:
    """Topic and gate options shared by ``import-bag`` and ``demo --bag``."""
    parser.add_argument('--image', default='/camera/camera/color/image_raw',
                        help='colour topic: sensor_msgs/Image, or CompressedImage (TOPIC or TOPIC/compressed) '
                             '(default: /camera/camera/color/image_raw)')
    parser.add_argument('--camera-info', default='/camera/camera/color/camera_info',
                        help='CameraInfo of the colour images (default: /camera/camera/color/camera_info)')
    parser.add_argument('--depth', default='',
                        help='aligned depth topic (16UC1 mm / 32FC1 m, or TOPIC/compressedDepth), e.g. '
                             '/camera/camera/aligned_depth_to_color/image_raw')
    parser.add_argument('--labels', default='', help='object-id image topic aligned to colour (synthetic scans)')
    parser.add_argument('--mask-topic', default='', help='per-frame mask topic (mono8, 0 = ignore)')
    parser.add_argument('--tf', nargs=2, metavar=('BASE', 'FRAME'),
                        help='poses from the bag\'s /tf and /tf_static: BASE <- FRAME (the camera\'s optical frame, or '
                             'the end effector with --hand-eye)')
    parser.add_argument('--pose', default='', help='poses from a geometry_msgs/PoseStamped topic instead of TF')
    parser.add_argument('--hand-eye', default='', help='hand-eye calibration YAML (T_ee_optical): FRAME / --pose are '
                                                       'the end effector\'s')
    parser.add_argument('--mask', default='', help='static mask image at the camera resolution (white = keep)')
    parser.add_argument('--workspace', type=float, nargs=6, metavar='V', help=WORKSPACE_HELP)
    parser.add_argument('--min-translation', type=float, default=0.05, help='keyframe gate: metres moved (0.05)')
    parser.add_argument('--min-rotation-deg', type=float, default=10.0, help='... or degrees turned (10)')
    parser.add_argument('--min-interval', type=float, default=0.5, help='seconds between keyframes (0.5)')
    parser.add_argument('--min-sharpness', type=float, default=20.0, help='blur threshold, 0 = off (20)')
    parser.add_argument('--max-image-side', type=int, default=1280, help='store larger images downscaled (1280 px)')
    parser.add_argument('--depth-slop', type=float, default=0.0,
                        help='pair depth within this of colour (s; 0 = half a frame period)')
    parser.add_argument('--pose-tolerance', type=float, default=0.02,
                        help='never extrapolate a pose further than this (s, 0.02)')


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('import-bag', help='turn a recorded rosbag2 (mcap or sqlite3) into a dataset',
                            description='Reads a rosbag2 with the rosbags library and keeps keyframes exactly as the '
                                        'capture node does (same conversions, gate and writer): '
                                        'f3rm-ros import-bag BAG --tf base_link camera_color_optical_frame --out DIR')
    parser.add_argument('bag', help='the bag folder (holding metadata.yaml)')
    parser.add_argument('--out', required=True, help='dataset folder to write')
    parser.add_argument('--overwrite', action='store_true', help='replace a dataset already in --out')
    add_import_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(args):
    """Build the ImportSettings of the parsed options."""
    from ..ros.bag_import import ImportSettings, parse_workspace
    workspace = parse_workspace(args.workspace)
    return ImportSettings(
        image=args.image, camera_info=args.camera_info, depth=args.depth, labels=args.labels,
        mask_topic=args.mask_topic, tf=tuple(args.tf) if args.tf else None, pose=args.pose, mask_file=args.mask,
        hand_eye_file=args.hand_eye, workspace=None if workspace is None else workspace.tolist(),
        capture={'min_translation': args.min_translation, 'min_rotation_deg': args.min_rotation_deg,
                 'min_interval_s': args.min_interval, 'min_sharpness': args.min_sharpness,
                 'max_image_side': args.max_image_side, 'depth_slop_s': args.depth_slop,
                 'pose_tolerance_s': args.pose_tolerance})


def run(args) -> int:
    """Import and say what came of it."""
    from ..ros.bag_import import import_bag
    result = import_bag(Path(args.bag), Path(args.out), settings_from_args(args), overwrite=args.overwrite)
    print(f'{result.keyframes} keyframes in {result.out}; train with: f3rm-ros train --data {result.out}')
    return 0
