"""Poses from demonstrations: embed a gripper pose in a field, and find the poses in a new scene most like a task.

Stages of `Manipulator.answer` (each reported to `progress` and timed):

1. ``retrieval``: the task by name, or the one whose description is most like the text (teacher's text encoder).
2. ``mask``: where to look. The text (or the task's description) is asked of the field like any query; the
   clusters it finds are the seeds' region, grown by ``manipulation.mask_margin``. NOT_PRESENT ends here.
   Without ``language_mask`` every occupied voxel of the workspace seeds.
3. ``field``: the field sampled around the region (`sample_field`): opacity-weighted features and occupancy.
4. ``candidates``: occupied voxels of the region (at most ``max_seed_voxels``, evenly chosen) times
   ``rotations_per_voxel`` random rotations whose approach axis lies within ``max_tilt_deg`` of the
   demonstrations' (uniform over that cone and over the turn about the approach); each pose's embedding (the
   task's query points carried into the scene) is compared with the task's (cosine of the flattened [N, D]
   arrays). Poses are ordered by the objective: that cosine less ``tilt_weight`` x (1 - cos of the tilt away
   from the demonstrations' approach) and less ``clearance_weight`` x the mean opacity inside the fingers at the
   demonstrations' opening. Round parts look alike turned about their own axis; the tilt cost settles that turn
   the way the demonstrations held it (z is up in base_frame: objects turn about it). The clearance cost is a
   soft collision the optimisation can follow (the final check is a hard one, on occupied voxels).
5. ``collisions``: poses whose gripper (at the task's opening) touches occupied voxels are dropped (checked in
   order of similarity until ``start_candidates`` are clear).
6. ``optimise``: those are refined by Adam on translation and an axis-angle rotation
   increment (nerfstudio's SO3xR3 exponential map) for ``steps`` steps, loss = minus the objective, the worst
   pruned after each step (``keep_fraction``, never below ``min_candidates``).
7. ``rank``: each pose turned about its approach to the demonstrations' local shape (`shape`: a handle runs the
   way it ran under their fingers) and raised to their fingertip clearance; poses tilted beyond ``max_tilt_deg``
   or less similar than ``min_score`` dropped, a final collision check (the opening widens up to the gripper's
   maximum until the fingers are clear at it and at one sampling voxel narrower on each side: room inside),
   near-duplicates (within a voxel and 10 degrees of a better pose) dropped, best objective first.

Stages 4-7 run in `search.PoseSearch`. Deterministic for a seed: the rotations and the seed voxels come from one
seeded numpy generator, and the optimisation has no randomness.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .gripper import GripperModel, geometry_from_config
from .search import PoseCandidate, PoseSearch, embed_poses, tip_clearance
from .shape import LocalShape, local_shape
from .task import Demonstration, Task, TaskFileError, check_compatible, choose_task
from .volume import region_around, sample_field
from ..config import F3RMConfig
from ..query.answer import FOUND, FieldQuerier

log = logging.getLogger(__name__)

NO_TASK, NOT_PRESENT, NO_MODEL, ERROR = 'no_task', 'not_present', 'no_model', 'error'


@dataclass
class ManipulationResult:
    """What a manipulation request produced: status, reason, the task used, ranked poses, counts and timings."""

    status: str
    reason: str
    task: str = ''
    task_reason: str = ''
    kind: str = ''                   # the task's: 'grasp' | 'place'
    candidates: List[PoseCandidate] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain JSON-able summary."""
        return {'status': self.status, 'reason': self.reason, 'task': self.task, 'task_reason': self.task_reason,
                'kind': self.kind, 'candidates': [c.as_dict() for c in self.candidates], 'counts': self.counts,
                'timings': self.timings}


class Reading(NamedTuple):
    """What a demonstration pose reads in a field (`Manipulator.embed`)."""

    embedding: np.ndarray             # [N, D] opacity-weighted features at the task's query points
    touched: int                      # occupied voxels the gripper touches there
    tip_clearance: Optional[float]    # m from its lowest finger point to the support under the fingers (or None)
    shape: Optional[LocalShape]       # the long axis of the occupied voxels around the fingertips (or None)

    def demonstration(self, pose: np.ndarray, source: str = 'pose', checkpoint: str = '', step: int = -1,
                      recorded: str = '') -> Demonstration:
        """Return the `Demonstration` of `pose` that this reading makes."""
        return Demonstration(pose=pose, embedding=self.embedding, touched=self.touched,
                             tip_clearance=self.tip_clearance, shape=self.shape, source=source,
                             checkpoint=checkpoint, step=step, recorded=recorded)


