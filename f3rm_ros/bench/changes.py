"""``f3rm-ros bench changes``: how fast the answers follow a table that changed after its scan.

In one process, like ``bench online``: per seed and kind of change, a synthetic table (`core.scenes.changes`) is
scanned and trained in an `OnlineSession` (labels teacher: the truth to score against), then changed (moved: one
object 10-20 cm away and turned; removed: one taken away; added: one put down that the scan did not see) and
rescanned along a short arc (at most 12 keyframes) at ``--rate`` keyframes per second, as a robot would. The
session detects the change in the new keyframes and repairs the field (`core.changes`); a `FieldQuerier` on the
live model asks for every object every ``--poll`` seconds.

A moved or removed object that the scan did not learn (top cluster within tolerance before the change) makes the
trial a miss. Met, from the last new keyframe: moved = the top cluster within ``--tolerance`` of the new centre and
no cluster within ``--old-radius`` of the old one; removed = NOT_PRESENT; added = the top cluster within
tolerance. The time is that round's answer, counted only for rounds asked after the trainer had taken the last
keyframe; a trial that does not meet it within ``--limit`` seconds is a miss (inf). Unchanged objects the scan learnt
must stay within tolerance in every round after the last keyframe (``others_within_2cm``: the fraction of trials
where they did). One line per kind:
``RESULT change=moved trials=N ok=F median_s=T worst_s=T others_within_2cm=F limit_s=L``.
"""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every bench module at start-up): the query, online-training, scene
# and trainer modules (torch, nerfstudio, open3d).
import argparse
import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from . import device_name, format_table, write_json
from .online import KeyframeFeeder
from ..commands import add_config_arguments, config_from_args

KINDS = ('moved', 'removed', 'added')
IDLE_DONE_S = 3.0   # --after-steps: a session 'done' this long after a keyframe trains no more


def register(sub) -> None:
    """Add ``bench changes``."""
    p = sub.add_parser('changes', help='move, remove or add an object after the scan, rescan a short arc: seconds '
                                       'until the answers follow', description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='synthetic layouts (default 0)')
    p.add_argument('--kinds', nargs='+', default=list(KINDS), choices=KINDS, help='changes to make (default all)')
    add_config_arguments(p, preset='cpu-tiny')
    p.add_argument('--objects', type=int, default=5, help='objects on the table (default 5)')
    p.add_argument('--views', type=int, default=24, help='keyframes of the scan (default 24)')
    p.add_argument('--rescan', type=int, default=10, help='keyframes of the rescan arc, at most 12 (default 10)')
    p.add_argument('--width', type=int, default=96, help='keyframe width (default 96)')
    p.add_argument('--height', type=int, default=72, help='keyframe height (default 72)')
    p.add_argument('--steps', type=int, default=0, help="training steps of the scan (default: the preset's)")
    p.add_argument('--rate', type=float, default=2.0, help='rescan keyframes per second (default 2)')
    p.add_argument('--poll', type=float, default=0.5, help='seconds between rounds of questions (default 0.5)')
    p.add_argument('--tolerance', type=float, default=0.02, help='metres from the true centre (default 0.02)')
    p.add_argument('--old-radius', type=float, default=0.05,
                   help='no cluster of a moved object this close (m) to its old centre (default 0.05)')
    p.add_argument('--limit', type=float, default=0.0,
                   help='seconds after the last keyframe before a trial is a miss (default 2 on CUDA, 120 on a CPU)')
    p.add_argument('--after-steps', type=int, default=0,
                   help='instead of the clock: ask once, when the trainer has taken the last keyframe and trained '
                        'this many steps more (a schedule in steps, which a CPU can follow at the GPU\'s pace; the '
                        'rescan then waits --steps-per-keyframe steps between keyframes)')
    p.add_argument('--steps-per-keyframe', type=int, default=30,
                   help='with --after-steps: training steps between rescan keyframes (default 30, an H100 at 2/s)')
    p.add_argument('--json', default='', help='write every trial here')
    p.add_argument('--scenes', type=Path,
                   help='folder of rendered changes: read each seed and kind from it when there, else render (open3d) '
                        'and write it there (a machine without open3d reads what was rendered here)')
    p.add_argument('--render-only', action='store_true', help='render every seed and kind into --scenes and stop')
    p.set_defaults(func=run)


