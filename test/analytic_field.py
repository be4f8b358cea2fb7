"""A field with known geometry and features, standing in for a trained F3RMModel in query tests.

Density 100 inside spheres, yawed boxes and a table slab, 0 elsewhere; each shape's features are its name's
vector of a `LabelsTeacher`. It has the parts of `F3RMModel` the query path uses (``density_at``,
``features_at``, nerfacto's ``field.get_density`` / ``get_outputs``, parameters for the device).
"""
import numpy as np
import torch
from nerfstudio.field_components.field_heads import FieldHeadNames

from f3rm_ros.core.config import make_config
from f3rm_ros.core.geometry import WorkspaceBox
from f3rm_ros.core.teachers.labels import LabelsTeacher

NAMES = {1: 'apple', 2: 'ball', 3: 'table', 4: 'bar', 5: 'block'}
SPHERES = {'apple': (np.array([0.40, -0.10, 0.04]), 0.04), 'ball': (np.array([0.62, 0.12, 0.05]), 0.05)}
TABLE_TOP, TABLE_BOTTOM = 0.0, -0.02


def yaw_matrix(yaw_deg):
    """Rotation about base z by `yaw_deg` degrees."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _AnalyticNerfField(torch.nn.Module):
    """Stands in for nerfacto's field: colour from the density embedding, asked for looking straight down."""

    def __init__(self, owner):
        super().__init__()
        self.owner = [owner]

    def get_density(self, ray_samples):
        positions = ray_samples.frustums.origins
        return self.owner[0].density_at(positions), positions

    def get_outputs(self, ray_samples, density_embedding=None):
        assert density_embedding is not None and ray_samples.camera_indices is not None
        assert torch.allclose(ray_samples.frustums.directions[:, 2], torch.tensor(-1.0))  # looking down
        return {FieldHeadNames.RGB: torch.sigmoid(density_embedding)}


class AnalyticModel(torch.nn.Module):
    """Known shapes in base_frame (metres), evaluated in field units like F3RMModel.

    `spheres`: {name: (centre, radius)}; `boxes`: {name: (centre, size [3], yaw degrees)}; `bowls`: {name: (rim
    centre, outer radius, wall thickness)}, open hemispherical shells below their rim centre; the table slab
    spans z in [TABLE_BOTTOM, TABLE_TOP] everywhere unless `table` is False.
    """

    def __init__(self, box: WorkspaceBox, teacher: LabelsTeacher, spheres=SPHERES, boxes=None, table=True,
                 bowls=None):
        super().__init__()
        self.box = box
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.field = _AnalyticNerfField(self)
        self.dim = teacher.dim
        self.vectors = {name: teacher.vector(name) for name in NAMES.values()}
        self.spheres = {name: (torch.tensor(box.to_field(c), dtype=torch.float32), r * box.scale)
                        for name, (c, r) in spheres.items()}
        self.boxes = {}
        for name, (centre, size, yaw) in (boxes or {}).items():
            self.boxes[name] = (torch.tensor(box.to_field(np.asarray(centre, float)), dtype=torch.float32),
                                torch.tensor(np.asarray(size, float) * box.scale / 2, dtype=torch.float32),
                                torch.tensor(yaw_matrix(yaw), dtype=torch.float32))
        self.bowls = {name: (torch.tensor(box.to_field(np.asarray(c, float)), dtype=torch.float32), r * box.scale,
                             (r - t) * box.scale) for name, (c, r, t) in (bowls or {}).items()}
        top, bottom = (box.to_field(np.array([0.0, 0.0, z]))[2] for z in (TABLE_TOP, TABLE_BOTTOM))
        self.table = (float(bottom), float(top)) if table else None
        self.specks = []
        self.paints = []
        self.calls = 0

    def add_speck(self, centre, radius):
        """Add a small floating blob with the ball's features (a NeRF floater)."""
        self.specks.append((torch.tensor(self.box.to_field(centre), dtype=torch.float32), radius * self.box.scale))

    def paint_table(self, lo_xy, hi_xy, name):
        """Give the table's top face inside the box [lo_xy, hi_xy] (m) `name`'s features (a teacher's bleed)."""
        self.paints.append((torch.tensor(self.box.to_field(np.array([*lo_xy, 0.0]))[:2], dtype=torch.float32),
                            torch.tensor(self.box.to_field(np.array([*hi_xy, 0.0]))[:2], dtype=torch.float32), name))

    def _masks(self, positions):
        masks = {}
        if self.table is not None:   # first: an object that reaches into the table keeps its own features there
            masks['table'] = (positions[..., 2] >= self.table[0]) & (positions[..., 2] <= self.table[1])
        masks.update({name: (positions - c).norm(dim=-1) <= r for name, (c, r) in self.spheres.items()})
        for c, r in self.specks:
            masks['ball'] = masks.get('ball', torch.zeros_like(positions[..., 0], dtype=torch.bool)) | (
                (positions - c).norm(dim=-1) <= r)
        for name, (centre, half, rotation) in self.boxes.items():
            local = (positions - centre) @ rotation
            masks[name] = (local.abs() <= half).all(dim=-1)
        for name, (centre, outer, inner) in self.bowls.items():
            distance = (positions - centre).norm(dim=-1)
            masks[name] = (distance <= outer) & (distance >= inner) & (positions[..., 2] <= centre[2])
        return masks

    def density_at(self, positions):
        self.calls += 1
        occupied = torch.stack(list(self._masks(positions).values())).any(0)
        return (occupied.float() * 100.0)[..., None]

    def features_at(self, positions):
        features = torch.zeros((*positions.shape[:-1], self.dim))
        for name, mask in self._masks(positions).items():
            features[mask] = self.vectors[name]
        for lo, hi, name in self.paints:
            on_top = (positions[..., 2] >= self.table[0]) & (positions[..., 2] <= self.table[1])
            features[on_top & ((positions[..., :2] >= lo) & (positions[..., :2] <= hi)).all(-1)] = self.vectors[name]
        return features


def analytic_scene(spheres=SPHERES, boxes=None, table=True, bowls=None, **query):
    """Return (config, teacher, model) of an analytic table; `query` overrides ``config.query`` fields."""
    config = make_config('cpu-tiny', overrides={'query': {'alpha_threshold': 0.1, **query}})
    teacher = LabelsTeacher(NAMES, dim=8, patch_size=8)
    config.feature_field.feature_dim = teacher.dim
    model = AnalyticModel(WorkspaceBox.from_config(config.workspace), teacher, spheres, boxes, table, bowls)
    return config, teacher, model


def inside_truth(points, margin=0.0):
    """Points inside a sphere of `SPHERES` or the table slab (grown by `margin` metres)."""
    inside = (points[:, 2] >= TABLE_BOTTOM - margin) & (points[:, 2] <= TABLE_TOP + margin)
    for centre, radius in SPHERES.values():
        inside |= np.linalg.norm(points - centre, axis=1) <= radius + margin
    return inside
