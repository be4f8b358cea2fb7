"""``f3rm-ros bench semantic``: does a query find the right object, and say "not present" for a missing one.

Each seed lays out a synthetic table of its own (objects drawn and placed by the seed, `core.scenes`), scans
it, trains the product's model with the ``labels`` teacher and asks the product's `FieldQuerier`:

- for every object on the table by name: the answer's status, the best cluster's peak relevancy
  (`core.query.peak_relevancy`), the distance from the top cluster's centroid to the object's true centre
  (its bounding-box centre) in 3D and in the table plane, and *on the object*: the centroid inside the
  object's true box grown by 1 cm. A synthetic object's box is the axis-aligned box of its yawed mesh in
  ``base_frame`` (`SyntheticScene.objects`), so the object's yaw is already in it; a dataset object may add
  ``"yaw"`` (radians about base z) to give a box in its own frame instead. A present object answered
  ``not_present`` is a miss (no centroid: infinite error, not on the object);
- for every catalogue object (`core.scenes.CATALOGUE`) that is NOT on the table: whether the answer is
  ``not_present`` (``absent_correct``).

Grasps: for every present object answered ``found``, whether the planner returned at least one grasp for the
answer's object (cluster 0) that is collision-free: against the field's occupancy (no occupied voxel centre
inside a finger above the support, `GraspPlanner.collisions`) and against the truth (no finger point inside
another object's true box, none below a synthetic table's top; `grasp_clear`). ``grasped`` is the fraction of
FOUND answers with such a grasp; the per-object table gives it per object kind.

The last line is ``RESULT layouts=.. queries=.. within_2cm=.. within_5cm=.. on_object=.. absent=..
absent_correct=.. found=.. grasped=.. median_cm=.. worst_cm=..`` (fractions of the present-object queries,
``absent_correct`` of the absent ones, ``grasped`` of the found ones); above it the peak relevancy of present
and absent queries, the data ``query.present_relevancy`` is calibrated from (the bench uses the configured value).

With ``--data DIR`` a nerfstudio dataset made by any tool is scored the same way: it needs per-frame
``label_file_path`` maps, top-level ``labels`` ({"1": "mug", ...}) and ``objects`` ({"mug": {"center":
[x, y, z], "extent": [dx, dy, dz]}}; extent optional, without it on_object is not scored) in its world frame;
``workspace`` ({"min": [...], "max": [...]}) is optional (else estimated from depth). Absent queries are the
catalogue names the dataset does not label, or ``--absent`` names.

A machine without open3d (the GPU machine) cannot render the synthetic scans: ``--scenes DIR`` keeps rendered
scans there (rendered and saved where open3d exists, e.g. with ``--render-only``, read back elsewhere).
``--save-voxels DIR`` keeps each trained field's occupied voxels and features; ``--voxels FILE ...`` scores
such files again without training (a change to thresholds, clustering or the verdict, re-scored in seconds).

Seeds: the tests use 0, 3 and 7 (7 is the demo's table); the defaults, 11-15, are not used by any test.
Seeds 11-30 informed the query changes and the ``query.present_relevancy`` calibration; 31-50 were kept
aside for one final run (docs/performance.md).
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): torch, tqdm and the teacher, scene,
# config, dataset, training and query modules (yaml, cv2, nerfstudio; open3d, which a machine may lack).
import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np

from . import device_name, sync, write_json
from .semantic_scores import QueryScore, SceneRun, print_report, summary_rows

DEFAULT_SEEDS = (11, 12, 13, 14, 15)
ON_OBJECT_MARGIN_M = 0.01
# A Robotiq 2F-140-like opening: the synthetic mug is 8 cm wide, a Franka Hand opens 8 cm.
SYNTHETIC_MAX_OPENING_M = 0.14
# `core.scenes.CATALOGUE`'s names, for machines without open3d (scenes imports it); a test keeps them equal.
CATALOGUE_NAMES = ('mug', 'bowl', 'box', 'ball', 'bottle', 'can', 'screwdriver', 'banana')
# Top of `core.scenes.table`'s table (z of base_frame); fingers below it are in the table.
SYNTHETIC_TABLE_TOP_M = 0.0


def register(sub) -> None:
    """Add ``bench semantic``."""
    p = sub.add_parser('semantic', help='train synthetic layouts (or --data) with the labels teacher; score queries',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS),
                   help=f'synthetic layouts to generate (default: {" ".join(map(str, DEFAULT_SEEDS))})')
    p.add_argument('--objects', type=int, default=5, help='objects per synthetic table (default: 5)')
    p.add_argument('--data', type=Path, nargs='+', help='score these nerfstudio datasets instead of seeds')
    p.add_argument('--absent', nargs='*', help='names to ask for that are not in the scene (default: the '
                   'catalogue objects the scene lacks; give none to skip absent queries)')
    p.add_argument('--preset', default='cpu-tiny', help="config preset (default: cpu-tiny, the demo's)")
    p.add_argument('--config', action='append', type=Path,
                   help='YAML overlay on the preset (repeatable), e.g. model: {feature_weights: detached}')
    p.add_argument('--steps', type=int, default=500, help="training steps per scene (default: 500, the demo's)")
    p.add_argument('--views', type=int, default=48, help="views per synthetic scan (default: 48, the demo's)")
    p.add_argument('--width', type=int, default=160, help='synthetic image width (default: 160)')
    p.add_argument('--height', type=int, default=120, help='synthetic image height (default: 120)')
    p.add_argument('--downscale', type=int, default=1, help='--data images are shrunk by this factor')
    p.add_argument('--max-opening', type=float, default=SYNTHETIC_MAX_OPENING_M,
                   help='grasp.max_opening in m (default: 0.14, a Robotiq 2F-140: the synthetic mug is 8 cm wide)')
    p.add_argument('--device', default='auto', help='cpu | cuda | auto (default: auto)')
    p.add_argument('--scenes', type=Path, help='folder of rendered synthetic scans: read seed_N.npz from it '
                   'when there, else render (open3d) and save it there')
    p.add_argument('--render-only', action='store_true', help='render the seeds into --scenes and stop')
    p.add_argument('--save-voxels', type=Path, help="save each trained field's occupied voxels into this folder")
    p.add_argument('--voxels', type=Path, nargs='+', help='score saved voxel files (--save-voxels) instead of '
                   'training')
    p.add_argument('--json', help='also write the scores to this JSON file')
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------- ground truth

def on_object(centroid: Optional[np.ndarray], truth: Mapping, margin: float = ON_OBJECT_MARGIN_M) -> Optional[bool]:
    """Tell whether `centroid` lies inside the true box grown by `margin` (None: the truth has no extent).

    The box is ``center ± extent / 2`` along base axes, or along the object's own axes when the truth has a
    ``yaw`` (radians about base z). No centroid (nothing found) is not on the object.
    """
    if 'extent' not in truth:
        return None
    if centroid is None:
        return False
    offset = np.asarray(centroid, dtype=np.float64) - np.asarray(truth['center'], dtype=np.float64)
    yaw = float(truth.get('yaw', 0.0))
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([c * offset[0] + s * offset[1], -s * offset[0] + c * offset[1], offset[2]])
    return bool(np.all(np.abs(local) <= np.asarray(truth['extent'], dtype=np.float64) / 2 + margin + 1e-9))


def absent_names(objects: Mapping[str, Mapping], labels: Mapping[int, str],
                 explicit: Optional[Sequence[str]] = None) -> List[str]:
    """Names to ask for that the scene lacks: `explicit`, else the catalogue objects it does not label."""
    if explicit is not None:
        return list(explicit)
    from ..core.teachers.labels import normalize_name
    there = {normalize_name(n) for n in list(objects) + list(labels.values())}
    return [name for name in CATALOGUE_NAMES if normalize_name(name) not in there]


# ------------------------------------------------------------------------------------------------- scenes

def synthetic_scene(seed: int, num_objects: int, views: int, width: int, height: int,
                    cache: Optional[Path] = None):
    """(name, frames, labels, objects, workspace) of the seed's layout (from `cache` when it holds it)."""
    path = None if cache is None else Path(cache) / f'seed_{seed}_{num_objects}x{views}_{width}x{height}.npz'
    if path is not None and path.exists():
        return load_scene(path)
    from ..core.scenes.table import make_scene
    scene = make_scene(seed=seed, num_objects=num_objects, num_views=views, width=width, height=height)
    out = (f'seed {seed}', scene.frames, scene.labels, scene.objects, scene.workspace)
    if path is not None:
        save_scene(path, *out)
    return out