@dataclasses.dataclass
class RenderedChange:
    """What a trial needs of a `SceneChangeCase`, without its open3d geometry (so it travels to a GPU machine)."""

    seed: int
    kind: str
    name: str
    scan: list
    rescan: list
    labels: Dict[int, str]
    objects_before: Dict[str, Dict]
    objects: Dict[str, Dict]
    old_center: Optional[np.ndarray]
    new_center: Optional[np.ndarray]
    workspace: object


def rendered_change(seed: int, kind: str, args) -> RenderedChange:
    """Return the seed's change of `kind`: read from --scenes when there, else rendered (open3d) and written there.

    Raises:
        ValueError: the layout has no room for the change (`make_change`); remembered in --scenes, so a machine
            without open3d skips it too.
    """
    from .semantic import load_scene, save_scene
    stem = f'change_{seed}_{kind}_{args.objects}x{args.views}+{args.rescan}_{args.width}x{args.height}'
    scan_path = None if args.scenes is None else args.scenes / f'{stem}_scan.npz'
    rescan_path = None if args.scenes is None else args.scenes / f'{stem}_rescan.npz'
    refused_path = None if args.scenes is None else args.scenes / f'{stem}_refused.txt'
    if refused_path is not None and refused_path.exists():
        raise ValueError(refused_path.read_text().strip())
    if scan_path is not None and scan_path.exists() and rescan_path.exists():
        name, scan, labels, before, workspace = load_scene(scan_path)
        _, rescan, _, after, _ = load_scene(rescan_path)
        # the changed object's centres before and after, as `make_change` gives them
        old, new = (objects[name]['center'] if name in objects else None for objects in (before, after))
        return RenderedChange(seed, kind, name, scan, rescan, labels, before, after, old, new, workspace)
    from ..core.scenes.changes import make_change
    try:
        case = make_change(seed, kind, num_objects=args.objects, num_views=args.views, rescan_views=args.rescan,
                           width=args.width, height=args.height)
    except ValueError as error:
        if refused_path is not None:
            refused_path.parent.mkdir(parents=True, exist_ok=True)
            refused_path.write_text(f'{error}\n')
        raise
    out = RenderedChange(seed, kind, case.name, case.scan, case.rescan, case.labels, case.objects_before,
                         case.objects, case.old_center, case.new_center, case.scene.workspace)
    if scan_path is not None:
        save_scene(scan_path, case.name, case.scan, case.labels, case.objects_before, out.workspace)
        save_scene(rescan_path, case.name, case.rescan, case.labels, case.objects, out.workspace)
    return out


def ask(querier, names, case, objects: Dict[str, Dict]) -> Dict[str, Dict]:
    """One round: per name, status, top-cluster error to its truth in `objects`, and clusters near the old place."""
    out = {}
    for name in names:
        result = querier.query(name)
        truth = objects.get(name)
        best = result.best if result.found else None
        error = math.inf if best is None or truth is None else float(np.linalg.norm(best.centroid - truth['center']))
        near_old = math.inf
        if name == case.name and case.old_center is not None and result.found:
            near_old = min((float(np.linalg.norm(c.centroid - case.old_center)) for c in result.clusters),
                           default=math.inf)
        out[name] = {'status': result.status, 'error_m': error, 'near_old_m': near_old,
                     # where the answer was, to read a miss from the rounds: (centroid, extent, voxels) per cluster
                     'clusters': [(np.round(c.centroid, 3).tolist(), np.round(c.extent, 3).tolist(), c.num_points)
                                  for c in result.clusters[:3]]}
    return out


def met(case, answers: Dict[str, Dict], tolerance: float, old_radius: float) -> bool:
    """Whether a round's answers show the change: see the module docstring."""
    answer = answers[case.name]
    if case.kind == 'removed':
        return answer['status'] == 'not_present'
    if case.kind == 'added':
        return answer['error_m'] <= tolerance
    return answer['error_m'] <= tolerance and answer['near_old_m'] > old_radius


