"""``f3rm-ros bench hashgrid``: the Triton hash grid against nerfstudio's torch hash grid, at training sizes.

Times forward and forward+backward of the three hash grids of the ``gpu`` preset at the number of samples
one training step of ``--rays`` rays gives them, and the field evaluation a heatmap query does
(density + features at ``--points`` points), fast path beside the reference path (medians of CUDA-event
timed repeats after a warm-up).
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): torch, nerfstudio and the config,
# fast-kernel and model modules (yaml, triton).
import argparse
import statistics
from typing import Callable, List

from . import device_name, format_table


def register(sub) -> None:
    """Add ``bench hashgrid``."""
    p = sub.add_parser('hashgrid', help='Triton vs. torch hash grid (forward, backward) and field evaluation',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rays', type=int, default=4096, help='rays per training step (default: 4096)')
    p.add_argument('--points', type=int, default=220_000, help='query points (default: 220000)')
    p.add_argument('--repeats', type=int, default=20, help='timed repeats (default: 20)')
    p.add_argument('--skip-reference', action='store_true', help='time the fast path only')
    p.set_defaults(func=run)


def _time_ms(fn: Callable[[], None], repeats: int) -> float:
    import torch
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(args) -> int:
    """Print the table."""
    import torch
    from nerfstudio.field_components.encodings import HashEncoding

    from ..core.config import make_config
    from ..core.fast import FastHashEncoding, accelerate
    from ..core.training.model import build_model
    if not torch.cuda.is_available():
        print('bench hashgrid needs a CUDA device')
        return 1
    cfg = make_config('gpu')
    m, f = cfg.model, cfg.feature_field
    samples = list(m.num_proposal_samples_per_ray) + [m.num_nerf_samples_per_ray]
    grids = [('nerfacto density', m.num_levels, m.base_resolution, m.max_resolution, m.log2_hashmap_size,
              m.features_per_level, args.rays * samples[-1], True)]
    for i, res in enumerate(m.proposal_net_max_res):
        grids.append((f'proposal {i}', 5, 16, res, m.proposal_net_log2_hashmap_size, 2, args.rays * samples[i], True))
    grids.append(('feature field', f.num_levels, f.min_resolution, f.max_resolution, f.log2_hashmap_size,
                  f.features_per_level, args.rays * samples[-1], False))
    rows = [['grid', 'points', 'levels x F', 'torch fwd', 'triton fwd', 'torch fwd+bwd', 'triton fwd+bwd',
             'speed-up fwd+bwd']]
    for name, levels, lo, hi, log2, feats, n, pos_grad in grids:
        enc = HashEncoding(num_levels=levels, min_res=lo, max_res=hi, log2_hashmap_size=log2,
                           features_per_level=feats, implementation='torch').cuda()
        with torch.no_grad():
            enc.hash_table.uniform_(-1e-1, 1e-1)
        x = torch.rand(n, 3, device='cuda', requires_grad=pos_grad)
        g = torch.randn(n, levels * feats, device='cuda')
        results = {}
        for impl in ('torch', 'triton'):
            if impl == 'torch' and args.skip_reference:
                results['torch'] = (float('nan'), float('nan'))
                continue
            enc.__class__ = FastHashEncoding if impl == 'triton' else HashEncoding

            def fwd():
                with torch.no_grad():
                    enc(x)

            def fwd_bwd():
                enc.hash_table.grad = None
                out = enc(x)
                torch.autograd.backward(out, g)
            results[impl] = (_time_ms(fwd, args.repeats), _time_ms(fwd_bwd, args.repeats))
        t, k = results['torch'], results['triton']
        rows.append([name, f'{n / 1e6:.2f}M', f'{levels}x{feats}', f'{t[0]:.2f} ms', f'{k[0]:.3f} ms',
                     f'{t[1]:.2f} ms', f'{k[1]:.3f} ms', f'{t[1] / k[1]:.0f}x' if t[1] == t[1] else ''])
    print(f'[bench] hashgrid: {device_name()}')
    print(format_table(rows))

    # The field evaluation a heatmap query does: density and features at N points.
    model = build_model(cfg, 8).cuda().eval()
    accelerate(model, force=True)
    points = (torch.rand(args.points, 3, device='cuda') * 2 - 1)
    lines: List[List[str]] = [['field evaluation', 'points', 'reference', 'fast path']]
    timings = {}
    for mode in ('reference', 'fast'):
        if mode == 'reference' and args.skip_reference:
            timings[mode] = (float('nan'), float('nan'))
            continue
        for module in model.modules():
            if isinstance(module, FastHashEncoding):
                module.fast = mode == 'fast'
        with torch.no_grad():
            d = _time_ms(lambda: model.density_at(points), args.repeats)
            with torch.autocast('cuda', dtype=torch.float16):
                fh = _time_ms(lambda: model.features_at(points), args.repeats)
            ff = _time_ms(lambda: model.features_at(points), args.repeats)
        timings[mode] = (d, fh, ff)
    for i, label in enumerate(('density (nerfacto field)', 'features 768-d, fp16 autocast', 'features 768-d, fp32')):
        r, k = timings['reference'], timings['fast']
        lines.append([label, f'{args.points}', f'{r[i] if len(r) > i else float("nan"):.2f} ms', f'{k[i]:.2f} ms'])
    print(format_table(lines))
    return 0
