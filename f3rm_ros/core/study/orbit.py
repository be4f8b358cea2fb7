"""Camera paths for studying a field, how novel each view is, and rendering a path to PNGs, a video and a CSV.

Paths: orbits around a point, the capture trajectory shrunk or pushed out, nerfstudio camera-path files.

Poses are ``T_base_optical`` (optical axes: x right, y down, z forward) in ``base_frame`` like everywhere in
f3rm_ros; nerfstudio camera paths hold OpenGL camera-to-world matrices in the same frame (as transforms.json).
"""
from __future__ import annotations

# Imported where used (`f3rm-ros query` and `export` import this module for `parse_box` and `cropped` alone): the
# sibling modules `evaluation` (nerfstudio) and `views` (scikit-image, ~0.1 s), and imageio (the GIF fallback).
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from ..geometry import WorkspaceBox, check_rigid, opengl_to_optical
from ..training.render import colorize, feature_pca, save_png, side_by_side, to_uint8
from ..scenes.table import look_at, pinhole_intrinsics


@dataclass
class View:
    """One camera of a path: pose, intrinsics, size, and what the CSV says about it."""

    T_base_optical: np.ndarray
    K: np.ndarray
    width: int
    height: int
    info: Dict = field(default_factory=dict)


def check_centre(center: Sequence[float], box: WorkspaceBox) -> np.ndarray:
    """Return the point of interest as an array; a point outside the workspace box is refused."""
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f'--center needs three finite numbers x,y,z, got {center.tolist()}')
    if not box.contains(center):
        raise ValueError(f'--center {center.round(3).tolist()} is outside the workspace the field was trained in '
                         f'(min {box.min_xyz.round(3).tolist()}, max {box.max_xyz.round(3).tolist()})')
    return center


def orbit(center: Sequence[float], radii: Sequence[float], frames: int, K: np.ndarray, width: int, height: int,
          height_above: Optional[float] = None, elevation_deg: Optional[float] = None,
          up: Sequence[float] = (0.0, 0.0, 1.0)) -> List[View]:
    """Cameras on circles around `center`, each looking at it: `frames` per radius, outer circle first.

    The circles lie in the plane through `center` perpendicular to `up` (a REP 103 base frame's z by default; see
    `cameras_up` for a scan in another frame), shifted along `up` by `height_above` metres or by what
    `elevation_deg` (the angle above that plane) gives for every radius; default 30 degrees. Each image's up is
    `up` (straight above the centre: the first circle direction).
    """
    if frames < 1:
        raise ValueError(f'--frames must be at least 1, got {frames}')
    if not radii or min(radii) <= 0:
        raise ValueError(f'radii must be positive, got {list(radii)}')
    if height_above is not None and elevation_deg is not None:
        raise ValueError('give --height or --elevation, not both')
    up = np.asarray(up, dtype=np.float64)
    if up.shape != (3,) or not np.all(np.isfinite(up)) or np.linalg.norm(up) < 1e-9:
        raise ValueError(f'--up needs a non-zero direction x,y,z, got {up.tolist()}')
    up = up / np.linalg.norm(up)
    # two directions spanning the circle's plane (for z-up: x, then y, so angle 0 is +x as before)
    first = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = first - up * (first @ up)
    first /= np.linalg.norm(first)
    second = np.cross(up, first)
    views = []
    center = np.asarray(center, dtype=np.float64)
    for ring, radius in enumerate(radii):
        if height_above is None:
            lift = radius * math.tan(math.radians(30.0 if elevation_deg is None else elevation_deg))
        else:
            lift = height_above
        for index in range(frames):
            angle = 2 * math.pi * index / frames
            eye = center + radius * (math.cos(angle) * first + math.sin(angle) * second) + lift * up
            image_up = up if abs(lift) < 0.999 * math.hypot(radius, lift) else first
            views.append(View(look_at(eye, center, image_up), K, width, height,
                              {'ring': ring, 'radius_m': radius, 'angle_deg': math.degrees(angle)}))
    return views


def cameras_up(poses: Sequence[np.ndarray]) -> np.ndarray:
    """Return the scene's up seen by a scan: the mean of its cameras' image-up axes (optical -y), unit length.

    A hand-held or arm scan keeps its images roughly upright, so this finds up in a frame that is not z-up (a
    dataset's world frame). Refused when there are no cameras or their up axes cancel out (no agreed up).
    """
    if not poses:
        raise ValueError('--up auto needs the training cameras of --data')
    ups = np.stack([-np.asarray(T, dtype=np.float64)[:3, 1] for T in poses])
    mean = ups.mean(axis=0)
    if np.linalg.norm(mean) < 0.3:
        raise ValueError(f'--up auto: the {len(poses)} cameras do not agree on an up direction (mean image-up '
                         f'length {np.linalg.norm(mean):.2f}); give --up x,y,z')
    return mean / np.linalg.norm(mean)


