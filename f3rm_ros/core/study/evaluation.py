"""Scoring trained fields on held-out views: PSNR, SSIM, LPIPS, depth error, feature cosine, render speed.

What ``f3rm-ros eval`` and the experiments run. Checkpoints are loaded tolerantly (`load_for_study`: what fits
is loaded, what does not is named), splits come from ``split_indices.json`` / ``--eval-frames`` or the trainer's
own hold-out rule, and CSV files are rewritten atomically after every completed row, so an interrupted run
never leaves half a row behind.
"""
from __future__ import annotations

# Imported where used: torchmetrics' SSIM and LPIPS (heavy: torchmetrics and torchvision, seconds; LPIPS is optional
# and its failure is reported as n/a), only when a view is scored.
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import F3RMConfig, from_dict, to_dict
from ..capture.frames import PosedFrame
from ..geometry import WorkspaceBox
from ..training.model import PER_CAMERA_PARAMETERS, build_model, restore_sampler_schedule
from ..training.checkpoints import read_checkpoint
from ..training.trainer import holdout_split, pick_device, psnr, render_model
from ..teachers import is_random, make_teacher

log = logging.getLogger(__name__)

NA = 'n/a'
# torchvision's AlexNet weights, which LPIPS (torchmetrics, net_type='alex') would download on first use.
ALEXNET_WEIGHTS = 'alexnet-owt-7be5be79.pth'


# ---------------------------------------------------------------------------------------------- splits


