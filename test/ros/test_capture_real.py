"""Real cameras and arms at the capture: messages as drivers send them, through `CaptureInputs`.

Lens distortion from CameraInfo (undistorted once, the pinhole K_new republished with zero D; an unknown model
refused by name), depth paired with colour 7 ms apart (16UC1 mm, 32FC1 m, compressedDepth both ways) and
checked against the colour frame, compressed colour images, corrupt payloads, static and per-frame masks,
interpolated poses (gaps and extrapolation refused), end-effector poses with a hand-eye calibration on the
topic path and the TF path (a fake tf2 buffer: this venv has no tf2_ros), and a long scan whose keyframes keep
covering new ground in a full trainer. No DDS here: the messages are handed to the handlers the node uses.
"""
import array

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CompressedImage

from f3rm_ros.core.capture import compressed

from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.capture.camera import read_mask_file
from f3rm_ros.core.capture.session import CaptureSession, CaptureSettings
from f3rm_ros.core.config import make_config
from f3rm_ros.core.capture.distortion import Distortion, distort_image
from f3rm_ros.core.capture.frames import PosedFrame, read_dataset
from f3rm_ros.core.capture.handeye import hand_eye_matrix, load_hand_eye
from f3rm_ros.core.training.online import OnlineSession, SessionSettings
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.capture_inputs import CaptureInputs, TfPoseLookup

W, H = 96, 72
K = np.array([[80.0, 0, 48], [0, 80.0, 36], [0, 0, 1]])
COLOUR_FRAME = 'camera_color_optical_frame'


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Rig:
    """A CaptureSession behind CaptureInputs, recording what the node would log."""

    def __init__(self, tmp_path=None, lookup=None, **settings):
        values = dict(min_interval_s=0.0, min_translation=0.05, min_sharpness=0.0, pose_wait_s=0.5,
                      dataset_dir=str(tmp_path / 'scan') if tmp_path else '')
        values.update(settings)
        self.clock = Clock()
        self.session = CaptureSession(CaptureSettings(**values), pose_lookup=lookup, clock=self.clock)
        self.reports, self.notes = [], []
        self.inputs = CaptureInputs(self.session, 'base_link', lambda *r: self.reports.append(r), self.notes.append,
                                    {'image': '/camera/camera/color/image_raw',
                                     'depth': '/camera/camera/aligned_depth_to_color/image_raw'})

    def info(self, K=K, width=W, height=H, model='plumb_bob', d=(0.0,) * 5):
        msg = conv.K_to_camera_info(K, width, height, 1.0, COLOUR_FRAME)
        msg.distortion_model, msg.d = model, array.array('d', d)
        return self.inputs.camera_info(msg)

    def pose(self, stamp, T):
        return self.inputs.pose(conv.pose_stamped(T, 'base_link', stamp))

    def image(self, stamp, rgb, frame=COLOUR_FRAME):
        return self.inputs.image(conv.rgb_to_image(rgb, stamp, frame))

    def kinds(self):
        return [r[0] for r in self.reports]


def textured(seed=0, width=W, height=H):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def at(x=0.0, y=0.0, yaw_deg=0.0):
    T = np.eye(4)
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = (x, y, 0.0)
    return T


def depth_msg(depth, stamp, encoding='16UC1', frame=COLOUR_FRAME):
    msg = conv.depth_to_image(depth, stamp, frame)
    if encoding == '16UC1':
        raw = np.round(depth * 1000).astype('<u2')
        msg.encoding, msg.step, msg.data = '16UC1', depth.shape[1] * 2, conv.as_uint8_array(raw)
    return msg


def compressed_msg(stamp, fmt, data, frame=COLOUR_FRAME):
    msg = CompressedImage(format=fmt)
    msg.header = conv.make_header(frame, stamp)
    msg.data = array.array('B', data)
    return msg


