"""``f3rm-ros bench faults``: the fault campaign on this machine's CPU, as a table.

Runs `f3rm_ros.harness.fault_campaign` (see its docstring for each phase): kill -9 of trainer and capture at random
moments, a full disk under the dataset and checkpoints, refused checkpoints, a query flood, at least 25 kinds of
bad input, and a long 30 Hz 640 x 480 stream. The nodes run as separate processes on a private ROS domain, with
DDS confined to this machine whatever ``--localhost-only`` says (a campaign must not disturb a robot's network).
Prints a markdown table (also ``--output``/faults.md) and the raw numbers (faults.json); exits 1 when a row
misses its goal.
"""
from __future__ import annotations

# Imported where used (`f3rm-ros` imports every bench module at start-up): harness.fault_campaign (heavy: cv2, scipy,
# yaml, ROS messages) and ros.dds.
import argparse
import tempfile
import time
from pathlib import Path

from . import format_table, write_json

PHASES = ('kills', 'disk', 'checkpoints', 'flood', 'bad_inputs', 'stream')


def register(sub) -> None:
    """Add ``bench faults``."""
    p = sub.add_parser('faults', help='fault campaign: kill -9, full disk, bad checkpoints, query flood, bad '
                       'inputs, long stream (CPU, ~20 min)', description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--kills', type=int, default=20, help='kill -9 of trainer and capture in turn (default: 20)')
    p.add_argument('--stream-minutes', type=float, default=10.0, help='length of the 30 Hz stream (default: 10)')
    p.add_argument('--flood-seconds', type=float, default=10.0, help='length of the query flood (default: 10)')
    p.add_argument('--flood-rate', type=float, default=500.0, help='queries per second (default: 500)')
    p.add_argument('--phases', default=','.join(PHASES),
                   help=f'comma-separated subset of {",".join(PHASES)} (checkpoints, flood and bad_inputs need '
                   'kills: they use its trained checkpoint)')
    p.add_argument('--seed', type=int, default=0, help='random kill moments (default: 0)')
    p.add_argument('--output', type=Path, help='folder for faults.md, faults.json and the node logs '
                   '(default: a temporary folder)')
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the chosen phases; print the table; 0 when every row met its goal."""
    from ..ros.dds import confine_dds_to_localhost
    from ..harness.fault_campaign import Campaign
    phases = [p.strip() for p in args.phases.split(',') if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f'bench faults: unknown phases {unknown}; choose from {", ".join(PHASES)}')
    needs_kills = {'checkpoints', 'flood', 'bad_inputs'} & set(phases)
    if needs_kills and 'kills' not in phases:
        raise SystemExit(f'bench faults: {", ".join(sorted(needs_kills))} use the checkpoint trained by kills: '
                         'add kills to --phases')
    confine_dds_to_localhost()
    output = args.output or Path(tempfile.mkdtemp(prefix='f3rm-faults-'))
    started = time.monotonic()
    campaign = Campaign(output, seed=args.seed)
    try:
        for phase in PHASES:
            if phase not in phases:
                continue
            print(f'[faults] phase {phase} ({time.monotonic() - started:.0f} s so far)', flush=True)
            if phase == 'kills':
                campaign.kills(args.kills)
            elif phase == 'disk':
                campaign.disk_full()
            elif phase == 'checkpoints':
                campaign.checkpoints()
            elif phase == 'flood':
                if 'checkpoints' not in phases:
                    campaign.start_query()
                campaign.flood(args.flood_rate, args.flood_seconds)
            elif phase == 'bad_inputs':
                if 'query' not in campaign.procs.procs:
                    campaign.start_query()
                campaign.bad_inputs()
            else:
                campaign.stream(args.stream_minutes)
    except Exception:
        print(campaign.procs.tails(), flush=True)
        raise
    finally:
        campaign.close()
    rows = campaign.results.rows
    table = format_table([('phase', 'fault', 'what happened', 'goal met')]
                         + [(r.phase, r.fault, r.result, 'yes' if r.ok else '**no**') for r in rows])
    failed = sum(not r.ok for r in rows)
    minutes = (time.monotonic() - started) / 60
    summary = f'RESULT rows={len(rows)} failed={failed} minutes={minutes:.1f}'
    print(table)
    print(summary)
    (output / 'faults.md').write_text(table + '\n\n' + summary + '\n')
    write_json(str(output / 'faults.json'), {'rows': [r.__dict__ for r in rows], 'numbers': campaign.results.numbers})
    print(f'[faults] table: {output / "faults.md"}, numbers: {output / "faults.json"}, node logs: {output / "logs"}')
    return 1 if failed else 0