def read_split_file(path: Path, frames: Sequence[PosedFrame]) -> Tuple[List[int], List[int]]:
    """(train, eval) indices from a ``split_indices.json``: ``{"train": [...], "eval": [...]}``.

    Entries are frame indices or frame names (the image file's stem, e.g. ``frame_00003``); ``test`` or ``val``
    may stand for ``eval``; a missing ``train`` means every frame not evaluated.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f'split file {path}: not readable JSON ({error})') from error
    if not isinstance(data, dict):
        raise ValueError(f'split file {path}: expected {{"train": [...], "eval": [...]}}, got a '
                         f'{type(data).__name__}')
    key = next((k for k in ('eval', 'test', 'val') if k in data), None)
    if key is None:
        raise ValueError(f'split file {path}: no "eval" (or "test"/"val") list; keys are {sorted(data)}')
    names = {frame.name: i for i, frame in enumerate(frames)}

    def indices(entries, what):
        if not isinstance(entries, list):
            raise ValueError(f'split file {path}: "{what}" must be a list')
        out = []
        for entry in entries:
            if isinstance(entry, int) and not isinstance(entry, bool):
                out.append(entry)
            elif isinstance(entry, str) and Path(entry).stem in names:
                out.append(names[Path(entry).stem])
            else:
                raise ValueError(f'split file {path}: "{what}" entry {entry!r} is neither a frame index nor the '
                                 f'name of one of the {len(frames)} frames')
        return out
    evaluated = indices(data[key], key)
    train = indices(data['train'], 'train') if 'train' in data else [i for i in range(len(frames))
                                                                     if i not in set(evaluated)]
    return check_split(train, evaluated, len(frames))


def check_split(train: Sequence[int], evaluated: Sequence[int], num_frames: int) -> Tuple[List[int], List[int]]:
    """Validate a split: indices in range, no frame in both lists, at least one training frame."""
    bad = sorted({i for i in list(train) + list(evaluated) if not 0 <= i < num_frames})
    if bad:
        raise ValueError(f'frame indices {bad} are out of range: the dataset has {num_frames} frames (0..'
                         f'{num_frames - 1})')
    both = sorted(set(train) & set(evaluated))
    if both:
        raise ValueError(f'frames {both} are both trained on and evaluated')
    if not train:
        raise ValueError('the split leaves no training frame')
    return sorted(set(train)), sorted(set(evaluated))


def parse_indices(text: str) -> List[int]:
    """Parse ``"3,7,11"`` or ``"0-4,9"`` into frame indices."""
    out = []
    for part in (p.strip() for p in text.split(',')):
        if not part:
            continue
        try:
            if '-' in part:
                lo, hi = part.split('-', 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError as error:
            raise ValueError(f'frame list {text!r}: {part!r} is not an index or a range a-b') from error
    return out


def make_split(frames: Sequence[PosedFrame], holdout_every: int, eval_frames: Optional[Sequence[int]] = None,
               split_file: Optional[Path] = None) -> Tuple[List[int], List[int], str]:
    """(train, eval, how): from a split file, from explicit eval frames, else every `holdout_every`-th frame."""
    if split_file is not None:
        return (*read_split_file(split_file, frames), f'split file {split_file}')
    if eval_frames:
        train = [i for i in range(len(frames)) if i not in set(eval_frames)]
        return (*check_split(train, eval_frames, len(frames)), f'--eval-frames {list(eval_frames)}')
    train, evaluated = holdout_split(len(frames), holdout_every)
    return train, evaluated, f'every {holdout_every}th frame held out (trainer.holdout_every)'


# ---------------------------------------------------------------------------------------------- checkpoints


def config_id(config: F3RMConfig) -> str:
    """Return a short stable id of a configuration (its JSON hashed): rows of equal configs share it."""
    data = to_dict(config)
    data.pop('workspace', None)
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def load_for_study(path: Path, device: str = 'auto'):
    """Load a checkpoint for evaluation or rendering: (model in eval mode, config, raw state, notes).

    Unlike `trainer.load_model`, a tensor that does not fit the model its config builds (another version, an
    edited file, a changed image count) is skipped and named in `notes` instead of failing the whole load;
    per-camera rows are fitted (the mean appearance code of the trained rows renders new views either way).
    A checkpoint with nothing loadable raises ValueError.
    """
    state = read_checkpoint(path)
    config = from_dict(state['config'])
    model = build_model(config, int(state['capacity']))
    own = model.state_dict()
    fitted, notes = {}, []
    for name, tensor in state['model'].items():
        if name not in own:
            notes.append(f'{name}: not in this model (ignored)')
        elif tensor.shape == own[name].shape:
            fitted[name] = tensor
        elif name in PER_CAMERA_PARAMETERS:
            rows = min(tensor.shape[0], own[name].shape[0])
            fitted[name] = own[name].clone()
            fitted[name][:rows] = tensor[:rows]
            notes.append(f'{name}: {tensor.shape[0]} camera rows fitted to {own[name].shape[0]}')
        else:
            notes.append(f'{name}: shape {tuple(tensor.shape)} does not fit {tuple(own[name].shape)} (left untrained)')
    missing = [name for name in own if name not in fitted and name not in state['model']]
    if missing:
        notes.append(f'{len(missing)} tensors missing from the checkpoint (left untrained): {", ".join(missing[:4])}'
                     + (' ...' if len(missing) > 4 else ''))
    if not fitted:
        raise ValueError(f'{path}: none of its tensors fit the model its config builds')
    model.load_state_dict(fitted, strict=False)
    restore_sampler_schedule(model, int(state['step']))
    model.to(pick_device(device)).eval()
    for note in notes:
        log.warning('%s: %s', path, note)
    return model, config, state, notes


# ---------------------------------------------------------------------------------------------- metrics


def lpips_metric(device: torch.device):
    """(LPIPS callable on [1, 3, H, W] images in [0, 1], or None, why).

    torchmetrics' LPIPS builds torchvision's AlexNet with pretrained weights, which it downloads when they are
    not in torch's hub cache; nothing is downloaded here: without the file the column is n/a and says so.
    """
    weights = Path(torch.hub.get_dir()) / 'checkpoints' / ALEXNET_WEIGHTS
    if not weights.is_file():
        return None, f'LPIPS n/a: AlexNet weights not in {weights.parent} (offline, nothing downloaded)'
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        metric = LearnedPerceptualImagePatchSimilarity(net_type='alex', normalize=True).to(device).eval()
    except Exception as error:  # a broken cache file or torchmetrics without LPIPS: say why, keep scoring
        return None, f'LPIPS n/a: {type(error).__name__}: {str(error)[:120]}'
    return (lambda a, b: float(metric(a, b))), 'LPIPS (AlexNet)'


def ssim(predicted: np.ndarray, target: np.ndarray) -> float:
    """Structural similarity of two RGB images in [0, 1] (torchmetrics, 11-px Gaussian window)."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    to = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
          for x in (predicted, target)]
    return float(structural_similarity_index_measure(to[0], to[1], data_range=1.0))


