"""Python ``logging`` of the ROS-free core, routed to the nodes' ROS loggers (console, /rosout, log files).

The core (`f3rm_ros.core`) logs with the standard library, e.g. why a teacher was chosen or that a
checkpoint was refused. Without this bridge those records reach nobody but stderr (and INFO not even
that). `route_core_logging(node, prefixes)` installs one `logging.Handler` on the ``f3rm_ros`` logger that
forwards each record to the ROS logger of the node that owns its module: the node registered with the
longest matching prefix (e.g. the trainer owns ``f3rm_ros.core.training.online``), else the first node registered,
so with one node per process (``ros2 launch``) everything goes to that node.
"""
from __future__ import annotations

import logging
import threading
from typing import List, Sequence, Tuple

ROOT = 'f3rm_ros'


def shorten(text: str, limit: int = 120) -> str:
    """One log line of `text`: line breaks as spaces, cut to `limit` characters with the full length said."""
    flat = ' '.join(str(text).split())
    if len(flat) <= limit:
        return flat
    return f'{flat[:limit]}... ({len(flat)} characters)'


class RosLogHandler(logging.Handler):
    """Forwards `f3rm_ros.*` records to ROS loggers (see the module docstring)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter('%(message)s'))
        self.routes: List[Tuple[object, Tuple[str, ...], object]] = []   # (node, prefixes, ros logger)
        self.lock_routes = threading.Lock()

    def logger_for(self, name: str):
        """Return the ROS logger that records of logger `name` go to (None when no node is registered)."""
        with self.lock_routes:
            best, best_length = None, -1
            for _, prefixes, logger in self.routes:
                for prefix in prefixes:
                    if (name == prefix or name.startswith(prefix + '.')) and len(prefix) > best_length:
                        best, best_length = logger, len(prefix)
            if best is None and self.routes:
                best = self.routes[0][2]
            return best

    def emit(self, record: logging.LogRecord) -> None:
        logger = self.logger_for(record.name)
        if logger is None:
            return
        try:
            text = f'[{record.name}] {" ".join(self.format(record).splitlines())}'   # one line per record
            if record.levelno >= logging.ERROR:
                logger.error(text)
            elif record.levelno >= logging.WARNING:
                logger.warning(text)
            elif record.levelno >= logging.INFO:
                logger.info(text)
            else:
                logger.debug(text)
        except Exception:  # a closed context while shutting down: never let logging raise
            self.handleError(record)


_handler = None
_handler_lock = threading.Lock()


def route_core_logging(node, prefixes: Sequence[str] = ()) -> RosLogHandler:
    """Send `f3rm_ros.*` Python log records to `node`'s ROS logger (those of `prefixes` in preference)."""
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = RosLogHandler()
            root = logging.getLogger(ROOT)
            root.addHandler(_handler)
            # routed, a record is not also printed plain by a handler of Python's root logger (logged twice)
            root.propagate = False
            if root.level == logging.NOTSET or root.level > logging.INFO:
                root.setLevel(logging.INFO)
        with _handler.lock_routes:
            _handler.routes.append((node, tuple(prefixes), node.get_logger()))
        return _handler


def unroute_core_logging(node) -> None:
    """Stop forwarding to `node` (called when it is destroyed); the handler goes when no node is left."""
    global _handler
    with _handler_lock:
        if _handler is None:
            return
        with _handler.lock_routes:
            _handler.routes = [route for route in _handler.routes if route[0] is not node]
            empty = not _handler.routes
        if empty:
            logging.getLogger(ROOT).removeHandler(_handler)
            logging.getLogger(ROOT).propagate = True
            _handler = None
