"""Keyframe gate and stamp-matched pose buffer (pure numpy / OpenCV)."""
import math

import cv2
import numpy as np
import pytest

from f3rm_ros.core.capture.keyframes import KeyframeGate, PoseBuffer, rotation_angle_deg, sharpness


def pose(x=0.0, y=0.0, z=0.0, yaw_deg=0.0, roll_deg=0.0):
    """Return a pose: translation plus a rotation about z (yaw) then x (roll)."""
    a, b = math.radians(yaw_deg), math.radians(roll_deg)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Rx
    T[:3, 3] = [x, y, z]
    return T


def checkerboard(size=64, square=8):
    """Return a sharp RGB checkerboard."""
    ij = np.indices((size, size)) // square
    grey = ((ij[0] + ij[1]) % 2 * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


SHARP = checkerboard()
BLURRED = cv2.GaussianBlur(SHARP, (0, 0), 4)


def test_sharpness():
    """Flat is 0, a checkerboard is sharp, its blurred copy is not."""
    assert sharpness(np.full((32, 32, 3), 128, np.uint8)) == 0.0
    assert sharpness(SHARP) > 1000.0
    assert sharpness(BLURRED) < 20.0
    assert sharpness(SHARP[..., 0]) == pytest.approx(sharpness(SHARP))
    with pytest.raises(ValueError):
        sharpness(np.zeros((4, 4, 2), np.uint8))


def test_rotation_angle():
    """Relative rotation angles, including across +-180 deg."""
    assert rotation_angle_deg(np.eye(3), pose(yaw_deg=30)[:3, :3]) == pytest.approx(30.0)
    assert rotation_angle_deg(pose(yaw_deg=170)[:3, :3], pose(yaw_deg=-170)[:3, :3]) == pytest.approx(20.0)


def kept_gate(**kwargs):
    """Return a gate whose first keyframe (identity pose at t=10 s) was kept."""
    gate = KeyframeGate(**kwargs)
    keep, reason = gate.evaluate(pose(), 10.0, SHARP)
    assert (keep, reason) == (True, 'first keyframe')
    gate.accept(pose(), 10.0)
    return gate


def test_translation_threshold():
    """Translation alone over 5 cm keeps the frame."""
    gate = kept_gate()
    assert gate.evaluate(pose(x=0.012), 11.0, SHARP) == (False, 'moved too little (0.012 m, 0.0 deg)')
    assert gate.evaluate(pose(x=0.03, y=0.04), 11.0, SHARP) == (True, 'moved 0.050 m, 0.0 deg')


def test_rotation_threshold():
    """Rotation alone over 10 deg keeps the frame."""
    gate = kept_gate()
    assert gate.evaluate(pose(x=0.01, yaw_deg=5.0), 11.0) == (False, 'moved too little (0.010 m, 5.0 deg)')
    keep, reason = gate.evaluate(pose(roll_deg=12.0), 11.0)
    assert keep and reason == 'moved 0.000 m, 12.0 deg'


def test_interval():
    """Frames too soon after the last keyframe, or before it, are rejected."""
    gate = kept_gate(min_interval_s=0.5)
    assert gate.evaluate(pose(x=1.0), 10.2, SHARP) == (
        False, 'too soon (0.200 s < 0.500 s since the last keyframe)')
    assert gate.evaluate(pose(x=1.0), 10.5, SHARP)[0]
    keep, reason = gate.evaluate(pose(x=1.0), 9.0, SHARP)
    assert not keep and 'before the last keyframe' in reason


def test_blur():
    """Blurred frames are rejected with their sharpness; no image skips the test."""
    gate = KeyframeGate(min_sharpness=50.0)
    keep, reason = gate.evaluate(pose(), 0.0, BLURRED)
    assert not keep and reason.startswith('blurred (sharpness ') and reason.endswith(' < 50.0)')
    assert gate.evaluate(pose(), 0.0, None) == (True, 'first keyframe')  # no image: no blur test
    gate.accept(pose(), 0.0)
    keep, reason = gate.evaluate(pose(x=0.2), 1.0, np.full((16, 16, 3), 90, np.uint8))
    assert (keep, reason) == (False, 'blurred (sharpness 0.0 < 50.0)')
    assert KeyframeGate(min_sharpness=0.0).evaluate(pose(), 0.0, BLURRED)[0]


def test_reference_is_the_last_accepted_keyframe():
    """Only accept() moves the reference; reset() starts over."""
    gate = kept_gate()
    # Approved but not accepted (e.g. the store was full): the reference stays at the origin.
    assert gate.evaluate(pose(x=0.06), 11.0)[0]
    assert gate.evaluate(pose(x=0.07), 12.0) == (True, 'moved 0.070 m, 0.0 deg')
    gate.accept(pose(x=0.07), 12.0)
    assert gate.count == 2
    assert gate.evaluate(pose(x=0.1), 13.0) == (False, 'moved too little (0.030 m, 0.0 deg)')
    gate.reset()
    assert gate.evaluate(pose(x=0.1), 13.0) == (True, 'first keyframe') and gate.count == 0


def test_invalid_inputs():
    """Invalid poses are rejected with a reason, bad settings raise."""
    gate = KeyframeGate()
    bad = pose()
    bad[0, 3] = np.nan
    keep, reason = gate.evaluate(bad, 0.0)
    assert not keep and reason.startswith('invalid pose') and 'NaN' in reason
    keep, reason = gate.evaluate(np.diag([2.0, 2.0, 2.0, 1.0]), 0.0)
    assert not keep and 'orthonormal' in reason
    with pytest.raises(ValueError):
        gate.accept(bad, 0.0)
    with pytest.raises(ValueError):
        KeyframeGate(min_translation=-1.0)


def test_pose_buffer_interpolates_and_never_extrapolates():
    """Between samples: interpolated; beyond them: the edge sample within the tolerance, else refused."""
    buffer = PoseBuffer(tolerance_s=0.02, max_gap_s=0.1)
    assert buffer.lookup(1.0) == (None, 'no poses yet')
    for stamp, x in ((1.0, 1.0), (1.1, 2.0), (1.05, 3.0)):  # out of order
        buffer.add(stamp, pose(x=x))
    assert buffer.stamps == [1.0, 1.05, 1.1]
    T, reason = buffer.lookup(1.06)
    assert T[0, 3] == pytest.approx(3.0 - 0.2) and reason == 'interpolated between poses 0.050 s apart'
    assert buffer.lookup(1.05) == (pytest.approx(pose(x=3.0)), 'exact pose')
    assert buffer.lookup(0.985)[0][0, 3] == 1.0
    assert buffer.lookup(1.253) == (None, 'the frame is 0.153 s after the newest pose: not extrapolating beyond '
                                          '0.020 s (pose_tolerance_s)')
    assert 'before the oldest pose' in buffer.lookup(0.9)[1]
    buffer.add(1.5, pose(x=0.0))
    assert buffer.lookup(1.3) == (None, 'the poses around the frame are 0.400 s apart (more than 0.100 s to '
                                        'interpolate across)')
    # Lookups hand out copies.
    T, _ = buffer.lookup(1.05)
    T[0, 3] = 99.0
    assert buffer.lookup(1.05)[0][0, 3] == 3.0


def test_interpolation_error_of_an_arm_at_30_hz_is_below_a_millimetre_and_a_tenth_of_a_degree():
    """Interpolate 30 Hz poses of a moving arm within 1 mm and 0.1°.

    A camera on an arm sweeping a 0.5 m circle at 0.3 m/s while turning 30°/s, poses at 30 Hz: every image
    stamp in between is within 1 mm / 0.1° of the truth; with a hand-eye transform too.
    """
    from scipy.spatial.transform import Rotation

    def truth(t):
        angle = 0.3 / 0.5 * t
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler('zyx', [angle, np.radians(30) * t, 0.1 * np.sin(t)]).as_matrix()
        T[:3, 3] = [0.5 * np.cos(angle), 0.5 * np.sin(angle), 0.4 + 0.05 * np.sin(2 * t)]
        return T
    hand_eye = np.eye(4)
    hand_eye[:3, :3] = Rotation.from_euler('xyz', [180, 0, 90], degrees=True).as_matrix()
    hand_eye[:3, 3] = [0.05, 0.0, 0.1]
    buffer = PoseBuffer(tolerance_s=0.005, max_gap_s=0.05, maxlen=1000)
    with_hand_eye = PoseBuffer(tolerance_s=0.005, max_gap_s=0.05, maxlen=1000, hand_eye=hand_eye)
    for k in range(300):
        buffer.add(k / 30, truth(k / 30))
        with_hand_eye.add(k / 30, truth(k / 30))
    worst_mm = worst_deg = 0.0
    for t in np.random.default_rng(0).uniform(0.1, 9.8, 500):
        for found, expected in ((buffer.lookup(t)[0], truth(t)), (with_hand_eye.lookup(t)[0], truth(t) @ hand_eye)):
            worst_mm = max(worst_mm, 1000 * np.linalg.norm(found[:3, 3] - expected[:3, 3]))
            worst_deg = max(worst_deg, rotation_angle_deg(found[:3, :3], expected[:3, :3]))
    print(f'worst interpolation error {worst_mm:.3f} mm, {worst_deg:.4f} deg')
    assert worst_mm <= 1.0 and worst_deg <= 0.1


def test_pose_buffer_duplicates_capacity_and_validation():
    """Duplicates replace, oldest drop first, bad poses raise."""
    buffer = PoseBuffer(tolerance_s=0.02, maxlen=3)
    buffer.add(2.0, pose(x=1.0))
    buffer.add(2.0, pose(x=5.0))
    assert len(buffer) == 1 and buffer.lookup(2.0)[0][0, 3] == 5.0
    for stamp in (3.0, 1.0, 4.0):
        buffer.add(stamp, pose())
    assert buffer.stamps == [2.0, 3.0, 4.0]  # oldest stamp dropped
    bad = pose()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        buffer.add(5.0, bad)
    with pytest.raises(ValueError, match='orthonormal'):
        buffer.add(5.0, np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError):
        buffer.add(float('nan'), pose())
    assert len(buffer) == 3
    buffer.clear()
    assert buffer.lookup(2.0) == (None, 'no poses yet')


def test_a_full_store_keeps_coverage_when_the_camera_lingers_then_sweeps():
    """Keep coverage in a full store: the new ground a camera sweeps replaces the views of a spot it lingered on.

    Ten slots; the camera first dwells on one spot (20 views within 1 cm), then sweeps 1 m of new ground
    (20 views): replacing the most redundant view keeps the sweep, end to end, and the dwell spot.
    """
    from f3rm_ros.core.capture.keyframes import replacement_slot
    rng = np.random.default_rng(0)
    dwell = [pose(x=rng.uniform(-0.005, 0.005), y=rng.uniform(-0.005, 0.005)) for _ in range(20)]
    sweep = [pose(x=0.2 + 0.05 * k) for k in range(20)]                 # x = 0.20 .. 1.15 m
    kept = []
    for candidate in dwell + sweep:
        if len(kept) < 10:
            kept.append(candidate)
            continue
        slot = replacement_slot(kept, candidate)
        if slot is not None:
            kept[slot] = candidate
    xs = sorted(T[0, 3] for T in kept)
    print('kept x:', np.round(xs, 3))
    on_sweep = [x for x in xs if x >= 0.2 - 1e-9]
    assert len(on_sweep) >= 8 and min(on_sweep) <= 0.3 and max(on_sweep) >= 1.1
    assert len(xs) - len(on_sweep) >= 1                                 # the dwell spot is still covered
    # a candidate on top of a kept view adds nothing: no replacement
    assert replacement_slot(kept, kept[3]) is None
    assert replacement_slot(kept[:1], kept[0]) is None
