"""What the ViT teachers (CLIP, DINO) share: the patch grid of an image, batching, and pixel preprocessing.

A subclass sets `image_size`, `patch_size`, `batch_size`, `device`, `mean`, `std` ([1, 3, 1, 1] tensors) and
implements `_dense(pixels, grid)`: normalised pixels ``[B, 3, gh*p, gw*p]`` -> features ``[B, gh, gw, dim]``.
"""
from __future__ import annotations

import abc
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..capture.frames import PosedFrame
from . import Teacher


class VitPatchTeacher(Teacher):
    """A teacher whose features are a ViT's patch tokens on a grid of whole patches."""

    image_size: int
    patch_size: int
    batch_size: int

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Patch grid for an image: shorter side → `image_size`, both sides rounded to whole patches."""
        if height < 1 or width < 1:
            raise ValueError(f'empty image {height}x{width}')
        scale = self.image_size / min(height, width)
        return (max(1, int(round(height * scale / self.patch_size))),
                max(1, int(round(width * scale / self.patch_size))))

    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Dense features ``[B, h, w, dim]`` (float32, CPU) of the frames' RGB images."""
        return self.extract_images([frame.image for frame in frames])

    @torch.no_grad()
    def extract_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Dense features ``[B, h, w, dim]`` (float32, CPU) of HxWx3 uint8 RGB images of one patch grid."""
        if len(images) == 0:
            raise ValueError('no images to extract features from')
        grids = {self.grid_shape(*np.asarray(image).shape[:2]) for image in images}
        if len(grids) > 1:
            raise ValueError(f'images of one call must share a patch grid, got {sorted(grids)}; '
                             f'extract them in separate calls')
        grid = grids.pop()
        outputs: List[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.cat([self._preprocess(image, grid) for image in images[start:start + self.batch_size]])
            outputs.append(self._dense(pixels, grid).float().cpu())
        return torch.cat(outputs)

    @abc.abstractmethod
    def _dense(self, pixels: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Features ``[B, gh, gw, dim]`` of normalised pixels ``[B, 3, gh*p, gw*p]``."""

    @abc.abstractmethod
    def _pixel_dtype(self) -> torch.dtype:
        """Return the dtype the model's first layer takes."""

    def _preprocess(self, image: np.ndarray, grid: Tuple[int, int]) -> torch.Tensor:
        """HxWx3 uint8 RGB → normalised ``[1, 3, gh*p, gw*p]`` on the model's device and dtype."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'image must be HxWx3 uint8 RGB, got {image.shape} {image.dtype}')
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        size = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode='bicubic', align_corners=False, antialias=True).clamp_(0, 1)
        return ((pixels - self.mean) / self.std).to(self._pixel_dtype())
