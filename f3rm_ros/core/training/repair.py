"""Scene changes followed by the online session (`SceneRepair`): found or declared, masked, trained over.

What changed is found by `core.changes` (a new keyframe against the field's render of its pose, or a box the caller
declares); here the session's side: the keyframes taken before the change stop supervising its voxels, the schedule
rewinds, training goes on for ``changes.repair_steps`` (a share of each batch from the change's views, and the
surface prior: matter where their depth saw it in the changed voxels, free space in front of it, `surface`), and the
listener hears of it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from ..capture.frames import FrameStore
from ..changes.tracker import ChangeTracker, SceneChange
from ..config import F3RMConfig
from .scan import STAMP_TOLERANCE_S
from .surface import OPAQUE_WITHIN_M

log = logging.getLogger(__name__)


class SceneRepair:
    """Apply the scene changes of one online session to its keyframes (`store`) and trainer.

    `on_repaired(until_step)` tells the session that the model changed and training must go on to `until_step`
    (None without a trainer); `on_change(event)` is the session's listener. One change is applied at a time
    (training thread, service).
    """

    def __init__(self, config: F3RMConfig, changes: ChangeTracker, store: FrameStore,
                 on_repaired: Callable[[Optional[int]], None],
                 on_change: Optional[Callable[[SceneChange], None]] = None):
        self.config = config
        self.changes = changes
        self.store = store
        self.on_repaired = on_repaired
        self.on_change = on_change
        self.change_step = 0                    # training step of the last scene change
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(config.trainer.seed)   # where behind each surface a prior point lies

    def check(self, trainer, set_state: Callable[[str], None]) -> None:
        """Compare the keyframes new to the trainer with the field's render of their poses; repair what changed.

        Runs on the training thread after a sync: one render per new keyframe (at most ``changes.max_pixels``).
        Keyframes that arrive before the field has trained ``changes.min_steps`` steps are taken as they are.
        """
        c = self.config.changes
        frames = trainer.frames
        armed = c.detect and trainer.step_count >= c.min_steps
        fresh = self.changes.unseen(frames)
        for index in fresh:
            frame = frames[index]
            if not armed:
                self.changes.skip(frame)
                continue
            width, height, K = self.changes.comparison_size(frame)
            set_state('comparing a keyframe with the field')
            rendered = trainer.render(frame.T_base_optical, K, width, height, names=('rgb', 'depth', 'accumulation'))
            with self._lock:
                event, new, _ = self.changes.observe(frame, rendered, K, frames)
                for part, voxels in ([] if event is None else self.changes.split(event, new)):
                    self._repair(part, voxels, trainer)
        episode = self.changes.after_change(frames)
        if c.repair_from_newest and self.changes.events and set(fresh) & set(episode):
            # a new view of a young change: the repair (and its focus) runs on from here (measured on an H100: counted
            # from the detection, it was spent before a 10-view rescan arc ended and the answers froze 3-7 cm off)
            self.change_step = trainer.step_count
            self.on_repaired(trainer.step_count + c.repair_steps)
        train = set(trainer.train_indices)
        slots = [i for i in episode if i in train]
        if slots and c.focus_fraction > 0 and self.changes.events:  # the change's own views teach the region
            trainer.set_focus(self.changes.focus_pixels(frames, slots), c.focus_fraction,
                              self.change_step + c.repair_steps)
        if slots and c.surface_loss_mult > 0 and self.changes.events:  # and where their depth saw matter or none
            trainer.set_surface_prior(*self.changes.matter_and_clear(frames, slots, OPAQUE_WITHIN_M, self._rng),
                                      c.surface_loss_mult, self.change_step + c.repair_steps)

    def declare(self, min_xyz: Sequence[float], max_xyz: Sequence[float], reason: str, stamp: Optional[float],
                held_stamps: Callable[[], Sequence[float]], trainer) -> SceneChange:
        """Take a change the caller knows of (see `OnlineSession.declare_change`); `held_stamps` reads the store's."""
        with self._lock:
            held = held_stamps()
            before = (max(held) + STAMP_TOLERANCE_S if held else time.time()) if stamp is None else float(stamp)
            event, new = self.changes.declare(min_xyz, max_xyz, reason, time.time() if stamp is None else stamp,
                                              before)
            self._repair(event, new, trainer)
        return event

    def _repair(self, event: SceneChange, new, trainer) -> None:
        """Mask what the keyframes before the change saw of its voxels; train on; say so. Holds the lock."""
        c = self.config.changes
        frames = self.store.snapshot()
        masks = self.changes.masks_for(event, new, frames)
        for index, mask in masks.items():
            frames[index].mask = mask           # the store's keyframe: a later sync (a new trainer) reads it too
        until = None
        if trainer is not None:
            trainer.refresh_masks([i for i in masks if i < trainer.num_frames and trainer.frames[i] is frames[i]])
            self.change_step = trainer.step_count
            trainer.rewind_schedule(int(c.rewind * self.config.trainer.steps))
            until = trainer.step_count + c.repair_steps
        self.changes.events.append(event)
        self.on_repaired(until)
        log.warning('scene change %s', event.summary())
        if self.on_change is not None:
            try:
                self.on_change(event)
            except Exception:  # a listener must not stop training
                log.exception('scene change listener failed')
