"""What the online session's training thread reports (`TrainingProgress`): state, losses, rate, last progress."""
from __future__ import annotations

import time
from typing import Any, Dict

# The state while a started session pays its one-off costs (imports, device) before any keyframe is needed.
WARMING_UP = 'warming up (imports, device)'
# The rate (rays/s) is measured over windows of about this many seconds of training.
RATE_WINDOW_S = 10.0


class TrainingProgress:
    """The training thread's report: `state`, `error`, the latest losses, held-out PSNR and rate, and `last`.

    `last` is the monotonic time of the last step, model build or sync (stall detection: `idle_s`).
    """

    def __init__(self):
        self.state = 'waiting for keyframes'
        self.error = ''
        self.loss: Dict[str, float] = {}
        self.eval_psnr = float('nan')
        self.rays_per_s = 0.0
        self.last = time.monotonic()
        self._window_start, self._window_steps = time.perf_counter(), 0

    @property
    def idle_s(self) -> float:
        """Seconds since the last progress."""
        return time.monotonic() - self.last

    def set_state(self, state: str) -> None:
        """Say what the training thread does now."""
        self.state = state

    def advanced(self) -> None:
        """Training made progress now (a step, a build, a sync)."""
        self.last = time.monotonic()

    def restart_rate(self) -> None:
        """Measure the rate afresh (a new model, or training resumes after 'done')."""
        self._window_start, self._window_steps = time.perf_counter(), 0

    def stepped(self) -> None:
        """Count one training step towards the rate."""
        self._window_steps += 1

    def record(self, stats: Dict[str, Any], rays_per_batch: int) -> None:
        """Take a step's losses (read back from the device) and update the rate."""
        self.loss = {'loss': float(stats['loss']), 'psnr': float(stats['psnr'])}
        if 'feature_loss' in stats:
            self.loss['feature_loss'] = float(stats['feature_loss'])
        elapsed = time.perf_counter() - self._window_start
        if elapsed > 0:
            self.rays_per_s = self._window_steps * rays_per_batch / elapsed
        if elapsed > RATE_WINDOW_S:
            self.restart_rate()

    def forget_scores(self) -> None:
        """Start a new scan: no losses, no held-out PSNR, no rate yet."""
        self.loss, self.eval_psnr, self.rays_per_s = {}, float('nan'), 0.0