def save_scene(path: Path, name: str, frames, labels, objects, workspace) -> Path:
    """Write a scan and its ground truth to one compressed .npz (what `load_scene` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {'name': name, 'labels': {str(k): v for k, v in labels.items()},
            'objects': {n: {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in o.items()}
                        for n, o in objects.items()},
            'workspace': {'min_xyz': list(workspace.min_xyz), 'max_xyz': list(workspace.max_xyz),
                          'base_frame': workspace.base_frame},
            'frames': [{'stamp': f.stamp, 'name': f.name} for f in frames]}
    tmp = path.with_suffix('.tmp.npz')
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), image=np.stack([f.image for f in frames]),
                        depth=np.stack([f.depth for f in frames]), labels=np.stack([f.labels for f in frames]),
                        K=np.stack([f.K for f in frames]), T=np.stack([f.T_base_optical for f in frames]))
    tmp.replace(path)
    return path


def load_scene(path: Path):
    """Read a `save_scene` file: (name, frames, labels, objects, workspace)."""
    from ..core.config import WorkspaceConfig
    from ..core.capture.frames import PosedFrame
    with np.load(path) as data:
        meta = json.loads(str(data['meta']))
        arrays = {k: data[k] for k in ('image', 'depth', 'labels', 'K', 'T')}
    frames = [PosedFrame(image=arrays['image'][i], K=arrays['K'][i], T_base_optical=arrays['T'][i],
                         stamp=entry['stamp'], depth=arrays['depth'][i], labels=arrays['labels'][i],
                         name=entry['name'])
              for i, entry in enumerate(meta['frames'])]
    objects = {n: {k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v) for k, v in o.items()}
               for n, o in meta['objects'].items()}
    w = meta['workspace']
    workspace = WorkspaceConfig(min_xyz=tuple(w['min_xyz']), max_xyz=tuple(w['max_xyz']), base_frame=w['base_frame'])
    return meta['name'], frames, {int(k): v for k, v in meta['labels'].items()}, objects, workspace


def dataset_scene(root: Path, downscale: int = 1):
    """(name, frames, labels, objects, workspace) of a nerfstudio dataset with ground-truth metadata.

    Raises:
        ValueError: the dataset lacks ``labels``, ``objects`` or label maps, or names an object that has no
            label.
    """
    from ..core.config import WorkspaceConfig
    from ..core.capture.frames import dataset_workspace, read_dataset, read_metadata
    from ..core.training.offline import dataset_labels
    meta = read_metadata(root)
    labels = dataset_labels(meta)
    if not labels:
        raise ValueError(f'{root}: transforms.json has no "labels" ({{"1": "mug", ...}}): nothing to score')
    objects = meta.get('objects')
    if not objects:
        raise ValueError(f'{root}: transforms.json has no "objects" ({{"mug": {{"center": [x, y, z]}}}}): no '
                         f'ground truth to score against')
    unknown = sorted(set(objects) - set(labels.values()))
    if unknown:
        raise ValueError(f'{root}: objects {unknown} have no id in "labels" {labels}')
    missing_centre = sorted(name for name, obj in objects.items() if 'center' not in obj)
    if missing_centre:
        raise ValueError(f'{root}: objects {missing_centre} have no "center"')
    frames = read_dataset(root, downscale=downscale)
    unlabelled = [f.name for f in frames if f.labels is None]
    if unlabelled:
        raise ValueError(f'{root}: {len(unlabelled)} frame(s) have no label_file_path, e.g. {unlabelled[:3]}')
    lo, hi = dataset_workspace(meta, frames)
    workspace = WorkspaceConfig(min_xyz=tuple(map(float, lo)), max_xyz=tuple(map(float, hi)),
                                base_frame=str(meta.get('base_frame', 'base_link')))
    return str(root), frames, labels, objects, workspace


# ---------------------------------------------------------------------------------------------- scoring

def finger_points(planner, pose: np.ndarray, width: float, samples: int = 5) -> np.ndarray:
    """Points [N, 3] in base_frame filling both fingers of a grasp (the planner's `finger_boxes`)."""
    out = []
    for lo, hi in planner.finger_boxes(width):
        axes = [np.linspace(lo[i], hi[i], samples) for i in range(3)]
        local = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)
        out.append(local @ pose[:3, :3].T + pose[:3, 3])
    return np.concatenate(out)


