"""The pose search of one task in one sampled field: candidates, collisions, optimisation, ranking.

`PoseSearch` holds what every stage shares (the sampled `FieldVolume`, the task's query points and embedding,
its demonstrations' approach, the gripper) and runs stages 4-7 of `Manipulator.answer` (see optimise.py's module
docstring for what each does and why). The functions below are its batched building blocks, on the field's device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .gripper import GripperModel
from .shape import MAX_TURN_DEG, local_shape, turn_about_approach, turned
from .task import Task
from .volume import FieldVolume
from ..config import ManipulationConfig
from ..query.support import support_under_box

DUPLICATE_ANGLE_DEG = 10.0
# The support under the fingers is read from voxels below the lowest fingertip plus this (m): the table beside the
# part, not the part between the fingers, and not dependent on a few millimetres of the fingertips' own height.
SUPPORT_CEILING_ABOVE_TIPS = 0.02
# A pose is raised to the demonstrations' fingertip clearance by at most this (m): a larger gap means the support
# read is something else (a neighbouring object's top), and the pose is left to the collision check.
MAX_TIP_LIFT = 0.01
# Only demonstrations whose fingertips came this close (m) to the support set a floor: the floor keeps fingertips out
# of the table; a placement or a grasp held high above it (a mug hung on a peg, 13 cm up) has no table to avoid,
# and a lift there only moved right answers off their part (a hanging pose lifted off its peg).
NEAR_SUPPORT = 0.02
# Candidates per embedding batch: bounds [batch, N, D] (CLIP's 768-d features included).
EMBED_CHUNK_VALUES = 1 << 25


@dataclass
class PoseCandidate:
    """One answer pose: gripper pose [4, 4] in base_frame, opening width (m), score (cosine to the task).

    `objective` is what it was ranked by: the score less the tilt and clearance costs.
    """

    pose: np.ndarray
    width: float
    score: float
    collisions: int = 0
    objective: float = 0.0

    def as_dict(self) -> dict:
        """Plain JSON-able summary."""
        return {'pose': np.round(self.pose, 6).tolist(), 'width': self.width, 'score': self.score,
                'collisions': self.collisions, 'objective': self.objective}


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


def tip_clearance(volume: FieldVolume, gripper: GripperModel, pose: np.ndarray, opening: float) -> Optional[float]:
    """Return the height (m) of the lowest finger point of `pose` [4, 4] above the support under the fingers.

    The support is `support_under_box` of the fingers' footprint (the median surface of a ring of columns around
    it, below ``SUPPORT_CEILING_ABOVE_TIPS`` over the fingertips); None where no support was seen there (the
    ring mostly empty: a placement high above the table) or the volume keeps no host occupancy.
    """
    if volume.occupancy_on_host is None:
        return None
    points = gripper.finger_solid_points(opening) @ pose[:3, :3].T + pose[:3, 3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    support = support_under_box(volume.occupancy_on_host, (lo + hi) / 2, hi - lo, np.eye(3),
                                ceiling=float(lo[2]) + SUPPORT_CEILING_ABOVE_TIPS)
    return float(lo[2] - support.height) if support.source == 'occupancy' else None


def pose_matrices(rotations: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] from rotations [B, 3, 3] and translations [B, 3]."""
    poses = torch.zeros((len(rotations), 4, 4), dtype=rotations.dtype, device=rotations.device)
    poses[:, :3, :3], poses[:, :3, 3], poses[:, 3, 3] = rotations, translations, 1.0
    return poses


