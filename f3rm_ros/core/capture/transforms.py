"""A transform tree like tf2's buffer, without ROS: for recorded scans (rosbag2 ``/tf`` and ``/tf_static``).

`TransformTree.lookup(target, source, stamp)` returns ``T_target_source`` at `stamp`: the chain of edges
between the two frames, each dynamic edge interpolated at the stamp (`keyframes.PoseBuffer`: slerp + linear,
no extrapolation beyond its tolerance) and each static edge as given. tf2 itself (``tf2_ros.Buffer``) does
this on a live robot; a bag read offline has no tf2 here, and this is the same arithmetic.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..geometry import check_rigid
from .keyframes import PoseBuffer


class TransformTree:
    """Edges parent → child (``T_parent_child``), static or stamped; lookups compose them."""

    def __init__(self, tolerance_s: float = 0.02, max_gap_s: float = 0.25, maxlen: int = 100000):
        self.tolerance_s, self.max_gap_s, self.maxlen = tolerance_s, max_gap_s, maxlen
        self.static: Dict[Tuple[str, str], np.ndarray] = {}
        self.dynamic: Dict[Tuple[str, str], PoseBuffer] = {}
        self.neighbours: Dict[str, List[str]] = {}

    def _link(self, parent: str, child: str) -> None:
        for a, b in ((parent, child), (child, parent)):
            if b not in self.neighbours.setdefault(a, []):
                self.neighbours[a].append(b)

    def add(self, parent: str, child: str, stamp: float, T_parent_child: np.ndarray, static: bool = False) -> None:
        """Record one transform (ValueError for a non-rigid one or empty frame names)."""
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            raise ValueError(f'a transform needs two different frame names, got {parent!r} -> {child!r}')
        T = np.asarray(T_parent_child, dtype=np.float64)
        check_rigid(T)
        if static:
            self.static[(parent, child)] = T.copy()
        else:
            buffer = self.dynamic.get((parent, child))
            if buffer is None:
                buffer = self.dynamic[(parent, child)] = PoseBuffer(self.tolerance_s, self.maxlen, self.max_gap_s)
            buffer.add(stamp, T)
        self._link(parent, child)

    def _path(self, start: str, goal: str) -> Optional[List[str]]:
        previous = {start: None}
        queue = deque([start])
        while queue:
            frame = queue.popleft()
            if frame == goal:
                path = [frame]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1]
            for other in self.neighbours.get(frame, []):
                if other not in previous:
                    previous[other] = frame
                    queue.append(other)
        return None

    def _edge(self, parent: str, child: str, stamp: float) -> Tuple[Optional[np.ndarray], str]:
        """T_parent_child at `stamp`, whichever way the edge was recorded."""
        for (a, b), invert in (((parent, child), False), ((child, parent), True)):
            if (a, b) in self.static:
                T, why = self.static[(a, b)], 'static'
            elif (a, b) in self.dynamic:
                T, why = self.dynamic[(a, b)].lookup(stamp)
                if T is None:
                    return None, f'{a} -> {b}: {why}'
            else:
                continue
            return (np.linalg.inv(T) if invert else T), why
        return None, f'no transform between {parent} and {child}'

    def lookup(self, target: str, source: str, stamp: float) -> Tuple[Optional[np.ndarray], str]:
        """Return (T_target_source at `stamp`, how) or (None, why not), as tf2's ``lookup_transform``."""
        target, source = target.lstrip('/'), source.lstrip('/')
        if target == source:
            return np.eye(4), 'same frame'
        path = self._path(target, source)
        if path is None:
            known = ', '.join(sorted(self.neighbours)) or 'none'
            return None, f'no chain of transforms from {target} to {source} (frames: {known})'
        T = np.eye(4)
        for parent, child in zip(path, path[1:]):
            edge, why = self._edge(parent, child, stamp)
            if edge is None:
                return None, why
            T = T @ edge
        return T, f'{len(path) - 1} transforms composed'
