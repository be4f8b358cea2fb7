"""``f3rm-ros bench train --data DIR``: training speed and quality of the product, beside nerfstudio's baseline.

Trains the product's `OnlineTrainer` (preset ``gpu`` = F3RM defaults, 768-d feature head) on a nerfstudio
dataset with a fixed random teacher (a seeded random feature grid per frame: no CLIP weights needed; the
feature head costs the same), and reports steady-state rays/s, peak GPU memory, held-out PSNR at fixed step
counts and the training wall time at which a target PSNR is first reached. To compare like with like, the
scene is normalised as ``ns_baseline.py`` does it (camera centres centred and scaled into [-1, 1]), the
held-out frames are the baseline's (every 8th from frame 0, PSNR over the first six), the depth loss is off
and the batch has the same number of rays. With ``--baseline .device/bench/ns_baseline.py`` the baseline runs
first in a subprocess on the same GPU and the table shows both side by side with the ratio.

Clocks: training time excludes the held-out evaluations (the clock is stopped and the GPU synchronised around
them) and includes everything else from the first step on, Triton's one-off kernel compilation included.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import Stopwatch, device_name, format_table, number, python, run_baseline, sync, write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add ``bench train``."""
    p = sub.add_parser('train', help='training rays/s, memory and held-out PSNR vs. the nerfstudio baseline',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='nerfstudio dataset folder (transforms.json)')
    p.add_argument('--steps', type=int, default=2000, help='training steps (default: 2000)')
    p.add_argument('--rays', type=int, help='rays per batch (default: the preset, 4096 for gpu)')
    p.add_argument('--preset', default='gpu', help='configuration preset (default: gpu = F3RM defaults)')
    p.add_argument('--config', action='append', help='YAML overlay (repeatable)')
    p.add_argument('--feature-dim', type=int, default=768, help='teacher feature width (default: 768)')
    p.add_argument('--eval-every', type=int, default=100,
                   help='held-out PSNR every N steps until the target is reached (default: 100)')
    p.add_argument('--milestones', default='500,1000,2000',
                   help='steps with a held-out PSNR in any case (default: 500,1000,2000; the last step always)')
    p.add_argument('--eval-frames', type=int, default=6, help='held-out frames scored (default: 6, as the baseline)')
    p.add_argument('--target-psnr', type=float,
                   help='PSNR whose time-to-reach is reported (default: the baseline\'s final PSNR)')
    p.add_argument('--baseline', help='path of ns_baseline.py: run it first on the same data (same GPU)')
    p.add_argument('--baseline-steps', type=int, help='baseline steps (default: --steps)')
    p.add_argument('--baseline-rays', type=int, default=4096, help='baseline rays per batch (default: 4096)')
    p.add_argument('--target-margin', type=float, default=0.3,
                   help='also report the time to (target - margin) dB (default: 0.3, the issue\'s tolerance)')
    p.add_argument('--baseline-result', help='a file with a baseline "RESULT ..." line, instead of running it')
    p.add_argument('--no-fast', action='store_true', help='disable the fast path (F3RM_FAST=0): reference timing')
    p.add_argument('--no-graphs', action='store_true', help='fast path without CUDA graphs (trainer.cuda_graphs off)')
    p.add_argument('--depth', action='store_true', help='keep the depth loss (off by default: the baseline has none)')
    p.add_argument('--profile', type=int, default=0, metavar='N',
                   help='after training, profile N more steps with the torch profiler and print where time goes')
    p.add_argument('--sync-check', action='store_true',
                   help='after training, list the host-device synchronisations of 3 steps')
    p.add_argument('--out', help='folder for summary.json, curve.csv, baseline.log and profile tables')
    p.add_argument('--recipe', choices=['product', 'baseline'], default='product',
                   help="optimisation recipe: 'product' = the preset's (learning rates decaying over --steps, "
                        "SO3xR3 pose refinement trained); 'baseline' = ns_baseline.py's (constant learning rates, "
                        "poses not refined), to compare implementations at equal steps")
    p.add_argument('--downscale', type=int, default=1, help='integer image downscale (default: 1, as the baseline)')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=run)


def _random_teacher(dim: int, patch_size: int, seed: int):
    import torch

    from ..core.teachers import Teacher

    class RandomTeacher(Teacher):
        """Seeded random patch features (like the baseline's): the feature head's cost without CLIP."""

        name = 'random'

        def __init__(self):
            self.dim = dim
            self.patch_size = patch_size

        def grid_shape(self, height, width):
            return height // patch_size, width // patch_size

        def extract(self, frames):
            grids = []
            for frame in frames:
                gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(frame.name.encode()))
                h, w = self.grid_shape(frame.height, frame.width)
                grids.append(torch.randn(h, w, dim, generator=gen))
            return torch.stack(grids)

        def encode_text(self, texts):
            return torch.nn.functional.normalize(torch.randn(len(texts), dim), dim=-1)

        def state(self):
            return {'name': 'random', 'dim': dim, 'patch_size': patch_size, 'seed': seed}

    return RandomTeacher()


