"""Synchronisation-free replacements for the few nerfstudio pieces that stall a CUDA training step.

A host-device synchronisation makes the Python thread wait until the GPU has finished everything queued, so the
CPU's work (kernel launches) and the GPU's work stop overlapping. torch's sync debug mode found these in one
step of nerfacto (nerfstudio 1.1.5): the general `Cameras.generate_rays` (``torch.unique``, ``is_jagged``,
masked assignment, a CPU epsilon copied to the device), `SpacedSampler` (a CPU ``linspace`` copied to the
device), torchmetrics' PSNR (a CPU count copied to the device) and the camera optimiser's metrics (``.cpu()``).
Each replacement below computes the same values with the same operations, on the device.

This module is also the one place where f3rm_ros touches nerfstudio's internals (written against nerfstudio
`SUPPORTED_NERFSTUDIO`; `check_nerfstudio_version` warns once on another version, naming what to re-test):

* `no_lpips`: nerfacto's constructor builds torchmetrics' LPIPS, which downloads AlexNet weights;
* `record_final_samples`: the nerfacto field's forward is wrapped to keep the final ray samples and densities
  (nerfacto keeps them only in training), so features render with the colour's own weights in eval too;
* `swap_class`: a `HashEncoding` instance becomes a `FastHashEncoding` (Triton forward, same state dict);
* the proposal sampler's private schedule (``_step``, ``_steps_since_update``, ``_anneal``) that the CUDA graphs
  of `graphs.py` replay around: `proposal_update_due`, `pin_proposal_schedule`, `force_proposal_update`,
  `mark_proposal_updated`, `route_anneal`, and `release_autograd_history` (nerfacto's cached
  ``_sample_locations`` / ``_density_before_activation``);
* the sync-free replacements below (`generate_rays`, `PSNR`, camera-optimiser metrics, `SpacedSampler` bins);
* `DepthRenderer`'s median depth without ``searchsorted`` (inductor's Triton code for a search of a constant
  fails to compile with torch 2.11 / Triton 3.6, which stopped ``trainer.compile`` on the gpu preset);
* `mlp_has_skip_connections`: the feature field renders its last hidden layer only through an MLP without
  skips, which nerfstudio's `MLP` keeps in the private ``_skip_connections``.

test/core/fast/: `test_ns_patches.py` and `test_fast_model.py` hold a test per patch against the installed nerfstudio.
"""
from __future__ import annotations

import logging
import types
from importlib import metadata
from typing import Callable, Optional
from unittest import mock

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import SpacedSampler
from nerfstudio.model_components.renderers import DepthRenderer

log = logging.getLogger(__name__)

SUPPORTED_NERFSTUDIO = ('1.1.5',)
PATCHES = ('no_lpips', 'record_final_samples', 'swap_class', 'proposal sampler schedule (graphs.py)',
           'generate_rays', 'PSNR', 'camera-optimiser metrics', 'SpacedSampler bins', 'median depth',
           'mlp_has_skip_connections')
_VERSION_CHECKED = [False]


def nerfstudio_version() -> str:
    """Return the installed nerfstudio's version ('' when its metadata is missing)."""
    try:
        return metadata.version('nerfstudio')
    except metadata.PackageNotFoundError:
        return ''


def check_nerfstudio_version(version: Optional[str] = None) -> bool:
    """Tell whether nerfstudio is a version these patches were written for; warn once (per process) if not."""
    version = nerfstudio_version() if version is None else version
    supported = version in SUPPORTED_NERFSTUDIO
    if not supported and not _VERSION_CHECKED[0]:
        log.warning('nerfstudio %s: f3rm_ros patches internals of nerfstudio %s (%s); run '
                    'test/core/fast/test_ns_patches.py and test/core/fast/test_fast_model.py before trusting results',
                    version or '(unknown)', ', '.join(SUPPORTED_NERFSTUDIO), ', '.join(PATCHES))
    _VERSION_CHECKED[0] = True
    return supported


