"""Parts of one keyframe that travel on separate topics with one stamp, put back together (`StampAssembler`).

The trainer node receives a keyframe's image, camera_info and pose (and optionally depth, labels and mask) as
separate messages; an item goes to the online session once its parts are there or waited for long enough.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any, Callable, Dict, List, Sequence, Tuple


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
