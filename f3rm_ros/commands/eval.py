"""``f3rm-ros eval``: score checkpoints on a dataset's held-out views, one CSV row per checkpoint."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): tqdm and the evaluation, dataset
# and checkpoint modules (torch, nerfstudio, cv2).
import argparse
import json
from pathlib import Path


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """--eval-frames / --split, shared by eval and the experiments."""
    parser.add_argument('--eval-frames', help='held-out frame indices, e.g. "3,11,19" or "40-49" (default: the '
                                              "trainer's rule, every trainer.holdout_every-th frame)")
    parser.add_argument('--split', help='split_indices.json: {"train": [...], "eval": [...]} with frame indices '
                                        'or names (default: DATA/split_indices.json when it exists)')


def split_from_args(args, frames, holdout_every: int):
    """(train, eval, how) from --split, DATA/split_indices.json, --eval-frames or the hold-out rule."""
    from ..core.study.evaluation import make_split, parse_indices
    split = Path(args.split) if args.split else None
    if split is None and not args.eval_frames and (Path(args.data) / 'split_indices.json').is_file():
        split = Path(args.data) / 'split_indices.json'
    if split is not None and not split.is_file():
        raise FileNotFoundError(f'--split: {split} does not exist')
    eval_frames = parse_indices(args.eval_frames) if args.eval_frames else None
    return make_split(frames, holdout_every, eval_frames, split)


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser(
        'eval', help='score checkpoints on held-out views: PSNR, SSIM, LPIPS, depth, feature cosine, speed',
        description='Render the held-out views of DATA with each checkpoint and write one CSV row per checkpoint '
                    '(its config id, step, held-out PSNR, SSIM, LPIPS or n/a with why, depth error, feature cosine '
                    'to the teacher, rays/s and seconds per image), then print the table.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint', nargs='+', required=True, help='checkpoint files (any number)')
    parser.add_argument('--data', required=True, help='nerfstudio dataset the checkpoints were trained on')
    parser.add_argument('--downscale', type=int, default=4, help='integer image downscale (train uses 4)')
    parser.add_argument('--output', default='outputs/eval', help='output folder (eval.csv, configs.json)')
    parser.add_argument('--device', default='auto', help='cpu | cuda | auto')
    add_split_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Evaluate each checkpoint, write the CSVs atomically after each one, print the table."""
    from tqdm import tqdm

    from ..core.study.evaluation import EVAL_COLUMNS, evaluate_checkpoint, format_table, pick, write_csv_atomic
    from ..core.capture.frames import read_dataset, read_metadata
    from ..core.training.offline import dataset_labels
    from ..core.training.checkpoints import read_checkpoint
    checkpoints = [Path(p) for p in args.checkpoint]
    missing = [str(p) for p in checkpoints if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'--checkpoint: {", ".join(missing)} not found')
    meta = read_metadata(Path(args.data))
    frames = read_dataset(Path(args.data), downscale=args.downscale)
    first = [read_checkpoint(path) for path in checkpoints][0]   # every file checked before any work
    holdout = int(first['config'].get('trainer', {}).get('holdout_every', 8))
    _, evaluated, how = split_from_args(args, frames, holdout)
    if not evaluated:
        raise ValueError(f'no held-out frames to score ({how}): give --eval-frames or --split')
    print(f'{len(checkpoints)} checkpoint(s) x {len(evaluated)} held-out views ({how})')
    out = Path(args.output)
    rows, configs, lpips = [], {}, {}
    bar = tqdm(total=len(checkpoints) * len(evaluated), desc='eval', unit='view')
    for path in checkpoints:
        row = evaluate_checkpoint(path, pick(frames, evaluated), dataset_labels(meta), args.device, lpips, bar)
        configs[row['config_id']] = row.pop('_config')
        rows.append(row)
        write_csv_atomic(out / 'eval.csv', rows, EVAL_COLUMNS)  # only complete rows, after each checkpoint
        (out / 'configs.json').write_text(json.dumps(configs, indent=1))
    bar.close()
    print(format_table(rows, [c for c in EVAL_COLUMNS if c not in ('notes', 'checkpoint')]))
    for row in rows:
        if row['notes']:
            print(f'{row["checkpoint"]}: {row["notes"]}')
    print(f'results: {out / "eval.csv"} (configs by id: {out / "configs.json"})')
    return 0
