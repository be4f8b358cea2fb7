"""``f3rm-ros render orbit | path``: camera paths, novelty, nerfstudio camera paths, crop box, bad input."""
import csv
import json

import numpy as np
import pytest

from f3rm_ros.cli import main
from f3rm_ros.core.geometry import WorkspaceBox, optical_to_opengl
from f3rm_ros.core.study.orbit import (View, along_training, cameras_up, check_centre, cropped, novelty, orbit,
                                       parse_box, read_camera_path)
from f3rm_ros.core.scenes.table import pinhole_intrinsics
from f3rm_ros.core.study.views import render_view

from study_support import tiny_checkpoint, tiny_dataset, tiny_scene

K = pinhole_intrinsics(32, 24, 60.0)
SMALL = ['--width', '32', '--height-px', '24']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('render')
    scene = tiny_scene()
    data = tiny_dataset(root / 'data', scene)
    checkpoint, trainer = tiny_checkpoint(root / 'a.ckpt', scene, steps=12, rays_per_batch=128)
    return root, scene, data, checkpoint, trainer


def read_rows(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def test_orbits_circle_the_centre_and_look_at_it():
    center = np.array([0.5, 0.0, 0.05])
    views = orbit(center, [0.4, 0.2], 4, K, 32, 24, elevation_deg=45.0)
    assert len(views) == 8 and [v.info['ring'] for v in views] == [0] * 4 + [1] * 4
    for view in views:
        eye = view.T_base_optical[:3, 3]
        radius = view.info['radius_m']
        assert np.hypot(*(eye - center)[:2]) == pytest.approx(radius)
        assert eye[2] - center[2] == pytest.approx(radius)              # 45 degrees: as high as far
        forward = view.T_base_optical[:3, 2]                              # optical z looks at the centre
        assert np.allclose(forward, (center - eye) / np.linalg.norm(center - eye))
    fixed = orbit(center, [0.3], 2, K, 32, 24, height_above=0.1)
    assert all(v.T_base_optical[2, 3] == pytest.approx(0.15) for v in fixed)
    with pytest.raises(ValueError, match='not both'):
        orbit(center, [0.3], 2, K, 32, 24, height_above=0.1, elevation_deg=20)


def test_orbits_about_another_up_and_the_up_a_scan_agrees_on():
    center = np.array([0.1, -0.2, 1.0])
    up = np.array([0.0, -1.0, 0.0])                                   # a y-down world frame (7-Scenes, OpenCV)
    views = orbit(center, [0.5], 6, K, 32, 24, elevation_deg=30.0, up=up)
    for view in views:
        T = view.T_base_optical
        offset = T[:3, 3] - center
        assert offset @ up == pytest.approx(0.5 * np.tan(np.radians(30.0)))          # lifted along up
        assert np.linalg.norm(offset - (offset @ up) * up) == pytest.approx(0.5)     # on the circle about up
        assert np.allclose(T[:3, 2], -offset / np.linalg.norm(offset))               # looking at the centre
        assert -T[:3, 1] @ up > 0.8                                                  # the image upright
    assert np.allclose(cameras_up([v.T_base_optical for v in views]), up)
    # straight above the centre the image up is the circle's first direction, not undefined
    (top,) = orbit(center, [1e-4], 1, K, 32, 24, height_above=0.5, up=up)
    assert np.isfinite(top.T_base_optical).all() and abs(top.T_base_optical[:3, 2] @ up) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='do not agree'):
        cameras_up([views[0].T_base_optical, views[0].T_base_optical @ np.diag([1.0, -1.0, -1.0, 1.0])])
    with pytest.raises(ValueError, match='non-zero direction'):
        orbit(center, [0.5], 2, K, 32, 24, up=(0.0, 0.0, 0.0))


