"""The ROS-free transform tree used for recorded scans: chains, inverses, interpolation, refusals."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from f3rm_ros.core.capture.transforms import TransformTree


def transform(x=0.0, y=0.0, z=0.0, yaw_deg=0.0):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler('z', yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = [x, y, z]
    return T


def test_a_chain_of_dynamic_and_static_edges_composes_at_the_stamp():
    tree = TransformTree(tolerance_s=0.01)
    hand_eye = transform(0.05, 0.0, 0.1, 90.0)
    tree.add('tool0', 'camera_color_optical_frame', 0.0, hand_eye, static=True)
    tree.add('base_link', 'tool0', 1.0, transform(x=0.4))
    tree.add('base_link', 'tool0', 1.1, transform(x=0.5, yaw_deg=10.0))
    T, how = tree.lookup('base_link', 'camera_color_optical_frame', 1.05)
    assert how == '2 transforms composed'
    assert np.allclose(T, transform(x=0.45, yaw_deg=5.0) @ hand_eye, atol=1e-12)
    inverse, _ = tree.lookup('camera_color_optical_frame', '/base_link', 1.05)   # tf2 tolerates a leading slash
    assert np.allclose(inverse, np.linalg.inv(T), atol=1e-12)
    assert tree.lookup('tool0', 'tool0', 5.0) == (pytest.approx(np.eye(4)), 'same frame')


def test_lookups_refuse_with_a_reason():
    tree = TransformTree(tolerance_s=0.01)
    tree.add('base_link', 'tool0', 1.0, transform(x=0.4))
    tree.add('base_link', 'tool0', 1.1, transform(x=0.5))
    T, why = tree.lookup('base_link', 'tool0', 2.0)
    assert T is None and 'not extrapolating' in why and 'base_link -> tool0' in why
    T, why = tree.lookup('base_link', 'camera', 1.05)
    assert T is None and 'no chain of transforms from base_link to camera' in why
    with pytest.raises(ValueError, match='two different frame names'):
        tree.add('a', 'a', 0.0, np.eye(4))
    with pytest.raises(ValueError, match='orthonormal'):
        tree.add('a', 'b', 0.0, np.diag([1.0, 1.0, -1.0, 1.0]))
