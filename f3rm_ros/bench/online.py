"""``f3rm-ros bench online``: a scan replayed into the online pipeline, timed until the answers are right.

The nodes' cores in one process, without DDS (what ``f3rm-ros pipeline`` runs as ROS nodes): keyframes of a
synthetic table arrive at ``--rate`` per second into an `OnlineSession` (its training thread extracts teacher
features and trains as they come), and a `FieldQuerier` on the live model (the query node's in-process path,
holding the trainer's lock per chunk) asks for every object on the table every ``--poll`` seconds. An object
counts as found when the top cluster's centroid is within ``--tolerance`` (2 cm) of its true centre.

The number a robot waits for: **seconds from the last keyframe to the first round of answers, all asked after
that keyframe, in which every object is within tolerance** (and per object, when it first was). Also printed:
scan time, when the first training step was done (teacher, model and kernels built), training steps and
rays/s at that moment, and the query latency. The labels teacher gives the truth to score against; a CLIP
teacher's feature cost is in ``bench teachers``. The capture node's keyframe selection (milliseconds per frame) is
not in the clock: keyframes are fed directly at the rate a scan produces them. The session starts (and warms up:
imports, device) before the first keyframe, as a node launched before the scan does; that start-up is printed apart.
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): the config, query and
# online-training modules (yaml, torch, nerfstudio).
import argparse
import copy
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import device_name, format_table, write_json
from .semantic import score_queries, synthetic_scene


def register(sub) -> None:
    """Add ``bench online``."""
    p = sub.add_parser('online', help='replay a scan into the online trainer and query it live: seconds from the '
                                      'last keyframe to every object found within 2 cm',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='gpu', help='config preset (default gpu)')
    p.add_argument('--config', action='append', default=[], type=Path, help='YAML overlay (repeatable)')
    p.add_argument('--seed', type=int, default=3, help='synthetic table layout (default 3)')
    p.add_argument('--objects', type=int, default=5, help='objects on the table (default 5)')
    p.add_argument('--views', type=int, default=48, help='keyframes of the scan (default 48)')
    p.add_argument('--width', type=int, default=160, help='keyframe width (default 160)')
    p.add_argument('--height', type=int, default=120, help='keyframe height (default 120)')
    p.add_argument('--rate', type=float, default=4.0, help='keyframes per second during the scan (default 4)')
    p.add_argument('--steps', type=int, default=3000, help='training step budget (default 3000)')
    p.add_argument('--min-frames', type=int, default=5, help='keyframes before training starts (default 5)')
    p.add_argument('--poll', type=float, default=0.5, help='seconds between rounds of questions (default 0.5)')
    p.add_argument('--tolerance', type=float, default=0.02, help='metres from the true centre (default 0.02)')
    p.add_argument('--timeout', type=float, default=300.0, help='give up this long after the last keyframe')
    p.add_argument('--scenes', type=Path, help='folder of rendered synthetic scans (as `bench semantic --scenes`; '
                   'the GPU machine has no open3d: render here with --render-only and carry the folder)')
    p.add_argument('--render-only', action='store_true', help='render the scan into --scenes and stop')
    p.add_argument('--json', default='', help='write the result here')
    p.set_defaults(func=run)


class LiveQuestions:
    """Ask for every object of a scene on the session's live model and score the answers."""

    def __init__(self, session, objects: Dict[str, Dict], tolerance: float):
        self.session = session
        self.objects = objects
        self.tolerance = tolerance
        self.querier = None
        self._version = -1

    def ready(self) -> bool:
        """Whether the session has a model that has trained."""
        trainer = self.session.trainer
        return trainer is not None and trainer.step_count > 0

    def ask(self) -> Dict[str, Dict]:
        """One round: {name: {'error_m', 'latency_s'}} (error inf when not found), scored as `bench semantic`."""
        from ..core.query.answer import FieldQuerier
        session = self.session
        if self.querier is None:
            config = copy.deepcopy(session.config)
            self.querier = FieldQuerier(session.trainer.model, session.teacher, config, lock=session.trainer.lock,
                                        keyframes=session.trainer.store.snapshot)
        if session.model_version != self._version:
            self.querier.invalidate()
            self._version = session.model_version
        return {score.query: {'error_m': score.error_m, 'latency_s': score.latency_s}
                for score in score_queries(self.querier, 'live', self.objects)}


class KeyframeFeeder:
    """Hand the scan's keyframes to the session at `rate` per second from a thread of its own.

    A scan does not wait for the questions; `last_keyframe` is the clock reading when the last one went in.
    """

    def __init__(self, session, frames, rate: float):
        if rate <= 0:
            raise SystemExit(f'--rate must be > 0, got {rate}')
        self.session, self.frames, self.rate = session, frames, rate
        self.started = time.perf_counter()
        self.sent = 0
        self.last_keyframe: Optional[float] = None
        self.problem = ''
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name='keyframes', daemon=True)

    def clock(self) -> float:
        """Seconds since the feeder was made."""
        return time.perf_counter() - self.started

    def start(self) -> None:
        """Start feeding (the clock starts at construction)."""
        self.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _feed(self) -> None:
        for index, frame in enumerate(self.frames):
            if self._stop.wait(max(0.0, index / self.rate - self.clock())):
                return
            ok, why = self.session.add_frame(frame)
            if not ok:
                self.problem = f'keyframe {index} refused: {why}'
                return
            self.sent = index + 1
        self.last_keyframe = self.clock()


