"""Several teachers distilled at once (F3RM's DINOCLIP): one feature head each, the first answers text.

`MultiTeacher` concatenates its parts' features along the channels, ``[B, h, w, D1 + D2 + ...]``, on one patch
grid: per axis the finest of the parts' grids, coarser grids resampled to it (bilinear; CLIP ViT-L/14@336 and
DINOv2 ViT-S/14@336 share the grid, so nothing is resampled there). The model splits the channels into its heads
(`F3RMConfig.feature_field.extra_heads`), each with its own loss weight. `dim` is the FIRST part's width: that
head is the model's ``feature`` output, the one text queries (`encode_text`, the first part's) are answered from.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import Teacher
from ..capture.frames import PosedFrame

log = logging.getLogger(__name__)


class LazyTeacher(Teacher):
    """A part restored from a checkpoint, built only when features are needed (a query needs only widths)."""

    def __init__(self, state: Dict[str, Any], build: Callable[[], Teacher], random_weights: bool):
        self._state = dict(state)
        self._build = build
        self._teacher: Optional[Teacher] = None
        self.name = str(state['name'])
        self.dim = int(state['dim'])
        self.patch_size = int(state.get('patch_size', 1))
        self.random_weights = bool(random_weights)

    @property
    def is_built(self) -> bool:
        """Whether the real teacher exists yet (a query never builds it)."""
        return self._teacher is not None

    def built(self) -> Teacher:
        """Return the real teacher (built on first use)."""
        if self._teacher is None:
            self._teacher = self._build()
        return self._teacher

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Return the real teacher's grid."""
        if 'grid' in self._state:
            return tuple(self._state['grid'])
        return self.built().grid_shape(height, width)

    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Return the real teacher's features."""
        return self.built().extract(frames)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Return the real teacher's text embeddings."""
        return self.built().encode_text(texts)

    def state(self) -> Dict[str, Any]:
        """Return the stored state."""
        return dict(self._state)


class MultiTeacher(Teacher):
    """Teachers distilled together, one head each; the first is the text head (see the module docstring)."""

    def __init__(self, parts: Sequence[Teacher]):
        if len(parts) < 2:
            raise ValueError('a multi-head teacher needs at least two teachers')
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise ValueError(f'each teacher may be distilled once, got {names}')
        self.parts: List[Teacher] = list(parts)
        self.name = '+'.join(names)
        self.dim = int(parts[0].dim)
        self.patch_size = int(parts[0].patch_size)
        self.answers_text = bool(getattr(parts[0], 'answers_text', True))
        self.random_weights = any(getattr(part, 'random_weights', False) for part in parts)

    @property
    def heads(self) -> List[Tuple[str, int]]:
        """``[(name, width)]`` of every part, the text head first."""
        return [(part.name, int(part.dim)) for part in self.parts]

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Per axis the finest grid of the parts."""
        grids = [part.grid_shape(height, width) for part in self.parts]
        return max(g[0] for g in grids), max(g[1] for g in grids)

    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Every part's features on the common grid, concatenated: ``[B, h, w, sum of widths]``."""
        if len(frames) == 0:
            raise ValueError('no frames to extract features from')
        grid = self.grid_shape(frames[0].height, frames[0].width)
        out = []
        for part in self.parts:
            features = part.extract(frames)
            if tuple(features.shape[1:3]) != grid:
                features = F.interpolate(features.permute(0, 3, 1, 2), size=grid, mode='bilinear',
                                         align_corners=False).permute(0, 2, 3, 1)
            out.append(features.float())
        return torch.cat(out, dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Return the first (text) part's embeddings."""
        return self.parts[0].encode_text(texts)

    def state(self) -> Dict[str, Any]:
        """Every part's state, in head order."""
        return {'name': self.name, 'dim': self.dim, 'parts': [part.state() for part in self.parts]}
