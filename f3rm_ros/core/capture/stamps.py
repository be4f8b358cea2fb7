"""Image stamp sanity for the capture session: the first test every colour image meets.

A stamp is refused when it is zero or not finite, further than `max_stamp_skew_s` from the node's clock (a camera
clock ahead of the computer, or a recorded stream played without sim time), a duplicate, or older than the
previous good one. A run of `STAMP_RECOVERY_FRAMES` frames in order among themselves but older than one earlier
frame means that frame was an outlier (a glitch of the driver's clock): the stream is followed again.
The differences between good stamps measure the frame period, which sets how far an aligned image may be from
its colour image.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

# Frames stamped before an outlier in a row, each newer than the last, after which the outlier is forgotten.
STAMP_RECOVERY_FRAMES = 5


class StampCheck:
    """Refuses bad image stamps and measures the frame period; `last` is the newest good stamp."""

    def __init__(self):
        self.last: Optional[float] = None
        self._behind: List[float] = []     # stamps refused as older than an outlier, in a row
        self._periods: List[float] = []    # recent stamp differences

    def check(self, stamp: float, now: float, max_skew_s: float) -> Tuple[str, str]:
        """Return (refusal, note): why `stamp` is refused ('' = good), and a note when an outlier was left behind.

        `now` is the node's clock in the stamps' time base (0 = unknown: no skew test; `max_skew_s` 0 = none).
        A good stamp becomes the reference of the next one.
        """
        if not math.isfinite(stamp) or stamp <= 0:
            return (f'image stamp {stamp} is zero or invalid: the driver must stamp images with their capture '
                    'time'), ''
        skew = max_skew_s
        if now > 0 and skew > 0 and abs(stamp - now) > skew:
            if stamp > now:
                why = ('a camera clock ahead of this computer (synchronise the clocks, e.g. chrony/PTP)')
            else:
                why = ('a recorded stream? play it with --clock and set use_sim_time: true (or raise '
                       'max_stamp_skew_s)')
            return (f'image stamp {stamp:.3f} s is {abs(stamp - now):.0f} s '
                    f'{"ahead of" if stamp > now else "behind"} this node\'s clock '
                    f'({now:.3f} s; max_stamp_skew_s {skew:g}): {why}'), ''
        previous = self.last
        if previous is not None and 0 < stamp - previous < 5.0:
            self._periods = (self._periods + [stamp - previous])[-30:]
        note = ''
        if previous is not None and stamp <= previous:
            if stamp < previous and (not self._behind or stamp > self._behind[-1]):
                self._behind.append(stamp)
            else:
                self._behind = [stamp] if stamp < previous else []
            if len(self._behind) < STAMP_RECOVERY_FRAMES:
                word = 'duplicate' if stamp == previous else 'out-of-order'
                return f'{word} image stamp {stamp:.6f} s (previous {previous:.6f} s)', ''
            # frames keep coming, in order among themselves, older than one earlier frame: that frame was the
            # outlier; follow the stream again
            note = (f'image stamps went back from {previous:.3f} s to {stamp:.3f} s for '
                    f'{len(self._behind)} frames in a row: {previous:.3f} s was an outlier, followed them')
        self._behind = []
        self.last = stamp
        return '', note

    def frame_period(self) -> Optional[float]:
        """Return the median recent stamp difference, or None before three have been measured."""
        if len(self._periods) >= 3:
            return float(np.median(self._periods))
        return None

    def restart(self) -> None:
        """Forget the reference stamp (a new scan); the measured frame period stays."""
        self.last = None
        self._behind.clear()
