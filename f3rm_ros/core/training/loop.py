"""The online session's training thread (`TrainingLoop`): reset, pause, build, sync, step, evaluate, checkpoint.

The model and the trainer (nerfstudio) are imported inside the methods that build them, as are the teachers' networks
(in `..teachers`): the thread pays those imports after start-up (`_warm_up`), not the node that constructs the
session.
"""
from __future__ import annotations

# Imported where used (heavy): the sibling modules `model` and `trainer` (nerfstudio); see the docstring.
import logging
import threading
import time
from typing import Callable, Optional

import torch

from ..changes.tracker import ChangeTracker, SceneChange
from ..config import F3RMConfig
from .checkpoints import CheckpointKeeper
from .progress import WARMING_UP, TrainingProgress
from .repair import SceneRepair
from .scan import ScanKeyframes
from .teacher_choice import TeacherChoice

log = logging.getLogger(__name__)

# The periodic held-out PSNR of a live session renders views at most this big (full 640x480 views take about a
# minute on a 2-core CPU and stall training meanwhile).
EVAL_MAX_PIXELS = 160 * 120


class TrainingLoop:
    """The background thread that trains an online session's model on its keyframes.

    It owns the trainer (None until `min_frames` keyframes, and label names for the labels teacher, are there), the
    step it trains to (`target_steps`, raised by new keyframes and scene changes) and `model_version`, which bumps
    whenever the model's weights change. The session's parts it works on are shared with the session: `scan`,
    `choice`, `checkpoints` and `progress`; scene changes go through `repair`. `wake` cuts a wait short, `paused`
    holds training after the current step.
    """

    def __init__(self, config: F3RMConfig, settings, scan: ScanKeyframes, choice: TeacherChoice,
                 checkpoints: CheckpointKeeper, progress: TrainingProgress, changes: ChangeTracker,
                 on_change: Optional[Callable[[SceneChange], None]] = None):
        self.config = config
        self.settings = settings
        self.scan = scan
        self.store = scan.store
        self.choice = choice
        self.checkpoints = checkpoints
        self.progress = progress
        self.changes = changes
        self.repair = SceneRepair(config, changes, scan.store, self._repaired, on_change)
        self.trainer = None
        self.target_steps = int(config.trainer.steps)
        self.model_version = 0
        self.resumed_step = 0
        self.paused = False
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._synced_version = -1

    def start(self) -> None:
        """Start the training thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self.progress.state = WARMING_UP  # set here, not in the thread: a caller may wait on it at once
            self._thread = threading.Thread(target=self._run, name='f3rm-training', daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait at most `timeout`; returns whether it ended (a busy one is left behind)."""
        self._stop.set()
        self.wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if not ended:
            log.warning('training thread still busy (%s) after %.1f s; stopping without it', self.progress.state,
                        timeout)
        return ended

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (the thread ends at its next check)."""
        return self._stop.is_set()

    @property
    def should_train(self) -> bool:
        """Whether the thread is expected to be stepping (a model, steps to go, not paused, stopped or resetting)."""
        return (self.trainer is not None and not self.paused and not self._stop.is_set()
                and not self.scan.reset_requested and self.trainer.step_count < self.target_steps)

    def _repaired(self, until_step: Optional[int]) -> None:
        """Take an applied scene change: the model changed; train on until `until_step` (None: no model yet)."""
        if until_step is not None:
            self.target_steps = max(self.target_steps, until_step)
        self.model_version += 1

    def _run(self) -> None:
        try:
            self._warm_up()
            self._loop()
        except Exception as error:  # keep the node alive; the status says what happened
            log.exception('training stopped')
            self.progress.error = f'{type(error).__name__}: {error}'
            self.progress.state = f'error: {self.progress.error}'

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
            probe = torch.ones(8, 8, device=device)
            (probe @ probe).sum().item()
        log.info('warmed up in %.1f s (imports, %s)', time.perf_counter() - started, device)
        self.progress.state = 'waiting for keyframes'
        self.progress.advanced()

    def _wait(self, seconds: float = 0.2) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _loop(self) -> None:
        progress, checkpoints = self.progress, self.checkpoints
        progress.restart_rate()
        while not self._stop.is_set():
            if self.scan.reset_requested:
                self.apply_reset()
                continue
            if self.paused:
                progress.state = 'paused'
                self._wait()
                continue
            if self.trainer is None:
                if not self._try_build():
                    self._wait()
                    continue
                progress.restart_rate()
            if self.store.version != self._synced_version:
                self._sync()
                if self._stop.is_set():   # a stop during the teacher's features: no step after them
                    break
            if self.trainer.step_count >= self.target_steps:
                # save first: 'done' promises the final checkpoint is on disk (or write_error says why not;
                # the write is tried again every WRITE_RETRY_S, so space that comes back is used)
                if checkpoints.unsaved(self.trainer):
                    checkpoints.try_save(self.trainer, self.scan.scan_id)
                progress.state = 'done'
                progress.advanced()
                self._wait(0.5)
                progress.restart_rate()
                continue
            progress.state = 'training'
            began = time.perf_counter()
            stats = self.trainer.step()
            checkpoints.after_step(self.trainer, self.scan.scan_id, time.perf_counter() - began)
            progress.advanced()
            self.model_version += 1
            progress.stepped()
            step = self.trainer.step_count
            if step % self.settings.stats_every == 0 or step == self.target_steps:
                progress.record(stats, self.config.trainer.rays_per_batch)
            every = self.config.trainer.eval_every
            if every > 0 and step % every == 0 and self.trainer.eval_indices:
                progress.state = 'evaluating held-out views'
                progress.eval_psnr = float(self.trainer.evaluate(max_pixels=EVAL_MAX_PIXELS)['psnr'])
                progress.state = 'training'
            every = self.config.trainer.checkpoint_every
            if checkpoints.path is not None and every > 0 and step % every == 0:
                checkpoints.try_save(self.trainer, self.scan.scan_id)

    def _try_build(self) -> bool:
        """Build teacher and trainer once enough keyframes (and label names) exist; False while waiting."""
        from .trainer import OnlineTrainer

        count = len(self.store)
        if count < self.settings.min_frames:
            self.progress.state = f'waiting for keyframes ({count} of {self.settings.min_frames})'
            return False
        if self.choice.needs_labels() and not self.scan.labels:
            self.progress.state = 'waiting for label names (labels teacher)'
            return False
        self.progress.state = 'loading the teacher'
        checkpoint = self.checkpoints.read_for_resume(self.scan.scan_id) if self.settings.resume else None
        path = self.checkpoints.path
        self.choice.choose(self.scan.labels, self.store.state()[0], checkpoint, path)
        if self.choice.needs_labels():
            kept = self.scan.drop_unlabelled()   # after this, `add_frame` refuses keyframes without labels
            if kept < self.settings.min_frames:
                self.progress.state = (f'waiting for labelled keyframes ({kept} of {self.settings.min_frames}; '
                                       'the teacher is labels)')
                self.choice.teacher = None  # chosen again once enough labelled keyframes are held
                return False
        if self._stop.is_set():  # loading a CLIP model takes seconds: do not build a model nobody will train
            return False
        self.progress.state = 'building the model'
        trainer = OnlineTrainer(self.config, self.store, self.choice.teacher)
        if checkpoint is not None:
            try:
                trainer.load_checkpoint(path, state=checkpoint)
                self.resumed_step = trainer.step_count
                self.checkpoints.saved_step = trainer.step_count
                self.target_steps = max(self.target_steps, trainer.step_count)
                log.info('resumed %s at step %d', path, trainer.step_count)
            except (RuntimeError, ValueError, KeyError) as error:
                log.warning('checkpoint %s does not fit this configuration (%s); training from scratch',
                            path, error)
                trainer = OnlineTrainer(self.config, self.store, self.choice.teacher)
        self.trainer = trainer
        self.progress.advanced()
        self._sync()
        return True

    def _sync(self) -> None:
        version = self.store.version
        before = self.trainer.num_frames
        self.progress.state = 'extracting teacher features'
        added = self.trainer.sync_frames(should_stop=self._stop.is_set)
        if self._stop.is_set():  # interrupted between chunks: the frames are taken again by a later sync
            return
        self._synced_version = version
        self.model_version += 1
        if added and before >= self.settings.min_frames and self.trainer.step_count >= self.target_steps:
            self.target_steps = self.trainer.step_count + added * self.settings.steps_per_new_frame
        if added:
            self.repair.check(self.trainer, self.progress.set_state)

    def apply_reset(self) -> None:
        """Drop the model and the scan's keyframes (a reset was requested); what the thread does at its next turn.

        Public for a caller without the thread (a test, a notebook); the newest checkpoint becomes previous.ckpt.
        """
        early = self.scan.clear()
        self.trainer = None
        self.choice.clear()
        self._synced_version = -1
        self.progress.forget_scores()
        self.resumed_step = 0
        self.changes.clear()
        self.checkpoints.forget()
        self.target_steps = int(self.config.trainer.steps)
        self.model_version += 1
        self.checkpoints.set_aside()
        self.progress.state = 'waiting for keyframes'
        self.progress.advanced()
        for frame in early:  # keyframes of the new scan that arrived while the reset was pending
            if self.scan.add(frame, self.choice.needs_labels())[0]:
                self.wake.set()
