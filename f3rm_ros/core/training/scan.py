"""The keyframes an online session trains on, of one scan (`ScanKeyframes`).

One camera resolution per scan, each keyframe once (by stamp); a full store keeps coverage by replacing its most
redundant view (`keyframes.replacement_slot`); keyframes that arrive while a reset is pending are kept for after it.
"""
from __future__ import annotations

import bisect
import logging
import threading
from typing import Dict, List, Mapping, Optional, Tuple

from ..capture.frames import FrameStore, PosedFrame
from ..capture.keyframes import replacement_slot

log = logging.getLogger(__name__)

# Two keyframe stamps closer than this are the same keyframe (a double holds epoch seconds to ~0.2 us).
STAMP_TOLERANCE_S = 1e-5


class ScanKeyframes:
    """The `FrameStore` of one scan, its scan id and label names; `lock` guards them and the store's membership.

    `replaced` counts keyframes that replaced a redundant view in a full store; `reset_requested` is set by
    `request_reset` until `clear` (the training thread) drops the scan.
    """

    def __init__(self, capacity: int, labels: Optional[Mapping[int, str]] = None):
        self.store = FrameStore(capacity)
        self.labels: Optional[Dict[int, str]] = dict(labels) if labels else None
        self.scan_id = ''                       # the scan the keyframes belong to ('' = not known yet)
        self.replaced = 0
        self.resumed_frames = 0                 # keyframes read back from the scan on disk at start-up
        self.reset_requested = False
        self.lock = threading.Lock()
        self._stamps: List[float] = []          # the store's stamps, sorted
        self._after_reset: List[PosedFrame] = []   # keyframes that arrived while a reset was pending

    @property
    def stamps(self) -> Tuple[float, ...]:
        """The held keyframes' stamps, sorted."""
        with self.lock:
            return tuple(self._stamps)

    def add(self, frame: PosedFrame, needs_labels: bool) -> Tuple[bool, str]:
        """Offer a keyframe; returns (added, why not / how). See `OnlineSession.add_frame`."""
        with self.lock:
            if self.reset_requested:  # the reset drops the store: keep this one for after it
                self._after_reset.append(frame)
                return True, ''
            if self.holds(frame.stamp):
                return False, f'keyframe {frame.stamp:.6f} s is already held'
            if needs_labels and frame.labels is None:
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
        return True, ''

    def _replace(self, frame: PosedFrame) -> Tuple[bool, str]:
        """Keep coverage in a full store: `frame` replaces the most redundant view when it spreads the scan.

        Called with `lock` held. The trainer re-extracts the replaced slot (teacher features, pixels, a fresh
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
        return True, f'replaced slot {slot} (the most redundant view) to keep coverage'

    def holds(self, stamp: float) -> bool:
        """Whether a keyframe with this stamp is held (floats of epoch stamps differ in the last bits)."""
        index = bisect.bisect_left(self._stamps, stamp - STAMP_TOLERANCE_S)
        return index < len(self._stamps) and self._stamps[index] <= stamp + STAMP_TOLERANCE_S

    def drop_unlabelled(self) -> int:
        """Drop keyframes held without a label image (the teacher turned out to be labels); returns how many remain.

        With ``teacher_choice: auto`` keyframes are taken before the teacher is chosen; when it falls back to the
        labels teacher (no CLIP weights), one that came without its label image (late on a busy machine) would
        stop training.
        """
        with self.lock:
            frames = self.store.snapshot()
            kept = [frame for frame in frames if frame.labels is not None]
            if len(kept) < len(frames):
                self.store.clear()
                for frame in kept:
                    self.store.add(frame)
                self._stamps = sorted(float(frame.stamp) for frame in kept)
                log.warning('dropped %d keyframe(s) without a label image: the teacher is labels (%d kept)',
                            len(frames) - len(kept), len(kept))
        return len(kept)

    def set_labels(self, labels: Mapping[int, str]) -> None:
        """Object id → name for the labels teacher."""
        with self.lock:
            self.labels = {int(k): str(v) for k, v in labels.items()}

    def adopt(self, scan_id: str, has_model: bool) -> bool:
        """Take the capture's current scan id; True when it is another scan than the one held (reset it).

        The first id heard while holding nothing, or while the keyframes held are of this scan, is simply adopted.
        """
        scan_id = str(scan_id)
        with self.lock:
            if not scan_id or scan_id == self.scan_id:
                return False
            previous, self.scan_id = self.scan_id, scan_id
            holds = bool(len(self.store) or has_model)
        if not previous or not holds:  # the first id heard (keyframes held are of this scan), or nothing held
            return False
        log.info('new scan %s (was %s): dropping the model and %d keyframes', scan_id, previous or '?',
                 len(self.store))
        return True

    def request_reset(self) -> None:
        """Keyframes from now on belong to the next scan: `add` keeps them for after `clear`."""
        with self.lock:
            self.reset_requested = True

    def clear(self) -> List[PosedFrame]:
        """Drop every keyframe (the reset); returns those that arrived while it was pending, to be added again."""
        with self.lock:
            self.reset_requested = False
            self.store.clear()
            self._stamps.clear()
            early, self._after_reset = self._after_reset, []
        self.replaced = self.resumed_frames = 0
        return early
