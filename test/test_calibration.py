"""``f3rm-ros check-calibration``: the workspace box drawn into camera images, and what it says about poses."""
import numpy as np

from f3rm_ros.core import scenes
from f3rm_ros.core.calibration import box_corners, box_in_view, depth_inside_box, draw_workspace, project
from f3rm_ros.core.frames import PosedFrame, write_dataset


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