def along_training(poses: Sequence[np.ndarray], K: np.ndarray, width: int, height: int, along: str,
                   offset: float = 0.0, frame_ids: Optional[Sequence[int]] = None) -> List[View]:
    """Return the capture trajectory itself (`training`) or moved towards / away from its centre.

    `inside` / `outside` move each camera `offset` metres towards / away from the trajectory's centre,
    keeping its orientation. `frame_ids` name the source cameras in the CSV (dataset indices; default 0..N-1).
    """
    if along not in ('training', 'inside', 'outside'):
        raise ValueError(f'--along must be training, inside or outside, got {along!r}')
    if not poses:
        raise ValueError('no training cameras to follow')
    positions = np.stack([T[:3, 3] for T in poses])
    centre = positions.mean(axis=0)
    sign = {'training': 0.0, 'inside': -1.0, 'outside': 1.0}[along]
    views = []
    for index, T in enumerate(poses):
        moved = np.array(T, dtype=np.float64, copy=True)
        outward = moved[:3, 3] - centre
        length = np.linalg.norm(outward)
        if sign and length > 1e-9:
            if sign < 0 and offset >= length:
                raise ValueError(f'--offset {offset} m would move camera {index} through the trajectory\'s centre '
                                 f'(it is {length:.3f} m from it)')
            moved[:3, 3] = moved[:3, 3] + sign * offset * outward / length
        source = index if frame_ids is None else int(frame_ids[index])
        views.append(View(moved, K, width, height, {'source_frame': source, 'along': along, 'offset_m': offset}))
    return views


