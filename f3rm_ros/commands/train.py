"""``f3rm-ros train``: fit the model to a nerfstudio dataset, report held-out PSNR, write renders."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): the teacher and training modules
# (torch, nerfstudio).
import argparse
from pathlib import Path

from . import add_config_arguments, config_from_args


def teacher_choice(value: str) -> str:
    """Return a --teacher value checked ('auto', or teacher names joined by +) for argparse."""
    from ..core.teachers import teacher_parts
    if value == 'auto':
        return value
    try:
        return '+'.join(teacher_parts(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('train', help='train on a nerfstudio dataset')
    parser.add_argument('--data', required=True, help='nerfstudio dataset folder (transforms.json)')
    parser.add_argument('--output', default='outputs/train', help='output folder (default: outputs/train)')
    parser.add_argument('--steps', type=int, help='training steps (default: from the preset)')
    parser.add_argument('--teacher', type=teacher_choice, default='auto',
                        help='feature teacher: auto = CLIP if its weights load, else labels if the dataset '
                             'has label maps, else random-weight CLIP (plumbing only, not semantic); clip, labels, '
                             'dino, custom (transforms.json feature_file_path), or several joined by + for one '
                             'feature head each: clip+dino (text from CLIP, DINO for matching), labels+custom ...')
    parser.add_argument('--clip-weights', help='local open_clip weights file for the clip teacher')
    parser.add_argument('--dino-weights', help="local DINO/DINOv2 weights file for the dino teacher ('timm' = hub; "
                                               "'' = random weights, plumbing only)")
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
    from ..core.training.offline import train_on_dataset
    overrides = {}
    if args.steps:
        overrides['trainer'] = {'steps': args.steps}
    if args.no_depth:
        overrides['model'] = {'depth_loss_mult': 0.0}
    if args.clip_weights:
        if not Path(args.clip_weights).is_file():
            raise FileNotFoundError(f'--clip-weights: {args.clip_weights} is not a file')
        overrides['teacher'] = {'pretrained': str(Path(args.clip_weights).resolve())}
    if args.dino_weights is not None:
        weights = args.dino_weights
        if weights not in ('', 'timm'):
            if not Path(weights).is_file():
                raise FileNotFoundError(f'--dino-weights: {weights} is not a file')
            weights = str(Path(weights).resolve())
        overrides['teacher'] = {**overrides.get('teacher', {}), 'dino_weights': weights}
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