def psnr(a, b, mask=None):
    difference = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    return 10 * np.log10(255.0 ** 2 / (difference[mask].mean() if mask is not None else difference.mean()))


# ------------------------------------------------------------------------------------------- distortion

def test_a_distorted_camera_is_undistorted_once_and_republished_as_a_pinhole(tmp_path):
    """plumb_bob D from CameraInfo: the keyframe is the pinhole view at K_new, whose CameraInfo has zero D."""
    scene = scenes.make_scene(seed=3, object_names=['mug', 'box'], num_views=1, width=160, height=120)
    width, height = 160, 120
    Kd = scenes.pinhole_intrinsics(width, height, 70.0)
    lens = Distortion('plumb_bob', (-0.28, 0.09, 0.001, -0.0005, 0.0))
    K_wide = scenes.pinhole_intrinsics(3 * width, 3 * height, 150.0)
    T = scene.frames[0].T_base_optical
    distorted = distort_image(scene.render(K_wide, T, 3 * width, 3 * height).image, K_wide, Kd, lens, width, height)
    rig = Rig(tmp_path)
    rig.info(Kd, width, height, 'plumb_bob', lens.coefficients)
    rig.info(Kd, width, height, 'plumb_bob', lens.coefficients)        # the same camera: one note, maps kept
    assert len(rig.notes) == 1 and 'undistorted once' in rig.notes[0] and 'zero distortion' in rig.notes[0]
    undistorter = rig.session.camera.undistorter
    rig.pose(1.0, T)
    out = rig.image(1.0, distorted)
    frame = out[0].frame
    np.testing.assert_allclose(frame.K, undistorter.K_new)
    truth = scene.render(frame.K, T, width, height).image
    ignored = scene.render(Kd, T, width, height).image
    good, bad = psnr(frame.image, truth), psnr(distorted, ignored)
    print(f'undistorted at capture vs pinhole render {good:.1f} dB; distortion ignored {bad:.1f} dB')
    assert good > 24.0 and good > bad + 5.0
    info = conv.K_to_camera_info(frame.K, frame.width, frame.height, 1.0, COLOUR_FRAME)   # what ~/keyframe says
    assert list(info.d) == [0.0] * 5 and np.allclose(np.reshape(info.k, (3, 3)), undistorter.K_new)
    stored = read_dataset(tmp_path / 'scan')[0]
    np.testing.assert_allclose(stored.K, undistorter.K_new, atol=1e-6)
    assert rig.session.status()['distortion'] == 'plumb_bob'


def test_an_unknown_distortion_model_is_refused_by_name_and_a_good_camera_info_recovers():
    rig = Rig()
    rig.info(model='kannala_brandt_8', d=(0.1, 0.01, 0.0, 0.0))
    assert rig.kinds() == ['camera_info'] and rig.reports[0][2] == 'error'
    assert "'kannala_brandt_8'" in rig.reports[0][1] and 'image_rect' in rig.reports[0][1]
    rig.pose(1.0, at(0.0))
    out = rig.image(1.0, textured(1))
    assert out[0].kind == 'camera_info' and 'kannala_brandt_8' in out[0].reason    # skipped, with the reason
    rig.info()                                                                     # a usable camera_info
    rig.pose(1.1, at(0.2))
    assert rig.image(1.1, textured(2))[0].kept


def test_a_rectified_stream_uses_p():
    rig = Rig()
    msg = conv.K_to_camera_info(K, W, H, 1.0, COLOUR_FRAME)
    P = np.zeros((3, 4))
    P[:, :3] = [[70.0, 0, 47], [0, 70.0, 35], [0, 0, 1]]
    msg.p = P.reshape(-1)
    rig.inputs.camera_info(msg)
    np.testing.assert_allclose(rig.session.camera.K, P[:, :3])


# ------------------------------------------------------------------------------------------------ depth

