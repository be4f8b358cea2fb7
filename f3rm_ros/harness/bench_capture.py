"""What one camera frame costs the capture node at 30 Hz: ``python -m f3rm_ros.harness.bench_capture``.

A capture node runs in its own process (as `ros2 launch` starts it); this process plays a moving camera
(textured images, PoseStamped, CameraInfo) at `--rate` over DDS confined to this machine, on a private
domain. Reported per resolution:

* CPU ms per frame of the capture process (user + system time from /proc, minus its idle rate measured
  just before): everything, DDS receive and deserialisation included;
* the image callback's mean wall time (`frame_ms` of its status on /diagnostics) and the mean for keyframes
  (`keyframe_ms`: conversion, blur test, PNG + transforms.json written, keyframe republished);
* frames received vs published, keyframes kept.
"""
from __future__ import annotations

# The ROS messages, ros.conversions (cv2, scipy) and ros.diagnostics are imported where used: `--help` starts without
# them.
import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

from .testing import RosProbe, subprocess_env


def _cpu_seconds(pid: int) -> float:
    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def bench(width: int, height: int, rate: float = 30.0, seconds: float = 10.0, encoding: str = 'bgr8') -> Dict:
    """Run one resolution; returns the measurements (see the module docstring)."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image

    from ..ros import conversions as conv
    from ..ros.diagnostics import status_values

    probe = RosProbe(name='bench_camera')
    work = tempfile.mkdtemp(prefix='f3rm-bench-capture-')
    args = [sys.executable, '-m', 'f3rm_ros.ros.capture_node', '--ros-args', '-p', f'dataset_dir:={work}/scan',
            '-p', 'pose_source:=topic', '-p', 'status_rate_hz:=2.0', '-p', 'min_interval_s:=0.5']
    proc = subprocess.Popen(args, env=subprocess_env(probe.domain_id), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        status = probe.status('/capture')   # its status on /diagnostics
        image_pub = probe.publisher(Image, 'image')
        info_pub = probe.publisher(CameraInfo, 'camera_info')
        pose_pub = probe.publisher(PoseStamped, 'camera_pose')
        for publisher in (image_pub, info_pub, pose_pub):
            probe.wait_for_subscribers(publisher, timeout=60)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
        images = []
        for shift in range(8):  # textured, sharp, a little different each
            big = np.kron(np.roll(base, shift, axis=1), np.ones((8, 8, 1), np.uint8))
            images.append(conv.rgb_to_image(np.ascontiguousarray(big), 0.0, 'cam', encoding))
        K = np.array([[width * 0.8, 0, width / 2], [0, width * 0.8, height / 2], [0, 0, 1]])
        status.wait(lambda m: 'frame_ms' in status_values(m), 30, 'the capture status')
        idle_start, idle_cpu = time.monotonic(), _cpu_seconds(proc.pid)
        time.sleep(2.0)
        idle_rate = (_cpu_seconds(proc.pid) - idle_cpu) / (time.monotonic() - idle_start)
        frames = int(rate * seconds)
        cpu0, start = _cpu_seconds(proc.pid), time.monotonic()
        for index in range(frames):
            due = start + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            stamp = conv.seconds_to_stamp(time.time())
            T = np.eye(4)
            T[0, 3] = 0.01 * index  # 1 cm per frame: 0.3 m/s, a keyframe every min_interval_s
            pose_pub.publish(conv.pose_stamped(T, 'base_link', stamp))
            info_pub.publish(conv.K_to_camera_info(K, width, height, stamp, 'cam'))
            msg = images[index % len(images)]
            msg.header.stamp = stamp
            image_pub.publish(msg)
        elapsed = time.monotonic() - start
        try:  # the status comes at 2 Hz: wait until it has counted every frame that arrives
            status.wait(lambda m: int(status_values(m)['received']) >= frames, 5, 'every frame counted')
        except AssertionError:
            pass
        values = status_values(status.last)
        cpu = _cpu_seconds(proc.pid) - cpu0 - idle_rate * elapsed
        received = int(values['received'])
        return {'resolution': f'{width}x{height}', 'encoding': encoding, 'rate_hz': rate, 'published': frames,
                'received': received, 'keyframes': int(values['keyframes']),
                'cpu_ms_per_frame': 1e3 * cpu / max(received, 1), 'cpu_percent': 100 * cpu / elapsed,
                'callback_ms_mean': float(values['frame_ms']), 'keyframe_ms_mean': float(values['keyframe_ms'])}
    finally:
        proc.terminate()
        proc.wait(20)
        probe.close()


def main(argv: List[str] = None) -> int:
    """Command line: resolutions, rate, duration."""
    parser = argparse.ArgumentParser(prog='python -m f3rm_ros.harness.bench_capture', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['640x480', '1280x720'], help='WIDTHxHEIGHT ...')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    parser.add_argument('--seconds', type=float, default=10.0, help='seconds per resolution')
    parser.add_argument('--encoding', default='bgr8', help='rgb8 | bgr8 (what most drivers send)')
    args = parser.parse_args(argv)
    print(f'{"size":>10} {"recv/pub":>9} {"kf":>3} {"CPU ms/frame":>12} {"CPU %":>6} {"callback ms":>11} '
          f'{"keyframe ms":>11}')
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split('x'))
        r = bench(width, height, args.rate, args.seconds, args.encoding)
        print(f'{r["resolution"]:>10} {r["received"]:>4}/{r["published"]:<4} {r["keyframes"]:>3} '
              f'{r["cpu_ms_per_frame"]:>12.2f} {r["cpu_percent"]:>6.1f} {r["callback_ms_mean"]:>11.2f} '
              f'{r["keyframe_ms_mean"]:>11.2f}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
