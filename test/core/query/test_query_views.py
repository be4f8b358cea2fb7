"""No ghost centroids: a cluster the keyframes never showed is not reported (core/query/views.py).

The analytic table holds the apple, and a ghost: a blob with the ball's features hanging 8 cm above the table
where every camera saw the table behind it (a NeRF floater). Alone, it is the only answer for "ball" (noted
as floating, since an object whose underside has not formed looks the same). The keyframes are depth maps
ray-cast (open3d) from the true scene: the table and the apple.
"""
import numpy as np
import open3d as o3d
import pytest

from analytic_field import SPHERES, TABLE_BOTTOM, TABLE_TOP, analytic_scene
from f3rm_ros.core.capture.frames import PosedFrame
from f3rm_ros.core.query.answer import FieldQuerier
from f3rm_ros.core.query.views import view_support
from f3rm_ros.core.scenes.table import look_at

GHOST = np.array([0.36, 0.16, 0.10])
APPLE = SPHERES['apple']
K = np.array([[80.0, 0.0, 40.0], [0.0, 80.0, 30.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 80, 60


def true_scene():
    """open3d ray-casting scene of the table slab and the apple (no ghost)."""
    scene = o3d.t.geometry.RaycastingScene()
    slab = o3d.geometry.TriangleMesh.create_box(1.2, 1.2, TABLE_TOP - TABLE_BOTTOM)
    slab.translate((-0.1, -0.6, TABLE_BOTTOM))
    meshes = [slab, o3d.geometry.TriangleMesh.create_sphere(APPLE[1], 40).translate(APPLE[0])]
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
    """Give the analytic table with the apple and the ghost blob (the ball's features) above it."""
    config, teacher, model = analytic_scene(spheres={'apple': APPLE})
    model.add_speck(GHOST, 0.02)
    return config, teacher, model


def test_without_keyframes_the_ghost_is_an_answer(haunted):
    config, teacher, model = haunted
    result = FieldQuerier(model, teacher, config).query('ball')
    assert result.found and np.linalg.norm(result.clusters[0].centroid - GHOST) < 0.02     # what the rule must catch
    assert 'floating' in result.notes[0]


def test_the_keyframes_drop_the_ghost_and_keep_the_apple(haunted, ring):
    config, teacher, model = haunted
    querier = FieldQuerier(model, teacher, config, keyframes=lambda: ring)
    ghost = querier.query('ball')
    assert ghost.status == 'not_present' and not ghost.clusters
    assert 'no keyframe bore out' in ghost.reason and '0 keyframe(s) saw its surface' in ghost.reason, ghost.reason
    apple = querier.query('apple')
    assert apple.found and len(apple.clusters) == 1
    assert np.linalg.norm(apple.clusters[0].centroid - APPLE[0]) < 0.02


def test_the_support_counts(haunted, ring):
    config, teacher, model = haunted
    querier = FieldQuerier(model, teacher, config)
    querier.prepare()
    points, tolerance = querier.voxels.points, config.query.support_tolerance
    ghost = view_support(points[np.linalg.norm(points - GHOST, axis=1) < 0.025], ring, tolerance)
    assert ghost.in_view >= 6 and ghost.supporting == 0 and ghost.ghost(2)
    apple = view_support(points[np.linalg.norm(points - APPLE[0], axis=1) < APPLE[1]], ring, tolerance)
    assert apple.supporting == apple.in_view >= 6 and not apple.ghost(2)


def test_one_keyframe_is_not_enough_and_the_reason_says_so(haunted, ring):
    config, teacher, model = haunted
    seen_once = [frame for frame in ring if view_support(np.array([APPLE[0]]), [frame], 0.1).in_view][:1]
    result = FieldQuerier(model, teacher, config, keyframes=lambda: seen_once).query('apple')
    assert result.status == 'not_present' and 'no keyframe bore out' in result.reason, result.reason
    assert '1 keyframe(s) saw its surface' in result.reason
    config.query.min_support_views = 1
    assert FieldQuerier(model, teacher, config, keyframes=lambda: seen_once).query('apple').found


def test_masked_pixels_give_no_evidence_and_without_depth_in_view_is_support(haunted, ring):
    """Take no evidence from masked pixels, and support from being in view where there is no depth.

    Masked pixels: a gripper in view, or a region a scene change took from the older keyframes.
    """
    config, teacher, model = haunted
    querier = FieldQuerier(model, teacher, config)
    querier.prepare()
    apple_voxels = querier.voxels.points[np.linalg.norm(querier.voxels.points - APPLE[0], axis=1) < APPLE[1]]
    masked = []
    for frame in ring:
        hidden = np.zeros((HEIGHT, WIDTH), bool)
        local = np.linalg.inv(frame.T_base_optical) @ np.append(APPLE[0], 1.0)
        u, v = (K @ (local[:3] / local[2]))[:2].astype(int)
        hidden[max(0, v - 20):v + 20, max(0, u - 20):u + 20] = True
        masked.append(PosedFrame(image=frame.image, K=K, T_base_optical=frame.T_base_optical, depth=frame.depth,
                                 mask=~hidden))
    assert view_support(apple_voxels, masked, 0.02).in_view == 0
    no_depth = [PosedFrame(image=f.image, K=K, T_base_optical=f.T_base_optical) for f in ring]
    support = view_support(apple_voxels, no_depth, 0.02)
    assert support.supporting == support.in_view >= 6
