"""All nodes in one process: capture, trainer, query (and optionally replay) on one multi-threaded executor.

For pip installs, where ``ros2 launch`` does not exist: the nodes are the same classes the launch file
starts, configured from the same YAML (``--params-file`` semantics: the ``/**`` section for every node,
``capture:`` / ``trainer:`` / ``query:`` / ``replay:`` sections for each), and they still talk over topics,
so RViz and ``ros2 topic`` see the usual graph: the trainer's ``keyframe/*`` inputs are remapped to the
capture node's ``~/keyframe/*`` and the query node's ``checkpoint`` to the trainer's (`topics`), as in the
launch file. One difference: the query node uses the trainer's live model (no checkpoint round trip).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .common import InterruptGate, init_ros, stops_at_shutdown
from .topics import query_remaps, remap_arguments, trainer_remaps


def ros_arguments(params_files: Sequence[Path] = ()) -> List[str]:
    """``--ros-args`` list of each params file (single parameters go to the nodes: `parameter_overrides`)."""
    args = ['f3rm-ros-pipeline', '--ros-args']
    for path in params_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f'parameters file {path} does not exist')
        args += ['--params-file', str(path)]
    return args


def parameter_overrides(parameters: Sequence[str]) -> list:
    """Return rclpy Parameters of ``name:=value`` items, values read as YAML (as ``-p`` reads them).

    Given to every node's constructor they win over a params file's node sections, which ``-p`` in the process's
    ``--ros-args`` does not: rcl applies a file's ``replay:`` entries after the wildcard ``-p`` ones, so
    ``--replay DATASET`` replayed the packaged config's synthetic table at its rate.
    """
    import yaml
    from rclpy.parameter import Parameter
    overrides = []
    for item in parameters:
        if ':=' not in item:
            raise ValueError(f'parameter {item!r} must look like name:=value')
        name, text = item.split(':=', 1)
        value = yaml.safe_load(text) if text.strip() else ''
        if isinstance(value, list) and any(isinstance(v, float) for v in value):
            value = [float(v) for v in value]  # [0, 0.5] is a double array, as the nodes declare it
        overrides.append(Parameter(name.strip(), value=value))
    return overrides


def create_nodes(replay: bool = False, context=None, overrides: Sequence = ()) -> list:
    """Build the nodes (ROS must be initialised): [capture, trainer, query] (+ replay first).

    `overrides` (rclpy Parameters, see `parameter_overrides`) go to every node and win over params files.
    """
    from .capture_node import CaptureNode
    from .query_node import QueryNode
    from .trainer_node import TrainerNode
    nodes = []
    common = {'context': context, 'parameter_overrides': list(overrides)}
    try:
        if replay:
            from .replay_node import ReplayNode
            nodes.append(ReplayNode(**common))
        capture = CaptureNode(**common)
        nodes.append(capture)
        trainer = TrainerNode(cli_args=['--ros-args', *remap_arguments(trainer_remaps(capture.get_name()))],
                              **common)
        nodes.append(trainer)
        nodes.append(QueryNode(live=trainer.session,
                               cli_args=['--ros-args', *remap_arguments(query_remaps(trainer.get_name()))],
                               **common))
    except Exception:
        for node in nodes:
            node.destroy_node()
        raise
    return nodes


def held_back_replay(nodes: list) -> list:
    """Return the replay node of `nodes` (or none), to spin only once the trainer has warmed up.

    In one process the trainer's warm-up (seconds of imports and model building) holds the interpreter while the
    capture node pairs images with labels: a scan replayed meanwhile loses keyframes' labels. A robot's scan starts
    after its nodes have; so does a replayed one.
    """
    return [node for node in nodes if node.get_name() == 'replay']


# How often the pipeline prints the trainer's progress while it trains (s).
PROGRESS_EVERY_S = 10.0


class TrainingProgress:
    """Prints the trainer's progress to the pipeline's user (without it a user saw nothing until the end).

    State changes, a line every `PROGRESS_EVERY_S` while training, and "training done" each time training finishes.
    """

    def __init__(self, session, report: Callable[[str], None], every_s: float = PROGRESS_EVERY_S):
        self.session, self.report, self.every_s = session, report, every_s
        self.state, self.printed = '', 0.0

    def tick(self) -> None:
        """Print what changed (call it from the spin loop)."""
        status = self.session.status()
        state, now = status['state'], time.monotonic()
        line = f'step {status["step"]}/{status["target_steps"]}, {status["frames"]} keyframes'
        if state != self.state:
            if state == 'done':
                self.report(f'pipeline: training done ({line}); checkpoint {status.get("checkpoint") or "-"}')
            elif not state.startswith('waiting') or not self.state.startswith('waiting'):
                self.report(f'pipeline: trainer {state} ({line})')
            self.state, self.printed = state, now
        elif state == 'training' and now - self.printed >= self.every_s:
            psnr = f', training PSNR {status["psnr"]:.1f} dB' if 'psnr' in status else ''
            self.report(f'pipeline: training: {line}{psnr}')
            self.printed = now


def run_pipeline(params_files: Sequence[Path] = (), parameters: Sequence[str] = (), replay: bool = False,
                 duration_s: Optional[float] = None, query: str = '', exit_after_query: bool = False,
                 threads: Optional[int] = None, report: Callable[[str], None] = print) -> int:
    """Run until Ctrl-C / SIGTERM, or for `duration_s`; with `query`, ask it once training is done.

    Returns 0, or 1 when `exit_after_query` was asked but the query was never answered.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from std_msgs.msg import String

    if replay:  # as the launch file's replay:=true: a dataset without labels on a machine without CLIP weights
        parameters = ['allow_random_teacher:=true', *parameters]
    overrides = parameter_overrides(parameters)  # bad items refused before ROS starts
    gate = InterruptGate().install()  # a SIGINT stops the loop through rclpy; a second one is ignored
    init_ros(ros_arguments(params_files))
    nodes = create_nodes(replay, overrides=overrides)
    gate.spinning = True
    trainer = next(n for n in nodes if n.get_name() == 'trainer')
    querier = next(n for n in nodes if n.get_name() == 'query')
    executor = MultiThreadedExecutor(num_threads=threads)
    held_back = held_back_replay(nodes)
    for node in nodes:
        if node not in held_back:
            executor.add_node(node)
    report(f'pipeline: {", ".join(n.get_fully_qualified_name() for n in nodes)}')
    deadline = None if duration_s is None else time.monotonic() + duration_s
    asked = not query
    progress = TrainingProgress(trainer.session, report)
    try:
        with stops_at_shutdown():
            while rclpy.ok() and (deadline is None or time.monotonic() < deadline):
                executor.spin_once(timeout_sec=0.2)
                progress.tick()
                if held_back and not trainer.session.warming_up:
                    executor.add_node(held_back.pop())
                    report('pipeline: trainer warmed up; the replayed scan starts')
                if not asked and trainer.session.state == 'done':
                    querier.on_query(String(data=query))
                    asked = True
                    report(f'pipeline: training done at step {trainer.session.step}; asked {query!r}')
                if asked and query and exit_after_query and querier.answered:
                    break
    finally:
        for node in nodes:  # a second Ctrl-C is ignored: it must not cut the trainer's last checkpoint short
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
        gate.remove()
    if query and asked:
        report(f'pipeline: last query {querier.last}')
    return 1 if exit_after_query and not querier.answered else 0
