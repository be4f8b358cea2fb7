"""The product demo: replay -> capture -> trainer -> query over ROS 2 in one process, then a report.

A synthetic table (or a real dataset) is replayed as an arm camera would publish it; the nodes of
`pipeline` capture keyframes and train online; once training is done (or the time budget is spent) the demo
publishes text queries on the query node's topic like any client, listens to the heatmap cloud and markers
it gets back, scores them against ground truth when there is some, and writes pictures and a report.
"""
from __future__ import annotations

# rclpy, open3d (a machine may lack it), f3rm_ros_interfaces and the modules that load torch or the ROS messages are
# imported where used: DemoSettings and the workspace helpers load without them.
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

from ..core.capture.frames import PosedFrame, dataset_workspace, read_dataset, read_metadata, write_dataset
from ..core.geometry import resized_intrinsics
from ..core.study.report import QueryOutcome, RunReport, write_report
from ..ros.common import init_ros
from ..ros.pipeline import create_nodes, held_back_replay, parameter_overrides, ros_arguments

PICTURE_WIDTH = 320                  # pixels per rendered panel in the report
EVAL_MAX_PIXELS = 320 * 240          # the report's held-out PSNR renders views at most this big
MAX_QUERY_VOXELS = 1.5e6             # heatmap grid bound for a real scan's box (a CPU evaluates ~0.3M/s)


@dataclass
class DemoSettings:
    """What the demo runs."""

    output: Path = Path('outputs/demo')
    data: Optional[Path] = None          # a nerfstudio dataset instead of the synthetic table
    seed: int = 7
    objects: tuple = ('mug', 'bowl', 'ball', 'bottle', 'screwdriver')
    views: int = 48  # fewer views leave nerfacto in front-of-camera fog on this scene
    width: int = 160
    height: int = 120
    preset: str = 'cpu-tiny'
    steps: int = 500
    budget_s: float = 480.0              # stop training by then, whatever the step count
    rate_hz: float = 4.0
    queries: tuple = ()                  # default: every object of the synthetic scene
    teacher: str = 'auto'                # auto: CLIP when its weights load, else the labels teacher
    clip_model: str = 'ViT-B-16'         # small enough to distil on a CPU (about a second per view)
    clip_image_size: int = 224
    clip_weights: str = ''               # a local weights file instead of the 'openai' hub tag
    workspace: Optional[tuple] = None    # XMIN YMIN ZMIN XMAX YMAX ZMAX: overrides the dataset's box


def _scene_source(settings: DemoSettings, report: Callable[[str], None]) -> Dict:
    """Write the synthetic scene as a dataset (the replay source) and return its metadata."""
    from ..core.scenes.table import make_scene
    scene = make_scene(seed=settings.seed, object_names=list(settings.objects), num_views=settings.views,
                       width=settings.width, height=settings.height)
    root = settings.output / 'source'
    write_dataset(root, scene.frames, scene.dataset_metadata())
    report(f'demo: synthetic table (seed {settings.seed}) with {", ".join(scene.objects)}; '
           f'{len(scene.frames)} views at {settings.width}x{settings.height} written to {root}')
    return read_metadata(root)


class _QueryClient:
    """Asks the query node's ``query/locate`` service, as a grasp planner would."""

    def __init__(self, node):
        from f3rm_ros_interfaces.srv import Query
        self.node = node
        self.client = node.create_client(Query, 'query/locate')

    def ask(self, text: str, timeout_s: float):
        """Return the ``QueryAnswer`` to `text` (comma-separated positives), or None after `timeout_s`."""
        from f3rm_ros_interfaces.srv import Query

        from ..core.query.relevancy import split_phrases
        deadline = time.monotonic() + timeout_s
        while not self.client.wait_for_service(timeout_sec=0.5):
            _stop_if_shut_down()
            if time.monotonic() > deadline:
                return None
        future = self.client.call_async(Query.Request(positives=split_phrases(text)))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        while not done.wait(timeout=0.5):
            _stop_if_shut_down()
            if time.monotonic() > deadline:
                return None
        return future.result().answer