def grasp_clear(planner, grasp, support_height: float, others: Sequence[Mapping],
                table_top: Optional[float], cluster=None) -> bool:
    """Tell whether a grasp is collision-free: the field's occupancy above the support, and the truth.

    Field: no occupied voxel centre above `support_height` inside a finger (but for the faint inside of the
    grasp's `cluster` that a rim grasp passes through, `GraspPlanner.haze_of`). Truth: no finger point inside any of
    `others`' boxes (`on_object` with no margin: the other objects' true boxes) and, with `table_top`, none
    below it.
    """
    haze = planner.haze_of(cluster, grasp.haze) if grasp.haze > 0 and cluster is not None else None
    if planner.collisions(grasp.pose, grasp.width, above=support_height, ignore=haze):
        return False
    points = finger_points(planner, grasp.pose, grasp.width)
    if table_top is not None and points[:, 2].min() < table_top - 1e-6:
        return False
    return not any(on_object(point, truth, margin=0.0) for truth in others if 'extent' in truth for point in points)


def score_queries(querier, scene_name: str, objects: Mapping[str, Mapping],
                  absent: Sequence[str] = (), table_top: Optional[float] = None) -> List[QueryScore]:
    """Ask `querier` for every object of `objects` (scored against its truth) and every name of `absent`.

    `table_top`: the true table top's height (synthetic scenes), which a grasp's fingers must stay above.
    """
    scores = []
    for query, present in [(name, True) for name in objects] + [(name, False) for name in absent]:
        result = querier.query(query)
        best = result.best if result.found else None
        values = result.heatmap.relevancy
        common = dict(scene=scene_name, query=query, present=present, status=result.status,
                      peak=float(result.peak), best_relevancy=float(values.max()) if values.size else float('nan'),
                      clusters=len(result.clusters), latency_s=result.timings['total'],
                      centroid=None if best is None else [float(v) for v in best.centroid], reason=result.reason)
        if not present:
            scores.append(QueryScore(error_m=float('nan'), error_xy_m=float('nan'), on_object=None, truth=None,
                                     **common))
            continue
        truth = objects[query]
        centre = np.asarray(truth['center'], dtype=np.float64)
        grasping = {}
        if best is None:
            error = error_xy = float('inf')
        else:
            error = float(np.linalg.norm(best.centroid - centre))
            error_xy = float(np.linalg.norm(best.centroid[:2] - centre[:2]))
            planner = querier.grasp_planner
            mine = [g for g in result.grasps if g.cluster_index == 0]
            support = planner.support(best)
            others = [o for name, o in objects.items() if name != query]
            grasping = dict(grasps=len(mine), grasped=any(grasp_clear(planner, g, support.height, others, table_top,
                                                                      best) for g in mine),
                            grasp=(f'{mine[0].approach} {mine[0].width * 100:.1f} cm' if mine
                                   else (result.grasp_reasons[0] if result.grasp_reasons else 'no grasp')))
        scores.append(QueryScore(error_m=error, error_xy_m=error_xy,
                                 on_object=on_object(None if best is None else best.centroid, truth),
                                 truth=[float(v) for v in centre], **grasping, **common))
    return scores