class DeferredLPIPS(torch.nn.Module):
    """Stands in for nerfacto's LPIPS metric, whose constructor downloads AlexNet weights."""

    def forward(self, *args, **kwargs):
        """Refuse: the metric's weights are not available offline."""
        raise RuntimeError('LPIPS is disabled: its AlexNet weights are not available offline')


def no_lpips():
    """Context in which nerfacto's ``populate_modules`` builds `DeferredLPIPS` instead of torchmetrics' LPIPS."""
    return mock.patch('torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity', lambda **_: DeferredLPIPS())


def record_final_samples(field: torch.nn.Module, record: Callable) -> None:
    """Wrap nerfacto's ``field.forward`` so that every call hands ``(ray_samples, density)`` to `record`."""
    forward = field.forward

    def recording_forward(ray_samples, compute_normals=False):
        outputs = forward(ray_samples, compute_normals=compute_normals)
        record(ray_samples, outputs[FieldHeadNames.DENSITY])
        return outputs

    field.forward = recording_forward


def swap_class(module: torch.nn.Module, cls: type) -> None:
    """Make `module` an instance of `cls`, a subclass of its class adding no state (parameters stay)."""
    if not issubclass(cls, type(module)):
        raise TypeError(f'{cls.__name__} is not a subclass of {type(module).__name__}')
    module.__class__ = cls


def proposal_update_due(sampler) -> bool:
    """Whether the proposal sampler's next training call updates the proposal networks (nerfstudio's rule)."""
    return bool(sampler._steps_since_update > sampler.update_sched(sampler._step) or sampler._step < 10)


def _one(step) -> int:
    return 1


def pin_proposal_schedule(sampler) -> dict:
    """Freeze the sampler's update rule for a capture: `force_proposal_update` then picks each call's variant.

    The rule's inputs become constants (the step, and ``update_sched``, which calls ``numpy.interp``: torch.compile
    would split the graph there and recompile for every step). Returns what `restore_proposal_schedule` needs.
    """
    saved = {name: sampler.__dict__[name] for name in ('_step', '_steps_since_update', 'update_sched')}
    sampler._step = 10  # past nerfstudio's "always update before step 10"
    sampler.update_sched = _one
    return saved


def force_proposal_update(sampler, updated: bool) -> None:
    """Make the next call of a pinned sampler update (or not) the proposal networks."""
    sampler._steps_since_update = 2 if updated else 1  # the pinned rule: update when above 1


def restore_proposal_schedule(sampler, saved: dict) -> None:
    """Undo `pin_proposal_schedule` (and any forcing since)."""
    sampler.__dict__.update(saved)


def mark_proposal_updated(sampler) -> None:
    """Record an update as nerfstudio's sampler does after updating (a graph replay does not run that code)."""
    sampler._steps_since_update = 0


def route_anneal(sampler, anneal: torch.Tensor) -> None:
    """Make the sampler's anneal exponent the device scalar `anneal`, which nerfacto's callback then fills."""
    anneal.fill_(float(sampler._anneal))
    sampler.set_anneal = lambda value: anneal.fill_(float(value))
    sampler._anneal = anneal


def release_autograd_history(model: torch.nn.Module) -> None:
    """Drop the last step's cached sample positions and densities that nerfacto's field keeps (autograd history)."""
    for module in model.modules():
        for name in ('_sample_locations', '_density_before_activation'):
            if getattr(module, name, None) is not None:
                setattr(module, name, None)


def mlp_has_skip_connections(mlp: torch.nn.Module) -> bool:
    """Whether nerfstudio's `MLP` feeds its input to later layers (its ``skip_connections``, kept privately)."""
    return bool(mlp._skip_connections)


_EPS = np.finfo(float).eps * 4.0  # nerfstudio.cameras.camera_utils._EPS
_PINHOLE = [None, False]  # (cameras object, whether it is plain pinhole): checked once per Cameras object


