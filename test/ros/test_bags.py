"""Recorded scans: a rosbag2 written with ``rosbags`` (mcap and sqlite3) imports to the live keyframes.

A synthetic table is recorded as a RealSense on an arm would publish it: colour (raw, or JPEG-free PNG
``compressed`` in the mcap bag), CameraInfo, aligned 16UC1 depth 7 ms after each colour frame, and poses on
``/tf`` (base_link → tool0, 50 Hz around each frame) and ``/tf_static`` (tool0 → the optical frame). The messages
are serialised by rclpy (standard CDR) and written with rosbags' Writer. ``f3rm-ros import-bag --tf`` must keep the
same keyframes (stamps, pixels, depth, poses) as a live capture fed the same messages, with the camera pose on
its pose topic instead of TF. A bag without the named topics is refused with its topic list.
"""
import array

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage

from f3rm_ros.core.capture import compressed

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.capture.session import CaptureSession, CaptureSettings
from f3rm_ros.core.capture.frames import read_dataset
from f3rm_ros.core.capture.handeye import hand_eye_matrix
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.bag_import import BagError, ImportSettings, import_bag
from f3rm_ros.ros.capture_inputs import CaptureInputs

rosbags = pytest.importorskip('rosbags')

W, H = 96, 72
FRAME = 'camera_color_optical_frame'
IMAGE, INFO = '/camera/camera/color/image_raw', '/camera/camera/color/camera_info'
DEPTH = '/camera/camera/aligned_depth_to_color/image_raw'
T_TOOL_OPTICAL = hand_eye_matrix([0.03, 0.0, 0.05], [0.0, 0.0, 0.7071067811865476, 0.7071067811865476])
GATE = {'min_sharpness': 0.0, 'min_interval_s': 0.5, 'min_translation': 0.05, 'min_rotation_deg': 10.0}


@pytest.fixture(scope='module')
def scene():
    return scenes.make_scene(seed=4, object_names=['mug', 'bowl'], num_views=8, width=W, height=H)


def scan_messages(scene, compressed_images):
    """[(log time s, topic, rclpy message or ('tf', transforms))] of the recorded scan, in recording order."""
    out = [(0.9, '/tf_static', [('tool0', FRAME, 0.9, T_TOOL_OPTICAL)])]
    for i, frame in enumerate(scene.frames):
        t = 1.0 + 0.6 * i
        T_base_tool = frame.T_base_optical @ np.linalg.inv(T_TOOL_OPTICAL)
        out.append((t - 0.02, '/tf', [('base_link', 'tool0', t - 0.02, T_base_tool)]))
        out.append((t, INFO, conv.K_to_camera_info(frame.K, W, H, t, FRAME)))
        if compressed_images:
            fmt, data = compressed.encode_colour(frame.image, 'png')
            msg = CompressedImage(format=fmt)
            msg.header = conv.make_header(FRAME, t)
            msg.data = array.array('B', data)
            out.append((t, IMAGE + '/compressed', msg))
        else:
            out.append((t, IMAGE, conv.rgb_to_image(frame.image, t, FRAME)))
        depth = conv.depth_to_image(frame.depth, t + 0.007, FRAME)
        raw = np.round(frame.depth * 1000).astype('<u2')
        depth.encoding, depth.step, depth.data = '16UC1', W * 2, conv.as_uint8_array(raw)
        out.append((t + 0.007, DEPTH, depth))
        out.append((t + 0.02, '/tf', [('base_link', 'tool0', t + 0.02, T_base_tool)]))
    return out


def write_bag(path, messages, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    typestore = get_typestore(Stores.ROS2_JAZZY)
    TFMessage = typestore.types['tf2_msgs/msg/TFMessage']
    TransformStamped = typestore.types['geometry_msgs/msg/TransformStamped']
    Header = typestore.types['std_msgs/msg/Header']
    Time = typestore.types['builtin_interfaces/msg/Time']
    Transform = typestore.types['geometry_msgs/msg/Transform']
    Vector3 = typestore.types['geometry_msgs/msg/Vector3']
    Quaternion = typestore.types['geometry_msgs/msg/Quaternion']
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    connections = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for stamp, topic, msg in messages:
            if topic.startswith('/tf'):
                transforms = []
                for parent, child, when, T in msg:
                    t = conv.matrix_to_transform(T)
                    stamp_msg = conv.seconds_to_stamp(when)
                    transforms.append(TransformStamped(
                        header=Header(stamp=Time(sec=stamp_msg.sec, nanosec=stamp_msg.nanosec), frame_id=parent),
                        child_frame_id=child,
                        transform=Transform(translation=Vector3(x=t.translation.x, y=t.translation.y,
                                                                z=t.translation.z),
                                            rotation=Quaternion(x=t.rotation.x, y=t.rotation.y, z=t.rotation.z,
                                                                w=t.rotation.w))))
                kind, data = 'tf2_msgs/msg/TFMessage', typestore.serialize_cdr(TFMessage(transforms=transforms),
                                                                               'tf2_msgs/msg/TFMessage')
            else:
                kind = type(msg).__module__.split('.')[0] + '/msg/' + type(msg).__name__
                data = serialize_message(msg)
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, kind, typestore=typestore)
            writer.write(connections[topic], int(round(stamp * 1e9)), bytes(data))
    return path


