"""Adam that leaves hash-table entries without gradient alone (trainer.lazy_hash_adam).

A training step's samples reach a fraction of a hash table's rows (the coarse levels hold fewer vertices than
table rows; the fine ones are sparse per step). Dense Adam still reads and writes every entry's parameter and
both moments, 28 bytes per entry over ~70M entries, and keeps moving untouched entries with stale momentum.
Instant-NGP skips entries whose gradient is exactly zero; here with TensorFlow's LazyAdam rule: a skipped entry
keeps its parameter and moments, and bias correction uses the optimiser's step. Every other parameter takes
torch's fused Adam, as before.

Hash tables are the parameters `mark_hash_table` flagged (`accelerate` flags the Triton grids' tables). The
kernel needs Triton: CUDA, or the CPU under ``TRITON_INTERPRET=1`` (tests).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .hashgrid import tl, triton

_FLAG = '_f3rm_hash_table'
BLOCK = 1024


def mark_hash_table(parameter: torch.nn.Parameter) -> None:
    """Flag `parameter` as a hash table whose untouched entries `LazyHashAdam` skips."""
    setattr(parameter, _FLAG, True)


def is_hash_table(parameter: torch.Tensor) -> bool:
    """Tell whether `mark_hash_table` flagged `parameter`."""
    return getattr(parameter, _FLAG, False)


if triton is not None:

    @triton.jit
    def _lazy_adam_kernel(p_ptr, g_ptr, m_ptr, v_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, beta1, beta2, eps,
                          log2_beta1, log2_beta2, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
                          BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        # bias corrections from the step count on the device (it does not advance on a step AMP skips)
        step = tl.load(step_ptr + offs * 0)
        bias1 = 1.0 - tl.exp2(step * log2_beta1)
        bias2_sqrt = tl.sqrt(1.0 - tl.exp2(step * log2_beta2))
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        touched = mask & (g != 0.0)
        if HAS_INF:  # AMP found an inf/NaN somewhere: the whole step is skipped, as torch's fused Adam does
            touched = touched & (tl.load(inf_ptr + offs * 0) == 0.0)  # the flag, broadcast to the block
        if HAS_SCALE:  # gradients still carry AMP's loss scale
            g = g / tl.load(scale_ptr)
        m = tl.load(m_ptr + offs, mask=touched, other=0.0)
        v = tl.load(v_ptr + offs, mask=touched, other=0.0)
        p = tl.load(p_ptr + offs, mask=touched, other=0.0)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - (lr / bias1) * m / (tl.sqrt(v) / bias2_sqrt + eps)
        tl.store(m_ptr + offs, m, mask=touched)
        tl.store(v_ptr + offs, v, mask=touched)
        tl.store(p_ptr + offs, p, mask=touched)


class LazyHashAdam(torch.optim.Adam):
    """torch's Adam for every parameter except flagged hash tables, which skip entries with zero gradient.

    Supports what nerfstudio's Adam config sets (lr, eps, betas, no weight decay, no amsgrad) and AMP through
    `torch.amp.GradScaler` (the scaler hands ``grad_scale`` / ``found_inf`` to the step, as for fused Adam).
    State keys are torch Adam's (``step``, ``exp_avg``, ``exp_avg_sq``): checkpoints load either way.
    """

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as torch's Adam does, refusing the settings the lazy kernel does not implement."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group['weight_decay'] or group['amsgrad'] or group['maximize']:
            raise ValueError('LazyHashAdam supports neither weight decay, amsgrad nor maximize')

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step: torch's for the dense parameters, the lazy kernel for the hash tables."""
        loss = None
        if closure is not None:  # before the gradients are read
            with torch.enable_grad():
                loss = closure()
        lazy: List[Tuple[dict, torch.Tensor, torch.Tensor]] = [
            (group, p, p.grad) for group in self.param_groups for p in group['params']
            if p.grad is not None and is_hash_table(p)]
        for _, parameter, _ in lazy:  # hidden from torch's step, which takes every parameter with a gradient
            parameter.grad = None
        try:
            super().step()
        finally:
            for _, parameter, gradient in lazy:
                parameter.grad = gradient
        grad_scale = getattr(self, 'grad_scale', None)
        found_inf = getattr(self, 'found_inf', None)
        for group, parameter, gradient in lazy:
            self._lazy_step(group, parameter, gradient, grad_scale, found_inf)
        return loss

    def _lazy_step(self, group: dict, parameter: torch.Tensor, gradient: torch.Tensor,
                   grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor]) -> None:
        if triton is None:
            raise RuntimeError('LazyHashAdam needs Triton')
        if parameter.dtype != torch.float32 or gradient.dtype != torch.float32 or not gradient.is_contiguous():
            raise ValueError('hash tables and their gradients must be contiguous float32 tensors')
        state = self.state[parameter]
        if not state:
            state['step'] = torch.zeros((), dtype=torch.float32, device=parameter.device)
            state['exp_avg'] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state['exp_avg_sq'] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        device = parameter.device
        grad_scale = grad_scale.to(device) if grad_scale is not None else None
        found_inf = found_inf.to(device) if found_inf is not None else None
        # as torch's fused Adam: the count does not advance on a step AMP skips (found_inf is 1 there); out of
        # place, since a loaded state may share this tensor with the optimiser it came from
        advance = 1.0 - found_inf.reshape(()) if found_inf is not None else 1.0
        state['step'] = state['step'].to(device) + advance
        beta1, beta2 = group['betas']
        n = parameter.numel()
        _lazy_adam_kernel[(triton.cdiv(n, BLOCK),)](
            parameter, gradient, state['exp_avg'], state['exp_avg_sq'], state['step'],
            grad_scale if grad_scale is not None else gradient, found_inf if found_inf is not None else gradient,
            n, float(group['lr']), beta1, beta2, group['eps'], math.log2(beta1), math.log2(beta2),
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None, BLOCK=BLOCK, num_warps=4)