def run(args) -> int:
    """Replay, train and ask until every object is found (or --timeout); print the timeline and the result."""
    from ..core.config import make_config
    from ..core.training.online import OnlineSession, SessionSettings
    name, frames, labels, objects, workspace = synthetic_scene(args.seed, args.objects, args.views, args.width,
                                                               args.height, cache=args.scenes)
    if args.render_only:
        print(f'{name} rendered into {args.scenes}')
        return 0
    config = make_config(args.preset, args.config)
    config.workspace = workspace
    config.trainer.steps = args.steps
    config.trainer.checkpoint_every = 0
    config.trainer.eval_every = 0        # the clock is the answers', not a held-out PSNR's
    session = OnlineSession(config, SessionSettings(min_frames=args.min_frames, teacher_choice='labels'),
                            labels=labels)
    questions = LiveQuestions(session, objects, args.tolerance)
    device = device_name()
    print(f'bench online on {device}: {name}, {len(frames)} keyframes of {args.width}x{args.height} at '
          f'{args.rate:g}/s, preset {args.preset}, {args.steps} steps, objects {", ".join(objects)}', flush=True)
    feeder = KeyframeFeeder(session, frames, args.rate)
    session.start()
    # a node starts before the scan does (the arm drives to its first view): its warm-up is start-up time
    started = time.perf_counter()
    while session.warming_up and not session.status()['error']:
        time.sleep(0.05)
    startup_s = time.perf_counter() - started
    print(f'start-up (imports, device) {startup_s:.2f} s, before the first keyframe', flush=True)
    feeder.start()
    rounds: List[Dict] = []
    first_within: Dict[str, Optional[float]] = {n: None for n in objects}
    result: Dict = {}
    first_step: Optional[float] = None
    last_state = ''
    try:
        while True:
            status = session.status()
            if feeder.problem or status['error']:
                raise SystemExit(feeder.problem or f'training failed: {status["error"]}')
            last_keyframe = feeder.last_keyframe
            if last_keyframe is not None and feeder.clock() - last_keyframe > args.timeout:
                result = {'found_all_s': None, 'step': session.step}
                break
            state = status['state']
            if state != last_state:  # where the time before the first step goes (teacher, model, features)
                print(f'{feeder.clock():7.2f} s  {state}  ({feeder.sent} keyframes in)', flush=True)
                last_state = state
            if not questions.ready():
                time.sleep(0.05)
                continue
            if first_step is None:
                first_step = feeder.clock()
                print(f'first training step done at {first_step:.2f} s (teacher, model, kernels built)', flush=True)
            asked_at, steps_then = feeder.clock(), session.step
            # the round counts when it was asked after the last keyframe and the trainer had taken it in
            after_last = last_keyframe is not None and session.trainer.num_frames == len(frames)
            answers = questions.ask()
            answered_at = feeder.clock()
            row = {'asked_s': round(asked_at, 2), 'answered_s': round(answered_at, 2), 'step': steps_then,
                   'keyframes': feeder.sent, 'after_last_keyframe': after_last,
                   **{f'{n}_cm': round(a['error_m'] * 100, 1) for n, a in answers.items()}}
            rounds.append(row)
            print('  '.join(f'{k} {v}' for k, v in row.items()), flush=True)
            if after_last:
                for n, a in answers.items():
                    if first_within[n] is None and a['error_m'] <= args.tolerance:
                        first_within[n] = round(answered_at - last_keyframe, 2)
                if all(a['error_m'] <= args.tolerance for a in answers.values()):
                    result = {'found_all_s': round(answered_at - last_keyframe, 2), 'step': steps_then,
                              'rays_per_s': session.status()['rays_per_s'],
                              'query_latency_s': round(max(a['latency_s'] for a in answers.values()), 3)}
                    break
            time.sleep(max(0.0, asked_at + args.poll - feeder.clock()))
    finally:
        feeder.stop()
        session.stop(timeout=30.0)
    last_keyframe = feeder.last_keyframe
    result.update({'device': device, 'scene': name, 'keyframes': len(frames), 'image': f'{args.width}x{args.height}',
                   'scan_s': round(last_keyframe or 0.0, 2),
                   'first_step_s': None if first_step is None else round(first_step, 2), 'preset': args.preset,
                   'startup_s': round(startup_s, 2),
                   'tolerance_m': args.tolerance,
                   'first_within_s': first_within})
    print('\n' + format_table([['', 'value'],
                               ['session start-up, before the scan', f'{result["startup_s"]} s'],
                               ['scan (keyframes at the rate)', f'{result["scan_s"]} s, {len(frames)} keyframes'],
                               ['first training step done at', f'{result["first_step_s"]} s'],
                               ['every object within tolerance, after the last keyframe',
                                'not within --timeout' if result['found_all_s'] is None
                                else f'{result["found_all_s"]} s (step {result["step"]})'],
                               *[[f'  {n} first within', 'never' if t is None else f'{t} s']
                                 for n, t in result['first_within_s'].items()],
                               ['training rays/s then', str(result.get('rays_per_s', ''))],
                               ['slowest answer of that round', f'{result.get("query_latency_s", "")} s']]))
    print(f'RESULT found_all_s={result["found_all_s"]} step={result["step"]} scan_s={result["scan_s"]} '
          f'keyframes={len(frames)}', flush=True)
    write_json(args.json, {'result': result, 'rounds': rounds, 'args': vars(args)})
    return 0 if result['found_all_s'] is not None else 1
