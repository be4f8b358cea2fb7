"""``f3rm-ros check-calibration``: the workspace box drawn into camera images, and what it says about poses."""
import numpy as np

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.capture.calibration import box_corners, box_in_view, depth_inside_box, draw_workspace, project
from f3rm_ros.core.capture.frames import PosedFrame, write_dataset

from repo_root import ROOT


def test_the_box_lands_on_the_table_only_with_the_right_pose(tmp_path):
    from f3rm_ros import cli
    scene = scenes.make_scene(seed=2, object_names=['mug'], num_views=3, width=96, height=72)
    lo, hi = scene.workspace.min_xyz, scene.workspace.max_xyz
    frame = scene.frames[0]
    right = depth_inside_box(frame, lo, hi)
    turn = np.eye(4)
    turn[:3, :3] = scenes.look_at(np.zeros(3), np.array([1.0, 0.3, 0.0]))[:3, :3] @ frame.T_base_optical[:3, :3].T
    wrong = PosedFrame(frame.image, frame.K, turn @ frame.T_base_optical, depth=frame.depth)
    off = depth_inside_box(wrong, lo, hi)
    print(f'depth points inside the box: right pose {right:.0%}, a wrong hand-eye rotation {off:.0%}')
    assert right > 0.6 and off < right - 0.3
    uv, z = project(box_corners(lo, hi), frame.K, frame.T_base_optical)
    assert np.all(z > 0) and box_in_view(frame, lo, hi) > 0
    picture = draw_workspace(frame, lo, hi, 'test')
    assert picture.shape[1] == frame.width and picture.shape[0] > frame.height
    assert np.any(np.all(picture == (255, 210, 0), axis=-1))                      # the box is drawn
    write_dataset(tmp_path / 'scan', scene.frames, scene.dataset_metadata())
    code = cli.main(['check-calibration', '--data', str(tmp_path / 'scan'), '--out', str(tmp_path / 'c.png')])
    assert code == 0 and (tmp_path / 'c.png').stat().st_size > 1000


def test_train_honours_workspace_and_says_where_the_box_came_from(tmp_path, monkeypatch, caplog):
    """--workspace overrides the dataset's entry; without both, a depth-free dataset's box follows its cameras."""
    import logging

    import pytest

    from f3rm_ros import cli
    from f3rm_ros.core.training import offline
    scene = scenes.make_scene(seed=2, object_names=['mug'], num_views=4, width=48, height=36)
    write_dataset(tmp_path / 'scan', scene.frames, scene.dataset_metadata())
    bare = [PosedFrame(f.image, f.K, f.T_base_optical, f.stamp, name=f.name) for f in scene.frames]
    write_dataset(tmp_path / 'bare', bare)                                     # no depth, no workspace entry
    boxes = []

    class Stop(Exception):
        pass

    def stub(config, *args, **kwargs):
        boxes.append((config.workspace.min_xyz, config.workspace.max_xyz))
        raise Stop()
    monkeypatch.setattr(offline, 'OnlineTrainer', stub)
    monkeypatch.setattr(offline, 'choose_teacher', lambda *args, **kwargs: (type('T', (), {'name': 'stub'})(), 'stub'))
    caplog.set_level(logging.INFO, logger='f3rm_ros.core.training.offline')
    with pytest.raises(Stop):
        cli.main(['train', '--data', str(tmp_path / 'scan'), '--preset', 'cpu-tiny', '--teacher', 'labels',
                  '--downscale', '1', '--workspace', '0', '-0.1', '0', '0.5', '0.1', '0.2'])
    assert boxes[-1] == ((0.0, -0.1, 0.0), (0.5, 0.1, 0.2)) and 'workspace from --workspace' in caplog.text
    with pytest.raises(Stop):
        cli.main(['train', '--data', str(tmp_path / 'bare'), '--preset', 'cpu-tiny', '--downscale', '1'])
    assert "where its cameras' optical axes converge" in caplog.text
    lo, hi = np.asarray(boxes[-1][0]), np.asarray(boxes[-1][1])
    assert np.all(hi > lo) and np.all(np.abs((lo + hi) / 2 - [0.5, 0.0, 0.05]) < 0.35)   # around the table


def test_robot_configs_set_only_declared_parameters_and_load(tmp_path):
    """config/robots/*.yaml: every capture parameter is one the node declares; the rest is a valid config."""
    import cv2
    import yaml

    from f3rm_ros.core.config import make_config
    from f3rm_ros.core.capture.handeye import hand_eye_from_parameters, load_hand_eye
    from f3rm_ros.ros.capture_node import CONFIG_SECTIONS, PARAMETERS
    from f3rm_ros.ros.params import declared_names
    root = ROOT / 'config' / 'robots'
    names = set(declared_names(PARAMETERS, CONFIG_SECTIONS))
    for name, base in (('ur5e_d435.yaml', 'base_link'), ('fr3_d405.yaml', 'fr3_link0')):
        data = yaml.safe_load((root / name).read_text())
        capture = data['capture']['ros__parameters']
        assert set(capture) <= names, f'{name}: not declared by the capture node: {set(capture) - names}'
        config = make_config('gpu', [root / name])
        assert config.workspace.base_frame == base and config.model.camera_optimizer == 'off'
        T = hand_eye_from_parameters(capture['hand_eye_xyz'], capture['hand_eye_quaternion_xyzw'])
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6)
        assert capture['image_transport'] == 'raw' and capture['pose_is_end_effector'] is True
    mask = cv2.imread(str(root / 'fr3_d405_gripper_mask_848x480.png'), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (480, 848) and 0.05 < (mask == 0).mean() < 0.3
    load_hand_eye(root / 'hand_eye_example.yaml')