def read_camera_path(path: Path) -> List[View]:
    """Read the views of a nerfstudio camera path file (``ns-render camera-path``'s JSON).

    Each ``camera_path`` entry has ``camera_to_world`` (16 numbers, OpenGL axes, row-major) and ``fov``
    (vertical, degrees); the size is ``render_width`` x ``render_height``. Anything else is refused with the
    place and the reason.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f'camera path {path}: not readable JSON ({error})') from error
    if not isinstance(data, dict) or not isinstance(data.get('camera_path'), list) or not data['camera_path']:
        raise ValueError(f'camera path {path}: expected a nerfstudio camera path, an object with a non-empty '
                         '"camera_path" list (ns-render camera-path format)')
    try:
        width, height = int(data.get('render_width', 320)), int(data.get('render_height', 240))
    except (TypeError, ValueError) as error:
        raise ValueError(f'camera path {path}: render_width / render_height must be integers') from error
    if width < 1 or height < 1:
        raise ValueError(f'camera path {path}: render size {width} x {height} must be positive')
    views = []
    for index, entry in enumerate(data['camera_path']):
        where = f'camera path {path}: camera_path[{index}]'
        try:
            c2w = np.asarray(entry['camera_to_world'], dtype=np.float64)
            fov = float(entry.get('fov', 50.0))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f'{where}: needs "camera_to_world" (16 numbers) and "fov" ({error})') from error
        if c2w.size != 16 or not np.all(np.isfinite(c2w)):
            raise ValueError(f'{where}: "camera_to_world" must hold 16 finite numbers, got {c2w.size}')
        if not 1.0 <= fov < 179.0:
            raise ValueError(f'{where}: fov {fov} must be a vertical field of view in degrees (1..179)')
        try:
            T = opengl_to_optical(c2w.reshape(4, 4))
            check_rigid(T, tol=1e-2)
            rotation = Rotation.from_matrix(T[:3, :3])   # re-orthonormalised: viewers write rounded matrices
        except ValueError as error:
            raise ValueError(f'{where}: "camera_to_world" is not a rigid pose ({error})') from error
        T[:3, :3] = rotation.as_matrix()
        fy = height / (2 * math.tan(math.radians(fov) / 2))
        K = np.array([[fy, 0.0, (width - 1) / 2], [0.0, fy, (height - 1) / 2], [0.0, 0.0, 1.0]])
        views.append(View(T, K, width, height, {'path_index': index, 'fov_deg': fov}))
    return views


def novelty(views: Sequence[View], training_poses: Sequence[np.ndarray],
            frame_ids: Optional[Sequence[int]] = None) -> None:
    """Add to each view's info the distance (m) and rotation angle (deg) to its nearest training camera.

    `frame_ids` name the training cameras in the CSV (their dataset indices; default 0..N-1).
    """
    if not training_poses:
        for view in views:
            view.info.update(nearest_train_frame=None, novelty_distance_m=None, novelty_angle_deg=None)
        return
    positions = np.stack([T[:3, 3] for T in training_poses])
    rotations = Rotation.from_matrix(np.stack([T[:3, :3] for T in training_poses]))
    for view in views:
        distances = np.linalg.norm(positions - view.T_base_optical[:3, 3], axis=1)
        nearest = int(np.argmin(distances))
        angle = (rotations[nearest].inv() * Rotation.from_matrix(view.T_base_optical[:3, :3])).magnitude()
        view.info.update(nearest_train_frame=nearest if frame_ids is None else int(frame_ids[nearest]),
                         novelty_distance_m=float(distances[nearest]),
                         novelty_angle_deg=float(np.degrees(angle)))


@contextlib.contextmanager
def cropped(model, box: WorkspaceBox, crop_min: Optional[Sequence[float]], crop_max: Optional[Sequence[float]]
            ) -> Iterator[None]:
    """Render `model` with zero density outside the crop box (base_frame metres).

    Everything in front of or around the region of interest disappears from colour, depth and features alike
    (they share the weights).

    nerfacto has no crop of its own; the field's density is wrapped for the duration and restored after.
    """
    if crop_min is None:
        yield
        return
    lo = torch.as_tensor(box.to_field(np.asarray(crop_min, float)), dtype=torch.float32)
    hi = torch.as_tensor(box.to_field(np.asarray(crop_max, float)), dtype=torch.float32)
    field_ = model.field
    original = field_.get_density
    own = vars(field_).get('get_density')   # an instance override (e.g. an accelerated path) is put back after

    def get_density(ray_samples):
        density, embedding = original(ray_samples)
        positions = ray_samples.frustums.get_positions()
        inside = ((positions >= lo.to(positions.device)) & (positions <= hi.to(positions.device))).all(-1)
        return density * inside[..., None].to(density.dtype), embedding

    field_.get_density = get_density
    try:
        yield
    finally:
        if own is None:
            del field_.get_density   # back to the class's method
        else:
            field_.get_density = own


def parse_box(text: str) -> tuple:
    """``"xmin,ymin,zmin,xmax,ymax,zmax"`` → (min, max) arrays; min < max on every axis."""
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError as error:
        raise ValueError(f'crop box {text!r}: six numbers xmin,ymin,zmin,xmax,ymax,zmax expected') from error
    if len(values) != 6:
        raise ValueError(f'crop box {text!r}: six numbers xmin,ymin,zmin,xmax,ymax,zmax expected, got {len(values)}')
    lo, hi = np.array(values[:3]), np.array(values[3:])
    if np.any(hi <= lo):
        raise ValueError(f'crop box {text!r}: each max must exceed its min')
    return lo, hi


def write_video(frames: Sequence[np.ndarray], path: Path, fps: float = 10.0) -> Path:
    """Write float RGB frames as an MP4 (OpenCV's mp4v); where that writer is unavailable, a GIF (imageio)."""
    path = Path(path)
    images = [to_uint8(f) if f.dtype != np.uint8 else f for f in frames]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    if writer.isOpened():
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        writer.release()
        if path.is_file() and path.stat().st_size > 0:
            return path
    import imageio.v2 as imageio
    gif = path.with_suffix('.gif')
    imageio.mimsave(gif, images, duration=1.0 / fps, loop=0)
    return gif


def render_path(model, box: WorkspaceBox, views: Sequence[View], out_dir: Path, query=None,
                crop: Optional[tuple] = None, fps: float = 10.0, progress: bool = True) -> Dict:
    """Render every view: rgb/depth/feature_pca[/similarity] PNGs, a side-by-side video, views.csv.

    Depth colours and the PCA basis are fixed by the first view, so a video does not flicker.
    """
    from .evaluation import write_csv_atomic
    from .views import render_view, similarity_overlay
    out_dir = Path(out_dir)
    rows, panels = [], []
    depth_range = basis = None
    crop_min, crop_max = crop if crop is not None else (None, None)
    with cropped(model, box, crop_min, crop_max):
        for index, view in enumerate(tqdm(views, desc='render', unit='view', disable=not progress)):
            started = time.perf_counter()
            rendered = render_view(model, view.T_base_optical, view.K, view.width, view.height, query=query, box=box)
            seconds = time.perf_counter() - started
            if depth_range is None:
                finite = rendered['depth'][np.isfinite(rendered['depth'])]
                depth_range = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99)))
                flat = torch.from_numpy(rendered['feature'].reshape(-1, rendered['feature'].shape[-1])).float()
                basis = torch.pca_lowrank(flat - flat.mean(0), q=3, center=False)[2].numpy()
            images = {'rgb': np.clip(rendered['rgb'], 0, 1),
                      'depth': colorize(rendered['depth'], 'turbo', *depth_range),
                      'feature_pca': feature_pca(rendered['feature'], basis)}
            if query is not None:
                images['similarity'] = similarity_overlay(rendered, query)
            for name, image in images.items():
                save_png(out_dir / name / f'{index:04d}.png', image)
            panels.append(side_by_side(*images.values()))
            rows.append({'view': index, **view.info, 'x': view.T_base_optical[0, 3], 'y': view.T_base_optical[1, 3],
                         'z': view.T_base_optical[2, 3], 'render_s': seconds,
                         'rays_per_s': view.width * view.height / seconds})
    video = write_video(panels, out_dir / 'views.mp4', fps)
    csv_path = write_csv_atomic(out_dir / 'views.csv', rows)
    return {'rows': rows, 'video': video, 'csv': csv_path, 'folders': [out_dir / n for n in images]}


def default_intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K of a `width` x `height` camera with a horizontal field of view of `hfov_deg`."""
    return pinhole_intrinsics(width, height, hfov_deg)
