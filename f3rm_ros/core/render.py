"""Pictures people debug with: depth and similarity colour maps, feature PCA, overlays, PNG output."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from matplotlib import colormaps


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] → uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, colormap: str = 'turbo', lo: Optional[float] = None,
             hi: Optional[float] = None) -> np.ndarray:
    """Scalar image → RGB float [..., 3] with a matplotlib colour map (robust 1-99 % range by default)."""
    finite = values[np.isfinite(values)]
    lo = float(np.percentile(finite, 1)) if lo is None and finite.size else (lo or 0.0)
    hi = float(np.percentile(finite, 99)) if hi is None and finite.size else (hi if hi is not None else 1.0)
    scaled = np.clip((values - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return colormaps[colormap](np.nan_to_num(scaled))[..., :3]


def feature_pca(features: np.ndarray, basis: Optional[np.ndarray] = None) -> np.ndarray:
    """Features [H, W, D] → RGB [H, W, 3] in [0, 1] from their first three principal components."""
    flat = torch.from_numpy(features.reshape(-1, features.shape[-1])).float()
    mean = flat.mean(0)
    if basis is None:
        _, _, basis_t = torch.pca_lowrank(flat - mean, q=3, center=False)
    else:
        basis_t = torch.from_numpy(basis).float()
    projected = ((flat - mean) @ basis_t).numpy()
    lo, hi = np.percentile(projected, 2, axis=0), np.percentile(projected, 98, axis=0)
    return np.clip((projected - lo) / np.maximum(hi - lo, 1e-9), 0, 1).reshape(*features.shape[:2], 3)


def overlay(rgb: np.ndarray, similarity: np.ndarray, colormap: str = 'turbo', alpha: float = 0.6,
            lo: Optional[float] = None, hi: Optional[float] = None) -> np.ndarray:
    """Blend a similarity colour map over a float RGB image, stronger where similarity is high."""
    heat = colorize(similarity, colormap, lo, hi)
    lo = np.nanmin(similarity) if lo is None else lo
    hi = np.nanmax(similarity) if hi is None else hi
    weight = alpha * np.clip((similarity - lo) / max(hi - lo, 1e-9), 0, 1)[..., None]
    return rgb * (1 - weight) + heat * weight


def save_png(path: Path, rgb: np.ndarray) -> Path:
    """Write a float [0, 1] or uint8 RGB image as PNG (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb if rgb.dtype == np.uint8 else to_uint8(rgb)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {path}')
    return path


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate float RGB images of equal height horizontally with a thin white gap."""
    gap = np.ones((images[0].shape[0], 4, 3))
    parts = []
    for image in images:
        parts.extend([image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0), gap])
    return np.concatenate(parts[:-1], axis=1)
