"""``f3rm-ros pipeline``: capture, trainer and query nodes (and optionally a replayed arm) in one process."""

# ros.common and ros.pipeline are imported where used: `f3rm-ros` imports every command module at start-up, and its
# other commands do not need them.
from pathlib import Path

from . import add_dds_arguments


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser(
        'pipeline', help='run the ROS 2 nodes in one process (for pip installs without ros2 launch)',
        description='Run capture, trainer and query (and with --replay a replayed camera) as ROS 2 nodes on one '
                    'multi-threaded executor, configured like the launch file. DDS is left as your environment has it; '
                    '--localhost-only keeps it on this machine.')
    parser.add_argument('--params', action='append',
                        help='ROS parameters YAML (repeatable; default: the packaged config/f3rm.yaml)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='a parameter for every node, e.g. -p preset:=cpu-tiny (repeatable)')
    parser.add_argument('--replay', nargs='?', const='synthetic', metavar='DATASET',
                        help='also run the replay node: a nerfstudio dataset folder, or "synthetic" (default) for '
                             'a generated table scene')
    parser.add_argument('--duration', type=float, help='stop after this many seconds (default: until Ctrl-C)')
    parser.add_argument('--query', default='', help='ask this query once training is done and print the answer')
    parser.add_argument('--exit-after-query', action='store_true', help='stop once --query was answered')
    parser.add_argument('--threads', type=int, help='executor threads (default: CPU count)')
    add_dds_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Start the pipeline."""
    from ..ros.common import packaged_file
    from ..ros.pipeline import run_pipeline
    params = [Path(p) for p in args.params] if args.params else [packaged_file('config/f3rm.yaml')]
    parameters = list(args.param)
    if args.replay and args.replay != 'synthetic':
        parameters.append(f'dataset:={Path(args.replay).resolve()}')
    return run_pipeline(params, parameters, replay=bool(args.replay), duration_s=args.duration, query=args.query,
                        exit_after_query=args.exit_after_query, threads=args.threads)
