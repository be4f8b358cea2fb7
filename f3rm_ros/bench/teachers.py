"""``f3rm-ros bench teachers``: what each teacher and each set of feature heads costs.

Two tables:

1. **Teachers** (``--teachers clip,dino``): dense features of ``--images`` images of ``--image-size`` through each
   teacher of the ``--preset``'s teacher settings (CLIP ViT-L-14-336 and DINOv2 ViT-S/14 at 336 px with ``gpu``):
   images/s after a warm-up, and peak memory (CUDA allocator on a GPU; the process's peak RSS on a CPU). Random
   weights unless ``--clip-weights`` / ``--dino-weights`` are given: the cost does not depend on the weights.
2. **Heads** (``--head-sets 'labels;labels+dino'``, ``--layouts shared,separate``): each head set trained for
   ``--steps`` steps on a synthetic table (``--views`` views of ``--width`` x ``--height``; the labels teacher
   is the text head, DINO random unless ``--dino-weights``): training rays/s (after ``--warmup`` steps), peak
   memory, held-out PSNR, and per head the mean loss of the last 10 steps and the held-out cosine to the teacher.
   Equal steps, equal rays: the layouts compare at equal quality when their losses and cosines agree.

A third table times the feature field alone for each head set, ``shared`` against ``separate`` interleaved
(``--layout-repeats``), so that a busy machine's drift hits both alike.

``--json FILE`` writes the tables with the device. The cost table of docs/performance.md comes from a GPU run with
``--preset gpu``; ``--preset cpu-tiny`` with small sizes shows the plumbing on a CPU in a minute or two.
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): torch, nerfstudio and the config,
# teacher, trainer, field, evaluation and dataset modules.
import argparse
import copy
import dataclasses
import resource
import statistics
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from . import device_name, format_table, sync, write_json
from .semantic import synthetic_scene

SCENE_OBJECTS = 5  # make_scene's default draw


def register(sub) -> None:
    """Add ``bench teachers``."""
    p = sub.add_parser('teachers', help='cost per teacher (images/s, memory) and per head set (training rays/s)',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='gpu', help='config preset (gpu | cpu | cpu-tiny; default gpu)')
    p.add_argument('--teachers', default='clip,dino', help="teachers to time ('' = none; default clip,dino)")
    p.add_argument('--images', type=int, default=16, help='images per teacher (default 16)')
    p.add_argument('--batches', default='', help="teacher batch sizes to time, comma-separated (default: the "
                   "preset's teacher.batch_size)")
    p.add_argument('--image-size', default='640x480', help='WxH of the timed images (default 640x480)')
    p.add_argument('--head-sets', default='labels;labels+dino',
                   help="';'-separated head sets to train ('' = none; default 'labels;labels+dino')")
    p.add_argument('--layouts', default='shared', help='feature_field.head_layout values, comma-separated '
                   '(shared, separate; default shared)')
    p.add_argument('--steps', type=int, default=300, help='training steps per run (0 = no training runs; default 300)')
    p.add_argument('--warmup', type=int, default=20, help='steps before the clock starts (default 20)')
    p.add_argument('--views', type=int, default=24, help='synthetic views (default 24)')
    p.add_argument('--width', type=int, default=160, help='synthetic image width (default 160)')
    p.add_argument('--height', type=int, default=120, help='synthetic image height (default 120)')
    p.add_argument('--dino-image-size', type=int, default=0,
                   help="DINO's shorter side in the head runs (0 = the preset's; match the labels grid)")
    p.add_argument('--clip-weights', default='', help='open_clip weights file (default: random weights)')
    p.add_argument('--dino-weights', default='', help='DINO weights file (default: random weights)')
    p.add_argument('--layout-repeats', type=int, default=10,
                   help='interleaved repeats of the feature-field-only layout timing (0 = skip; default 10)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--scenes', type=Path, help='folder of rendered synthetic scans (as `bench semantic --scenes`): '
                   'read the table from it when there, else render it (open3d) and save it there; the GPU machine '
                   'has no open3d, so render here and carry the folder')
    p.add_argument('--render-only', action='store_true', help='render the table into --scenes and stop')
    p.add_argument('--json', default='', help='write the tables here')
    p.set_defaults(func=run)


def _memory_mb(device) -> float:
    """Peak memory so far: the CUDA allocator's on a GPU, the process's peak RSS on a CPU (MB)."""
    import torch
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_memory(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def teacher_rows(args, config) -> List[Dict]:
    """Time each teacher of `args.teachers` on random images, once per batch size of `args.batches`; one row each."""
    import torch

    from ..core.teachers import make_teacher
    from ..core.training.trainer import pick_device
    width, height = (int(v) for v in args.image_size.lower().split('x'))
    rng = np.random.default_rng(args.seed)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(max(args.images, 1))]
    batches = [int(b) for b in args.batches.split(',') if b.strip()] if args.batches else [config.teacher.batch_size]
    rows = []
    for name in [n.strip() for n in args.teachers.split(',') if n.strip()]:
        for batch in batches:
            teacher_config = dataclasses.replace(config.teacher, name=name, pretrained=args.clip_weights,
                                                 dino_weights=args.dino_weights, device='auto', batch_size=batch)
            device = pick_device('auto')
            _reset_memory(device)
            teacher = make_teacher(teacher_config)
            teacher.extract_images(images[:min(batch, len(images))])  # warm-up (kernels, positional embeddings)
            sync()
            started = time.perf_counter()
            features = teacher.extract_images(images)
            sync()
            seconds = time.perf_counter() - started
            state = teacher.state()
            rows.append({'teacher': name, 'model': state.get('model_name', ''), 'weights': 'random' if getattr(
                teacher, 'random_weights', False) else 'file', 'image': f'{width}x{height}',
                'grid': 'x'.join(str(v) for v in features.shape[1:3]), 'dim': int(features.shape[-1]),
                'batch': teacher.batch_size, 'images_per_s': round(len(images) / seconds, 2),
                'model_only_images_per_s': round(_model_only_rate(teacher, batch, len(images)), 2),
                'peak_memory_mb': round(_memory_mb(device), 1)})
            del teacher
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return rows


def _model_only_rate(teacher, batch: int, count: int) -> float:
    """Images/s of the bare image encoder on square `image_size` inputs already on the device.

    The ceiling that the dense features (which also read, resize and normalise the images, take more tokens for
    a 4:3 image and copy the features to host memory) are measured against.
    """
    import torch
    model = teacher.model
    forward = model.encode_image if hasattr(model, 'encode_image') else model.forward_features
    # the patch embedding's dtype (CLIP's tower runs fp16 on a GPU while some of its parameters stay fp32)
    dtype = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.dtype
    pixels = torch.randn(batch, 3, teacher.image_size, teacher.image_size, device=teacher.device, dtype=dtype)
    with torch.no_grad():
        forward(pixels)
        sync()
        started = time.perf_counter()
        for _ in range(max(count // batch, 1)):
            forward(pixels)
        sync()
    return max(count // batch, 1) * batch / (time.perf_counter() - started)


def head_rows(args, config) -> List[Dict]:
    """Train each head set with each layout on one synthetic table; one row per run."""
    import torch

    from ..core.study.evaluation import teacher_cosine
    from ..core.capture.frames import FrameStore
    from ..core.teachers import choose_teacher
    from ..core.training.trainer import OnlineTrainer
    _, frames, labels, _, workspace = synthetic_scene(args.seed, SCENE_OBJECTS, args.views, args.width, args.height,
                                                      cache=args.scenes)
    rows = []
    for head_set in [s.strip() for s in args.head_sets.split(';') if s.strip()]:
        layouts = [s.strip() for s in args.layouts.split(',') if s.strip()]
        for layout in layouts if '+' in head_set else layouts[:1]:  # one head: both layouts build the same field
            run_config = copy.deepcopy(config)
            run_config.workspace = workspace
            run_config.feature_field.head_layout = layout
            run_config.trainer.steps = args.steps
            run_config.teacher.pretrained = args.clip_weights
            run_config.teacher.dino_weights = args.dino_weights
            if args.dino_image_size:
                run_config.teacher.dino_image_size = args.dino_image_size
            torch.manual_seed(args.seed)
            teacher, _ = choose_teacher(run_config, labels, head_set, allow_random=True)
            store = FrameStore(run_config.trainer.capacity)
            for frame in frames:
                store.add(frame)
            trainer = OnlineTrainer(run_config, store, teacher)
            trainer.sync_frames()
            device = trainer.device
            for _ in range(min(args.warmup, args.steps)):
                trainer.step()
            _reset_memory(device)
            sync()
            started = time.perf_counter()
            losses = []
            timed = max(args.steps - args.warmup, 1)
            for _ in range(timed):
                losses.append(trainer.step())
            sync()
            seconds = time.perf_counter() - started
            last = losses[-10:]
            row = {'heads': head_set, 'layout': layout,
                   'widths': '+'.join(str(width) for _, width in run_config.feature_field.heads),
                   'steps': args.steps, 'rays_per_s': round(timed * run_config.trainer.rays_per_batch / seconds, 1),
                   's_per_step': round(seconds / timed, 4), 'peak_memory_mb': round(_memory_mb(device), 1),
                   'psnr': round(trainer.evaluate()['psnr'], 2)}
            names = [name for name, _ in trainer.model.feature_heads]
            widths = [width for _, width in trainer.model.feature_heads]
            cosines = {name: [] for name in names}
            for index in trainer.eval_indices:
                frame = frames[index]
                rendered = trainer.render(frame.T_base_optical, frame.K, frame.width, frame.height, names=names)
                target = teacher.extract([frame])[0]
                for name, part in zip(names, torch.split(target, widths, dim=-1)):
                    cosines[name].append(teacher_cosine(rendered[name], part))
            for name in names:
                head = 'text' if name == 'feature' else name[len('feature_'):]
                row[f'{head}_loss'] = float(f'{np.mean([float(s[name + "_loss"]) for s in last]):.3g}')
                row[f'{head}_cosine'] = round(float(np.mean(cosines[name])), 3) if cosines[name] else float('nan')
            rows.append(row)
            print(row, flush=True)
            del trainer
    return rows


def layout_rows(args, config) -> List[Dict]:
    """Time the feature field alone, 'shared' against 'separate', interleaved (A B A B ...) so load drift cancels.

    Per head set with more than one head: render + MSE + backward of the feature field at one training step's
    samples (rays_per_batch x nerfacto's final samples per ray), median of ``--layout-repeats`` alternations.
    """
    import torch
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    from ..core.training.field import make_feature_field
    from ..core.training.trainer import pick_device
    device = pick_device('auto')
    rays, samples = config.trainer.rays_per_batch, config.model.num_nerf_samples_per_ray
    widths = {'labels': config.teacher.labels_dim, 'clip': 768 if args.preset == 'gpu' else 512, 'dino': 384,
              'custom': 64}
    rows = []
    for head_set in [s.strip() for s in args.head_sets.split(';') if '+' in s]:
        parts = head_set.split('+')
        spec = ','.join(f'{part}:{widths.get(part, 64)}' for part in parts[1:])
        fields, times = {}, {'shared': [], 'separate': []}
        for layout in times:
            field_config = dataclasses.replace(config.feature_field, feature_dim=widths.get(parts[0], 64),
                                               extra_heads=spec, head_layout=layout)
            fields[layout] = make_feature_field(field_config, SceneContraction(order=float('inf'))).to(device)
        generator = torch.Generator().manual_seed(args.seed)
        positions = (torch.rand((rays, samples, 3), generator=generator) * 2 - 1).to(device)
        weights = torch.rand((rays, samples, 1), generator=generator).to(device) / samples
        target = torch.randn((rays, fields['shared'].out_dim), generator=generator).to(device)
        for repeat in range(args.layout_repeats + 2):
            for layout, field in fields.items():
                sync()
                started = time.perf_counter()
                loss = torch.nn.functional.mse_loss(field.render(positions, weights), target)
                loss.backward()
                sync()
                if repeat >= 2:  # two warm-up rounds
                    times[layout].append(time.perf_counter() - started)
        shared, separate = (statistics.median(times[k]) * 1e3 for k in ('shared', 'separate'))
        rows.append({'heads': head_set, 'widths': f'{widths.get(parts[0], 64)}+{spec}', 'samples': rays * samples,
                     'shared_ms': round(shared, 1), 'separate_ms': round(separate, 1),
                     'separate_over_shared': round(separate / shared, 2),
                     'shared_params': sum(p.numel() for p in fields['shared'].parameters()),
                     'separate_params': sum(p.numel() for p in fields['separate'].parameters())})
    return rows


def _table(rows: List[Dict]) -> str:
    keys = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return format_table([keys] + [[row.get(k, '') for k in keys] for row in rows])


def run(args) -> int:
    """Print both tables (and write them with --json)."""
    from ..core.config import make_config
    config = make_config(args.preset)
    if args.render_only:
        if args.scenes is None:
            raise SystemExit('--render-only needs --scenes DIR')
        synthetic_scene(args.seed, SCENE_OBJECTS, args.views, args.width, args.height, cache=args.scenes)
        print(f'table rendered into {args.scenes}')
        return 0
    device = device_name()
    print(f'bench teachers on {device}, preset {args.preset}')
    teachers = teacher_rows(args, config) if args.teachers.strip() else []
    if teachers:
        print('\nTeachers (dense features of random images):\n' + _table(teachers))
    layouts = layout_rows(args, config) if args.layout_repeats > 0 else []
    if layouts:
        print('\nFeature field alone, render + loss + backward of one step, shared vs separate (median ms):\n'
              + _table(layouts))
    heads = head_rows(args, config) if args.head_sets.strip() and args.steps > 0 else []
    if heads:
        print(f'\nHead sets ({args.steps} steps, {config.trainer.rays_per_batch} rays/step, {args.views} views of '
              f'{args.width}x{args.height}):\n' + _table(heads))
    write_json(args.json, {'device': device, 'preset': args.preset, 'teachers': teachers, 'layouts': layouts,
                           'heads': heads, 'args': vars(args)})
    return 0
