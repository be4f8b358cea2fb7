"""Synthetic tabletop scenes: reproducible layouts, ground truth that agrees with the rendered views."""
import itertools

import numpy as np
import pytest

from f3rm_ros.core.capture.frames import read_dataset, read_metadata, write_dataset
from f3rm_ros.core.geometry import WorkspaceBox
from f3rm_ros.core.scenes.table import CATALOGUE, TABLE_CENTER, TABLE_SIZE, look_at, make_scene


@pytest.fixture(scope='module')
def scene():
    """Scan the default scene: five objects, 40 views at 160x120."""
    return make_scene(seed=0)


@pytest.fixture(scope='module')
def catalogue_scene():
    """Scan every catalogue object on one table, 12 views."""
    return make_scene(seed=1, object_names=list(CATALOGUE), num_views=12)


def back_project(frame, mask):
    """Back-project the pixels of `mask` (z-depth through pixel centres) to points in base_link."""
    v, u = np.nonzero(mask)
    pixels = np.stack([u + 0.5, v + 0.5, np.ones_like(u, dtype=float)], axis=1)
    points_optical = (pixels @ np.linalg.inv(frame.K).T) * frame.depth[v, u][:, None]
    return points_optical @ frame.T_base_optical[:3, :3].T + frame.T_base_optical[:3, 3]


def test_same_seed_repeats_and_other_seeds_differ():
    """A seed names a scene: same seed, same table and views; another seed, another layout."""
    first, again, other = (make_scene(seed=s, num_views=3, width=64, height=48) for s in (7, 7, 8))
    assert list(first.objects) == list(again.objects)
    for name in first.objects:
        np.testing.assert_array_equal(first.objects[name]['center'], again.objects[name]['center'])
    for a, b in zip(first.frames, again.frames):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.T_base_optical, b.T_base_optical)
    moved = [name for name in first.objects if name not in other.objects
             or np.linalg.norm(first.objects[name]['center'] - other.objects[name]['center']) > 0.01]
    assert moved, 'seed 8 laid out the same table as seed 7'
    assert not np.allclose(first.frames[0].T_base_optical, other.frames[0].T_base_optical)


@pytest.mark.parametrize('seed', range(4))
def test_objects_rest_on_the_table_inside_the_workspace(seed):
    """Every object box sits on the table top (bottom at z = 0) and inside the workspace."""
    result = make_scene(seed=seed, num_objects=6, num_views=1, width=32, height=24)
    box = WorkspaceBox.from_config(result.workspace)
    assert len(result.objects) == 6
    for name, obj in result.objects.items():
        lo, hi = obj['center'] - obj['extent'] / 2, obj['center'] + obj['extent'] / 2
        assert box.contains(np.stack([lo, hi])).all(), f'{name} box {lo}..{hi} leaves the workspace'
        assert abs(lo[2]) < 1e-6, f'{name} floats or sinks: bottom at z={lo[2]}'
        assert np.all(np.abs(obj['center'][:2] - TABLE_CENTER[:2]) < np.array(TABLE_SIZE[:2]) / 2)
        assert 0.03 <= obj['extent'].max() <= 0.13, f'{name} is {obj["extent"]} m, not a tabletop object'


def test_objects_keep_their_distance(catalogue_scene):
    """Footprints are laid out >= 3 cm apart: seen surfaces of two objects never come closer."""
    cell = 0.005
    footprints = {}
    for obj in catalogue_scene.objects.values():
        points = np.concatenate([back_project(frame, frame.labels == obj['label'])[:, :2]
                                 for frame in catalogue_scene.frames])
        # Occupied 5 mm cells keep the pairwise distances cheap; each centre is within 3.6 mm of a point.
        footprints[obj['label']] = (np.unique(np.floor(points / cell), axis=0) + 0.5) * cell
    for a, b in itertools.combinations(footprints, 2):
        gap = np.linalg.norm(footprints[a][:, None] - footprints[b][None], axis=-1).min()
        names = catalogue_scene.labels[a], catalogue_scene.labels[b]
        assert gap > 0.03 - 2 * 0.0036, f'{names[0]} and {names[1]} are {gap:.3f} m apart'


def test_depth_back_projects_into_the_labelled_object(scene):
    """Z-depth through K and T_base_optical puts labelled pixels inside their object's box."""
    table_label = next(label for label, name in scene.labels.items() if name == 'table')
    for frame in scene.frames:
        for name, obj in scene.objects.items():
            points = back_project(frame, frame.labels == obj['label'])
            outside = np.abs(points - obj['center']) > obj['extent'] / 2 + 0.003
            stray = outside.any(axis=1).sum()
            assert not stray, f'{frame.name}: {stray} {name} pixels land off its box'
        table_points = back_project(frame, frame.labels == table_label)
        assert np.abs(table_points[:, 2]).max() < 1e-3, f'{frame.name}: table pixels are not at z = 0'


def test_each_object_is_seen_in_most_views(scene, catalogue_scene):
    """The scan keeps every object in frame in at least three views out of four."""
    for result in (scene, catalogue_scene):
        for name, obj in result.objects.items():
            seen = [np.count_nonzero(frame.labels == obj['label']) >= 10 for frame in result.frames]
            assert np.mean(seen) >= 0.75, f'{name} is in only {np.mean(seen):.0%} of the views'