def live_keyframes(messages):
    """Return what a live capture node keeps from the same messages, with the camera pose on its pose topic."""
    clock = [100.0]
    session = CaptureSession(CaptureSettings(max_stamp_skew_s=0.0, **GATE), clock=lambda: clock[0])
    inputs = CaptureInputs(session, 'base_link', lambda *problem: None)
    kept = []
    tool = {}
    for stamp, topic, msg in messages:
        if topic.startswith('/tf'):
            for parent, child, when, T in msg:
                tool[round(when, 3)] = T
            continue
        if topic == INFO:
            kept += inputs.camera_info(msg)
        elif topic.startswith(IMAGE):
            T_base_tool = tool[round(stamp - 0.02, 3)]               # the arm's pose at the image (it holds still)
            kept += inputs.pose(PoseStamped(header=conv.make_header('base_link', stamp),
                                            pose=conv.matrix_to_pose(T_base_tool @ T_TOOL_OPTICAL)))
            kept += (inputs.compressed_image if topic.endswith('compressed') else inputs.image)(msg)
        elif topic == DEPTH:
            kept += inputs.depth(msg)
    clock[0] += 10.0
    kept += inputs.poll()
    return [o.frame for o in kept if o.kept]


@pytest.mark.parametrize('storage, compressed_images', [('mcap', True), ('sqlite3', False)])
def test_a_recorded_scan_imports_to_the_keyframes_of_the_live_capture(scene, tmp_path, storage, compressed_images):
    messages = scan_messages(scene, compressed_images)
    bag = write_bag(tmp_path / f'scan_{storage}', messages, storage)
    settings = ImportSettings(image=IMAGE, camera_info=INFO, depth=DEPTH, tf=('base_link', FRAME), capture=dict(GATE))
    lines = []
    result = import_bag(bag, tmp_path / 'dataset', settings, report=lines.append)
    live = live_keyframes(messages)
    imported = read_dataset(tmp_path / 'dataset')
    print('\n'.join(lines))
    assert result.keyframes == len(imported) == len(live) >= 6
    assert result.topics['image'] == (IMAGE + '/compressed' if compressed_images else IMAGE)
    for mine, theirs in zip(imported, live):
        assert mine.stamp == pytest.approx(theirs.stamp, abs=1e-9)
        np.testing.assert_allclose(mine.T_base_optical, theirs.T_base_optical, atol=1e-6)
        np.testing.assert_allclose(mine.K, theirs.K, atol=1e-9)
        np.testing.assert_array_equal(mine.image, theirs.image)
        assert (mine.depth is None) == (theirs.depth is None)
        if mine.depth is not None:
            np.testing.assert_allclose(mine.depth, theirs.depth, atol=1e-6)
    assert sum(f.depth is not None for f in imported) >= len(imported) - 1     # paired 7 ms apart
    np.testing.assert_allclose(imported[2].T_base_optical, scene.frames[2].T_base_optical, atol=1e-6)