def test_novelty_is_distance_and_angle_to_the_nearest_training_camera():
    center = np.array([0.5, 0.0, 0.0])
    train = [v.T_base_optical for v in orbit(center, [0.4], 4, K, 32, 24, elevation_deg=0.0)]
    views = [View(train[1], K, 32, 24)] + orbit(center, [0.4], 8, K, 32, 24, elevation_deg=0.0)[1:2]
    novelty(views, train, frame_ids=[10, 11, 12, 13])
    assert views[0].info['nearest_train_frame'] == 11
    assert views[0].info['novelty_distance_m'] == pytest.approx(0.0, abs=1e-9)
    assert views[0].info['novelty_angle_deg'] == pytest.approx(0.0, abs=1e-6)
    # 45 degrees round the circle from camera 10: a chord of 2 r sin(22.5°) away, turned by 45 degrees
    assert views[1].info['novelty_distance_m'] == pytest.approx(2 * 0.4 * np.sin(np.radians(22.5)))
    assert views[1].info['novelty_angle_deg'] == pytest.approx(45.0)


def test_paths_along_inside_and_outside_the_capture_trajectory():
    center = np.array([0.5, 0.0, 0.0])
    poses = [v.T_base_optical for v in orbit(center, [0.4], 6, K, 32, 24, height_above=0.0)]
    same = along_training(poses, K, 32, 24, 'training')
    inside = along_training(poses, K, 32, 24, 'inside', 0.1)
    outside = along_training(poses, K, 32, 24, 'outside', 0.1)
    for a, b, c in zip(same, inside, outside):
        assert np.allclose(a.T_base_optical[:3, :3], b.T_base_optical[:3, :3])    # orientation kept
        assert np.linalg.norm(a.T_base_optical[:3, 3] - center) == pytest.approx(0.4)
        assert np.linalg.norm(b.T_base_optical[:3, 3] - center) == pytest.approx(0.3)
        assert np.linalg.norm(c.T_base_optical[:3, 3] - center) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='through the trajectory'):
        along_training(poses, K, 32, 24, 'inside', 0.5)


@pytest.mark.slow
def test_render_orbit_writes_pictures_video_and_novelty(trained, capsys):
    root, scene, data, checkpoint, _ = trained
    out = root / 'orbit'
    center = ','.join(str(v) for v in scene.objects['mug']['center'])
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--data', str(data), '--center', center,
                 '--radii', '0.4,0.25', '--frames', '3', '--query', 'mug', '--up', 'auto', '--output', str(out),
                 *SMALL]) == 0
    printed = capsys.readouterr().out
    up = [float(v) for v in printed.split('training cameras): [')[1].split(']')[0].split(',')]
    assert up[2] > 0.95                                           # the synthetic scan's cameras agree: z is up
    for kind in ('rgb', 'depth', 'feature_pca', 'similarity'):
        assert len(list((out / kind).glob('*.png'))) == 6
    video = next(out.glob('views.*'))
    assert video.suffix in ('.mp4', '.gif') and video.stat().st_size > 1000
    rows = read_rows(out / 'views.csv')
    assert len(rows) == 6 and {r['radius_m'] for r in rows} == {'0.4', '0.25'}
    for row in rows:
        assert float(row['novelty_distance_m']) >= 0 and 0 <= float(row['novelty_angle_deg']) <= 180
        assert float(row['render_s']) > 0 and int(row['nearest_train_frame']) % 8 != 4   # never a held-out view
    assert f'video: {video}' in printed and 'novelty:' in printed


