"""The query node's picture worker: ``~/similarity_image`` drawn after the answer went out, never delaying one.

Each FOUND answer offers a `PictureJob` (a snapshot of the answer, `core.query.picture`); only the newest waits.
A picture starts once no question arrived for `PICTURE_QUIET_S` and stops between bands of `PICTURE_BAND_ROWS`
rows when a newer question arrives (dropped: the newer answer's picture follows). The worker never holds the
node's query lock.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

from ..core.query.picture import PictureCancelled, PictureJob, draw_overview, picture_pixels
from . import conversions as conv

# A picture starts once no question arrived for this long (s): on a CPU its render competes with the next answer for
# the cores (160x120 took 1.7-2 s on 2 idle cores), so a client asking back to back never waits for one.
PICTURE_QUIET_S = 0.5
PICTURE_BAND_ROWS = 8     # rows per band: a newer question waits for at most one band of a picture already started


class PictureWorker:
    """Draws the newest offered picture in a thread of its own and publishes it on `publisher`.

    `problems` is the node's `ProblemLog` (a picture that fails is reported there, and the worker goes on).
    """

    def __init__(self, publisher, problems):
        self.publisher = publisher
        self.problems = problems
        self._wake = threading.Condition()
        self._job: Optional[PictureJob] = None     # the newest answer's job, waiting to be drawn
        self._newest_id = 0                        # the newest question's id: an older answer's picture is dropped
        self._asked_at = time.monotonic()          # when the newest question arrived (pictures wait for quiet)
        self._painting = False
        self._stop = False
        self.drawn = self.dropped = 0
        self.thread = threading.Thread(target=self._paint, name='f3rm-query-pictures', daemon=True)
        self.thread.start()

    def asked(self, request_id: int) -> None:
        """Note a new question: a picture still being drawn for an older answer steps aside, the next waits."""
        self._newest_id = request_id
        self._asked_at = time.monotonic()

    def offer(self, job: PictureJob) -> None:
        """Queue an answer's picture, replacing one that has not started."""
        with self._wake:
            if self._job is not None:
                self.dropped += 1       # replaced before it was started
            self._job = job
            self._wake.notify()

    @property
    def pending(self) -> bool:
        """Tell whether a picture waits or is being drawn."""
        return self._job is not None or self._painting

    def close(self) -> None:
        """Ask the worker to stop (a picture being drawn stops at its next band); `thread` is then joined."""
        with self._wake:
            self._stop = True
            self._wake.notify()

    def _paint(self) -> None:
        while True:
            with self._wake:
                while self._job is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                quiet = time.monotonic() - self._asked_at
                if quiet < PICTURE_QUIET_S:          # questions are still coming: wait (a newer answer replaces it)
                    self._wake.wait(PICTURE_QUIET_S - quiet)
                    continue
                job, self._job = self._job, None
                self._painting = True
            try:
                picture = draw_overview(job, lambda: self._stop or self._newest_id != job.generation,
                                        PICTURE_BAND_ROWS)
                self.publisher.publish(conv.rgb_to_image(picture_pixels(picture), job.stamp,
                                                         'f3rm_overview_optical_frame'))
                self.drawn += 1
            except PictureCancelled:
                self.dropped += 1
            except Exception as error:  # a picture is a nicety: report, keep serving
                if self._stop:  # shutting down: the publisher is gone, nobody is waiting for the picture
                    return
                self.problems.report('picture', f'similarity image not drawn: {type(error).__name__}: {error}')
            finally:
                self._painting = False
