"""What the nodes' logs and status say about problems: once per period, summaries on time, gone when gone.

Seen from a client before: a rate-limit note arrived 31 s after the burst it summarised, a 10,000-character query
was logged whole, core records were logged twice (ROS-formatted and plain), and /capture kept an old last_problem
while scanning.
"""
import logging
from types import SimpleNamespace

from f3rm_ros.ros.diagnostics import ProblemLog
from f3rm_ros.ros.logs import route_core_logging, shorten, unroute_core_logging


class Recorder:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda text: self.lines.append((level, text))


def test_repeats_are_summarised_when_their_period_ends_not_at_the_next_problem():
    now = [0.0]
    log = Recorder()
    problems = ProblemLog(log, period_s=5.0, clock=lambda: now[0], current_s=10.0)
    for t in (0.0, 1.0, 2.0):
        now[0] = t
        problems.report('keyframe', 'keyframe ignored: no pose')
    assert log.lines == [('warn', 'keyframe ignored: no pose')]
    now[0] = 4.9
    problems.flush()
    assert len(log.lines) == 1                                   # the period is not over yet
    now[0] = 5.0
    problems.flush()
    assert log.lines[1] == ('warn', 'keyframe ignored: no pose (2 more times in the last 5 s)')
    now[0] = 30.0
    problems.flush()
    assert len(log.lines) == 2                                   # nothing more to say


def test_last_problem_is_current_only():
    now = [0.0]
    problems = ProblemLog(Recorder(), clock=lambda: now[0], current_s=10.0)
    problems.report('camera_info', 'no camera_info received yet')
    assert problems.last_problem == 'no camera_info received yet'
    now[0] = 10.5                                                  # scanning fine since: the status forgets it
    assert problems.last_problem == '' and problems.counts == {'camera_info': 1}
    problems.report('write', 'disk full')
    problems.resolve('write')
    assert problems.last_problem == ''


def test_long_texts_are_one_short_line():
    text = 'mug ' * 2500 + '\nsecond line'
    line = shorten(text, 120)
    assert '\n' not in line and line.startswith('mug mug') and line.endswith('(10011 characters)')
    assert len(line) < 150 and shorten('mug', 120) == 'mug'


def test_routed_core_records_are_one_line_and_not_also_printed_plain(monkeypatch):
    # the real launch library (imported by other tests of the same process) makes new loggers non-propagating
    monkeypatch.setattr(logging.getLogger('f3rm_ros.core.query.answer'), 'propagate', True)
    seen = []

    class Plain(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    plain = Plain()
    logging.getLogger().addHandler(plain)
    node = SimpleNamespace(log=Recorder())
    node.get_logger = lambda: node.log
    route_core_logging(node, ('f3rm_ros.core.query',))
    try:
        logging.getLogger('f3rm_ros.core.query.answer').warning('two\nlines')
    finally:
        unroute_core_logging(node)
        logging.getLogger().removeHandler(plain)
    assert node.log.lines == [('warning', '[f3rm_ros.core.query.answer] two lines')]
    assert 'two\nlines' not in seen
    assert logging.getLogger('f3rm_ros').propagate                # restored once no node is routed
