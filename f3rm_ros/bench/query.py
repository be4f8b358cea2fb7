"""``f3rm-ros bench query``: what a planner waits for, text -> answer -> PointCloud2 bytes, on a trained field.

The field is trained here on one synthetic layout with bench semantic's recipe (``cpu-tiny``, labels teacher,
48 views of 160x120, 500 steps) or loaded from ``--checkpoint``. The grid is the model's workspace at
``query.voxel_size``. Every query runs the product's `FieldQuerier` as the query node does (surface voxels only,
the node's default) and then packs the heatmap as the query node's PointCloud2 does (`core.cloud
.pack_cloud_points`, the finite check and the byte copy of ``make_point_cloud2``, without ROS). Stages:

- ``text``: phrase embeddings (cached per phrase: the first ask of a phrase pays the text tower, see below);
- ``density``, ``occupancy``, ``features``: the voxel cache, only on a *cold* query (the model changed since the
  last one: density over the whole grid; alpha threshold and speck removal; features and colour of the
  occupied voxels); a *warm* query reuses them;
- ``relevancy``, ``threshold``, ``cluster``, ``grasps``: relevancy of the occupied voxels, Otsu, connected
  components and boxes, gripper candidates checked against the occupancy;
- ``pack``: the heatmap's PointCloud2 data;
- ``total``: wall clock from the call to the packed bytes (the GPU synchronised before and after).

Queries cycle through the layout's objects (each answered 'found'); medians of ``--queries`` of each kind.
``--clip-text MODEL`` also times an open_clip text tower (random weights: the cost is the same) on a phrase
never asked before: what a CLIP-distilled field adds to the first query of a phrase.

``--node`` measures what a planner's client waits for instead: the query node (ROS, in this process, three
callback threads as ``query_node`` runs) answers ``~/locate`` from the field saved as a checkpoint, pictures on
as it ships (``similarity_image: true``), and one client calls the service back to back, ``--queries`` times. Per
call: the client's wait (request sent -> response decoded) and the node's own ``total`` from the answer's timings
(the core's query and the messages). The line ``RESULT node ...`` gives both, median and worst, and the
difference (the client's wait beyond the answer's making: DDS, executor, and anything else holding the answer
back, such as a picture), and how many pictures were drawn or dropped for a newer question.
"""
from __future__ import annotations

# Imported where used (`f3rm-ros` imports every bench module at start-up, which must not load them): torch, rclpy,
# f3rm_ros_interfaces, the config, teacher, trainer, query and query-node modules (yaml, nerfstudio), core.query.cloud
# and harness.testing.
import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from . import device_name, format_table, sync, write_json
from .semantic import synthetic_scene, train_scene

STAGES = ('text', 'density', 'occupancy', 'features', 'relevancy', 'threshold', 'cluster', 'grasps', 'pack')
DEFAULT_SEED = 11
GOALS_MS = {'cold': 10.0, 'warm': 3.0}   # what a planner may wait on a GPU