def run_demo(settings: DemoSettings, report: Callable[[str], None] = print) -> Path:
    """Run the whole demo and return the report path (Ctrl-C stops cleanly, keeping scan and checkpoint)."""
    import open3d as o3d
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from ..core.query.relevancy import PhraseEmbeddings, embed_query, split_phrases
    from ..core.study.views import render_view
    from ..ros import answers
    from ..core.training.render import feature_pca, save_png
    from ..ros import conversions as conv

    timings: Dict[str, float] = {}
    started = time.monotonic()
    settings.output.mkdir(parents=True, exist_ok=True)
    if settings.data is None:
        meta = _scene_source(settings, report)
        source = settings.output / 'source'
        source_text = (f'synthetic table, seed {settings.seed}, {settings.views} views at '
                       f'{settings.width}x{settings.height}')
    else:
        source = Path(settings.data)
        meta = read_metadata(source)
        source_text = f'dataset {source} ({len(meta["frames"])} frames)'
    timings['scene generation'] = time.monotonic() - started
    objects = {name: np.asarray(o['center'], float) for name, o in meta.get('objects', {}).items()}
    queries = list(settings.queries) or list(objects)
    if not queries:
        raise ValueError('no queries: the dataset has no "objects" entry; pass --query')
    # the replayed arm moves steadily: keep frames a little more often than a hand-held default would
    parameters = [f'preset:={settings.preset}', f'dataset:={source.resolve()}', 'min_interval_s:=0.2',
                  f'dataset_dir:={(settings.output / "scan").resolve()}',
                  f'checkpoint_dir:={(settings.output / "checkpoints").resolve()}',
                  f'rate_hz:={settings.rate_hz}', 'loop:=false', f'trainer.steps:={settings.steps}',
                  'resume:=false',
                  # the synthetic bowl (13 cm) and mug (8 cm) are wider than a Franka Hand (8 cm): a 15 cm gripper
                  'grasp.max_opening:=0.15']
    lo, hi = demo_workspace(meta, source, report, settings.workspace)
    parameters += [f'workspace.min_xyz:={json.dumps([float(v) for v in lo])}',
                   f'workspace.max_xyz:={json.dumps([float(v) for v in hi])}',
                   f'query.voxel_size:={_voxel_size(lo, hi)}']
    parameters += _teacher_parameters(settings)
    overrides = parameter_overrides(parameters)
    init_ros(ros_arguments())
    nodes = create_nodes(replay=True, overrides=overrides)
    client_node = rclpy.create_node('demo_client')
    client = _QueryClient(client_node)
    executor = MultiThreadedExecutor()
    held_back = held_back_replay(nodes)
    for node in nodes + [client_node]:
        if node not in held_back:
            executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    trainer_node = next(n for n in nodes if n.get_name() == 'trainer')
    session = trainer_node.session
    while session.warming_up:
        time.sleep(0.1)
        _stop_if_shut_down()
    report(f'demo: [{time.monotonic() - started:4.0f} s] trainer warmed up; the replayed scan starts')
    for node in held_back:
        executor.add_node(node)
    outcomes: List[QueryOutcome] = []
    curve: List[Dict[str, float]] = []
    notes: List[str] = []
    try:
        train_started = time.monotonic()
        last_print = 0.0
        while True:
            status = session.status()
            now = time.monotonic()
            if 'loss' in status and (not curve or curve[-1]['step'] != status['step']):
                curve.append({'step': status['step'], 'loss': status['loss'], 'psnr': status['psnr'],
                              'time': now - train_started})
            if now - last_print > 5.0:
                psnr = f'{curve[-1]["psnr"]:.1f} dB' if curve else '-'
                report(f'demo: [{now - started:4.0f} s] {status["state"]}: {status["frames"]} keyframes, '
                       f'step {status["step"]}/{settings.steps}, training PSNR {psnr}')
                last_print = now
            if session.state == 'done' or (now - train_started > settings.budget_s and status.get('step', 0)):
                break
            if session.state.startswith('error'):
                raise RuntimeError(f'training failed: {status.get("error")}')
            time.sleep(0.5)
            _stop_if_shut_down()
        if session.state != 'done':
            notes.append(f'training stopped by the {settings.budget_s:.0f} s budget at step {session.step}')
        # the replayed table never changes: a change found during its scan is a false detection, and it matters
        notes.extend(f'scene change during the scan of a static table: {event.summary()}'
                     for event in session.changes.events)
        session.pause()
        timings['capture + online training'] = time.monotonic() - train_started
        report(f'demo: training done at step {session.step} with {len(session.store)} keyframes; asking {queries}')
        trainer = session.trainer
        heldout = trainer.evaluate(max_pixels=EVAL_MAX_PIXELS)['psnr'] if trainer.eval_indices else None
        frames = session.store.snapshot()
        view = max(frames, key=lambda f: f.width)  # any keyframe: the view every picture is drawn from
        query_started = time.monotonic()
        embeddings = PhraseEmbeddings(session.teacher)  # negatives encoded once for every query's picture
        for text in queries:
            asked = time.monotonic()
            answer = client.ask(text, 120.0)
            if answer is None:
                notes.append(f'query {text!r}: no answer within 120 s')
                continue
            latency = time.monotonic() - asked
            status = answers.STATUS_NAMES[answer.status]
            xyz, rgb, _ = conv.point_cloud2_to_arrays(answer.heatmap)
            ply = settings.output / f'heatmap_{_file_name(text)}.ply'
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
            if rgb is not None:
                cloud.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255.0)
            o3d.io.write_point_cloud(str(ply), cloud)
            top = None
            if answer.clusters:
                p = answer.clusters[0].pose.position
                top = [p.x, p.y, p.z]
            embedded = embed_query(session.teacher, split_phrases(text), list(session.config.query.negatives),
                                   session.config.query.temperature, session.config.query.mode, embeddings)
            truth = objects.get(text)
            error = None if (truth is None or top is None) else float(np.linalg.norm(np.asarray(top) - truth))
            caption = f'"{text}"' + (f': top cluster {error * 100:.1f} cm from the object' if error is not None else '')
            overlay = _query_picture(trainer, _best_view(frames, truth), embedded, caption)
            overlay_png = save_png(settings.output / f'overlay_{_file_name(text)}.png', overlay)
            relevancy = answer.clusters[0].relevancy if answer.clusters else None
            grasp_width = answer.grasps[0].width if answer.grasps else None
            outcomes.append(QueryOutcome(text, str(overlay_png), str(ply), len(xyz), len(answer.clusters), top,
                                         relevancy, None if truth is None else truth.tolist(), error, latency,
                                         status, answer.reason, len(answer.grasps), grasp_width))
            report(f'demo: {text!r}: {status}, {len(answer.clusters)} clusters, '
                   f'top at {np.round(top, 3).tolist() if top else None}'
                   + (f', error {error * 100:.1f} cm' if error is not None else '')
                   + f', {len(answer.grasps)} grasps ({latency:.1f} s)')
        timings['queries'] = time.monotonic() - query_started
        rendered = render_view(trainer, _view_at_width(view))
        pictures = {
            'feature PCA (rendered keyframe view)': str(save_png(settings.output / 'feature_pca.png',
                                                                 feature_pca(rendered['feature']))),
            'reconstruction (rendered keyframe view)': str(save_png(settings.output / 'render_rgb.png',
                                                                    rendered['rgb'])),
        }
    except KeyboardInterrupt:
        report('demo: interrupted: saving the checkpoint; the scan stays in ' + str(settings.output / 'scan'))
        raise
    finally:
        session.stop(save=True)
        executor.shutdown()
        for node in nodes + [client_node]:
            node.destroy_node()
        rclpy.try_shutdown()
    timings['total'] = time.monotonic() - started
    run = RunReport(title='f3rm_ros demo', teacher=session.teacher.name, teacher_reason=session.choice.reason,
                    source=source_text, keyframes=len(frames), steps=session.step, heldout_psnr=heldout,
                    curve=curve, timings=timings, queries=outcomes, pictures=pictures, notes=notes)
    path = write_report(run, settings.output)
    report(f'demo: report written to {path}')
    return path


