"""Start-up of the f3rm_ros processes: ROS init, spinning, entry points, packaged files, torch threads.

The rest of the node plumbing has a module each: `params` (parameter tables, validation), `qos` (profiles,
sensor inputs with ``qos_overrides``), `diagnostics` (``/diagnostics``, throttled problems), `logs` (core
logging to ROS loggers) and `conversions` (messages <-> numpy, incl. depth / label images and label names).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .dds import confine_dds_to_localhost


# ------------------------------------------------------------------------------------------------ startup

def init_ros(args: Optional[Sequence[str]] = None, context=None) -> None:
    """``rclpy.init`` after confining DDS to this machine (DESIGN.md §6); every entry point calls this."""
    import rclpy
    confine_dds_to_localhost()
    rclpy.init(args=list(args) if args is not None else None, context=context)


def spin_nodes(nodes: Sequence[Any], threads: Optional[int] = None, context=None) -> None:
    """Spin `nodes` until shutdown (Ctrl-C, SIGTERM); then destroy them.

    One node spins on a single-threaded executor (its heavy work has threads of its own, and rclpy's
    multi-threaded executor costs more per callback); several share a multi-threaded one.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    if len(nodes) == 1 and not threads:
        executor = SingleThreadedExecutor(context=context)
    else:
        executor = MultiThreadedExecutor(num_threads=threads, context=context)
    for node in nodes:
        executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            try:
                node.destroy_node()
            except Exception as error:  # shutting down: report, keep destroying the others
                print(f'[f3rm_ros] error while stopping {node.get_name()}: {error}', file=sys.stderr)
        executor.shutdown()
        if rclpy.ok(context=context):
            rclpy.try_shutdown(context=context)


def node_main(factory: Callable[[], Any], args: Optional[Sequence[str]] = None, threads: Optional[int] = None) -> int:
    """Entry point body of a ``*_node`` executable: init ROS, build the node, spin it (`threads`: see spin_nodes)."""
    init_ros(args if args is not None else sys.argv)
    try:
        node = factory()
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f'[f3rm_ros] cannot start: {error}', file=sys.stderr)
        import rclpy
        rclpy.try_shutdown()
        return 2
    spin_nodes([node], threads)
    return 0


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