def register(sub) -> None:
    """Add ``bench query``."""
    p = sub.add_parser('query', help='text -> answer, clusters, grasps -> PointCloud2 on a trained field: time '
                       'per stage, cold and warm', description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', type=Path, help='a trained checkpoint (default: train one synthetic layout)')
    p.add_argument('--seed', type=int, default=DEFAULT_SEED, help=f'layout to train (default: {DEFAULT_SEED})')
    p.add_argument('--objects', type=int, default=5, help='objects on the table (default: 5)')
    p.add_argument('--steps', type=int, default=500, help='training steps (default: 500, bench semantic)')
    p.add_argument('--views', type=int, default=48, help='views of the scan (default: 48)')
    p.add_argument('--width', type=int, default=160, help='image width (default: 160)')
    p.add_argument('--height', type=int, default=120, help='image height (default: 120)')
    p.add_argument('--preset', default='cpu-tiny', help='preset of the trained field (default: cpu-tiny)')
    p.add_argument('--scenes', type=Path, help='folder of rendered scans (bench semantic --scenes)')
    p.add_argument('--save-checkpoint', type=Path, help='keep the trained field as this checkpoint')
    p.add_argument('--max-opening', type=float, default=0.14,
                   help='grasp.max_opening in m (default: 0.14, a Robotiq 2F-140: the synthetic mug is 8 cm wide)')
    p.add_argument('--solid', action='store_true', help='publish every occupied voxel (the node default, '
                   'surface_only, keeps a shell)')
    p.add_argument('--queries', type=int, default=50, help='timed queries of each kind (default: 50)')
    p.add_argument('--clip-text', metavar='MODEL', help='also time this open_clip text tower on new phrases '
                   '(random weights), e.g. ViT-L-14-336-quickgelu')
    p.add_argument('--device', default='auto', help='cpu | cuda | auto (default: auto)')
    p.add_argument('--node', action='store_true', help="time the query node's service as a client waits for it "
                   '(ROS in this process, pictures on) instead of the core')
    p.add_argument('--no-pictures', action='store_true', help='with --node: similarity_image false')
    p.add_argument('--json', help='also write the timings to this JSON file')
    p.set_defaults(func=run)


def pack_heatmap(heatmap) -> np.ndarray:
    """Return the query node's PointCloud2 data without ROS: packed points, the finite check, one byte copy."""
    from ..core.query.cloud import pack_cloud_points
    points = pack_cloud_points(heatmap.points, heatmap.rgb, heatmap.relevancy)
    bool(np.isfinite(points[:, :3]).all())                      # msg.is_dense
    return np.ascontiguousarray(points).reshape(-1).view(np.uint8).copy()   # msg.data


def _trained_field(args):
    """(model, teacher, config, phrases, source description): --checkpoint, or one layout trained here."""
    from ..core.config import make_config
    from ..core.teachers import make_teacher
    from ..core.training.trainer import load_model
    if args.checkpoint:
        model, config, state = load_model(args.checkpoint, args.device)
        teacher = make_teacher(config.teacher, state=state['teacher']['state'])
        phrases = [name for name in getattr(teacher, 'vocabulary', []) if name not in ('background', 'table')]
        config.grasp.max_opening = args.max_opening
        return model, teacher, config, phrases or ['mug'], f'{args.checkpoint} (step {state.get("step")})'
    config = make_config(args.preset, overrides={'trainer': {'device': args.device},
                                                 'grasp': {'max_opening': args.max_opening}})
    name, frames, labels, objects, workspace = synthetic_scene(args.seed, args.objects, args.views, args.width,
                                                               args.height, args.scenes)
    trainer, teacher, config, train_s, psnr = train_scene(name, frames, labels, workspace, config, args.steps)
    print(f'[bench] {name}: trained {args.steps} steps in {train_s:.1f} s, held-out PSNR {psnr:.1f} dB', flush=True)
    if args.save_checkpoint:
        trainer.save_checkpoint(args.save_checkpoint)
    model = trainer.model.eval()
    return model, teacher, config, list(objects), f'{name} trained here ({args.preset}, {args.steps} steps)'


def timed_queries(querier, phrases: Sequence[str], count: int, cold: bool) -> List[Dict[str, float]]:
    """`count` queries cycling through `phrases`, the voxel cache dropped before each when `cold`; seconds per stage."""
    rows = []
    for index in range(count):
        if cold:
            querier.invalidate()
        sync()
        started = time.perf_counter()
        result = querier.query(phrases[index % len(phrases)])
        mark = time.perf_counter()
        pack_heatmap(result.heatmap)
        timings = dict(result.timings)
        timings['pack'] = time.perf_counter() - mark
        sync()
        timings['total'] = time.perf_counter() - started
        timings['points'] = len(result.heatmap)
        timings['clusters'] = len(result.clusters)
        timings['grasp_candidates'] = len(result.grasps)
        timings['found'] = float(result.found)
        rows.append(timings)
    return rows


def first_text_times(querier, count: int = 10) -> List[float]:
    """Seconds to embed a phrase never asked before (the negatives' embeddings cached, as in a running node)."""
    out = []
    for index in range(count):
        started = time.perf_counter()
        querier.embed(f'object number {index} never asked')
        out.append(time.perf_counter() - started)
    return out


def clip_text_times(model_name: str, device: str, count: int = 10) -> List[float]:
    """One new phrase through an open_clip text tower (random weights), seconds each."""
    from ..core.teachers.clip import ClipTeacher
    teacher = ClipTeacher(model_name=model_name, pretrained='', device=device)
    teacher.encode_text(['warm up'])
    out = []
    for index in range(count):
        sync()
        started = time.perf_counter()
        teacher.encode_text([f'a phrase never seen {index}'])
        sync()
        out.append(time.perf_counter() - started)
    return out


def median_ms(rows: Sequence[Dict[str, float]], key: str) -> float:
    """Median of a stage over rows, in ms."""
    return statistics.median(r[key] for r in rows) * 1000


def node_times(checkpoint: Path, phrases: Sequence[str], count: int, pictures: bool, device: str,
               warmup: int = 3) -> Dict:
    """Call a query node's ``~/locate`` back to back: per call the client's wait and the answer's 'total' (s).

    The node answers from `checkpoint` with ``similarity_image`` = `pictures`; `warmup` calls (the checkpoint's
    load, the first cold evaluation) are made first and not counted.
    """
    from f3rm_ros_interfaces.srv import Query
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ..harness.testing import RosProbe
    from ..ros.query_node import QueryNode
    probe = RosProbe(name='bench_query_client')
    node = QueryNode(context=probe.context, parameter_overrides=[
        Parameter('checkpoint', value=str(checkpoint)), Parameter('similarity_image', value=pictures),
        Parameter('device', value=device), Parameter('allow_random_teacher', value=True)])
    executor = MultiThreadedExecutor(num_threads=3, context=probe.context)   # as query_node's main
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = probe.node.create_client(Query, '/query/locate')
    rows = []
    try:
        if not client.wait_for_service(timeout_sec=30):
            raise SystemExit('the query node did not offer ~/locate within 30 s')
        for index in range(warmup + count):
            done = threading.Event()
            started = time.perf_counter()
            future = client.call_async(Query.Request(positives=[phrases[index % len(phrases)]]))
            future.add_done_callback(lambda _: done.set())
            if not done.wait(120):
                raise SystemExit('the query node did not answer within 120 s')
            waited = time.perf_counter() - started
            answer = future.result().answer
            total = next(t.seconds for t in answer.timings if t.stage == 'total')
            if index >= warmup:
                rows.append({'client_s': waited, 'node_total_s': total, 'status': int(answer.status)})
        if pictures:   # the last answer's picture is drawn once the questions stop
            RosProbe.wait_until(lambda: not node.pictures.pending, 300, 'the last picture')
        drawn, dropped = node.pictures.drawn, node.pictures.dropped
    finally:
        probe.node.destroy_client(client)
        executor.shutdown()
        node.destroy_node()
        probe.close()
    return {'rows': rows, 'pictures_drawn': drawn, 'pictures_dropped': dropped}


def run_node(args, checkpoint: Path, phrases: Sequence[str], source: str) -> int:
    """``--node``: print the client's wait against the node's own time, median and worst, and the RESULT line."""
    pictures = not args.no_pictures
    result = node_times(checkpoint, phrases, args.queries, pictures, args.device)
    rows = result['rows']
    client = [r['client_s'] * 1000 for r in rows]
    core = [r['node_total_s'] * 1000 for r in rows]
    extra = [c - n for c, n in zip(client, core)]
    print(f'[bench] query --node: {device_name()}; {source}; {len(rows)} service calls back to back, '
          f'pictures {"on" if pictures else "off"}; queries {", ".join(phrases)}')
    table = [['', 'median (ms)', 'worst (ms)'],
             ['client waits', f'{statistics.median(client):.2f}', f'{max(client):.2f}'],
             ["node's answer total", f'{statistics.median(core):.2f}', f'{max(core):.2f}'],
             ['client - node', f'{statistics.median(extra):.2f}', f'{max(extra):.2f}']]
    print(format_table(table))
    print(f'pictures drawn {result["pictures_drawn"]}, dropped for a newer question {result["pictures_dropped"]}; '
          f'answers found {sum(r["status"] == 0 for r in rows)} of {len(rows)}')
    print(f'RESULT node client_ms={statistics.median(client):.2f} client_worst_ms={max(client):.2f} '
          f'core_ms={statistics.median(core):.2f} core_worst_ms={max(core):.2f} '
          f'extra_ms={statistics.median(extra):.2f} extra_worst_ms={max(extra):.2f} pictures={int(pictures)} '
          f'drawn={result["pictures_drawn"]} dropped={result["pictures_dropped"]} calls={len(rows)}')
    write_json(args.json, {'device': device_name(), 'source': source, 'pictures': pictures, **result})
    return 0


def run(args) -> int:
    """Time cold and warm queries; print medians per stage and the RESULT line."""
    import torch

    from ..core.query.answer import FieldQuerier
    if args.node:
        model, teacher, config, phrases, source = _trained_field(args)
        checkpoint = args.checkpoint or args.save_checkpoint
        if checkpoint is None:
            raise SystemExit('--node needs --checkpoint, or --save-checkpoint for the field trained here')
        return run_node(args, checkpoint, phrases, source)
    model, teacher, config, phrases, source = _trained_field(args)
    querier = FieldQuerier(model, teacher, config, surface_only=not args.solid)
    for _ in range(3):   # warm-up: kernels, allocator, every phrase's embedding
        querier.invalidate()
        for phrase in phrases:
            querier.query(phrase)
    sync()
    results = {'cold': timed_queries(querier, phrases, args.queries, True),
               'warm': timed_queries(querier, phrases, args.queries, False)}
    v = querier.voxels
    print(f'[bench] query: {device_name()}; {source}; grid {v.grid_shape} = {v.num_voxels} voxels at '
          f'{config.query.voxel_size * 100:g} cm; {v.num_occupied} occupied voxels kept '
          f'({"solid" if args.solid else "surface"}); feature dim {config.feature_field.feature_dim}; '
          f'queries {", ".join(phrases)}; grasp.max_opening {config.grasp.max_opening} m; '
          f'median of {args.queries}')
    rows = [['query'] + [f'{s} (ms)' for s in STAGES] + ['total (ms)', 'goal (ms)']]
    for kind, timings in results.items():
        rows.append([f'{kind} ({"voxels evaluated" if kind == "cold" else "voxels cached"})']
                    + [f'{median_ms(timings, s):.2f}' for s in STAGES]
                    + [f'{median_ms(timings, "total"):.2f}', f'{GOALS_MS[kind]:g} (GPU)'])
    print(format_table(rows))
    warm = results['warm']
    counts = sorted({int(r['points']) for r in results['cold'] + warm})
    print(f'every cold evaluation kept the same voxels: {"yes" if len(counts) == 1 else "NO: " + str(counts)}')
    print(f'per query: {statistics.median(r["points"] for r in warm):.0f} heatmap points, '
          f'{statistics.median(r["clusters"] for r in warm):.0f} clusters, '
          f'{statistics.median(r["grasp_candidates"] for r in warm):.0f} grasp candidates (medians); '
          f'{np.mean([r["found"] for r in warm]):.0%} found')
    first = first_text_times(querier)
    print(f'text, first ask of a phrase ({teacher.name} teacher): {statistics.median(first) * 1000:.2f} ms '
          '(cached afterwards)')
    clip = None
    if args.clip_text:
        clip = clip_text_times(args.clip_text, 'cuda' if torch.cuda.is_available() and args.device != 'cpu'
                               else 'cpu')
        print(f'text, first ask of a phrase, open_clip {args.clip_text} text tower: '
              f'{statistics.median(clip) * 1000:.2f} ms')
    cold, warm_ms = median_ms(results['cold'], 'total'), median_ms(warm, 'total')
    print(f'RESULT cold_ms={cold:.2f} warm_ms={warm_ms:.2f} consistent={int(len(counts) == 1)} '
          f'cold_goal_met={int(cold <= GOALS_MS["cold"])} warm_goal_met={int(warm_ms <= GOALS_MS["warm"])} '
          f'voxels={v.num_voxels} occupied={v.num_occupied} queries={args.queries}')
    write_json(args.json, {'device': device_name(), 'source': source, 'voxels': v.num_voxels,
                           'occupied': v.num_occupied, 'phrases': phrases, 'timings': results,
                           'first_text_s': first, 'clip_text_s': clip})
    return 0
