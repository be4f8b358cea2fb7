"""CUDA graphs of the training step's forward, losses and backward (fast path, CUDA only).

At 4096 rays a step's GPU work takes about 10 ms, but launching its ~1100 kernels one by one from Python takes
about 30 ms: the step is CPU-bound (PERF.md). Replaying a captured graph launches them all at once. What
changes from step to step stays outside the graph, or lives in device memory that the graph reads:

* rays and targets are sampled eagerly and copied into static input tensors;
* the proposal sampler's anneal exponent is a device scalar, filled by nerfacto's own callback;
* nerfstudio updates the proposal networks only on some steps (its ``update_sched``), computing their
  densities under ``no_grad`` otherwise: one graph per variant, sharing one memory pool. On a step without
  update the proposal optimiser does not step, as in eager mode, where those gradients are None;
* gradients live in persistent buffers that each replay zeroes and fills; the optimiser step (fused Adam),
  the learning-rate schedule and the AMP scale update run eagerly: a few launches.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RayBundle

from .patches import (force_proposal_update, mark_proposal_updated, proposal_update_due, release_autograd_history,
                      restore_proposal_counter, route_anneal)

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
        proposal_parameters: the parameters nerfstudio leaves without gradient on steps without update.
    """

    def __init__(self, model, grad_scaler, use_amp: bool, proposal_parameters: Iterable[torch.nn.Parameter]):
        self.model = model
        self.grad_scaler = grad_scaler
        self.use_amp = use_amp
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        proposal_ids = {id(p) for p in proposal_parameters}
        self.proposal_parameters = [p for p in self.parameters if id(p) in proposal_ids]
        self.gradients = [torch.zeros_like(p) for p in self.parameters]
        self.sampler = model.proposal_sampler
        device = self.gradients[0].device
        self.anneal = torch.zeros((), device=device)
        # nerfacto's anneal callback calls set_anneal(float): route it into the scalar the graphs read
        route_anneal(self.sampler, self.anneal)
        self.inputs: Optional[Dict[str, torch.Tensor]] = None
        self.batch: Optional[Dict[str, torch.Tensor]] = None
        self.graphs: Dict[bool, Tuple[torch.cuda.CUDAGraph, Dict[str, torch.Tensor]]] = {}
        self.pool = None
        self.stream = torch.cuda.Stream(device=device)  # warm-up and capture run here, replays anywhere

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
        torch._foreach_zero_(self.gradients)
        with torch.autocast(device_type='cuda', enabled=self.use_amp, cache_enabled=False):
            outputs = self.model(self._bundle())
            metrics = self.model.get_metrics_dict(outputs, self.batch)
            losses = self.model.get_loss_dict(outputs, self.batch, metrics)
        total = sum(losses.values())
        self.grad_scaler.scale(total).backward()
        stats = {name: value.detach() for name, value in losses.items()}
        stats['loss'] = total.detach()
        stats['psnr'] = metrics['psnr'].detach()
        return stats

    def _will_update(self) -> bool:
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
        saved = force_proposal_update(self.sampler, updated)
        self._attach_gradients()
        self._release_autograd_history()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):  # warm-up on the capture stream, as the CUDA-graph docs ask
            for _ in range(WARMUP_ITERATIONS):
                self._force_variant(updated)
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(self.stream)
        self._force_variant(updated)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a query node evaluating the field) may keep using the GPU meanwhile
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode='thread_local'):
            stats = self._forward_backward()
        self.pool = graph.pool()
        restore_proposal_counter(self.sampler, saved)
        self.graphs[updated] = (graph, stats)
        log.info('captured the training step as a CUDA graph (proposal update: %s)', updated)

    def _attach_gradients(self) -> None:
        # eager code (zero_grad) may have dropped them; the graphs write into these buffers
        for parameter, gradient in zip(self.parameters, self.gradients):
            parameter.grad = gradient

    # ---- one step

    def run(self, ray_bundle: RayBundle, batch: Dict[str, torch.Tensor], optimizers) -> Dict[str, torch.Tensor]:
        """Forward, backward and optimiser step for this batch; returns detached loss terms (copies)."""
        self._bind(ray_bundle, batch)
        updated = self._will_update()
        if updated not in self.graphs:
            self._capture(updated)
        graph, stats = self.graphs[updated]
        graph.replay()
        if updated:
            mark_proposal_updated(self.sampler)
        self._attach_gradients()
        if not updated:
            for parameter in self.proposal_parameters:
                parameter.grad = None
        optimizers.optimizer_scaler_step_all(self.grad_scaler)
        return {name: value.clone() for name, value in stats.items()}


def proposal_parameters(model) -> List[torch.nn.Parameter]:
    """Parameters of the proposal networks (those nerfstudio trains only on update steps)."""
    return list(model.proposal_networks.parameters())
