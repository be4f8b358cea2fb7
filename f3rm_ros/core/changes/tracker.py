"""Changed voxels, change events, and which keyframes stop supervising what (see the package docstring).

A change is seen over several keyframes of a rescan: the first detection opens an *episode*, and detections
within ``changes.episode_frames`` keyframes of the last one belong to it. Keyframes taken before the episode began
saw the old scene: their pixels whose rays meet the newly changed voxels are masked (never trained on again).
Keyframes of the episode saw the new scene: they are never masked for it, and for ``changes.repair_steps`` steps
``changes.focus_fraction`` of each batch comes from their rays through the changed voxels.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..capture.frames import PosedFrame
from ..config import ChangesConfig
from ..geometry import WorkspaceBox
from .detect import ChangeMap, Comparison, compare_view, comparison_size, confirm, lift, pixels_through

log = logging.getLogger(__name__)

DETECTED, DECLARED = 'detected', 'declared'
# Free space a view's depth vouches for: this far (m) in front of its surface (nearer: the depth's own noise).
CLEAR_FROM, CLEAR_TO = 0.02, 0.15


@dataclass
class SceneChange:
    """One change event: the box (base frame) of the voxels it newly marked, and what it did to the keyframes."""

    stamp: float                 # the keyframe that showed it, or when it was declared (s)
    kind: str                    # DETECTED | DECLARED
    min_xyz: np.ndarray
    max_xyz: np.ndarray
    voxels: int                  # changed voxels newly marked
    reason: str
    frames_masked: int = 0       # keyframes of before the change that stopped supervising part of their pixels
    pixels_masked: int = 0
    pixels: Dict[str, int] = field(default_factory=dict)   # the comparison's counts (detected only)

    def summary(self) -> str:
        """One line for a status: kind, box, voxels, keyframes masked, reason."""
        return (f'{self.kind} at {self.stamp:.3f} s: box {np.round(self.min_xyz, 3).tolist()}..'
                f'{np.round(self.max_xyz, 3).tolist()} m, {self.voxels} voxels, {self.frames_masked} older keyframes '
                f'masked ({self.pixels_masked} px): {self.reason}')


class ChangeTracker:
    """Changed voxels and events of one scan; ROS-free, no torch (the session renders and applies the masks)."""

    def __init__(self, config: ChangesConfig, box: WorkspaceBox):
        self.config = config
        self.map = ChangeMap(box, config.voxel_size, config.margin)
        self.events: List[SceneChange] = []
        self.seen: set = set()                      # keyframe stamps already compared (or skipped)
        self.episode_start: Optional[float] = None  # stamp of the first keyframe of the current change
        self.since_detection = 0                    # keyframes seen since the episode's last detection

    def clear(self) -> None:
        """Forget everything (a new scan)."""
        self.map.clear()
        self.events.clear()
        self.seen.clear()
        self.episode_start, self.since_detection = None, 0

    # ------------------------------------------------------------------------------------------ detection

    def unseen(self, frames: Sequence[PosedFrame]) -> List[int]:
        """Return the indices of `frames` not compared yet (each is compared once)."""
        return [i for i, frame in enumerate(frames) if float(frame.stamp) not in self.seen]

    def skip(self, frame: PosedFrame) -> None:
        """Take a keyframe without comparing it (the field is not mature yet)."""
        self.seen.add(float(frame.stamp))
        self._count_frame()

    def comparison_size(self, frame: PosedFrame) -> Tuple[int, int, np.ndarray]:
        """(width, height, K) to render `frame`'s pose at for `observe`."""
        return comparison_size(frame, self.config.max_pixels)

    def observe(self, frame: PosedFrame, rendered: Dict[str, np.ndarray], K: np.ndarray,
                held: Sequence[PosedFrame] = ()) -> Tuple[Optional[SceneChange], np.ndarray, Comparison]:
        """Compare a new keyframe with the field's render of its pose (at `comparison_size`).

        `held`: the keyframes held; those taken before the current change (or this keyframe) with depth confirm what
        the field disagrees about (`detect.confirm`): a field that never learnt a region well is not a change.
        Returns (the event or None, flat indices of the voxels it newly marked, the comparison). The event's keyframe
        counts are filled in by `masks_for`.
        """
        start = self.episode_start if self.episode_start is not None else float(frame.stamp)
        self.seen.add(float(frame.stamp))
        self._count_frame()
        comparison = compare_view(frame, rendered, K, self.config)
        earlier = [f for f in held if float(f.stamp) < start]
        if any(f.depth is not None for f in earlier):
            comparison.appeared = comparison.appeared[confirm(comparison.appeared, comparison.appeared_rgb, True,
                                                              earlier, self.config)]
            comparison.vanished = comparison.vanished[confirm(comparison.vanished, None, False, earlier, self.config)]
        points = np.concatenate([comparison.appeared, comparison.vanished])
        new = self.map.mark(points, min_voxels=self.config.min_voxels) if len(points) else np.zeros(0, np.int64)
        if not len(new):
            return None, new, comparison
        if self.episode_start is None:
            self.episode_start = float(frame.stamp)
        self.since_detection = 0
        what = []
        if comparison.pixels['appeared']:
            what.append(f'{comparison.pixels["appeared"]} px show a surface in front of the field')
        if comparison.pixels['vanished']:
            what.append(f'{comparison.pixels["vanished"]} px see past a surface the field holds')
        if comparison.pixels['colour']:
            what.append(f'{comparison.pixels["colour"]} px of another colour')
        lo, hi = self.map.bounds(new)
        event = SceneChange(float(frame.stamp), DETECTED, lo, hi, len(new),
                            f'keyframe {frame.stamp:.3f} s disagrees with the field: ' + ', '.join(what),
                            pixels=dict(comparison.pixels))
        return event, new, comparison

    def split(self, event: SceneChange, new: np.ndarray) -> List[Tuple[SceneChange, np.ndarray]]:
        """One event per connected group of the voxels `new` (an object moved: its old and its new place).

        A planner's box then bounds one region, not the span between two places and whatever lies between.
        """
        grid = np.zeros(self.map.shape, bool)
        grid.flat[new] = True
        labels, count = ndimage.label(grid, structure=np.ones((3, 3, 3), bool))
        if count <= 1:
            return [(event, new)]
        parts = []
        for label in range(1, count + 1):
            voxels = np.flatnonzero(labels.ravel() == label)
            lo, hi = self.map.bounds(voxels)
            parts.append((dataclasses.replace(event, min_xyz=lo, max_xyz=hi, voxels=len(voxels)), voxels))
        return parts

    def _count_frame(self) -> None:
        if self.episode_start is not None:
            self.since_detection += 1
            if self.since_detection > self.config.episode_frames:  # the rescan is over: a later change is new
                self.episode_start, self.since_detection = None, 0

    # ------------------------------------------------------------------------------------------ declared

    def declare(self, lo: Sequence[float], hi: Sequence[float], reason: str, stamp: float,
                before: float) -> Tuple[SceneChange, np.ndarray]:
        """Take a change the caller knows of: every voxel in the box [lo, hi] (base frame) is changed.

        Keyframes with stamps below `before` saw the old scene, later ones the new. Returns (the event, flat indices
        of the voxels newly marked).
        """
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if lo.shape != (3,) or hi.shape != (3,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f'a declared change needs two finite xyz corners, got {lo.tolist()} and {hi.tolist()}')
        if np.any(hi <= lo):
            raise ValueError(f'the box max {hi.tolist()} must exceed its min {lo.tolist()} on every axis')
        new = self.map.mark_box(lo, hi)
        self.episode_start = float(before)
        self.since_detection = 0
        event = SceneChange(float(stamp), DECLARED, lo, hi, len(new), reason or 'declared by a client')
        return event, new

    # ------------------------------------------------------------------------------------------ repair

    def before_change(self, frame: PosedFrame) -> bool:
        """Tell whether `frame` was taken before the current change (it saw the old scene)."""
        return self.episode_start is not None and float(frame.stamp) < self.episode_start

    def masks_for(self, event: SceneChange, new: np.ndarray, frames: Sequence[PosedFrame]
                  ) -> Dict[int, np.ndarray]:
        """Return new masks {index: [H, W] bool keep} of the keyframes before the change whose rays meet voxels `new`.

        The masks already held are kept (and-ed); `event` gets the counts. Call `ChangeTracker.observe` or `declare`
        first.
        """
        centres = self.map.centres(new)
        masks = {}
        for index, frame in enumerate(frames):
            if not self.before_change(frame):
                continue
            hidden = pixels_through(centres, self.map.voxel_size, frame, tolerance=self.map.voxel_size)
            if frame.mask is not None:
                hidden &= frame.mask
            if hidden.any():
                masks[index] = (frame.mask if frame.mask is not None else np.ones_like(hidden)) & ~hidden
                event.pixels_masked += int(hidden.sum())
        event.frames_masked = len(masks)
        return masks

    def focus_pixels(self, frames: Sequence[PosedFrame], indices: Sequence[int]) -> np.ndarray:
        """Flat pixel ids (index * H * W + y * W + x) of frames `indices` whose rays meet a changed voxel.

        What the views of a change teach about it: the rays a repair should draw most from.
        """
        centres = self.map.centres(np.flatnonzero(self.map.changed))
        ids = []
        for index in indices:
            frame = frames[index]
            hit = pixels_through(centres, self.map.voxel_size, frame, tolerance=self.map.voxel_size)
            if frame.mask is not None:
                hit &= frame.mask
            ids.append(index * frame.height * frame.width + np.flatnonzero(hit))
        return np.concatenate(ids) if ids else np.zeros(0, np.int64)

    def matter_and_clear(self, frames: Sequence[PosedFrame], indices: Sequence[int], depth: float,
                         rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Return what frames `indices` saw by depth in the changed voxels: (matter [N, 3], clear [M, 3]), base frame.

        Matter: each surface point pushed a random distance in [0, `depth`) along its ray. Clear: one point per
        pixel `CLEAR_FROM`..`CLEAR_TO` in front of its surface (the ray crossed it). Frames without depth give
        none. What `SceneRepair`'s surface prior teaches.
        """
        matter, clear = [], []
        for index in indices:
            frame = frames[index]
            if frame.depth is None:
                continue
            seen = np.nan_to_num(frame.depth) > 0
            if frame.mask is not None:
                seen &= frame.mask
            surface = lift(np.nan_to_num(frame.depth), frame.K, frame.T_base_optical, seen)
            origin = frame.T_base_optical[:3, 3]
            distance = np.linalg.norm(surface - origin, axis=1, keepdims=True)
            rays = (surface - origin) / distance
            inside = surface + rays * rng.uniform(0.0, depth, (len(surface), 1))
            matter.append(inside[self.map.contains(inside)])
            before = np.maximum(distance - rng.uniform(CLEAR_FROM, CLEAR_TO, (len(surface), 1)), 0.0)
            crossed = origin + rays * before
            clear.append(crossed[self.map.contains(crossed)])
        stack = (lambda parts: np.concatenate(parts) if parts else np.zeros((0, 3)))
        return stack(matter), stack(clear)

    def after_change(self, frames: Sequence[PosedFrame]) -> List[int]:
        """Return the indices of `frames` of the current change (taken since it began), or [] outside one."""
        if self.episode_start is None:
            return []
        return [i for i, frame in enumerate(frames) if float(frame.stamp) >= self.episode_start]
