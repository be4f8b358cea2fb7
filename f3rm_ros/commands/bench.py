"""``f3rm-ros bench <kind>``: benchmarks, one module of `f3rm_ros.bench` per kind.

Each module named in `BENCH_MODULES` exposes ``register(subparsers)`` (adding its own parser with
``set_defaults(func=...)``), exactly like the top-level commands.
"""
import importlib

from . import add_dds_arguments

BENCH_MODULES = ('train', 'hashgrid', 'query', 'semantic', 'distortion', 'faults', 'teachers', 'online', 'manipulate',
                 'changes')


def register(sub) -> None:
    """Add ``bench`` and its sub-commands."""
    parser = sub.add_parser('bench', help='benchmarks: train | hashgrid | query | semantic | distortion | faults | '
                                          'teachers | online | manipulate | changes')
    add_dds_arguments(parser)  # f3rm-ros bench --localhost-only KIND ...
    kinds = parser.add_subparsers(dest='bench', required=True, metavar='KIND')
    for name in BENCH_MODULES:
        importlib.import_module(f'f3rm_ros.bench.{name}').register(kinds)
