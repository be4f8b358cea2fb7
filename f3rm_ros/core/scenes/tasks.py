"""Ground-truth manipulation tasks on the synthetic objects: where a person would grasp or place, exactly.

Each task is a gripper pose in its object's frame (the frame `SyntheticScene.objects[name]['pose']` places),
made from the object builder's own dimensions, plus its symmetric equivalents: a parallel-jaw gripper turned
180 degrees about its approach axis holds the same way. Gripper frame as everywhere (core/query/grasps.py):
z = approach, y = closing direction, origin between the fingertips' ends.

- ``mug handle``: from above, across the handle's top arc, fingertips just below the tube's centre line.
- ``screwdriver handle``: from above, across the handle's middle, fingertips 6 mm above the table.
- ``rack peg`` (a placement): the release pose that hangs a mug: gripper over the peg 2.5 cm from its tip,
  closing across the peg, at the peg's height (the handle's hook sits there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import numpy as np
import open3d as o3d

from . import table
from .truth import TruthOccupancy

DOWN, ACROSS = np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])
MUG_HANDLE_TOP = np.array([0.05, 0.0, 0.07])        # builder frame: torus centre (0.05, 0, 0.045) + radius 0.025
SCREWDRIVER_HANDLE_MIDDLE = np.array([-0.03, 0.0, 0.0])


@dataclass(frozen=True)
class TrueTask:
    """A task's truth: the object, whether it grasps or places, the demo opening and the pose in the object frame."""

    name: str
    object: str
    kind: str
    description: str
    width: float
    pose_in_object: np.ndarray      # 4 x 4, object frame <- gripper

    def equivalents(self) -> List[np.ndarray]:
        """Every pose in the object frame that does the task as well (the 180-degree turn about the approach)."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return [self.pose_in_object, self.pose_in_object @ flip]

    def true_poses(self, objects: Mapping[str, Mapping]) -> List[np.ndarray]:
        """Return the task's poses in base_frame, given a scene's object truth (`SyntheticScene.objects`)."""
        placed = np.asarray(objects[self.object]['pose'])
        return [placed @ pose for pose in self.equivalents()]


def _gripper(approach: np.ndarray, closing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = np.cross(closing, approach), closing, approach, origin
    return pose


def _in_object(name: str, builder_point: np.ndarray, approach=DOWN, closing=ACROSS) -> np.ndarray:
    """Move a gripper pose given in the builder's frame into the object frame (the builder's + `rest_shift`)."""
    return _gripper(approach, closing, builder_point + table.rest_shift(table.OBJECTS[name]()))


def _tasks() -> Dict[str, TrueTask]:
    peg_point = np.array([table.RACK_PEG_LENGTH - 0.025, 0.0, table.RACK_PEG_HEIGHT])   # where the hook sits
    tasks = [
        TrueTask('mug handle', 'mug', 'grasp', 'mug handle', 0.03,
                 _in_object('mug', MUG_HANDLE_TOP - [0.0, 0.0, 0.006])),
        TrueTask('screwdriver handle', 'screwdriver', 'grasp', 'screwdriver handle', 0.04,
                 _in_object('screwdriver', SCREWDRIVER_HANDLE_MIDDLE + [0.0, 0.0, 0.006])),
        TrueTask('rack peg', 'rack', 'place', 'rack peg', 0.04, _in_object('rack', peg_point)),
    ]
    return {task.name: task for task in tasks}


TRUE_TASKS: Dict[str, TrueTask] = _tasks()
# The objects a manipulation layout holds: every task's object.
TASK_OBJECTS: Tuple[str, ...] = ('mug', 'screwdriver', 'rack')


TRUTH_VOXEL = 0.003   # metres: the truth grid resolves the 10 mm peg and the 14 mm handle tube


def true_occupancy(objects: Mapping[str, Mapping], lo: np.ndarray, hi: np.ndarray,
                   voxel: float = TRUTH_VOXEL) -> TruthOccupancy:
    """Voxelise the objects' own meshes (placed by their truth) and the table's top slab over [lo, hi].

    A cell is occupied when its centre is inside a mesh (open3d's ray-cast inside test): independent of any field.
    """
    raycaster = o3d.t.geometry.RaycastingScene()
    for name, truth in objects.items():
        parts = table.OBJECTS[name]()
        shift = table.rest_shift(parts)
        for part in parts:
            mesh = part.mesh.translate(shift).transform(np.asarray(truth['pose']))
            raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    width, depth, thickness = table.TABLE_SIZE
    slab = o3d.geometry.TriangleMesh.create_box(width, depth, thickness)
    slab.translate((table.TABLE_CENTER[0] - width / 2, table.TABLE_CENTER[1] - depth / 2, -thickness))
    raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(slab))
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    counts = np.maximum(1, np.round((hi - lo) / voxel).astype(int))
    axes = [lo[i] + (np.arange(counts[i]) + 0.5) * voxel for i in range(3)]
    centres = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, 3).astype(np.float32)
    inside = raycaster.compute_occupancy(o3d.core.Tensor(centres)).numpy().astype(bool)
    return TruthOccupancy(inside.reshape(tuple(counts)), lo, voxel)
