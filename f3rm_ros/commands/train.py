"""``f3rm-ros train``: fit the model to a nerfstudio dataset, report held-out PSNR, write renders."""
from pathlib import Path

from . import add_config_arguments, config_from_args


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('train', help='train on a nerfstudio dataset')
    parser.add_argument('--data', required=True, help='nerfstudio dataset folder (transforms.json)')
    parser.add_argument('--output', default='outputs/train', help='output folder (default: outputs/train)')
    parser.add_argument('--steps', type=int, help='training steps (default: from the preset)')
    parser.add_argument('--teacher', choices=['auto', 'clip', 'labels'], default='auto',
                        help='feature teacher: auto = CLIP if its weights load, else labels if the dataset '
                             'has label maps, else random-weight CLIP (plumbing only, not semantic)')
    parser.add_argument('--clip-weights', help='local open_clip weights file for the clip teacher')
    parser.add_argument('--no-depth', action='store_true',
                        help='ignore depth maps (no depth supervision), e.g. when depth is not registered to colour')
    parser.add_argument('--downscale', type=int, default=4, help='integer image downscale (default: 4)')
    parser.add_argument('--workspace', type=float, nargs=6, metavar='V',
                        help='workspace bounds XMIN YMIN ZMIN XMAX YMAX ZMAX in the dataset frame (overrides the '
                             "dataset's entry, its depth maps and its cameras)")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Train and print the summary."""
    from ..core.offline import train_on_dataset
    overrides = {}
    if args.steps:
        overrides['trainer'] = {'steps': args.steps}
    if args.no_depth:
        overrides['model'] = {'depth_loss_weight': 0.0}
    if args.clip_weights:
        if not Path(args.clip_weights).is_file():
            raise FileNotFoundError(f'--clip-weights: {args.clip_weights} is not a file')
        overrides['teacher'] = {'pretrained': str(Path(args.clip_weights).resolve())}
    config = config_from_args(args, **overrides)
    workspace = None
    if args.workspace:
        workspace = (tuple(args.workspace[:3]), tuple(args.workspace[3:]))
        if not all(a < b for a, b in zip(*workspace)):
            raise ValueError(f'--workspace needs XMIN YMIN ZMIN XMAX YMAX ZMAX with min < max, got {args.workspace}')
    report = train_on_dataset(config, Path(args.data), Path(args.output), downscale=args.downscale,
                              teacher_choice=args.teacher, workspace=workspace)
    print(f'teacher: {report.teacher} ({report.teacher_reason})')
    print(f'frames: {report.frames} ({report.heldout_frames} held out)  steps: {report.steps}  '
          f'time: {report.seconds:.0f} s')
    print(f'held-out PSNR: {report.psnr_before:.2f} dB before -> {report.psnr_after:.2f} dB after')
    print(f'checkpoint: {report.checkpoint}')
    for name, path in report.renders.items():
        print(f'{name}: {path}')
    return 0
