"""``f3rm-ros bench train --data DIR [DIR ...]``: training speed and quality beside nerfstudio's baseline.

Trains the product's `OnlineTrainer` (preset ``gpu`` = F3RM defaults, 768-d feature head) on each nerfstudio
dataset with a teacher that needs no CLIP weights (``--teacher random``: seeded random patch features, as the
baseline's; ``image``: features made from each patch's colours by a fixed random projection, so that they
agree across views as CLIP's do and a held-out feature error means something). The feature head costs the
same either way.

Like for like with ``ns_baseline.py`` (``--baseline``, run first on the same GPU, once per dataset and mode):

* the scene is normalised as the baseline does (camera centres centred, scaled into [-1, 1]), the held-out
  frames are its (every 8th from frame 0, scored over the first six), the depth loss is off, the batch has
  the same rays, and the feature loss sees the density weights the same way (``--feature-weights live``
  runs the baseline with ``FEAT_WEIGHTS=live``, ``detached`` with ``FEAT_WEIGHTS=detach``);
* both sides evaluate held-out PSNR on the same schedule (every ``--eval-every`` steps and at the end: the
  baseline gets ``EVAL_EVERY``) with their clocks stopped during evaluation, so both training times exclude
  every evaluation and include everything else from the first step on (Triton's compilation included);
* time-to-PSNR is read from both curves: the training time at the first evaluation that reaches the
  baseline's final PSNR, the baseline's best PSNR and f3rm_ros's best PSNR; a ratio is given only where both
  curves reach the value.

Memory: peak GPU memory of training (every training span) and of rendering (held-out evaluations and a
full-resolution picture with features, `render.render_camera`'s chunks), apart. The baseline reports one peak
that covers both. With pose refinement (``--recipe product``) held-out views are scored both as recorded
(``given``, what nerfstudio's evaluation does) and ``aligned`` (with the correction of the nearest refined
training cameras, `OnlineTrainer.pose_correction`); time-to-PSNR uses ``--eval-poses``. Where the dataset has
depth maps the median held-out depth error is reported (7-Scenes' depth is not registered to its colour:
read it as a relative figure).

Output: a table per dataset and mode, an overall table, one ``RESULT`` line per run and a last ``RESULT
overall`` line; with ``--out``: ``results.csv`` (one row per run), and per run a folder with ``curve.csv``
(both sides), ``summary.json``, ``baseline.log`` and a held-out picture.
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): cv2, torch and the config, teacher,
# dataset, training, evaluation and fast-kernel modules (nerfstudio, triton).
import argparse
import csv
import dataclasses
import gc
import logging
import math
import os
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import (Stopwatch, device_name, number, parse_eval_lines, parse_result_line, python, run_baseline, sync,
               write_json)
from .train_tables import compare, overall_table, result_fields, result_line, run_table

log = logging.getLogger(__name__)

MODES = ('live', 'detached')
BASELINE_MODE = {'live': 'live', 'detached': 'detach'}


def register(sub) -> None:
    """Add ``bench train``."""
    p = sub.add_parser('train', help='training rays/s, memory and held-out PSNR vs. the nerfstudio baseline',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, nargs='+', help='nerfstudio dataset folder(s) (transforms.json)')
    p.add_argument('--steps', type=int, default=2000, help='training steps (default: 2000)')
    p.add_argument('--rays', type=int, help='rays per batch (default: the preset, 4096 for gpu)')
    p.add_argument('--preset', default='gpu', help='configuration preset (default: gpu = F3RM defaults)')
    p.add_argument('--config', action='append', help='YAML overlay (repeatable)')
    p.add_argument('--feature-dim', type=int, default=768, help='teacher feature width (default: 768)')
    p.add_argument('--feature-weights', default=None,
                   help='comma-separated modes to run: live (F3RM: the feature loss reaches the density), '
                        'detached, or both "live,detached" (default: the config\'s model.feature_weights)')
    p.add_argument('--teacher', choices=['random', 'image'], default='random',
                   help='random (seeded random patch features, as the baseline) or image (view-consistent '
                        'features from patch colours: a meaningful held-out feature error)')
    p.add_argument('--eval-every', type=int, default=100,
                   help='held-out PSNR every N steps on both sides, clocks stopped (default: 100; 0 = at the end)')
    p.add_argument('--eval-frames', type=int, default=6, help='held-out frames scored (default: 6, as the baseline)')
    p.add_argument('--eval-poses', choices=['aligned', 'given'], default='aligned',
                   help='held-out poses whose PSNR times the curves (default: aligned; equal without refinement)')
    p.add_argument('--baseline', help='path of ns_baseline.py: run it first on the same data (same GPU)')
    p.add_argument('--baseline-steps', type=int, help='baseline steps (default: --steps)')
    p.add_argument('--baseline-rays', type=int, default=4096, help='baseline rays per batch (default: 4096)')
    p.add_argument('--baseline-result', nargs='+',
                   help='baseline outputs (RESULT and EVAL lines) instead of running it: one per dataset and mode')
    p.add_argument('--no-fast', action='store_true', help='disable the fast path (F3RM_FAST=0): reference timing')
    p.add_argument('--no-graphs', action='store_true', help='fast path without CUDA graphs (trainer.cuda_graphs off)')
    p.add_argument('--depth', action='store_true', help='keep the depth loss (off by default: the baseline has none)')
    p.add_argument('--no-picture', action='store_true',
                   help='skip the full-resolution held-out picture with features (rendering memory then covers '
                        'the colour-only evaluations)')
    p.add_argument('--profile', type=int, default=0, metavar='N',
                   help='after training, profile N more steps with the torch profiler and print where time goes')
    p.add_argument('--sync-check', action='store_true',
                   help='after training, list the host-device synchronisations of 3 steps')
    p.add_argument('--out', help='folder for results.csv and one folder per run (curve.csv, summary.json ...)')
    p.add_argument('--recipe', choices=['product', 'baseline'], default='product',
                   help="optimisation recipe: 'product' = the preset's (learning rates decaying over --steps, "
                        "SO3xR3 pose refinement trained); 'baseline' = ns_baseline.py's (constant learning rates, "
                        "poses not refined), to compare implementations at equal steps")
    p.add_argument('--downscale', type=int, default=1, help='integer image downscale (default: 1, as the baseline)')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=run)


def _stand_in_teacher(kind: str, dim: int, patch_size: int, seed: int):
    """Build a teacher without CLIP: 'random' or 'image' features on a `patch_size` grid (`--teacher`).

    'random': seeded noise per frame (like the baseline's), the feature head's cost without CLIP. 'image': each
    patch's 2 x 2 sub-cell colours by a fixed random projection to `dim`: view-consistent like CLIP (what a patch
    looks like, not which frame it came from), so a held-out feature error means something.
    """
    import cv2
    import torch

    from ..core.teachers import Teacher

    projection = torch.randn(12, dim, generator=torch.Generator().manual_seed(seed + 17)) / math.sqrt(12)

    def random_grid(frame, h, w):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(frame.name.encode()))
        return torch.randn(h, w, dim, generator=gen)

    def image_grid(frame, h, w):
        crop = frame.image[:h * patch_size, :w * patch_size].astype(np.float32) / 255.0
        cells = cv2.resize(crop, (2 * w, 2 * h), interpolation=cv2.INTER_AREA) - 0.5
        cells = cells.reshape(h, 2, w, 2, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, 12)
        return torch.from_numpy(np.ascontiguousarray(cells)) @ projection

    grid = {'random': random_grid, 'image': image_grid}[kind]

    class StandInTeacher(Teacher):
        name = kind

        def __init__(self):
            self.dim = dim
            self.patch_size = patch_size

        def grid_shape(self, height, width):
            return height // patch_size, width // patch_size

        def extract(self, frames):
            return torch.stack([grid(frame, *self.grid_shape(frame.height, frame.width)) for frame in frames])

        def encode_text(self, texts):
            return torch.nn.functional.normalize(torch.randn(len(texts), dim), dim=-1)

        def state(self):
            return {'name': kind, 'dim': dim, 'patch_size': patch_size, 'seed': seed}

    return StandInTeacher()


def _build(args, frames, mode: str):
    """Config (baseline-comparable), teacher, trainer with the baseline's split."""
    from ..core.config import ModelConfig, make_config
    from ..core.capture.frames import FrameStore
    from ..core.training.trainer import OnlineTrainer

    overrides: Dict = {
        'trainer': {'steps': args.steps, 'capacity': len(frames), 'seed': args.seed,
                    'cuda_graphs': not args.no_graphs},
        'feature_field': {'feature_dim': args.feature_dim},
        'model': {'feature_weights': mode},
    }
    if args.rays:
        overrides['trainer']['rays_per_batch'] = args.rays
    if not args.depth and 'depth_loss_mult' in {f.name for f in dataclasses.fields(ModelConfig)}:
        overrides['model']['depth_loss_mult'] = 0.0
    if args.recipe == 'baseline':
        overrides['trainer']['lr_final_ratio'] = 1.0
        overrides['model']['camera_optimizer'] = 'off'
    config = make_config(args.preset, [Path(p) for p in args.config or []], overrides)
    # ns_baseline.py's normalisation: camera centres minus their mean, divided by the largest |coordinate|.
    centres = np.stack([f.T_base_optical[:3, 3] for f in frames])
    mean = centres.mean(0)
    half = float(np.abs(centres - mean).max())
    config.workspace.min_xyz, config.workspace.max_xyz = tuple(mean - half), tuple(mean + half)
    teacher = _stand_in_teacher(args.teacher, config.feature_field.feature_dim, 14, args.seed)
    store = FrameStore(len(frames))
    for frame in frames:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    held = [i for i in range(len(frames)) if i % 8 == 0]
    trainer.train_indices = [i for i in range(len(frames)) if i % 8 != 0]
    trainer.eval_indices = held
    if hasattr(trainer.model, 'set_training_cameras'):
        trainer.model.set_training_cameras(trainer.train_indices)
    return config, trainer, held[:args.eval_frames]