def _plain_pinhole(cameras: Cameras) -> bool:
    """Tell (once per object: the check synchronises) whether every camera is an undistorted pinhole."""
    if _PINHOLE[0] is cameras:
        return _PINHOLE[1]
    plain = (cameras.ndim == 1 and cameras.times is None and not cameras.metadata
             and bool(torch.all(cameras.camera_type == CameraType.PERSPECTIVE.value))
             and (cameras.distortion_params is None or not bool(torch.any(cameras.distortion_params != 0))))
    _PINHOLE[0], _PINHOLE[1] = cameras, plain
    return plain


def generate_rays(cameras: Cameras, camera_indices: torch.Tensor, coords: torch.Tensor) -> RayBundle:
    """Make the rays nerfstudio's generate_rays makes for [N, 1] indices and [N, 2] coords, without a sync.

    Same arithmetic as nerfstudio's `Cameras._generate_rays_from_coords` for perspective cameras without
    distortion (the only kind the trainer makes); anything else goes to nerfstudio.
    """
    if not (camera_indices.dim() == 2 and camera_indices.shape[-1] == 1 and coords.dim() == 2
            and _plain_pinhole(cameras)):
        return cameras.generate_rays(camera_indices=camera_indices, coords=coords)
    camera_indices = camera_indices.to(torch.long)
    index = camera_indices[:, 0]
    y, x = coords[..., 0], coords[..., 1]
    fx, fy = cameras.fx[index, 0], cameras.fy[index, 0]
    cx, cy = cameras.cx[index, 0], cameras.cy[index, 0]
    coord = torch.stack([(x - cx) / fx, (y - cy) / fy], -1)
    coord_x_offset = torch.stack([(x - cx + 1) / fx, (y - cy) / fy], -1)
    coord_y_offset = torch.stack([(x - cx) / fx, (y - cy + 1) / fy], -1)
    coord_stack = torch.stack([coord, coord_x_offset, coord_y_offset], dim=0)  # (3, N, 2)
    directions_stack = torch.cat([coord_stack[..., :1].float(), -coord_stack[..., 1:].float(),
                                  torch.full_like(coord_stack[..., :1], -1.0, dtype=torch.float32)], dim=-1)
    c2w = cameras.camera_to_worlds[index]  # (N, 3, 4)
    rotation = c2w[..., :3, :3]
    directions_stack = torch.sum(directions_stack[..., None, :] * rotation, dim=-1)
    norm = torch.linalg.vector_norm(directions_stack, dim=-1, keepdim=True).clamp_min(_EPS)
    directions_stack = directions_stack / norm
    directions = directions_stack[0]
    dx = torch.sqrt(torch.sum((directions - directions_stack[1]) ** 2, dim=-1))
    dy = torch.sqrt(torch.sum((directions - directions_stack[2]) ** 2, dim=-1))
    return RayBundle(origins=c2w[..., :3, 3], directions=directions, pixel_area=(dx * dy)[..., None],
                     camera_indices=camera_indices, times=None, metadata={'directions_norm': norm[0].detach()})


class PSNR(torch.nn.Module):
    """``10 log10(1 / mse)`` for images in [0, 1]: torchmetrics' PeakSignalNoiseRatio(data_range=1) value."""

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """PSNR of the whole batch."""
        mse = torch.mean((preds.float() - target.float()) ** 2)
        return 10.0 * torch.log10(1.0 / mse)


def _camera_metrics(self, metrics_dict: dict) -> None:
    """`CameraOptimizer.get_metrics_dict` with the values left on the device."""
    if self.config.mode != 'off':
        trans = self.pose_adjustment[:, :3].detach().norm(dim=-1)
        rot = self.pose_adjustment[:, 3:].detach().norm(dim=-1)
        metrics_dict['camera_opt_translation_max'] = trans.max()
        metrics_dict['camera_opt_translation_mean'] = trans.mean()
        metrics_dict['camera_opt_rotation_mean'] = torch.rad2deg(rot.mean())
        metrics_dict['camera_opt_rotation_max'] = torch.rad2deg(rot.max())


