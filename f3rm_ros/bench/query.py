"""``f3rm-ros bench query``: text -> relevancy over F3RM's 220k-voxel grid -> PointCloud2 bytes, per stage.

The grid is F3RM's default workspace, 70 x 90 x 35 cm at 1 cm (220,500 voxels), centred on the model's
workspace. Every query runs the product's `FieldQuerier` and then packs the heatmap as the query node does:

- ``text``: the teacher's text encoder (CLIP of the preset, random weights: the cost is the same);
- ``field``: density over the whole grid, then features and colour of the occupied voxels (a *cold* query:
  the model changed since the last one; a *warm* query reuses the cached voxels and skips this);
- ``relevancy``: pairwise softmax against the negatives, and the threshold;
- ``cluster``: DBSCAN of the relevant voxels, boxes and grasp candidates;
- ``pack``: the PointCloud2 (x, y, z, rgb, similarity) message, or its bytes where ROS is not installed.

Without ``--checkpoint`` the model is untrained: its alpha threshold is set so that ``--occupied`` of the
voxels are kept (a trained table keeps a few per cent to a quarter), and the clustering then sees scattered
random relevancy, which makes that stage an upper bound.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from . import device_name, format_table, sync, write_json

GRID_SIZE_M = (0.70, 0.90, 0.35)
STAGES = ('text', 'field', 'relevancy', 'cluster', 'pack')
QUERIES = ('mug', 'screwdriver handle', 'bowl', 'green ball', 'bottle', 'banana', 'can', 'cereal box')


def register(sub) -> None:
    """Add ``bench query``."""
    p = sub.add_parser('query', help='text -> 220k-voxel relevancy -> PointCloud2: time per stage',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', type=Path, help='a trained checkpoint (default: an untrained model)')
    p.add_argument('--preset', default='gpu', help='preset of the untrained model (default: gpu, 768-d CLIP)')
    p.add_argument('--occupied', type=float, default=0.15,
                   help='fraction of voxels an untrained model keeps (default: 0.15)')
    p.add_argument('--queries', type=int, default=50, help='timed queries of each kind (default: 50)')
    p.add_argument('--device', default='auto', help='cpu | cuda | auto (default: auto)')
    p.add_argument('--json', help='also write the timings to this JSON file')
    p.set_defaults(func=run)


def _packer():
    """Return the query node's heatmap packing: the PointCloud2 message, or without ROS the same point bytes."""
    try:
        from ..ros.conversions import make_point_cloud2
    except ImportError:
        from ..core.cloud import pack_cloud_points
        return lambda heatmap, frame_id: pack_cloud_points(heatmap.points, heatmap.rgb, heatmap.relevancy).tobytes()
    return lambda heatmap, frame_id: make_point_cloud2(heatmap.points, heatmap.rgb, heatmap.relevancy, frame_id, 0.0)


def _model_and_teacher(args):
    """(model, teacher, config) from --checkpoint or an untrained model of --preset."""
    import torch

    from ..core.config import WorkspaceConfig, make_config
    from ..core.teachers import make_teacher
    from ..core.trainer import load_model, pick_device
    device = pick_device(args.device)
    if args.checkpoint:
        model, config, extra = load_model(args.checkpoint, str(device))
        teacher = make_teacher(config.teacher, state=extra.get('teacher'))
    else:
        from ..core.model import build_model
        config = make_config(args.preset, overrides={'teacher': {'pretrained': '', 'device': str(device)}})
        # a labels-teacher preset gets the query phrases as its vocabulary
        teacher = make_teacher(config.teacher, labels=dict(enumerate(QUERIES, start=1)))
        config.feature_field.feature_dim = teacher.dim
        torch.manual_seed(0)
        model = build_model(config, 8).to(device).eval()
        if device.type == 'cuda':
            from ..core.fast import accelerate
            accelerate(model)
    centre = (np.asarray(config.workspace.min_xyz) + np.asarray(config.workspace.max_xyz)) / 2
    half = np.asarray(GRID_SIZE_M) / 2
    config.workspace = WorkspaceConfig(min_xyz=tuple(centre - half), max_xyz=tuple(centre + half - 1e-6),
                                       base_frame=config.workspace.base_frame)
    config.query.voxel_size = 0.01
    return model, teacher, config


