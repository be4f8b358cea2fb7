"""Health where ROS tools look: one ``diagnostic_msgs/DiagnosticStatus`` per node on ``/diagnostics``.

Every f3rm_ros node publishes a ``DiagnosticArray`` on ``/diagnostics`` (what ``rqt_robot_monitor``,
``diagnostic_aggregator`` and ``ros2 topic echo /diagnostics`` read) at its ``status_rate_hz``, holding one
status: name = the node's fully qualified name (``/capture``), ``hardware_id`` (the camera frame, the compute
device and host), a message and key values (keyframes, step, PSNR, rays/s, teacher, queue depths, the last
problem ...). Levels mean something: OK, WARN (the node works but the result may not be what you want:
a fallback teacher, dropped inputs, a full scan), ERROR (it does not work: training stalled, writes failing,
a refused checkpoint). Nodes compute ``(level, message)`` from their core objects' ``health()``.

`ProblemLog` throttles repeated problems of a kind in the log and remembers recent ones for the status.
"""
from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

DIAGNOSTICS_TOPIC = '/diagnostics'
LEVELS = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN, 'error': DiagnosticStatus.ERROR,
          'stale': DiagnosticStatus.STALE}
LEVEL_NAMES = {value: name for name, value in LEVELS.items()}
_RANK = {'debug': 0, 'info': 0, 'ok': 0, 'warn': 1, 'error': 2}


def worse(a: Tuple[str, str], b: Tuple[str, str]) -> Tuple[str, str]:
    """Return the worse of two (level name, message) pairs (the first on a tie)."""
    return b if _RANK.get(b[0], 0) > _RANK.get(a[0], 0) else a


class ProblemLog:
    """Counts problems by kind and logs each kind at most once per `period_s` (with the count since).

    It remembers when each kind last happened, so the status can say whether problems are recent. Repeats held
    back within a period are summarised by `flush` (the node's status timer calls it) as soon as the period is
    over, not only when the kind happens again. `last_problem` is the newest problem of the last `current_s`
    seconds that was not resolved: a problem that is gone leaves the status ('' then); `counts` keep history.
    """

    def __init__(self, logger, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 current_s: float = 10.0):
        self.logger = logger
        self.period_s = period_s
        self.current_s = current_s
        self.clock = clock
        self.counts: Dict[str, int] = {}
        self._last: Dict[str, Tuple[float, int]] = {}
        self._recent: Dict[str, Tuple[float, str, str]] = {}   # kind -> (time, level, message)
        self._held: Dict[str, Tuple[str, str]] = {}             # kind -> (level, message) of repeats not logged yet
        self._lock = threading.Lock()

    @property
    def last_problem(self) -> str:
        """The newest unresolved problem of the last `current_s` seconds ('' when none)."""
        now = self.clock()
        with self._lock:
            current = [item for item in self._recent.values() if now - item[0] <= self.current_s]
        return max(current, key=lambda item: item[0])[2] if current else ''

    def report(self, kind: str, message: str, level: str = 'warn') -> None:
        """Record a problem of `kind`; log it unless the same kind was logged within the period."""
        now = self.clock()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self._recent[kind] = (now, level, message)
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.period_s:
                self._held[kind] = (level, message)
                return
            since = self.counts[kind] - (last[1] if last else 0)
            self._last[kind] = (now, self.counts[kind])
            self._held.pop(kind, None)
        suffix = f' ({since} times since {now - last[0]:.0f} s ago)' if last is not None and since > 1 else ''
        getattr(self.logger, level)(f'{message}{suffix}')

    def flush(self) -> None:
        """Log the repeats held back of every kind whose period is over (one line per kind)."""
        now = self.clock()
        due = []
        with self._lock:
            for kind, (level, message) in list(self._held.items()):
                stamp, count = self._last[kind]
                if now - stamp >= self.period_s:
                    due.append((level, message, self.counts[kind] - count, now - stamp))
                    self._last[kind] = (now, self.counts[kind])
                    del self._held[kind]
        for level, message, repeats, seconds in due:
            getattr(self.logger, level)(f'{message} ({repeats} more times in the last {seconds:.0f} s)')

    def resolve(self, kind: str) -> None:
        """Forget that `kind` is a current problem (e.g. a write succeeded again); its count stays."""
        with self._lock:
            self._recent.pop(kind, None)

    def recent(self, window_s: float = 10.0) -> Tuple[str, str]:
        """(level, message) of the worst problem reported within `window_s` ('ok', '' when none)."""
        now = self.clock()
        found = ('ok', '')
        with self._lock:
            for stamp, level, message in sorted(self._recent.values(), key=lambda item: -item[0]):
                if now - stamp <= window_s and level in ('warn', 'error'):
                    found = worse(found, (level, message))
        return found


def status_message(name: str, values: Mapping[str, Any], level=DiagnosticStatus.OK,
                   message: str = '', hardware_id: str = '') -> DiagnosticStatus:
    """``diagnostic_msgs/DiagnosticStatus`` with one KeyValue per entry (floats to 4 significant digits).

    `level` is a DiagnosticStatus constant or a level name ('ok', 'warn', 'error', 'stale').
    """
    def text(value: Any) -> str:
        if isinstance(value, float):
            return 'nan' if math.isnan(value) else f'{value:.4g}'
        return str(value)
    if isinstance(level, str):
        level = LEVELS[level]
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=text(v)) for k, v in values.items()])


def status_values(msg: DiagnosticStatus) -> Dict[str, str]:
    """Inverse of `status_message` for readers: {key: value string}."""
    return {kv.key: kv.value for kv in msg.values}


def level_name(msg: DiagnosticStatus) -> str:
    """Return 'ok', 'warn', 'error' or 'stale' for a status."""
    return LEVEL_NAMES.get(msg.level, str(msg.level))


def host_name() -> str:
    """Return this computer's name, for hardware ids."""
    return socket.gethostname()


class NodeDiagnostics:
    """Publishes a node's one status on ``/diagnostics`` at `rate_hz`.

    `collect()` returns ``(level name, message, values)``; `hardware_id` is a string or a callable returning
    one (it may only be known later, e.g. the camera frame of the first image); `problems`, the node's
    `ProblemLog`, is flushed on every tick.
    """

    def __init__(self, node, rate_hz: float, collect: Callable[[], Tuple[str, str, Dict[str, Any]]],
                 hardware_id: Any = '', problems: Optional[ProblemLog] = None):
        self.node = node
        self.collect = collect
        self.problems = problems     # its held-back repeats are logged on this timer, on time
        self.hardware_id = hardware_id
        self.name = node.get_fully_qualified_name()
        self.publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.timer = node.create_timer(1.0 / rate_hz, self.publish)
        self.last: Optional[DiagnosticStatus] = None

    def status(self) -> DiagnosticStatus:
        """Return the node's status now."""
        level, message, values = self.collect()
        hardware = self.hardware_id() if callable(self.hardware_id) else self.hardware_id
        return status_message(self.name, values, level, message, hardware)

    def publish(self) -> None:
        """Publish the status now (the timer calls this)."""
        if self.problems is not None:
            self.problems.flush()
        status = self.status()
        self.last = status
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(array)
