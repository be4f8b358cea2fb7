"""``f3rm-ros experiment frames | seeds | grid``: train many fields of one dataset unattended and compare them."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): core.config (yaml) and the
# dataset, training, teacher and study modules (torch, nerfstudio).
import argparse
import dataclasses
from pathlib import Path

from . import add_config_arguments, config_from_args
from .eval import add_split_arguments, split_from_args


def _floats(text):
    return [float(v) for v in text.split(',') if v.strip()]


def _ints(text):
    return [int(v) for v in text.split(',') if v.strip()]


def register(sub) -> None:
    """Add the sub-command and its three studies."""
    parser = sub.add_parser('experiment', help='studies: frame subsets, seeds, hyperparameter grids -> CSV + plot')
    studies = parser.add_subparsers(dest='study', required=True)
    help_text = {
        'frames': 'train on fractions of the training frames and on a few frames (first and last always kept)',
        'seeds': 'repeat one configuration with several seeds (mean ± std of PSNR, feature cosine, train time)',
        'grid': 'train every combination of --set values, checkpoint every N steps, evaluate each checkpoint',
    }
    for name, text in help_text.items():
        study = studies.add_parser(name, help=text, description=text + '. Writes runs.csv (one row per scored '
                                   'checkpoint), summary.csv (mean ± std per setting) and plot.png.',
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        study.add_argument('--data', required=True, help='nerfstudio dataset folder')
        study.add_argument('--output', default=f'outputs/experiment/{name}', help='output folder')
        study.add_argument('--steps', type=int, help='training steps per run (default: the preset\'s)')
        study.add_argument('--downscale', type=int, default=4, help='integer image downscale')
        study.add_argument('--teacher', choices=['auto', 'clip', 'labels'], default='auto', help='feature teacher')
        study.add_argument('--clip-weights', help='local open_clip weights file for the clip teacher')
        study.add_argument('--workspace', type=float, nargs=6, metavar='V', help='XMIN YMIN ZMIN XMAX YMAX ZMAX')
        study.add_argument('--checkpoint-every', type=int, default=0,
                           help='also checkpoint and score every N steps (0: only at the end)')
        study.add_argument('--seeds', type=int, nargs='+', default=[0] if name != 'seeds' else [0, 1, 2],
                           help='trainer seeds; every setting runs once per seed')
        study.add_argument('--mask-drop', action='store_true', help='also train each setting without its masks')
        study.add_argument('--mask-corrupt', type=int, metavar='K',
                           help='also train each setting with K training masks shifted a quarter image sideways')
        add_split_arguments(study)
        add_config_arguments(study, preset='cpu')
        study.set_defaults(func=run)
    frames = studies.choices['frames']
    frames.add_argument('--fractions', type=_floats, default=[1.0, 0.5, 0.25],
                        help='fractions of the training frames, e.g. 1,0.9,0.8')
    frames.add_argument('--counts', type=_ints, default=[], help='absolute training frame counts, e.g. 5,3,2,1')
    studies.choices['grid'].add_argument('--set', action='append', required=True, metavar='NAME=V1,V2',
                                         help='a config field and its values, e.g. trainer.steps=100,200 '
                                              '(repeatable: every combination is trained)')


def _prepare(args):
    """(frames, meta, base config, teacher, why, train pool, eval frames, how the split was made)."""
    from ..core.capture.frames import read_dataset, read_metadata
    from ..core.training.offline import dataset_labels, resolve_workspace
    from ..core.teachers import choose_teacher
    meta = read_metadata(Path(args.data))
    frames = read_dataset(Path(args.data), downscale=args.downscale)
    overrides = {'trainer': {'steps': args.steps}} if args.steps else {}
    if args.clip_weights:
        if not Path(args.clip_weights).is_file():
            raise FileNotFoundError(f'--clip-weights: {args.clip_weights} is not a file')
        overrides['teacher'] = {'pretrained': str(Path(args.clip_weights).resolve())}
    config = config_from_args(args, **overrides)
    workspace = (tuple(args.workspace[:3]), tuple(args.workspace[3:])) if args.workspace else None
    lo, hi = resolve_workspace(meta, frames, workspace)
    config.workspace.min_xyz, config.workspace.max_xyz = tuple(map(float, lo)), tuple(map(float, hi))
    teacher, why = choose_teacher(config, dataset_labels(meta), args.teacher)
    train, evaluated, how = split_from_args(args, frames, config.trainer.holdout_every)
    if not evaluated:
        raise ValueError(f'no held-out frames ({how}): give --eval-frames or --split')
    return frames, config, teacher, why, train, evaluated, how


def _runs(args, frames, config, train):
    """Return the study's runs (settings x seeds x mask variants) and the columns its summary groups by."""
    from ..core.config import merge_into, unflatten
    from ..core.study.experiments import Run, fraction_count, grid_points, mask_variants, parse_set, spread
    if args.study == 'frames':
        counts = [('fraction', f, fraction_count(f, len(train))) for f in args.fractions]
        counts += [('count', c, c) for c in args.counts]
        settings = [({'subset': f'{kind} {value:g}'}, spread(train, n)) for kind, value, n in counts]
        group = ['subset']
    elif args.study == 'seeds':
        settings, group = [({}, list(train))], []
    else:
        axes = parse_set(args.set, config)
        settings = [(point, list(train)) for point in grid_points(axes)]
        group = [name for name, _ in axes]
    variants = mask_variants(frames, train, args.mask_drop, args.mask_corrupt)
    if len(variants) > 1:
        group = group + ['masks']
    runs = []
    for params, subset in settings:
        for label, variant in variants:
            for seed in args.seeds:
                run_config = merge_into(config, unflatten(
                    {k: v for k, v in params.items() if k != 'subset'}))
                run_config = dataclasses.replace(run_config, trainer=dataclasses.replace(run_config.trainer,
                                                                                         seed=seed))
                shown = dict(params)
                if len(variants) > 1:
                    shown['masks'] = label
                shown['seed'] = seed
                runs.append(Run(shown, run_config, subset, variant, args.checkpoint_every))
    return runs, group


def run(args) -> int:
    """Build the runs, train and score them all, print the summary table and where the files are."""
    from ..core.study.experiments import run_study, summary_table
    frames, config, teacher, why, train, evaluated, how = _prepare(args)
    runs, group = _runs(args, frames, config, train)
    print(f'{args.study}: {len(runs)} runs of {config.trainer.steps} steps on {Path(args.data).name} '
          f'({len(frames)} frames, {len(train)} available for training, {len(evaluated)} held out: {how})')
    print(f'teacher: {teacher.name} ({why})')
    result = run_study(runs, evaluated, teacher, Path(args.output), group, f'{args.study}: {Path(args.data).name}')
    print(summary_table(result['summary'], group))
    print(f'runs: {result["runs_csv"]}\nsummary: {result["summary_csv"]}\nplot: {result["plot"]}\n'
          f'checkpoints: {Path(args.output) / "runs"}')
    return 0
