"""``f3rm-ros bench <kind>``: benchmarks, one module of `f3rm_ros.bench` per kind.

Each module named in `BENCH_MODULES` exposes ``register(subparsers)`` (adding its own parser with
``set_defaults(func=...)``), exactly like the top-level commands; a module that does not exist yet is skipped.
"""
import importlib

BENCH_MODULES = ('train', 'hashgrid', 'query', 'semantic')


def register(sub) -> None:
    """Add ``bench`` and its sub-commands."""
    parser = sub.add_parser('bench', help='benchmarks: train | hashgrid | query | semantic (whichever are installed)')
    kinds = parser.add_subparsers(dest='bench', required=True, metavar='KIND')
    for name in BENCH_MODULES:
        module_name = f'f3rm_ros.bench.{name}'
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(kinds)
