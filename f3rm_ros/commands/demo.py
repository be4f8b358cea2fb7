"""``f3rm-ros demo``: scan a table over ROS 2, train online, answer queries, write a report."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): harness.demo and ros.bag_import
# (rclpy, open3d, cv2, ROS messages).
from pathlib import Path

from . import add_dds_arguments
from .import_bag import add_import_arguments, settings_from_args


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('demo', help='the whole product on a synthetic table (or --data): scan, train, query',
                            description='Replays an arm-camera scan over ROS 2 (--localhost-only keeps DDS on '
                                        'this machine), '
                                        'captures keyframes, trains the feature field online, asks text queries '
                                        'and writes report.md with pictures. Ctrl-C stops cleanly.')
    parser.add_argument('--output', default='outputs/demo', help='output folder (default: outputs/demo)')
    parser.add_argument('--data', help='replay this nerfstudio dataset instead of the synthetic table')
    parser.add_argument('--bag', help='import this rosbag2 (mcap or sqlite3; topics and poses: --image, --camera-info, '
                                      '--depth, --tf or --pose ...) into OUTPUT/bag_dataset and replay it')
    parser.add_argument('--query', action='append', help='query text (repeatable; default: every object)')
    parser.add_argument('--seed', type=int, default=7, help='synthetic table layout seed (default: 7)')
    parser.add_argument('--steps', type=int, default=500, help='training steps (default: 500)')
    parser.add_argument('--budget', type=float, default=480.0, help='training time budget, s (default: 480)')
    parser.add_argument('--views', type=int, default=48, help='synthetic scan views (default: 48)')
    parser.add_argument('--size', default='160x120', help='synthetic image size WxH (default: 160x120)')
    parser.add_argument('--objects', help='comma-separated objects on the synthetic table (default: mug, bowl, '
                                          'ball, bottle, screwdriver; catalogue: also box, can, banana)')
    parser.add_argument('--preset', default='cpu-tiny', help='config preset (default: cpu-tiny)')
    parser.add_argument('--teacher', choices=['auto', 'clip', 'labels'], default='auto',
                        help="auto (default): CLIP when its weights load (the 'openai' hub tag, or --clip-weights), "
                             'else the ground-truth labels teacher; the report says which ran and why')
    parser.add_argument('--clip-model', default='ViT-B-16', help='open_clip model name (default: ViT-B-16)')
    parser.add_argument('--clip-image-size', type=int, default=224, help='CLIP input size (default: 224)')
    parser.add_argument('--clip-weights', default='', help='local open_clip weights file for --clip-model')
    add_import_arguments(parser)        # --image --camera-info --depth --tf/--pose ... --workspace (for --bag)
    add_dds_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run the demo."""
    from ..harness.demo import DemoSettings, run_demo
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        raise SystemExit(f'--size must look like 160x120, got {args.size!r}')
    extra = {}
    if args.bag and args.data:
        raise SystemExit('give --data or --bag, not both')
    data = Path(args.data) if args.data else None
    if args.bag:
        from ..ros.bag_import import import_bag
        data = Path(args.output) / 'bag_dataset'
        import_bag(Path(args.bag), data, settings_from_args(args), overwrite=True)
    if args.workspace:
        extra['workspace'] = tuple(args.workspace)
    if args.objects:
        extra['objects'] = tuple(name.strip() for name in args.objects.split(',') if name.strip())
    settings = DemoSettings(output=Path(args.output), data=data,
                            seed=args.seed, steps=args.steps, budget_s=args.budget, views=args.views,
                            width=width, height=height, preset=args.preset, queries=tuple(args.query or ()),
                            teacher=args.teacher, clip_model=args.clip_model, clip_image_size=args.clip_image_size,
                            clip_weights=args.clip_weights, **extra)
    try:
        run_demo(settings)
    except KeyboardInterrupt:
        return 130
    return 0
