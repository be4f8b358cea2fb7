"""Triton kernels for nerfstudio's multiresolution hash encoding (the ``implementation='torch'`` path).

Same parameters and the same function as `nerfstudio.field_components.encodings.HashEncoding.pytorch_fwd`:

* table ``hash_table [levels * T, F]`` float32, level ``l`` in rows ``[l*T, (l+1)*T)``;
* per-level scale ``floor(min_res * growth ** l)`` (the module's ``scalings``), positions in [0, 1] are
  multiplied by it (no half-voxel shift);
* every level is hashed, coarse ones too: ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861) mod T`` over the
  integer ``floor`` / ``ceil`` corners, computed on the low 32 bits (T is a power of two, so the low bits of
  nerfstudio's int64 arithmetic and floor-modulo are the same, negative coordinates included);
* trilinear interpolation in nerfstudio's nested order (x, then y, then z), weight ``t`` on the ``ceil``
  corner and ``1 - t`` on the ``floor`` corner with ``t = x * scale - floor(x * scale)``.

Backward gives the table gradient (scattered with relaxed atomics) and, when the input needs it (nerfacto's
positions carry the camera optimiser's gradient), the gradient with respect to the positions, which is what
autograd gives for the torch path (``floor``/``ceil`` contribute nothing, ``d t / d x = scale``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from nerfstudio.field_components.encodings import HashEncoding

try:  # Triton is optional: the CPU path never needs it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

PRIME_Y = 2654435761
PRIME_Z = 805459861


def triton_available() -> bool:
    """Tell whether Triton imported."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _corner_rows(ix, iy, iz, level, T: tl.constexpr):
        # nerfstudio: x*1 ^ y*2654435761 ^ z*805459861 (int64) % T; T is a power of two, so the low bits of
        # the 32-bit products give the same index.
        h = ix.to(tl.uint32) ^ (iy.to(tl.uint32) * 2654435761) ^ (iz.to(tl.uint32) * 805459861)
        return (h & (T - 1)).to(tl.int32) + level * T

    @triton.jit
    def _cell_corners(x_ptr, offs, mask, s, level, T: tl.constexpr):
        """Return the fractional position in this level's cell and the table rows of its 8 corners."""
        px = tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0) * s
        py = tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0) * s
        pz = tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0) * s
        fx = tl.floor(px)
        fy = tl.floor(py)
        fz = tl.floor(pz)
        xf = fx.to(tl.int32)
        yf = fy.to(tl.int32)
        zf = fz.to(tl.int32)
        xc = tl.ceil(px).to(tl.int32)
        yc = tl.ceil(py).to(tl.int32)
        zc = tl.ceil(pz).to(tl.int32)
        # corners as nerfstudio numbers them: 0 ccc 1 cfc 2 ffc 3 fcc 4 ccf 5 cff 6 fff 7 fcf (x, y, z)
        return ((px - fx)[:, None], (py - fy)[:, None], (pz - fz)[:, None],
                _corner_rows(xc, yc, zc, level, T), _corner_rows(xc, yf, zc, level, T),
                _corner_rows(xf, yf, zc, level, T), _corner_rows(xf, yc, zc, level, T),
                _corner_rows(xc, yc, zf, level, T), _corner_rows(xc, yf, zf, level, T),
                _corner_rows(xf, yf, zf, level, T), _corner_rows(xf, yc, zf, level, T))

    @triton.jit
    def _corner_values(table_ptr, r0, r1, r2, r3, r4, r5, r6, r7, f, m2, F: tl.constexpr):
        """Load the feature rows of the 8 corners."""
        return (tl.load(table_ptr + r0[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r1[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r2[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r3[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r4[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r5[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r6[:, None] * F + f, mask=m2, other=0.0),
                tl.load(table_ptr + r7[:, None] * F + f, mask=m2, other=0.0))

    @triton.jit
    def _hash_fwd_kernel(x_ptr, table_ptr, scale_ptr, out_ptr, N,
                         L: tl.constexpr, T: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        level = tl.program_id(1)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        s = tl.load(scale_ptr + level)
        f = tl.arange(0, F)[None, :]
        m2 = mask[:, None]
        tx, ty, tz, r0, r1, r2, r3, r4, r5, r6, r7 = _cell_corners(x_ptr, offs, mask, s, level, T)
        v0, v1, v2, v3, v4, v5, v6, v7 = _corner_values(table_ptr, r0, r1, r2, r3, r4, r5, r6, r7, f, m2, F)
        f03 = v0 * tx + v3 * (1 - tx)
        f12 = v1 * tx + v2 * (1 - tx)
        f56 = v5 * tx + v6 * (1 - tx)
        f47 = v4 * tx + v7 * (1 - tx)
        f0312 = f03 * ty + f12 * (1 - ty)
        f4756 = f47 * ty + f56 * (1 - ty)
        value = f0312 * tz + f4756 * (1 - tz)
        tl.store(out_ptr + offs[:, None] * (L * F) + level * F + f, value, mask=m2)

    @triton.jit
    def _hash_bwd_kernel(x_ptr, table_ptr, scale_ptr, grad_ptr, dtable_ptr, dx_ptr, N,
                         L: tl.constexpr, T: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
                         NEED_TABLE: tl.constexpr, NEED_DX: tl.constexpr):
        pid = tl.program_id(0)
        level = tl.program_id(1)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        s = tl.load(scale_ptr + level)
        f = tl.arange(0, F)[None, :]
        m2 = mask[:, None]
        tx, ty, tz, r0, r1, r2, r3, r4, r5, r6, r7 = _cell_corners(x_ptr, offs, mask, s, level, T)
        g = tl.load(grad_ptr + offs[:, None] * (L * F) + level * F + f, mask=m2, other=0.0)
        if NEED_TABLE:
            ux = 1 - tx
            uy = 1 - ty
            uz = 1 - tz
            g_cz = g * tz
            g_fz = g * uz
            tl.atomic_add(dtable_ptr + r0[:, None] * F + f, g_cz * ty * tx, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r1[:, None] * F + f, g_cz * uy * tx, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r2[:, None] * F + f, g_cz * uy * ux, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r3[:, None] * F + f, g_cz * ty * ux, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r4[:, None] * F + f, g_fz * ty * tx, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r5[:, None] * F + f, g_fz * uy * tx, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r6[:, None] * F + f, g_fz * uy * ux, mask=m2, sem='relaxed')
            tl.atomic_add(dtable_ptr + r7[:, None] * F + f, g_fz * ty * ux, mask=m2, sem='relaxed')
        if NEED_DX:
            v0, v1, v2, v3, v4, v5, v6, v7 = _corner_values(table_ptr, r0, r1, r2, r3, r4, r5, r6, r7, f, m2,
                                                            F)
            f03 = v0 * tx + v3 * (1 - tx)
            f12 = v1 * tx + v2 * (1 - tx)
            f56 = v5 * tx + v6 * (1 - tx)
            f47 = v4 * tx + v7 * (1 - tx)
            f0312 = f03 * ty + f12 * (1 - ty)
            f4756 = f47 * ty + f56 * (1 - ty)
            d_tz = tl.sum(g * (f0312 - f4756), axis=1)
            d_ty = tl.sum(g * ((f03 - f12) * tz + (f47 - f56) * (1 - tz)), axis=1)
            d_tx = tl.sum(g * (((v0 - v3) * ty + (v1 - v2) * (1 - ty)) * tz
                               + ((v4 - v7) * ty + (v5 - v6) * (1 - ty)) * (1 - tz)), axis=1)
            tl.atomic_add(dx_ptr + offs * 3 + 0, d_tx * s, mask=mask, sem='relaxed')
            tl.atomic_add(dx_ptr + offs * 3 + 1, d_ty * s, mask=mask, sem='relaxed')
            tl.atomic_add(dx_ptr + offs * 3 + 2, d_tz * s, mask=mask, sem='relaxed')


def _block(features: int) -> int:
    return max(32, 512 // features)


def _check(x: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, levels: int, table_size: int):
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f'positions must be [N, 3], got {tuple(x.shape)}')
    if table.dim() != 2 or table.shape[0] != levels * table_size:
        raise ValueError(f'hash table must be [{levels} * {table_size}, F], got {tuple(table.shape)}')
    features = table.shape[1]
    if features & (features - 1):
        raise ValueError(f'features per level must be a power of two, got {features}')
    if table_size & (table_size - 1):
        raise ValueError(f'table size must be a power of two, got {table_size}')
    if scalings.numel() != levels:
        raise ValueError(f'{scalings.numel()} scalings for {levels} levels')


def _encode(x: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, table_size: int) -> torch.Tensor:
    levels = scalings.numel()
    features = table.shape[1]
    n = x.shape[0]
    out = torch.empty((n, levels * features), device=x.device, dtype=torch.float32)
    block = _block(features)
    if n:
        _hash_fwd_kernel[(triton.cdiv(n, block), levels)](
            x, table, scalings, out, n, L=levels, T=table_size, F=features, BLOCK=block, num_warps=4)
    return out


def _encode_backward(x: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, grad: torch.Tensor,
                     table_size: int, need_dx: bool, need_table: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    # A custom op returns tensors, never None: an input that needs no gradient gets an empty one.
    levels = scalings.numel()
    features = table.shape[1]
    n = x.shape[0]
    grad = grad.contiguous().float()
    dtable = torch.zeros_like(table) if need_table else table.new_empty(0)
    dx = torch.zeros_like(x) if need_dx else x.new_empty(0)
    block = _block(features)
    if n and (need_dx or need_table):
        _hash_bwd_kernel[(triton.cdiv(n, block), levels)](
            x, table, scalings, grad, dtable if need_table else table, dx if need_dx else x, n,
            L=levels, T=table_size, F=features, BLOCK=block,
            NEED_TABLE=bool(need_table), NEED_DX=bool(need_dx), num_warps=4)
    return dx, dtable


def _setup_context(ctx, inputs, output):
    x, table, scalings, table_size = inputs
    ctx.save_for_backward(x, table, scalings)
    ctx.table_size = table_size


def _backward(ctx, grad):
    x, table, scalings = ctx.saved_tensors
    need_dx, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dtable = encode_backward_op(x, table, scalings, grad, ctx.table_size, need_dx, need_table)
    return (dx if need_dx else None), (dtable if need_table else None), None, None


if triton is not None:
    # Registered as torch custom ops so that torch.compile (trainer.compile) treats the kernels as opaque calls
    # with known output shapes, fusing everything around them; eager autograd behaves as an autograd.Function.
    encode_op = torch.library.custom_op('f3rm_ros::hash_encode', _encode, mutates_args=())
    encode_backward_op = torch.library.custom_op('f3rm_ros::hash_encode_backward', _encode_backward,
                                                 mutates_args=())

    @encode_op.register_fake
    def _encode_shape(x, table, scalings, table_size):
        return x.new_empty((x.shape[0], scalings.numel() * table.shape[1]), dtype=torch.float32)

    @encode_backward_op.register_fake
    def _encode_backward_shape(x, table, scalings, grad, table_size, need_dx, need_table):
        return (torch.empty_like(x) if need_dx else x.new_empty(0),
                torch.empty_like(table) if need_table else table.new_empty(0))

    encode_op.register_autograd(_backward, setup_context=_setup_context)


def hash_encode(x: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, table_size: int) -> torch.Tensor:
    """Encode positions ``x [N, 3]`` with ``table [L*T, F]``: ``[N, L*F]`` float32, differentiable.

    ``scalings`` is the float32 per-level scale on x's device. Needs Triton (on CUDA, or on the CPU under
    ``TRITON_INTERPRET=1``).
    """
    if triton is None:
        raise RuntimeError('Triton is not installed')
    levels = scalings.numel()
    _check(x, table, scalings, levels, table_size)
    x = x.float().contiguous()
    if table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError('hash table must be a contiguous float32 tensor')
    return encode_op(x, table, scalings.float().contiguous(), table_size)


def reference_hash_encode(x: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, table_size: int,
                          ) -> torch.Tensor:
    """Run nerfstudio's torch path as a plain function of the same arguments (for tests)."""
    levels = scalings.numel()
    enc = HashEncoding.__new__(HashEncoding)
    torch.nn.Module.__init__(enc)
    enc.num_levels = levels
    enc.hash_table_size = table_size
    enc.scalings = scalings.detach().to('cpu', torch.float32)
    enc.hash_offset = torch.arange(levels) * table_size
    enc.hash_table = table
    enc.tcnn_encoding = None
    return enc.pytorch_fwd(x)


def module_scalings(module, device: Optional[torch.device] = None) -> torch.Tensor:
    """Return the float32 per-level scales of a nerfstudio `HashEncoding`, cached per device on the module."""
    device = torch.device(device) if device is not None else module.hash_table.device
    cache = module.__dict__.setdefault('_fast_scalings', {})
    key = str(device)
    if key not in cache:
        cache[key] = module.scalings.to(device=device, dtype=torch.float32).contiguous()
    return cache[key]