@pytest.mark.slow
def test_render_a_nerfstudio_camera_path_and_the_training_path(trained):
    root, scene, data, checkpoint, _ = trained
    c2w = optical_to_opengl(scene.frames[0].T_base_optical)
    path = root / 'camera_path.json'
    path.write_text(json.dumps({'render_width': 32, 'render_height': 24, 'camera_type': 'perspective',
                                'camera_path': [{'camera_to_world': c2w.reshape(-1).tolist(), 'fov': 50},
                                                {'camera_to_world': c2w.reshape(-1).tolist(), 'fov': 40}]}))
    views = read_camera_path(path)
    assert len(views) == 2 and np.allclose(views[0].T_base_optical, scene.frames[0].T_base_optical)
    assert views[0].K[1, 1] == pytest.approx(12 / np.tan(np.radians(25)))
    out = root / 'path'
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--data', str(data), '--path', str(path),
                 '--output', str(out)]) == 0
    rows = read_rows(out / 'views.csv')
    assert rows[0]['nearest_train_frame'] == '0' and float(rows[0]['novelty_distance_m']) < 1e-6
    out = root / 'outside'
    assert main(['render', 'path', '--checkpoint', str(checkpoint), '--data', str(data), '--along', 'outside',
                 '--offset', '0.05', '--every', '7', '--output', str(out), *SMALL]) == 0
    rows = read_rows(out / 'views.csv')
    assert len(rows) == 2 and all(float(r['novelty_distance_m']) == pytest.approx(0.05) for r in rows)
    assert [r['source_frame'] for r in rows] == ['0', '8']      # dataset indices (frame 4 is held out)


@pytest.mark.parametrize('content, message', [
    ('{"camera_path": []}', 'non-empty "camera_path"'),
    ('not json', 'not readable JSON'),
    ('{"camera_path": [{"fov": 50}]}', 'camera_path[0]: needs "camera_to_world"'),
    ('{"camera_path": [{"camera_to_world": [1, 0, 0], "fov": 50}]}', 'must hold 16 finite numbers'),
    ('{"camera_path": [{"camera_to_world": [2,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1], "fov": 50}]}', 'not a rigid pose'),
    ('{"camera_path": [{"camera_to_world": [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1], "fov": 500}]}', 'fov 500'),
])
def test_a_malformed_camera_path_is_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(')):
        read_camera_path(path)


@pytest.mark.slow
def test_bad_render_requests_are_refused_and_write_nothing(trained, capsys):
    root, _, data, checkpoint, _ = trained
    out = root / 'bad'
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--center', '5,5,5', '--radius', '0.3',
                 '--output', str(out)]) == 2
    assert 'outside the workspace' in capsys.readouterr().err
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--output', str(out)]) == 2
    assert '--radius or --radii' in capsys.readouterr().err
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--radius', '0.3', '--crop', '1,2,3',
                 '--output', str(out)]) == 2
    assert 'six numbers' in capsys.readouterr().err
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--radius', '0.3', '--up', 'auto',
                 '--output', str(out)]) == 2
    assert '--up auto needs the training cameras of --data' in capsys.readouterr().err
    assert main(['render', 'orbit', '--checkpoint', str(checkpoint), '--radius', '0.3', '--up', '0,0,z',
                 '--output', str(out)]) == 2
    assert "three numbers x,y,z or 'auto'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match='outside the workspace'):
        check_centre([0.5, 0.0, 2.0], WorkspaceBox(np.array([0.2, -0.3, -0.02]), np.array([0.8, 0.3, 0.3])))


@pytest.mark.slow
def test_the_crop_box_removes_everything_outside_it(trained):
    _, scene, _, _, trainer = trained
    frame = scene.frames[0]
    model, box = trainer.model, trainer.box
    full = render_view(model, frame, box=box)
    empty_air = parse_box('0.5,0.0,0.25,0.52,0.02,0.27')     # a 2 cm box in the air: nothing is left
    with cropped(model, box, *empty_air):
        air = render_view(model, frame, box=box)
    lo, hi = parse_box(','.join(str(v) for v in (*box.min_xyz, *box.max_xyz)))
    with cropped(model, box, lo, hi):
        whole = render_view(model, frame, box=box)
    assert full['accumulation'].mean() > 0.5 and air['accumulation'].max() < 0.05
    assert np.abs(whole['rgb'] - full['rgb']).mean() < 0.05
    assert 'get_density' not in vars(model.field)          # restored after the crop
