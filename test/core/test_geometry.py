"""Frame conventions: optical <-> OpenGL, quaternions, workspace box <-> field unit box."""
import numpy as np
import pytest

from f3rm_ros.core import geometry
from f3rm_ros.core.geometry import WorkspaceBox


def random_pose(rng):
    q = rng.normal(size=4)
    return geometry.pose_matrix(rng.normal(size=3), q / np.linalg.norm(q))


def test_optical_to_opengl_flips_y_and_z_axes_only():
    T = np.eye(4)
    T[:3, 3] = [1, 2, 3]
    gl = geometry.optical_to_opengl(T)
    # OpenGL camera looks along -z: its -z axis must be the optical +z (forward) axis.
    np.testing.assert_allclose(-gl[:3, 2], T[:3, 2])
    np.testing.assert_allclose(-gl[:3, 1], T[:3, 1])
    np.testing.assert_allclose(gl[:3, 0], T[:3, 0])
    np.testing.assert_allclose(gl[:3, 3], [1, 2, 3])


def test_optical_opengl_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(10):
        T = random_pose(rng)
        np.testing.assert_allclose(geometry.opengl_to_optical(geometry.optical_to_opengl(T)), T, atol=1e-12)


def test_quaternion_known_rotation_and_round_trip():
    s = np.sqrt(0.5)
    R = geometry.quaternion_to_matrix([0, 0, s, s])  # 90 degrees about z
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[3])
        np.testing.assert_allclose(geometry.matrix_to_quaternion(geometry.quaternion_to_matrix(q)), q, atol=1e-9)


def test_check_rigid_rejects_nan_and_scaled_rotations():
    T = np.eye(4)
    geometry.check_rigid(T)
    bad = T.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        geometry.check_rigid(bad)
    scaled = T.copy()
    scaled[:3, :3] *= 2
    with pytest.raises(ValueError, match='orthonormal'):
        geometry.check_rigid(scaled)


def test_workspace_box_maps_longest_side_to_unit_box_and_back():
    box = WorkspaceBox(np.array([0.2, -0.3, -0.02]), np.array([0.8, 0.3, 0.3]))
    corners = box.to_field(np.array([box.min_xyz, box.max_xyz]))
    assert np.isclose(np.abs(corners).max(), 1.0)
    assert np.all(np.abs(corners) <= 1.0 + 1e-12)
    rng = np.random.default_rng(2)
    points = rng.uniform(-1, 1, size=(100, 3))
    np.testing.assert_allclose(box.to_base(box.to_field(points)), points, atol=1e-12)
    T = random_pose(rng)
    np.testing.assert_allclose(box.pose_to_base(box.pose_to_field(T)), T, atol=1e-12)
    # Rotation is untouched; the similarity transform only moves and scales the camera centre.
    np.testing.assert_allclose(box.pose_to_field(T)[:3, :3], T[:3, :3])


def test_workspace_box_rejects_inverted_bounds():
    with pytest.raises(ValueError, match='must exceed'):
        WorkspaceBox(np.array([0, 0, 0]), np.array([1, -1, 1]))


def test_grid_covers_box_at_voxel_size():
    box = WorkspaceBox(np.array([0.0, 0.0, 0.0]), np.array([0.7, 0.9, 0.35]))
    grid = box.grid(0.01)
    assert grid.shape == (70, 90, 35, 3)
    assert box.contains(grid.reshape(-1, 3)).all()


def test_backproject_pixel_centre_lands_on_optical_axis():
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    depth = np.zeros((80, 100), np.float32)
    depth[39, 49] = 2.0  # pixel centre (49.5, 39.5) is 0.5 px off the principal point
    T = np.eye(4)
    T[:3, 3] = [1, 0, 0]
    point = geometry.backproject(depth, K, T)[0]
    np.testing.assert_allclose(point, [1 - 0.5 / 100 * 2, -0.5 / 100 * 2, 2.0])


def test_resized_intrinsics_keep_pixel_centres():
    """A point seen at pixel (u, v) of a 640x480 image is at ((u + 0.5) / 4 - 0.5, ...) of the 160x120 one."""
    from f3rm_ros.core.geometry import resized_intrinsics
    K = np.array([[500.0, 0.0, 319.5], [0.0, 480.0, 239.5], [0.0, 0.0, 1.0]])
    point = np.array([0.1, -0.05, 1.3])
    uv = (K @ point)[:2] / point[2]
    small = resized_intrinsics(K, 640, 480, 160, 120)
    assert np.allclose((small @ point)[:2] / point[2], (uv + 0.5) / 4 - 0.5)
    assert np.allclose(small[:2, 2], [79.5, 59.5])   # the centre stays the centre


def _turns():
    """Exact 180° turns about x, y, z and oblique axes, straight-down cameras, and random rotations."""
    from scipy.spatial.transform import Rotation
    axes = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, -2, 3]]
    out = [Rotation.from_rotvec(np.pi * np.asarray(a, float) / np.linalg.norm(a)).as_matrix() for a in axes]
    for yaw in np.radians(np.arange(0, 360, 15)):             # optical z pointing at the table, any yaw
        c, s = np.cos(yaw), np.sin(yaw)
        out.append(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, -1.0]))
    out += list(Rotation.random(200, random_state=3).as_matrix())
    return out


def test_rotations_survive_matrix_quaternion_matrix_including_half_turns():
    """Every rotation, including exact half turns (where sign-copying conversions fail), round-trips to 1e-9."""
    for R in _turns():
        q = geometry.matrix_to_quaternion(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        assert np.abs(geometry.quaternion_to_matrix(q) - R).max() < 1e-9, R
