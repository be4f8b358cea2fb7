"""Start-up of the f3rm_ros processes: ROS init, spinning, entry points, packaged files, torch threads.

The rest of the node plumbing has a module each: `params` (parameter tables, validation), `qos` (profiles,
sensor inputs with ``qos_overrides``), `diagnostics` (``/diagnostics``, throttled problems), `logs` (core
logging to ROS loggers) and `conversions` (messages <-> numpy, incl. depth / label images and label names).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..known_warnings import silence_known_warnings


# ------------------------------------------------------------------------------------------------ startup

def init_ros(args: Optional[Sequence[str]] = None, context=None) -> None:
    """``rclpy.init``; every entry point calls this.

    DDS discovery and transports are the user's (``ROS_AUTOMATIC_DISCOVERY_RANGE``, the middleware's
    profiles): nothing here changes them. Confining DDS to this machine is asked for explicitly: the launch
    files' ``localhost_only:=true``, ``f3rm-ros ... --localhost-only`` (`dds.confine_dds_to_localhost`).
    """
    import rclpy
    rclpy.init(args=list(args) if args is not None else None, context=context)


def spin_nodes(nodes: Sequence[Any], threads: Optional[int] = None, context=None) -> None:
    """Spin `nodes` until shutdown (Ctrl-C, SIGINT/SIGTERM from ``ros2 launch``); then destroy them.

    One node spins on a single-threaded executor (its heavy work has threads of its own, and rclpy's
    multi-threaded executor costs more per callback); several share a multi-threaded one. rclpy's signal
    handler shuts the context down and wakes the executor, so the spin ends by itself; a KeyboardInterrupt
    (a process without `InterruptGate`) ends it as well.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    if len(nodes) == 1 and not threads:
        executor = SingleThreadedExecutor(context=context)
    else:
        executor = MultiThreadedExecutor(num_threads=threads, context=context)
    for node in nodes:
        executor.add_node(node)
    try:
        with stops_at_shutdown(context):
            executor.spin()
    finally:
        for node in nodes:
            _quietly(node.destroy_node, f'stopping {node.get_name()}')
        _quietly(executor.shutdown, 'shutting the executor down')
        if rclpy.ok(context=context):
            _quietly(lambda: rclpy.try_shutdown(context=context), 'shutting ROS down')


