"""Online training without ROS: keyframes come in one at a time, a background thread trains.

* `StampAssembler` puts back together the parts of one keyframe that travel on separate topics with one
  stamp (image, camera_info, pose, and optionally depth and labels).
* `OnlineSession` owns the `FrameStore`, the teacher and the `OnlineTrainer`; it resumes a scan from a
  dataset folder and the newest checkpoint, trains on a background thread once `min_frames` keyframes
  exist, checkpoints atomically every N steps and on request, and can be paused, resumed and reset. Its
  `status()` is what the trainer node publishes.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import F3RMConfig
from ..capture.frames import FrameStore, PosedFrame, iter_dataset, read_metadata
from ..capture.keyframes import replacement_slot
from ..changes.tracker import ChangeTracker, SceneChange
from ..geometry import WorkspaceBox

log = logging.getLogger(__name__)

CHECKPOINT_NAME = 'latest.ckpt'
# Two keyframe stamps closer than this are the same keyframe (a double holds epoch seconds to ~0.2 us).
STAMP_TOLERANCE_S = 1e-5
# The periodic held-out PSNR of a live session renders views at most this big (full 640x480 views take about a
# minute on a 2-core CPU and stall training meanwhile).
EVAL_MAX_PIXELS = 160 * 120
# The state while a started session pays its one-off costs (imports, device) before any keyframe is needed.
WARMING_UP = 'warming up (imports, device)'
# After a failed checkpoint write (e.g. disk full) the training loop tries again after this long.
WRITE_RETRY_S = 10.0
# A step at least this long (s) is followed by a copy of the state (model, optimisers) that a stop writes instead of
# waiting for the step in progress: F3RM's gpu sizes on two CPU cores took 12 s a step, and ``ros2 launch`` sends
# SIGTERM 5 s after SIGINT. Shorter steps (any GPU, the CPU presets) are waited for and copy nothing.
LONG_STEP_S = 1.0
# How long a stop waits for the checkpoint's locks once the training thread has not ended (s).
STOP_LOCK_WAIT_S = 0.5


# ---------------------------------------------------------------------------------------------- assembly

class StampAssembler:
    """Group parts published separately with one stamp into complete items.

    An item is complete when every `required` part is there, and every `optional` part that has ever been
    seen is there too; an optional part never seen yet is waited for `grace_s` (it may just be late).
    Items still incomplete after `wait_s` are dropped (required part missing) or emitted without the late
    optional part. Parts of already emitted or dropped stamps are ignored.
    """

    def __init__(self, required: Sequence[str], optional: Sequence[str] = (), wait_s: float = 2.0,
                 grace_s: float = 0.3, max_pending: int = 32, clock: Callable[[], float] = time.monotonic):
        if wait_s < 0 or grace_s < 0 or max_pending < 1:
            raise ValueError('wait_s and grace_s must be >= 0 and max_pending >= 1')
        self.required = tuple(required)
        self.optional = tuple(optional)
        self.wait_s, self.grace_s, self.max_pending = float(wait_s), float(grace_s), int(max_pending)
        self.clock = clock
        self.seen = {name: False for name in self.optional}
        self.pending: 'OrderedDict[float, Tuple[float, Dict[str, Any]]]' = OrderedDict()
        self.finished: deque = deque(maxlen=256)

    def add(self, part: str, stamp: float, value: Any) -> Tuple[List[Tuple[float, Dict[str, Any]]], List[str]]:
        """Add one part; returns (completed items as (stamp, parts), problems) settled by this call."""
        if part not in self.required and part not in self.optional:
            raise ValueError(f'unknown part {part!r}')
        stamp = float(stamp)
        if part in self.seen:
            self.seen[part] = True
        if stamp in self.finished:
            return [], []
        if stamp not in self.pending:
            self.pending[stamp] = (self.clock(), {})
        parts = self.pending[stamp][1]
        problems = [f'{part} for stamp {stamp:.6f} s received twice; the newer one is kept'] if part in parts else []
        parts[part] = value
        done, more = self.poll()
        return done, problems + more

    def poll(self) -> Tuple[List[Tuple[float, Dict[str, Any]]], List[str]]:
        """Settle items that are complete or waited too long; returns (completed, problems)."""
        done, problems = [], []
        now = self.clock()
        for stamp in list(self.pending):
            arrived, parts = self.pending[stamp]
            age = now - arrived
            has_required = all(name in parts for name in self.required)
            expected = [name for name in self.optional if self.seen[name] and name not in parts]
            all_optional = all(name in parts for name in self.optional)
            if has_required and not expected and (all_optional or age >= self.grace_s):
                done.append((stamp, parts))
            elif age >= self.wait_s:
                if has_required:
                    done.append((stamp, parts))
                    problems.append(f'keyframe {stamp:.6f} s: no {", ".join(expected)} after {self.wait_s:.1f} s;'
                                    ' using it without')
                else:
                    missing = [name for name in self.required if name not in parts]
                    problems.append(f'keyframe {stamp:.6f} s dropped: no {", ".join(missing)} within '
                                    f'{self.wait_s:.1f} s of its first part')
            else:
                continue
            del self.pending[stamp]
            self.finished.append(stamp)
        while len(self.pending) > self.max_pending:
            stamp, _ = self.pending.popitem(last=False)
            self.finished.append(stamp)
            problems.append(f'keyframe {stamp:.6f} s dropped: more than {self.max_pending} incomplete keyframes')
        return done, problems


# ---------------------------------------------------------------------------------------------- session

@dataclass
class SessionSettings:
    """How the background training runs (the trainer node's own parameters)."""

    min_frames: int = 5              # keyframes before training starts
    dataset_dir: str = ''            # the capture's scan folder (read at start-up only with `resume`)
    checkpoint_dir: str = ''         # where latest.ckpt goes ('' = no checkpoints)
    # continue the scan in dataset_dir and checkpoint_dir/latest.ckpt; False (a new scan) keeps an old
    # latest.ckpt as previous.ckpt
    resume: bool = False
    teacher_choice: str = 'auto'     # auto | clip | labels | dino | custom | several joined by + (clip+dino ...)
    allow_random_teacher: bool = False  # distil random-weight CLIP (not semantic) rather than refuse it
    steps_per_new_frame: int = 20    # after the step budget is spent, train this much more per new keyframe
    stats_every: int = 5             # read losses back from the device every N steps
    stall_timeout_s: float = 120.0   # health() says ERROR after this long without a step while it should train

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        if int(self.min_frames) < 1:
            raise ValueError(f'min_frames must be >= 1, got {self.min_frames}')
        if self.teacher_choice != 'auto':
            from ..teachers import teacher_parts
            teacher_parts(self.teacher_choice)  # ValueError naming the teachers there are
        if int(self.steps_per_new_frame) < 0 or int(self.stats_every) < 1:
            raise ValueError('steps_per_new_frame must be >= 0 and stats_every >= 1')
        if not self.stall_timeout_s > 0:
            raise ValueError(f'stall_timeout_s must be > 0, got {self.stall_timeout_s}')


class OnlineSession:
    """Background training on a growing set of keyframes (see the module docstring).

    Thread safety: `add_frame`, `set_labels`, `pause`, `resume`, `reset`, `save` and `status` may be called
    from any thread while the training thread runs. Readers of the live model hold `trainer.lock`.
    `on_checkpoint(path)` is called (from the thread that saved) after every checkpoint, `on_change(event)` after
    every scene change (`core.changes`: detected in a new keyframe, or `declare_change`).
    """

    def __init__(self, config: F3RMConfig, settings: SessionSettings,
                 labels: Optional[Mapping[int, str]] = None,
                 on_checkpoint: Optional[Callable[[Path], None]] = None,
                 on_change: Optional[Callable[[SceneChange], None]] = None):
        settings.validate()
        self.config = config
        self.settings = settings
        self.config_teacher_asked = config.teacher.name   # choose_teacher rewrites config.teacher.name
        self.on_checkpoint = on_checkpoint
        self.store = FrameStore(config.trainer.capacity)
        self.labels: Optional[Dict[int, str]] = dict(labels) if labels else None
        self.teacher = None
        self.teacher_reason = ''
        self.trainer = None
        self.target_steps = int(config.trainer.steps)
        self._stamps: List[float] = []
        self._lock = threading.Lock()           # guards the fields below and the store's membership
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._reset_requested = False
        self._thread: Optional[threading.Thread] = None
        self._state = 'waiting for keyframes'
        self._error = ''
        self._synced_version = -1
        self._loss: Dict[str, float] = {}
        self._eval_psnr = float('nan')
        self._rays_per_s = 0.0
        self._resumed_step = 0
        self._resumed_frames = 0
        self._saved_step = -1
        self._between: Optional[Tuple[int, Dict]] = None   # (step, state) copied after the last long step
        self._checkpoint_pending: Optional[Path] = None
        self._save_lock = threading.Lock()      # one checkpoint write at a time (training thread, service, stop)
        self.scan_id = ''                       # the scan the keyframes belong to ('' = not known yet)
        self._after_reset: List[PosedFrame] = []   # keyframes that arrived while a reset was pending
        self.checkpoint_problem = ''            # a checkpoint refused at start-up (until the next good save)
        self.write_error = ''                   # the last checkpoint write failed (until one succeeds)
        self._write_failed_at = 0.0
        self.teacher_warning = ''               # the teacher is not what was asked for, or not semantic
        self._progress = time.monotonic()       # last step / build / sync end (stall detection)
        self.model_version = 0                  # bumps whenever the model's weights change
        self._change_step = 0                   # training step of the last scene change
        self.replaced = 0                       # keyframes that replaced a redundant view in a full store
        self.on_change = on_change
        self.changes = ChangeTracker(config.changes, WorkspaceBox.from_config(config.workspace))
        self._changes_lock = threading.Lock()   # one change applied at a time (training thread, service)

    # ------------------------------------------------------------------------------------------ paths

    @property
    def checkpoint_path(self) -> Optional[Path]:
        """Where the newest checkpoint is written (None without a checkpoint_dir)."""
        if not self.settings.checkpoint_dir:
            return None
        return Path(self.settings.checkpoint_dir).expanduser() / CHECKPOINT_NAME

    # ------------------------------------------------------------------------------------------ inputs

    def add_frame(self, frame: PosedFrame) -> Tuple[bool, str]:
        """Offer a keyframe; returns (added, why not / how). Frames already held (same stamp) are skipped.

        A full store keeps coverage: the keyframe replaces the most redundant held view when it spreads the scan
        (`keyframes.replacement_slot`), else it is refused with the reason.
        """
        with self._lock:
            if self._reset_requested:  # the reset drops the store: keep this one for after it
                self._after_reset.append(frame)
                self._wake.set()
                return True, ''
            if self._holds(frame.stamp):
                return False, f'keyframe {frame.stamp:.6f} s is already held'
            if self._needs_labels() and frame.labels is None:
                return False, (f'keyframe {frame.stamp:.6f} s has no label image but the teacher is labels '
                               '(publish aligned labels, or use teacher.name: clip)')
            resolution = self.store.resolution
            if resolution is not None and tuple(resolution) != (frame.height, frame.width):
                return False, (f'keyframe is {frame.width} x {frame.height} but the scan is '
                               f'{resolution[1]} x {resolution[0]}: one camera resolution per scan')
            if self.store.full:
                return self._replace(frame)
            self.store.add(frame)
            bisect.insort(self._stamps, float(frame.stamp))
        self._wake.set()
        return True, ''

    def _replace(self, frame: PosedFrame) -> Tuple[bool, str]:
        """Keep coverage in a full store: `frame` replaces the most redundant view when it spreads the scan.

        Called with `_lock` held. The trainer re-extracts the replaced slot (teacher features, pixels, a fresh
        camera) at its next sync.
        """
        frames = self.store.snapshot()
        slot = replacement_slot([f.T_base_optical for f in frames], frame.T_base_optical)
        if slot is None:
            return False, (f'the trainer holds {len(frames)} keyframes (trainer.capacity) and this view adds no '
                           'coverage: every held view is farther from its neighbours than this one would be')
        old = float(frames[slot].stamp)
        self.store.replace(slot, frame)
        index = bisect.bisect_left(self._stamps, old - STAMP_TOLERANCE_S)
        if index < len(self._stamps) and abs(self._stamps[index] - old) <= STAMP_TOLERANCE_S:
            del self._stamps[index]
        bisect.insort(self._stamps, float(frame.stamp))
        self.replaced += 1
        log.info('store full (%d keyframes): keyframe %.3f s replaces the most redundant view (slot %d, %.3f s)',
                 len(frames), frame.stamp, slot, old)
        self._wake.set()
        return True, f'replaced slot {slot} (the most redundant view) to keep coverage'

    def _holds(self, stamp: float) -> bool:
        """Whether a keyframe with this stamp is held (floats of epoch stamps differ in the last bits)."""
        index = bisect.bisect_left(self._stamps, stamp - STAMP_TOLERANCE_S)
        return index < len(self._stamps) and self._stamps[index] <= stamp + STAMP_TOLERANCE_S

    def _needs_labels(self) -> bool:
        if self.teacher is not None:
            return 'labels' in self.teacher.name.split('+')
        choice = self.settings.teacher_choice
        return 'labels' in choice.split('+') or (choice == 'auto' and self.config.teacher.name == 'labels')

    def set_labels(self, labels: Mapping[int, str]) -> None:
        """Object id → name for the labels teacher (used when the teacher is built)."""
        with self._lock:
            self.labels = {int(k): str(v) for k, v in labels.items()}
        self._wake.set()

    def resume_from_disk(self) -> Dict[str, Any]:
        """Start-up: continue the scan on disk (`resume`), or set an old checkpoint aside for a new scan.

        With `resume`: every keyframe and the label names of the scan in `dataset_dir`, and its scan id, are
        taken; the newest checkpoint is loaded when training starts. Without: nothing is read, and an old
        ``latest.ckpt`` becomes ``previous.ckpt`` (a new scan's first save would overwrite it). Returns
        ``{'frames', 'checkpoint', 'scan_id', 'previous'}``.
        """
        summary = {'frames': 0, 'checkpoint': '', 'scan_id': '', 'previous': ''}
        path = self.checkpoint_path
        if not self.settings.resume:
            if path is not None and path.exists():
                previous = path.with_name('previous.ckpt')
                path.replace(previous)
                summary['previous'] = str(previous)
            return summary
        root = Path(self.settings.dataset_dir).expanduser() if self.settings.dataset_dir else None
        if root is not None and (root / 'transforms.json').exists():
            meta = read_metadata(root)
            if isinstance(meta.get('labels'), dict) and meta['labels']:
                self.set_labels({int(k): v for k, v in meta['labels'].items()})
            self.scan_id = summary['scan_id'] = str(meta.get('scan_id', ''))
            for frame in iter_dataset(root):   # one at a time: a long scan on disk may exceed the store
                added, _ = self.add_frame(frame)
                summary['frames'] += int(added)
        if path is not None and path.exists():
            summary['checkpoint'] = str(path)
        self._resumed_frames = summary['frames']
        return summary

    def set_scan(self, scan_id: str) -> bool:
        """Take the capture's current scan id: one different from the held scan's resets the session.

        Returns True when that started a reset (a new scan: model and keyframes dropped). The first id
        heard by a session that holds nothing is simply adopted.
        """
        scan_id = str(scan_id)
        with self._lock:
            if not scan_id or scan_id == self.scan_id:
                return False
            previous, self.scan_id = self.scan_id, scan_id
            holds = bool(len(self.store) or self.trainer is not None)
        if not previous or not holds:  # the first id heard (keyframes held are of this scan), or nothing held
            return False
        log.info('new scan %s (was %s): dropping the model and %d keyframes', scan_id, previous or '?',
                 len(self.store))
        self.reset()
        return True

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the training thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._state = WARMING_UP  # set here, not in the thread: a caller may wait on it at once
            self._thread = threading.Thread(target=self._run, name='f3rm-training', daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0, save: bool = False) -> bool:
        """Stop the training thread; optionally save a last checkpoint. Returns whether the thread ended.

        The thread checks the stop flag between training steps, between teacher-feature chunks and after
        building the teacher, so it ends within one step or one chunk. `timeout` bounds the wait (a node
        shutting down under ``ros2 launch`` has 5 s before SIGTERM): a thread still busy after it (the first
        load of a CLIP model, a long step) is a daemon and is left behind, and the last checkpoint is written
        without waiting for it (`save_without_waiting`): the state now when no step is in progress, else the
        state copied after the last long step, else the checkpoint on disk stands.
        """
        self._stop.set()
        self._wake.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            if not ended:
                log.warning('training thread still busy (%s) after %.1f s; stopping without it', self._state, timeout)
        if save and self.trainer is not None and self.checkpoint_path is not None:
            if not ended:
                self.save_without_waiting()
            elif self.trainer.step_count != self._saved_step:
                self._save(self.checkpoint_path)
        return ended

    @property
    def saved_step(self) -> int:
        """The step of the newest checkpoint this session wrote or resumed (-1: none)."""
        return self._saved_step

    def save_without_waiting(self, wait_s: float = STOP_LOCK_WAIT_S) -> Optional[Path]:
        """Write a consistent checkpoint while the training thread may be inside a long step; returns the path.

        The locks are waited for at most `wait_s` each (in the training thread's order: writes, then the model).
        Between steps the state now is written; during a step, the copy kept after the last long step
        (`LONG_STEP_S`), if it is newer than the checkpoint on disk; otherwise nothing (None).
        """
        from .trainer import CheckpointWriteError
        trainer, path = self.trainer, self.checkpoint_path
        if trainer is None or path is None:
            return None
        if not self._save_lock.acquire(timeout=wait_s):
            log.warning('a checkpoint write is in progress; the last checkpoint is the one it writes')
            return None
        try:
            if trainer.lock.acquire(timeout=wait_s):
                try:
                    if trainer.step_count == self._saved_step:
                        return path
                    step, state = trainer.step_count, trainer.checkpoint_state(self.scan_id)
                    path = trainer.save_checkpoint(path, state=state)
                finally:
                    trainer.lock.release()
            elif self._between is not None and self._between[0] > self._saved_step:
                step, state = self._between
                path = trainer.save_checkpoint(path, state=state)
                log.info('a step was still in progress: wrote the state after step %d', step)
            else:
                log.warning('a step is still in progress and no state between steps is newer; the checkpoint of '
                            'step %d stands', self._saved_step)
                return None
            self._saved_step = step
        except CheckpointWriteError as error:
            self.write_error, self._write_failed_at = str(error), time.monotonic()
            raise
        finally:
            self._save_lock.release()
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(path)
            except Exception:  # a listener must not stop the stop
                log.exception('checkpoint listener failed')
        return path

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (the training thread ends at its next check)."""
        return self._stop.is_set()

    def pause(self) -> str:
        """Pause training after the current step."""
        self._paused = True
        return f'paused at step {self.step}'

    def resume(self) -> str:
        """Resume a paused training."""
        self._paused = False
        self._wake.set()
        return f'resumed at step {self.step}'

    def reset(self) -> str:
        """Forget the model and every keyframe (a new scan); the newest checkpoint becomes previous.ckpt."""
        with self._lock:
            self._reset_requested = True
        self._wake.set()
        return 'reset requested: model and keyframes will be dropped'

    def save(self) -> Path:
        """Save a checkpoint now (thread-safe); returns its path. RuntimeError when there is no model."""
        if self.trainer is None:
            raise RuntimeError(f'no model yet ({self.state})')
        if self.checkpoint_path is None:
            raise RuntimeError('checkpoint_dir is empty: nowhere to save')
        return self._save(self.checkpoint_path)

    def _save(self, path: Path) -> Path:
        """Write the checkpoint; `CheckpointWriteError` (disk full ...) is remembered in `write_error` and raised."""
        from .trainer import CheckpointWriteError
        with self._save_lock:
            trainer = self.trainer
            if trainer.step_count == self._saved_step and trainer.last_checkpoint == path and path.exists():
                return path  # another thread has just written this very step
            try:
                path = trainer.save_checkpoint(path, scan_id=self.scan_id)
            except CheckpointWriteError as error:
                self.write_error, self._write_failed_at = str(error), time.monotonic()
                log.error('checkpoint at step %d not written: %s', trainer.step_count, error)
                raise
            if self.write_error:
                log.info('checkpoint written again (step %d): %s', trainer.step_count, path)
            self.write_error = self.checkpoint_problem = ''
            self._saved_step = trainer.step_count
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(path)
            except Exception:  # a listener must not stop training
                log.exception('checkpoint listener failed')
        return path

    def _try_save(self, path: Path) -> bool:
        """`_save` for the training loop: a failed write is reported and retried later, never fatal.

        After a failure the next attempt waits `WRITE_RETRY_S` (a full disk is not asked every step).
        """
        from .trainer import CheckpointWriteError
        if self.write_error and time.monotonic() - self._write_failed_at < WRITE_RETRY_S:
            return False
        try:
            self._save(path)
            return True
        except CheckpointWriteError:
            return False

    # ------------------------------------------------------------------------------------------ status

    @property
    def step(self) -> int:
        """Training steps done (including those of a resumed checkpoint)."""
        return self.trainer.step_count if self.trainer is not None else 0

    @property
    def warming_up(self) -> bool:
        """Whether the training thread is still paying its start-up (`_warm_up`)."""
        return self._state == WARMING_UP

    @property
    def state(self) -> str:
        """Human-readable state: waiting ..., training, paused, done, error: ..."""
        return self._state

    def status(self) -> Dict[str, Any]:
        """Everything the status topic shows."""
        out = {'state': self._state, 'step': self.step, 'target_steps': self.target_steps,
               'frames': len(self.store), 'replaced_frames': self.replaced,
               'trained_frames': self.trainer.num_frames if self.trainer else 0,
               'rays_per_s': round(self._rays_per_s, 1), 'eval_psnr': self._eval_psnr,
               'resumed_frames': self._resumed_frames, 'resumed_step': self._resumed_step,
               'teacher': self.teacher.name if self.teacher is not None else '',
               # the feature heads being distilled, the text head first ('labels 16, dino 384')
               'heads': ', '.join(f'{n} {d}' for n, d in self.teacher.heads) if self.teacher is not None else '',
               'device': str(self.trainer.device) if self.trainer is not None else '',
               'checkpoint': str(self.trainer.last_checkpoint or '') if self.trainer is not None else '',
               'error': self._error, 'scan_id': self.scan_id,
               'teacher_reason': self.teacher_reason if self.teacher is not None else '',
               'checkpoint_problem': self.checkpoint_problem, 'write_error': self.write_error,
               'since_progress_s': round(time.monotonic() - self._progress, 1),
               'scene_changes': len(self.changes.events),
               'last_scene_change': self.changes.events[-1].summary() if self.changes.events else ''}
        out.update(self._loss)
        return out

    def health(self) -> Tuple[str, str]:
        """('ok' | 'warn' | 'error', why): what the trainer node's diagnostics level says.

        ERROR: the training thread died, a checkpoint write failed (until one succeeds), a checkpoint was
        refused at start-up (until the next good save), or no step for `stall_timeout_s` while it should
        train. WARN: a long teacher-feature extraction, or a teacher that is not semantic or not the one
        asked for (`teacher_warning`).
        """
        if self._error:
            return 'error', f'training stopped: {self._error}'
        if self.write_error:
            return 'error', f'checkpoint not written: {self.write_error}'
        if self.checkpoint_problem:
            return 'error', self.checkpoint_problem
        idle = time.monotonic() - self._progress
        should_train = (self.trainer is not None and not self._paused and not self._stop.is_set()
                        and not self._reset_requested and self.step < self.target_steps)
        if should_train and idle > self.settings.stall_timeout_s:
            if self._state == 'extracting teacher features':
                return 'warn', f'extracting teacher features for {idle:.0f} s'
            return 'error', f'training stalled: no step for {idle:.0f} s (state: {self._state})'
        if self.teacher_warning:
            return 'warn', self.teacher_warning
        return 'ok', ''

    # ------------------------------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._warm_up()
            self._loop()
        except Exception as error:  # keep the node alive; the status says what happened
            log.exception('training stopped')
            self._error = f'{type(error).__name__}: {error}'
            self._state = f'error: {self._error}'

    def _warm_up(self) -> None:
        """Pay a first model's one-off costs before the keyframes come, not while a scan waits for answers.

        Measured on an H200 (`bench online`): the first model of a process took 11.9 s to build, nearly all of
        it imports nerfacto makes lazily (torchmetrics, which pulls in transformers and torch._dynamo), plus
        5 s to start CUDA; the scan's training then began only near its last keyframe. A throwaway model
        built on the CPU and a tiny matrix product on the training device do both once, at start-up.
        """
        started = time.perf_counter()  # `start` has set the state to WARMING_UP
        from .model import build_model
        from .trainer import pick_device
        build_model(self.config, 1)
        device = pick_device(self.config.trainer.device)
        if device.type == 'cuda':
            import torch
            probe = torch.ones(8, 8, device=device)
            (probe @ probe).sum().item()
        log.info('warmed up in %.1f s (imports, %s)', time.perf_counter() - started, device)
        self._state = 'waiting for keyframes'
        self._progress = time.monotonic()

    def _wait(self, seconds: float = 0.2) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _loop(self) -> None:
        window_start, window_steps = time.perf_counter(), 0
        while not self._stop.is_set():
            if self._reset_requested:
                self._do_reset()
                continue
            if self._paused:
                self._state = 'paused'
                self._wait()
                continue
            if self.trainer is None:
                if not self._try_build():
                    self._wait()
                    continue
                window_start, window_steps = time.perf_counter(), 0
            if self.store.version != self._synced_version:
                self._sync()
                if self._stop.is_set():   # a stop during the teacher's features: no step after them
                    break
            if self.trainer.step_count >= self.target_steps:
                # save first: 'done' promises the final checkpoint is on disk (or write_error says why not;
                # the write is tried again every WRITE_RETRY_S, so space that comes back is used)
                if self.checkpoint_path is not None and self._saved_step != self.trainer.step_count:
                    self._try_save(self.checkpoint_path)
                self._state = 'done'
                self._progress = time.monotonic()
                self._wait(0.5)
                window_start, window_steps = time.perf_counter(), 0
                continue
            self._state = 'training'
            began = time.perf_counter()
            stats = self.trainer.step()
            if self.checkpoint_path is not None and time.perf_counter() - began >= LONG_STEP_S:
                # a stop must not wait for the next long step: it writes this state instead (`stop`)
                self._between = (self.trainer.step_count, self.trainer.checkpoint_state(self.scan_id, copy=True))
            self._progress = time.monotonic()
            self.model_version += 1
            window_steps += 1
            step = self.trainer.step_count
            if step % self.settings.stats_every == 0 or step == self.target_steps:
                self._loss = {'loss': float(stats['loss']), 'psnr': float(stats['psnr'])}
                if 'feature_loss' in stats:
                    self._loss['feature_loss'] = float(stats['feature_loss'])
                elapsed = time.perf_counter() - window_start
                if elapsed > 0:
                    self._rays_per_s = window_steps * self.config.trainer.rays_per_batch / elapsed
                if elapsed > 10.0:
                    window_start, window_steps = time.perf_counter(), 0
            every = self.config.trainer.eval_every
            if every > 0 and step % every == 0 and self.trainer.eval_indices:
                self._state = 'evaluating held-out views'
                self._eval_psnr = float(self.trainer.evaluate(max_pixels=EVAL_MAX_PIXELS)['psnr'])
                self._state = 'training'
            every = self.config.trainer.checkpoint_every
            if self.checkpoint_path is not None and every > 0 and step % every == 0:
                self._try_save(self.checkpoint_path)

    def _try_build(self) -> bool:
        """Build teacher and trainer once enough keyframes (and label names) exist; False while waiting."""
        from ..teachers import RANDOM_HINT, RandomTeacherRefused, choose_teacher, is_random, make_teacher, size_field
        from .trainer import OnlineTrainer

        count = len(self.store)
        if count < self.settings.min_frames:
            self._state = f'waiting for keyframes ({count} of {self.settings.min_frames})'
            return False
        if self._needs_labels() and not self.labels:
            self._state = 'waiting for label names (labels teacher)'
            return False
        self._state = 'loading the teacher'
        checkpoint = self._resume_checkpoint()
        path = self.checkpoint_path
        if checkpoint is not None:
            stored = checkpoint['teacher']
            self.config.teacher.name = stored['name']
            self.teacher = make_teacher(self.config.teacher, labels=self.labels, state=stored['state'],
                                        frames=self.store.state()[0])
            size_field(self.config, self.teacher)
            self.teacher_reason = f'{stored["name"]} teacher of the resumed checkpoint'
            if is_random(self.teacher) and not self.settings.allow_random_teacher:
                raise RandomTeacherRefused(f'the resumed checkpoint {path} was distilled from RANDOM-WEIGHT CLIP '
                                           f'(not semantic); refusing it. To fix: {RANDOM_HINT}')
        else:
            self.teacher, self.teacher_reason = choose_teacher(self.config, self.labels,
                                                               self.settings.teacher_choice,
                                                               allow_random=self.settings.allow_random_teacher,
                                                               frames=self.store.state()[0])
        self.teacher_warning = self._teacher_warning()
        (log.warning if self.teacher_warning else log.info)('teacher: %s (%s)', self.teacher.name,
                                                            self.teacher_reason)
        if self._needs_labels() and not self._drop_unlabelled():
            self.teacher = None  # chosen again once enough labelled keyframes are held
            return False
        if self._stop.is_set():  # loading a CLIP model takes seconds: do not build a model nobody will train
            return False
        self._state = 'building the model'
        trainer = OnlineTrainer(self.config, self.store, self.teacher)
        if checkpoint is not None:
            try:
                trainer.load_checkpoint(path, state=checkpoint)
                self._resumed_step = trainer.step_count
                self._saved_step = trainer.step_count
                self.target_steps = max(self.target_steps, trainer.step_count)
                log.info('resumed %s at step %d', path, trainer.step_count)
            except (RuntimeError, ValueError, KeyError) as error:
                log.warning('checkpoint %s does not fit this configuration (%s); training from scratch',
                            path, error)
                trainer = OnlineTrainer(self.config, self.store, self.teacher)
        self.trainer = trainer
        self._progress = time.monotonic()
        self._sync()
        return True

    def _drop_unlabelled(self) -> bool:
        """Drop keyframes held without label images before the teacher turned out to be labels; True if enough remain.

        With ``teacher_choice: auto`` keyframes are taken before the teacher is chosen; when it falls back to the
        labels teacher (no CLIP weights), one that came without its label image (late on a busy machine) would
        stop training. After this, `add_frame` refuses such keyframes.
        """
        with self._lock:
            frames = self.store.snapshot()
            kept = [frame for frame in frames if frame.labels is not None]
            if len(kept) < len(frames):
                self.store.clear()
                for frame in kept:
                    self.store.add(frame)
                self._stamps = sorted(float(frame.stamp) for frame in kept)
                log.warning('dropped %d keyframe(s) without a label image: the teacher is labels (%d kept)',
                            len(frames) - len(kept), len(kept))
        if len(kept) < self.settings.min_frames:
            self._state = (f'waiting for labelled keyframes ({len(kept)} of {self.settings.min_frames}; the '
                           'teacher is labels)')
            return False
        return True

    def _resume_checkpoint(self) -> Optional[Dict[str, Any]]:
        """Return the checkpoint to resume (`read_checkpoint`) or None; a refused one is set aside with the reason.

        Refused: unreadable (truncated, corrupt), unsafe (objects other than tensors: never run) or of another
        scan. It is renamed ``latest.ckpt.refused`` (so the next save does not destroy the evidence and no
        later start-up trips over it), `checkpoint_problem` says why, and training starts from scratch on
        the scan's keyframes.
        """
        from .trainer import CheckpointError, read_checkpoint
        path = self.checkpoint_path
        if not self.settings.resume or path is None or not path.exists():
            return None
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as error:
            problem = str(error)
        else:
            stored_scan = checkpoint.get('scan_id', '')
            if not (stored_scan and self.scan_id and stored_scan != self.scan_id):
                return checkpoint
            problem = f'{path} belongs to scan {stored_scan}, not to the scan being resumed ({self.scan_id})'
        refused = path.with_name(path.name + '.refused')
        try:
            path.replace(refused)
            where = f'moved to {refused.name}'
        except OSError as error:
            where = f'could not be moved aside: {error}'
        self.checkpoint_problem = f'checkpoint refused: {problem} ({where}); training from scratch'
        log.error('%s', self.checkpoint_problem)
        return None

    def _teacher_warning(self) -> str:
        """Say why the teacher deserves a WARN ('' if not): not semantic, or a fallback from what was asked."""
        from ..teachers import is_random, teacher_parts
        if is_random(self.teacher):
            return f'RANDOM-WEIGHT teacher ({self.teacher.name}): features are not semantic ({self.teacher_reason})'
        asked = self.settings.teacher_choice if self.settings.teacher_choice != 'auto' else self.config_teacher_asked
        try:
            asked = '+'.join(teacher_parts(asked))   # 'dino+clip' asks for what 'clip+dino' is
        except ValueError:
            pass
        if self.teacher.name != asked and 'resumed checkpoint' not in self.teacher_reason:
            return f'{self.teacher.name} teacher instead of {asked}: {self.teacher_reason}'
        return ''

    def _sync(self) -> None:
        version = self.store.version
        before = self.trainer.num_frames
        self._state = 'extracting teacher features'
        added = self.trainer.sync_frames(should_stop=self._stop.is_set)
        if self._stop.is_set():  # interrupted between chunks: the frames are taken again by a later sync
            return
        self._synced_version = version
        self.model_version += 1
        if added and before >= self.settings.min_frames and self.trainer.step_count >= self.target_steps:
            self.target_steps = self.trainer.step_count + added * self.settings.steps_per_new_frame
        if added:
            self._check_changes()

    # ------------------------------------------------------------------------------------------ changes

    def _check_changes(self) -> None:
        """Compare the keyframes new to the trainer with the field's render of their poses; repair what changed.

        Runs on the training thread after a sync: one render per new keyframe (at most ``changes.max_pixels``).
        Keyframes that arrive before the field has trained ``changes.min_steps`` steps are taken as they are.
        """
        trainer, c = self.trainer, self.config.changes
        frames = trainer.frames
        armed = c.detect and trainer.step_count >= c.min_steps
        for index in self.changes.unseen(frames):
            frame = frames[index]
            if not armed:
                self.changes.skip(frame)
                continue
            width, height, K = self.changes.comparison_size(frame)
            self._state = 'comparing a keyframe with the field'
            rendered = trainer.render(frame.T_base_optical, K, width, height, names=('rgb', 'depth', 'accumulation'))
            with self._changes_lock:
                event, new, _ = self.changes.observe(frame, rendered, K, frames)
                for part, voxels in ([] if event is None else self.changes.split(event, new)):
                    self._repair(part, voxels)
        train = set(trainer.train_indices)
        slots = [i for i in self.changes.after_change(frames) if i in train]
        if slots and c.focus_fraction > 0 and self.changes.events:  # the change's own views teach the region
            trainer.set_focus(self.changes.focus_pixels(frames, slots), c.focus_fraction,
                              self._change_step + c.repair_steps)

    def declare_change(self, min_xyz: Sequence[float], max_xyz: Sequence[float], reason: str = '',
                       stamp: Optional[float] = None) -> SceneChange:
        """Take a change the caller knows of ("I picked from this box", base frame): repaired as a detected one.

        Keyframes stamped before `stamp` (None: every keyframe held now) saw the old scene; their rays through the
        box stop supervising. ValueError for a box that is not one.
        """
        with self._changes_lock:
            with self._lock:
                held = [float(f.stamp) for f in self.store.snapshot()]
            before = (max(held) + STAMP_TOLERANCE_S if held else time.time()) if stamp is None else float(stamp)
            event, new = self.changes.declare(min_xyz, max_xyz, reason, time.time() if stamp is None else stamp,
                                              before)
            self._repair(event, new)
        self._wake.set()
        return event

    def _repair(self, event: SceneChange, new) -> None:
        """Mask what the keyframes before the change saw of its voxels; train on; say so. Holds _changes_lock."""
        c = self.config.changes
        frames = self.store.snapshot()
        masks = self.changes.masks_for(event, new, frames)
        for index, mask in masks.items():
            frames[index].mask = mask           # the store's keyframe: a later sync (a new trainer) reads it too
        trainer = self.trainer
        if trainer is not None:
            trainer.refresh_masks([i for i in masks if i < trainer.num_frames and trainer.frames[i] is frames[i]])
            self._change_step = trainer.step_count
            trainer.rewind_schedule(int(c.rewind * self.config.trainer.steps))
            self.target_steps = max(self.target_steps, trainer.step_count + c.repair_steps)
        self.changes.events.append(event)
        self.model_version += 1
        log.warning('scene change %s', event.summary())
        if self.on_change is not None:
            try:
                self.on_change(event)
            except Exception:  # a listener must not stop training
                log.exception('scene change listener failed')

    def _do_reset(self) -> None:
        with self._lock:
            self._reset_requested = False
            self.store.clear()
            self._stamps.clear()
            early, self._after_reset = self._after_reset, []
        self.trainer = None
        self.teacher = None
        self.teacher_warning = self.checkpoint_problem = ''
        self._synced_version = -1
        self._loss, self._eval_psnr, self._rays_per_s = {}, float('nan'), 0.0
        self._resumed_step = self._resumed_frames = self.replaced = 0
        self.changes.clear()
        self._saved_step = -1
        self._between = None
        self.target_steps = int(self.config.trainer.steps)
        self.model_version += 1
        path = self.checkpoint_path
        if path is not None and path.exists():
            path.replace(path.with_name('previous.ckpt'))
        self._state = 'waiting for keyframes'
        self._progress = time.monotonic()
        for frame in early:  # keyframes of the new scan that arrived while the reset was pending
            self.add_frame(frame)
