"""``f3rm-ros manipulate``: ranked gripper poses for a taught task in a trained field (the ~/manipulate action)."""
from __future__ import annotations

# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): the manipulation, geometry and
# render modules (torch, nerfstudio, scipy).
import json
from pathlib import Path

from .task import DEFAULT_TASKS_DIR


def register(sub) -> None:
    """Add ``manipulate``."""
    parser = sub.add_parser('manipulate', help='6-DOF poses for a grasp or placement taught by demonstration')
    parser.add_argument('text', nargs='?', default='', help='what to do ("mug handle"): picks the task and where to '
                        'look')
    parser.add_argument('--task', default='', help='task name (instead of, or besides, the text)')
    parser.add_argument('--checkpoint', required=True, help='the trained field')
    parser.add_argument('--tasks-dir', default=DEFAULT_TASKS_DIR, help=f'task files (default {DEFAULT_TASKS_DIR})')
    parser.add_argument('--top-k', type=int, default=0, help='poses wanted (0 = manipulation.top_k)')
    parser.add_argument('--budget', type=float, default=0.0, help='seconds the optimisation may take (0 = no limit)')
    parser.add_argument('--output', default='outputs/manipulate', help='answer.json and poses.png go here')
    parser.add_argument('--device', default='auto')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Answer, print the poses and timings, write answer.json and a picture of the poses."""
    from ..core.geometry import WorkspaceBox
    from ..core.manipulation.optimise import FOUND, Manipulator
    from ..core.manipulation.picture import gripper_picture
    from ..core.manipulation.task import TaskLibrary
    from ..core.training.render import save_png
    if not (args.text.strip() or args.task.strip()):
        raise ValueError('give a text or --task')
    manipulator = Manipulator.from_checkpoint(Path(args.checkpoint), args.device)
    library = TaskLibrary(Path(args.tasks_dir))
    for name, reason in library.problems().items():
        print(f'task file not loaded: {name}: {reason}')
    result = manipulator.answer(library.load_all(), text=args.text, task_name=args.task, top_k=args.top_k or None,
                                budget_s=args.budget)
    print(f'{result.status}: {result.reason}')
    if result.task_reason:
        print(f'task: {result.task_reason}')
    for rank, candidate in enumerate(result.candidates):
        p = candidate.pose
        print(f'  #{rank} xyz {p[:3, 3].round(4).tolist()} approach {p[:3, 2].round(3).tolist()} closing '
              f'{p[:3, 1].round(3).tolist()} width {candidate.width * 100:.1f} cm score {candidate.score:.3f}')
    print('counts: ' + '  '.join(f'{k} {v}' for k, v in result.counts.items()))
    print('timings: ' + '  '.join(f'{k} {v * 1000:.0f} ms' for k, v in result.timings.items()))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'answer.json').write_text(json.dumps(result.as_dict(), indent=1))
    if result.status == FOUND:
        picture = gripper_picture(manipulator.model, WorkspaceBox.from_config(manipulator.config.workspace),
                                  manipulator.gripper, [c.pose for c in result.candidates],
                                  [c.width for c in result.candidates])
        print(f'picture: {save_png(out / "poses.png", picture)}')
    print(f'answer: {out / "answer.json"}')
    return 0 if result.status == FOUND else 1