@pytest.mark.parametrize('encoding', ['16UC1', '32FC1', 'compressedDepth 16UC1', 'compressedDepth 32FC1'])
def test_depth_stamped_7_ms_after_colour_is_paired(encoding):
    rig = Rig()
    rig.info()
    depth = np.full((H, W), 0.8, np.float32)
    depth[:10] = 1.234
    kept = []

    def send_depth(stamp):
        if encoding.startswith('compressedDepth'):
            fmt, data = compressed.encode_depth(depth, encoding.split()[1])
            return rig.inputs.compressed_depth(compressed_msg(stamp, fmt, data))
        return rig.inputs.depth(depth_msg(depth, stamp, encoding))
    send_depth(1.0 - 1 / 30 + 0.007)                            # the driver was streaming already
    for i in range(4):                                          # 30 Hz colour; depth 7 ms later
        stamp = 1.0 + i / 30
        rig.pose(stamp, at(0.1 * i))
        kept += rig.image(stamp, textured(i))
        kept += send_depth(stamp + 0.007)
    assert [o.kind for o in kept] == ['keyframe'] * 4 and not rig.reports
    for outcome in kept:
        assert 'no aligned depth' not in outcome.reason
        tolerance = 0.02 if encoding.endswith('32FC1') and encoding.startswith('compressed') else 1e-3
        np.testing.assert_allclose(outcome.frame.depth, depth, atol=tolerance)
    assert rig.session.slop_s == pytest.approx(0.5 / 30, rel=1e-3)      # half the measured frame period


def test_depth_further_than_the_slop_is_not_paired():
    rig = Rig(depth_slop_s=0.005)
    rig.info()
    rig.inputs.depth(depth_msg(np.ones((H, W), np.float32), 1.007))
    rig.pose(1.0, at(0.0))
    assert rig.image(1.0, textured(0)) == []                   # depth was seen: wait for one that pairs
    rig.clock.now += 1.0
    out = rig.inputs.poll()
    assert out[0].kept and out[0].frame.depth is None and 'no aligned depth image' in out[0].reason


def test_depth_in_another_frame_or_of_another_size_is_an_error_naming_the_fix():
    rig = Rig()
    rig.info()
    rig.pose(1.0, at(0.0))
    rig.image(1.0, textured(0))                                # the colour frame is known from here on
    rig.inputs.depth(depth_msg(np.ones((H, W), np.float32), 1.1, frame='camera_depth_optical_frame'))
    assert rig.kinds() == ['depth_frame'] and rig.reports[0][2] == 'error'
    text = rig.reports[0][1]
    assert "'camera_depth_optical_frame'" in text and 'align_depth.enable:=true' in text
    assert 'aligned_depth_to_color' in text
    rig.pose(1.1, at(0.2))
    out = rig.image(1.1, textured(1))                          # the colour images do not wait for it
    assert out[0].kept and out[0].frame.depth is None
    rig.inputs.depth(depth_msg(np.ones((H + 8, W + 32), np.float32), 1.2))   # unaligned size
    rig.pose(1.2, at(0.4))
    out = rig.image(1.2, textured(2))
    assert out[0].kept and out[0].frame.depth is None
    assert rig.kinds()[-1] == 'depth_size' and f'{W + 32} x {H + 8}' in rig.reports[-1][1]
    assert 'align_depth.enable:=true' in rig.reports[-1][1]


# ------------------------------------------------------------------------------------------- compressed

