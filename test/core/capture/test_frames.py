"""Frame store and nerfstudio dataset I/O."""
import json
import threading

import numpy as np
import pytest

from f3rm_ros.core.capture.frames import DatasetWriter, FrameStore, PosedFrame, read_dataset, write_dataset
from f3rm_ros.core.geometry import optical_to_opengl, pose_matrix


def make_frame(i, h=24, w=32, with_extras=True):
    rng = np.random.default_rng(i)
    T = pose_matrix([0.1 * i, 0.2, 0.3], [0, 0, np.sin(0.1 * i), np.cos(0.1 * i)])
    return PosedFrame(
        image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        K=np.array([[30.0, 0, 16], [0, 31.0, 12], [0, 0, 1]]), T_base_optical=T, stamp=1.5 + i,
        depth=rng.uniform(0.2, 2.0, (h, w)).astype(np.float32) if with_extras else None,
        labels=rng.integers(0, 4, (h, w)).astype(np.uint16) if with_extras else None,
    )


def test_posed_frame_validates_inputs():
    frame = make_frame(0)
    with pytest.raises(ValueError, match='uint8'):
        PosedFrame(frame.image.astype(np.float32), frame.K, frame.T_base_optical)
    with pytest.raises(ValueError, match='focal'):
        PosedFrame(frame.image, np.zeros((3, 3)), frame.T_base_optical)
    with pytest.raises(ValueError, match='NaN'):
        PosedFrame(frame.image, frame.K, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match='depth shape'):
        PosedFrame(frame.image, frame.K, frame.T_base_optical, depth=np.zeros((3, 3), np.float32))


def test_store_is_bounded_by_capacity_and_ram_budget():
    store = FrameStore(capacity=3)
    for i in range(3):
        assert store.add(make_frame(i)) == i
    assert store.full
    with pytest.raises(OverflowError):
        store.add(make_frame(3))
    one_image = make_frame(0).image.nbytes
    budget = FrameStore(capacity=100, ram_budget_bytes=2 * one_image)
    budget.add(make_frame(0))
    budget.add(make_frame(1))
    assert budget.full


def test_store_rejects_another_resolution():
    store = FrameStore(capacity=4)
    store.add(make_frame(0))
    with pytest.raises(ValueError, match='store holds'):
        store.add(make_frame(1, h=10, w=10))


def test_store_grows_while_a_reader_takes_snapshots():
    store = FrameStore(capacity=200)
    seen = []

    def reader():
        while len(store) < 200:
            frames = store.snapshot()
            seen.append(len(frames))
            assert all(f.image.shape == (24, 32, 3) for f in frames)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(200):
        store.add(make_frame(i % 7, with_extras=False))
    thread.join()
    assert seen == sorted(seen)  # snapshots never shrink or reorder


def test_dataset_round_trip_keeps_images_poses_intrinsics_depth_and_labels(tmp_path):
    frames = [make_frame(i) for i in range(3)]
    write_dataset(tmp_path, frames, metadata={'labels': {'1': 'mug'}})
    meta = json.loads((tmp_path / 'transforms.json').read_text())
    assert meta['labels'] == {'1': 'mug'}
    # On disk the pose is nerfstudio's OpenGL camera-to-world.
    np.testing.assert_allclose(meta['frames'][1]['transform_matrix'], optical_to_opengl(frames[1].T_base_optical))
    back = read_dataset(tmp_path)
    assert len(back) == 3
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.T_base_optical, b.T_base_optical, atol=1e-12)
        np.testing.assert_allclose(a.K, b.K)
        np.testing.assert_allclose(a.depth, b.depth, atol=0.0005 + 1e-6)  # stored in whole millimetres
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.stamp == b.stamp


def test_writer_appends_atomically_and_resumes(tmp_path):
    writer = DatasetWriter(tmp_path)
    writer.append(make_frame(0, with_extras=False))
    # A second writer (a restarted process) continues the same dataset.
    again = DatasetWriter(tmp_path)
    again.append(make_frame(1, with_extras=False))
    assert len(read_dataset(tmp_path)) == 2
    assert not list(tmp_path.glob('*.tmp'))


def test_one_camera_is_also_written_at_the_top_level_for_readers_without_per_frame_intrinsics(tmp_path):
    writer = DatasetWriter(tmp_path)
    writer.append(make_frame(0, with_extras=False))
    writer.append(make_frame(1, with_extras=False))
    meta = json.loads((tmp_path / 'transforms.json').read_text())
    assert {k: meta[k] for k in ('fl_x', 'fl_y', 'cx', 'cy', 'w', 'h')} == {
        'fl_x': 30.0, 'fl_y': 31.0, 'cx': 16.0, 'cy': 12.0, 'w': 32, 'h': 24}
    other = make_frame(2, with_extras=False)
    other.K = other.K * [[2], [2], [1]]          # a second camera: no single top-level answer any more
    writer.append(other)
    meta = json.loads((tmp_path / 'transforms.json').read_text())
    assert not {'fl_x', 'fl_y', 'cx', 'cy'} & set(meta) and meta['frames'][2]['fl_x'] == 60.0
    assert [f.K[0, 0] for f in read_dataset(tmp_path)] == [30.0, 30.0, 60.0]


def test_read_dataset_with_global_intrinsics_and_downscale(tmp_path):
    frames = [make_frame(i, with_extras=False) for i in range(2)]
    write_dataset(tmp_path, frames)
    meta = json.loads((tmp_path / 'transforms.json').read_text())
    for entry in meta['frames']:
        for key in ('fl_x', 'fl_y', 'cx', 'cy', 'w', 'h'):
            meta[key] = entry.pop(key)
    (tmp_path / 'transforms.json').write_text(json.dumps(meta))
    back = read_dataset(tmp_path, downscale=2)
    assert back[0].image.shape == (12, 16, 3)
    np.testing.assert_allclose(back[0].K[0], [15.0, 0, 8])


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='transforms.json'):
        read_dataset(tmp_path / 'nothing')


def test_workspace_from_the_cameras_when_there_is_no_depth():
    """A scan with neither depth nor a workspace entry: the box sits where the optical axes converge.

    The synthetic scan looks at the table centre from 0.4-0.7 m: the box contains every object's centre, and
    a scan whose cameras all look the same way is refused with a reason.
    """
    from f3rm_ros.core.scenes import table as scenes
    from f3rm_ros.core.capture.frames import cameras_workspace, dataset_workspace
    scene = scenes.make_scene(seed=0, object_names=['mug', 'ball'], num_views=12, width=64, height=48)
    frames = [PosedFrame(f.image, f.K, f.T_base_optical) for f in scene.frames]       # no depth
    lo, hi = dataset_workspace({}, frames)
    assert np.allclose((lo, hi), cameras_workspace(frames))
    for obj in scene.objects.values():
        assert np.all(obj['center'] > lo) and np.all(obj['center'] < hi), (obj['center'], lo, hi)
    assert np.all(hi - lo < 1.5)                       # a tabletop, not a room
    same_way = [PosedFrame(f.image, f.K, frames[0].T_base_optical @ np.diag([1, 1, 1, 1.0])) for f in frames[:3]]
    for index, frame in enumerate(same_way):
        frame.T_base_optical = frame.T_base_optical.copy()
        frame.T_base_optical[0, 3] += 0.1 * index
    with pytest.raises(ValueError, match='parallel'):
        cameras_workspace(same_way)
    with pytest.raises(ValueError, match='at least two camera views'):
        cameras_workspace(frames[:1])
