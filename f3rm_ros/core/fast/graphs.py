"""CUDA graphs of the training step's forward, losses and backward (fast path, CUDA only).

At 4096 rays a step's GPU work takes about 10 ms, but launching its ~1100 kernels one by one from Python takes
about 30 ms: the step is CPU-bound (docs/fast-path.md). Replaying a captured graph launches them all at once. What
changes from step to step stays outside the graph, or lives in device memory that the graph reads:

* rays and targets are sampled eagerly and copied into static input tensors;
* the proposal sampler's anneal exponent is a device scalar, filled by nerfacto's own callback;
* nerfstudio updates the proposal networks only on some steps (its ``update_sched``), computing their
  densities under ``no_grad`` otherwise: one graph per variant, sharing one memory pool. On a step without
  update the proposal optimiser does not step, as in eager mode, where those gradients are None;
* gradients are the graphs' outputs: each capture starts without gradients, so autograd writes them into
  tensors of the graphs' memory pool (no zeroing, no accumulation into other buffers), which every replay
  overwrites and `run` hands to the parameters; the optimiser step (fused Adam), the learning-rate schedule
  and the AMP scale update run eagerly: a few launches.

With ``compile`` the forward and losses are first compiled by torch.compile (inductor): the graphs then replay
its fused kernels instead of nerfacto's ~1100 small ones. Compilation happens in the warm-up before each capture
(once per variant; inductor's cache on disk makes later processes start faster).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RayBundle

from .patches import (force_proposal_update, mark_proposal_updated, pin_proposal_schedule, proposal_update_due,
                      release_autograd_history, restore_proposal_schedule, route_anneal)

log = logging.getLogger(__name__)

# nerfstudio's sampler always updates the proposal networks before its step 10; capture after that, once both
# variants ran eagerly (Triton kernels compiled, lazy state initialised).
CAPTURE_FROM_STEP = 12
WARMUP_ITERATIONS = 2


class GraphedTrainStep:
    """Forward + losses + backward of `model` replayed from CUDA graphs; see the module docstring.

    Args:
        model: the `F3RMModel` in training mode, on CUDA.
        grad_scaler: the trainer's AMP scaler (its scale tensor is read by the graphs).
        use_amp: autocast to fp16 as the eager step does.
        compile: compile the forward and losses with torch.compile before capturing them.
    """

    def __init__(self, model, grad_scaler, use_amp: bool, compile: bool = False):
        self.model = model
        self._losses = compiled(model_losses) if compile else model_losses
        self.grad_scaler = grad_scaler
        self.use_amp = use_amp
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.sampler = model.proposal_sampler
        device = self.parameters[0].device
        self.anneal = torch.zeros((), device=device)
        # nerfacto's anneal callback calls set_anneal(float): route it into the scalar the graphs read
        route_anneal(self.sampler, self.anneal)
        self.inputs: Optional[Dict[str, torch.Tensor]] = None
        self.batch: Optional[Dict[str, torch.Tensor]] = None
        # per variant: the graph, its loss terms and its gradients (None where the variant gives none)
        self.graphs: Dict[bool, Tuple[torch.cuda.CUDAGraph, Dict[str, torch.Tensor],
                                      List[Optional[torch.Tensor]]]] = {}
        self.pool = None
        self.stream = torch.cuda.Stream(device=device)  # warm-up and capture run here, replays anywhere

    @property
    def compiled(self) -> bool:
        """Whether the captured step runs compiled code (False after a failed compile fell back)."""
        return self._losses is not model_losses

    # ---- inputs

    def _bind(self, ray_bundle: RayBundle, batch: Dict[str, torch.Tensor]) -> None:
        """Copy this step's rays and targets into the static tensors the graphs read."""
        fields = {'origins': ray_bundle.origins, 'directions': ray_bundle.directions,
                  'pixel_area': ray_bundle.pixel_area, 'camera_indices': ray_bundle.camera_indices}
        fields.update({f'metadata.{k}': v for k, v in (ray_bundle.metadata or {}).items()})
        if self.inputs is None:
            self.inputs = {k: v.detach().clone() for k, v in fields.items()}
            self.batch = {k: v.detach().clone() for k, v in batch.items()}
            return
        if fields.keys() != self.inputs.keys() or batch.keys() != self.batch.keys():
            raise RuntimeError('the ray bundle or batch changed its fields: graphs cannot replay it')
        for name, value in fields.items():
            self.inputs[name].copy_(value)
        for name, value in batch.items():
            self.batch[name].copy_(value)

    def _bundle(self) -> RayBundle:
        """Wrap the static tensors in a fresh RayBundle (nerfstudio reassigns bundle attributes in forward)."""
        metadata = {k.split('.', 1)[1]: v for k, v in self.inputs.items() if k.startswith('metadata.')}
        return RayBundle(origins=self.inputs['origins'], directions=self.inputs['directions'],
                         pixel_area=self.inputs['pixel_area'], camera_indices=self.inputs['camera_indices'],
                         metadata=metadata)

    # ---- the captured work

    def _forward_backward(self) -> Dict[str, torch.Tensor]:
        losses, psnr = self._losses(self.model, self._bundle(), self.batch, self.use_amp)
        total = sum(losses.values())
        self.grad_scaler.scale(total).backward()
        return step_stats(losses, total, psnr)

    def _warm_up_step(self) -> None:
        self._drop_gradients()
        try:
            self._forward_backward()
        except torch._dynamo.exc.TorchDynamoException as error:  # compiling happens at a variant's first call
            if not self.compiled:
                raise
            reason = str(error).strip().splitlines()
            log.warning('torch.compile failed (%s); training goes on with the uncompiled step',
                        reason[0] if reason else type(error).__name__)
            self._losses = model_losses
            self._drop_gradients()
            self._forward_backward()

    def will_update(self) -> bool:
        """Whether this step updates the proposal networks (nerfstudio's ProposalNetworkSampler rule)."""
        return proposal_update_due(self.sampler)

    def _force_variant(self, updated: bool) -> None:
        force_proposal_update(self.sampler, updated)

    def _release_autograd_history(self) -> None:
        # nerfacto's field keeps the last step's sample positions and pre-activation densities, whose autograd
        # history keeps the parameters' AccumulateGrad nodes alive on the stream of the eager steps: backward on
        # the capture stream would then synchronise with it, which invalidates the capture.
        release_autograd_history(self.model)

    def _capture(self, updated: bool) -> None:
        saved = pin_proposal_schedule(self.sampler)
        try:
            self._release_autograd_history()
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):  # warm-up on the capture stream, as the CUDA-graph docs ask
                for _ in range(WARMUP_ITERATIONS):
                    self._force_variant(updated)
                    self._warm_up_step()
            torch.cuda.current_stream().wait_stream(self.stream)
            self._force_variant(updated)
            self._drop_gradients()
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (a query node evaluating the field) may keep using the GPU meanwhile
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode='thread_local'):
                stats = self._forward_backward()
        finally:
            restore_proposal_schedule(self.sampler, saved)
        self.pool = graph.pool()
        self.graphs[updated] = (graph, stats, [p.grad for p in self.parameters])
        log.info('captured the training step as a CUDA graph (proposal update: %s)', updated)

    def _drop_gradients(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    # ---- one step

    def run(self, ray_bundle: RayBundle, batch: Dict[str, torch.Tensor], optimizers) -> Dict[str, torch.Tensor]:
        """Forward, backward and optimiser step for this batch; returns detached loss terms (copies)."""
        self._bind(ray_bundle, batch)
        updated = self.will_update()
        if updated not in self.graphs:
            self._capture(updated)
        graph, stats, gradients = self.graphs[updated]
        graph.replay()
        if updated:
            mark_proposal_updated(self.sampler)
        for parameter, gradient in zip(self.parameters, gradients):
            parameter.grad = gradient  # None for the proposal networks on a step without update
        optimizers.optimizer_scaler_step_all(self.grad_scaler)
        return {name: value.clone() for name, value in stats.items()}


def model_losses(model, bundle: RayBundle, batch: Dict[str, torch.Tensor], use_amp: bool):
    """Forward and losses of one training batch (what the graphs capture): ``(losses dict, psnr)``."""
    with torch.autocast(device_type=bundle.origins.device.type, enabled=use_amp, cache_enabled=False):
        outputs = model(bundle)
        metrics = model.get_metrics_dict(outputs, batch)
        losses = model.get_loss_dict(outputs, batch, metrics)
    return losses, metrics['psnr']


def step_stats(losses: Dict[str, torch.Tensor], total: torch.Tensor, psnr: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Detached loss terms, their sum ('loss') and 'psnr' of one step (what a training step returns)."""
    stats = {name: value.detach() for name, value in losses.items()}
    stats['loss'] = total.detach()
    stats['psnr'] = psnr.detach()
    return stats


def compiled(function, backend: str = 'inductor'):
    """Return `function` compiled by torch.compile for a capture: static shapes, eager's random numbers.

    fallback_random: the stratified samplers draw what eager steps draw, so compiling changes the speed only.
    """
    options = {'fallback_random': True} if backend == 'inductor' else None
    return torch.compile(function, backend=backend, dynamic=False, options=options)