@pytest.mark.parametrize('kind', ['jpeg', 'png'])
def test_compressed_colour_images_are_decoded(kind):
    rig = Rig()
    rig.info()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :W // 2] = (200, 40, 10)
    rgb[:, W // 2:] = (10, 60, 220)
    fmt, data = compressed.encode_colour(rgb, kind)
    rig.pose(1.0, at(0.0))
    out = rig.inputs.compressed_image(compressed_msg(1.0, fmt, data))
    error = np.abs(out[0].frame.image.astype(int) - rgb)
    assert out[0].kept and (error.max() == 0 if kind == 'png' else error.mean() < 3)


def test_corrupt_compressed_payloads_are_skipped_with_the_topic_named():
    rig = Rig()
    rig.info()
    fmt, data = compressed.encode_colour(textured(0), 'jpeg')
    for i, payload in enumerate([data[:40], b'not an image at all', b'']):
        rig.pose(1.0 + i / 10, at(0.2 * i))
        out = rig.inputs.compressed_image(compressed_msg(1.0 + i / 10, fmt, payload))
        assert out[0].kind == 'image' and '/camera/camera/color/image_raw/compressed' in out[0].reason
    rig.pose(2.0, at(1.0))
    assert rig.inputs.compressed_image(compressed_msg(2.0, fmt, data))[0].kept      # and the scan goes on
    good_fmt, good = compressed.encode_depth(np.ones((H, W), np.float32))
    raw_png = bytes(good[12:])
    for i, (fmt, payload) in enumerate([(good_fmt, good[:12]), (good_fmt, raw_png),
                                        ('16UC1; compressedDepth rvl', good), ('bgr8; jpeg compressed bgr8', data)]):
        stamp = 3.0 + i / 10
        rig.inputs.compressed_depth(compressed_msg(stamp, fmt, payload))
        rig.pose(stamp, at(2.0 + 0.2 * i))
        out = rig.image(stamp, textured(i))
        assert out[0].kept and out[0].frame.depth is None
        assert rig.reports[-1][0] == 'depth_decode' and 'compressedDepth' in rig.reports[-1][1]
    assert 'rvl' in rig.reports[-2][1] and 'png' in rig.reports[-2][1]


# ------------------------------------------------------------------------------------------------ masks

def test_static_and_per_frame_masks_are_combined_stored_and_checked(tmp_path):
    import cv2
    path = tmp_path / 'gripper.png'
    static = np.full((H, W), 255, np.uint8)
    static[50:, 30:66] = 0                                     # the fingers at the bottom centre
    cv2.imwrite(str(path), static)
    rig = Rig(tmp_path, static_mask=read_mask_file(str(path)))
    rig.info()
    per_frame = np.full((H, W), 255, np.uint8)
    per_frame[:5] = 0
    rig.inputs.mask(_mono8(per_frame, 1.0))
    rig.pose(1.0, at(0.0))
    frame = rig.image(1.0, textured(0))[0].frame
    assert frame.mask is not None and not frame.mask[60, 40] and not frame.mask[2, 2] and frame.mask[30, 10]
    stored = read_dataset(tmp_path / 'scan')[0]
    np.testing.assert_array_equal(stored.mask, frame.mask)
    rig.inputs.mask(_mono8(np.full((H // 2, W // 2), 255, np.uint8), 1.1))    # a mask of the wrong size
    rig.pose(1.1, at(0.2))
    out = rig.image(1.1, textured(1))
    assert out[0].kind == 'mask' and 'topic mask' in out[0].reason and 'skipped' in out[0].reason
    assert len(read_dataset(tmp_path / 'scan')) == 1          # nothing written for it
    small = Rig(static_mask=np.ones((H // 2, W // 2), bool))
    small.info()
    small.pose(1.0, at(0.0))
    out = small.image(1.0, textured(0))
    assert out[0].kind == 'mask' and 'mask_file' in out[0].reason and f'{W} x {H}' in out[0].reason
    with pytest.raises(ValueError, match='cannot be read'):
        read_mask_file(str(tmp_path / 'missing.png'))


def _mono8(values, stamp):
    return conv.rgb_to_image(values, stamp, COLOUR_FRAME, encoding='mono8')


# ------------------------------------------------------------------------------------------------ poses

def test_pose_gaps_and_extrapolation_are_refused_with_the_reason():
    rig = Rig(pose_max_gap_s=0.1, pose_tolerance_s=0.02)
    rig.info()
    rig.pose(1.0, at(0.0))
    rig.pose(1.5, at(0.5))                                     # 0.5 s apart: no interpolation across
    assert rig.image(1.2, textured(0)) == []
    rig.clock.now += 1.0
    out = rig.inputs.poll()
    assert out[0].kind == 'no_pose' and '0.500 s apart' in out[0].reason
    assert rig.image(1.6, textured(1)) == []                   # 0.1 s after the newest pose
    rig.clock.now += 1.0
    out = rig.inputs.poll()
    assert out[0].kind == 'no_pose' and 'not extrapolating' in out[0].reason
    rig.pose(1.6, at(0.6))
    rig.pose(1.66, at(0.66))
    out = rig.image(1.62, textured(2))                         # now between two close samples
    assert out[0].kept and out[0].frame.T_base_optical[0, 3] == pytest.approx(0.62)


HAND_EYE = hand_eye_matrix([0.05, -0.02, 0.08], [0.5, -0.5, 0.5, -0.5])


def test_end_effector_poses_on_the_topic_are_composed_with_the_hand_eye_calibration():
    rig = Rig(hand_eye=HAND_EYE)
    rig.info()
    T_base_ee = at(0.4, 0.1, 30.0)
    T_base_ee[2, 3] = 0.5
    rig.pose(1.0, T_base_ee)
    out = rig.image(1.0, textured(0))
    np.testing.assert_allclose(out[0].frame.T_base_optical, T_base_ee @ HAND_EYE, atol=1e-9)


class ExtrapolationException(Exception):
    """tf2's exception name for a stamp outside the buffer."""


class LookupException(Exception):
    """tf2's exception name for an unknown frame."""


class FakeBuffer:
    """tf2_ros.Buffer's lookup API over stamped end-effector poses (what a robot's TF would hold)."""

    def __init__(self, poses):
        self.poses = poses                                     # {stamp: T_base_ee}
        self.calls = []

    def lookup_transform(self, target, source, time, timeout):
        stamp = time.nanoseconds * 1e-9
        self.calls.append((target, source, round(stamp, 6), timeout.nanoseconds))
        if source != 'tool0' or target != 'base_link':
            raise LookupException(f'"{source}" passed to lookupTransform argument source_frame does not exist')
        for known, T in self.poses.items():
            if abs(known - stamp) < 1e-6:
                msg = TransformStamped()
                msg.transform = conv.matrix_to_transform(T)
                return msg
        raise ExtrapolationException(f'Lookup would require extrapolation into the future. Requested time {stamp} '
                                     f'but the latest data is at time {max(self.poses)}')


def test_tf_poses_of_the_end_effector_with_a_fake_tf2_buffer():
    T_base_ee = at(0.3, -0.1, 45.0)
    buffer = FakeBuffer({1.0: T_base_ee})
    lookup = TfPoseLookup(buffer, 'base_link', 'tool0')
    rig = Rig(lookup=lookup, hand_eye=HAND_EYE)
    rig.info()
    out = rig.image(1.0, textured(0))
    np.testing.assert_allclose(out[0].frame.T_base_optical, T_base_ee @ HAND_EYE, atol=1e-9)
    assert buffer.calls[0] == ('base_link', 'tool0', 1.0, 0)    # at the image stamp, no blocking timeout
    assert rig.image(2.0, textured(1)) == []                   # TF not there yet: the image waits ...
    buffer.poses[2.0] = at(0.6)
    out = rig.inputs.poll()                                    # ... and is kept when it arrives
    assert out[0].kept and out[0].frame.T_base_optical[0, 3] == pytest.approx((at(0.6) @ HAND_EYE)[0, 3])
    assert rig.image(3.0, textured(2)) == []
    rig.clock.now += 1.0
    out = rig.inputs.poll()
    assert out[0].kind == 'no_pose' and 'ExtrapolationException' in out[0].reason
    assert 'base_link <- tool0' in out[0].reason
    camera_frame = TfPoseLookup(buffer, 'base_link', '', lambda stamp: COLOUR_FRAME)   # the image's own frame
    T, why = camera_frame(1.0)
    assert T is None and 'LookupException' in why and COLOUR_FRAME in why


def test_hand_eye_files(tmp_path):
    ours = tmp_path / 'ours.yaml'
    ours.write_text('hand_eye:\n  xyz: [0.05, -0.02, 0.08]\n  quaternion_xyzw: [0.5, -0.5, 0.5, -0.5]\n')
    easy = tmp_path / 'easy.yaml'
    easy.write_text('parameters: {eye_on_hand: true}\ntransformation: {x: 0.05, y: -0.02, z: 0.08, '
                    'qx: 0.5, qy: -0.5, qz: 0.5, qw: -0.5}\n')
    matrix = tmp_path / 'matrix.yaml'
    matrix.write_text(f'matrix: {HAND_EYE.tolist()}\n')
    for path in (ours, easy, matrix):
        np.testing.assert_allclose(load_hand_eye(path), HAND_EYE, atol=1e-9)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('xyz: [0, 0, 0]\nquaternion_xyzw: [0, 0, 0, 2]\n')
    with pytest.raises(ValueError, match='not normalised'):
        load_hand_eye(bad)
    bad.write_text('translation: [0, 0, 0]\n')
    with pytest.raises(ValueError, match='expected xyz'):
        load_hand_eye(bad)
    with pytest.raises(ValueError, match='does not exist'):
        load_hand_eye(tmp_path / 'nope.yaml')


# ------------------------------------------------------------------------------------------- long scans

def test_a_long_scan_keeps_covering_new_ground_in_a_full_trainer(tmp_path):
    """Capture (disk capacity 1000) feeding a trainer that holds 8: dwell on one spot, then sweep 1 m.

    The dwell fills the trainer first; the sweep's keyframes replace the most redundant views, so the trainer
    ends holding the sweep end to end (and still one view of the dwell spot). No training steps are run.
    """
    config = make_config('cpu-tiny')
    config.trainer.capacity = 8
    trainer = OnlineSession(config, SessionSettings(teacher_choice='clip'))
    rig = Rig(tmp_path, capacity=1000, trainer_capacity=8, min_translation=0.0, min_rotation_deg=0.0)
    rig.info()
    rng = np.random.default_rng(0)
    poses = [at(rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), rng.uniform(-2, 2)) for _ in range(16)]
    poses += [at(0.2 + 0.05 * k) for k in range(17)]          # x = 0.20 .. 1.00 m
    results = []
    for i, T in enumerate(poses):
        rig.pose(1.0 + i / 10, T)
        for outcome in rig.image(1.0 + i / 10, textured(i)):
            if outcome.kept:
                results.append(trainer.add_frame(outcome.frame))
    assert rig.session.num_keyframes == len(poses)             # the scan on disk has everything
    xs = sorted(T[0, 3] for T in trainer.store.poses())
    print('trainer holds x:', np.round(xs, 2), 'replaced', trainer.scan.replaced)
    sweep = [x for x in xs if x > 0.15]
    assert len(trainer.store) == 8 and len(sweep) >= 6 and min(sweep) <= 0.3 and max(sweep) >= 0.95
    assert any(x < 0.05 for x in xs)                           # the dwell spot is still covered
    assert trainer.status()['replaced_frames'] == trainer.scan.replaced >= 6
    assert any('replaced slot' in why for added, why in results if added)
    assert list(trainer.scan.stamps) == sorted(f.stamp for f in trainer.store.snapshot())
    refused = trainer.add_frame(PosedFrame(textured(99), K, trainer.store.snapshot()[3].T_base_optical, stamp=99.0))
    assert refused[0] is False and 'adds no coverage' in refused[1]
