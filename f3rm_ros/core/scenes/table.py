"""Synthetic tabletop scenes with ground truth: a demo scan and a test oracle for the whole pipeline.

A table (top at z = 0 in ``base_link``, REP 103: x forward, y left, z up) carries a few everyday objects
built from open3d primitives; a closed room around it keeps every ray on a surface. Views are ray cast
with ``open3d.t.geometry.RaycastingScene`` and shaded Lambertian (fixed directional light + ambient), with
textures evaluated at the 3D hit point so that every view agrees, which a NeRF needs. Each view comes with
z-depth and per-pixel object ids, and the scene knows every object's box, so tests can check geometry,
poses and queries against the truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import open3d as o3d

from ..config import WorkspaceConfig
from ..capture.frames import PosedFrame


class Part(NamedTuple):
    """One mesh of an object, in the object frame; a `name` labels it on its own when parts are labelled."""

    mesh: o3d.geometry.TriangleMesh
    color: Tuple[float, float, float]   # RGB 0..1
    name: str = ''                      # '' = the object's own name


TABLE_CENTER = np.array([0.5, 0.0, 0.0])
TABLE_SIZE = (0.8, 0.8, 0.04)
SCENE_WORKSPACE = WorkspaceConfig(min_xyz=(0.2, -0.3, -0.02), max_xyz=(0.8, 0.3, 0.30),
                                  base_frame='base_link')
# Object centres are drawn from this xy rectangle; footprints (<= 13 cm) then stay inside the workspace.
PLACEMENT_MIN_XY = np.array([0.3, -0.2])
PLACEMENT_MAX_XY = np.array([0.7, 0.2])

# Direction towards the light (above, a little in front and to the left) and the light mix.
LIGHT_DIRECTION = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
AMBIENT = 0.35
DIFFUSE = 0.65
# Objects get stripes across this direction, ~2 cm apart: texture for a NeRF, colour stays recognisable.
STRIPE_DIRECTION = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])
STRIPE_PERIOD = 0.02

# Surface kinds decide the texture of a hit.
ROOM, TABLE, OBJECT = 0, 1, 2


# ---------------------------------------------------------------------------------------------------------
# Object catalogue: each builder returns parts in an object frame; `_rest_on_origin` later centres the
# footprint on the origin and puts the lowest point at z = 0.

def _lying_cylinder(radius: float, length: float, x_center: float, z_axis: float):
    """Build a cylinder along x (open3d builds them along z)."""
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius=radius, height=length, resolution=24)
    mesh.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0.0, np.pi / 2, 0.0)), center=(0, 0, 0))
    return mesh.translate((x_center, 0.0, z_axis))


def _standing_cylinder(radius: float, height: float, z_bottom: float = 0.0):
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius=radius, height=height, resolution=32)
    return mesh.translate((0.0, 0.0, z_bottom + height / 2))


def _mug() -> List[Part]:
    red = (0.80, 0.12, 0.10)
    radius, height = 0.04, 0.09
    handle = o3d.geometry.TriangleMesh.create_torus(torus_radius=0.025, tube_radius=0.007)
    # The torus lies in the xy plane; stand it up in the xz plane beside the body.
    handle.rotate(o3d.geometry.get_rotation_matrix_from_xyz((np.pi / 2, 0.0, 0.0)), center=(0, 0, 0))
    handle.translate((radius + 0.01, 0.0, height / 2))
    return [Part(_standing_cylinder(radius, height), red), Part(handle, red, 'mug handle')]


def _bowl() -> List[Part]:
    radius, squash = 0.065, 0.6
    shell = o3d.geometry.TriangleMesh.create_sphere(radius=radius, resolution=24)
    # Keep the lower hemisphere: an open shell whose inside is seen from above.
    shell.remove_vertices_by_mask(np.asarray(shell.vertices)[:, 2] > 1e-9)
    shell.vertices = o3d.utility.Vector3dVector(np.asarray(shell.vertices) * [1.0, 1.0, squash])
    return [Part(shell, (0.15, 0.30, 0.85))]


def _cereal_box() -> List[Part]:
    size = (0.07, 0.035, 0.11)
    return [Part(o3d.geometry.TriangleMesh.create_box(*size), (0.95, 0.55, 0.10))]


def _ball() -> List[Part]:
    return [Part(o3d.geometry.TriangleMesh.create_sphere(radius=0.035, resolution=24), (0.20, 0.70, 0.20))]


def _bottle() -> List[Part]:
    cyan = (0.10, 0.75, 0.80)
    body = _standing_cylinder(0.028, 0.075)
    shoulder = o3d.geometry.TriangleMesh.create_cone(radius=0.028, height=0.025, resolution=32)
    shoulder.translate((0.0, 0.0, 0.075))
    neck = _standing_cylinder(0.011, 0.03, z_bottom=0.09)
    return [Part(body, cyan), Part(shoulder, cyan), Part(neck, cyan)]


def _can() -> List[Part]:
    return [Part(_standing_cylinder(0.033, 0.10), (0.58, 0.58, 0.62))]


def _screwdriver() -> List[Part]:
    handle_radius = 0.013
    handle = _lying_cylinder(handle_radius, 0.05, x_center=-0.03, z_axis=handle_radius)
    shaft = _lying_cylinder(0.003, 0.06, x_center=0.025, z_axis=handle_radius)
    return [Part(handle, (0.60, 0.20, 0.75), 'screwdriver handle'),
            Part(shaft, (0.75, 0.75, 0.78), 'screwdriver shaft')]


def _banana() -> List[Part]:
    yellow = (0.95, 0.85, 0.20)
    arc_radius, tube_radius, half_angle = 0.065, 0.015, np.radians(45)
    arc = o3d.geometry.TriangleMesh.create_torus(torus_radius=arc_radius, tube_radius=tube_radius,
                                                 radial_resolution=48, tubular_resolution=16)
    vertices = np.asarray(arc.vertices)
    arc.remove_vertices_by_mask(np.abs(np.arctan2(vertices[:, 1], vertices[:, 0])) > half_angle)
    parts = [Part(arc, yellow)]
    for sign in (-1.0, 1.0):  # rounded tips close the cut ends of the torus
        tip = o3d.geometry.TriangleMesh.create_sphere(radius=tube_radius, resolution=12)
        tip.translate((arc_radius * np.cos(half_angle), sign * arc_radius * np.sin(half_angle), 0.0))
        parts.append(Part(tip, yellow))
    return parts


# A peg as thick as a real mug rack's (a 5 mm peg is 1-2 pixels of a 160 x 120 scan: no field resolves it).
RACK_POST_RADIUS, RACK_PEG_RADIUS, RACK_PEG_LENGTH, RACK_PEG_HEIGHT = 0.012, 0.008, 0.09, 0.14


def _rack() -> List[Part]:
    """Build a mug rack: a base plate, a post and one peg sticking out along +x (what a mug is hung on)."""
    wood, grey = (0.70, 0.52, 0.32), (0.55, 0.55, 0.58)
    base = o3d.geometry.TriangleMesh.create_box(0.10, 0.10, 0.012).translate((-0.05, -0.05, 0.0))
    post = _standing_cylinder(RACK_POST_RADIUS, RACK_PEG_HEIGHT + 0.04, z_bottom=0.012)
    peg = _lying_cylinder(RACK_PEG_RADIUS, RACK_PEG_LENGTH, x_center=RACK_PEG_LENGTH / 2, z_axis=RACK_PEG_HEIGHT)
    return [Part(base, wood), Part(post, wood), Part(peg, grey, 'rack peg')]


# Objects a random draw picks from (their order fixes every seed's layout: append, never reorder).
CATALOGUE: Dict[str, Callable[[], List[Part]]] = {
    'mug': _mug,
    'bowl': _bowl,
    'box': _cereal_box,
    'ball': _ball,
    'bottle': _bottle,
    'can': _can,
    'screwdriver': _screwdriver,
    'banana': _banana,
}
# Objects that only named layouts get (manipulation): outside CATALOGUE, so seeded random draws stay as they were.
EXTRA_OBJECTS: Dict[str, Callable[[], List[Part]]] = {'rack': _rack}
OBJECTS = {**CATALOGUE, **EXTRA_OBJECTS}


def rest_shift(parts: Sequence[Part]) -> np.ndarray:
    """Return the shift that centres the parts' xy bounding box on the origin and puts the lowest point at z = 0.

    An object's frame in a scene (its 'pose' in `SyntheticScene.objects`) is its builder's frame moved by this.
    """
    points = np.concatenate([np.asarray(part.mesh.vertices) for part in parts])
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])


def _rest_on_origin(parts: List[Part]) -> List[Part]:
    """Shift parts by `rest_shift`."""
    shift = rest_shift(parts)
    return [part._replace(mesh=part.mesh.translate(shift)) for part in parts]


# ---------------------------------------------------------------------------------------------------------
# Cameras

def pinhole_intrinsics(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    """3x3 K with square pixels, the principal point at the image centre and `hfov_deg` across the width."""
    fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """T_base_optical of a camera at `eye` whose optical z axis points at `target` and whose image up is `up`.

    Optical axes: x right, y down, z forward. Raises ValueError when the view direction is parallel to `up`.
    """
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError('look_at: eye and target coincide')
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:
        raise ValueError('look_at: view direction is parallel to the up vector')
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.column_stack([right, down, forward])
    T[:3, 3] = eye
    return T


def scan_poses(num_views: int, rng: np.random.Generator, center: Sequence[float] = TABLE_CENTER,
               radius: Tuple[float, float] = (0.45, 0.65),
               elevation_deg: Tuple[float, float] = (30.0, 70.0),
               target_jitter: float = 0.03) -> List[np.ndarray]:
    """Poses of a wrist camera circling the table like an arm would: T_base_optical per view, in order.

    Azimuth sweeps once around `center`; elevation and radius rise and fall smoothly (an arm does not jump)
    with a little noise; every view looks at a point near `center`, a few centimetres above the table.
    """
    center = np.asarray(center, dtype=np.float64)
    progress = np.arange(num_views) / max(num_views, 1)
    start = rng.uniform(0.0, 2 * np.pi)
    azimuth = start + 2 * np.pi * progress + rng.normal(0.0, 0.02, num_views)
    wave_phase = rng.uniform(0.0, 2 * np.pi, size=2)
    elevation_mid, elevation_amp = np.mean(elevation_deg), (elevation_deg[1] - elevation_deg[0]) / 2
    elevation_wave = elevation_amp * np.sin(4 * np.pi * progress + wave_phase[0])
    elevation = np.radians(np.clip(elevation_mid + 0.9 * elevation_wave + rng.normal(0.0, 2.0, num_views),
                                   *elevation_deg))
    radius_mid, radius_amp = np.mean(radius), (radius[1] - radius[0]) / 2
    radius_wave = radius_amp * np.sin(6 * np.pi * progress + wave_phase[1])
    distance = np.clip(radius_mid + 0.9 * radius_wave + rng.normal(0.0, 0.01, num_views), *radius)
    poses = []
    for az, el, r in zip(azimuth, elevation, distance):
        eye = center + r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        target = center + [*rng.uniform(-target_jitter, target_jitter, 2), rng.uniform(0.0, 0.05)]
        poses.append(look_at(eye, target))
    return poses


# ---------------------------------------------------------------------------------------------------------
# Geometry and rendering

def _checker(coordinates: np.ndarray, cell: float) -> np.ndarray:
    """0/1 checkerboard over any number of coordinate columns."""
    return np.floor(coordinates / cell).sum(axis=1) % 2


class SceneGeometry:
    """Ray-castable scene: open3d meshes plus, per geometry id, its label, base colour and surface kind."""

    def __init__(self):
        self.raycaster = o3d.t.geometry.RaycastingScene()
        self.geometry_labels: List[int] = []
        self.geometry_colors: List[Tuple[float, float, float]] = []
        self.geometry_kinds: List[int] = []

    def add(self, mesh: o3d.geometry.TriangleMesh, label: int, color: Sequence[float], kind: int) -> None:
        """Add one mesh; `kind` (ROOM, TABLE or OBJECT) selects its texture."""
        geometry_id = self.raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        if geometry_id != len(self.geometry_labels):
            raise RuntimeError(f'open3d gave geometry id {geometry_id}, expected {len(self.geometry_labels)}')
        self.geometry_labels.append(int(label))
        self.geometry_colors.append(tuple(float(c) for c in color))
        self.geometry_kinds.append(kind)

    def render(self, K: np.ndarray, T_base_optical: np.ndarray, width: int, height: int,
               stamp: float = 0.0, name: str = '') -> PosedFrame:
        """Ray cast one view: RGB, z-depth (metres, 0 where nothing is hit) and object ids.

        Rays pass through pixel centres (u + 0.5, v + 0.5), as nerfstudio casts them.
        """
        K = np.asarray(K, dtype=np.float64)
        T = np.asarray(T_base_optical, dtype=np.float64)
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        pixels = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)
        # Directions with optical z = 1, so the hit distance in units of the direction is the z-depth.
        directions = pixels @ np.linalg.inv(K).T @ T[:3, :3].T
        origins = np.broadcast_to(T[:3, 3], directions.shape)
        rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
        hits = self.raycaster.cast_rays(o3d.core.Tensor(rays))
        t_hit = hits['t_hit'].numpy()
        geometry_ids = hits['geometry_ids'].numpy()
        hit = geometry_ids != o3d.t.geometry.RaycastingScene.INVALID_ID
        ids = np.where(hit, geometry_ids, 0).astype(np.int64)

        points = origins + directions * np.where(hit, t_hit, 0.0)[:, None]
        kinds = np.asarray(self.geometry_kinds)[ids]
        albedo = np.asarray(self.geometry_colors)[ids] * self._texture(points, kinds)[:, None]
        normals = hits['primitive_normals'].numpy().astype(np.float64)
        # Shade both sides of every surface (the room is seen from inside, the bowl from within).
        facing = np.sign(-np.einsum('ij,ij->i', normals, directions))[:, None]
        lambert = np.clip((normals * facing) @ LIGHT_DIRECTION, 0.0, 1.0)
        rgb = albedo * (AMBIENT + DIFFUSE * lambert)[:, None] * hit[:, None]

        image = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8).reshape(height, width, 3)
        depth = np.where(hit, t_hit, 0.0).astype(np.float32).reshape(height, width)
        labels = np.where(hit, np.asarray(self.geometry_labels)[ids], 0).astype(np.uint16)
        return PosedFrame(image=image, K=K, T_base_optical=T, stamp=stamp, depth=depth,
                          labels=labels.reshape(height, width), name=name)

    @staticmethod
    def _texture(points: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Brightness factor per hit: wood-like table, mildly striped objects, faint room checker."""
        factor = np.ones(len(points))
        table = kinds == TABLE
        p = points[table]
        grain = np.sin(2 * np.pi * (p[:, 0] + 0.02 * np.sin(2 * np.pi * p[:, 1] / 0.2)) / 0.03)
        # xy only: the top sits at z = 0, where float noise would flip a z parity.
        factor[table] = (0.75 + 0.25 * _checker(p[:, :2], 0.05)) * (0.9 + 0.1 * grain)
        objects = kinds == OBJECT
        stripes = np.sin(2 * np.pi * points[objects] @ STRIPE_DIRECTION / STRIPE_PERIOD)
        factor[objects] = 0.85 + 0.15 * stripes
        room = kinds == ROOM
        factor[room] = 0.92 + 0.08 * _checker(points[room], 0.3)
        return factor