def _spaced_samples(self, ray_bundle: Optional[RayBundle] = None, num_samples: Optional[int] = None) -> RaySamples:
    """`SpacedSampler.generate_ray_samples` with its bins made on the device (nerfstudio 1.1.5's code)."""
    assert ray_bundle is not None and ray_bundle.nears is not None and ray_bundle.fars is not None
    num_samples = num_samples or self.num_samples
    assert num_samples is not None
    num_rays = ray_bundle.origins.shape[0]
    bins = torch.linspace(0.0, 1.0, num_samples + 1, device=ray_bundle.origins.device)[None, ...]
    if self.train_stratified and self.training:
        if self.single_jitter:
            t_rand = torch.rand((num_rays, 1), dtype=bins.dtype, device=bins.device)
        else:
            t_rand = torch.rand((num_rays, num_samples + 1), dtype=bins.dtype, device=bins.device)
        bin_centers = (bins[..., 1:] + bins[..., :-1]) / 2.0
        bin_upper = torch.cat([bin_centers, bins[..., -1:]], -1)
        bin_lower = torch.cat([bins[..., :1], bin_centers], -1)
        bins = bin_lower + (bin_upper - bin_lower) * t_rand
    s_near, s_far = (self.spacing_fn(x) for x in (ray_bundle.nears, ray_bundle.fars))

    def spacing_to_euclidean_fn(x):
        return self.spacing_fn_inv(x * s_far + (1 - x) * s_near)

    euclidean_bins = spacing_to_euclidean_fn(bins)
    return ray_bundle.get_ray_samples(
        bin_starts=euclidean_bins[..., :-1, None], bin_ends=euclidean_bins[..., 1:, None],
        spacing_starts=bins[..., :-1, None], spacing_ends=bins[..., 1:, None],
        spacing_to_euclidean_fn=spacing_to_euclidean_fn,
    )


def _median_depth(self, weights: torch.Tensor, ray_samples: RaySamples, ray_indices=None, num_rays=None):
    """`DepthRenderer`'s median depth (nerfstudio 1.1.5) with the median's index counted instead of searched."""
    if ray_indices is not None and num_rays is not None:  # packed samples: nerfstudio's own answer (an error)
        return DepthRenderer.forward(self, weights, ray_samples, ray_indices, num_rays)
    steps = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
    cumulative_weights = torch.cumsum(weights[..., 0], dim=-1)
    # cumulative weights never decrease, so searchsorted(side='left') of 0.5 is the count of entries below 0.5
    # (for NaN-free weights; with a NaN the step's loss is NaN and AMP skips it anyway)
    median_index = (cumulative_weights < 0.5).sum(dim=-1, keepdim=True)
    median_index = torch.clamp(median_index, 0, steps.shape[-2] - 1)
    return torch.gather(steps[..., 0], dim=-1, index=median_index)


def patch_model(model: torch.nn.Module) -> int:
    """Install the replacements on `model`'s instances (no class is changed); returns how many."""
    count = 0
    psnr = getattr(model, 'psnr', None)
    if psnr is not None and type(psnr).__name__ == 'PeakSignalNoiseRatio' and getattr(psnr, 'data_range', 1.0) == 1.0:
        model.psnr = PSNR()
        count += 1
    optimizer = getattr(model, 'camera_optimizer', None)
    if optimizer is not None and hasattr(optimizer, 'pose_adjustment'):
        optimizer.get_metrics_dict = types.MethodType(_camera_metrics, optimizer)
        count += 1
    for module in model.modules():
        if (isinstance(module, SpacedSampler)
                and type(module).generate_ray_samples is SpacedSampler.generate_ray_samples):
            module.generate_ray_samples = types.MethodType(_spaced_samples, module)
            count += 1
        if (isinstance(module, DepthRenderer) and module.method == 'median'
                and type(module).forward is DepthRenderer.forward):
            module.forward = types.MethodType(_median_depth, module)
            count += 1
    return count
