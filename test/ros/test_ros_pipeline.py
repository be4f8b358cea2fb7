"""The whole ROS pipeline on a synthetic table, over real DDS confined to this machine.

1. Separate processes (replay -> capture -> trainer -> query), as `ros2 launch` would start them. The trainer
   is killed with SIGKILL mid-scan and restarted: it resumes from the dataset folder and the last checkpoint
   with every kept keyframe. Then "mug" is asked and the heatmap's most similar points must lie on the mug.
2. The same flow in one process through `f3rm-ros pipeline`.

Semantics come from the labels teacher (ground truth, docs/teachers.md); the model is the cpu-tiny preset.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from f3rm_ros.core.capture.frames import write_dataset
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.diagnostics import status_values
from f3rm_ros.ros.qos import latched_qos
from f3rm_ros.harness.testing import NodeProcesses, RosProbe, subprocess_env

from repo_root import ROOT

pytestmark = pytest.mark.ros

STEPS = 150
DEMO_STEPS = 500  # the demo's; at 300 the 7 cm ball is not yet dense enough to pass the alpha threshold
# The demo stops training at its time budget whatever the step; what this test checks is the answer after all
# DEMO_STEPS steps, so the budget must cover them on a loaded machine too: 300 s stopped two of four runs at step
# 418 and 477 with two cores shared by four other training jobs (load 7-10; the answers were within 1.6 cm).
DEMO_BUDGET_S = 900
OBJECTS = ['mug', 'ball', 'box']


@pytest.fixture(scope='module')
def scene_dataset(tmp_path_factory):
    scene = make_scene(seed=3, object_names=OBJECTS, num_views=24, width=96, height=72)
    root = tmp_path_factory.mktemp('replay') / 'table'
    write_dataset(root, scene.frames, metadata=scene.dataset_metadata())
    return scene, root


def write_params(path: Path, work: Path, dataset: Path, steps: int = STEPS) -> Path:
    params = {
        '/**': {'ros__parameters': {
            'preset': 'cpu-tiny', 'dataset_dir': str(work / 'scan'), 'checkpoint_dir': str(work / 'ckpt'),
            'resume': True,  # a restarted trainer continues the scan (a new launch would start a new one)
            'trainer': {'steps': steps, 'checkpoint_every': 20, 'eval_every': 0},
        }},
        'capture': {'ros__parameters': {'min_interval_s': 0.0, 'min_sharpness': 0.0, 'status_rate_hz': 5.0}},
        'trainer': {'ros__parameters': {'min_frames': 6, 'status_rate_hz': 5.0, 'torch_threads': 1}},
        'query': {'ros__parameters': {'image_width': 64, 'image_height': 48, 'torch_threads': 1}},
        'replay': {'ros__parameters': {'dataset': str(dataset), 'rate_hz': 4.0, 'start_delay_s': 1.0}},
    }
    path.write_text(yaml.safe_dump(params))
    return path


def status(inbox, predicate, timeout, what, since=0):
    """Wait for a DiagnosticStatus (after the first `since`) whose values satisfy `predicate`; returns them."""
    return status_values(inbox.wait(lambda m: predicate(status_values(m)), timeout, what, since))


def check_heatmap(cloud: PointCloud2, scene, name: str = 'mug'):
    """Five float32 fields in the base frame, and the most similar points on the named object."""
    assert cloud.header.frame_id == 'base_link'
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1), ('z', 8, PointField.FLOAT32, 1),
        ('rgb', 12, PointField.FLOAT32, 1), ('similarity', 16, PointField.FLOAT32, 1)]
    xyz, rgb, similarity = conv.point_cloud2_to_arrays(cloud)
    assert len(xyz) > 100 and rgb is not None and np.isfinite(similarity).all()
    top = xyz[np.argsort(similarity)[-20:]]
    truth = scene.objects[name]
    lo = truth['center'] - truth['extent'] / 2 - 0.03
    hi = truth['center'] + truth['extent'] / 2 + 0.03
    inside = np.all((top >= lo) & (top <= hi), axis=1).mean()
    median = np.median(top, axis=0)
    print(f'{name}: top-20 median {np.round(median, 3)}, truth {np.round(truth["center"], 3)}, '
          f'{inside:.0%} inside the box (+3 cm)')
    assert inside >= 0.8
    assert np.linalg.norm(median[:2] - truth['center'][:2]) < np.max(truth['extent'][:2]) / 2 + 0.02


def test_separate_processes_with_a_trainer_killed_mid_scan(scene_dataset, tmp_path):
    scene, dataset = scene_dataset
    started = time.monotonic()
    probe = RosProbe()
    params = write_params(tmp_path / 'params.yaml', tmp_path, dataset)
    procs = NodeProcesses(subprocess_env(probe.domain_id), tmp_path / 'logs', cwd=ROOT)
    try:
        capture_status = probe.status('/capture')
        trainer_status = probe.status('/trainer')
        replay_status = probe.status('/replay')
        heatmaps = probe.subscribe(PointCloud2, '/query/heatmap', latched_qos())
        markers = probe.subscribe(MarkerArray, '/query/markers', latched_qos())
        grasps = probe.subscribe(PoseArray, '/query/grasp_candidates', latched_qos())
        pictures = probe.subscribe(Image, '/query/similarity_image', latched_qos())
        for name in ('capture', 'trainer', 'query', 'replay'):
            procs.node(name, params)

        # Hold the arm part-way through the scan, once training has checkpointed, kill -9 the trainer.
        status(capture_status, lambda v: int(v['keyframes']) >= 10, 90, '10 keyframes')
        assert probe.call(Trigger, '/replay/pause').success
        status(trainer_status, lambda v: int(v['step']) >= 21, 120, 'a checkpoint after step 20')
        procs.procs['trainer'].kill()
        procs.procs['trainer'].wait(10)
        from f3rm_ros.core.training.checkpoints import read_checkpoint
        killed_at = read_checkpoint(tmp_path / 'ckpt' / 'latest.ckpt')['step']
        assert killed_at >= 20

        # The scan goes on without a trainer: these keyframes reach it only through the dataset folder.
        assert probe.call(Trigger, '/replay/resume').success
        status(replay_status, lambda v: v['state'] == 'done', 60, 'the end of the replay')
        kept = int(status(capture_status, lambda v: v['pending'] == '0', 10, 'capture idle')['keyframes'])
        on_disk = len(yaml.safe_load((tmp_path / 'scan' / 'transforms.json').read_text())['frames'])
        assert kept == on_disk and kept > 10

        restart = trainer_status.mark()
        procs.node('trainer', params, tag='-restarted')
        values = status(trainer_status, lambda v: v['state'] == 'training', 120, 'the restarted trainer training',
                        restart)
        assert int(values['resumed_frames']) == kept        # every kept keyframe, from the folder
        assert int(values['frames']) == kept                # and none twice (the latched topic copies)
        assert int(values['resumed_step']) == killed_at     # the last checkpoint
        values = status(trainer_status, lambda v: v['state'] == 'done', 240, f'{STEPS} steps', restart)
        assert int(values['trained_frames']) == kept and int(values['step']) >= STEPS

        # Ask the query node (it follows the latched checkpoint path across processes).
        query = probe.publisher(String, '/query/query')
        probe.wait_for_subscribers(query)
        query.publish(String(data='mug'))
        cloud = heatmaps.wait(timeout=120, what='the heatmap')
        check_heatmap(cloud, scene)
        assert markers.wait(timeout=10).markers[0].action == 3            # DELETEALL, then the boxes
        assert grasps.wait(timeout=10).header.frame_id == 'base_link'
        picture = pictures.wait(timeout=30)
        assert (picture.width, picture.height, picture.encoding) == (64, 48, 'rgb8')
        print(f'separate processes: {time.monotonic() - started:.0f} s')
    except AssertionError:
        print(procs.tails())
        raise
    finally:
        procs.stop_all()
        probe.close()


def test_shortened_demo_reports_each_object_where_it_is(tmp_path):
    """`f3rm-ros demo` end to end (one process: replay, capture, trainer, query, a ROS client), shortened.

    The report must name the labels teacher and why, score every queried object against the ground truth
    (within 3 cm, as the full demo must), keep the heatmap PLY it got over ROS, and draw its pictures.
    """
    import json

    import cv2
    import open3d as o3d

    from f3rm_ros.harness.testing import pick_domain_id
    out = tmp_path / 'demo'
    env = subprocess_env(pick_domain_id())
    started = time.monotonic()
    done = subprocess.run([sys.executable, '-m', 'f3rm_ros.cli', 'demo', '--output', str(out), '--objects',
                           'mug,ball', '--seed', '3', '--views', '48', '--size', '160x120', '--steps',
                           str(DEMO_STEPS), '--budget', str(DEMO_BUDGET_S)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=DEMO_BUDGET_S + 300)
    print(f'shortened demo: {time.monotonic() - started:.0f} s')
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'step 0/' in done.stdout or 'keyframes' in done.stdout        # progress was shown
    report = json.loads((out / 'report.json').read_text())
    assert report['teacher'] == 'labels' and 'ground-truth' in report['teacher_reason']
    assert report['steps'] == DEMO_STEPS and report['keyframes'] >= 20
    assert report['heldout_psnr'] > 18.0
    assert [q['text'] for q in report['queries']] == ['mug', 'ball']
    scene = make_scene(seed=3, object_names=['mug', 'ball'], num_views=2, width=8, height=6)
    for q in report['queries']:
        assert np.allclose(q['true_center'], scene.objects[q['text']]['center'])
        assert q['status'] == 'found', (f'{q["text"]}: {q["reason"]}; demo notes: {report["notes"]}; '
                                        f'{done.stdout[-2000:]}')
        assert q['error_m'] == pytest.approx(np.linalg.norm(np.subtract(q['top_centroid'], q['true_center'])))
        assert q['error_m'] < 0.03, f'{q["text"]}: {q["error_m"] * 100:.1f} cm from the object'
        cloud = o3d.io.read_point_cloud(q['ply'])
        assert len(cloud.points) == q['num_points'] > 100
        overlay = cv2.imread(q['overlay_png'])
        assert overlay is not None and overlay.shape[0] > 0 and overlay.std() > 10   # a picture, not a flat fill
    assert {'scene generation', 'capture + online training', 'queries', 'total'} <= set(report['timings'])
    for name in ('feature PCA (rendered keyframe view)', 'training curve'):
        assert cv2.imread(report['pictures'][name]) is not None
    markdown = (out / 'report.md').read_text()
    assert '| `mug` |' in markdown and '![similarity overlay for ball]' in markdown
    assert (out / 'checkpoints' / 'latest.ckpt').exists() and (out / 'scan' / 'transforms.json').exists()


def test_pipeline_replays_the_scan_only_after_the_trainer_warmed_up(tmp_path):
    """`f3rm-ros pipeline --replay DATASET` (one process) replays DATASET, once the trainer's warm-up is over.

    In one process the warm-up (seconds of imports) held the interpreter while the capture node paired images with
    label images, and keyframes came without labels. What the user sees: the "warmed up" line before the first
    keyframe, every keyframe of the written scan with its labels, and an answer to the query.
    """
    import json

    from f3rm_ros.harness.testing import pick_domain_id
    scene = make_scene(seed=3, object_names=['mug'], num_views=10, width=64, height=48)
    source = write_dataset(tmp_path / 'source', scene.frames, scene.dataset_metadata())
    scan = tmp_path / 'scan'
    params = ['preset:=cpu-tiny', f'dataset_dir:={scan}', f'checkpoint_dir:={tmp_path / "checkpoints"}',
              'trainer.steps:=5', 'rate_hz:=8.0', 'start_delay_s:=0.1', 'min_interval_s:=0.0', 'resume:=false']
    done = subprocess.run([sys.executable, '-m', 'f3rm_ros.cli', 'pipeline', '--replay', str(source),
                           *[arg for p in params for arg in ('-p', p)], '--query', 'mug', '--exit-after-query',
                           '--duration', '240'], cwd=ROOT, env=subprocess_env(pick_domain_id()),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    log = done.stdout
    assert done.returncode == 0, log[-3000:]
    # the given dataset at the given rate, not the packaged config's replay section (synthetic table, 2 Hz)
    assert '[replay]: replaying 10 frames at 8.0 Hz' in log and 'synthetic scene' not in log, log[:2000]
    warmed = log.index('pipeline: trainer warmed up; the replayed scan starts')
    first_keyframe = log.index('] [capture]: keyframe 0 at')
    assert warmed < first_keyframe, log[:3000]
    assert 'no aligned labels image' not in log and 'has no label map' not in log
    entries = json.loads((scan / 'transforms.json').read_text())['frames']
    assert len(entries) >= 5 and all('label_file_path' in e for e in entries)
    assert "pipeline: last query" in log and 'mug' in log.split('pipeline: last query')[1]
    # progress is shown, and the end: the 5-step budget, plus trainer's steps_per_new_frame for each keyframe that
    # arrived after the budget was spent (how many depends on the machine's pace)
    done_line = re.search(r'pipeline: training done \(step (\d+)/(\d+)', log)
    assert done_line and done_line.group(1) == done_line.group(2) and int(done_line.group(1)) >= 5, log[-3000:]
