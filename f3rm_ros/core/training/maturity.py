"""How mature a training model is: its step, keyframes, the last keyframe's age, and whether it has *settled*.

A planner must tell an early guess (a few hundred steps into a scan, objects still forming) from an answer that
will not move. `MaturityTracker` watches an `OnlineSession`: at every `update` (the trainer node calls it at its
status rate) it evaluates the field at a fixed, seeded set of probe points in the workspace (opacity and unit
features, under the trainer's lock, a few ms) and compares them with the probe taken `window_steps` steps
earlier. The field *changed* by

    change = mean |alpha_now - alpha_then| + mean (1 - cos(feature_now, feature_then)),

both means over the probes that are occupied (alpha > `OCCUPIED_ALPHA`) at either time: air, most of a
workspace, says nothing. The model is *settled* when the change over a whole window stayed below `threshold`
and no keyframe arrived within it, or when training is done (the step budget spent and no keyframe pending). A
new keyframe unsettles it at once. `settled_since_step` is the first step of the window that settled it: a
checkpoint at or after that step holds a settled field.
"""
from __future__ import annotations

# Imported where used (heavy): query.voxels (nerfstudio), which the trainer node does not load at start-up.
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

# A probe is occupied when its opacity over one query voxel reaches this (`query.alpha_threshold` is 0.5: a
# lower bar also counts surfaces still forming).
OCCUPIED_ALPHA = 0.1
PROBE_POINTS = 4096


@dataclass
class Maturity:
    """What the tracker knows of the model now (see the module docstring).

    Attributes:
        step: training steps done.
        target_steps: the step budget (training is done at it, unless keyframes extend it).
        keyframes: keyframes the model trains on.
        since_keyframe_s: seconds since the last keyframe arrived (-1: none yet).
        change: the field's change over the last whole window (-1: not measured yet).
        settled: the field settled (or training is done).
        settled_since_step: the first step of the settled field (0 while not settled).
        state: the session's state ('training', 'done', 'waiting for keyframes' ...).
        checkpoint: the newest checkpoint written ('' = none).
        checkpoint_time: its modification time (seconds since the epoch, 0 = none).
    """

    step: int = 0
    target_steps: int = 0
    keyframes: int = 0
    since_keyframe_s: float = -1.0
    change: float = -1.0
    settled: bool = False
    settled_since_step: int = 0
    state: str = ''
    checkpoint: str = ''
    checkpoint_time: float = 0.0


def probe_points(box, count: int = PROBE_POINTS, seed: int = 0) -> np.ndarray:
    """[count, 3] float32 points spread over the workspace box (base_frame), the same for a seed."""
    rng = np.random.default_rng(seed)
    return (box.min_xyz + rng.random((count, 3)) * (box.max_xyz - box.min_xyz)).astype(np.float32)


def field_change(before, after) -> float:
    """Return the change between two probes (alpha [N], unit features [N, D]); nan when no probe is occupied."""
    alpha_a, feat_a = before
    alpha_b, feat_b = after
    occupied = (alpha_a > OCCUPIED_ALPHA) | (alpha_b > OCCUPIED_ALPHA)
    if not occupied.any():
        return float('nan')
    opacity = float(np.abs(alpha_a - alpha_b)[occupied].mean())
    features = float(np.clip(1.0 - np.sum(feat_a[occupied] * feat_b[occupied], axis=-1), 0.0, 2.0).mean())
    return opacity + features   # cosines of equal unit vectors exceed 1 by rounding: clipped


class MaturityTracker:
    """Follows an `OnlineSession`'s model and says when it settled (see the module docstring).

    Args:
        session: the `OnlineSession` (its trainer, store, state and step are read).
        window_steps: steps the field must stay unchanged (and keyframe-free) to settle.
        threshold: the largest `field_change` over a window that still counts as unchanged.
        clock: seconds (monotonic) for the keyframe age.
    """

    def __init__(self, session, window_steps: int = 100, threshold: float = 0.02,
                 clock: Callable[[], float] = time.monotonic, points: int = PROBE_POINTS):
        if window_steps < 1 or not threshold > 0:
            raise ValueError(f'a settle window needs window_steps >= 1 and threshold > 0, got {window_steps}, '
                             f'{threshold}')
        self.session = session
        self.window_steps = int(window_steps)
        self.threshold = float(threshold)
        self.clock = clock
        self.count = int(points)
        self._points: Optional[torch.Tensor] = None
        self._trainer = None
        self._reference = None              # (step, probe) the window started with
        self._store_version = None
        self._keyframe_at: Optional[float] = None
        self.last = Maturity()

    def note_keyframe(self) -> None:
        """Record a keyframe added now: the model is not settled until a whole window passes without one."""
        self._keyframe_at = self.clock()
        self._reference = None
        self.last.settled, self.last.settled_since_step = False, 0

    def _probe(self, trainer):
        """Return (alpha [N], unit features [N, D]) of the field at the probe points, under the trainer's lock."""
        from ..query.voxels import eval_mode, model_device
        model = trainer.model
        if self._points is None or self._trainer is not trainer:
            positions = trainer.box.to_field(probe_points(trainer.box, self.count))
            self._points = torch.from_numpy(np.asarray(positions, np.float32)).to(model_device(model))
            self._trainer = trainer
        voxel = self.session.config.query.voxel_size * trainer.box.scale
        with torch.no_grad(), eval_mode(model, trainer.lock):
            density = model.density_at(self._points)[..., 0].float()
            features = torch.nn.functional.normalize(model.features_at(self._points).float(), dim=-1)
        alpha = 1.0 - torch.exp(-density.clamp(min=0.0) * voxel)
        return alpha.cpu().numpy(), features.cpu().numpy()

    def update(self) -> Maturity:
        """Probe the model if a window passed since the reference probe; return what is known now."""
        session = self.session
        version = session.store.version
        if self._store_version is not None and version != self._store_version and len(session.store):
            if self._keyframe_at is None or self.clock() - self._keyframe_at > 1.0:
                self.note_keyframe()     # a keyframe the node did not announce (resumed, replaced)
        self._store_version = version
        trainer = session.trainer
        out = self.last
        out.step, out.target_steps, out.keyframes = session.step, session.target_steps, len(session.store)
        out.state = session.state
        out.since_keyframe_s = -1.0 if self._keyframe_at is None else self.clock() - self._keyframe_at
        path = trainer.last_checkpoint if trainer is not None else None
        out.checkpoint = str(path or '')
        try:
            out.checkpoint_time = path.stat().st_mtime if path is not None else 0.0
        except OSError:
            out.checkpoint_time = 0.0
        if trainer is None:
            self._reference, out.settled, out.settled_since_step, out.change = None, False, 0, -1.0
            return out
        out.keyframes = trainer.num_frames
        step = trainer.step_count
        if self._reference is None or self._trainer is not trainer:
            self._reference = (step, self._probe(trainer))
        elif step - self._reference[0] >= self.window_steps:
            probe = self._probe(trainer)
            change = field_change(self._reference[1], probe)
            out.change = -1.0 if np.isnan(change) else change
            steady = not np.isnan(change) and change < self.threshold
            if steady and not out.settled:
                out.settled, out.settled_since_step = True, self._reference[0]
            elif not steady:
                out.settled, out.settled_since_step = False, 0
            self._reference = (step, probe)
        done = session.state == 'done' and step >= session.target_steps
        if done and not out.settled:
            out.settled, out.settled_since_step = True, step
        return out


__all__ = ['Maturity', 'MaturityTracker', 'OCCUPIED_ALPHA', 'PROBE_POINTS', 'field_change', 'probe_points']
