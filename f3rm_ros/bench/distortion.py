"""``f3rm-ros bench distortion``: what lens distortion costs the field when removed at capture, and when ignored.

One synthetic table (`core.scenes`) is scanned three ways, with the same arm poses:

1. **pinhole**: rendered directly with the pinhole camera ``K_new`` (the reference);
2. **undistorted**: rendered through a lens with known radial (plumb_bob) distortion (`distortion.distort_image`
   from a 2x supersampled pinhole render that covers the lens's field), then passed through the capture
   (`CaptureSession` with the distortion from "CameraInfo"): every keyframe undistorted once to ``K_new``;
3. **ignored**: the same distorted images taken as pinhole images at the lens's K (what capture did before it
   undistorted).

Each scan trains the product's model with the labels teacher (same preset, steps and seed), then is scored on
the SAME held-out views rendered directly at ``K_new`` from poses no scan has (PSNR of the rendered colour), and
on text queries for every object (distance from the top cluster's centroid to the object's true centre).
The issue's bar: undistorted within 0.5 dB and 2 cm of pinhole; ignored clearly worse.

CPU: about 2-4 minutes per scan with the defaults (``cpu-tiny``, 300 steps, 48 views of 160 x 120).
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): cv2, torch and the capture, scene,
# config and query modules (scipy, open3d, yaml, nerfstudio).
import argparse
import time
from typing import Dict, List

import numpy as np

from . import device_name, format_table, write_json
from .semantic import score_queries, train_scene
from .semantic_scores import summary_rows

DEFAULT_LENS = (-0.28, 0.09, 0.001, -0.0005, 0.0)     # a strong RealSense-like colour lens (k1 k2 p1 p2 k3)


def register(sub) -> None:
    """Add ``bench distortion``."""
    p = sub.add_parser('distortion', help='pinhole vs undistorted-at-capture vs ignored distortion: PSNR and queries',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=11, help='synthetic layout (default: 11)')
    p.add_argument('--steps', type=int, default=300, help='training steps per scan (default: 300)')
    p.add_argument('--views', type=int, default=48, help='views per scan (default: 48)')
    p.add_argument('--heldout', type=int, default=8, help='held-out views scored (default: 8)')
    p.add_argument('--width', type=int, default=160)
    p.add_argument('--height', type=int, default=120)
    p.add_argument('--hfov', type=float, default=70.0, help="the lens camera's pinhole field of view (deg)")
    p.add_argument('--lens', type=float, nargs=5, default=list(DEFAULT_LENS), metavar='D',
                   help='plumb_bob k1 k2 p1 p2 k3 (default: %(default)s)')
    p.add_argument('--preset', default='cpu-tiny')
    p.add_argument('--device', default='auto')
    p.add_argument('--json', help='also write the results to this JSON file')
    p.set_defaults(func=run)


def lens_render(scene, T: np.ndarray, K: np.ndarray, distortion, width: int, height: int):
    """(rgb, depth, labels) a camera with `distortion` sees: sampled from a 2x supersampled pinhole render."""
    import cv2

    from ..core.capture.distortion import distort_image
    corners = np.array([[u, v] for u in (0, width / 2, width) for v in (0, height / 2, height)], np.float64)
    rays = cv2.undistortPoints(corners.reshape(-1, 1, 2), K, distortion.array()).reshape(-1, 2)
    reach = np.abs(rays).max(axis=0) * 1.08                 # normalised image-plane extent the lens sees
    focal = 2.0 * K[0, 0]
    wide_w, wide_h = int(np.ceil(2 * focal * reach[0])), int(np.ceil(2 * focal * reach[1]))
    K_wide = np.array([[focal, 0, wide_w / 2], [0, focal, wide_h / 2], [0, 0, 1]])
    wide = scene.render(K_wide, T, wide_w, wide_h)
    # a light blur first: the 2x supersampled render is sampled once per lens pixel (no aliasing)
    rgb = distort_image(cv2.GaussianBlur(wide.image, (3, 3), 0.8), K_wide, K, distortion, width, height)
    depth = distort_image(wide.depth, K_wide, K, distortion, width, height, interpolation=cv2.INTER_NEAREST)
    labels = distort_image(wide.labels, K_wide, K, distortion, width, height, interpolation=cv2.INTER_NEAREST)
    return rgb, depth, labels


def scans(scene, poses, K_lens, distortion, width, height):
    """{'pinhole', 'undistorted', 'ignored'}: the three scans of the same poses (module docstring)."""
    from ..core.capture.session import CaptureSession, CaptureSettings
    from ..core.capture.distortion import Undistorter
    from ..core.capture.frames import PosedFrame
    K_new = Undistorter(K_lens, distortion, width, height).K_new
    session = CaptureSession(CaptureSettings(min_translation=0.0, min_rotation_deg=0.0, min_interval_s=0.0,
                                             min_sharpness=0.0, max_stamp_skew_s=0.0, capacity=10000))
    session.set_camera_info(K_lens, width, height, distortion)
    out: Dict[str, List] = {'pinhole': [], 'undistorted': [], 'ignored': []}
    for index, T in enumerate(poses):
        stamp = 1.0 + 0.1 * index
        out['pinhole'].append(scene.render(K_new, T, width, height, stamp=stamp))
        rgb, depth, labels = lens_render(scene, T, K_lens, distortion, width, height)
        out['ignored'].append(PosedFrame(rgb, K_lens, T, stamp=stamp, depth=depth, labels=labels))
        session.add_pose(stamp, T)
        session.add_aux('depth', stamp, lambda depth=depth: depth)
        session.add_aux('labels', stamp, lambda labels=labels: labels)
        kept = [o for o in session.add_image(stamp, width, height, lambda rgb=rgb: rgb) if o.kept]
        out['undistorted'] += [o.frame for o in kept]
    if len(out['undistorted']) != len(poses):
        raise RuntimeError(f'the capture kept {len(out["undistorted"])} of {len(poses)} frames: '
                           f'{session.stats.rejected}')
    return out, K_new


def psnr(rendered: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) of a float [0, 1] render against a uint8 image."""
    mse = float(np.mean((np.clip(rendered, 0, 1) - truth.astype(np.float64) / 255.0) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def run(args) -> int:
    """Train the three scans and print the comparison."""
    import torch

    from ..core.scenes import table as scenes
    from ..core.config import make_config
    from ..core.capture.distortion import Distortion
    from ..core.query.answer import FieldQuerier
    started = time.perf_counter()
    config = make_config(args.preset, overrides={'trainer': {'device': args.device},
                                                 'grasp': {'max_opening': 0.14}})
    scene = scenes.make_scene(seed=args.seed, num_views=1, width=args.width, height=args.height)
    rng = np.random.default_rng(args.seed)
    poses = scenes.scan_poses(args.views, rng)
    heldout_poses = scenes.scan_poses(args.heldout, np.random.default_rng(args.seed + 1000))
    K_lens = scenes.pinhole_intrinsics(args.width, args.height, args.hfov)
    lens = Distortion('plumb_bob', tuple(args.lens))
    data, K_new = scans(scene, poses, K_lens, lens, args.width, args.height)
    heldout = [scene.render(K_new, T, args.width, args.height) for T in heldout_poses]
    print(f'[bench] distortion: seed {args.seed}, {args.views} views + {args.heldout} held out at '
          f'{args.width}x{args.height}, lens plumb_bob {list(args.lens)}, K {np.round(K_lens[0, 0], 1)} px -> K_new '
          f'{np.round(K_new[0, 0], 1)} px; {args.preset}, {args.steps} steps, labels teacher; {device_name()}; scans '
          f'rendered in {time.perf_counter() - started:.0f} s', flush=True)
    phase = time.perf_counter()
    rows, results = [['scan', 'held-out PSNR', 'median query error', 'mean', 'worst', 'within 2 cm',
                      'train s']], {}
    for name in ('pinhole', 'undistorted', 'ignored'):
        torch.manual_seed(0)
        trainer, teacher, trained, train_s, _ = train_scene(name, data[name], scene.labels, scene.workspace,
                                                            config, args.steps, progress=False)
        values = [psnr(trainer.render(f.T_base_optical, f.K, f.width, f.height)['rgb'], f.image) for f in heldout]
        querier = FieldQuerier(trainer.model, teacher, trained, lock=trainer.lock)
        querier.prepare()
        scores = score_queries(querier, name, scene.objects)
        print(f'[bench] {name}: trained {args.steps} steps in {train_s:.0f} s, scored in '
              f'{time.perf_counter() - phase - train_s:.0f} s', flush=True)
        phase = time.perf_counter()
        errors = [s.error_m for s in scores]
        summary = summary_rows(scores)
        results[name] = {'heldout_psnr': float(np.mean(values)), 'errors_m': {s.query: s.error_m for s in scores},
                         'median_error_m': float(np.median(errors)), 'mean_error_m': float(np.mean(errors)),
                         'worst_error_m': float(np.max(errors)), 'within_2cm': summary['within_2cm'],
                         'train_s': train_s}
        r = results[name]
        rows.append([name, f'{r["heldout_psnr"]:.2f} dB', f'{r["median_error_m"] * 100:.1f} cm',
                     f'{r["mean_error_m"] * 100:.1f} cm', f'{r["worst_error_m"] * 100:.1f} cm',
                     f'{r["within_2cm"]:.0%}', f'{train_s:.0f}'])
        print(f'[bench] {name}: held-out PSNR {r["heldout_psnr"]:.2f} dB, query errors '
              + ', '.join(f'{k} {v * 100:.1f} cm' for k, v in r['errors_m'].items()), flush=True)
        del trainer, querier
    print(format_table(rows))
    ref, und, ign = results['pinhole'], results['undistorted'], results['ignored']
    line = (f'RESULT psnr_pinhole={ref["heldout_psnr"]:.2f} psnr_undistorted={und["heldout_psnr"]:.2f} '
            f'psnr_ignored={ign["heldout_psnr"]:.2f} '
            f'median_cm_pinhole={ref["median_error_m"] * 100:.2f} '
            f'median_cm_undistorted={und["median_error_m"] * 100:.2f} '
            f'median_cm_ignored={ign["median_error_m"] * 100:.2f} '
            f'psnr_gap_undistorted={ref["heldout_psnr"] - und["heldout_psnr"]:.2f} '
            f'psnr_gap_ignored={ref["heldout_psnr"] - ign["heldout_psnr"]:.2f}')
    print(line)
    write_json(args.json, {'device': device_name(), 'seed': args.seed, 'steps': args.steps, 'lens': list(args.lens),
                           'K_lens': K_lens.tolist(), 'K_new': K_new.tolist(), 'results': results,
                           'seconds': time.perf_counter() - started})
    return 0
