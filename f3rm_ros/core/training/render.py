"""Rendering views in memory-bounded chunks, and the pictures people debug with (colour maps, PCA, overlays)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import torch
from matplotlib import colormaps


# Per-pixel outputs at most this wide stay on the device while a view renders (rgb, depth, similarity ...);
# wider ones (the 768-d feature) move to host memory chunk by chunk, in half precision.
DEVICE_OUTPUT_MAX_WIDTH = 4
PROBE_RAYS = 2048
CHUNK_MULTIPLE = 256


def rays_per_chunk(model, device: torch.device, memory_mb: float, max_rays: int, probe) -> int:
    """Rays per rendering chunk: as many as fit in `memory_mb` of GPU memory, at most `max_rays`.

    On CUDA the memory one ray costs is measured once per model and mode (features on or off) by rendering a
    probe chunk (`probe(n)` renders n rays) and reading the allocator's peak: no guess about the model's
    sizes. This resets CUDA's peak-memory statistics. On a CPU: `max_rays`.
    """
    if device.type != 'cuda':
        return max_rays
    key = ('features' if getattr(model, 'render_features', True) else 'colour', round(float(memory_mb), 3))
    cache = model.__dict__.setdefault('_chunk_rays', {})
    if key not in cache:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        probe(PROBE_RAYS)
        torch.cuda.synchronize(device)
        per_ray = max((torch.cuda.max_memory_allocated(device) - before) / PROBE_RAYS, 1.0)
        cache[key] = max(int(memory_mb * 2 ** 20 / per_ray) // CHUNK_MULTIPLE * CHUNK_MULTIPLE, CHUNK_MULTIPLE)
    return max(min(cache[key], max_rays), 1)


@torch.no_grad()
def render_camera(model, camera, memory_mb: float, max_rays: int,
                  names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Render one nerfstudio camera ([1]) in chunks; returns per-pixel outputs [H, W, C] (`names`, or all).

    Replaces nerfstudio's `get_outputs_for_camera` (one fixed chunk size, every output concatenated on the
    device: a 1920 x 1080 view's 768-d features alone are 6.4 GB there, twice while concatenated). Outputs up
    to `DEVICE_OUTPUT_MAX_WIDTH` wide stay on the device; wider ones go to host memory as float16 per chunk.
    Without 'feature' in `names` the feature head is not evaluated at all. The model's mode is left as it was.
    """
    bundle = camera.generate_rays(camera_indices=0, keep_shape=True)
    height, width = bundle.origins.shape[:2]
    flat = bundle.flatten()
    total = len(flat)
    device = flat.origins.device
    wanted = None if names is None else set(names)
    was_training, had_features = model.training, getattr(model, 'render_features', True)
    model.eval()
    model.render_features = wanted is None or any(n == 'similarity' or n.startswith('feature') for n in wanted)
    try:
        chunk = rays_per_chunk(model, device, memory_mb, max_rays, lambda n: model(flat[:min(n, total)]))
        parts: Dict[str, list] = {}
        for start in range(0, total, chunk):
            outputs = model(flat[start:start + chunk])
            for name, value in outputs.items():
                if not isinstance(value, torch.Tensor) or (wanted is not None and name not in wanted):
                    continue
                if value.shape[-1] > DEVICE_OUTPUT_MAX_WIDTH:
                    value = value.to('cpu', torch.float16)
                parts.setdefault(name, []).append(value)
    finally:
        model.train(was_training)
        model.render_features = had_features
    return {name: torch.cat(values).reshape(height, width, -1) for name, values in parts.items()}


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