def heldout_scores(trainer, indices: Sequence[int], aligned: bool, depth: bool = True,
                   features: bool = True) -> Dict[str, float]:
    """Held-out scores of the current model, all computed like a user's renders (`render.render_camera`).

    psnr (poses as recorded), psnr_aligned (with `pose_correction`; equal to psnr without refinement),
    depth_err_cm (median |z - z_true| over pixels with depth, aligned poses), feature_mse (rendered
    features at the teacher's patch centres against the teacher's held-out features).
    """
    import torch

    from ..core.study.evaluation import ray_to_z_depth
    from ..core.geometry import resized_intrinsics
    from ..core.training.render import render_camera
    from ..core.training.trainer import PosedFrame, make_cameras, psnr
    memory, chunk = trainer.config.trainer.render_memory_mb, trainer.config.trainer.eval_chunk_rays
    scores: Dict[str, List[float]] = {'psnr': [], 'psnr_aligned': [], 'depth_err_cm': [], 'feature_mse': []}
    with trainer.lock, torch.no_grad():
        for index in indices:
            frame = trainer.frames[index]
            target = trainer.images[index].float() / 255.0
            correction = trainer.pose_correction(index) if aligned else None
            camera = make_cameras([frame], trainer.box, trainer.device)
            names = ('rgb', 'depth') if depth and frame.depth is not None and correction is None else ('rgb',)
            out = render_camera(trainer.model, camera, memory, chunk, names)
            scores['psnr'].append(psnr(out['rgb'], target))
            if correction is not None:
                camera = make_cameras([frame], trainer.box, trainer.device, correction[None])
                names = ('rgb', 'depth') if depth and frame.depth is not None else ('rgb',)
                out = render_camera(trainer.model, camera, memory, chunk, names)
                scores['psnr_aligned'].append(psnr(out['rgb'], target))
            else:
                scores['psnr_aligned'].append(scores['psnr'][-1])
            if 'depth' in out:
                z = ray_to_z_depth(out['depth'][..., 0].float().cpu().numpy() / trainer.box.scale, frame.K)
                truth = np.nan_to_num(frame.depth.astype(np.float64))
                valid = truth > 0
                if valid.any():
                    scores['depth_err_cm'].append(100.0 * float(np.median(np.abs(z[valid] - truth[valid]))))
            if features and trainer.features is not None:
                h, w = trainer.features.shape[1:3]
                # the trainer looks a pixel's patch up as y * h // height: the grid spans the whole image
                K = resized_intrinsics(frame.K, frame.width, frame.height, w, h)
                probe = PosedFrame(np.zeros((h, w, 3), np.uint8), K, frame.T_base_optical)
                camera = make_cameras([probe], trainer.box, trainer.device,
                                      None if correction is None else correction[None])
                rendered = render_camera(trainer.model, camera, memory, chunk, ('feature',))['feature'].float()
                scores['feature_mse'].append(float(torch.mean(
                    (rendered - trainer.features[index].float().cpu()) ** 2)))
    return {k: (float(np.mean(v)) if v else float('nan')) for k, v in scores.items()}