def _heldout_psnr(trainer, indices: Sequence[int]) -> float:
    """Mean PSNR of full-resolution renders of `indices` (the model's eval path, computed on the device)."""
    import torch
    model = trainer.model
    values = []
    with torch.no_grad():
        model.eval()
        try:
            for index in indices:
                out = model.get_outputs_for_camera(trainer.cameras[index:index + 1])
                target = trainer.images[index].float() / 255.0
                mse = torch.mean((out['rgb'].float() - target) ** 2).item()
                values.append(-10.0 * math.log10(mse))
        finally:
            model.train()
    return float(sum(values) / len(values))


def _build(args, frames):
    """Config (baseline-comparable), random teacher, trainer with the baseline's split."""
    import numpy as np

    from ..core.config import ModelConfig, make_config
    from ..core.frames import FrameStore
    from ..core.trainer import OnlineTrainer

    overrides: Dict = {
        'trainer': {'steps': args.steps, 'capacity': len(frames), 'eval_chunk_rays': 32768, 'seed': args.seed,
                    'cuda_graphs': not args.no_graphs},
        'feature_field': {'feature_dim': args.feature_dim},
    }
    if args.rays:
        overrides['trainer']['rays_per_batch'] = args.rays
    if not args.depth and 'depth_loss_weight' in {f.name for f in dataclasses.fields(ModelConfig)}:
        overrides['model'] = {'depth_loss_weight': 0.0}
    if args.recipe == 'baseline':
        overrides['trainer']['lr_final_ratio'] = 1.0
        overrides.setdefault('model', {})['camera_optimizer'] = 'off'
    config = make_config(args.preset, [Path(p) for p in args.config or []], overrides)
    # ns_baseline.py's normalisation: camera centres minus their mean, divided by the largest |coordinate|.
    centres = np.stack([f.T_base_optical[:3, 3] for f in frames])
    mean = centres.mean(0)
    half = float(np.abs(centres - mean).max())
    config.workspace.min_xyz, config.workspace.max_xyz = tuple(mean - half), tuple(mean + half)
    teacher = _random_teacher(config.feature_field.feature_dim, 14, args.seed)
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


def _fast_summary(trainer) -> str:
    from ..core import fast
    from ..core.fast import FastHashEncoding
    model = trainer.model
    grids = sum(isinstance(m, FastHashEncoding) for m in model.modules())
    return (f'fast path {"ON" if fast.enabled() and grids else "OFF"}: {grids} hash grids on Triton, '
            f'feature render-then-project {"on" if getattr(model.feature_field, "fast_render", False) else "off"}, '
            f'CUDA graphs {"on" if trainer.graphed is not None else "off"}')


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