def ray_to_z_depth(depth_along_ray: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth along each pixel's ray → z-depth (what depth cameras and datasets store)."""
    height, width = depth_along_ray.shape
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    norm = np.sqrt(((u - K[0, 2]) / K[0, 0]) ** 2 + ((v - K[1, 2]) / K[1, 1]) ** 2 + 1.0)
    return depth_along_ray / norm


def teacher_cosine(rendered: np.ndarray, target: torch.Tensor, mask: Optional[np.ndarray] = None) -> float:
    """Mean cosine between rendered features [H, W, D] and the teacher's patch grid [h, w, D] (nearest patch)."""
    height, width = rendered.shape[:2]
    rows = np.arange(height) * target.shape[0] // height
    cols = np.arange(width) * target.shape[1] // width
    per_pixel = target[rows][:, cols, :rendered.shape[-1]].float()  # a multi-head teacher: the text head's part
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(rendered).float(), per_pixel, dim=-1)
    if mask is not None:
        cosine = cosine[torch.from_numpy(mask)]
    return float(cosine.mean())


def evaluate_views(model, box: WorkspaceBox, frames: Sequence[PosedFrame], teacher=None, lpips=None,
                   teacher_features: Optional[Dict[int, torch.Tensor]] = None, progress=None) -> Dict:
    """Render each frame's view and score it; returns the means and the per-view rows.

    `teacher` (or precomputed `teacher_features` by frame position) gives the feature cosine; `lpips` is the
    callable of `lpips_metric`. Masked pixels (a gripper) are left out of PSNR, depth and feature scores.
    """
    views = []
    for position, frame in enumerate(frames):
        started = time.perf_counter()
        rendered = render_model(model, box, frame.T_base_optical, frame.K, frame.width, frame.height)
        seconds = time.perf_counter() - started
        target = frame.image / 255.0
        keep = frame.mask if frame.mask is not None else np.ones(target.shape[:2], bool)
        row = {'frame': frame.name, 'seconds': seconds, 'rays_per_s': frame.width * frame.height / seconds,
               'psnr': psnr(torch.from_numpy(rendered['rgb'][keep]), torch.from_numpy(target[keep])),
               'ssim': ssim(rendered['rgb'], target)}
        if lpips is not None:
            device = next(model.parameters()).device
            row['lpips'] = lpips(*[torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
                                   .to(device) for x in (rendered['rgb'], target)])
        if frame.depth is not None and (frame.depth[keep] > 0).any():
            valid = keep & (frame.depth > 0)
            z = ray_to_z_depth(rendered['depth'], frame.K)
            row['depth_mae_m'] = float(np.abs(z[valid] - frame.depth[valid]).mean())
        features = teacher_features.get(position) if teacher_features else None
        if features is None and teacher is not None:
            features = teacher.extract([frame])[0]
        if features is not None and features.shape[-1] == rendered['feature'].shape[-1]:
            row['feature_cosine'] = teacher_cosine(rendered['feature'], features, keep)
        views.append(row)
        if progress is not None:
            progress.update(1)
    summary = {'frames': len(views), 'views': views}
    for key in ('psnr', 'ssim', 'lpips', 'depth_mae_m', 'feature_cosine', 'rays_per_s', 'seconds'):
        values = [v[key] for v in views if key in v and math.isfinite(v[key])]
        summary[key] = float(np.mean(values)) if values else None
    return summary


