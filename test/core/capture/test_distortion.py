"""Lens distortion: a distorted synthetic view undistorts to the pinhole view of the new K."""
import numpy as np
import pytest

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.capture.distortion import Distortion, Undistorter, distort_image, from_camera_info, from_dataset

W, H = 160, 120


@pytest.fixture(scope='module')
def scene():
    return scenes.make_scene(seed=3, object_names=['mug', 'box', 'ball'], num_views=2, width=W, height=H)


def psnr(a, b, mask=None):
    """PSNR (dB) of two uint8 images, over `mask` when given."""
    difference = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = difference[mask].mean() if mask is not None else difference.mean()
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize('distortion', [
    Distortion('plumb_bob', (-0.28, 0.09, 0.001, -0.0005, 0.0)),          # a RealSense-like colour lens, stronger
    Distortion('rational_polynomial', (-0.3, 0.1, 0.0, 0.0, 0.0, 0.02, 0.01, 0.0)),
    Distortion('equidistant', (-0.05, 0.01, 0.0, 0.0)),
], ids=lambda d: d.model)
def test_a_distorted_view_undistorts_to_the_pinhole_view_of_the_new_k(scene, distortion):
    """Distort a rendered view with known coefficients, undistort it, compare with rendering at K_new directly.

    Ignoring the distortion (treating the distorted image as a pinhole image at K) is clearly worse.
    """
    frame = scene.frames[0]
    K = scenes.pinhole_intrinsics(W, H, 70.0)
    K_wide = scenes.pinhole_intrinsics(3 * W, 3 * H, 150.0)          # sees everything the lens sees
    wide = scene.render(K_wide, frame.T_base_optical, 3 * W, 3 * H).image
    distorted = distort_image(wide, K_wide, K, distortion, W, H)
    undistorter = Undistorter(K, distortion, W, H)
    assert undistorter.matches(K, distortion, W, H) and not undistorter.matches(K, distortion, W + 1, H)
    undistorted = undistorter.image(distorted)
    truth = scene.render(undistorter.K_new, frame.T_base_optical, W, H).image
    ignored = scene.render(K, frame.T_base_optical, W, H).image
    good, bad = psnr(undistorted, truth), psnr(distorted, ignored)
    print(f'{distortion.model}: undistorted vs truth {good:.1f} dB; distorted taken as pinhole {bad:.1f} dB')
    assert good > 24.0 and good > bad + 5.0
    # nearest-value remap of a label image keeps only existing ids, and 0 outside
    labels = distort_image(scene.render(K_wide, frame.T_base_optical, 3 * W, 3 * H).labels.astype(np.uint16),
                           K_wide, K, distortion, W, H, interpolation=0)
    remapped = undistorter.nearest(labels)
    assert set(np.unique(remapped)) <= set(np.unique(labels)) | {0}


def test_camera_info_models_rectified_streams_and_bad_input():
    K = scenes.pinhole_intrinsics(W, H, 60.0)
    P = np.zeros((3, 4))
    P[:, :3] = K * [[0.9], [0.9], [1.0]]
    P[2, 2] = 1.0
    used, distortion = from_camera_info('plumb_bob', [0.0] * 5, K, P)                 # rectified: P wins
    assert distortion is None and np.allclose(used, P[:, :3])
    used, distortion = from_camera_info('plumb_bob', [0.1, 0.0, 0.0, 0.0, 0.0], K, P)
    assert np.allclose(used, K) and distortion.coefficients == (0.1, 0.0, 0.0, 0.0, 0.0)
    assert from_camera_info('plumb_bob', [-0.1, 0.02], K)[1].coefficients == (-0.1, 0.02, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match='unsupported distortion model'):
        from_camera_info('kannala_brandt_8', [0.1], K)
    with pytest.raises(ValueError, match='no distortion_model'):
        from_camera_info('', [0.1], K)
    with pytest.raises(ValueError, match='takes 4 coefficients'):
        Distortion('equidistant', (0.1, 0.1, 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match='finite'):
        Distortion('plumb_bob', (float('nan'),))


def test_dataset_camera_models():
    assert from_dataset({'camera_model': 'OPENCV', 'k1': 0.0}) is None
    opencv = from_dataset({'camera_model': 'OPENCV', 'k1': -0.1, 'k2': 0.02, 'p1': 0.001, 'p2': 0.002})
    assert opencv.model == 'rational_polynomial' and opencv.coefficients[:4] == (-0.1, 0.02, 0.001, 0.002)
    fisheye = from_dataset({'camera_model': 'OPENCV_FISHEYE'}, {'k1': 0.05, 'k4': 0.01})
    assert fisheye.model == 'equidistant' and fisheye.coefficients == (0.05, 0.0, 0.0, 0.01)
    assert from_dataset({'camera_model': 'PINHOLE', 'k1': 0.3}) is None
    with pytest.raises(ValueError, match='unsupported camera_model'):
        from_dataset({'camera_model': 'FULL_OPENCV'})


def test_a_dataset_with_opencv_distortion_is_read_undistorted(scene, tmp_path):
    """transforms.json with camera_model OPENCV and k1..p2: read_dataset returns the undistorted images at K_new."""
    import json

    from f3rm_ros.core.capture.frames import PosedFrame, read_dataset, write_dataset
    distortion = Distortion('rational_polynomial', (-0.25, 0.07, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    K = scenes.pinhole_intrinsics(W, H, 70.0)
    K_wide = scenes.pinhole_intrinsics(3 * W, 3 * H, 150.0)
    frame = scene.frames[1]
    distorted = distort_image(scene.render(K_wide, frame.T_base_optical, 3 * W, 3 * H).image, K_wide, K,
                              distortion, W, H)
    root = write_dataset(tmp_path / 'phone', [PosedFrame(distorted, K, frame.T_base_optical)])
    meta = json.loads((root / 'transforms.json').read_text())
    meta.update({'camera_model': 'OPENCV', 'k1': -0.25, 'k2': 0.07, 'p1': 0.0, 'p2': 0.0})
    (root / 'transforms.json').write_text(json.dumps(meta))
    read = read_dataset(root)[0]
    undistorter = Undistorter(K, distortion, W, H)
    assert np.allclose(read.K, undistorter.K_new)
    truth = scene.render(read.K, frame.T_base_optical, W, H).image
    assert psnr(read.image, truth) > 24.0
