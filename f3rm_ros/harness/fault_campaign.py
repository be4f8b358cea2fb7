"""The fault campaign behind ``f3rm-ros bench faults``: an operator's bad day, measured.

Every phase runs the real node processes (as ``ros2 launch`` starts them) on a private ROS domain confined to this
machine, with the synthetic table (labels teacher, ``cpu-tiny``), and turns what it saw into table rows:

* ``kills``: kill -9 of the trainer and the capture node in turn at random moments while the replayed arm scans and
  the trainer trains; each is restarted with ``resume: true``. Counted: keyframes the capture node announced but
  are not on disk at the end, keyframes on disk the trainer does not hold, the trainer's resume step against the
  checkpoint on disk at the kill, steps lost, restart times, temporary files left behind.
* ``disk``: dataset and checkpoint folders on a small tmpfs that is filled mid-scan, then emptied: the error on
  ``/diagnostics`` (and how long it took), half-written files, recovery of both nodes.
* ``checkpoints``: truncated, empty, pickle-payload and out-of-folder checkpoints announced to a serving query
  node, and a truncated ``latest.ckpt`` under a restarting trainer: each refused with its reason, the query node
  still answering from its last good model, nothing executed.
* ``flood``: queries on ``query/query`` at 500/s: the newest answered (latency after the flood), RSS of the node.
* ``bad_inputs``: every case of `bad_inputs` sent in a burst: the error each got, how many log lines (throttling),
  and a good frame / query still served afterwards.
* ``stream``: 640 x 480 frames at 30 Hz into the capture node for minutes: its RSS over time.
"""
from __future__ import annotations

# Imported where used (heavy; each phase loads what it needs): rclpy (ros.qos too), torch (training.checkpoints too)
# and the ROS interfaces beyond the messages that ros.conversions loads anyway (f3rm_ros_interfaces, rcl_interfaces,
# std_srvs, diagnostic_msgs through ros.diagnostics).
import json
import math
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import yaml
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from . import bad_inputs as cases
from .bad_inputs import PicklePayload, fill_disk
from .testing import NodeProcesses, RosProbe, rss_mib, subprocess_env
from ..core.capture.frames import read_dataset
from ..ros import conversions as conv

OBJECTS = ['mug', 'ball', 'box']
BURST = 20           # messages per bad-input case
THROTTLED_LINES = 3  # most log lines a burst of BURST may cause


@dataclass
class Row:
    """One line of the results table."""

    phase: str
    fault: str
    result: str
    ok: bool


@dataclass
class Results:
    """Rows and raw numbers of a campaign."""

    rows: List[Row] = field(default_factory=list)
    numbers: Dict[str, object] = field(default_factory=dict)

    def add(self, phase: str, fault: str, result: str, ok: bool) -> None:
        """Add a row (and print it: progress for the person waiting)."""
        self.rows.append(Row(phase, fault, result, bool(ok)))
        print(f'[faults] {phase}: {fault}: {result} -> {"ok" if ok else "FAILED"}', flush=True)


def _values(msg) -> Dict[str, str]:
    from ..ros.diagnostics import status_values
    return status_values(msg)


def _level(msg) -> str:
    from ..ros.diagnostics import level_name
    return level_name(msg)


def _stamp(header) -> float:
    return round(header.stamp.sec + header.stamp.nanosec * 1e-9, 6)


def dataset_stamps(root: Path) -> List[float]:
    """Stamps of the frames listed in a scan's transforms.json (nothing if it is absent)."""
    path = Path(root) / 'transforms.json'
    if not path.exists():
        return []
    return [round(float(f.get('stamp', f.get('timestamp', 0.0))), 6) for f in json.loads(path.read_text())['frames']]