def demo_workspace(meta: Dict, source: Path, report: Callable[[str], None], override: Optional[tuple] = None):
    """(min, max) of the field's box, and say where it came from.

    ``--workspace`` first; else the dataset's ``workspace`` entry; else its depth maps; else where the cameras'
    optical axes converge (`frames.dataset_workspace`).
    """
    if override is not None:
        lo, hi = np.asarray(override[:3], float), np.asarray(override[3:], float)
        where = '--workspace'
    elif 'workspace' in meta:
        lo, hi = np.asarray(meta['workspace']['min'], float), np.asarray(meta['workspace']['max'], float)
        where = 'the dataset\'s "workspace" entry'
    else:
        frames = read_dataset(source, downscale=4)
        try:
            lo, hi = dataset_workspace(meta, frames)
        except ValueError as error:
            raise ValueError(f'{source}: no "workspace" entry in transforms.json, and {error}; add "workspace": '
                             '{"min": [x, y, z], "max": [x, y, z]} (metres) or pass --workspace') from error
        where = ('its depth maps' if any(f.depth is not None for f in frames)
                 else 'where the cameras\' optical axes converge (no depth, no "workspace" entry)')
    report(f'demo: workspace from {where}: min {np.round(lo, 2).tolist()} max {np.round(hi, 2).tolist()} '
           '(override with --workspace XMIN YMIN ZMIN XMAX YMAX ZMAX)')
    return lo, hi


