"""GPU fast path for when tiny-cuda-nn is absent: Triton hash-grid kernels swapped into the model.

`accelerate(model)` changes no parameter, buffer or state-dict key; it only changes how the model computes:

* every nerfstudio `HashEncoding` that runs nerfstudio's torch implementation (nerfacto's
  ``mlp_base_grid``, the proposal networks' ``encoding``, the feature field's ``hash_encoding``) becomes a
  `FastHashEncoding`, whose forward runs the Triton kernels of `hashgrid` for CUDA inputs and nerfstudio's
  own torch code otherwise (CPU inputs, or Triton missing);
* the feature field renders its last hidden layer and applies the (linear) output layer once per ray instead
  of once per sample (``W @ sum_i w_i h_i + b * sum_i w_i`` equals ``sum_i w_i (W h_i + b)``), on CUDA only;
* nerfstudio pieces that synchronise host and device every step get same-valued replacements
  (`patches.patch_model`: PSNR metric, camera-optimiser metrics, the uniform sampler's bins), and the trainer
  makes its rays with `sample_rays` (pinhole cameras without nerfstudio's synchronising generic path).

The trainer also takes `adam_config` (torch's fused Adam on CUDA: no host sync in the AMP step; with
``lazy`` the hash tables skip entries without gradient, `lazy_adam.LazyHashAdam`).

Set ``F3RM_FAST=0`` to keep the reference path everywhere (e.g. to compare).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.field_components.encodings import HashEncoding

from .hashgrid import hash_encode, module_scalings, triton_available
from .lazy_adam import LazyHashAdam, mark_hash_table
from .patches import generate_rays, patch_model, swap_class

log = logging.getLogger(__name__)

__all__ = ['FastHashEncoding', 'FusedAdamOptimizerConfig', 'LazyHashAdamOptimizerConfig', 'accelerate', 'adam_config',
           'enabled', 'generate_rays', 'hash_encode', 'sample_rays']


def enabled() -> bool:
    """Tell whether the fast path may run here: Triton imports, CUDA exists and ``F3RM_FAST`` is not 0."""
    if os.environ.get('F3RM_FAST', '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return False
    return triton_available() and torch.cuda.is_available()


class FastHashEncoding(HashEncoding):
    """nerfstudio `HashEncoding` (torch implementation) whose CUDA forward runs the Triton kernels."""

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        """Encode ``[..., 3]`` positions in [0, 1] to ``[..., levels * features]``."""
        if self.tcnn_encoding is not None or not in_tensor.is_cuda or not getattr(self, 'fast', True):
            return super().forward(in_tensor)
        shape = in_tensor.shape[:-1]
        flat = in_tensor.reshape(-1, 3)
        out = hash_encode(flat, self.hash_table, module_scalings(self, flat.device), self.hash_table_size)
        return out.reshape(*shape, out.shape[-1])


def accelerate(model: torch.nn.Module, force: bool = False) -> int:
    """Swap the fast path into `model` in place; returns how many hash grids were swapped.

    Safe to call on a CPU model (the swapped modules fall back to the torch code for CPU inputs) and more
    than once. Does nothing when `enabled()` is false, unless `force` (used by tests under TRITON_INTERPRET).
    """
    if not (force or enabled()):
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is HashEncoding and module.tcnn_encoding is None and module.hash_table.numel() > 0:
            swap_class(module, FastHashEncoding)
        if isinstance(module, FastHashEncoding):
            mark_hash_table(module.hash_table)
            swapped += 1
        if hasattr(module, 'fast_render'):
            module.fast_render = True
    patched = patch_model(model)
    if swapped:
        log.info('fast path: %d hash grids run the Triton kernels on CUDA; %d sync-free patches', swapped, patched)
    return swapped


def sample_rays(cameras, camera_indices: torch.Tensor, coords: torch.Tensor):
    """Rays for ``[N, 1]`` camera indices and ``[N, 2]`` (y, x) pixel coordinates, as `Cameras.generate_rays`.

    Uses the synchronisation-free pinhole path when the fast path is enabled and the cameras allow it.
    """
    if enabled() and camera_indices.is_cuda:
        return generate_rays(cameras, camera_indices, coords)
    return cameras.generate_rays(camera_indices=camera_indices, coords=coords)


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """Adam config (nerfstudio's) for torch's fused CUDA Adam.

    One launch per group, and AMP's inf/NaN check without the host synchronisation that `GradScaler.step`
    needs for the unfused optimiser.
    """

    fused: bool = True


@dataclass
class LazyHashAdamOptimizerConfig(FusedAdamOptimizerConfig):
    """Fused Adam whose hash tables skip entries without gradient (`lazy_adam.LazyHashAdam`)."""

    _target: type = LazyHashAdam


def adam_config(lr: float, eps: float, device: torch.device, lazy: bool = False) -> AdamOptimizerConfig:
    """Adam optimizer config for `device`: fused on CUDA (when the fast path is enabled), plain otherwise.

    `lazy`: on CUDA, the hash tables skip entries whose gradient is zero (trainer.lazy_hash_adam).
    """
    if torch.device(device).type == 'cuda' and enabled():
        return (LazyHashAdamOptimizerConfig if lazy else FusedAdamOptimizerConfig)(lr=lr, eps=eps)
    return AdamOptimizerConfig(lr=lr, eps=eps)