# ---------------------------------------------------------------------------------------------------------
# Layout

def _footprint_corners(center_xy: np.ndarray, half_size: np.ndarray, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half_size
    return local @ np.array([[c, s], [-s, c]]) + center_xy


def _rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quads given as 4x2 corners."""
    for quad in (a, b):
        for i in range(4):
            edge = quad[(i + 1) % 4] - quad[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _place(half_sizes: List[np.ndarray], rng: np.random.Generator, min_gap: float,
           attempts: int = 200, restarts: int = 50) -> List[Tuple[np.ndarray, float]]:
    """Draw (centre xy, yaw) per footprint, `min_gap` apart from each other, by rejection sampling."""
    # Larger objects first: they are the hard ones to fit.
    order = np.argsort([-np.prod(h) for h in half_sizes])
    for _restart in range(restarts):
        placed: Dict[int, Tuple[np.ndarray, float]] = {}
        grown: List[np.ndarray] = []  # footprints grown by half the gap, so grown ones must not overlap
        for index in order:
            for _attempt in range(attempts):
                center = rng.uniform(PLACEMENT_MIN_XY, PLACEMENT_MAX_XY)
                yaw = rng.uniform(-np.pi, np.pi)
                corners = _footprint_corners(center, half_sizes[index] + min_gap / 2, yaw)
                if not any(_rectangles_overlap(corners, other) for other in grown):
                    placed[index] = (center, yaw)
                    grown.append(corners)
                    break
            else:
                break
        if len(placed) == len(half_sizes):
            return [placed[i] for i in range(len(half_sizes))]
    raise ValueError(f'could not place {len(half_sizes)} objects {min_gap} m apart on the table; use fewer')


def _room_and_table(geometry: SceneGeometry, table_label: int) -> None:
    room = o3d.geometry.TriangleMesh.create_box(3.0, 3.0, 3.0).translate((-1.0, -1.5, -0.75))
    geometry.add(room, label=0, color=(0.72, 0.72, 0.68), kind=ROOM)
    width, depth, thickness = TABLE_SIZE
    table = o3d.geometry.TriangleMesh.create_box(width, depth, thickness)
    table.translate((TABLE_CENTER[0] - width / 2, TABLE_CENTER[1] - depth / 2, -thickness))
    geometry.add(table, label=table_label, color=(0.62, 0.45, 0.30), kind=TABLE)


# ---------------------------------------------------------------------------------------------------------
# The scene

@dataclass
class SyntheticScene:
    """A rendered scan of a synthetic table plus its ground truth, in ``base_frame``.

    `objects` maps each name to {'center', 'extent'} of its axis-aligned bounding box (metres), its 'label' id,
    its 'pose' (4 x 4 T_base_object: the builder's frame moved by `rest_shift`, then yawed and placed) and its
    'part_labels' ({part name: id}, empty unless parts are labelled); `labels` maps every id (objects, parts
    and 'table') to its name; 0 is the background.
    """

    frames: List[PosedFrame]
    labels: Dict[int, str]
    objects: Dict[str, Dict]
    workspace: WorkspaceConfig
    geometry: SceneGeometry = field(repr=False)
    base_frame: str = 'base_link'
    seed: int = 0
    # name -> (centre xy, yaw) of each object's footprint: what `build_table` needs to lay the table out again
    placements: Dict[str, Tuple[np.ndarray, float]] = field(default_factory=dict)

    def render(self, K: np.ndarray, T_base_optical: np.ndarray, width: int, height: int,
               stamp: float = 0.0, name: str = '') -> PosedFrame:
        """Render a ground-truth view from any pose (T_base_optical, optical axes)."""
        return self.geometry.render(K, T_base_optical, width, height, stamp=stamp, name=name)

    def dataset_metadata(self) -> Dict:
        """Top-level transforms.json extras (JSON types): labels, workspace box and object boxes."""
        return {
            'base_frame': self.base_frame,
            'labels': {str(label): name for label, name in sorted(self.labels.items())},
            'workspace': {'min': [float(v) for v in self.workspace.min_xyz],
                          'max': [float(v) for v in self.workspace.max_xyz]},
            'objects': {name: {'center': [float(v) for v in obj['center']],
                               'extent': [float(v) for v in obj['extent']],
                               'label': int(obj['label']), 'pose': np.asarray(obj['pose']).tolist()}
                        for name, obj in self.objects.items()},
        }


def make_scene(seed: int = 0, object_names: Optional[Sequence[str]] = None, num_objects: Optional[int] = None,
               num_views: int = 40, width: int = 160, height: int = 120, hfov_deg: float = 60.0,
               min_gap: float = 0.03, part_labels: bool = False) -> SyntheticScene:
    """Build, lay out and scan a synthetic table.

    Objects are all of `object_names`, or `num_objects` (default 5) drawn from `CATALOGUE` by `seed`; their
    ids are 1.. in that order (catalogue order for a random draw) and the table gets the next id. Each
    object gets a random yaw and a spot with at least `min_gap` metres between footprints. Frames are
    stamped 0.1 s apart from 0.1 s (ROS reads a zero stamp as "latest") and named ``frame_00000``...
    """
    rng = np.random.default_rng(seed)
    if object_names is None:
        count = 5 if num_objects is None else num_objects
        if not 1 <= count <= len(CATALOGUE):
            raise ValueError(f'num_objects must be 1..{len(CATALOGUE)}, got {count}')
        picked = set(rng.choice(list(CATALOGUE), size=count, replace=False))
        names = [name for name in CATALOGUE if name in picked]
    else:
        names = list(object_names)
        unknown = [name for name in names if name not in OBJECTS]
        if unknown:
            raise ValueError(f'unknown objects {unknown}; the catalogue has {list(OBJECTS)}')
        if len(set(names)) != len(names):
            raise ValueError(f'object names must be unique, got {names}')
        if num_objects is not None and num_objects != len(names):
            raise ValueError(f'num_objects={num_objects} contradicts {len(names)} object_names')

    placements = dict(zip(names, _place(object_half_sizes(names), rng, min_gap)))
    geometry, objects = build_table(placements, {name: label for label, name in enumerate(names, start=1)},
                                    len(names) + 1, part_labels=part_labels)
    K = pinhole_intrinsics(width, height, hfov_deg)
    frames = [geometry.render(K, T, width, height, stamp=0.1 * (index + 1), name=f'frame_{index:05d}')
              for index, T in enumerate(scan_poses(num_views, rng))]
    labels = {obj['label']: name for name, obj in objects.items()}
    labels[len(names) + 1] = 'table'
    labels.update({part_id: part for obj in objects.values() for part, part_id in obj['part_labels'].items()})
    return SyntheticScene(frames=frames, labels=labels, objects=objects, workspace=SCENE_WORKSPACE,
                          geometry=geometry, base_frame=SCENE_WORKSPACE.base_frame, seed=seed, placements=placements)


def object_half_sizes(names: Sequence[str]) -> List[np.ndarray]:
    """Half the footprint (x, y) of each catalogue object, unturned, in metres."""
    sizes = []
    for name in names:
        points = np.concatenate([np.asarray(part.mesh.vertices) for part in _rest_on_origin(OBJECTS[name]())])
        sizes.append(points.max(axis=0)[:2])  # footprints are centred on the origin
    return sizes


def build_table(placements: Dict[str, Tuple[np.ndarray, float]], label_of: Dict[str, int],
                table_label: int, part_labels: bool = False) -> Tuple[SceneGeometry, Dict[str, Dict]]:
    """Room, table and catalogue objects at `placements` (name -> (centre xy, yaw)): (geometry, object truth).

    `label_of` gives each object's id; the truth is {'center', 'extent', 'label', 'pose', 'part_labels'} per
    object, as `SyntheticScene`; with `part_labels`, named parts get ids after `table_label` in order of appearance.
    The same placements give the same geometry, so a layout can be rebuilt with one object moved or taken away.
    """
    geometry = SceneGeometry()
    _room_and_table(geometry, table_label)
    objects = {}
    part_ids: Dict[str, int] = {}
    for name, (center_xy, yaw) in placements.items():
        rotation = o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, yaw))
        points, parts_here = [], {}
        for part in _rest_on_origin(OBJECTS[name]()):
            part.mesh.rotate(rotation, center=(0, 0, 0)).translate((*center_xy, 0.0))
            label = label_of[name]
            if part_labels and part.name:
                label = parts_here[part.name] = part_ids.setdefault(part.name, table_label + 1 + len(part_ids))
            geometry.add(part.mesh, label=label, color=part.color, kind=OBJECT)
            points.append(np.asarray(part.mesh.vertices))
        points = np.concatenate(points)
        lo, hi = points.min(axis=0), points.max(axis=0)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rotation, (*center_xy, 0.0)
        objects[name] = {'center': (lo + hi) / 2, 'extent': hi - lo, 'label': label_of[name], 'pose': pose,
                         'part_labels': parts_here}
    return geometry, objects
