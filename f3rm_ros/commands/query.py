"""``f3rm-ros query``: ask a trained checkpoint where something is; write pictures, a PLY and the clusters."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): torch and the config, study,
# query, teacher and training modules (yaml, torch, nerfstudio, open3d).
import argparse
import json
from pathlib import Path

import numpy as np


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser(
        'query', help='text query on a checkpoint: heatmap PLY, similarity and PCA pictures, clusters',
        description='Evaluate the field of a checkpoint over its workspace and answer a text query: prints the '
                    'clusters (best first) and the timings, and writes similarity.png (rendered view | '
                    'similarity overlay), feature_pca.png, heatmap.ply and clusters.json to --output.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint file (e.g. outputs/train/checkpoints/latest.ckpt)')
    parser.add_argument('--text', required=True, help='comma-separated positive phrases, e.g. "mug, coffee cup"')
    parser.add_argument('--output', default='outputs/query', help='output folder')
    parser.add_argument('--data', help='nerfstudio dataset: render the pictures from one of its keyframes '
                                       '(default: a view of the workspace from behind and above)')
    parser.add_argument('--frame', type=int, help='keyframe index in --data (default: the middle one)')
    parser.add_argument('--width', type=int, default=320, help='width of the rendered pictures (pixels)')
    parser.add_argument('--negatives', help='comma-separated negatives (default: from the checkpoint config); '
                                            '"" for none, which gives plain cosine similarity')
    parser.add_argument('--threshold', choices=['otsu', 'percentile'], help='relevancy threshold method')
    parser.add_argument('--percentile', type=float, help='percentile for --threshold percentile')
    parser.add_argument('--alpha-threshold', type=float, help='voxel opacity a point must reach to be kept')
    parser.add_argument('--voxel-size', type=float, help='heatmap voxel size in metres')
    parser.add_argument('--crop', help='cut-away box xmin,ymin,zmin,xmax,ymax,zmax (m): only voxels inside it are '
                                       'queried and the pictures show only what is inside (query.crop_min_xyz / '
                                       'crop_max_xyz)')
    parser.add_argument('--surface-only', action='store_true', help='keep only the outer shell of occupied voxels')
    parser.add_argument('--color', choices=['relevancy', 'rgb'], default='relevancy', help='PLY point colours')
    parser.add_argument('--config', action='append', help='YAML overlay (repeatable; any shape train reads, e.g. '
                                                          'config/f3rm.yaml): its query and grasp settings apply, '
                                                          "the rest is the checkpoint's")
    parser.add_argument('--clip-weights', help='local open_clip weights file (for a checkpoint of the clip teacher)')
    parser.add_argument('--device', default='auto', help='cpu | cuda | auto')
    parser.set_defaults(func=run)


def query_config(config, args):
    """Return the checkpoint's config with --config overlays and the command-line query options applied."""
    from ..core.config import apply_yaml_files, from_dict, to_dict
    # the same overlay path as train and the nodes; only what does not change the trained field applies
    overlaid = to_dict(apply_yaml_files(config, [Path(p) for p in args.config or []]))
    data = to_dict(config)
    data['query'], data['grasp'] = overlaid['query'], overlaid['grasp']
    query = data['query']
    if args.negatives is not None:
        query['negatives'] = [n.strip() for n in args.negatives.split(',') if n.strip()]
        if not query['negatives']:
            query['mode'] = 'cosine'  # no negatives: plain cosine similarity
    for name in ('threshold', 'percentile', 'alpha_threshold', 'voxel_size'):
        if getattr(args, name) is not None:
            query[name] = getattr(args, name)
    if args.crop:
        from ..core.study.orbit import parse_box
        query['crop_min_xyz'], query['crop_max_xyz'] = (v.tolist() for v in parse_box(args.crop))
    if args.clip_weights:
        if not Path(args.clip_weights).is_file():
            raise FileNotFoundError(f'--clip-weights: {args.clip_weights} is not a file')
        data['teacher']['pretrained'] = str(Path(args.clip_weights).resolve())
    if args.device != 'auto':
        data['teacher']['device'] = args.device
    return from_dict(data)


def _view(args, box):
    """Return the PosedFrame to render: a keyframe of --data scaled to --width, or the default workspace view."""
    from ..core.capture.frames import PosedFrame, read_dataset
    from ..core.study.views import default_view
    if not args.data:
        return default_view(box, args.width, max(1, round(args.width * 3 / 4)))
    frames = read_dataset(Path(args.data))
    if not frames:
        raise ValueError(f'{args.data} has no frames')
    index = len(frames) // 2 if args.frame is None else args.frame
    if not 0 <= index < len(frames):
        raise ValueError(f'--frame {index} is out of range: {args.data} has {len(frames)} frames')
    frame = frames[index]
    scale = args.width / frame.width
    height = max(1, round(frame.height * scale))
    K = frame.K.copy()
    K[0] *= scale
    K[1] *= height / frame.height
    return PosedFrame(np.zeros((height, args.width, 3), np.uint8), K, frame.T_base_optical, name=frame.name)