def test_catalogue_objects_render_in_distinct_colours(catalogue_scene):
    """At least seven catalogue objects, each telling apart from the others by mean colour."""
    assert len(CATALOGUE) >= 7
    colours = {}
    for name, obj in catalogue_scene.objects.items():
        frames = catalogue_scene.frames
        pixels = np.concatenate([frame.image[frame.labels == obj['label']] for frame in frames])
        colours[name] = pixels.astype(float).mean(axis=0)
    for a, b in itertools.combinations(colours, 2):
        distance = np.linalg.norm(colours[a] - colours[b])
        assert distance > 40, f'{a} {colours[a]} and {b} {colours[b]} look alike'


def test_look_at_uses_optical_axes():
    """look_at builds x right, y down, z forward, and refuses a view straight along up."""
    # Looking along +x from 1 m up: right is -y, image down is -z.
    T = look_at(eye=[0.0, 0.0, 1.0], target=[2.0, 0.0, 1.0])
    np.testing.assert_allclose(T[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        look_at(eye=[0.0, 0.0, 1.0], target=[0.0, 0.0, 0.0])


def test_cameras_circle_above_and_look_at_the_table(scene):
    """Scan cameras sweep once around the table, upright, their optical axes on the table."""
    azimuths = []
    for frame in scene.frames:
        rotation, eye = frame.T_base_optical[:3, :3], frame.T_base_optical[:3, 3]
        forward, down = rotation[:, 2], rotation[:, 1]
        assert forward[2] < 0, f'{frame.name} looks upwards'
        hit = eye + forward * (-eye[2] / forward[2])
        on_table = np.all(np.abs(hit[:2] - TABLE_CENTER[:2]) < np.array(TABLE_SIZE[:2]) / 2)
        assert on_table, f'{frame.name} looks at {hit}, off the table'
        # The optical axis passes close to the middle of the table, a little above the top.
        to_middle = TABLE_CENTER + [0.0, 0.0, 0.025] - eye
        miss = np.linalg.norm(to_middle - forward * (to_middle @ forward))
        assert miss < 0.06, f'{frame.name} looks {miss:.3f} m away from the table centre'
        assert -down[2] > 0.3, f'{frame.name}: image up is not world up'
        assert 0.4 < np.linalg.norm(eye - TABLE_CENTER) < 0.7
        # Rendering agrees: the top rows see farther (the room), the bottom rows the near table.
        assert frame.depth[0].mean() > frame.depth[-1].mean()
        azimuths.append(np.arctan2(eye[1] - TABLE_CENTER[1], eye[0] - TABLE_CENTER[0]))
    steps = np.diff(np.unwrap(azimuths))
    assert np.all(steps > 0) and 1.8 * np.pi < steps.sum() < 2.1 * np.pi, 'cameras do not sweep around once'


def test_frames_are_stamped_and_named_in_order(scene):
    """Frames are 0.1 s apart from a non-zero stamp, named frame_00000.., typed depth/labels."""
    stamps = np.array([frame.stamp for frame in scene.frames])
    np.testing.assert_allclose(np.diff(stamps), 0.1)
    assert stamps[0] > 0
    assert [frame.name for frame in scene.frames[:2]] == ['frame_00000', 'frame_00001']
    assert scene.frames[0].depth.dtype == np.float32 and scene.frames[0].labels.dtype == np.uint16


def test_render_reproduces_a_scan_view_and_renders_new_poses(scene):
    """scene.render repeats a scan view exactly and shows something else from another pose."""
    frame = scene.frames[5]
    again = scene.render(frame.K, frame.T_base_optical, frame.width, frame.height)
    np.testing.assert_array_equal(again.image, frame.image)
    np.testing.assert_array_equal(again.labels, frame.labels)
    elsewhere = scene.render(frame.K, scene.frames[20].T_base_optical, frame.width, frame.height)
    assert np.abs(elsewhere.image.astype(int) - frame.image).mean() > 5


def test_dataset_round_trip_keeps_poses_depth_labels_and_truth(scene, tmp_path):
    """write_dataset + dataset_metadata give a folder that reads back with the ground truth."""
    write_dataset(tmp_path, scene.frames[:3], scene.dataset_metadata())
    meta = read_metadata(tmp_path)
    assert meta['labels'] == {str(label): name for label, name in scene.labels.items()}
    assert 'table' in meta['labels'].values()
    assert meta['workspace'] == {'min': list(scene.workspace.min_xyz), 'max': list(scene.workspace.max_xyz)}
    for name, obj in scene.objects.items():
        np.testing.assert_allclose(meta['objects'][name]['center'], obj['center'])
    for original, loaded in zip(scene.frames, read_dataset(tmp_path)):
        np.testing.assert_allclose(loaded.T_base_optical, original.T_base_optical, atol=1e-9)
        np.testing.assert_array_equal(loaded.image, original.image)
        np.testing.assert_array_equal(loaded.labels, original.labels)
        assert np.abs(loaded.depth - original.depth).max() <= 0.001 + 1e-6  # stored in whole millimetres


def test_bad_object_requests_are_refused():
    """Unknown, repeated or too many objects are refused with a ValueError."""
    with pytest.raises(ValueError, match='unicorn'):
        make_scene(object_names=['mug', 'unicorn'], num_views=1)
    with pytest.raises(ValueError):
        make_scene(object_names=['mug', 'mug'], num_views=1)
    with pytest.raises(ValueError):
        make_scene(num_objects=len(CATALOGUE) + 1, num_views=1)
