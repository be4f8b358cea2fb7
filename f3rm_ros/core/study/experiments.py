"""Unattended training studies on one dataset: frame subsets, seeds, mask variants and hyperparameter grids.

Every run trains an `OnlineTrainer` on its own training frames, checkpoints every N steps, and scores each
checkpoint on the same held-out views (`evaluation.evaluate_views`); the teacher's features are computed once
per frame for the whole study (`CachedTeacher`), so twenty runs cost one pass of CLIP. Rows are written to the
CSV atomically after each checkpoint's score: an interrupted study keeps every complete row and no partial one.
"""
from __future__ import annotations

# Imported where used: matplotlib.pyplot (heavy), after choosing the Agg backend, only when a study is plotted.
import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..config import F3RMConfig, merge_into, unflatten
from .evaluation import evaluate_views, format_table, write_csv_atomic
from ..capture.frames import FrameStore, PosedFrame
from ..training.trainer import OnlineTrainer

log = logging.getLogger(__name__)

METRICS = ('psnr', 'ssim', 'depth_mae_m', 'feature_cosine', 'train_seconds')


class CachedTeacher:
    """A teacher whose features are computed once per frame object and reused by every later run."""

    def __init__(self, teacher):
        self.inner = teacher
        self._cache: Dict[int, Tuple[PosedFrame, torch.Tensor]] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Features [B, h, w, D] of `frames`, from the cache where possible."""
        todo = [f for f in frames if id(f) not in self._cache]
        if todo:
            for frame, features in zip(todo, self.inner.extract(todo)):
                self._cache[id(frame)] = (frame, features)   # the frame is kept: its id stays unique
        return torch.stack([self._cache[id(f)][1] for f in frames])


# ---------------------------------------------------------------------------------------------- subsets


def spread(pool: Sequence[int], count: int) -> List[int]:
    """`count` items of `pool` evenly spread over it, always the first and (count >= 2) the last."""
    if count < 1:
        raise ValueError(f'an empty frame subset: {count} training frames asked for')
    if count > len(pool):
        raise ValueError(f'{count} training frames asked for, but only {len(pool)} are available for training')
    picks = np.unique(np.round(np.linspace(0, len(pool) - 1, count)).astype(int)) if count > 1 else [0]
    return [pool[i] for i in picks]


def fraction_count(fraction: float, pool_size: int) -> int:
    """Frames a fraction of the pool keeps (at least 1; an empty subset is an error)."""
    if not 0 < fraction <= 1:
        raise ValueError(f'fraction {fraction} must be in (0, 1]')
    return max(1, int(round(fraction * pool_size)))


def mask_variants(frames: Sequence[PosedFrame], train: Sequence[int], drop: bool,
                  corrupt: Optional[int]) -> List[Tuple[str, List[PosedFrame]]]:
    """[(label, frames)]: the masks as recorded, plus without masks (`drop`) and/or `corrupt` masks made wrong.

    A wrong mask is the frame's own mask shifted by a quarter of the image width (a misregistered gripper mask),
    on `corrupt` training frames spread over the scan.
    """
    variants = [('as recorded', list(frames))]
    if not drop and not corrupt:
        return variants
    masked = [i for i in train if frames[i].mask is not None]
    if not masked:
        raise ValueError('--mask-drop / --mask-corrupt need masks, but no training frame of the dataset has one '
                         '(mask_path in transforms.json)')
    if drop:
        variants.append(('dropped', [dataclasses.replace(f, mask=None) if f.mask is not None else f
                                     for f in frames]))
    if corrupt:
        if corrupt > len(masked):
            raise ValueError(f'--mask-corrupt {corrupt}: only {len(masked)} training frames have masks')
        wrong = set(spread(masked, corrupt))
        variants.append((f'{corrupt} corrupt', [
            dataclasses.replace(f, mask=np.roll(f.mask, f.width // 4, axis=1)) if i in wrong else f
            for i, f in enumerate(frames)]))
    return variants


# ---------------------------------------------------------------------------------------------- grids


def parse_set(options: Sequence[str], base: F3RMConfig) -> List[Tuple[str, List[Any]]]:
    """``['trainer.steps=100,200', 'model.hidden_dim=16,32']`` → [(name, [values])], checked against `base`."""
    axes = []
    for option in options:
        name, eq, values = option.partition('=')
        name = name.strip()
        if not eq or not name or not values.strip():
            raise ValueError(f'--set {option!r}: expected section.field=v1,v2,...')
        parsed = [yaml.safe_load(v) for v in _split_values(values)]
        for value in parsed:
            merge_into(base, unflatten({name: value}))   # raises KeyError / TypeError with the field named
        axes.append((name, parsed))
    return axes


def _split_values(text: str) -> List[str]:
    """Split on commas outside brackets: ``48,24`` → two values, ``[48,24],[32,16]`` → two lists."""
    parts, depth, current = [], 0, ''
    for char in text:
        depth += char in '[(' and 1 or 0
        depth -= char in '])' and 1 or 0
        if char == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += char
    return [p.strip() for p in parts + [current] if p.strip()]


def grid_points(axes: Sequence[Tuple[str, List[Any]]]) -> List[Dict[str, Any]]:
    """Every combination of the axes' values, as {name: value}."""
    names = [name for name, _ in axes]
    return [dict(zip(names, values)) for values in itertools.product(*[v for _, v in axes])]


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One training run of a study: what it varies (`params`, the CSV's leading columns) and its inputs."""

    params: Dict[str, Any]
    config: F3RMConfig
    train: List[int]
    frames: List[PosedFrame]
    checkpoint_every: int = 0
    rows: List[Dict] = field(default_factory=list)


def train_run(run: Run, evaluate: Sequence[int], teacher, out_dir: Path,
              on_step: Optional[Callable[[], None]] = None,
              on_row: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Train one run; checkpoint and score every `checkpoint_every` steps and at the end; return its rows."""
    config = run.config
    used = sorted(set(run.train) | set(evaluate))
    store = FrameStore(max(config.trainer.capacity, len(used)))
    for index in used:
        store.add(run.frames[index])
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    position = {index: p for p, index in enumerate(used)}
    trainer.train_indices = [position[i] for i in run.train]      # the study's split, not the hold-out rule
    trainer.eval_indices = [position[i] for i in evaluate]
    held_out = [run.frames[i] for i in evaluate]
    steps = config.trainer.steps
    every = run.checkpoint_every or steps
    train_seconds = 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        trainer.step()
        train_seconds += time.perf_counter() - started
        if on_step is not None:
            on_step()
        if step % every and step != steps:
            continue
        checkpoint = trainer.save_checkpoint(Path(out_dir) / 'checkpoints' / f'step_{step:06d}.ckpt')
        with trainer.lock:
            scores = evaluate_views(trainer.model, trainer.box, held_out, teacher=teacher)
        row = {**run.params, 'train_frames': len(run.train), 'eval_frames': len(evaluate), 'step': step,
               'train_seconds': train_seconds, 'psnr': scores['psnr'], 'ssim': scores['ssim'],
               'depth_mae_m': scores['depth_mae_m'], 'feature_cosine': scores['feature_cosine'],
               'rays_per_s': scores['rays_per_s'], 'checkpoint': str(checkpoint)}
        run.rows.append(row)
        if on_row is not None:
            on_row(row)
    return run.rows


def summarise(rows: Sequence[Dict], group_by: Sequence[str]) -> List[Dict]:
    """Mean and standard deviation of `METRICS` over the final rows of each group (e.g. across seeds)."""
    finals: Dict[Tuple, List[Dict]] = {}
    last_step = {}
    for row in rows:
        key = tuple(row.get(k) for k in group_by) + (row.get('seed'),)
        last_step[key] = max(last_step.get(key, -1), row['step'])
    for row in rows:
        key = tuple(row.get(k) for k in group_by)
        if row['step'] == last_step[key + (row.get('seed'),)]:
            finals.setdefault(key, []).append(row)
    out = []
    for key, group in finals.items():
        summary = dict(zip(group_by, key))
        summary['runs'] = len(group)
        summary['train_frames'] = group[0]['train_frames']
        for metric in METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None and math.isfinite(r[metric])]
            summary[f'{metric}_mean'] = float(np.mean(values)) if values else None
            summary[f'{metric}_std'] = float(np.std(values, ddof=1)) if len(values) > 1 else None   # one run: no spread
        out.append(summary)
    return out


def plot_summary(summary: Sequence[Dict], group_by: Sequence[str], path: Path, title: str) -> Path:
    """Held-out PSNR, feature cosine and train time per group, mean ± std (matplotlib, PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = [(', '.join(f'{row[k]}' for k in group_by) or 'all') + f' ({row["train_frames"]} fr.)' for row in summary]
    panels = [('psnr', 'held-out PSNR (dB)'), ('feature_cosine', 'feature cosine to teacher'),
              ('train_seconds', 'train time (s)')]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    x = np.arange(len(summary))
    for axis, (metric, name) in zip(axes, panels):
        means = [np.nan if r[f'{metric}_mean'] is None else r[f'{metric}_mean'] for r in summary]
        stds = [0.0 if r[f'{metric}_std'] is None else r[f'{metric}_std'] for r in summary]
        axis.errorbar(x, means, yerr=stds, fmt='o-', capsize=4)
        axis.set_xticks(x, labels, rotation=30, ha='right', fontsize=8)
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].set_xlabel(' / '.join(group_by) or '')
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def run_study(runs: Sequence[Run], evaluate: Sequence[int], teacher, out_dir: Path, group_by: Sequence[str],
              title: str, progress: bool = True) -> Dict[str, Any]:
    """Train and score every run; write runs.csv (each checkpoint), summary.csv (mean ± std) and plot.png.

    A progress bar over all runs' steps gives the ETA of the whole study.
    """
    out_dir = Path(out_dir)
    if not evaluate:
        raise ValueError('no held-out frames to score the runs on: give --eval-frames or --split')
    teacher = teacher if isinstance(teacher, CachedTeacher) else CachedTeacher(teacher)
    rows: List[Dict] = []
    bar = tqdm(total=sum(r.config.trainer.steps for r in runs), desc='study', unit='step', disable=not progress)
    columns = list(runs[0].params) + ['train_frames', 'eval_frames', 'step', 'train_seconds', 'psnr', 'ssim',
                                      'depth_mae_m', 'feature_cosine', 'rays_per_s', 'checkpoint']

    def keep(row):
        rows.append(row)
        write_csv_atomic(out_dir / 'runs.csv', rows, columns)

    for number, run in enumerate(runs):
        bar.set_postfix_str(f'run {number + 1}/{len(runs)} ' + ' '.join(f'{k}={v}' for k, v in run.params.items()))
        name = '_'.join(f'{k.split(".")[-1]}-{v}' for k, v in run.params.items()).replace(' ', '') or f'run{number}'
        train_run(run, evaluate, teacher, out_dir / 'runs' / name, on_step=lambda: bar.update(1), on_row=keep)
    bar.close()
    summary = summarise(rows, group_by)
    write_csv_atomic(out_dir / 'summary.csv', summary)
    plot = plot_summary(summary, group_by, out_dir / 'plot.png', title)
    return {'rows': rows, 'summary': summary, 'runs_csv': out_dir / 'runs.csv',
            'summary_csv': out_dir / 'summary.csv', 'plot': plot}


def summary_table(summary: Sequence[Dict], group_by: Sequence[str]) -> str:
    """Return the summary as aligned text: each group's mean ± std of PSNR, feature cosine and train time."""
    rows = []
    for row in summary:
        shown = {k: row[k] for k in group_by}
        shown['runs'], shown['train_frames'] = row['runs'], row['train_frames']
        for metric in METRICS:
            mean, std = row[f'{metric}_mean'], row[f'{metric}_std']
            shown[metric] = 'n/a' if mean is None else f'{mean:.4g}' + ('' if std is None else f' ± {std:.2g}')
        rows.append(shown)
    return format_table(rows, list(group_by) + ['runs', 'train_frames'] + list(METRICS))