def _keep_fraction(querier, fraction: float) -> None:
    """Set the alpha threshold so that `fraction` of the grid's voxels pass it (untrained models)."""
    alpha = querier.grid_alpha()
    querier.config.query.alpha_threshold = float(np.quantile(alpha, 1.0 - fraction))
    querier.min_component_volume = 0.0


def _can_cluster() -> bool:
    try:
        import open3d  # noqa: F401
    except ImportError:
        return False
    return True


def _timed_queries(querier, count: int, cold: bool, frame_id: str) -> List[Dict[str, float]]:
    rows = []
    cluster = _can_cluster()
    pack = _packer()
    for index in range(count):
        if cold:
            querier.invalidate()
        result = querier.query(QUERIES[index % len(QUERIES)], cluster=cluster)
        started = time.perf_counter()
        pack(result.heatmap, frame_id)
        timings = dict(result.timings)
        if cold:
            timings.update({f'field: {k}': v for k, v in querier.prepare_timings.items()})
        timings['pack'] = time.perf_counter() - started
        timings['heatmap'] = timings['text'] + timings['field'] + timings['relevancy'] + timings['pack']
        timings['total'] = timings['heatmap'] + timings['cluster']
        timings['points'] = len(result.heatmap)
        rows.append(timings)
    return rows


def run(args) -> int:
    """Time cold and warm queries; print medians per stage."""
    from ..core.query import FieldQuerier
    model, teacher, config = _model_and_teacher(args)
    querier = FieldQuerier(model, teacher, config)
    if not args.checkpoint:
        _keep_fraction(querier, args.occupied)
    frame_id = config.workspace.base_frame
    for _ in range(3):   # warm-up: kernels, allocator, caches
        querier.invalidate()
        querier.query(QUERIES[0], cluster=_can_cluster())
    sync()
    results = {'cold': _timed_queries(querier, args.queries, True, frame_id),
               'warm': _timed_queries(querier, args.queries, False, frame_id)}
    source = str(args.checkpoint) if args.checkpoint else f'untrained {args.preset} preset'
    print(f'[bench] query: {device_name()}; {source}; grid {querier.grid_shape} = {querier.num_voxels} voxels; '
          f'feature dim {config.feature_field.feature_dim}; {results["cold"][0]["points"]} occupied voxels; '
          f'median of {args.queries} queries')
    rows = [['query'] + [f'{s} (ms)' for s in STAGES] + ['text -> PointCloud2 (ms)', 'with clusters (ms)']]
    for kind, timings in results.items():
        def median(key):
            return statistics.median(t[key] for t in timings) * 1000
        rows.append([f'{kind} ({"field evaluated" if kind == "cold" else "voxels cached"})']
                    + [f'{median(s):.1f}' for s in STAGES] + [f'{median("heatmap"):.1f}', f'{median("total"):.1f}'])
    print(format_table(rows))
    cold = results['cold']
    if not _can_cluster():
        print('cluster: not timed, open3d is not installed here (a CPU stage: see a CPU run)')
    parts = [key for key in cold[0] if key.startswith('field: ')]
    print('cold field evaluation: ' + ', '.join(
        f'{key[7:]} {statistics.median(t[key] for t in cold) * 1000:.1f} ms' for key in parts))
    print('RESULT ' + ' '.join(f'{kind}_heatmap_ms={statistics.median(t["heatmap"] for t in timings) * 1000:.1f}'
                               for kind, timings in results.items()))
    write_json(args.json, {'device': device_name(), 'source': source, 'voxels': querier.num_voxels,
                           'occupied': results['cold'][0]['points'], 'timings': results})
    return 0
