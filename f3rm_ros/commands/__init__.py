"""Sub-commands of ``f3rm-ros``: each module exposes ``register(subparsers)``."""
# core.config (it loads yaml) is imported where used: `f3rm-ros` imports this package at start-up.
import argparse
from pathlib import Path

LOCALHOST_ONLY_HELP = ('keep DDS on this machine for this process and everything it starts: '
                       'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the packaged Fast DDS profile (loopback + shared '
                       'memory). Default: DDS as your environment has it')

COMMAND_MODULES = ('train', 'query', 'bench', 'pipeline', 'demo', 'import_bag', 'check_calibration', 'eval',
                   'experiment', 'render', 'export', 'task', 'manipulate')


def add_config_arguments(parser: argparse.ArgumentParser, preset: str = 'cpu') -> None:
    """--preset / --config / --device, shared by every command that builds a model."""
    parser.add_argument('--preset', default=preset, help=f'cpu-tiny | cpu | gpu (default: {preset})')
    parser.add_argument('--config', action='append', help='YAML overlay (repeatable), applied after the preset')
    parser.add_argument('--device', help='cpu | cuda (default: auto)')


def config_from_args(args, **overrides):
    """F3RMConfig from --preset/--config/--device plus nested `overrides`."""
    from ..core.config import make_config
    overrides = {k: dict(v) for k, v in overrides.items()}
    if getattr(args, 'device', None):
        overrides.setdefault('trainer', {})['device'] = args.device
        overrides.setdefault('teacher', {})['device'] = args.device
    return make_config(args.preset, [Path(p) for p in args.config or []], overrides)


def add_dds_arguments(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """--localhost-only, on the top-level parser and on each sub-command that starts ROS processes.

    On a sub-command the flag has no default, so it does not undo ``f3rm-ros --localhost-only <command>``.
    """
    parser.add_argument('--localhost-only', action='store_true', help=LOCALHOST_ONLY_HELP,
                        **({} if top_level else {'default': argparse.SUPPRESS}))