@contextlib.contextmanager
def stops_at_shutdown(context=None):
    """End a spin quietly when ROS is shut down (Ctrl-C, SIGTERM).

    Quiet: KeyboardInterrupt, ExternalShutdownException, or any error raised once the context is down. rclpy's
    signal handler shuts the context down from its own thread; an executor between its check and its wait then
    fails ("failed to initialize wait set: the given context is not valid"): a normal stop, not a crash. An
    error while the context is still up is a callback's own and is raised.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException
    try:
        yield
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=context):
            raise


def _quietly(action: Callable[[], Any], what: str) -> None:
    """Run one clean-up step; an error (or a KeyboardInterrupt that slipped in) is reported, not raised."""
    try:
        action()
    except (Exception, KeyboardInterrupt) as error:  # shutting down: report, keep cleaning up
        print(f'[f3rm_ros] error while {what}: {type(error).__name__}: {error}', file=sys.stderr)


class InterruptGate:
    """SIGINT handler of a node process, installed before ``rclpy.init`` so that rclpy's handler runs first.

    rclpy's handler (C) shuts the ROS context down, wakes the executors, then calls this one. While the process
    is starting, the first SIGINT raises KeyboardInterrupt (nothing to save: stop at once). Once it spins
    (`spinning`), the first SIGINT raises nothing: the spin ends because the context is down. Raising there
    killed the trainer in CI: a KeyboardInterrupt landing while rclpy converted a message for a callback became
    pybind11's "Unable to convert call argument" RuntimeError, and the node died with a traceback (exit 1)
    after writing its checkpoint. Every later SIGINT is ignored: a terminal's Ctrl-C reaches every node and
    ``ros2 launch`` forwards one more, and the second must not cut the clean-up (the last checkpoint) short.
    SIGTERM and SIGKILL still end the process. Main thread only (elsewhere Python cannot handle signals).
    """

    def __init__(self) -> None:
        self.interrupts = 0
        self.spinning = False
        self.previous = None

    def install(self) -> 'InterruptGate':
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self)
        return self

    def remove(self) -> None:
        """Put the earlier handler back (a process that goes on after its nodes stopped)."""
        signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)

    def __call__(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            print('[f3rm_ros] interrupt ignored: already stopping (SIGTERM or SIGKILL ends the process now)',
                  file=sys.stderr)
        elif not self.spinning:
            raise KeyboardInterrupt


def node_main(factory: Callable[[], Any], args: Optional[Sequence[str]] = None, threads: Optional[int] = None,
              exit_when_done: bool = True) -> int:
    """Entry point body of a ``*_node`` executable: init ROS, build the node, spin it (`threads`: see spin_nodes).

    After a clean stop the process ends at once with exit code 0 (`exit_now`), unless `exit_when_done` is
    false; a node that cannot start returns 2. Known third-party deprecation warnings are silenced first.
    """
    import rclpy
    silence_known_warnings()
    gate = InterruptGate().install()
    init_ros(args if args is not None else sys.argv)
    try:
        node = factory()
        gate.spinning = True   # from here on a SIGINT only stops (rclpy's handler ends the spin)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f'[f3rm_ros] cannot start: {error}', file=sys.stderr)
        rclpy.try_shutdown()
        gate.remove()
        return 2
    except KeyboardInterrupt:  # stopped while starting (launch's SIGINT): nothing to save yet
        gate.spinning = True
        rclpy.try_shutdown()
        if exit_when_done:
            exit_now(0)
        gate.remove()
        return 0
    spin_nodes([node], threads)
    if exit_when_done:
        exit_now(0)
    gate.remove()
    return 0


def exit_now(code: int = 0) -> None:
    """End a node process whose clean-up is done: ROS context destroyed, logs flushed, then ``os._exit(code)``.

    The interpreter's own teardown is skipped on purpose. A daemon thread still inside C++ code (a query or
    picture in progress, a CLIP model still loading) aborts the process during that teardown ("terminate
    called without an active exception", exit -6, which ``ros2 launch`` reports as a crash), and the final
    garbage collection with torch loaded takes 1-2.5 s of the 5 s launch grants after SIGINT. Everything that
    matters was done explicitly before: nodes destroyed (the trainer's last checkpoint written and fsynced),
    the DDS participant removed (peers see the node leave), stdout/stderr and logging flushed.
    """
    import logging

    import rclpy
    try:
        rclpy.utilities.get_default_context().destroy()
    except Exception as error:  # already gone or never made: nothing to release
        print(f'[f3rm_ros] ROS context not destroyed: {error}', file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def packaged_file(relative: str) -> Path:
    """Find a file shipped in the package's share folder (``config/f3rm.yaml``, ``config/f3rm.rviz``)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('f3rm_ros')) / relative)
    except Exception:  # not an ament install
        pass
    root = Path(__file__).resolve().parents[2]
    candidates.append(root / relative)                                         # source checkout
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidates.append(Path(prefix) / 'share' / 'f3rm_ros' / relative)      # pip install
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'{relative} not found; looked in: ' + ', '.join(map(str, candidates)))


# ------------------------------------------------------------------------------------------------ process

def set_torch_threads(count: int) -> None:
    """Limit torch's intra-op threads of this process (0 = leave torch's default).

    On a small CPU shared by several node processes, one thread per process is several times faster than
    torch's default (measured on 2 cores with another busy process: 0.5 s vs 1.7-2.9 s per cpu-tiny step).
    """
    if count > 0:
        import torch
        torch.set_num_threads(int(count))


def expand_path(path: str) -> str:
    """'~' and environment variables expanded; '' stays ''."""
    return os.path.expandvars(os.path.expanduser(path)) if path else ''