class PoseSearch:
    """Run stages 4-7 of an answer for one task in one sampled field.

    Args:
        volume: the field sampled around the region (`volume.sample_field`).
        task: the task asked for (query points, embedding, the demonstrations' approach and opening).
        gripper: the gripper the poses are checked with.
        settings: the ``manipulation`` section.
    """

    def __init__(self, volume: FieldVolume, task: Task, gripper: GripperModel, settings: ManipulationConfig):
        self.volume = volume
        self.task = task
        self.gripper = gripper
        self.settings = settings
        self.target = torch.as_tensor(task.embedding, device=volume.device)     # [N, D], the demonstrations' mean
        self.points = torch.as_tensor(task.points, device=volume.device)        # [N, 3], gripper frame
        self.approach = task.approach                                           # [3] or None
        self.fingers = torch.as_tensor(gripper.finger_points(task.width), dtype=torch.float32,
                                       device=volume.device)                    # [F, 3], gripper frame

    def candidates(self, seeds: np.ndarray, seed: int, counts: Dict[str, int]):
        """(poses [B, 4, 4], objective [B]) of occupied voxels near the seeds times random rotations."""
        m = self.settings
        occupied = torch.nonzero(self.volume.occupancy.occupied).cpu().numpy()
        centres = self.volume.region.min_xyz + (occupied + 0.5) * self.volume.voxel_size
        near = cKDTree(seeds).query(centres, distance_upper_bound=m.mask_margin + 1e-9)[0] < np.inf
        centres = centres[near]
        counts['seed_voxels'] = int(len(centres))
        rng = np.random.default_rng(seed)
        if len(centres) > m.max_seed_voxels:
            centres = centres[np.sort(rng.choice(len(centres), m.max_seed_voxels, replace=False))]
        rotations = sample_rotations(len(centres) * m.rotations_per_voxel, self.approach, m.max_tilt_deg, rng)
        translations = np.repeat(centres, m.rotations_per_voxel, axis=0)
        device = self.volume.device
        poses = pose_matrices(torch.as_tensor(rotations, dtype=torch.float32, device=device),
                              torch.as_tensor(translations, dtype=torch.float32, device=device))
        counts['candidates'] = int(len(poses))
        chunk = max(1, EMBED_CHUNK_VALUES // (len(self.points) * self.volume.dim))
        with torch.no_grad():
            scores = torch.cat([similarity(embed_poses(self.volume, poses[i:i + chunk], self.points), self.target)
                                for i in range(0, len(poses), chunk)]) if len(poses) else torch.zeros(0)
        return poses, self.objective(scores, poses)

    def objective(self, scores: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Return the cosine `scores` [B] less the tilt and clearance costs of `poses` [B, 4, 4] (module docstring)."""
        m = self.settings
        objective = scores
        if self.approach is not None and m.tilt_weight > 0:
            approach = torch.as_tensor(self.approach, dtype=poses.dtype, device=poses.device)
            objective = objective - m.tilt_weight * (1.0 - poses[:, :3, 2] @ approach)
        if m.clearance_weight > 0 and len(poses):
            objective = objective - m.clearance_weight * self.finger_opacity(poses)
        return objective

    def finger_opacity(self, poses: torch.Tensor) -> torch.Tensor:
        """Mean opacity [B] inside the fingers of `poses` [B, 4, 4] at the task's opening (0: clear of the field)."""
        chunk = max(1, EMBED_CHUNK_VALUES // (4 * len(self.fingers)))
        means = []
        for start in range(0, len(poses), chunk):
            part = poses[start:start + chunk]
            world = torch.einsum('bij,pj->bpi', part[:, :3, :3], self.fingers.to(part.dtype)) + part[:, None, :3, 3]
            means.append(self.volume.sample_alpha(world).mean(dim=1))
        return torch.cat(means)

    def best_free(self, poses: torch.Tensor, objective: torch.Tensor, allowed: int,
                  counts: Dict[str, int]) -> torch.Tensor:
        """Return the ``start_candidates`` best poses [K, 4, 4] whose gripper is clear, checked best first.

        Checking in order of the objective and stopping once enough are clear costs a fraction of checking all.
        """
        m = self.settings
        order = torch.argsort(objective, descending=True)
        chunk = max(m.start_candidates, 256)
        free, checked = [], 0
        for start in range(0, len(order), chunk):
            index = order[start:start + chunk]
            hits = self.gripper.collisions(poses[index], self.volume.occupancy, self.task.width)
            free.append(index[hits <= allowed])
            checked += len(index)
            if sum(len(f) for f in free) >= m.start_candidates:
                break
        chosen = torch.cat(free)[:m.start_candidates]
        counts['collision_checked'], counts['collision_free'] = checked, int(len(chosen))
        return poses[chosen]

    def optimise(self, poses: torch.Tensor, budget_s: float, started: float, report, counts: Dict[str, int]):
        """Adam on (translation, axis-angle increment) of every pose, pruning the worst; (poses, steps done)."""
        m = self.settings
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
            current = self.compose(base_rotation, rotation, translation)
            scores = self.objective(similarity(embed_poses(self.volume, current, self.points), self.target), current)
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
            return self.compose(base_rotation, rotation, translation).detach(), steps_done

    @staticmethod
    def compose(base_rotation: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        tangent = torch.cat([torch.zeros_like(rotation), rotation], dim=1)
        increment = exp_map_SO3xR3(tangent)[:, :3, :3]
        return pose_matrices(base_rotation @ increment, translation)

    def room_inside(self, pose: torch.Tensor, width: float, allowed: int) -> bool:
        """Whether the fingers, one sampling voxel closer together than `width` on each side, are clear too.

        An answer a few millimetres and degrees off the demonstration, at the demonstration's exact opening, grazed
        the true mug handle with a finger's inner face (the field's surface is a voxel coarse); an opening that
        leaves a voxel of room inside does not. The palm and the outer faces are checked at `width` itself.
        """
        inner = max(width - 2 * self.volume.voxel_size, 0.0)
        return int(self.gripper.collisions(pose, self.volume.occupancy, inner)[0]) <= allowed

    def lifted(self, poses: torch.Tensor) -> torch.Tensor:
        """Return `poses` [B, 4, 4], each raised along base z to the demonstrations' fingertip clearance.

        A pose whose fingertips are closer to the support under them than the demonstrations' were
        (`Task.tip_clearance`, when within ``NEAR_SUPPORT``) goes up by the difference, at most ``MAX_TIP_LIFT``.
        The similarity is flat over a few millimetres of height and a few degrees of roll, and a rolled grasp taught
        6 mm above the table lowered its outer fingertip into the true table (3 of 60 answers on held-out layouts);
        the demonstrations say how close to the table the fingers may go.
        """
        floor = self.task.tip_clearance
        if floor is None or floor > NEAR_SUPPORT:
            return poses                     # the same tensor when nothing is lifted (`rank` relies on it)
        out, changed = poses.clone(), False
        for index, pose in enumerate(poses.cpu().numpy().astype(np.float64)):
            clearance = tip_clearance(self.volume, self.gripper, pose, self.task.width)
            if clearance is not None and 0.0 < floor - clearance <= MAX_TIP_LIFT:
                out[index, 2, 3] += floor - clearance
                changed = True
        return out if changed else poses

    def aligned(self, poses: torch.Tensor) -> torch.Tensor:
        """Return `poses` [B, 4, 4], each turned about its approach so its local shape runs as the demonstrations'.

        Applies only where the task has a common axis (`Task.shape_axis`: a handle or a peg, the same way in every
        demonstration) and the pose's own local shape is usable; a turn beyond ``shape.MAX_TURN_DEG`` is left
        alone. The similarity could not tell a handle's grasp from one turned 15-45 degrees (6 of 20 held-out
        layouts); the occupancy can.
        """
        target = self.task.shape_axis
        if target is None or self.volume.occupancy_on_host is None:
            return poses                     # the same tensor when nothing is turned (`rank` relies on it)
        out, changed = poses.clone(), False
        limit = np.radians(MAX_TURN_DEG)
        for index, pose in enumerate(poses.cpu().numpy().astype(np.float64)):
            shape = local_shape(self.volume.occupancy_on_host, pose)
            if shape is None or not shape.usable:
                continue
            angle = turn_about_approach(shape.axis, target)
            if abs(angle) <= limit:
                out[index] = torch.as_tensor(turned(pose, angle), dtype=out.dtype, device=out.device)
                changed = True
        return out if changed else poses

    def rank(self, poses: torch.Tensor, top_k: int, allowed: int) -> List[PoseCandidate]:
        """Return the collision-free poses (opening widened when needed), best objective first.

        Each pose is turned to the demonstrations' local shape (`aligned`) and raised to their fingertip clearance
        (`lifted`) after its objective is taken (the order stays the optimisation's: lifting one of two near-equal
        poses a few millimetres must not hand the answer to the other, turned 20 degrees; seen on held-out
        layouts); its score and checks are the corrected pose's. Dropped: a similarity below ``min_score``, a tilt
        beyond ``max_tilt_deg``, a near-duplicate of a better pose. A pose with a non-finite entry (a field that
        diverged in its region) is no answer.
        """
        m = self.settings
        g = self.gripper.geometry
        poses = poses[torch.isfinite(poses).flatten(1).all(dim=1)]
        with torch.no_grad():
            # ordered as the optimisation left them: the lift corrects a pose's height, it does not pick the pose
            scores = similarity(embed_poses(self.volume, poses, self.points), self.target)
            objective = self.objective(scores, poses)
            raised = self.lifted(self.aligned(poses))
            if raised is not poses:   # some were turned or lifted: their scores are the corrected poses'
                scores = similarity(embed_poses(self.volume, raised, self.points), self.target)
            poses = raised
        upright = np.ones(len(poses), dtype=bool)
        if self.approach is not None:
            cosines = poses[:, :3, 2].cpu().numpy().astype(np.float64) @ self.approach
            upright = cosines >= np.cos(np.radians(m.max_tilt_deg)) - 1e-6
        order = torch.argsort(objective, descending=True)
        steps = np.arange(self.task.width, g.max_opening, self.volume.voxel_size)
        widths = np.unique(np.clip(np.append(steps, g.max_opening), None, g.max_opening))
        chosen: List[PoseCandidate] = []
        for index in order.tolist():
            if float(scores[index]) < m.min_score or not upright[index]:
                continue
            pose = poses[index:index + 1]
            pose_np = pose[0].cpu().numpy().astype(np.float64)
            if any(is_duplicate(pose_np, other.pose, self.volume.voxel_size) for other in chosen):
                continue
            for width in widths:
                hits = int(self.gripper.collisions(pose, self.volume.occupancy, float(width))[0])
                if hits <= allowed and self.room_inside(pose, float(width), allowed):
                    chosen.append(PoseCandidate(pose_np, float(width), float(scores[index]), hits,
                                                float(objective[index])))
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
