"""Aligned depth, label and mask images paired with their colour image by stamp.

Drivers stamp depth a few milliseconds after colour, so an aligned image pairs with the colour image whose stamp
is nearest within the slop (`CaptureSession.slop_s`: ``depth_slop_s``, or half the measured frame period). One in
another frame than the colour images, of another size, or that cannot be decoded is reported and left out; the
keyframe goes on without it (a bad mask skips the frame instead: training on the gripper would be worse).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

Loader = Callable[[], np.ndarray]
AUX_KINDS = ('depth', 'labels', 'mask')
ALIGNED_DEPTH_HINT = ("depth must be registered to the colour camera: realsense2_camera's align_depth.enable:=true "
                      "and remap depth to /camera/camera/aligned_depth_to_color/image_raw (other drivers: their "
                      "'aligned depth to color' / registered depth output)")


@dataclass
class _Aux:
    load: Loader
    frame_id: str = ''


@dataclass
class Taken:
    """What the aligned images of one colour image gave: arrays by kind, notes for the outcome, queued problems.

    `refusal` is set when the frame must be skipped (a bad mask).
    """

    extras: Dict[str, np.ndarray] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)
    refusal: str = ''


def frame_problem(kind: str, frame_id: str, colour_frame: str) -> str:
    """Say why an aligned image in `frame_id` cannot pair with colour images in `colour_frame` ('' = it can)."""
    if not frame_id or not colour_frame or frame_id == colour_frame:
        return ''
    if kind == 'depth':
        return (f'depth image (topic depth) is in frame {frame_id!r} but the colour images are in '
                f'{colour_frame!r}: ignored, keyframes are kept without depth. {ALIGNED_DEPTH_HINT}')
    return (f'{kind} image (topic {kind}) is in frame {frame_id!r} but the colour images are in {colour_frame!r}: '
            f'ignored; publish {kind} aligned to the colour camera, with its frame_id')


class AlignedImages:
    """The aligned images waiting for their colour image, per kind, by stamp."""

    def __init__(self):
        self.stores: Dict[str, Dict[float, _Aux]] = {kind: {} for kind in AUX_KINDS}
        self.seen = {kind: False for kind in AUX_KINDS}   # a kind once seen is waited for

    def add(self, kind: str, stamp: float, load: Loader, frame_id: str, colour_frame: str, keep: int) -> str:
        """Store one (the newest `keep` per kind are kept); return why it cannot pair ('' = stored)."""
        if kind not in self.stores:
            raise ValueError(f'unknown aligned image kind {kind!r}; expected one of {AUX_KINDS}')
        problem = frame_problem(kind, frame_id, colour_frame)
        if problem:
            return problem
        self.seen[kind] = True
        store = self.stores[kind]
        store[float(stamp)] = _Aux(load, frame_id)
        while len(store) > keep:
            del store[min(store)]
        return ''

    def match(self, kind: str, stamp: float, slop: float) -> Optional[float]:
        """Return the stamp of the `kind` image nearest to `stamp` within `slop`, or None."""
        store = self.stores[kind]
        if not store:
            return None
        if stamp in store:
            return stamp
        nearest = min(store, key=lambda s: abs(s - stamp))
        return nearest if abs(nearest - stamp) <= slop + 1e-9 else None

    def missing(self, stamp: float, slop: float) -> List[str]:
        """Kinds seen before that have no image for `stamp` yet."""
        return [kind for kind in AUX_KINDS if self.seen[kind] and self.match(kind, stamp, slop) is None]

    def forget_before(self, horizon: float) -> None:
        """Drop images stamped more than 5 s before `horizon` (no colour image will pair with them)."""
        for store in self.stores.values():
            for stamp in [s for s in store if s < horizon - 5.0]:
                del store[stamp]

    def take(self, stamp: float, slop: float, colour_frame: str, size: Tuple[int, int], undistort=None,
             stored: Optional[Tuple[int, int]] = None) -> Taken:
        """Take the images paired with the colour image at `stamp`, made like it.

        `size`: the colour image's (width, height); `undistort`: the colour camera's `Undistorter` (nearest
        neighbour here); `stored`: the (width, height) the keyframe is stored at when it is resized.
        """
        taken = Taken()
        width, height = size
        for kind in AUX_KINDS:
            key = self.match(kind, stamp, slop)
            aux = self.stores[kind].pop(key, None) if key is not None else None
            if aux is None:
                continue
            problem = frame_problem(kind, aux.frame_id, colour_frame)
            if problem:
                taken.problems.append((f'{kind}_frame', problem))
                taken.notes.append(f'{kind} in another frame ignored')
                continue
            try:
                value = np.asarray(aux.load())
            except (ValueError, TypeError) as error:
                if kind == 'mask':
                    taken.refusal = f'bad mask image (topic mask): {error}; frame skipped'
                    return taken
                taken.problems.append((f'{kind}_decode', f'{kind} image at {key:.3f} s (topic {kind}) ignored: '
                                                         f'{error}'))
                taken.notes.append(f'bad {kind} image ignored')
                continue
            if value.shape[:2] != (height, width):
                text = (f'{kind} image (topic {kind}) is {value.shape[1] if value.ndim > 1 else "?"} x '
                        f'{value.shape[0]} but the colour images are {width} x {height}')
                if kind == 'mask':
                    taken.refusal = f'{text}: publish the mask at the colour resolution (mono8, aligned); frame skipped'
                    return taken
                hint = f'. {ALIGNED_DEPTH_HINT}' if kind == 'depth' else '; publish it aligned to the colour image'
                taken.problems.append((f'{kind}_size', f'{text}: ignored, keyframes are kept without {kind}{hint}'))
                taken.notes.append(f'{kind} of another size ignored')
                continue
            if kind == 'mask':
                value = (value > 0).astype(np.uint8)
            if undistort is not None:
                value = undistort.nearest(value)
            if stored is not None:
                value = cv2.resize(value, stored, interpolation=cv2.INTER_NEAREST)
            taken.extras[kind] = value
        return taken