class Cancelled(Exception):
    """Raised by a `progress` callback to stop an answer (a cancelled action goal)."""


class Manipulator:
    """Answers "grasp/place like this task" on a trained field (see the module docstring).

    Args:
        model: the trained F3RM model.
        teacher: the teacher the field was distilled from (text encoder for retrieval and the mask).
        config: the configuration (`manipulation`, `grasp`, `query`, `workspace`).
        lock: held while the model is evaluated (a live trainer's lock).
        querier: the `FieldQuerier` to ask for the mask (one is made when not given).
    """

    def __init__(self, model, teacher, config: F3RMConfig, lock=None, querier: Optional[FieldQuerier] = None):
        self.model = model
        self.teacher = teacher
        self.config = config
        self.lock = lock
        self.querier = querier or FieldQuerier(model, teacher, config, lock=lock)
        self.origin: Dict[str, object] = {}    # the checkpoint it was loaded from: {'path', 'step'}
        m = config.manipulation
        # points one voxel apart: every voxel a box covers holds one (finer only costs time)
        self.gripper = GripperModel(geometry_from_config(config.grasp, m), m.voxel_size, m.gripper_mesh)

    @classmethod
    def from_checkpoint(cls, path, device: str = 'auto', overlay=None) -> 'Manipulator':
        """Return a Manipulator on a saved checkpoint; `overlay(config) -> config` adjusts its settings."""
        from ..teachers import make_teacher
        from ..training.trainer import load_model
        model, config, state = load_model(path, device)
        if overlay is not None:
            config = overlay(config)
        manipulator = cls(model, make_teacher(config.teacher, state=state['teacher']['state']), config)
        manipulator.origin = {'path': str(path), 'step': int(state['step'])}
        return manipulator

    @property
    def device(self) -> torch.device:
        """The model's device: where volumes, candidates and the optimisation live."""
        return next(self.model.parameters()).device

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit text embeddings [K, D] of the teacher."""
        with torch.no_grad():
            vectors = self.teacher.encode_text(list(texts)).float()
        return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()

    # ---- demonstrations

    def embed(self, pose: np.ndarray, task: Task) -> 'Reading':
        """Return what one gripper pose (base_frame) reads in this field for the task (`Reading`).

        The embedding uses the task's query points; the touched voxels are the gripper's at the task's opening (what
        its answers may touch too); the fingertip clearance is how close to the support under them the fingers came
        (its answers come no closer, `PoseSearch.lifted`); the local shape is which way the part under the fingers
        runs (its answers are turned to run the same way, `PoseSearch.aligned`).
        """
        volume = sample_field(self.model, self.config, region_around(pose[None, :3, 3], self._reach(task)), self.lock)
        poses = torch.as_tensor(pose[None], dtype=torch.float32, device=volume.device)
        points = torch.as_tensor(task.points, device=volume.device)
        with torch.no_grad():
            embedding = embed_poses(volume, poses, points)[0]
            touched = int(self.gripper.collisions(poses, volume.occupancy, task.width)[0])
        if float(embedding.abs().sum()) == 0.0:
            raise ValueError(f'the field is empty around {np.round(pose[:3, 3], 3).tolist()}: no demonstration '
                             'can be read there (is the pose in base_frame, inside the scanned workspace?)')
        pose = np.asarray(pose, dtype=np.float64)
        clearance = tip_clearance(volume, self.gripper, pose, task.width)
        return Reading(embedding.cpu().numpy(), touched, clearance, local_shape(volume.occupancy_on_host, pose))

    # ---- answers

    def answer(self, tasks: Sequence[Task], text: str = '', task_name: str = '', top_k: Optional[int] = None,
               budget_s: float = 0.0, seed: int = 0,
               progress: Optional[Callable[[str, Dict[str, int]], None]] = None) -> ManipulationResult:
        """Ranked poses for a task (see the module docstring). Never raises for a bad request: the status says.

        `budget_s` > 0 stops the optimisation when it is spent (the best poses so far are ranked). `progress`
        is called with (stage, counts so far) before each stage; it may raise `Cancelled` to stop.
        """
        m = self.config.manipulation
        top_k = m.top_k if top_k is None else int(top_k)
        started = time.perf_counter()
        timings: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        report = progress or (lambda stage, counts: None)

        def lap(stage: str, mark: float) -> float:
            now = time.perf_counter()
            timings[stage] = now - mark
            return now

        report('retrieval', counts)
        task, task_reason = choose_task(tasks, self.text_embeddings, text, task_name, m.task_min_similarity)
        mark = lap('retrieval', started)
        if task is None:
            return ManipulationResult(NO_TASK, task_reason, task_reason=task_reason, timings=timings)
        result = ManipulationResult(FOUND, '', task=task.name, task_reason=task_reason, kind=task.kind,
                                    counts=counts, timings=timings)
        try:
            check_compatible(task, self.gripper.geometry, getattr(self.teacher, 'name', ''),
                             int(self.config.feature_field.feature_dim))
            if not task.demos:
                raise TaskFileError(f'task {task.name!r} has no demonstrations yet')
        except TaskFileError as error:
            result.status, result.reason = ERROR, str(error)
            return result

        report('mask', counts)
        mask_text = text.strip() or task.description
        seeds = self._seed_points(mask_text, result)
        mark = lap('mask', mark)
        if seeds is None:
            return result
        counts['mask_voxels'] = len(seeds)

        report('field', counts)
        reach = self._reach(task)
        volume = sample_field(self.model, self.config, region_around(seeds, m.mask_margin + reach), self.lock)
        mark = lap('field', mark)

        report('candidates', counts)
        search = PoseSearch(volume, task, self.gripper, m)
        poses, objective = search.candidates(seeds, seed, counts)
        mark = lap('candidates', mark)
        report('collisions', counts)
        allowed = m.max_collisions + task.touched
        poses = search.best_free(poses, objective, allowed, counts)
        mark = lap('collisions', mark)
        if not len(poses):
            result.status = NOT_PRESENT
            result.reason = (f'every one of {counts["candidates"]} candidate poses puts the {self.gripper.name} '
                             f'gripper (at {task.width * 100:.1f} cm) into occupied space')
            return result

        report('optimise', counts)
        poses, steps_done = search.optimise(poses, budget_s, started, report, counts)
        counts['optimised'] = int(len(poses))
        counts['steps'] = steps_done
        mark = lap('optimise', mark)

        report('rank', counts)
        result.candidates = search.rank(poses, top_k, allowed)
        counts['returned'] = len(result.candidates)
        lap('rank', mark)
        timings['total'] = time.perf_counter() - started
        if not result.candidates:
            result.status = NOT_PRESENT
            result.reason = (f'no optimised pose of {task.name!r} is both free of collisions with the '
                             f'{self.gripper.name} gripper (opened up to {self.gripper.geometry.max_opening * 100:.1f} '
                             f'cm) and at least manipulation.min_score {m.min_score} like the demonstrations, '
                             f'approaching within manipulation.max_tilt_deg {m.max_tilt_deg:g} of their approach')
            return result
        best = result.candidates[0]
        stopped = (f'; stopped after {steps_done} of {m.steps} steps (time budget {budget_s:.1f} s)'
                   if steps_done < m.steps else '')
        result.reason = (f'{len(result.candidates)} pose(s) for {task.name!r}; the best at '
                         f'{np.round(best.pose[:3, 3], 3).tolist()} with similarity {best.score:.3f}{stopped}')
        return result

    def _reach(self, task: Task) -> float:
        """How far (m) the gripper and the query points reach from a pose's origin: the volume's margin."""
        g = self.gripper.geometry
        return float(np.linalg.norm([g.palm_size[0] / 2, max(g.palm_size[1] / 2, g.max_opening / 2 + g.finger_depth),
                                     g.finger_length + g.palm_size[2]]) + 4 * task.sigma)

    def _seed_points(self, mask_text: str, result: ManipulationResult) -> Optional[np.ndarray]:
        """Occupied query voxels where poses start (the language mask's clusters), or None with the status set."""
        m = self.config.manipulation
        if not m.language_mask:
            self.querier.prepare()
            points = self.querier.voxels.points
            if points is None or not len(points):
                result.status, result.reason = NOT_PRESENT, 'the field has no occupied voxels in the workspace yet'
                return None
            return points
        try:
            # the thresholded heatmap, not the clustered answer: a part (a handle, a peg) is smaller than the
            # objects query.present_relevancy is calibrated on; the similarity to the task judges the poses instead
            answer = self.querier.query(mask_text, cluster=False)
        except ValueError as error:
            result.status, result.reason = ERROR, f'the text cannot be asked: {error}'
            return None
        selected = answer.heatmap.points[answer.heatmap.selected]
        if answer.status != FOUND or not len(selected):
            result.status, result.reason = NOT_PRESENT, f'{mask_text!r} is not in the field: {answer.reason}'
            return None
        return selected
