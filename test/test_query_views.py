"""No ghost centroids: a cluster the keyframes never showed is not reported (core/query/views.py).

The analytic table holds the apple and the ball, and a ghost: a blob with the ball's features resting on the
table where the cameras saw only table (a field can hold such density: a floater that settled, an object that
has since gone). The keyframes are depth maps ray-cast (open3d) from the true scene, without the ghost.
"""
import numpy as np
import open3d as o3d
import pytest

from analytic_field import SPHERES, TABLE_BOTTOM, TABLE_TOP, analytic_scene
from f3rm_ros.core.capture.frames import PosedFrame
from f3rm_ros.core.query.answer import FieldQuerier
from f3rm_ros.core.query.views import view_support

GHOST = np.array([0.36, 0.16, 0.02])
K = np.array([[80.0, 0.0, 40.0], [0.0, 80.0, 30.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 80, 60


def look_at(eye, target):
    """T_base_optical of a camera at `eye` looking at `target` (optical: z forward, y down)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([right, down, forward])
    pose[:3, 3] = eye
    return pose


def true_scene():
    """open3d ray-casting scene of the table slab and the two true spheres (no ghost)."""
    scene = o3d.t.geometry.RaycastingScene()
    slab = o3d.geometry.TriangleMesh.create_box(1.2, 1.2, TABLE_TOP - TABLE_BOTTOM)
    slab.translate((-0.1, -0.6, TABLE_BOTTOM))
    meshes = [slab] + [o3d.geometry.TriangleMesh.create_sphere(r, 40).translate(c) for c, r in SPHERES.values()]
    for mesh in meshes:
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return scene


def keyframe(scene, eye, target=np.array([0.5, 0.0, 0.03]), with_depth=True):
    """Return a PosedFrame at `eye` with the true scene's depth (optical z, metres; 0 where nothing was hit)."""
    pose = look_at(np.asarray(eye, float), target)
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        o3d.core.Tensor(K), o3d.core.Tensor(np.linalg.inv(pose)), WIDTH, HEIGHT).numpy()
    hit = scene.cast_rays(o3d.core.Tensor(rays))['t_hit'].numpy()
    points = rays[..., :3] + rays[..., 3:] * hit[..., None]
    depth = ((points - pose[:3, 3]) @ pose[:3, 2]).astype(np.float32)
    depth[~np.isfinite(hit)] = 0.0
    return PosedFrame(image=np.zeros((HEIGHT, WIDTH, 3), np.uint8), K=K, T_base_optical=pose,
                      depth=depth if with_depth else None)


@pytest.fixture(scope='module')
def ring():
    """Eight keyframes on a ring above the table, looking at its middle."""
    scene = true_scene()
    angles = np.radians(np.arange(0, 360, 45))
    return [keyframe(scene, [0.5 + 0.4 * np.cos(a), 0.4 * np.sin(a), 0.45]) for a in angles]


@pytest.fixture
def haunted():
    """Give the analytic table with the ghost blob (the ball's features) resting on it."""
    config, teacher, model = analytic_scene()
    model.add_speck(GHOST, 0.02)
    return config, teacher, model


def test_without_keyframes_the_ghost_is_an_answer(haunted):
    config, teacher, model = haunted
    result = FieldQuerier(model, teacher, config).query('ball')
    centroids = [c.centroid for c in result.clusters]
    assert any(np.linalg.norm(c - GHOST) < 0.02 for c in centroids), centroids     # what the rule must catch


def test_the_keyframes_drop_the_ghost_and_keep_the_ball(haunted, ring):
    config, teacher, model = haunted
    result = FieldQuerier(model, teacher, config, keyframes=lambda: ring).query('ball')
    assert result.found, result.reason
    assert len(result.clusters) == 1
    assert np.linalg.norm(result.clusters[0].centroid - SPHERES['ball'][0]) < 0.02


def test_the_ghosts_support_counts_say_why(haunted, ring):
    config, teacher, model = haunted
    querier = FieldQuerier(model, teacher, config, keyframes=lambda: ring)
    querier.prepare()
    near_ghost = np.linalg.norm(querier.voxels.points - GHOST, axis=1) < 0.015
    ghost = view_support(querier.voxels.points[near_ghost], ring, config.query.support_tolerance)
    assert ghost.in_view >= 6 and ghost.contradicting >= 6 and ghost.ghost(2)
    near_ball = np.linalg.norm(querier.voxels.points - SPHERES['ball'][0], axis=1) < SPHERES['ball'][1]
    ball = view_support(querier.voxels.points[near_ball], ring, config.query.support_tolerance)
    assert ball.supporting >= 6 and ball.contradicting == 0 and not ball.ghost(2)


def test_one_keyframe_is_not_enough_and_the_reason_says_so(haunted, ring):
    config, teacher, model = haunted
    model.specks.clear()
    seen_once = [frame for frame in ring
                 if view_support(np.array([SPHERES['ball'][0]]), [frame], 0.1).in_view][:1]
    result = FieldQuerier(model, teacher, config, keyframes=lambda: seen_once).query('ball')
    assert result.status == 'not_present' and 'no keyframe bore out' in result.reason, result.reason
    assert '1 keyframe(s) saw its surface' in result.reason
    config.query.min_support_views = 1
    assert FieldQuerier(model, teacher, config, keyframes=lambda: seen_once).query('ball').found


def test_masked_pixels_and_missing_depth_give_no_contradiction(haunted, ring):
    """Take no contradiction from masked pixels, and support from being in view where there is no depth.

    A region a scene change took from the old keyframes is masked in them: they no longer say it is empty.
    """
    config, teacher, model = haunted
    masked = []
    for frame in ring:
        hidden = np.zeros((HEIGHT, WIDTH), bool)
        local = np.linalg.inv(frame.T_base_optical) @ np.append(GHOST, 1.0)
        u, v = (K @ (local[:3] / local[2]))[:2].astype(int)
        hidden[max(0, v - 15):v + 15, max(0, u - 15):u + 15] = True
        masked.append(PosedFrame(image=frame.image, K=K, T_base_optical=frame.T_base_optical, depth=frame.depth,
                                 mask=~hidden))
    querier = FieldQuerier(model, teacher, config)
    querier.prepare()
    near_ghost = np.linalg.norm(querier.voxels.points - GHOST, axis=1) < 0.015
    assert view_support(querier.voxels.points[near_ghost], masked, 0.015).contradicting == 0
    no_depth = [PosedFrame(image=f.image, K=K, T_base_optical=f.T_base_optical) for f in ring]
    support = view_support(querier.voxels.points[near_ghost], no_depth, 0.015)
    assert support.supporting == support.in_view >= 6 and not support.ghost(2)
