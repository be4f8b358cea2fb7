"""Hand-eye calibration: the fixed ``T_ee_optical`` of a wrist camera, from parameters or a YAML file.

A camera on the arm's flange is a fixed transform from the end effector (``tool0`` on a UR, ``fr3_link8`` or
``fr3_hand`` on a Franka) to the camera's **optical** frame (x right, y down, z forward). With it the capture
node takes end-effector poses (from TF or a pose topic) and composes ``T_base_optical = T_base_ee @ T_ee_optical``.

YAML files (`load_hand_eye`), one of:

* ours: ``{xyz: [x, y, z], quaternion_xyzw: [qx, qy, qz, qw]}`` (optionally under ``hand_eye:``);
* easy_handeye2's saved calibration: ``transformation: {x, y, z, qx, qy, qz, qw}`` (its eye-in-hand result is
  effector → tracking base frame; calibrate to the optical frame, or compose the camera_link → optical
  rotation yourself);
* a 4 x 4 matrix: ``matrix: [[...], [...], [...], [...]]`` (row major, T_ee_optical).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from ..geometry import check_rigid, quaternion_to_matrix

QUATERNION_NORM_TOLERANCE = 1e-2


def hand_eye_matrix(xyz: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """4 x 4 ``T_ee_optical`` from a translation (m) and a unit quaternion (x, y, z, w); ValueError otherwise."""
    t = np.asarray(list(xyz), dtype=np.float64)
    q = np.asarray(list(quaternion_xyzw), dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f'hand-eye translation must be 3 finite numbers (m), got {list(xyz)}')
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f'hand-eye quaternion must be 4 finite numbers (x, y, z, w), got {list(quaternion_xyzw)}')
    if abs(float(q @ q) - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise ValueError(f'hand-eye quaternion {q.tolist()} is not normalised (norm {np.linalg.norm(q):.4f}); give '
                         'it as x, y, z, w')
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(q / np.linalg.norm(q))
    T[:3, 3] = t
    return T


def load_hand_eye(path: Path) -> np.ndarray:
    """Read ``T_ee_optical`` from a YAML file (formats in the module docstring); ValueError naming the problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f'hand_eye_file {path} does not exist')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f'hand_eye_file {path} is not YAML: {error}') from error
    if isinstance(data, dict) and isinstance(data.get('hand_eye'), dict):
        data = data['hand_eye']
    if not isinstance(data, dict):
        raise ValueError(f'hand_eye_file {path}: expected a mapping, got {type(data).__name__}')
    try:
        if 'xyz' in data:
            return hand_eye_matrix(data['xyz'], data['quaternion_xyzw'])
        if 'transformation' in data:
            t = data['transformation']
            return hand_eye_matrix([t['x'], t['y'], t['z']], [t['qx'], t['qy'], t['qz'], t['qw']])
        if 'matrix' in data:
            T = np.asarray(data['matrix'], dtype=np.float64)
            if T.shape != (4, 4):
                raise ValueError(f'matrix must be 4 x 4, got shape {T.shape}')
            check_rigid(T)
            return T
    except (KeyError, TypeError) as error:
        raise ValueError(f'hand_eye_file {path}: missing or malformed entry {error}') from error
    except ValueError as error:
        raise ValueError(f'hand_eye_file {path}: {error}') from error
    raise ValueError(f'hand_eye_file {path}: expected xyz + quaternion_xyzw, an easy_handeye2 "transformation", or '
                     f'a 4 x 4 "matrix"; found keys {sorted(data)}')


def hand_eye_from_parameters(xyz: Sequence[float], quaternion_xyzw: Sequence[float],
                             path: str = '') -> Optional[np.ndarray]:
    """``T_ee_optical`` from the file when `path` is given, else from the xyz + quaternion parameters."""
    if path:
        return load_hand_eye(Path(path))
    return hand_eye_matrix(xyz, quaternion_xyzw)
