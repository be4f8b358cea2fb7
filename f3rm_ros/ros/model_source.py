"""Which model the query node answers from, and the `FieldQuerier` over it (no rclpy: the node schedules it).

In this order: the live model of a trainer in the same process (`f3rm-ros pipeline`), the ``checkpoint``
parameter, or the newest path announced on the ``checkpoint`` topic. An announced path is accepted only inside
``checkpoint_dir`` or ``checkpoint_dirs_allowed``; every checkpoint is loaded tensors-only, and one distilled from
random-weight CLIP only with ``allow_random_teacher``. A checkpoint that fails to load is not retried until the
file changes, and does not take the last good model away. The querier is kept while the model stays the same and
its cached voxels are evaluated anew when the live model steps on or a scene change is heard.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from f3rm_ros_interfaces.msg import ModelMaturity

from ..core.geometry import WorkspaceBox
from ..core.query.answer import FieldQuerier
from ..core.query.voxels import MAX_VOXELS
from ..core.teachers import RANDOM_HINT, make_teacher, text_is_random
from ..core.training.checkpoints import CheckpointError
from ..core.training.trainer import load_model
from .common import expand_path


class NoModel(RuntimeError):
    """There is no model to query yet (no checkpoint, no live trainer)."""


@dataclasses.dataclass
class Source:
    """A model to query: its teacher, configuration, lock (None for a loaded checkpoint) and what identifies it."""

    model: Any
    teacher: Any
    config: Any
    lock: Any
    key: Tuple            # ('live', id(trainer)) or ('file', path, mtime_ns)


class ModelSource:
    """The query node's model: the live trainer's or a checkpoint's, and the querier over it.

    Args:
        params: the node's `NodeParameters` (``checkpoint``, ``checkpoint_dir``, ``checkpoint_dirs_allowed``,
            ``device``, ``allow_random_teacher``, ``surface_only`` and the config's ``query`` / ``grasp``).
        live: an `OnlineSession` of this process, or None.
        problems: the node's `ProblemLog` (a refused checkpoint is reported there).
        logger: the node's logger (a loaded checkpoint is logged).
    """

    def __init__(self, params, live, problems, logger):
        self.params = params
        self.live = live
        self.problems = problems
        self.logger = logger
        self.latest_path = ''        # the newest path announced on the checkpoint topic
        self.problem = ''            # why the model to query was refused or could not be loaded ('' = fine)
        self._refused_key = None     # the checkpoint file (path, mtime) that failed to load: not retried
        self.loaded: Optional[Source] = None   # the checkpoint loaded last
        self._loaded_info: Dict[str, Any] = {}  # step, keyframes, path, mtime, budget of that checkpoint
        self.querier: Optional[FieldQuerier] = None
        self._querier_key = None
        self._scene_changed = False

    @property
    def uses_live(self) -> bool:
        """True when the live trainer's model answers (a trainer in this process and no checkpoint parameter)."""
        return self.live is not None and not self.params['checkpoint']

    # ------------------------------------------------------------------------------------------ events

    def announce(self, path: str) -> bool:
        """Take a path announced on the checkpoint topic; True when it is accepted (load it now), else reported."""
        problem = self.unallowed(path)
        if problem:
            self.problem = f'checkpoint {path!r} announced on the checkpoint topic refused: {problem}'
            self.problems.report('checkpoint', self.problem, level='error')
            return False
        self.latest_path = path
        self.problem, self._refused_key = '', None  # a new announcement: judged by the load
        return True

    def unallowed(self, path: str) -> str:
        """Why a path announced on the checkpoint topic is not accepted ('' = it is)."""
        folders = [self.params['checkpoint_dir']] + [str(f) for f in self.params['checkpoint_dirs_allowed']]
        folders = [os.path.realpath(expand_path(folder)) for folder in folders if folder]
        if not folders:
            return ('no checkpoint_dir is set, so no announced path is accepted (set checkpoint_dir to the '
                    "trainer's, or list folders in checkpoint_dirs_allowed)")
        real = os.path.realpath(expand_path(path)) if path else ''
        if real and any(os.path.commonpath([real, folder]) == folder for folder in folders):
            return ''
        return f'it is not inside checkpoint_dir or checkpoint_dirs_allowed ({", ".join(folders)})'

    def scene_changed(self) -> None:
        """Mark the cached voxels stale: a scene change was heard (the next question evaluates them anew)."""
        self._scene_changed = True   # a question in progress keeps its cache

    def settings_changed(self) -> None:
        """Query settings changed: the next question gets a querier built with them."""
        self._querier_key = None

    # ------------------------------------------------------------------------------------------ the model

    def current(self) -> Source:
        """Return the model to query, or raise `NoModel` saying why there is none."""
        if self.uses_live:
            trainer = self.live.trainer
            if trainer is None:
                raise NoModel(f'no model yet: the trainer is {self.live.state}')
            return Source(trainer.model, self.live.teacher, trainer.config, trainer.lock, ('live', id(trainer)))
        path = expand_path(self.params['checkpoint'] or self.latest_path)
        if not path:
            raise NoModel('no model yet: no checkpoint parameter and nothing on trainer/checkpoint')
        if not Path(path).is_file():
            raise NoModel(f'checkpoint {path} does not exist')
        key = ('file', path, Path(path).stat().st_mtime_ns)
        if self.loaded is not None and key == self._refused_key:
            return self.loaded  # a refused checkpoint does not take the last good model away
        if self.loaded is None or self.loaded.key != key:
            return self._load(path, key)
        return self.loaded

    def _load(self, path: str, key: Tuple) -> Source:
        started = time.perf_counter()
        try:
            model, config, state = load_model(Path(path), self.params['device'])
            teacher = make_teacher(config.teacher, state=state['teacher']['state'])
        except (CheckpointError, RuntimeError, FileNotFoundError, ValueError) as error:
            self._refused_key = key
            self.problem = f'checkpoint {path} not loaded: {error}'
            if self.loaded is not None:
                self.problem += f'; answering from the last good one ({self.loaded.key[1]})'
            self.problems.report('checkpoint', self.problem, level='error')
            if self.loaded is not None:
                return self.loaded
            raise NoModel(self.problem) from error
        if text_is_random(teacher) and not self.params['allow_random_teacher']:  # only the text head answers
            self.problem = (f'checkpoint {path} was distilled from RANDOM-WEIGHT CLIP: its answers mean '
                            f'nothing; refused. To fix: {RANDOM_HINT}')
            self.problems.report('checkpoint', self.problem, level='error')
            raise NoModel(self.problem)
        self.problem = ''
        self.loaded = Source(model, teacher, config, None, key)
        self._loaded_info = {'step': int(state['step']), 'keyframes': int(state['num_frames']), 'path': path,
                             'time': Path(path).stat().st_mtime, 'budget': int(config.trainer.steps)}
        self.logger.info(f'loaded {path} (step {state["step"]}, {state["num_frames"]} keyframes) in '
                         f'{time.perf_counter() - started:.1f} s')
        return self.loaded

    def querier_for_question(self):
        """Return (querier, model, lock) of the current model with the node's query settings; raises `NoModel`."""
        source = self.current()
        live = source.key[0] == 'live'
        version = self.live.model_version if live else 0
        config = dataclasses.replace(source.config, query=self.params.config.query, grasp=self.params.config.grasp)
        if self.querier is None or self._querier_key is None or self._querier_key[0] != source.key:
            # a live session's keyframes bear clusters out (ghosts dropped); a checkpoint carries none
            keyframes = self.live.trainer.store.snapshot if live else None
            self.querier = FieldQuerier(source.model, source.teacher, config, lock=source.lock,
                                        surface_only=self.params['surface_only'], keyframes=keyframes)
        elif self._querier_key[1] != version or self._scene_changed:
            self.querier.invalidate()
        self._scene_changed = False
        self._querier_key = (source.key, version)
        return self.querier, source.model, source.lock

    # ------------------------------------------------------------------------------------------ what it says

    def base_frame(self) -> str:
        """Return the frame answers are given in: the loaded checkpoint's base frame, else the node's."""
        if self.loaded is None:
            return self.params.config.workspace.base_frame
        return self.loaded.config.workspace.base_frame

    def maturity(self, heard: Optional[Tuple[ModelMaturity, float]]) -> ModelMaturity:
        """Return the maturity of the model about to answer (the live trainer's or the loaded checkpoint's).

        `heard` is (what the trainer last said on ``maturity``, monotonic time heard) or None; it decides `settled`
        (see ``ModelMaturity.msg`` for the rules).
        """
        heard, heard_at = heard or (None, 0.0)
        out = ModelMaturity(since_last_keyframe_s=-1.0, field_change=-1.0)
        if heard is not None:
            out.target_steps, out.field_change, out.trainer_state = heard.target_steps, heard.field_change, \
                heard.trainer_state
            if heard.since_last_keyframe_s >= 0:
                out.since_last_keyframe_s = heard.since_last_keyframe_s + (time.monotonic() - heard_at)
        if self.uses_live or self.loaded is None:   # the live model of a trainer in this process
            trainer = self.live.trainer
            out.step, out.keyframes = int(trainer.step_count), int(trainer.num_frames)
            out.target_steps = int(self.live.target_steps)
            out.trainer_state = self.live.state
            out.settled = bool(heard is not None and heard.settled and heard.settled_since_step <= out.step)
        else:
            info = self._loaded_info
            out.step, out.keyframes = info['step'], info['keyframes']
            out.checkpoint, out.checkpoint_time = str(info['path']), float(info['time'])
            if heard is not None:
                out.settled = bool(heard.settled and heard.settled_since_step <= out.step)
            else:          # no trainer heard: a checkpoint trained to its whole step budget is final
                out.target_steps = info['budget']
                out.settled = out.step >= info['budget']
        out.settled_since_step = heard.settled_since_step if heard is not None and out.settled else (
            out.step if out.settled else 0)
        return out

    def voxel_size_problem(self, values, config) -> str:
        """Refuse a query.voxel_size that would make too many voxels over the model's workspace ('' = fine).

        `values` are the parameters as they would be after the change, `config` their configuration.
        """
        if config is None:
            return ''
        if self.live is not None and not values.get('checkpoint'):
            trainer = getattr(self.live, 'trainer', None)
            model_config = trainer.config if trainer is not None else getattr(self.live, 'config', None)
            if model_config is None:
                return ''
            workspace = model_config.workspace
        elif self.loaded is not None:
            workspace = self.loaded.config.workspace
        else:
            return ''  # no model yet: the first query checks it against the model's workspace
        box = WorkspaceBox.from_config(workspace)
        size = config.query.voxel_size
        count = float(np.prod(np.maximum(1, np.round((box.max_xyz - box.min_xyz) / size))))
        if count > MAX_VOXELS:
            return (f'query.voxel_size {size} m makes {int(count):,} voxels over the model\'s '
                    f'{np.round(box.max_xyz - box.min_xyz, 3).tolist()} m workspace (at most {MAX_VOXELS:,})')
        return ''

    def status_values(self) -> Dict[str, Any]:
        """Values of the node's status on /diagnostics: which model, its teacher and heads, its problem."""
        loaded = self.loaded
        return {'model': 'live' if self.uses_live else (self.params['checkpoint'] or self.latest_path or 'none'),
                'teacher': loaded.teacher.name if loaded is not None else '',
                # every feature head of the model; text is answered from the first
                'heads': ', '.join(f'{n} {d}' for n, d in loaded.teacher.heads) if loaded is not None else '',
                'model_problem': self.problem,
                # the bound answers cite: query.present_relevancy, or the teacher's own while that is negative
                'present_relevancy_used': round(self.querier.present_relevancy, 3) if self.querier else ''}

    @property
    def teacher(self):
        """The teacher of the loaded checkpoint, else the live session's (None when neither)."""
        return self.loaded.teacher if self.loaded is not None else getattr(self.live, 'teacher', None)
