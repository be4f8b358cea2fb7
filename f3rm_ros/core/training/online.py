"""Online training without ROS: keyframes come in one at a time, a background thread trains.

`OnlineSession` resumes a scan from a dataset folder and the newest checkpoint, trains on a background thread once
`min_frames` keyframes exist, checkpoints every N steps and on request, and can be paused, resumed and reset. Its
`status()` is what the trainer node publishes. Its parts, each in its own module:

* `loop.TrainingLoop`: the training thread (reset, pause, build, sync, step, evaluate, checkpoint, done);
* `scan.ScanKeyframes`: the keyframes of one scan (refusals, replacement in a full store, the scan id);
* `teacher_choice.TeacherChoice`: which teacher is distilled, why, and whether that deserves a warning;
* `checkpoints.CheckpointKeeper`: the checkpoint on disk (one write at a time, retries, a stop's last write, resume);
* `repair.SceneRepair`: scene changes applied to the keyframes and the trainer;
* `progress.TrainingProgress`: the training thread's state, losses and rate, and when it last made progress;
* `assembly.StampAssembler`: a keyframe's parts from separate topics, put back together (the trainer node's).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..config import F3RMConfig
from ..capture.frames import PosedFrame, iter_dataset, read_metadata
from ..changes.tracker import ChangeTracker, SceneChange
from ..geometry import WorkspaceBox
from .checkpoints import STOP_LOCK_WAIT_S, CheckpointKeeper
from .loop import TrainingLoop
from .progress import WARMING_UP, TrainingProgress
from .scan import ScanKeyframes
from .teacher_choice import TeacherChoice
from ..teachers import teacher_parts

log = logging.getLogger(__name__)


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
            teacher_parts(self.teacher_choice)  # ValueError naming the teachers there are
        if int(self.steps_per_new_frame) < 0 or int(self.stats_every) < 1:
            raise ValueError('steps_per_new_frame must be >= 0 and stats_every >= 1')
        if not self.stall_timeout_s > 0:
            raise ValueError(f'stall_timeout_s must be > 0, got {self.stall_timeout_s}')


class OnlineSession:
    """Background training on a growing set of keyframes (see the module docstring).

    It has more than 15 methods because it is the trainer node's one handle: the inputs (`add_frame`, `set_labels`,
    `set_scan`, `declare_change`, `resume_from_disk`), the controls (`start`, `stop`, `pause`, `resume`, `reset`,
    `save`) and the reports (`status`, `health`) each hand over to one of its parts (`scan`, `choice`,
    `checkpoints`, `progress`, `loop`: see the module docstring), which share no method with each other.

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
        self.scan = ScanKeyframes(config.trainer.capacity, labels)
        self.store = self.scan.store
        self.choice = TeacherChoice(config, settings.teacher_choice, settings.allow_random_teacher)
        self.checkpoints = CheckpointKeeper(settings.checkpoint_dir, on_checkpoint)
        self.progress = TrainingProgress()
        self.changes = ChangeTracker(config.changes, WorkspaceBox.from_config(config.workspace))
        self.loop = TrainingLoop(config, settings, self.scan, self.choice, self.checkpoints, self.progress,
                                 self.changes, on_change)

    @property
    def trainer(self):
        """The live `OnlineTrainer` (None until the model is built); readers of its model hold `trainer.lock`."""
        return self.loop.trainer

    @property
    def teacher(self):
        """The teacher being distilled (None until the model is built)."""
        return self.choice.teacher

    @property
    def model_version(self) -> int:
        """A number that changes whenever the model's weights change (caches of its answers key on it)."""
        return self.loop.model_version

    @property
    def target_steps(self) -> int:
        """The step training goes to (raised by new keyframes after the budget and by scene changes)."""
        return self.loop.target_steps

    # ------------------------------------------------------------------------------------------ inputs

    def add_frame(self, frame: PosedFrame) -> Tuple[bool, str]:
        """Offer a keyframe; returns (added, why not / how). Frames already held (same stamp) are skipped.

        A full store keeps coverage: the keyframe replaces the most redundant held view when it spreads the scan
        (`keyframes.replacement_slot`), else it is refused with the reason. Keyframes without a label image are
        refused once the teacher is known to be labels.
        """
        added, why = self.scan.add(frame, self.choice.needs_labels())
        if added:
            self.loop.wake.set()
        return added, why

    def set_labels(self, labels: Mapping[int, str]) -> None:
        """Object id → name for the labels teacher (used when the teacher is built)."""
        self.scan.set_labels(labels)
        self.loop.wake.set()

    def resume_from_disk(self) -> Dict[str, Any]:
        """Start-up: continue the scan on disk (`resume`), or set an old checkpoint aside for a new scan.

        With `resume`: every keyframe and the label names of the scan in `dataset_dir`, and its scan id, are
        taken; the newest checkpoint is loaded when training starts. Without: nothing is read, and an old
        ``latest.ckpt`` becomes ``previous.ckpt`` (a new scan's first save would overwrite it). Returns
        ``{'frames', 'checkpoint', 'scan_id', 'previous'}``.
        """
        summary = {'frames': 0, 'checkpoint': '', 'scan_id': '', 'previous': ''}
        path = self.checkpoints.path
        if not self.settings.resume:
            previous = self.checkpoints.set_aside()
            if previous is not None:
                summary['previous'] = str(previous)
            return summary
        root = Path(self.settings.dataset_dir).expanduser() if self.settings.dataset_dir else None
        if root is not None and (root / 'transforms.json').exists():
            meta = read_metadata(root)
            if isinstance(meta.get('labels'), dict) and meta['labels']:
                self.set_labels({int(k): v for k, v in meta['labels'].items()})
            self.scan.scan_id = summary['scan_id'] = str(meta.get('scan_id', ''))
            for frame in iter_dataset(root):   # one at a time: a long scan on disk may exceed the store
                added, _ = self.add_frame(frame)
                summary['frames'] += int(added)
        if path is not None and path.exists():
            summary['checkpoint'] = str(path)
        self.scan.resumed_frames = summary['frames']
        return summary

    def set_scan(self, scan_id: str) -> bool:
        """Take the capture's current scan id: one different from the held scan's resets the session.

        Returns True when that started a reset (a new scan: model and keyframes dropped). The first id
        heard by a session that holds nothing is simply adopted.
        """
        if not self.scan.adopt(scan_id, self.trainer is not None):
            return False
        self.reset()
        return True

    def declare_change(self, min_xyz: Sequence[float], max_xyz: Sequence[float], reason: str = '',
                       stamp: Optional[float] = None) -> SceneChange:
        """Take a change the caller knows of ("I picked from this box", base frame): repaired as a detected one.

        Keyframes stamped before `stamp` (None: every keyframe held now) saw the old scene; their rays through the
        box stop supervising. ValueError for a box that is not one.
        """
        event = self.loop.repair.declare(min_xyz, max_xyz, reason, stamp, lambda: self.scan.stamps, self.trainer)
        self.loop.wake.set()
        return event

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the training thread (idempotent)."""
        self.loop.start()

    def stop(self, timeout: float = 30.0, save: bool = False) -> bool:
        """Stop the training thread; optionally save a last checkpoint. Returns whether the thread ended.

        The thread checks the stop flag between training steps, between teacher-feature chunks and after
        building the teacher, so it ends within one step or one chunk. `timeout` bounds the wait (a node
        shutting down under ``ros2 launch`` has 5 s before SIGTERM): a thread still busy after it (the first
        load of a CLIP model, a long step) is a daemon and is left behind, and the last checkpoint is written
        without waiting for it (`save_without_waiting`): the state now when no step is in progress, else the
        state copied after the last long step, else the checkpoint on disk stands.
        """
        ended = self.loop.stop(timeout)
        if save and self.trainer is not None and self.checkpoints.path is not None:
            if not ended:
                self.save_without_waiting()
            elif self.checkpoints.unsaved(self.trainer):
                self.checkpoints.save(self.trainer, self.scan.scan_id)
        return ended

    def save_without_waiting(self, wait_s: float = STOP_LOCK_WAIT_S) -> Optional[Path]:
        """Write a consistent checkpoint while the training thread may be inside a long step; returns the path.

        See `CheckpointKeeper.save_without_waiting` (None: nothing newer could be written).
        """
        return self.checkpoints.save_without_waiting(self.trainer, self.scan.scan_id, wait_s)

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (the training thread ends at its next check)."""
        return self.loop.stopping

    def pause(self) -> str:
        """Pause training after the current step."""
        self.loop.paused = True
        return f'paused at step {self.step}'

    def resume(self) -> str:
        """Resume a paused training."""
        self.loop.paused = False
        self.loop.wake.set()
        return f'resumed at step {self.step}'

    def reset(self) -> str:
        """Forget the model and every keyframe (a new scan); the newest checkpoint becomes previous.ckpt."""
        self.scan.request_reset()
        self.loop.wake.set()
        return 'reset requested: model and keyframes will be dropped'

    def save(self) -> Path:
        """Save a checkpoint now (thread-safe); returns its path. RuntimeError when there is no model.

        `CheckpointWriteError` (disk full ...) is raised and reported by `health` until a write succeeds.
        """
        if self.trainer is None:
            raise RuntimeError(f'no model yet ({self.state})')
        if self.checkpoints.path is None:
            raise RuntimeError('checkpoint_dir is empty: nowhere to save')
        return self.checkpoints.save(self.trainer, self.scan.scan_id)

    # ------------------------------------------------------------------------------------------ status

    @property
    def step(self) -> int:
        """Training steps done (including those of a resumed checkpoint)."""
        return self.trainer.step_count if self.trainer is not None else 0

    @property
    def warming_up(self) -> bool:
        """Whether the training thread is still paying its start-up (`_warm_up`)."""
        return self.progress.state == WARMING_UP

    @property
    def state(self) -> str:
        """Human-readable state: waiting ..., training, paused, done, error: ..."""
        return self.progress.state

    def status(self) -> Dict[str, Any]:
        """Everything the status topic shows."""
        progress, teacher, checkpoints = self.progress, self.choice.teacher, self.checkpoints
        out = {'state': progress.state, 'step': self.step, 'target_steps': self.target_steps,
               'frames': len(self.store), 'replaced_frames': self.scan.replaced,
               'trained_frames': self.trainer.num_frames if self.trainer else 0,
               'rays_per_s': round(progress.rays_per_s, 1), 'eval_psnr': progress.eval_psnr,
               'resumed_frames': self.scan.resumed_frames, 'resumed_step': self.loop.resumed_step,
               'teacher': teacher.name if teacher is not None else '',
               # the feature heads being distilled, the text head first ('labels 16, dino 384')
               'heads': ', '.join(f'{n} {d}' for n, d in teacher.heads) if teacher is not None else '',
               'device': str(self.trainer.device) if self.trainer is not None else '',
               'checkpoint': str(self.trainer.last_checkpoint or '') if self.trainer is not None else '',
               'error': progress.error, 'scan_id': self.scan.scan_id,
               'teacher_reason': self.choice.reason if teacher is not None else '',
               'checkpoint_problem': checkpoints.problem, 'write_error': checkpoints.write_error,
               'since_progress_s': round(progress.idle_s, 1),
               'scene_changes': len(self.changes.events),
               'last_scene_change': self.changes.events[-1].summary() if self.changes.events else ''}
        out.update(progress.loss)
        return out

    def health(self) -> Tuple[str, str]:
        """('ok' | 'warn' | 'error', why): what the trainer node's diagnostics level says.

        ERROR: the training thread died, a checkpoint write failed (until one succeeds), a checkpoint was
        refused at start-up (until the next good save), or no step for `stall_timeout_s` while it should
        train. WARN: a long teacher-feature extraction, or a teacher that is not semantic or not the one
        asked for (`TeacherChoice.warning`).
        """
        progress = self.progress
        if progress.error:
            return 'error', f'training stopped: {progress.error}'
        if self.checkpoints.write_error:
            return 'error', f'checkpoint not written: {self.checkpoints.write_error}'
        if self.checkpoints.problem:
            return 'error', self.checkpoints.problem
        idle = progress.idle_s
        if self.loop.should_train and idle > self.settings.stall_timeout_s:
            if progress.state == 'extracting teacher features':
                return 'warn', f'extracting teacher features for {idle:.0f} s'
            return 'error', f'training stalled: no step for {idle:.0f} s (state: {progress.state})'
        if self.choice.warning:
            return 'warn', self.choice.warning
        return 'ok', ''
