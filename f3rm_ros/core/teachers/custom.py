"""Custom per-frame feature maps from files (F3RM's robot features of any width), distilled like CLIP's.

Format: each frame of the dataset's ``transforms.json`` may name a feature file with ``feature_file_path``
(relative to the dataset folder, like ``file_path``)::

    {"file_path": "images/frame_00000.png", "feature_file_path": "features/frame_00000.npy", ...}

The file is a NumPy ``.npy`` array ``[h, w, C]`` (channels last, float16 or float32, loaded with
``allow_pickle=False``): one C-vector per cell of an ``h x w`` grid laid over the image as it is stored in the
dataset, pixel ``(y, x)`` in cell ``(y * h // H, x * w // W)`` (the other teachers' rule). Any C and any grid are
accepted; the first frame's file sets both. A file of another grid is resampled (bilinear) to it; another C, a
non-finite value or a missing file is refused with the frame named. Features are distilled as they are (not
normalised); text queries need a text teacher beside them (``clip+custom``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import Teacher
from ..capture.frames import PosedFrame

log = logging.getLogger(__name__)

DATASET_KEY = 'feature_file_path'


def read_feature_file(path: str) -> np.ndarray:
    """Load one ``[h, w, C]`` feature file (float32), refusing anything else with the path named."""
    path = str(path)
    if not path:
        raise ValueError('no feature file')
    if not Path(path).is_file():
        raise FileNotFoundError(f'custom feature file not found: {path}')
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f'{path} is not a .npy feature array ([h, w, C] float): {error}') from error
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f'{path}: custom features must be a float array [h, w, C], got {array.shape} {array.dtype}')
    if not np.isfinite(array).all():
        raise ValueError(f'{path}: custom features hold NaN or infinite values')
    return array.astype(np.float32)


class CustomTeacher(Teacher):
    """Per-frame feature maps read from each frame's `PosedFrame.feature_path`.

    Args:
        dim: channels C of every file.
        grid: ``(h, w)`` every frame's features come out at.
        patch_size: approximate pixels per cell (information only).
    """

    name = 'custom'
    answers_text = False

    def __init__(self, dim: int, grid: Tuple[int, int], patch_size: int = 1):
        if dim < 1 or min(grid) < 1:
            raise ValueError(f'custom features need C >= 1 and a grid of at least 1x1, got {dim}, {grid}')
        self.dim = int(dim)
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_size = max(1, int(patch_size))

    @classmethod
    def probe(cls, frames: Optional[Sequence[PosedFrame]]) -> 'CustomTeacher':
        """Size the teacher from the first frame that names a feature file."""
        first = next((f for f in frames or () if getattr(f, 'feature_path', '')), None)
        if first is None:
            raise ValueError(f'the custom teacher needs frames whose transforms.json entries name a feature file '
                             f'({DATASET_KEY!r}); none of the {len(frames or ())} frames does')
        array = read_feature_file(first.feature_path)
        teacher = cls(array.shape[2], array.shape[:2], round(first.height / array.shape[0]))
        log.info('custom teacher: %d-d features on a %dx%d grid (from %s)', teacher.dim, *teacher.grid,
                 first.feature_path)
        return teacher

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> 'CustomTeacher':
        """Rebuild from `state()` (no files needed: a query only needs the widths)."""
        return cls(int(state['dim']), tuple(state['grid']), int(state.get('patch_size', 1)))

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Return the grid of the first feature file, whatever the image size."""
        return self.grid

    @torch.no_grad()
    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Return the frames' feature files as ``[B, h, w, C]`` float32 (resampled to `grid` where theirs differs)."""
        if len(frames) == 0:
            raise ValueError('no frames to extract features from')
        out = []
        for i, frame in enumerate(frames):
            path = getattr(frame, 'feature_path', '')
            if not path:
                raise ValueError(f'frame {i} ({frame.name or "unnamed"}) names no feature file ({DATASET_KEY!r} '
                                 'in transforms.json): the custom teacher needs one per frame')
            features = torch.from_numpy(read_feature_file(path))
            if features.shape[2] != self.dim:
                raise ValueError(f'{path}: {features.shape[2]} channels, but the first file had {self.dim}')
            if tuple(features.shape[:2]) != self.grid:
                features = F.interpolate(features.permute(2, 0, 1)[None], size=self.grid, mode='bilinear',
                                         align_corners=False)[0].permute(1, 2, 0)
            out.append(features)
        return torch.stack(out)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Refuse text: custom features have no text encoder (ValueError saying what to distil for text queries)."""
        raise ValueError('the custom teacher has no text encoder: distil clip+custom (or labels+custom) to ask in '
                         'words')

    def state(self) -> Dict[str, Any]:
        """Return the width and grid."""
        return {'name': self.name, 'dim': self.dim, 'grid': list(self.grid), 'patch_size': self.patch_size}