def train_scene(name: str, frames, labels: Mapping[int, str], workspace, config, steps: int,
                progress: bool = True):
    """Train on `frames` with the labels teacher: (trainer, teacher, config copy, train seconds, held-out PSNR)."""
    from tqdm import tqdm

    from ..core.capture.frames import FrameStore
    from ..core.teachers import choose_teacher
    from ..core.training.trainer import OnlineTrainer

    config = copy.deepcopy(config)
    config.workspace = workspace
    config.trainer.steps = steps
    teacher, _ = choose_teacher(config, labels, 'labels')
    store = FrameStore(max(config.trainer.capacity, len(frames)))
    for frame in frames:
        store.add(frame)
    trainer = OnlineTrainer(config, store, teacher)
    trainer.sync_frames()
    started = time.perf_counter()
    for _ in tqdm(range(steps), desc=f'{name}: training', disable=not progress, unit='step', leave=False):
        trainer.step()
    sync()
    train_s = time.perf_counter() - started
    heldout = trainer.evaluate()['psnr'] if trainer.eval_indices else float('nan')
    return trainer, teacher, config, train_s, float(heldout)


def score_scene(name: str, frames, labels: Mapping[int, str], objects: Mapping[str, Mapping],
                workspace, config, steps: int, progress: bool = True, absent: Sequence[str] = (),
                save_voxels: Optional[Path] = None, table_top: Optional[float] = None):
    """Train on `frames` with the labels teacher, query every object of `objects` and every name of `absent`.

    Args:
        name: scene name for the tables.
        frames: the PosedFrames of the scan (with label maps).
        labels: {object id: name} of the label maps.
        objects: {name: {'center': [x, y, z], 'extent': [dx, dy, dz] (optional), ...}} ground truth in the
            frames' world frame.
        workspace: `WorkspaceConfig` of the scene.
        config: `F3RMConfig`; a copy of it is trained (its workspace and feature width are set here).
        steps: training steps.
        progress: show a progress bar.
        absent: names that are not in the scene (each should be answered not_present).
        save_voxels: folder to keep the trained field's voxels in (`save_voxel_file`), or None.
        table_top: the true table top's height, which grasps' fingers must stay above (None: not checked).

    Returns:
        (SceneRun, [QueryScore, ...]).
    """
    import torch

    from ..core.query.answer import FieldQuerier

    trainer, teacher, config, train_s, heldout = train_scene(name, frames, labels, workspace, config, steps,
                                                             progress)
    querier = FieldQuerier(trainer.model, teacher, config, lock=trainer.lock, keyframes=trainer.store.snapshot)
    field_s = querier.prepare()
    scores = score_queries(querier, name, objects, absent, table_top)
    run = SceneRun(scene=name, objects=list(objects), absent=list(absent), frames=len(frames), steps=steps,
                   train_s=train_s, heldout_psnr=heldout, field_s=field_s,
                   occupied_voxels=querier.voxels.num_occupied, grid_voxels=querier.voxels.num_voxels)
    if save_voxels is not None:
        save_voxel_file(Path(save_voxels) / f'{_slug(name)}.npz', querier, run, objects)
    del trainer, querier
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return run, scores