def write_head_features(path: Path, model, box, heatmap, head: str, chunk: int = 65536) -> Path:
    """Write the heatmap's points with the features of head `head` there, for matching (e.g. with DINO).

    ``.npz``: points [N, 3] base_frame metres, features [N, D] float16, relevancy [N], and normals [N, 3] when the
    model predicts them.
    """
    import torch
    device = next(model.parameters()).device
    field = torch.from_numpy(box.to_field(np.asarray(heatmap.points, np.float32)).astype(np.float32)).to(device)
    parts = [model.features_at(field[i:i + chunk], head=head).half().cpu() for i in range(0, len(field), chunk)]
    width = dict(model.feature_heads)[f'feature_{head}']
    features = torch.cat(parts).numpy() if parts else np.zeros((0, width), np.float16)
    extra = {} if heatmap.normals is None else {'normals': heatmap.normals}
    np.savez(path, points=np.asarray(heatmap.points, np.float32), features=features,
             relevancy=np.asarray(heatmap.relevancy, np.float32), **extra)
    return path


def run(args) -> int:
    """Answer the query, print clusters and timings, write the pictures, the PLY and clusters.json."""
    from ..core.study.orbit import cropped
    from ..core.query.answer import FieldQuerier, write_heatmap_ply
    from ..core.study.views import cluster_table, feature_pca_image, grasp_table, render_view, similarity_overlay
    from ..core.training.render import save_png, side_by_side
    from ..core.teachers import make_teacher
    from ..core.training.trainer import load_model
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'--checkpoint: {checkpoint} does not exist')
    model, config, state = load_model(checkpoint, args.device)
    config = query_config(config, args)
    teacher = make_teacher(config.teacher, state=state['teacher']['state'])
    querier = FieldQuerier(model, teacher, config, surface_only=args.surface_only)
    result = querier.query(args.text)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    view_frame = _view(args, querier.box)
    text_query, _, _ = querier.embed(args.text)
    with cropped(model, querier.box, *(config.query.crop or (None, None))):
        view = render_view(model, view_frame, query=text_query, box=querier.box)
    paths = {
        'similarity': save_png(out / 'similarity.png',
                               side_by_side(view['rgb'], similarity_overlay(view, text_query, config.query.colormap))),
        'feature_pca': save_png(out / 'feature_pca.png', feature_pca_image(view)),
        'heatmap': write_heatmap_ply(out / 'heatmap.ply', result.heatmap, args.color, config.query.colormap),
    }
    summary = {'checkpoint': str(checkpoint), 'step': state.get('step'), 'text': result.text,
               'positives': result.positives, 'negatives': result.negatives, 'threshold': result.threshold,
               'points': len(result.heatmap), 'selected': int(result.heatmap.selected.sum()),
               'grid': list(querier.voxels.grid_shape), 'timings': result.timings,
               'status': result.status, 'reason': result.reason,
               'clusters': [c.as_dict() for c in result.clusters], 'grasps': [g.as_dict() for g in result.grasps],
               'grasp_reasons': result.grasp_reasons}
    paths['clusters'] = out / 'clusters.json'
    paths['clusters'].write_text(json.dumps(summary, indent=1))
    for name, _ in getattr(model, 'feature_heads', [])[1:]:   # clip+dino ...: the other heads' per-voxel features
        head = name[len('feature_'):]
        paths[f'{head}_features'] = write_head_features(out / f'heatmap_{head}.npz', model, querier.box,
                                                        result.heatmap, head)

    print(f'query: {result.positives} vs negatives {result.negatives}')
    grid = 'x'.join(map(str, querier.voxels.grid_shape))
    print(f'{result.status}: {result.reason}')
    print(f'grid {grid} ({querier.voxels.num_voxels} voxels): {len(result.heatmap)} occupied, '
          f'{int(result.heatmap.selected.sum())} above threshold {result.threshold:.3f}')
    print(cluster_table(result.clusters))
    print(grasp_table(result.grasps, result.grasp_reasons))
    print('timings: ' + '  '.join(f'{name} {seconds * 1000:.0f} ms' for name, seconds in result.timings.items()))
    for name, path in paths.items():
        print(f'{name}: {path}')
    return 0