def _voxel_size(lo, hi, max_voxels: float = MAX_QUERY_VOXELS) -> float:
    """Heatmap voxel: 1 cm, coarser (whole cm) when a room-sized box would exceed `max_voxels` voxels."""
    volume = float(np.prod(np.maximum(np.asarray(hi, float) - np.asarray(lo, float), 1e-3)))
    return max(0.01, float(np.ceil(100 * (volume / max_voxels) ** (1 / 3))) / 100)


def _teacher_parameters(settings: DemoSettings) -> List[str]:
    """Trainer parameters of the teacher choice: CLIP first unless told otherwise; the trainer says why."""
    if settings.teacher not in ('auto', 'clip', 'labels'):
        raise ValueError(f"teacher must be 'auto', 'clip' or 'labels', got {settings.teacher!r}")
    if settings.teacher == 'labels':
        return ['teacher_choice:=labels']
    weights = str(Path(settings.clip_weights).resolve()) if settings.clip_weights else 'openai'
    if settings.clip_weights and not Path(settings.clip_weights).is_file():
        raise FileNotFoundError(f'--clip-weights: {settings.clip_weights} is not a file')
    # auto: the demo distils whatever it can and its report says which teacher ran and why, random-weight
    # CLIP included (nodes refuse that unless allowed)
    allow = ['allow_random_teacher:=true'] if settings.teacher == 'auto' else []
    return allow + [f'teacher_choice:={settings.teacher}', 'teacher.name:=clip',
                    f'teacher.model_name:={settings.clip_model}', f'teacher.image_size:={settings.clip_image_size}',
                    f'teacher.pretrained:={weights}']


def _file_name(text: str) -> str:
    """Turn a query into a file-name part: 'mug, cup' -> 'mug_cup'."""
    return re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_') or 'query'


def _stop_if_shut_down() -> None:
    """Raise KeyboardInterrupt once rclpy shut down (its SIGINT/SIGTERM handlers): the Ctrl-C path saves."""
    import rclpy
    if not rclpy.ok():
        raise KeyboardInterrupt


def _view_at_width(frame, width: Optional[int] = None):
    """Return the keyframe's camera resized to `width` pixels (same aspect) as a PosedFrame to render.

    Default: `PICTURE_WIDTH`, or the keyframe's own width when smaller: rendering more pixels than the scan has
    adds no detail, and on a CPU each picture costs seconds per 10k pixels (a 160x120 scan's pictures at 320 wide
    took 15-19 s each on 2 cores).
    """
    width = min(PICTURE_WIDTH, frame.width) if width is None else width
    height = max(1, round(frame.height * width / frame.width))
    K = resized_intrinsics(frame.K, frame.width, frame.height, width, height)
    return PosedFrame(np.zeros((height, width, 3), np.uint8), K, frame.T_base_optical)


def _query_picture(trainer, frame, query, caption: str) -> np.ndarray:
    """Draw the rendered view beside its similarity overlay (`_view_at_width` each), captioned (uint8 RGB)."""
    from ..core.study.views import render_view, similarity_overlay
    from ..core.training.render import side_by_side, to_uint8
    view = render_view(trainer, _view_at_width(frame), query=query)
    image = to_uint8(side_by_side(np.clip(view['rgb'], 0, 1), similarity_overlay(view, query)))
    bar = np.full((26, image.shape[1], 3), 32, dtype=np.uint8)  # a caption bar above the two panels
    cv2.putText(bar, caption + '   (left: rendered view, right: similarity)', (8, 18), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, image])


def _best_view(frames, center: Optional[np.ndarray]):
    """Pick the keyframe that looks most directly at `center` (the first keyframe when unknown)."""
    if center is None:
        return frames[0]

    def alignment(frame):
        direction = center - frame.T_base_optical[:3, 3]
        return float(frame.T_base_optical[:3, 2] @ direction / np.linalg.norm(direction))
    return max(frames, key=alignment)