def _slug(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in name).strip('_') or 'scene'


def save_voxel_file(path: Path, querier, run: SceneRun, objects: Mapping[str, Mapping]) -> Path:
    """Keep a prepared querier's voxels (points, grid coordinates, features, alpha, colour, solid occupancy)."""
    v = querier.voxels
    meta = {'run': asdict(run), 'teacher': querier.teacher.state(),
            'objects': {n: {k: (np.asarray(x).tolist() if isinstance(x, np.ndarray) else x) for k, x in o.items()}
                        for n, o in objects.items()},
            'workspace': {'min_xyz': list(querier.config.workspace.min_xyz),
                          'max_xyz': list(querier.config.workspace.max_xyz),
                          'base_frame': querier.config.workspace.base_frame},
            'voxel_size': querier.config.query.voxel_size, 'alpha_threshold': querier.config.query.alpha_threshold}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), points=v.points, coords=v.coords,
                        features=v.features.float().cpu().numpy(), alpha=v.alpha, rgb=v.rgb,
                        occupancy=np.packbits(v.occupancy.grid.ravel()),
                        occupancy_shape=np.array(v.occupancy.grid.shape),
                        origin=v.occupancy.origin)
    return path


def load_voxel_querier(path: Path, config):
    """(querier, SceneRun, objects) of a `save_voxel_file` file: a `FieldQuerier` with no model, its voxels cached.

    `config` gives the query and grasp settings (its workspace, voxel size and feature width come from the file).
    """
    import torch

    from ..core.config import WorkspaceConfig
    from ..core.query.grasps import Occupancy
    from ..core.query.answer import FieldQuerier
    from ..core.teachers import make_teacher
    with np.load(path) as data:
        meta = json.loads(str(data['meta']))
        arrays = {k: data[k] for k in data.files if k != 'meta'}
    config = copy.deepcopy(config)
    w = meta['workspace']
    config.workspace = WorkspaceConfig(min_xyz=tuple(w['min_xyz']), max_xyz=tuple(w['max_xyz']),
                                       base_frame=w['base_frame'])
    config.query.voxel_size = float(meta['voxel_size'])
    teacher = make_teacher(config.teacher, state=meta['teacher'])
    config.feature_field.feature_dim = teacher.dim
    querier = FieldQuerier(None, teacher, config)
    v = querier.voxels
    shape = tuple(int(s) for s in arrays['occupancy_shape'])
    grid = np.unpackbits(arrays['occupancy'], count=int(np.prod(shape))).astype(bool).reshape(shape)
    v.points, v.alpha, v.rgb, v.coords = arrays['points'], arrays['alpha'], arrays['rgb'], arrays['coords']
    opacity = np.zeros(shape, np.float32)          # the saved voxels are every occupied one: their opacity
    opacity[tuple(v.coords.T)] = v.alpha
    v.occupancy = Occupancy(grid, arrays['origin'], config.query.voxel_size, opacity)
    v.features = torch.from_numpy(arrays['features'])
    v.device_coords = torch.from_numpy(v.coords)
    run = SceneRun(**meta['run'])
    objects = {n: {k: (np.asarray(x, dtype=np.float64) if isinstance(x, list) else x) for k, x in o.items()}
               for n, o in meta['objects'].items()}
    return querier, run, objects