def trial(case, config, args, limit: float) -> Dict:
    """Scan, train, change, rescan at the rate and ask until met or `limit`: the trial's record."""
    from ..core.query.answer import FieldQuerier
    from ..core.training.online import OnlineSession, SessionSettings
    session = OnlineSession(config, SessionSettings(min_frames=5, teacher_choice='labels'), labels=case.labels)
    for frame in case.scan:   # copies: the session masks its keyframes in place
        session.add_frame(dataclasses.replace(frame))
    started = time.perf_counter()
    session.start()
    try:
        while session.state != 'done':
            if session.status()['error']:
                raise SystemExit(f'training failed: {session.status()["error"]}')
            time.sleep(0.1)
        scan_train_s = time.perf_counter() - started
        querier = FieldQuerier(session.trainer.model, session.teacher, copy.deepcopy(config),
                               lock=session.trainer.lock, keyframes=session.trainer.store.snapshot)
        others = [n for n in case.objects if n != case.name]
        names = [case.name] + others
        before = ask(querier, names, case, case.objects_before)
        # a change to an object the scan never learnt cannot be followed: the trial is a miss from the start
        learnt = case.kind == 'added' or before[case.name]['error_m'] <= args.tolerance
        others = [n for n in others if before[n]['error_m'] <= args.tolerance]   # what a change must not undo
        if args.after_steps:
            return stepped_trial(case, args, session, querier, names, others, before, learnt, scan_train_s)
        feeder = KeyframeFeeder(session, [dataclasses.replace(f) for f in case.rescan], args.rate)
        feeder.start()
        rounds: List[Dict] = []
        met_s: Optional[float] = None
        others_ok = True
        version = session.model_version
        while True:
            if feeder.problem or session.status()['error']:
                raise SystemExit(feeder.problem or f'training failed: {session.status()["error"]}')
            last = feeder.last_keyframe
            if last is not None and feeder.clock() - last > limit:
                break
            asked_at = feeder.clock()
            after_last = last is not None and session.trainer.num_frames == len(case.scan) + len(case.rescan)
            if session.model_version != version:
                querier.invalidate()
                version = session.model_version
            answers = ask(querier, names, case, case.objects)
            answered_at = feeder.clock()
            rounds.append({'asked_s': round(asked_at, 2), 'answered_s': round(answered_at, 2), 'step': session.step,
                           'after_last_keyframe': after_last,
                           **{f'{n}_cm': round(a['error_m'] * 100, 1) for n, a in answers.items()},
                           f'{case.name}_status': answers[case.name]['status'],
                           f'{case.name}_clusters': answers[case.name]['clusters']})
            if after_last:
                others_ok &= all(answers[n]['error_m'] <= args.tolerance for n in others)
                if learnt and met(case, answers, args.tolerance, args.old_radius):
                    met_s = answered_at - last
                    break
            time.sleep(max(0.0, asked_at + args.poll - feeder.clock()))
        feeder.stop()
        return trial_record(case, session, met_s, learnt, others_ok, others, scan_train_s, before, rounds)
    finally:
        session.stop(timeout=30.0)


def stepped_trial(case, args, session, querier, names, others, before, learnt, scan_train_s) -> Dict:
    """Finish `trial` on a schedule of steps (--after-steps).

    A rescan keyframe every --steps-per-keyframe steps, then one round --after-steps steps after the last; met or
    not (`met_s` 0 when met).
    """
    def wait_steps(count: int) -> None:
        target, idle_since = session.step + count, None
        while session.step < target:
            if session.status()['error']:
                raise SystemExit(f'training failed: {session.status()["error"]}')
            if session.state != 'done':
                idle_since = None
            elif idle_since is None:
                idle_since = time.perf_counter()
            elif time.perf_counter() - idle_since > IDLE_DONE_S:   # training ended: its step budget is spent
                return
            time.sleep(0.05)

    for frame in case.rescan:
        wait_steps(args.steps_per_keyframe)
        session.add_frame(dataclasses.replace(frame))
    while session.trainer.num_frames < len(case.scan) + len(case.rescan):
        time.sleep(0.05)
    wait_steps(args.after_steps)
    querier.invalidate()
    answers = ask(querier, names, case, case.objects)
    rounds = [{'step': session.step, 'after_last_keyframe': True,
               **{f'{n}_cm': round(a['error_m'] * 100, 1) for n, a in answers.items()},
               f'{case.name}_status': answers[case.name]['status'],
               f'{case.name}_clusters': answers[case.name]['clusters']}]
    met_s = 0.0 if learnt and met(case, answers, args.tolerance, args.old_radius) else None
    return trial_record(case, session, met_s, learnt, all(answers[n]['error_m'] <= args.tolerance for n in others),
                        others, scan_train_s, before, rounds)


