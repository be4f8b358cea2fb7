"""``f3rm-ros task record | show | list | forget``: demonstrations of a task, offline (the query node's services)."""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): the manipulation, geometry and
# render modules (torch, nerfstudio, scipy).
import argparse
from pathlib import Path

import numpy as np

DEFAULT_TASKS_DIR = '~/.ros/f3rm/tasks'


def register(sub) -> None:
    """Add ``task`` and its sub-commands."""
    parser = sub.add_parser('task', help='record, show, list or forget demonstrations of a grasp or placement task')
    kinds = parser.add_subparsers(dest='task_command', required=True, metavar='ACTION')
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--tasks-dir', default=DEFAULT_TASKS_DIR, help=f'task files (default {DEFAULT_TASKS_DIR})')

    record = kinds.add_parser('record', parents=[common], help='read a gripper pose in a trained field and append it '
                              'to a task as a demonstration')
    record.add_argument('--checkpoint', required=True, help='the trained field')
    record.add_argument('--task', required=True, help='task name (created with its first demonstration)')
    record.add_argument('--pose', required=True, help='gripper pose in base_frame: x,y,z,qx,qy,qz,qw (origin between '
                        'the fingertips, z = approach, y = closing)')
    record.add_argument('--description', default='', help="text that retrieves the task (default: its name)")
    record.add_argument('--kind', default='grasp', choices=('grasp', 'place'))
    record.add_argument('--width', type=float, default=0.0, help='opening at the demonstration (m; 0 = half the '
                        "gripper's maximum)")
    record.add_argument('--device', default='auto')
    record.set_defaults(func=run_record)

    show = kinds.add_parser('show', parents=[common], help='what a task holds, and a picture of its demonstrations')
    show.add_argument('name')
    show.add_argument('--checkpoint', default='', help='draw the demonstrations into a render of this field')
    show.add_argument('--output', default='outputs/task', help='folder of the picture (default outputs/task)')
    show.add_argument('--device', default='auto')
    show.set_defaults(func=run_show)

    listing = kinds.add_parser('list', parents=[common], help='every task file, and why any does not load')
    listing.set_defaults(func=run_list)

    forget = kinds.add_parser('forget', parents=[common], help='drop one demonstration')
    forget.add_argument('name')
    forget.add_argument('--index', type=int, default=-1, help='which demonstration (default -1: the latest)')
    forget.set_defaults(func=run_forget)


def parse_pose(text: str) -> np.ndarray:
    """'x,y,z,qx,qy,qz,qw' -> 4 x 4; ValueError saying what is wrong."""
    from ..core.manipulation.task import pose_from_dict
    values = [float(v) for v in text.split(',')]
    if len(values) != 7:
        raise ValueError(f'--pose needs 7 numbers x,y,z,qx,qy,qz,qw, got {len(values)}')
    return pose_from_dict({'xyz': values[:3], 'quat_xyzw': values[3:]})


def library(args):
    """Return the TaskLibrary of --tasks-dir."""
    from ..core.manipulation.task import TaskLibrary
    return TaskLibrary(Path(args.tasks_dir))


def run_record(args) -> int:
    """Record one demonstration from a pose given on the command line."""
    from ..core.manipulation.optimise import Manipulator
    from ..core.manipulation.task import Task, now_iso
    pose = parse_pose(args.pose)
    manipulator = Manipulator.from_checkpoint(Path(args.checkpoint), args.device)
    tasks = library(args)
    m, geometry = manipulator.config.manipulation, manipulator.gripper.geometry
    width = args.width or geometry.max_opening / 2
    if not 0 < width <= geometry.max_opening:
        raise ValueError(f'--width {width} m is outside 0..{geometry.max_opening} (the gripper\'s opening)')
    task = tasks.load(args.task) if tasks.exists(args.task) else Task(
        name=args.task, description=args.description or args.task, kind=args.kind, gripper=geometry, width=width,
        num_points=m.num_query_points, sigma=m.query_sigma, seed=m.query_seed, teacher=manipulator.teacher.name,
        base_frame=manipulator.config.workspace.base_frame)
    reading = manipulator.embed(pose, task)
    demo = reading.demonstration(pose, source='pose', checkpoint=str(args.checkpoint),
                                 step=int(manipulator.origin['step']), recorded=now_iso())
    task = tasks.record(task, demo)
    print(f'recorded demonstration {len(task.demos)} of {task.name!r} in {tasks.paths(task.name)[0]}')
    return 0


def run_show(args) -> int:
    """Print a task; with --checkpoint, draw its demonstrations into a render of that field."""
    task = library(args).load(args.name)
    print(task.summary())
    if args.checkpoint:
        from ..core.geometry import WorkspaceBox
        from ..core.manipulation.optimise import Manipulator
        from ..core.manipulation.picture import gripper_picture
        from ..core.training.render import save_png
        manipulator = Manipulator.from_checkpoint(Path(args.checkpoint), args.device)
        picture = gripper_picture(manipulator.model, WorkspaceBox.from_config(manipulator.config.workspace),
                                  manipulator.gripper, [d.pose for d in task.demos], [task.width] * len(task.demos))
        path = save_png(Path(args.output) / f'{task.name.replace(" ", "_")}.png', picture)
        print(f'picture: {path}')
    return 0


def run_list(args) -> int:
    """Print every task and every file that does not load."""
    tasks = library(args)
    for task in tasks.load_all():
        print(f'{task.name!r} ({task.kind}): {len(task.demos)} demonstration(s), {task.description!r}')
    for name, reason in tasks.problems().items():
        print(f'not loaded: {name}: {reason}')
    return 0


def run_forget(args) -> int:
    """Drop one demonstration."""
    task = library(args).forget(args.name, args.index)
    print(f'{task.name!r}: {len(task.demos)} demonstration(s) left')
    return 0