def run(args) -> int:
    """Score every scene and print the tables."""
    import torch

    from ..core.config import make_config
    from ..core.query.answer import present_relevancy
    overrides = {'trainer': {'device': args.device}, 'grasp': {'max_opening': args.max_opening}}
    config = make_config(args.preset, args.config or [], overrides=overrides)
    if args.render_only:
        if not args.scenes:
            raise SystemExit('--render-only needs --scenes DIR')
        for seed in args.seeds:
            synthetic_scene(seed, args.objects, args.views, args.width, args.height, args.scenes)
        print(f'[bench] rendered seeds {" ".join(map(str, args.seeds))} into {args.scenes}')
        return 0
    torch.manual_seed(0)
    table_top = None if args.data else SYNTHETIC_TABLE_TOP_M        # saved voxels come from synthetic seeds too
    runs: List[SceneRun] = []
    scores: List[QueryScore] = []
    if args.voxels:
        print(f'[bench] semantic: re-scoring {len(args.voxels)} saved field(s), preset {args.preset} query '
              f'settings, {device_name()}', flush=True)
        for path in args.voxels:
            querier, scene_run, objects = load_voxel_querier(path, config)
            absent = absent_names(objects, {}, args.absent) if args.absent is not None else scene_run.absent
            scene_run.absent = list(absent)
            runs.append(scene_run)
            scores.extend(score_queries(querier, scene_run.scene, objects, absent, table_top))
    else:
        print(f'[bench] semantic: preset {args.preset}, {args.steps} steps, labels teacher, grasp.max_opening '
              f'{args.max_opening} m, {device_name()}', flush=True)
        if args.data:
            sources = [lambda root=root: dataset_scene(root, args.downscale) for root in args.data]
        else:
            sources = [lambda seed=seed: synthetic_scene(seed, args.objects, args.views, args.width, args.height,
                                                         args.scenes) for seed in args.seeds]
        for source in sources:
            name, frames, labels, objects, workspace = source()
            absent = absent_names(objects, labels, args.absent)
            print(f'[bench] {name}: {len(frames)} frames, objects {", ".join(objects)}; absent '
                  f'{", ".join(absent) or "-"}', flush=True)
            scene_run, scene_scores = score_scene(name, frames, labels, objects, workspace, config, args.steps,
                                                  absent=absent, save_voxels=args.save_voxels, table_top=table_top)
            runs.append(scene_run)
            scores.extend(scene_scores)
            mine = summary_rows(scene_scores)
            print(f'[bench] {name}: trained in {scene_run.train_s:.1f} s, within 2 cm {mine["within_2cm"]:.0%}, '
                  f'on object {mine["on_object"]:.0%}, absent correct {mine["absent_correct"]:.0%}', flush=True)
    bound = present_relevancy(config.query, 'labels')                 # the bench distils the labels teacher
    report = print_report(runs, scores, bound)
    write_json(args.json, {'device': device_name(), 'preset': args.preset, 'steps': args.steps,
                           'present_relevancy': bound, **report,
                           'scenes': [asdict(r) for r in runs], 'queries': [asdict(s) for s in scores]})
    return 0
