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
   from the demonstrations' approach). Round parts look alike turned about their own axis; the tilt cost
   settles that turn the way the demonstrations held it (z is up in base_frame: objects turn about it).
5. ``collisions``: poses whose gripper (at the task's opening) touches occupied voxels are dropped (checked in
   order of similarity until ``start_candidates`` are clear).
6. ``optimise``: those are refined by Adam on translation and an axis-angle rotation
   increment (nerfstudio's SO3xR3 exponential map) for ``steps`` steps, loss = minus the objective, the worst
   pruned after each step (``keep_fraction``, never below ``min_candidates``).
7. ``rank``: poses tilted beyond ``max_tilt_deg`` or less similar than ``min_score`` dropped, a final collision
   check (the opening widens up to the gripper's maximum when the task's own opening collides), near-duplicates
   (within a voxel and 10 degrees of a better pose) dropped, best objective first.

Deterministic for a seed: the rotations and the seed voxels come from one seeded numpy generator, and the
optimisation has no randomness.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .gripper import GripperModel, geometry_from_config
from .task import Task, TaskFileError, check_compatible, choose_task
from .volume import FieldVolume, region_around, sample_field
from ..config import F3RMConfig
from ..query.answer import FOUND, FieldQuerier

log = logging.getLogger(__name__)

NO_TASK, NOT_PRESENT, NO_MODEL, ERROR = 'no_task', 'not_present', 'no_model', 'error'
DUPLICATE_ANGLE_DEG = 10.0
# Candidates per embedding batch: bounds [batch, N, D] (CLIP's 768-d features included).
EMBED_CHUNK_VALUES = 1 << 25


@dataclass
class PoseCandidate:
    """One answer pose: gripper pose [4, 4] in base_frame, opening width (m), score (cosine to the task)."""

    pose: np.ndarray
    width: float
    score: float
    collisions: int = 0

    def as_dict(self) -> dict:
        """Plain JSON-able summary."""
        return {'pose': np.round(self.pose, 6).tolist(), 'width': self.width, 'score': self.score,
                'collisions': self.collisions}


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


class Cancelled(Exception):
    """Raised by a `progress` callback to stop an answer (a cancelled action goal)."""


def embed_poses(volume: FieldVolume, poses: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Embeddings [B, N, D] of gripper poses [B, 4, 4] (base_frame) with query points [N, 3] (gripper frame)."""
    world = torch.einsum('bij,nj->bni', poses[:, :3, :3], points) + poses[:, None, :3, 3]
    return volume.sample(world)


def similarity(embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine [B] between each flattened [N, D] embedding and the flattened target."""
    flat = embeddings.reshape(len(embeddings), -1)
    return torch.nn.functional.cosine_similarity(flat, target.reshape(1, -1).to(flat.dtype), dim=1, eps=1e-8)


def sample_rotations(count: int, approach: Optional[np.ndarray], max_tilt_deg: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Return `count` rotations [count, 3, 3] whose z (approach) axis lies within `max_tilt_deg` of `approach`.

    Uniform over that cone and over the turn about the approach (ZYZ Euler angles with the tilt's cosine uniform:
    the Haar measure restricted to the cone); uniform over all rotations when `approach` is None.
    """
    cos_max = np.cos(np.radians(max_tilt_deg)) if approach is not None else -1.0
    turn, roll = rng.uniform(0.0, 2 * np.pi, (2, count))
    tilt = np.arccos(rng.uniform(cos_max, 1.0, count))
    local = Rotation.from_euler('ZYZ', np.stack([turn, tilt, roll], axis=1))
    if approach is None:
        return local.as_matrix()
    return (z_onto(approach) * local).as_matrix()


def z_onto(direction: np.ndarray) -> Rotation:
    """Return the shortest rotation taking the z axis onto the unit vector `direction` (a half turn if opposite)."""
    axis = np.cross([0.0, 0.0, 1.0], direction)
    sine, cosine = float(np.linalg.norm(axis)), float(direction[2])
    if sine < 1e-9:
        return Rotation.identity() if cosine > 0 else Rotation.from_rotvec([np.pi, 0.0, 0.0])
    return Rotation.from_rotvec(axis / sine * np.arctan2(sine, cosine))


def pose_matrices(rotations: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] from rotations [B, 3, 3] and translations [B, 3]."""
    poses = torch.zeros((len(rotations), 4, 4), dtype=rotations.dtype, device=rotations.device)
    poses[:, :3, :3], poses[:, :3, 3], poses[:, 3, 3] = rotations, translations, 1.0
    return poses


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

    def embed(self, pose: np.ndarray, task: Task) -> Tuple[np.ndarray, int]:
        """Return (embedding [N, D], occupied voxels touched) of one gripper pose (base_frame) for the task.

        The embedding uses the task's query points; the touched voxels are the gripper's at the task's opening (what
        its answers may touch too).
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
        return embedding.cpu().numpy(), touched

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
        poses, objective = self._initial_candidates(volume, seeds, task, seed, counts)
        mark = lap('candidates', mark)
        report('collisions', counts)
        allowed = m.max_collisions + task.touched
        poses = self._best_free(volume, poses, objective, task, allowed, counts)
        mark = lap('collisions', mark)
        if not len(poses):
            result.status = NOT_PRESENT
            result.reason = (f'every one of {counts["candidates"]} candidate poses puts the {self.gripper.name} '
                             f'gripper (at {task.width * 100:.1f} cm) into occupied space')
            return result

        report('optimise', counts)
        poses, steps_done = self._optimise(volume, poses, task, budget_s, started, report, counts)
        counts['optimised'] = int(len(poses))
        counts['steps'] = steps_done
        mark = lap('optimise', mark)

        report('rank', counts)
        result.candidates = self._rank(volume, poses, task, top_k, allowed)
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

    def _initial_candidates(self, volume: FieldVolume, seeds: np.ndarray, task: Task, seed: int,
                            counts: Dict[str, int]):
        """(poses [B, 4, 4], objective [B]) of occupied voxels near the seeds times random rotations."""
        m = self.config.manipulation
        occupied = torch.nonzero(volume.occupancy.occupied).cpu().numpy()
        centres = volume.region.min_xyz + (occupied + 0.5) * volume.voxel_size
        near = cKDTree(seeds).query(centres, distance_upper_bound=m.mask_margin + 1e-9)[0] < np.inf
        centres = centres[near]
        counts['seed_voxels'] = int(len(centres))
        rng = np.random.default_rng(seed)
        if len(centres) > m.max_seed_voxels:
            centres = centres[np.sort(rng.choice(len(centres), m.max_seed_voxels, replace=False))]
        rotations = sample_rotations(len(centres) * m.rotations_per_voxel, task.approach, m.max_tilt_deg, rng)
        translations = np.repeat(centres, m.rotations_per_voxel, axis=0)
        device = volume.device
        poses = pose_matrices(torch.as_tensor(rotations, dtype=torch.float32, device=device),
                              torch.as_tensor(translations, dtype=torch.float32, device=device))
        counts['candidates'] = int(len(poses))
        target = torch.as_tensor(task.embedding, device=device)
        points = torch.as_tensor(task.points, device=device)
        chunk = max(1, EMBED_CHUNK_VALUES // (len(points) * volume.dim))
        with torch.no_grad():
            scores = torch.cat([similarity(embed_poses(volume, poses[i:i + chunk], points), target)
                                for i in range(0, len(poses), chunk)]) if len(poses) else torch.zeros(0)
        return poses, self._objective(scores, poses, task)

    def _objective(self, scores: torch.Tensor, poses: torch.Tensor, task: Task) -> torch.Tensor:
        """Return the cosine `scores` [B] less the tilt cost of `poses` [B, 4, 4] (the module docstring's objective)."""
        weight = self.config.manipulation.tilt_weight
        if task.approach is None or weight == 0:
            return scores
        approach = torch.as_tensor(task.approach, dtype=poses.dtype, device=poses.device)
        return scores - weight * (1.0 - poses[:, :3, 2] @ approach)

    def _best_free(self, volume: FieldVolume, poses: torch.Tensor, objective: torch.Tensor, task: Task,
                   allowed: int, counts: Dict[str, int]) -> torch.Tensor:
        """Return the ``start_candidates`` best poses [K, 4, 4] whose gripper is clear, checked best first.

        Checking in order of the objective and stopping once enough are clear costs a fraction of checking all.
        """
        m = self.config.manipulation
        order = torch.argsort(objective, descending=True)
        chunk = max(m.start_candidates, 256)
        free, checked = [], 0
        for start in range(0, len(order), chunk):
            index = order[start:start + chunk]
            hits = self.gripper.collisions(poses[index], volume.occupancy, task.width)
            free.append(index[hits <= allowed])
            checked += len(index)
            if sum(len(f) for f in free) >= m.start_candidates:
                break
        chosen = torch.cat(free)[:m.start_candidates]
        counts['collision_checked'], counts['collision_free'] = checked, int(len(chosen))
        return poses[chosen]

    def _optimise(self, volume: FieldVolume, poses: torch.Tensor, task: Task, budget_s: float, started: float,
                  report, counts: Dict[str, int]):
        """Adam on (translation, axis-angle increment) of every pose, pruning the worst; (poses, steps done)."""
        m = self.config.manipulation
        target = torch.as_tensor(task.embedding, device=volume.device)
        points = torch.as_tensor(task.points, device=volume.device)
        base_rotation = poses[:, :3, :3].detach()
        translation = poses[:, :3, 3].detach().clone().requires_grad_(True)
        rotation = torch.zeros_like(translation, requires_grad=True)
        optimiser = torch.optim.Adam([{'params': [translation], 'lr': m.lr_translation},
                                      {'params': [rotation], 'lr': m.lr_rotation}])
        steps_done = 0
        for _ in range(m.steps):
            if budget_s > 0 and time.perf_counter() - started > budget_s:
                break
            report('optimise', counts)
            current = self._compose(base_rotation, rotation, translation)
            scores = self._objective(similarity(embed_poses(volume, current, points), target), current, task)
            optimiser.zero_grad(set_to_none=True)
            (-scores.sum()).backward()
            optimiser.step()
            steps_done += 1
            keep = max(m.min_candidates, int(np.ceil(len(scores) * m.keep_fraction)))
            if keep < len(scores):
                best = torch.argsort(scores.detach(), descending=True)[:keep]
                base_rotation = base_rotation[best]
                translation, rotation = prune_adam(optimiser, [translation, rotation], best)
        with torch.no_grad():
            return self._compose(base_rotation, rotation, translation).detach(), steps_done

    @staticmethod
    def _compose(base_rotation: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        tangent = torch.cat([torch.zeros_like(rotation), rotation], dim=1)
        increment = exp_map_SO3xR3(tangent)[:, :3, :3]
        return pose_matrices(base_rotation @ increment, translation)

    def _rank(self, volume: FieldVolume, poses: torch.Tensor, task: Task, top_k: int,
              allowed: int) -> List[PoseCandidate]:
        """Return the collision-free poses (opening widened when needed), best objective first.

        Dropped: a similarity below ``min_score``, a tilt beyond ``max_tilt_deg``, a near-duplicate of a better pose.
        """
        m = self.config.manipulation
        g = self.gripper.geometry
        target = torch.as_tensor(task.embedding, device=volume.device)
        points = torch.as_tensor(task.points, device=volume.device)
        with torch.no_grad():
            scores = similarity(embed_poses(volume, poses, points), target)
            objective = self._objective(scores, poses, task)
        upright = np.ones(len(poses), dtype=bool)
        if task.approach is not None:
            cosines = poses[:, :3, 2].cpu().numpy().astype(np.float64) @ task.approach
            upright = cosines >= np.cos(np.radians(m.max_tilt_deg)) - 1e-6
        order = torch.argsort(objective, descending=True)
        widths = np.unique(np.clip(np.append(np.arange(task.width, g.max_opening, volume.voxel_size), g.max_opening),
                                   None, g.max_opening))
        chosen: List[PoseCandidate] = []
        for index in order.tolist():
            if float(scores[index]) < m.min_score or not upright[index]:
                continue
            pose = poses[index:index + 1]
            pose_np = pose[0].cpu().numpy().astype(np.float64)
            if any(is_duplicate(pose_np, other.pose, volume.voxel_size) for other in chosen):
                continue
            for width in widths:
                hits = int(self.gripper.collisions(pose, volume.occupancy, float(width))[0])
                if hits <= allowed:
                    chosen.append(PoseCandidate(pose_np, float(width), float(scores[index]), hits))
                    break
            if len(chosen) >= top_k:
                break
        return chosen


def prune_adam(optimiser: torch.optim.Adam, params: List[torch.Tensor], keep: torch.Tensor) -> List[torch.Tensor]:
    """Keep rows `keep` of every parameter and of its Adam moments (torch has no way to shrink a parameter)."""
    pruned = []
    for group, param in zip(optimiser.param_groups, params):
        state = optimiser.state.pop(param, {})
        new = param.detach()[keep].clone().requires_grad_(True)
        group['params'] = [new]
        optimiser.state[new] = {key: (value[keep].clone() if torch.is_tensor(value) and value.dim() else value)
                                for key, value in state.items()}
        pruned.append(new)
    return pruned


def is_duplicate(pose: np.ndarray, other: np.ndarray, distance: float) -> bool:
    """Whether two gripper poses are within `distance` (m) and `DUPLICATE_ANGLE_DEG` of each other."""
    if np.linalg.norm(pose[:3, 3] - other[:3, 3]) > distance:
        return False
    cos = (np.trace(pose[:3, :3].T @ other[:3, :3]) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) < DUPLICATE_ANGLE_DEG
