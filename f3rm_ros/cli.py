"""``f3rm-ros``: command-line entry points; each sub-command lives in `f3rm_ros.commands`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .commands import COMMAND_MODULES, add_dds_arguments
from .known_warnings import silence_known_warnings
from .ros.dds import PROFILE_VARIABLE, confine_dds_to_localhost, describe_localhost, user_profile_replaced


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog='f3rm-ros', description=__doc__)
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    add_dds_arguments(parser, top_level=True)
    sub = parser.add_subparsers(dest='command', required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f'.commands.{name}', __package__).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``f3rm-ros`` console script.

    Without `argv` (the process's own command line: the console script) known third-party deprecation warnings
    are silenced first; callers that pass `argv` (tests) keep seeing them.
    """
    if argv is None:
        silence_known_warnings()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='[%(levelname)s] %(name)s: %(message)s')
    if args.localhost_only:  # before anything starts ROS: this process and its children inherit it
        replaced = user_profile_replaced()
        confine_dds_to_localhost()
        logging.getLogger('f3rm_ros').info(describe_localhost())
        if replaced:   # the user's own transports and QoS are gone for this run: say so, once
            logging.getLogger('f3rm_ros').warning(
                f'--localhost-only replaces your Fast DDS profile {PROFILE_VARIABLE}={replaced} for this run '
                '(leave --localhost-only out to keep it, and confine DDS in your own profile)')
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as error:
        logging.getLogger('f3rm_ros').debug('where the error came from', exc_info=True)   # --verbose shows it
        print(f'f3rm-ros {args.command}: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