def run(args) -> int:
    """Run the benchmark and print the side-by-side table."""
    if args.no_fast:
        os.environ['F3RM_FAST'] = '0'
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    import torch

    from ..core.frames import read_dataset
    if not torch.cuda.is_available():
        print('[bench] WARNING: no CUDA device: this measures the CPU path')
    baseline = None
    if args.baseline_result:
        from . import parse_result_line
        baseline = parse_result_line(Path(args.baseline_result).read_text())
    elif args.baseline:
        bsteps = args.baseline_steps or args.steps
        os.environ['RAYS'] = str(args.baseline_rays)
        baseline = run_baseline([python(), args.baseline, args.data, str(bsteps), str(args.feature_dim), 'amp'],
                                out / 'baseline.log' if out else None)
    target = args.target_psnr
    if target is None and baseline is not None:
        target = number(baseline.get('heldout_psnr'))

    frames = read_dataset(Path(args.data), downscale=args.downscale)
    torch.manual_seed(args.seed)
    setup_started = time.perf_counter()
    config, trainer, eval_frames = _build(args, frames)
    sync()
    setup_s = time.perf_counter() - setup_started
    rays = config.trainer.rays_per_batch
    print(f'[bench] {device_name()}; {len(frames)} frames {frames[0].width}x{frames[0].height}, '
          f'{len(trainer.train_indices)} train / {len(eval_frames)} scored held-out; {rays} rays/step; '
          f'feature dim {config.feature_field.feature_dim}; mixed precision {trainer.use_amp}; '
          f'recipe {args.recipe}', flush=True)
    print(f'[bench] {_fast_summary(trainer)}', flush=True)

    milestones = {int(s) for s in args.milestones.split(',') if s.strip()} | {args.steps}
    clock = Stopwatch()
    curve: List[Dict] = []
    reached: Optional[Dict] = None
    reached_margin: Optional[Dict] = None
    margin_target = None if target is None else target - args.target_margin
    warm_step, warm_time = 20, None
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    clock.start()
    for step in range(1, args.steps + 1):
        trainer.step()
        if step == warm_step:
            warm_time = clock.elapsed
        due = step in milestones or ((reached is None or reached_margin is None) and target is not None
                                     and args.eval_every and step % args.eval_every == 0)
        if due:
            train_s = clock.stop()
            mem = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
            eval_started = time.perf_counter()
            value = _heldout_psnr(trainer, eval_frames)
            eval_s = time.perf_counter() - eval_started
            row = {'step': step, 'train_s': train_s, 'heldout_psnr': value,
                   'peak_train_mem_gib': round(mem, 2)}
            curve.append(row)
            print(f'[bench] step {step:5d}  train {train_s:7.2f} s  held-out PSNR {value:6.2f} dB  '
                  f'(evaluation {eval_s:.1f} s, not counted)', flush=True)
            if reached is None and target is not None and value >= target:
                reached = row
            if reached_margin is None and margin_target is not None and value >= margin_target:
                reached_margin = row
            clock.start()
    total_s = clock.stop()
    steady_steps = args.steps - warm_step
    rays_per_s = steady_steps * rays / (total_s - warm_time) if steady_steps > 0 else float('nan')
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
    final = curve[-1]

    extra: List[str] = []
    if args.sync_check and torch.cuda.is_available():
        extra += _sync_check(trainer)
    if args.profile:
        extra += _profile(trainer, args.profile, out)

    # ---------------------------------------------------------------- table
    rows = [['', 'nerfstudio baseline', 'f3rm_ros', 'ratio']]

    def add(name, ours, theirs, fmt, ratio=True, higher_better=True):
        cell_b = fmt(theirs) if theirs is not None and not math.isnan(theirs) else 'n/a'
        cell_o = fmt(ours) if ours is not None and not math.isnan(ours) else 'n/a'
        r = ''
        if ratio and theirs and ours and not math.isnan(theirs) and not math.isnan(ours):
            r = f'{ours / theirs:.2f}x' if higher_better else f'{theirs / ours:.2f}x faster'
        rows.append([name, cell_b, cell_o, r])

    b = baseline or {}
    b_rps = number(b.get('rays_per_s'))
    add('rays/s (steady state)', rays_per_s, b_rps if baseline else None, lambda v: f'{v / 1e3:.1f}k')
    add('ms/step', total_s / args.steps * 1e3, number(b.get('s_per_step')) if baseline else None,
        lambda v: f'{v:.1f}', higher_better=False)
    add(f'train wall, {args.steps} steps (s)', total_s, number(b.get('train_wall')) if baseline else None,
        lambda v: f'{v:.1f}', higher_better=False)
    add(f'held-out PSNR @ {final["step"]} (dB)', final['heldout_psnr'],
        number(b.get('heldout_psnr')) if baseline else None, lambda v: f'{v:.2f}', ratio=False)
    add('peak GPU memory (GiB)', peak, number(b.get('peak_mem')) if baseline else None, lambda v: f'{v:.2f}',
        ratio=False)
    if target is not None:
        b_wall = number(b.get('train_wall')) if baseline else float('nan')
        for label, value, hit in ((f'{target:.2f}', target, reached),
                                  (f'{margin_target:.2f} (target - {args.target_margin:g})', margin_target,
                                   reached_margin)):
            ratio = f'{b_wall / hit["train_s"]:.1f}x faster' if hit and b_wall == b_wall else ''
            rows.append([f'train time to PSNR {label} dB', f'{b_wall:.1f} s (its final PSNR)' if baseline else '',
                         f'{hit["train_s"]:.1f} s (step {hit["step"]})' if hit else 'not reached', ratio])
    if baseline and 'steps' in b and int(number(b['steps'])) != args.steps:
        rows.append(['note', f'baseline ran {b["steps"]} steps', f'{args.steps} steps', ''])
    table = format_table(rows)

    summary = {
        'device': device_name(), 'data': str(args.data), 'frames': len(frames), 'rays_per_batch': rays,
        'steps': args.steps, 'recipe': args.recipe, 'fast': _fast_summary(trainer), 'setup_s': setup_s,
        'train_s': total_s, 'rays_per_s': rays_per_s, 'peak_mem_gib': peak, 'curve': curve,
        'target_psnr': target, 'reached': reached, 'target_margin': args.target_margin,
        'reached_margin': reached_margin, 'baseline': baseline, 'table': table,
    }
    write_json(str(out / 'summary.json') if out else None, summary)
    if out is not None:
        with open(out / 'curve.csv', 'w') as handle:
            handle.write('step,train_s,heldout_psnr,peak_train_mem_gib\n')
            for row in curve:
                handle.write(f'{row["step"]},{row["train_s"]},{row["heldout_psnr"]},{row["peak_train_mem_gib"]}\n')
    for line in extra:
        print(line)
    print(f'\n[bench] train: {device_name()}, {rays} rays/step, {args.steps} steps, recipe {args.recipe}, feature dim '
          f'{config.feature_field.feature_dim}, mixed precision {trainer.use_amp}; '
          f'PSNR over {len(eval_frames)} held-out frames')
    print(table, flush=True)
    return 0