def temporary_files(root: Path) -> List[str]:
    """Files a crash or a full disk may leave half-written (the writers' temporaries)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file() and '.tmp' in p.name)


class Campaign:
    """Runs the phases (see the module docstring) in `work`; results in `results`.

    Why one class: every phase is a method over one private ROS domain, its node processes and one results table.
    """

    def __init__(self, work: Path, seed: int = 0, report: Callable[[str], None] = print):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.report = report
        self.results = Results()
        self.probe = RosProbe(name='fault_campaign')
        self.procs = NodeProcesses(subprocess_env(self.probe.domain_id), self.work / 'logs')
        self.status = {name: self.probe.status(f'/{name}') for name in ('capture', 'trainer', 'query', 'replay')}
        self.good_checkpoint: Optional[Path] = None
        self.scan: Optional[Path] = None

    def close(self) -> None:
        """Stop every node and the probe."""
        self.procs.stop_all()
        self.probe.close()

    # ------------------------------------------------------------------------------------------ helpers

    def params(self, name: str, dataset_dir: Path, checkpoint_dir: Path, resume: bool = True,
               checkpoint_every: int = 20, capture: Optional[dict] = None) -> Path:
        """Write a params file for the synthetic scan (replay -> capture -> trainer) in `name`."""
        path = self.work / f'{name}.yaml'
        capture_params = {'min_interval_s': 0.0, 'min_sharpness': 0.0, 'min_translation': 0.02,
                          'status_rate_hz': 5.0, 'pose_source': 'topic'}
        capture_params.update(capture or {})
        path.write_text(yaml.safe_dump({
            '/**': {'ros__parameters': {
                'preset': 'cpu-tiny', 'dataset_dir': str(dataset_dir), 'checkpoint_dir': str(checkpoint_dir),
                'resume': resume, 'torch_threads': 1,
                'trainer': {'steps': 1_000_000, 'checkpoint_every': checkpoint_every, 'eval_every': 0,
                            'capacity': 1000},
            }},
            'capture': {'ros__parameters': capture_params},
            'trainer': {'ros__parameters': {'min_frames': 5, 'status_rate_hz': 5.0}},
            'replay': {'ros__parameters': {'scene_objects': OBJECTS, 'scene_views': 60, 'scene_width': 96,
                                           'scene_height': 72, 'rate_hz': 2.0, 'loop': True,
                                           'publish_tf': False, 'start_delay_s': 1.0}},
        }))
        return path

    def wait_status(self, node: str, predicate, timeout: float, what: str, since: int = 0):
        """Newest status of `node` (after `since`) whose (values, level) satisfy `predicate`."""
        msg = self.status[node].wait(lambda m: predicate(_values(m), _level(m)), timeout, what, since)
        return _values(msg), _level(msg), msg.message

    def last_values(self, node: str) -> Dict[str, str]:
        """Values of the newest status of `node` ({} if none yet)."""
        msg = self.status[node].last
        return _values(msg) if msg is not None else {}

    # ------------------------------------------------------------------------------------------ kills

    def kills(self, count: int) -> None:
        """Kill -9 the trainer and the capture node in turn, `count` times, and restart them with resume."""
        from ..core.training.checkpoints import read_checkpoint
        from ..ros.qos import latched_qos
        work = self.work / 'kills'
        scan, ckpt = work / 'scan', work / 'ckpt'
        params = self.params('kills', scan, ckpt)
        announced = set()
        self.probe.node.create_subscription(Image, '/capture/keyframe/image',
                                            lambda msg: announced.add(_stamp(msg.header)), latched_qos(64))
        mark = self.status['trainer'].mark()
        self.procs.node('replay', params)
        self.procs.node('capture', params)
        self.procs.node('trainer', params)
        self.wait_status('trainer', lambda v, _: v.get('state') == 'training' and int(v['step']) > 20, 300,
                         'the trainer training past its first checkpoint', mark)
        restarts = {'trainer': [], 'capture': []}
        resume_errors, steps_lost = [], []
        for index in range(count):
            victim = ('trainer', 'capture')[index % 2]
            time.sleep(self.rng.uniform(0.5, 6.0))
            step_before = int(self.last_values('trainer').get('step', 0))
            self.procs.kill(victim)
            mark = self.status[victim].mark()
            if victim == 'trainer':
                on_disk_step = read_checkpoint(ckpt / 'latest.ckpt')['step'] if (ckpt / 'latest.ckpt').exists() else 0
            started = time.monotonic()
            self.procs.node(victim, params, tag=f'-{index + 1}')
            if victim == 'trainer':
                values, _, _ = self.wait_status('trainer', lambda v, _: v.get('state') == 'training', 240,
                                                'the restarted trainer training', mark)
                if int(values['resumed_step']) != on_disk_step:
                    resume_errors.append(f'kill {index + 1}: resumed at {values["resumed_step"]}, '
                                         f'checkpoint on disk {on_disk_step}')
                steps_lost.append(step_before - int(values['resumed_step']))
            else:
                self.wait_status('capture', lambda v, _: 'keyframes' in v, 120, 'the restarted capture', mark)
            restarts[victim].append(time.monotonic() - started)
            self.report(f'[faults] kill {index + 1}/{count}: {victim} restarted in {restarts[victim][-1]:.1f} s')
        from std_srvs.srv import Trigger
        self.probe.call(Trigger, '/replay/pause')
        time.sleep(1.0)
        mark = self.status['capture'].mark()
        self.wait_status('capture', lambda v, _: v.get('pending') == '0', 30, 'capture idle', mark)
        on_disk = dataset_stamps(scan)
        mark = self.status['trainer'].mark()
        self.wait_status('trainer', lambda v, _: int(v.get('frames', -1)) >= len(on_disk), 120,
                         f'the trainer holding all {len(on_disk)} keyframes on disk', mark)
        trainer_frames = int(self.last_values('trainer')['frames'])
        lost = sorted(announced - set(on_disk))
        readable = len(read_dataset(scan))
        leftovers = temporary_files(work)
        self.procs.stop('trainer')
        self.scan, self.good_checkpoint = scan, ckpt / 'latest.ckpt'
        numbers = {'kills': count, 'announced_keyframes': len(announced), 'keyframes_on_disk': len(on_disk),
                   'readable_keyframes': readable, 'keyframes_lost': len(lost), 'trainer_frames': trainer_frames,
                   'trainer_missing': len(on_disk) - trainer_frames, 'resume_errors': resume_errors,
                   'steps_lost': steps_lost, 'restart_s': {k: [round(v, 1) for v in s] for k, s in restarts.items()},
                   'temporary_files': leftovers}
        self.results.numbers['kills'] = numbers
        n_trainer, n_capture = len(restarts['trainer']), len(restarts['capture'])
        self.results.add('kill -9', f'{n_capture} x capture node at random moments',
                         f'{len(lost)} of {len(announced)} announced keyframes lost, {readable} of {len(on_disk)} on '
                         f'disk readable, restart {_median(restarts["capture"]):.1f} s (median)',
                         not lost and readable == len(on_disk))
        self.results.add('kill -9', f'{n_trainer} x trainer at random moments',
                         f'resumed at the checkpoint on disk {n_trainer - len(resume_errors)} of {n_trainer} times, '
                         f'steps lost median {_median(steps_lost):.0f} (max {max(steps_lost, default=0)}; checkpoint '
                         f'every 20), restart {_median(restarts["trainer"]):.1f} s; trainer holds {trainer_frames} of '
                         f'{len(on_disk)} keyframes; {len(leftovers)} temporary files left',
                         not resume_errors and trainer_frames == len(on_disk) and not leftovers)
        self.procs.stop('capture')
        self.procs.stop('replay')

    # ------------------------------------------------------------------------------------------ disk full

    def disk_full(self, size_mb: int = 64) -> None:
        """Scan and train onto a small tmpfs, fill it, empty it again."""
        from ..core.training.checkpoints import read_checkpoint
        disk = self.work / 'small_disk'
        disk.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            self.results.add('disk full', 'tmpfs under dataset and checkpoints', 'skipped: mounting needs root', True)
            return
        subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_mb}m', 'tmpfs', str(disk)], check=True)
        try:
            scan, ckpt = disk / 'scan', disk / 'ckpt'
            params = self.params('disk', scan, ckpt, resume=False, checkpoint_every=10)
            marks = {name: self.status[name].mark() for name in self.status}
            for name in ('replay', 'capture', 'trainer'):
                self.procs.node(name, params, tag='-disk')
            self.wait_status('trainer', lambda v, _: int(v.get('step', 0)) > 12, 300,
                             'a checkpoint on the small disk', marks['trainer'])
            ballast = fill_disk(disk, leave_kb=8)
            filled = time.monotonic()
            _, _, capture_message = self.wait_status('capture', lambda v, level: level == 'error', 60,
                                                     'the capture error', marks['capture'])
            capture_s = time.monotonic() - filled
            _, _, trainer_message = self.wait_status('trainer', lambda v, level: level == 'error', 120,
                                                     'the trainer error', marks['trainer'])
            trainer_s = time.monotonic() - filled
            time.sleep(3.0)   # both keep trying while full
            leftovers = temporary_files(disk)
            kept_while_full = len(dataset_stamps(scan))
            readable = len(read_dataset(scan))
            ballast.unlink()
            emptied = time.monotonic()
            since = {name: self.status[name].mark() for name in self.status}
            self.wait_status('capture', lambda v, _: int(v['keyframes']) > kept_while_full, 60,
                             'a keyframe written again', since['capture'])
            capture_back = time.monotonic() - emptied
            self.wait_status('trainer', lambda v, _: not v.get('write_error'), 120, 'a checkpoint written again',
                             since['trainer'])
            trainer_back = time.monotonic() - emptied
            self.wait_status('capture', lambda v, level: level == 'ok', 60, 'capture OK', since['capture'])
            self.wait_status('trainer', lambda v, level: level == 'ok', 60, 'trainer OK', since['trainer'])
            ok_again = time.monotonic() - emptied
            step = read_checkpoint(ckpt / 'latest.ckpt')['step']
            for name in ('trainer', 'capture', 'replay'):
                self.procs.stop(name)
        finally:
            subprocess.run(['umount', '-l', str(disk)], capture_output=True)
        self.results.numbers['disk'] = {
            'capture_error_s': round(capture_s, 1), 'trainer_error_s': round(trainer_s, 1),
            'capture_message': capture_message, 'trainer_message': trainer_message, 'temporary_files': leftovers,
            'keyframes_on_disk_while_full': kept_while_full, 'readable': readable,
            'capture_recovered_s': round(capture_back, 1), 'trainer_recovered_s': round(trainer_back, 1),
            'status_ok_again_s': round(ok_again, 1), 'checkpoint_step_after': step}
        self.results.add('disk full', f'{size_mb} MB tmpfs filled under the capture\'s dataset',
                         f'ERROR on /diagnostics after {capture_s:.1f} s ("{_clip(capture_message)}"), '
                         f'{readable} of {kept_while_full} keyframes readable; a keyframe written {capture_back:.1f} s '
                         f'after space returned, status OK after {ok_again:.0f} s',
                         'disk full' in capture_message and readable == kept_while_full)
        self.results.add('disk full', '... and under the trainer\'s checkpoints',
                         f'ERROR after {trainer_s:.1f} s ("{_clip(trainer_message)}"), {len(leftovers)} temporary '
                         f'files, checkpoint written again {trainer_back:.1f} s after (step {step})',
                         'disk full' in trainer_message and not leftovers)

    # ------------------------------------------------------------------------------------------ checkpoints

    def start_query(self) -> Path:
        """Start a query node serving a copy of the kills phase's checkpoint, announced on /bench/checkpoint."""
        from ..ros.qos import latched_qos
        served = self.work / 'served'
        served.mkdir(exist_ok=True)
        good = served / 'good.ckpt'
        shutil.copyfile(self.good_checkpoint, good)
        params = self.work / 'query.yaml'
        params.write_text(yaml.safe_dump({'query': {'ros__parameters': {
            'checkpoint_dir': str(served), 'status_rate_hz': 5.0, 'image_width': 32, 'image_height': 24,
            'torch_threads': 1, 'similarity_image': False}}}))
        self.announce = self.probe.publisher(String, '/bench/checkpoint', latched_qos())
        self.procs.node('query', params, remaps=[('checkpoint', '/bench/checkpoint')])
        self.probe.wait_for_subscribers(self.announce, timeout=60)
        self.announce.publish(String(data=str(good)))
        answer = self.ask('mug', timeout=240)
        if answer.status != answer.FOUND:
            raise RuntimeError(f'the query node does not find the mug on the trained checkpoint: {answer.reason}')
        return served

    def ask(self, text: str, timeout: float = 60.0):
        """Ask the query node through its service; returns the QueryAnswer."""
        from f3rm_ros_interfaces.srv import Query
        request = Query.Request(positives=[p.strip() for p in text.split(',')])
        return self.probe.call(Query, '/query/locate', request, timeout).answer

    def checkpoints(self) -> None:
        """Refused checkpoints: announced to the query node, and under a restarting trainer."""
        import torch

        served = self.start_query()
        good = (served / 'good.ckpt').read_bytes()
        marker = self.work / 'payload-ran'
        broken = {'truncated to half its size': good[:len(good) // 2], 'empty (0 bytes)': b''}
        for name, data in broken.items():
            path = served / f'{name.split()[0]}.ckpt'
            path.write_bytes(data)
            self._refused_checkpoint(name, path, ('truncated or corrupt', 'not a readable'))
        evil = served / 'payload.ckpt'
        torch.save({'meta_json': '{}', 'model': {}, 'x': PicklePayload(marker)}, evil)
        self._refused_checkpoint('a pickle whose unpickling writes a file', evil, ('Python objects',),
                                 extra_ok=not marker.exists(), extra=f'payload ran: {marker.exists()}')
        outside = self.work / 'elsewhere.ckpt'
        shutil.copyfile(served / 'good.ckpt', outside)
        mark = self.status['query'].mark()
        self.announce.publish(String(data=str(outside)))
        _, level, message = self.wait_status('query', lambda v, level: level == 'error' and outside.name in v.get(
            'model_problem', ''), 30, 'refusal', mark)
        self.results.add('checkpoint', 'a good checkpoint outside checkpoint_dir announced',
                         f'{level.upper()}: "{_clip(message)}"', 'not inside checkpoint_dir' in message)
        self.announce.publish(String(data=str(served / 'good.ckpt')))

        # A restarting trainer finds a truncated latest.ckpt beside its scan.
        folder = self.work / 'truncated_ckpt'
        folder.mkdir(exist_ok=True)
        (folder / 'latest.ckpt').write_bytes(good[:len(good) // 3])
        params = self.params('truncated', self.scan, folder, resume=True)
        mark = self.status['trainer'].mark()
        self.procs.node('trainer', params, tag='-truncated')
        _, level, message = self.wait_status('trainer', lambda v, level: v.get('state') == 'training', 240,
                                             'the trainer training', mark)
        values = self.last_values('trainer')
        set_aside = (folder / 'latest.ckpt.refused').exists()
        self.results.add('checkpoint', 'a truncated latest.ckpt under a restarting trainer (resume: true)',
                         f'{level.upper()}: "{_clip(message)}"; set aside as latest.ckpt.refused: {set_aside}; '
                         f'trains from step {values.get("resumed_step")}',
                         level == 'error' and 'truncated or corrupt' in message and set_aside)
        self.procs.stop('trainer')

    def _refused_checkpoint(self, name: str, path: Path, expect, extra_ok: bool = True, extra: str = '') -> None:
        mark = self.status['query'].mark()
        started = time.monotonic()
        self.announce.publish(String(data=str(path)))
        _, level, message = self.wait_status('query', lambda v, level: level == 'error' and path.name in v.get(
            'model_problem', ''), 30, f'{path.name} refused', mark)
        seconds = time.monotonic() - started
        answer = self.ask('mug')
        still = answer.status == answer.FOUND
        self.results.add('checkpoint', f'{name} announced to the query node',
                         f'{level.upper()} {seconds:.1f} s after the announcement, before any question: '
                         f'"{_clip(message)}"; next query answered from the last good model: '
                         f'{still}' + ('' if still else f' ({answer.reason})')
                         + (f'; {extra}' if extra else ''),
                         any(e in message for e in expect) and still and extra_ok)

    # ------------------------------------------------------------------------------------------ flood

    def flood(self, rate: float = 500.0, seconds: float = 10.0) -> None:
        """Send queries on query/query at `rate` for `seconds`; the last one must be answered, memory flat."""
        from f3rm_ros_interfaces.msg import QueryAnswer
        from rclpy.qos import QoSProfile
        pid = self.procs.procs['query'].pid
        self.ask('ball')
        rss_before = rss_mib(pid)
        answers = self.probe.subscribe(QueryAnswer, '/query/answer', QoSProfile(depth=1000))
        topic = self.probe.publisher(String, '/query/query', QoSProfile(depth=1000))
        self.probe.wait_for_subscribers(topic)
        sent, peak, started = 0, rss_before, time.monotonic()
        texts = ('ball', 'box')
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                topic.publish(String(data=texts[sent % 2]))
                sent += 1
            if sent % 250 == 0:
                peak = max(peak, rss_mib(pid))
            time.sleep(0.001)
        topic.publish(String(data='mug'))
        sent += 1
        flood_s = time.monotonic() - started
        last = answers.wait(lambda a: a.text == 'mug' and a.status != a.ERROR, 60, 'the newest query answered')
        latency = time.monotonic() - started - flood_s
        time.sleep(5.0)
        rss_after = rss_mib(pid)
        answered = len(answers.messages)
        superseded = sum(1 for a in answers.messages if 'superseded' in a.reason)
        growth = (rss_after - rss_before) / rss_before
        self.results.numbers['flood'] = {'sent': sent, 'rate_hz': round(sent / flood_s), 'answers': answered,
                                         'superseded': superseded, 'newest_latency_s': round(latency, 2),
                                         'rss_before_mib': round(rss_before, 1), 'rss_peak_mib': round(peak, 1),
                                         'rss_after_mib': round(rss_after, 1)}
        self.results.add('query flood', f'{sent} queries in {flood_s:.0f} s ({sent / flood_s:.0f}/s) on query/query',
                         f'newest ("mug", {"FOUND" if last.status == last.FOUND else last.status}) answered '
                         f'{latency:.2f} s after the flood; {answered} answers ({superseded} "superseded"); RSS '
                         f'{rss_before:.0f} -> {rss_after:.0f} MiB ({growth:+.1%}, peak {peak:.0f})',
                         latency < 5.0 and growth < 0.05)

    # ------------------------------------------------------------------------------------------ bad inputs

    def bad_inputs(self, burst: int = BURST, gap_s: float = 5.0, query: bool = True) -> None:
        """Each bad-input case in a burst; its error, the log lines it caused, and service afterwards.

        `query`: also the query node's cases (parameters and texts; it must be serving, `start_query`).
        """
        from rcl_interfaces.msg import Log
        from rclpy.qos import QoSProfile

        from ..ros.qos import latched_qos
        work = self.work / 'bad'
        params = self.params('bad', work / 'scan', work / 'ckpt', resume=False,
                             capture={'min_translation': 0.05, 'pose_wait_s': 0.3})
        mark = self.status['capture'].mark()
        self.procs.node('capture', params, tag='-bad')
        self.wait_status('capture', lambda v, _: 'keyframes' in v, 60, 'the capture node', mark)
        logs = self.probe.subscribe(Log, '/rosout', QoSProfile(depth=1000))
        publishers = self._capture_publishers(latched_qos)
        x = [0.0]

        def send(messages) -> None:
            for topic, msg in messages:
                publishers[topic].publish(msg)

        def good_frame_kept() -> bool:
            before = int(self.last_values('capture').get('keyframes', 0))
            for _ in range(3):   # best effort: a frame may be dropped on the way
                x[0] += 0.1
                send(cases.good_frame(time.time(), x[0]))
                try:
                    self.wait_status('capture', lambda v, _: int(v['keyframes']) > before, 3.0, 'a keyframe')
                    return True
                except AssertionError:
                    continue
            return False

        assert good_frame_kept(), 'the capture node does not keep a good frame'
        for case in cases.capture_cases():
            since, status_mark = logs.mark(), self.status['capture'].mark()
            started = time.time()
            for _ in range(burst):
                x[0] += 0.1   # the camera moves: every frame of the burst is a keyframe candidate
                send(case.make(time.time(), x[0]))
                time.sleep(0.05)
            try:
                values, level, _ = self.wait_status(
                    'capture', lambda v, _: case.expect in v.get('last_problem', ''), 5.0, case.name, status_mark)
                problem = values['last_problem']
            except AssertionError:
                problem, level = self.last_values('capture').get('last_problem', '(none)'), 'ok'
            lines = [m for m in logs.messages[since:] if m.name == 'capture' and m.level >= 30
                     and m.stamp.sec >= int(started) - 1]
            serving = good_frame_kept()
            self.results.add('bad input', f'capture: {case.name} (x{burst})',
                             f'{level.upper()} "{_clip(problem, 110)}"; {len(lines)} log lines; next good frame '
                             f'kept: {serving}', case.expect in problem and len(lines) <= THROTTLED_LINES and serving)
            time.sleep(gap_s)  # the throttle period (5 s): the next case's first line is logged
        for case in cases.parameter_cases():
            if case.node == 'query' and not query:
                continue
            results = self.probe.set_parameters(f'/{case.node}', **{case.parameter: case.value})
            reason = results[0].reason
            serving = self.ask('mug').status == 0 if case.node == 'query' else good_frame_kept()
            self.results.add('bad input', f'parameter: {case.name}',
                             f'refused: {not results[0].successful}, "{_clip(reason, 110)}"; still serving: {serving}',
                             not results[0].successful and case.expect in reason and serving)
        if query:
            self._bad_queries(cases.query_cases())
        self.procs.stop('capture')

    def _capture_publishers(self, latched_qos) -> Dict[str, object]:
        from rclpy.qos import qos_profile_sensor_data
        publishers = {topic: self.probe.publisher(kind, topic, qos_profile_sensor_data) for topic, kind in (
            ('image', Image), ('camera_info', CameraInfo), ('camera_pose', PoseStamped), ('depth', Image),
            ('labels', Image), ('mask', Image))}
        publishers['label_names'] = self.probe.publisher(String, 'label_names', latched_qos())
        for publisher in publishers.values():
            self.probe.wait_for_subscribers(publisher, timeout=30)
        return publishers

    def _bad_queries(self, query_cases) -> None:
        from f3rm_ros_interfaces.msg import QueryAnswer
        from rclpy.qos import QoSProfile
        answers = self.probe.subscribe(QueryAnswer, '/query/answer', QoSProfile(depth=100))
        topic = self.probe.publisher(String, '/query/query', QoSProfile(depth=100))
        self.probe.wait_for_subscribers(topic)
        for case in query_cases:
            since = answers.mark()
            topic.publish(String(data=case.text))
            answer = answers.wait(lambda a: True, 30, case.name, since)
            serving = self.ask('mug').status == 0
            wanted = answer.status != answer.FOUND if case.not_found else answer.status == answer.ERROR
            self.results.add('bad input', f'query: {case.name}',
                             f'status {("FOUND", "NOT_PRESENT", "NO_MODEL", "ERROR")[answer.status]}: '
                             f'"{_clip(answer.reason, 110)}"; next query answered: {serving}',
                             wanted and case.expect in answer.reason and serving)

    # ------------------------------------------------------------------------------------------ stream

    def stream(self, minutes: float, width: int = 640, height: int = 480, rate: float = 30.0) -> None:
        """`minutes` of a 30 Hz camera into a fresh capture node; its RSS over time."""
        from ..ros.qos import latched_qos
        work = self.work / 'stream'
        params = self.params('stream', work / 'scan', work / 'ckpt', resume=False,
                             capture={'min_interval_s': 1.0, 'min_translation': 0.05, 'status_rate_hz': 1.0})
        mark = self.status['capture'].mark()
        proc = self.procs.node('capture', params, tag='-stream')
        self.wait_status('capture', lambda v, _: 'keyframes' in v, 60, 'the capture node', mark)
        publishers = self._capture_publishers(latched_qos)
        base = np.random.default_rng(0).integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
        images = [np.ascontiguousarray(np.kron(np.roll(base, s, axis=1), np.ones((8, 8, 1), np.uint8)))
                  for s in range(8)]
        K = np.array([[width * 0.8, 0, width / 2], [0, width * 0.8, height / 2], [0, 0, 1]])
        samples, started, sent = [], time.monotonic(), 0
        duration = minutes * 60.0
        next_report = 30.0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            if sent <= elapsed * rate:
                stamp = time.time()
                x = 0.3 * math.sin(sent / 90.0)   # sweeps back and forth: keyframes all along
                publishers['camera_info'].publish(conv.K_to_camera_info(K, width, height, stamp, cases.CAMERA_FRAME))
                publishers['camera_pose'].publish(cases.camera_pose(x, stamp))
                publishers['image'].publish(conv.rgb_to_image(images[sent % 8], stamp, cases.CAMERA_FRAME))
                sent += 1
                if sent % int(rate * 5) == 0:
                    samples.append((elapsed, rss_mib(proc.pid)))
            else:
                time.sleep(0.002)
            if elapsed > next_report:
                self.report(f'[faults] stream: {elapsed / 60:.1f} of {minutes:g} min, capture RSS '
                            f'{samples[-1][1]:.0f} MiB, ETA {(duration - elapsed) / 60:.1f} min')
                next_report += 30.0
        values = self.last_values('capture')
        warm = [rss for t, rss in samples if t >= min(60.0, duration / 4)]
        growth = (warm[-1] - warm[0]) / warm[0] if len(warm) >= 2 else float('nan')
        half = [(t, rss) for t, rss in samples if t >= duration / 2]
        slope = np.polyfit(*zip(*half), 1)[0] * 60.0 if len(half) >= 2 else float('nan')   # MiB per minute
        self.procs.stop('capture')
        self.results.numbers['stream'] = {'minutes': minutes, 'sent': sent, 'rate_hz': round(sent / duration, 1),
                                          'keyframes': values.get('keyframes'),
                                          'frame_ms': values.get('frame_ms'),
                                          'rss_growth': round(growth, 4), 'late_mib_per_min': round(slope, 3),
                                          'rss_mib': [(round(t), round(r, 1)) for t, r in samples]}
        self.results.add('stream', f'{minutes:g} min of {width} x {height} at {rate:g} Hz into the capture node',
                         f'{sent} frames sent ({sent / duration:.1f}/s), {values.get("keyframes")} keyframes; capture '
                         f'RSS {warm[0]:.0f} -> {warm[-1]:.0f} MiB after the first minute ({growth:+.1%}), '
                         f'{slope:+.2f} MiB/min over the second half',
                         growth < 0.05)


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float('nan')


def _clip(text: str, limit: int = 100) -> str:
    """Return the problem part of a status message (after the state), paths cut to their file names, clipped."""
    text = str(text)
    if re.match(r'^[^;]*\d+ (keyframes|queries answered); ', text):
        text = text.split('; ', 1)[1]
    text = re.sub(r'(/[^\s/\'"]+)+/([^\s/\'"]+)', r'.../\2', ' '.join(text.split())).replace('|', '/')
    return text if len(text) <= limit else text[:limit - 3] + '...'