def trial_record(case, session, met_s, learnt, others_within, others, scan_train_s, before, rounds) -> Dict:
    """One trial's record for the JSON (`trial`, `stepped_trial`)."""
    return {'seed': case.seed, 'kind': case.kind, 'object': case.name, 'met_s': met_s, 'learnt': learnt,
            'others_within': bool(others_within), 'others_learnt': others, 'scan_train_s': round(scan_train_s, 1),
            'events': [event.summary() for event in session.changes.events],
            'before': {n: a['error_m'] for n, a in before.items()}, 'rounds': rounds,
            'old_center': None if case.old_center is None else case.old_center.tolist(),
            'new_center': None if case.new_center is None else case.new_center.tolist()}


def changes(args):
    """Every seed's change of every kind (`RenderedChange`), skipping with a line those a layout has no room for."""
    for seed in args.seeds:
        for kind in args.kinds:
            try:
                yield rendered_change(seed, kind, args)
            except ValueError as error:
                print(f'seed {seed} {kind}: skipped ({error})', flush=True)


def run(args) -> int:
    """Run every seed and kind; print a row per trial and a RESULT line per kind."""
    from ..core.training.trainer import pick_device
    if args.render_only:
        if args.scenes is None:
            raise SystemExit('--render-only needs --scenes DIR')
        made = sum(1 for _ in changes(args))
        print(f'[bench] changes: rendered {made} changes into {args.scenes}')
        return 0
    device = pick_device(args.device or 'auto')
    limit = args.limit or (2.0 if device.type == 'cuda' else 120.0)
    config = config_from_args(args)
    config.trainer.device = str(device)
    if args.steps:
        config.trainer.steps = args.steps
    config.trainer.checkpoint_every = 0
    config.trainer.eval_every = 0          # the clock is the answers', not a held-out PSNR's
    print(f'bench changes on {device_name() if device.type == "cuda" else "cpu"}: preset {args.preset}, seeds '
          f'{args.seeds}, {args.views} scan + {args.rescan} rescan keyframes of {args.width}x{args.height} at '
          f'{args.rate:g}/s, {config.trainer.steps} steps; time limit {limit:g} s after the last keyframe',
          flush=True)
    trials = []
    for case in changes(args):
        trial_config = copy.deepcopy(config)
        trial_config.workspace = case.workspace
        record = trial(case, trial_config, args, limit)
        trials.append(record)
        print(f'seed {case.seed} {case.kind} {case.name}: '
              + ('miss' if record['met_s'] is None else f'{record["met_s"]:.2f} s')
              + ('' if record['learnt'] else ' (the scan never learnt it)')
              + f', others within {args.tolerance * 100:g} cm: {record["others_within"]}, '
                f'{len(record["events"])} change events', flush=True)
    rows = [['change', 'trials', 'ok', 'median s', 'worst s', 'others within']]
    lines = []
    for kind in args.kinds:
        mine = [t for t in trials if t['kind'] == kind]
        if not mine:
            lines.append(f'RESULT change={kind} trials=0 (every seed skipped)')
            continue
        times = [math.inf if t['met_s'] is None else t['met_s'] for t in mine]
        ok = sum(t <= limit for t in times) / len(mine)
        others = sum(t['others_within'] for t in mine) / len(mine)
        median, worst = float(np.median(times)), max(times)
        rows.append([kind, len(mine), f'{ok:.2f}', f'{median:.2f}', f'{worst:.2f}', f'{others:.2f}'])
        lines.append(f'RESULT change={kind} trials={len(mine)} ok={ok:.2f} median_s={median:.2f} worst_s={worst:.2f} '
                     f'others_within_2cm={others:.2f} '
                     + (f'after_steps={args.after_steps}' if args.after_steps else f'limit_s={limit:g}'))
    print('\n' + format_table(rows))
    print(f'answers asked {args.after_steps} training steps after the last rescan keyframe' if args.after_steps
          else f'time limit: {limit:g} s after the last rescan keyframe')
    for line in lines:
        print(line, flush=True)
    write_json(args.json, {'trials': trials, 'limit_s': limit, 'args': vars(args)})
    return 0