def test_a_bag_without_the_named_topics_is_refused_with_its_topic_list(scene, tmp_path):
    from f3rm_ros import cli
    bag = write_bag(tmp_path / 'bag', scan_messages(scene, False)[:12], 'sqlite3')
    settings = ImportSettings(image='/camera/color/image_raw', camera_info=INFO, tf=('base_link', FRAME))
    with pytest.raises(BagError) as error:
        import_bag(bag, tmp_path / 'out', settings)
    text = str(error.value)
    assert 'no image topic /camera/color/image_raw' in text and f'{IMAGE} (sensor_msgs/msg/Image' in text
    assert not (tmp_path / 'out').exists()                                   # nothing written
    settings = ImportSettings(image=IMAGE, camera_info=INFO, pose='/arm/pose')
    with pytest.raises(BagError, match='no pose topic /arm/pose'):
        import_bag(bag, tmp_path / 'out', settings)
    code = cli.main(['import-bag', str(bag), '--out', str(tmp_path / 'out'), '--tf', 'base_link', 'nowhere',
                     '--min-sharpness', '0'])
    assert code == 2 and not (tmp_path / 'out').exists()                     # no pose: no keyframe, nothing left
    assert not list(tmp_path.glob('.out.importing-*'))
    code = cli.main(['import-bag', str(bag), '--out', str(tmp_path / 'out'), '--tf', 'base_link', FRAME,
                     '--min-sharpness', '0'])
    assert code == 0 and len(read_dataset(tmp_path / 'out')) >= 1


def test_demo_bag_imports_then_replays_the_dataset(scene, tmp_path, monkeypatch):
    """``f3rm-ros demo --bag``: the bag becomes OUTPUT/bag_dataset and the demo replays it (run_demo stubbed)."""
    from f3rm_ros import cli
    from f3rm_ros.harness import demo
    bag = write_bag(tmp_path / 'bag', scan_messages(scene, True), 'mcap')
    seen = {}
    monkeypatch.setattr(demo, 'run_demo', lambda settings: seen.setdefault('settings', settings))
    code = cli.main(['demo', '--bag', str(bag), '--output', str(tmp_path / 'demo'), '--tf', 'base_link', FRAME,
                     '--depth', DEPTH, '--min-sharpness', '0', '--workspace', '-0.3', '-0.3', '-0.05', '0.3', '0.3',
                     '0.3', '--query', 'mug'])
    settings = seen['settings']
    assert code == 0 and settings.data == tmp_path / 'demo' / 'bag_dataset'
    assert len(read_dataset(settings.data)) >= 6 and settings.workspace == (-0.3, -0.3, -0.05, 0.3, 0.3, 0.3)
    lines = []
    lo, hi = demo.demo_workspace({}, settings.data, lines.append, settings.workspace)
    assert lo.tolist() == [-0.3, -0.3, -0.05] and 'from --workspace' in lines[0]
    lo, hi = demo.demo_workspace({}, settings.data, lines.append)        # no entry: from its depth maps, said so
    assert 'from its depth maps' in lines[1]


def test_pose_topic_hand_eye_and_mask_imports(scene, tmp_path):
    """--pose (the end effector's PoseStamped) with --hand-eye and a static --mask: the same camera poses, masked."""
    import cv2
    import yaml
    messages = scan_messages(scene, False)
    for stamp, topic, msg in list(messages):
        if topic == '/tf':
            (_, _, when, T), = msg
            pose = PoseStamped(header=conv.make_header('base_link', when), pose=conv.matrix_to_pose(T))
            messages.append((when, '/arm/tool_pose', pose))
    messages.sort(key=lambda item: item[0])
    bag = write_bag(tmp_path / 'bag', messages, 'sqlite3')
    hand_eye = tmp_path / 'hand_eye.yaml'
    hand_eye.write_text(yaml.safe_dump({'matrix': T_TOOL_OPTICAL.tolist()}))
    mask = np.full((H, W), 255, np.uint8)
    mask[60:] = 0
    cv2.imwrite(str(tmp_path / 'mask.png'), mask)
    settings = ImportSettings(image=IMAGE, camera_info=INFO, pose='/arm/tool_pose', hand_eye_file=str(hand_eye),
                              mask_file=str(tmp_path / 'mask.png'), capture=dict(GATE), workspace=[0, -1, -1, 1, 1, 1])
    import_bag(bag, tmp_path / 'dataset', settings, report=lambda line: None)
    frames = read_dataset(tmp_path / 'dataset')
    assert len(frames) >= 6 and all(f.mask is not None and not f.mask[65].any() and f.mask[10].all() for f in frames)
    truth = {round(1.0 + 0.6 * i, 3): f.T_base_optical for i, f in enumerate(scene.frames)}
    for frame in frames:
        np.testing.assert_allclose(frame.T_base_optical, truth[round(frame.stamp, 3)], atol=1e-6)
    from f3rm_ros.core.capture.frames import read_metadata
    assert read_metadata(tmp_path / 'dataset')['workspace'] == {'min': [0.0, -1.0, -1.0], 'max': [1.0, 1.0, 1.0]}
