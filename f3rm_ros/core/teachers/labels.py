"""Ground-truth teacher for images with per-pixel object ids (synthetic scenes, labelled datasets).

Every object NAME (lowercased, stripped) of the vocabulary (the label names plus ``'background'``) gets a
fixed unit vector; the vectors of a vocabulary are mutually orthonormal (columns of the Q factor of a seeded
Gaussian matrix) and assigned in sorted-name order, so the same vocabulary always gives the same vectors.
`extract` averages the per-pixel vectors over each patch of the grid (like CLIP's patch features, the
averages are not re-normalised); `encode_text` maps a vocabulary name to its vector and any other text to a
deterministic pseudo-random unit vector orthogonal to the whole vocabulary (when ``dim`` leaves room).
"""
from __future__ import annotations

import logging
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import Teacher
from ..capture.frames import PosedFrame

log = logging.getLogger(__name__)

BACKGROUND = 'background'
DEFAULT_SEED = 0


def normalize_name(text: str) -> str:
    """Return the form names are compared in: stripped, lowercased, inner whitespace collapsed."""
    return ' '.join(str(text).strip().lower().split())


def orthonormal_vectors(count: int, dim: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[count, dim]`` float64 orthonormal rows, a pure function of (count, dim, seed).

    Row ``i`` depends only on rows ``0..i`` of the seeded Gaussian draw (Gram-Schmidt order); signs are
    fixed by making ``diag(R)`` positive so the result does not depend on the LAPACK build.
    """
    if count > dim:
        raise ValueError(f'cannot make {count} orthonormal vectors in {dim} dimensions')
    gaussian = np.random.RandomState(seed).standard_normal((count, dim))  # RandomState: frozen stream
    q, r = np.linalg.qr(gaussian.T)  # q: [dim, count]
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return (q * signs).T


class LabelsTeacher(Teacher):
    """Label maps → patch grids of fixed per-name unit vectors; names → the same vectors.

    Args:
        labels: ``{object id: name}``; id 0 is always ``'background'`` (it may be omitted). Several ids may
            share a name (two mugs → one 'mug' vector).
        dim: vector width; must be at least the vocabulary size (names + background).
        patch_size: pixels per patch side; an ``H x W`` label map gives ``(H // p, W // p)`` patches.
        seed: seed of the vocabulary's orthonormal basis.
        vocabulary, vectors: a stored vocabulary and its ``[V, dim]`` vectors (see `from_state`).
    """

    name = 'labels'

    def __init__(self, labels: Mapping[int, str], dim: int = 768, patch_size: int = 14,
                 seed: int = DEFAULT_SEED, vocabulary: Optional[Sequence[str]] = None,
                 vectors: Optional[Sequence[Sequence[float]]] = None):
        if patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got {patch_size}')
        self.dim = int(dim)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.labels: Dict[int, str] = {}
        for key, value in dict(labels).items():
            object_id, label = int(key), normalize_name(value)
            if object_id < 0:
                raise ValueError(f'object ids must be >= 0, got {object_id}')
            if not label:
                raise ValueError(f'object id {object_id} has an empty name')
            if object_id == 0 and label != BACKGROUND:
                raise ValueError(f'id 0 is the background, but labels name it {value!r}; '
                                 f'give objects ids >= 1')
            self.labels[object_id] = label
        self.labels[0] = BACKGROUND
        self.vocabulary: List[str] = sorted(set(self.labels.values()))
        if vocabulary is not None:  # a stored vocabulary (may hold names this scene does not use)
            stored = sorted({normalize_name(v) for v in vocabulary})
            missing = sorted(set(self.vocabulary) - set(stored))
            if missing:
                raise ValueError(f'labels {missing} are not in the stored vocabulary {stored}')
            self.vocabulary = stored
        if self.dim < len(self.vocabulary):
            raise ValueError(f'labels teacher: labels_dim={self.dim} is smaller than the vocabulary '
                             f'({len(self.vocabulary)} names incl. background: {self.vocabulary}); '
                             f'set teacher.labels_dim >= {len(self.vocabulary)}')
        if vectors is None:
            table = orthonormal_vectors(len(self.vocabulary), self.dim, self.seed)
        else:
            table = np.asarray(vectors, dtype=np.float64)
            if table.shape != (len(self.vocabulary), self.dim):
                raise ValueError(f'stored vectors have shape {table.shape}, expected '
                                 f'{(len(self.vocabulary), self.dim)}')
        self.vectors = torch.from_numpy(table).float()                     # [V, dim]
        self.index = {label: i for i, label in enumerate(self.vocabulary)}
        self._id_lookup = np.full(max(self.labels) + 1, -1, dtype=np.int64)  # object id → vocabulary row
        for object_id, label in self.labels.items():
            self._id_lookup[object_id] = self.index[label]

    @classmethod
    def from_state(cls, state: Dict[str, Any], labels: Optional[Mapping[int, str]] = None) -> 'LabelsTeacher':
        """Rebuild a teacher from `state()`: same vocabulary, same vectors.

        `labels` may remap ids (e.g. a new scene of the same objects) as long as every name is in the stored
        vocabulary; by default the stored id mapping is used.
        """
        stored = {int(k): v for k, v in state['labels'].items()}
        return cls(labels or stored, dim=int(state['dim']), patch_size=int(state['patch_size']),
                   seed=int(state.get('seed', DEFAULT_SEED)), vocabulary=state.get('vocabulary'),
                   vectors=state.get('vectors'))

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """``(H // patch_size, W // patch_size)``, at least 1x1."""
        return max(1, height // self.patch_size), max(1, width // self.patch_size)

    def vector(self, label: str) -> torch.Tensor:
        """Return the unit vector of a vocabulary name (KeyError otherwise)."""
        return self.vectors[self.index[normalize_name(label)]]

    @torch.no_grad()
    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Per-patch means of the frames' per-pixel label vectors, ``[B, h, w, dim]`` float32."""
        if len(frames) == 0:
            raise ValueError('no frames to extract features from')
        maps = []
        for i, frame in enumerate(frames):
            label_map = getattr(frame, 'labels', None)
            if label_map is None:
                name = getattr(frame, 'name', '') or 'unnamed'
                raise ValueError(f'frame {i} ({name}) has no label map: the labels teacher needs per-pixel '
                                 f'object ids; use teacher.name: clip for plain images')
            maps.append(np.asarray(label_map))
        shapes = {m.shape for m in maps}
        if len(shapes) > 1:
            raise ValueError(f'label maps of one call must share a size, got {sorted(shapes)}')
        return torch.stack([self.pool(m) for m in maps])

    def pool(self, label_map: np.ndarray) -> torch.Tensor:
        """One ``H x W`` id map → ``[h, w, dim]``: pixel (y, x) falls in patch (y * h // H, x * w // W)."""
        if label_map.ndim != 2:
            raise ValueError(f'label map must be HxW object ids, got shape {label_map.shape}')
        if not np.issubdtype(label_map.dtype, np.integer):
            raise ValueError(f'label map must hold integer ids, got {label_map.dtype}')
        height, width = label_map.shape
        grid_h, grid_w = self.grid_shape(height, width)
        ids = label_map.astype(np.int64)
        bad = (ids < 0) | (ids >= len(self._id_lookup))
        rows = np.where(bad, -1, self._id_lookup[np.clip(ids, 0, len(self._id_lookup) - 1)])
        if (rows < 0).any():
            unknown = sorted(np.unique(ids[rows < 0]).tolist())
            raise ValueError(f'label map has object ids {unknown[:20]} that are not in the labels '
                             f'{sorted(self.labels)}')
        cell_y = np.arange(height) * grid_h // height
        cell_x = np.arange(width) * grid_w // width
        cells = cell_y[:, None] * grid_w + cell_x[None, :]
        vocabulary = len(self.vocabulary)
        counts = np.bincount((cells * vocabulary + rows).ravel(), minlength=grid_h * grid_w * vocabulary)
        counts = counts.reshape(grid_h * grid_w, vocabulary).astype(np.float32)
        fractions = torch.from_numpy(counts / counts.sum(axis=1, keepdims=True))
        return (fractions @ self.vectors).reshape(grid_h, grid_w, self.dim)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Vocabulary names → their vectors; other texts → fixed pseudo-random unit vectors (crc32-seeded)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        for i, text in enumerate(texts):
            label = normalize_name(text)
            if label in self.index:
                out[i] = self.vectors[self.index[label]]
            else:
                out[i] = self._unknown_vector(label)
        return out

    def _unknown_vector(self, label: str) -> torch.Tensor:
        rng = np.random.RandomState(zlib.crc32(label.encode('utf-8')))
        vector = rng.standard_normal(self.dim)
        basis = self.vectors.double().numpy()                    # [V, dim], orthonormal rows
        if self.dim > len(self.vocabulary):
            vector = vector - basis.T @ (basis @ vector)         # unrelated to every vocabulary name
        return torch.from_numpy(vector / np.linalg.norm(vector)).float()

    def state(self) -> Dict[str, Any]:
        """Vocabulary, id mapping, widths and the vectors themselves (JSON- and torch.save-able)."""
        return {'name': self.name, 'dim': self.dim, 'patch_size': self.patch_size, 'seed': self.seed,
                'labels': {str(k): v for k, v in sorted(self.labels.items())},
                'vocabulary': list(self.vocabulary),
                'vectors': self.vectors.tolist()}
