"""A synthetic table that changes after its scan: one object moved and turned, taken away, or put down.

`make_change` scans a seeded layout (`table.make_scene`), rebuilds it with one object changed
(`table.build_table` from the same placements) and renders a short rescan arc of the changed table. The label
vocabulary holds every object of both layouts, so the labels teacher can name an object before it is added and
after it is taken away; the truth after the change says where each object is then.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..capture.frames import PosedFrame
from .table import (PLACEMENT_MAX_XY, PLACEMENT_MIN_XY, TABLE_CENTER, SceneGeometry, SyntheticScene, build_table,
                    look_at, make_scene, object_half_sizes, pinhole_intrinsics, scan_poses)

CHANGE_KINDS = ('moved', 'removed', 'added')


@dataclass
class SceneChangeCase:
    """A scan, the change made after it, and a rescan of the changed table (all in the scene's base frame).

    `objects` is the truth after the change (an added object included, a removed one left out); `old_center` and
    `new_center` are the changed object's box centre before and after (None where it is not on the table);
    `scene.render` draws the changed table, `scan_geometry` the table as scanned.
    """

    kind: str
    name: str
    scan: List[PosedFrame]
    rescan: List[PosedFrame]
    labels: Dict[int, str]
    objects_before: Dict[str, Dict]
    objects: Dict[str, Dict]
    old_center: Optional[np.ndarray]
    new_center: Optional[np.ndarray]
    scene: SyntheticScene = field(repr=False)
    scan_geometry: SceneGeometry = field(repr=False, default=None)


def rescan_poses(count: int, rng: np.random.Generator, center: Sequence[float] = TABLE_CENTER,
                 arc_deg: float = 180.0, radius: float = 0.55, elevation_deg: Tuple[float, float] = (40.0, 65.0),
                 target_jitter: float = 0.03) -> List[np.ndarray]:
    """`count` views along one arc of `arc_deg` around `center` (a robot's short rescan), elevation rising."""
    start = rng.uniform(0.0, 2 * np.pi)
    azimuth = start + np.radians(arc_deg) * np.arange(count) / max(count - 1, 1)
    elevation = np.radians(np.linspace(*elevation_deg, count))
    center = np.asarray(center, dtype=np.float64)
    poses = []
    for az, el in zip(azimuth, elevation):
        eye = center + radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        target = center + [*rng.uniform(-target_jitter, target_jitter, 2), rng.uniform(0.0, 0.05)]
        poses.append(look_at(eye, target))
    return poses


def _clear(center: np.ndarray, radius: float, others: List[Tuple[np.ndarray, float]], gap: float) -> bool:
    """Whether a footprint circle is on the placement area and `gap` from every other circle."""
    inside = np.all(center >= PLACEMENT_MIN_XY) and np.all(center <= PLACEMENT_MAX_XY)
    return bool(inside and all(np.linalg.norm(center - c) >= radius + r + gap for c, r in others))


def make_change(seed: int, kind: str, num_objects: int = 5, num_views: int = 24, rescan_views: int = 10,
                width: int = 96, height: int = 72, move_m: Tuple[float, float] = (0.10, 0.20),
                turn_deg: Tuple[float, float] = (30.0, 120.0), gap: float = 0.02) -> SceneChangeCase:
    """Scan the seed's layout, change it (`kind`: moved | removed | added), and rescan the changed table.

    moved: one object goes `move_m` away (drawn per seed, free of the others by `gap` with footprints taken as
    circles) and turns by `turn_deg`. removed: one object is taken away. added: the layout's object of the draw
    is left out of the scan and put down before the rescan. Rescan stamps follow the scan's, 10 s later.
    """
    if kind not in CHANGE_KINDS:
        raise ValueError(f'change kind must be one of {list(CHANGE_KINDS)}, got {kind!r}')
    if not 1 <= rescan_views <= 12:
        raise ValueError(f'a rescan arc has 1..12 keyframes, got {rescan_views}')
    full = make_scene(seed=seed, num_objects=num_objects, num_views=1, width=width, height=height)
    rng = np.random.default_rng([seed, CHANGE_KINDS.index(kind)])
    names = list(full.placements)
    name = names[int(rng.integers(len(names)))]
    label_of = {n: obj['label'] for n, obj in full.objects.items()}
    table_label = max(full.labels)
    before, after = dict(full.placements), dict(full.placements)
    if kind == 'removed':
        del after[name]
    elif kind == 'added':
        del before[name]
    else:
        radii = {n: float(np.linalg.norm(h)) for n, h in zip(names, object_half_sizes(names))}
        others = [(c, radii[n]) for n, (c, _) in full.placements.items() if n != name]
        center, yaw = full.placements[name]
        for _attempt in range(500):
            angle = rng.uniform(0, 2 * np.pi)
            moved = center + rng.uniform(*move_m) * np.array([np.cos(angle), np.sin(angle)])
            if _clear(moved, radii[name], others, gap):
                break
        else:
            raise ValueError(f'seed {seed}: no free spot {move_m} m from the {name}; try another seed')
        turn = np.radians(rng.uniform(*turn_deg)) * rng.choice([-1.0, 1.0])
        after[name] = (moved, yaw + turn)
    scan_geometry, objects_before = build_table(before, label_of, table_label)
    after_geometry, objects_after = build_table(after, label_of, table_label)
    K = pinhole_intrinsics(width, height)
    scene_rng = np.random.default_rng(seed)
    scan = [scan_geometry.render(K, T, width, height, stamp=0.1 * (i + 1), name=f'frame_{i:05d}')
            for i, T in enumerate(scan_poses(num_views, scene_rng))]
    start = scan[-1].stamp + 10.0
    rescan = [after_geometry.render(K, T, width, height, stamp=start + 0.1 * i, name=f'rescan_{i:05d}')
              for i, T in enumerate(rescan_poses(rescan_views, rng))]
    # the scene renders the changed table: views from any pose after the change
    scene = SyntheticScene(frames=scan, labels=dict(full.labels), objects=objects_before, workspace=full.workspace,
                           geometry=after_geometry, base_frame=full.base_frame, seed=seed, placements=after)
    return SceneChangeCase(kind=kind, name=name, scan=scan, rescan=rescan, labels=dict(full.labels),
                           objects_before=objects_before, objects=objects_after,
                           old_center=objects_before[name]['center'] if name in objects_before else None,
                           new_center=objects_after[name]['center'] if name in objects_after else None,
                           scene=scene, scan_geometry=scan_geometry)
