"""Offline training of a dataset on disk: what ``f3rm-ros train`` runs (no ROS involved)."""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..config import F3RMConfig
from ..capture.frames import FrameStore, PosedFrame, dataset_workspace, read_dataset, read_metadata
from .render import colorize, feature_pca, save_png, side_by_side
from ..teachers import choose_teacher
from .trainer import OnlineTrainer

log = logging.getLogger(__name__)


def dataset_labels(meta: Dict) -> Optional[Dict[int, str]]:
    """Return the ``labels`` entry of transforms.json as {id: name}, or None."""
    if 'labels' not in meta:
        return None
    return {int(key): str(name) for key, name in meta['labels'].items()}


def write_view_renders(trainer: OnlineTrainer, frame: PosedFrame, out_dir: Path, prefix: str = 'heldout') -> Dict:
    """Render `frame`'s view and write RGB (with ground truth), depth and feature-PCA PNGs.

    A model with more feature heads (clip+dino ...) also gets ``{prefix}_<head>_pca.png`` per extra head (the
    DINO picture for feature matching), and one trained with ``model.predict_normals`` ``{prefix}_normals.png``
    (nerfacto's predicted normals, xyz -> rgb).
    """
    extra = [name for name, _ in trainer.model.feature_heads[1:]]
    normals = ['pred_normals'] if trainer.model.config.predict_normals else []
    rendered = trainer.render(frame.T_base_optical, frame.K, frame.width, frame.height,
                              names=('rgb', 'accumulation', 'depth', 'feature', 'similarity', *extra, *normals))
    paths = {
        'rgb': save_png(out_dir / f'{prefix}_rgb.png', side_by_side(frame.image, rendered['rgb'])),
        'depth': save_png(out_dir / f'{prefix}_depth.png', colorize(rendered['depth'], 'turbo')),
        'feature_pca': save_png(out_dir / f'{prefix}_feature_pca.png', feature_pca(rendered['feature'])),
    }
    for name in extra:
        head = name[len('feature_'):]
        paths[f'{head}_pca'] = save_png(out_dir / f'{prefix}_{head}_pca.png', feature_pca(rendered[name]))
    if normals:
        paths['normals'] = save_png(out_dir / f'{prefix}_normals.png', rendered['pred_normals'])
    return {'paths': {k: str(v) for k, v in paths.items()}, 'rendered': rendered}


@dataclass
class TrainingReport:
    """What a training run produced and measured."""

    steps: int
    teacher: str
    teacher_reason: str
    frames: int
    heldout_frames: int
    psnr_before: float
    psnr_after: float
    seconds: float
    checkpoint: str
    renders: Dict[str, str] = field(default_factory=dict)
    curve: List[Dict[str, float]] = field(default_factory=list)


def resolve_workspace(meta: Dict, frames: Sequence[PosedFrame],
                      workspace: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
    """Return (min, max) of the workspace box; the log says where it came from.

    `workspace` when given, else the dataset's entry, its depth maps or where its cameras look
    (`frames.dataset_workspace`).
    """
    if workspace is not None:
        lo, hi = (np.asarray(v, float) for v in workspace)
        where = '--workspace'
    elif 'workspace' in meta:
        lo, hi = np.asarray(meta['workspace']['min'], float), np.asarray(meta['workspace']['max'], float)
        where = 'the dataset\'s "workspace" entry'
    else:
        lo, hi = dataset_workspace(meta, frames)
        where = ('its depth maps' if any(f.depth is not None for f in frames)
                 else 'where its cameras\' optical axes converge')
    log.info('workspace from %s: min %s max %s (override with --workspace XMIN YMIN ZMIN XMAX YMAX ZMAX)', where,
             np.round(lo, 3).tolist(), np.round(hi, 3).tolist())
    return lo, hi


def train_on_dataset(config: F3RMConfig, data_dir: Path, output_dir: Path, downscale: int = 1,
                     progress: bool = True, teacher_choice: str = 'auto',
                     workspace: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> TrainingReport:
    """Train on a nerfstudio dataset; writes checkpoints, renders, a curve CSV and a summary JSON.

    The workspace box: `workspace` (``--workspace``) when given, else the dataset's entry, its depth maps or
    where its cameras look (`frames.dataset_workspace`); the log says which.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(data_dir)
    frames = read_dataset(data_dir, downscale=downscale)
    if len(frames) < 2:
        raise ValueError(f'{data_dir} has {len(frames)} frame(s); at least 2 are needed')
    lo, hi = resolve_workspace(meta, frames, workspace)
    config.workspace.min_xyz, config.workspace.max_xyz = tuple(float(v) for v in lo), tuple(float(v) for v in hi)
    store = FrameStore(max(config.trainer.capacity, len(frames)))
    for frame in frames:
        store.add(frame)
    teacher, teacher_reason = choose_teacher(config, dataset_labels(meta), teacher_choice, frames=frames)
    log.info('teacher: %s (%s)', teacher.name, teacher_reason)
    started = time.time()
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    before = trainer.evaluate()['psnr']
    curve = []
    checkpoint = output_dir / 'checkpoints' / 'latest.ckpt'
    bar = tqdm(range(config.trainer.steps), desc='training', disable=not progress, unit='step')
    rays_started = time.time()
    for step in bar:
        stats = trainer.step()
        if step % 25 == 0 or step == config.trainer.steps - 1:
            row = {'step': step, 'loss': stats['loss'].item(), 'train_psnr': stats['psnr'].item(),
                   'feature_loss': stats['feature_loss'].item(),
                   **{f'{name}_loss': stats[f'{name}_loss'].item() for name, _ in trainer.model.feature_heads[1:]},
                   'rays_per_s': (step + 1) * config.trainer.rays_per_batch / (time.time() - rays_started)}
            curve.append(row)
            bar.set_postfix(loss=f'{row["loss"]:.4f}', psnr=f'{row["train_psnr"]:.1f}')
        if (step + 1) % config.trainer.checkpoint_every == 0:
            trainer.save_checkpoint(checkpoint)
    trainer.save_checkpoint(checkpoint)
    after = trainer.evaluate()['psnr']
    seconds = time.time() - started
    view = frames[trainer.eval_indices[0] if trainer.eval_indices else 0]
    renders = write_view_renders(trainer, view, output_dir / 'renders')['paths']
    report = TrainingReport(config.trainer.steps, teacher.name, teacher_reason, len(frames),
                            len(trainer.eval_indices), before, after, seconds, str(checkpoint), renders, curve)
    with open(output_dir / 'training_curve.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    summary = {k: v for k, v in report.__dict__.items() if k != 'curve'}
    (output_dir / 'summary.json').write_text(json.dumps(summary, indent=1))
    return report