def _fast_summary(trainer) -> str:
    from ..core import fast
    from ..core.fast import FastHashEncoding
    model = trainer.model
    grids = sum(isinstance(m, FastHashEncoding) for m in model.modules())
    return (f'fast path {"ON" if fast.enabled() and grids else "OFF"}: {grids} hash grids on Triton, '
            f'feature render-then-project {"on" if getattr(model.feature_field, "fast_render", False) else "off"}, '
            f'CUDA graphs {"on" if trainer.graphed is not None else "off"}'
            f'{" (compiled)" if trainer.graphed is not None and trainer.graphed.compiled else ""}')


def _profile(trainer, steps: int, out: Optional[Path]) -> List[str]:
    """Profile `steps` training steps; returns printable lines (tables also written under `out`)."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        trainer.step()
    sync()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer.step()
        sync()
    wall = time.perf_counter() - started
    events = prof.key_averages()
    device_total = 0.0
    groups: Counter = Counter()
    launches = 0
    from torch.autograd import DeviceType
    for e in events:
        if getattr(e, 'device_type', None) != DeviceType.CUDA:  # kernels only: CPU ops repeat their kernels' time
            continue
        if getattr(e, 'is_user_annotation', False) or e.key.startswith('Optimizer.'):
            continue  # ranges such as 'Optimizer.step#Adam.step' span kernels counted on their own
        t = getattr(e, 'self_device_time_total', None)
        if t is None:
            t = getattr(e, 'self_cuda_time_total', 0.0)
        if t <= 0:
            continue
        device_total += t
        name = e.key.lower()
        launches += e.count
        if 'hash' in name:
            group = 'triton hash grid'
        elif 'gemm' in name or 'matmul' in name or 'cutlass' in name or 'sm90' in name or 'wgmma' in name:
            group = 'matmul'
        elif 'adam' in name or 'foreach' in name or 'multi_tensor' in name:
            group = 'optimizer / foreach'
        elif 'index' in name or 'scatter' in name or 'gather' in name:
            group = 'index / gather / scatter'
        elif 'reduce' in name or 'sum' in name or 'cumsum' in name or 'scan' in name:
            group = 'reductions / scans'
        elif 'memcpy' in name or 'memset' in name or 'fill' in name:
            group = 'memcpy / memset / fill'
        elif 'elementwise' in name or 'vectorized' in name or 'unrolled' in name:
            group = 'elementwise'
        else:
            group = 'other kernels'
        groups[group] += t
    lines = [f'profile: {steps} steps in {wall * 1e3:.1f} ms wall = {wall / steps * 1e3:.2f} ms/step; '
             f'GPU kernels busy {device_total / 1e3 / steps:.2f} ms/step ({device_total / 1e6 / wall:.0%} of wall); '
             f'{launches / steps:.0f} device ops (kernels, copies, fills) per step']
    for group, t in groups.most_common():
        lines.append(f'  {group:28s} {t / 1e3 / steps:7.3f} ms/step  {t / device_total:6.1%}')
    sort_keys = ('self_device_time_total', 'self_cuda_time_total')
    tables = {}
    for key in sort_keys:
        try:
            tables['device'] = events.table(sort_by=key, row_limit=30)
            break
        except Exception:  # noqa: BLE001 - the key's name changed across torch versions
            continue
    tables['cpu'] = events.table(sort_by='self_cpu_time_total', row_limit=30)
    if out is not None:
        for name, table in tables.items():
            (out / f'profile_{name}.txt').write_text(table)
    lines.append(tables.get('device', ''))
    return lines


def _sync_check(trainer, steps: int = 3) -> List[str]:
    """List where the training step makes the host wait for the device (torch's sync debug mode)."""
    import torch
    seen: Counter = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            for _ in range(steps):
                trainer.step()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    for w in caught:
        if 'synchroniz' in str(w.message):
            seen[f'{w.filename}:{w.lineno}'] += 1
    if not seen:
        return [f'sync check: no host-device synchronisation in {steps} steps']
    return [f'sync check: {sum(seen.values()) / steps:.0f} synchronisations per step at:'] + [
        f'  {where} ({count / steps:.0f}/step)' for where, count in seen.most_common()]


def _peak_gib() -> float:
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0


def _reset_peak() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _baseline_for(args, data: str, mode: str, run_index: int, folder: Optional[Path]) -> Optional[Dict]:
    """Return the baseline's RESULT fields and EVAL curve for this dataset and mode (run now, or read), or None."""
    if args.baseline_result:
        if run_index >= len(args.baseline_result):
            raise SystemExit(f'--baseline-result: {len(args.baseline_result)} file(s) for more runs')
        text = Path(args.baseline_result[run_index]).read_text()
        result = parse_result_line(text)
        if result is None:
            raise SystemExit(f'{args.baseline_result[run_index]} holds no RESULT line')
    elif args.baseline:
        env = {'RAYS': str(args.baseline_rays), 'EVAL_EVERY': str(args.eval_every),
               'FEAT_WEIGHTS': BASELINE_MODE[mode]}
        print(f'[bench] baseline env: {" ".join(f"{k}={v}" for k, v in env.items())}', flush=True)
        try:
            result = run_baseline([python(), args.baseline, data, str(args.baseline_steps or args.steps),
                                   str(args.feature_dim), 'amp'], folder / 'baseline.log' if folder else None,
                                  env=env)
        except RuntimeError as error:  # one dataset the baseline cannot read must not cost the other runs
            print(f'[bench] WARNING: {Path(data).name}: {error}', flush=True)
            return None
        text = result.pop('output')
    else:
        return None
    result = dict(result)
    result['curve'] = parse_eval_lines(text)
    got = result.get('feat_weights')
    if got is not None and got != BASELINE_MODE[mode]:
        print(f'[bench] WARNING: the baseline ran with feat_weights={got}, f3rm_ros with {mode}: not like for like')
    return result


def bench_one(args, data: str, mode: str, run_index: int, out: Optional[Path]) -> Dict:
    """Train f3rm_ros on `data` in feature-weights `mode` beside its baseline; returns the run's summary."""
    import torch

    from ..core.capture.frames import read_dataset
    from ..core.training.offline import write_view_renders
    name = Path(data).name or str(data)
    folder = out / f'{name}-{mode}' if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    baseline = _baseline_for(args, data, mode, run_index, folder)
    frames = read_dataset(Path(data), downscale=args.downscale)
    torch.manual_seed(args.seed)
    setup_started = time.perf_counter()
    config, trainer, eval_frames = _build(args, frames, mode)
    sync()
    setup_s = time.perf_counter() - setup_started
    rays = config.trainer.rays_per_batch
    refined = config.model.camera_optimizer != 'off'
    has_depth = any(frames[i].depth is not None for i in eval_frames)
    print(f'[bench] {name} ({mode} feature weights): {device_name()}; {len(frames)} frames '
          f'{frames[0].width}x{frames[0].height}, {len(trainer.train_indices)} train / {len(eval_frames)} scored '
          f'held-out; {rays} rays/step; feature dim {config.feature_field.feature_dim}; teacher {args.teacher}; '
          f'mixed precision {trainer.use_amp}; recipe {args.recipe}', flush=True)
    print(f'[bench] {_fast_summary(trainer)}', flush=True)

    key = 'psnr_aligned' if args.eval_poses == 'aligned' else 'psnr'
    clock = Stopwatch()
    curve: List[Dict] = []
    warm_step, warm_time = min(20, max(1, args.steps // 2)), None  # steady state: after compilation
    peak_train = peak_render = 0.0
    stats = None
    resident = torch.cuda.memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
    _reset_peak()
    clock.start()
    for step in range(1, args.steps + 1):
        stats = trainer.step()
        if step == warm_step:
            warm_time = clock.elapsed
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            train_s = clock.stop()
            peak_train = max(peak_train, _peak_gib())
            _reset_peak()
            eval_started = time.perf_counter()
            scores = heldout_scores(trainer, eval_frames, aligned=refined, depth=has_depth)
            eval_s = time.perf_counter() - eval_started
            peak_render = max(peak_render, _peak_gib())
            _reset_peak()
            row = {'step': step, 'train_s': train_s, **scores,
                   'train_feature_loss': float(stats['feature_loss']) if 'feature_loss' in stats else float('nan')}
            curve.append(row)
            extra = f' (aligned {scores["psnr_aligned"]:6.2f})' if refined else ''
            print(f'[bench] step {step:5d}  train {train_s:7.2f} s  held-out PSNR {scores["psnr"]:6.2f} dB{extra}  '
                  f'(evaluation {eval_s:.1f} s, not counted)', flush=True)
            clock.start()
    total_s = clock.stop()
    steady_steps = args.steps - warm_step
    if warm_time is not None:
        compiled = trainer.graphed is not None and trainer.graphed.compiled
        print(f'[bench] the first {warm_step} steps (CUDA graph capture{", compilation" if compiled else ""}) took '
              f'{warm_time:.1f} s; rays/s counts the steps after them', flush=True)
    rays_per_s = steady_steps * rays / (total_s - warm_time) if steady_steps > 0 and warm_time else float('nan')
    peak_train = max(peak_train, _peak_gib())
    if not args.no_picture:  # what a user renders: a full-resolution held-out view with features and depth
        _reset_peak()
        view = frames[eval_frames[0]]
        write_view_renders(trainer, view, folder if folder is not None else Path('/tmp/f3rm-bench'))
        peak_render = max(peak_render, _peak_gib())

    extra_lines: List[str] = []
    if args.sync_check and torch.cuda.is_available():
        extra_lines += _sync_check(trainer)
    if args.profile:
        extra_lines += _profile(trainer, args.profile, folder)

    theirs = (baseline or {}).get('curve', [])
    comparison = compare(curve, theirs, key)
    summary = {
        'data': str(data), 'name': name, 'feature_weights': mode, 'device': device_name(), 'frames': len(frames),
        'resolution': f'{frames[0].width}x{frames[0].height}', 'rays_per_batch': rays, 'steps': args.steps,
        'recipe': args.recipe, 'teacher': args.teacher, 'fast': _fast_summary(trainer), 'setup_s': setup_s,
        'first_steps_s': warm_time, 'first_steps': warm_step,
        'train_s': total_s, 'rays_per_s': rays_per_s, 'peak_train_gib': peak_train,
        'peak_render_gib': peak_render, 'resident_at_start_gib': resident,
        'curve': curve, 'eval_poses': args.eval_poses, 'comparison': comparison,
        'baseline': {k: v for k, v in (baseline or {}).items()} if baseline else None,
    }
    summary['table'] = run_table(summary)
    if folder is not None:
        write_json(str(folder / 'summary.json'), summary)
        with open(folder / 'curve.csv', 'w', newline='') as handle:
            writer = csv.writer(handle)
            writer.writerow(['side', 'step', 'train_s', 'psnr', 'psnr_aligned', 'depth_err_cm', 'feature_mse',
                             'train_feature_loss'])
            for row in theirs:
                writer.writerow(['baseline', row['step'], row['train_s'], row['psnr'], '', '', '', ''])
            for row in curve:
                writer.writerow(['f3rm_ros', row['step'], row['train_s'], row['psnr'], row['psnr_aligned'],
                                 row['depth_err_cm'], row['feature_mse'], row['train_feature_loss']])
    for line in extra_lines:
        print(line)
    print(f'\n[bench] {name}, feature weights {mode}: {device_name()}, {rays} rays/step, {args.steps} steps, '
          f'recipe {args.recipe}, feature dim {config.feature_field.feature_dim}, mixed precision '
          f'{trainer.use_amp}; PSNR over {len(eval_frames)} held-out frames, evaluated every '
          f'{args.eval_every or args.steps} steps on both sides, clocks stopped')
    print(summary['table'], flush=True)
    print(result_line(summary), flush=True)
    # the next run's memory peaks must not include this one's model (the model's recording forward is a cycle)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def run(args) -> int:
    """Run every dataset in every requested mode and print the tables."""
    if args.no_fast:
        os.environ['F3RM_FAST'] = '0'
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    import torch

    from ..core.config import make_config
    if not torch.cuda.is_available():
        print('[bench] WARNING: no CUDA device: this measures the CPU path')
    if args.feature_weights:
        modes = [m.strip() for m in args.feature_weights.split(',') if m.strip()]
    else:
        modes = [make_config(args.preset, [Path(p) for p in args.config or []]).model.feature_weights]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f'--feature-weights: unknown mode(s) {unknown}; choose from {list(MODES)}')
    summaries = []
    for data in args.data:
        for mode in modes:
            summaries.append(bench_one(args, data, mode, len(summaries), out))
    if out is not None:
        with open(out / 'results.csv', 'w', newline='') as handle:
            fields = [result_fields(s) for s in summaries]
            names = list(dict.fromkeys(k for f in fields for k in f))
            writer = csv.DictWriter(handle, fieldnames=names, restval='')
            writer.writeheader()
            writer.writerows(fields)
    table = overall_table(summaries)
    if out is not None:
        (out / 'overall.md').write_text(table + '\n')
    print(f'\n[bench] overall: {len(args.data)} dataset(s) x {len(modes)} mode(s), {device_name()}')
    print(table)
    ratios = [number(result_fields(s)['speedup']) for s in summaries]
    ratios = [r for r in ratios if r == r]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float('nan')
    print(f'RESULT overall runs={len(summaries)} speedup_geomean={geo:.2f}', flush=True)
    return 0