def study_teacher(config: F3RMConfig, state: Dict, labels: Optional[Dict[int, str]]):
    """(teacher to score features against, or None, why) for a checkpoint's config and teacher state.

    Random-weight CLIP is refused: a fresh random network is not the one the field was distilled from.
    """
    teacher_state = (state.get('teacher') or {}).get('state')
    try:
        teacher = make_teacher(config.teacher, labels=labels, state=teacher_state)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        return None, f'feature cosine n/a: teacher unavailable ({str(error)[:160]})'
    if is_random(teacher):
        return None, ('feature cosine n/a: random-weight CLIP teacher (a new random network is not the one '
                      'distilled)')
    if teacher.dim != config.feature_field.feature_dim:
        return None, (f'feature cosine n/a: the teacher gives {teacher.dim}-d features, the field '
                      f'{config.feature_field.feature_dim}-d')
    return teacher, f'{teacher.name} teacher'


# ---------------------------------------------------------------------------------------------- CSV and tables


def write_csv_atomic(path: Path, rows: Sequence[Dict], columns: Optional[Sequence[str]] = None) -> Path:
    """Write every row to `path` through a temporary file: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction='ignore')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    tmp = path.with_name('.tmp-' + path.name)
    with open(tmp, 'w', newline='') as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _cell(value):
    if value is None:
        return NA
    if isinstance(value, float):
        return f'{value:.6g}'
    return value


def format_table(rows: Sequence[Dict], columns: Sequence[str]) -> str:
    """Aligned text table of `columns` (numbers to 4 significant digits, None as n/a)."""
    def show(value):
        if value is None:
            return NA
        if isinstance(value, float):
            return f'{value:.4g}'
        return str(value)
    cells = [[show(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ['  '.join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return '\n'.join(lines)


EVAL_COLUMNS = ('checkpoint', 'config_id', 'teacher', 'feature_dim', 'step', 'frames', 'psnr', 'ssim', 'lpips',
                'depth_mae_m', 'feature_cosine', 'rays_per_s', 's_per_image', 'notes')


def evaluate_checkpoint(path: Path, frames: Sequence[PosedFrame], labels: Optional[Dict[int, str]] = None,
                        device: str = 'auto', lpips_cache: Optional[Dict] = None, progress=None) -> Dict:
    """One CSV row for a checkpoint scored on `frames` (the held-out views); see `EVAL_COLUMNS`."""
    model, config, state, notes = load_for_study(path, device)
    box = WorkspaceBox.from_config(config.workspace)
    teacher, teacher_note = study_teacher(config, state, labels)
    device_t = next(model.parameters()).device
    if lpips_cache is None:
        lpips_cache = {}
    if 'lpips' not in lpips_cache:
        lpips_cache['lpips'] = lpips_metric(device_t)
    lpips, lpips_note = lpips_cache['lpips']
    scores = evaluate_views(model, box, frames, teacher=teacher, lpips=lpips, progress=progress)
    why = [] if lpips is not None else [lpips_note]
    if teacher is None:
        why.append(teacher_note)
    if scores['depth_mae_m'] is None:
        why.append('depth n/a: no depth maps in the evaluated frames')
    return {'checkpoint': str(path), 'config_id': config_id(config), 'teacher': state['teacher'].get('name'),
            'feature_dim': config.feature_field.feature_dim, 'step': int(state['step']), 'frames': scores['frames'],
            'psnr': scores['psnr'], 'ssim': scores['ssim'], 'lpips': scores['lpips'],
            'depth_mae_m': scores['depth_mae_m'], 'feature_cosine': scores['feature_cosine'],
            'rays_per_s': scores['rays_per_s'], 's_per_image': scores['seconds'],
            'notes': '; '.join(notes + why), '_config': to_dict(config)}


def pick(frames: Sequence[PosedFrame], indices: Iterable[int]) -> List[PosedFrame]:
    """Return the frames at `indices`."""
    return [frames[i] for i in indices]
