"""Predicted normals (model.predict_normals): in rendered pictures and as normal_x/y/z of the heatmap cloud."""
import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from f3rm_ros.core.config import make_config
from f3rm_ros.core.query.answer import FieldQuerier
from f3rm_ros.core.scenes.table import make_scene
from f3rm_ros.ros import answers
from f3rm_ros.ros import conversions as cv

from study_support import labels_trainer

STEPS = 80


def test_cloud_with_normals_has_pcl_fields_and_decodes():
    """normal_x/y/z follow similarity at 20, 24, 28 (point_step 32); without normals the layout is unchanged."""
    xyz = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], np.float32)
    normals = np.array([[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]], np.float32)
    msg = cv.make_point_cloud2(xyz, None, np.array([0.25, 0.75]), 'base_link', 0.0, normals=normals)
    assert [(f.name, f.offset) for f in msg.fields][5:] == [('normal_x', 20), ('normal_y', 24), ('normal_z', 28)]
    assert msg.point_step == 32 and msg.row_step == 64 and len(msg.data) == 64
    assert bytes(msg.data[32 + 20:32 + 32]) == np.array([0.6, 0.8, 0.0], '<f4').tobytes()  # 2nd point's normal
    np.testing.assert_array_equal(cv.point_cloud2_normals(msg), normals)
    xyz2, rgb2, similarity2 = cv.point_cloud2_to_arrays(msg)
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_allclose(similarity2, [0.25, 0.75])
    plain = cv.make_point_cloud2(xyz, None, None, 'base_link', 0.0)
    assert plain.point_step == 20 and cv.point_cloud2_normals(plain) is None
    with pytest.raises(ValueError, match='normals'):
        cv.make_point_cloud2(xyz, None, None, 'base_link', 0.0, normals=normals[:1])


@pytest.fixture(scope='module')
def trained():
    """Train a tiny table with nerfacto's predicted normals on."""
    torch.manual_seed(0)   # 80 CPU steps: the same field whatever ran before in the suite
    scene = make_scene(seed=5, object_names=['box'], num_views=16, width=80, height=60)
    trainer, teacher = labels_trainer(scene, make_config('cpu-tiny', overrides={
        'trainer': {'steps': STEPS, 'rays_per_batch': 384}, 'model': {'predict_normals': True}}))
    losses = [{k: float(v) for k, v in trainer.step().items()} for _ in range(STEPS)]
    return scene, teacher, trainer, losses


@pytest.mark.slow
def test_normals_train_and_render(trained, tmp_path):
    """Orientation and predicted-normal losses are trained; pictures of both normals are rendered in [0, 1]."""
    scene, _, trainer, losses = trained
    assert 'orientation_loss' in losses[0] and 'pred_normal_loss' in losses[0]
    frame = scene.frames[0]
    out = trainer.render(frame.T_base_optical, frame.K, frame.width, frame.height,
                         names=('rgb', 'normals', 'pred_normals'))
    for name in ('normals', 'pred_normals'):
        assert out[name].shape == (60, 80, 3) and 0.0 <= out[name].min() and out[name].max() <= 1.0
    from f3rm_ros.core.training.offline import write_view_renders
    paths = write_view_renders(trainer, frame, tmp_path)['paths']   # what `f3rm-ros train` writes
    assert paths['normals'].endswith('heldout_normals.png') and (tmp_path / 'heldout_normals.png').is_file()


@pytest.mark.slow
def test_heatmap_cloud_carries_unit_normals_pointing_up_on_the_table(trained):
    """The query's heatmap has a unit normal per point; on the table top most point up; the answer's cloud has them."""
    scene, teacher, trainer, _ = trained
    querier = FieldQuerier(trainer.model, teacher, trainer.config, lock=trainer.lock)
    result = querier.query('box')
    assert result.status == 'found', result.reason
    heatmap = result.heatmap
    assert heatmap.normals is not None and heatmap.normals.shape == (len(heatmap), 3)
    np.testing.assert_allclose(np.linalg.norm(heatmap.normals, axis=1), 1.0, atol=1e-4)
    box = scene.objects['box']
    centre, extent = np.asarray(box['center']), np.asarray(box['extent'])
    away = np.any(np.abs(heatmap.points[:, :2] - centre[:2]) > extent[:2] / 2 + 0.03, axis=1)
    table = away & (np.abs(heatmap.points[:, 2]) < 0.015)   # the synthetic table's top is z = 0
    up = np.median(heatmap.normals[table, 2])
    print(f'{table.sum()} table-top voxels, median normal z {up:.2f}')
    assert table.sum() > 20 and up > 0.5
    header = Header(frame_id='base_link')
    answer = answers.answer_message(1, header, 'box', 'found', 'ok', result)
    decoded = cv.point_cloud2_normals(answer.heatmap)
    np.testing.assert_allclose(decoded, heatmap.normals, atol=1e-6)
    with torch.no_grad():
        assert trainer.model.normals_at(torch.zeros((4, 3))).shape == (4, 3)
