"""Triton hash-grid kernels (f3rm_ros.core.fast) against nerfstudio's torch HashEncoding.

On CUDA the kernels run natively at realistic sizes; without CUDA the same comparison runs on a small case
in a subprocess under TRITON_INTERPRET=1 (Triton's CPU interpreter), so CI still exercises the kernels.
"""

import pytest
import torch
from triton_interpreter import interpreted

pytest.importorskip('nerfstudio')
triton = pytest.importorskip('triton', reason='Triton is not installed: the fast path cannot run')

HAS_CUDA = torch.cuda.is_available()


def compare(device, levels, table_size, features, n, min_res, max_res, seed=0, low=-0.05, high=1.05):
    """Max relative errors of (forward, table gradient, position gradient) for fresh random inputs."""
    import numpy as np

    from f3rm_ros.core.fast.hashgrid import hash_encode, reference_hash_encode
    gen = torch.Generator().manual_seed(seed)
    growth = np.exp((np.log(max_res) - np.log(min_res)) / (levels - 1))
    scalings = torch.floor(min_res * growth ** torch.arange(levels)).float()
    table = (torch.rand(levels * table_size, features, generator=gen) * 2 - 1) * 1e-1
    # Positions a little outside [0, 1] too (negative grid coordinates), some exactly on grid points.
    x = torch.rand(n, 3, generator=gen) * (high - low) + low
    x[: n // 16] = torch.randint(0, min_res + 1, (n // 16, 3), generator=gen).float() / min_res
    upstream = torch.randn(n, levels * features, generator=gen)

    def run(fn, dev, dtype):
        xt = x.to(dev, dtype).clone().requires_grad_(True)  # clone: .to() may return the shared tensor
        tt = table.to(dev, dtype).clone().requires_grad_(True)
        out = fn(xt, tt, scalings.to(dev), table_size)
        (out * upstream.to(dev, dtype)).sum().backward()
        return out.detach().double().cpu(), tt.grad.double().cpu(), xt.grad.double().cpu()

    # Values and table gradients against float64. The position gradient jumps across cell faces, so float32
    # and float64 disagree for points within rounding of a face (many at 2048 cells per axis): compare it with
    # nerfstudio's code run in float32 on the same device, which puts every point in the same cell.
    ref = run(reference_hash_encode, 'cpu', torch.float64)
    ref32 = run(reference_hash_encode, device, torch.float32)
    fast = run(hash_encode, device, torch.float32)

    def rel(a, b):
        assert torch.isfinite(a).all()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    return [rel(fast[0], ref[0]), rel(fast[1], ref[1]), rel(fast[2], ref32[2])]


@pytest.mark.cuda(why='the native-kernel comparison needs a GPU (the interpreter test below covers the CPU)')
@pytest.mark.parametrize('levels,log2_size,features,min_res,max_res', [
    (16, 19, 2, 16, 2048),   # nerfacto's density grid
    (5, 17, 2, 16, 256),     # a proposal network
    (12, 19, 8, 16, 128),    # F3RM's feature field
    (8, 10, 8, 4, 512),      # tiny table: heavy hash collisions at the fine levels
])
def test_cuda_kernels_match_nerfstudio(levels, log2_size, features, min_res, max_res):
    errors = compare('cuda', levels, 2 ** log2_size, features, 200_000, min_res, max_res, seed=levels)
    print('relative errors (forward, table grad, position grad):', errors)
    assert errors[0] < 1e-5
    assert errors[1] < 1e-4
    assert errors[2] < 1e-4


@pytest.mark.cuda
def test_cuda_module_swap_keeps_state_dict_and_outputs():
    from nerfstudio.field_components.encodings import HashEncoding

    from f3rm_ros.core.fast import FastHashEncoding, accelerate
    enc = HashEncoding(num_levels=6, min_res=8, max_res=256, log2_hashmap_size=12, features_per_level=4,
                       implementation='torch').cuda()
    x = torch.rand(5000, 3, device='cuda')
    keys = sorted(enc.state_dict())
    expected = enc(x)
    holder = torch.nn.Sequential(enc)
    assert accelerate(holder, force=True) == 1
    assert isinstance(enc, FastHashEncoding) and sorted(enc.state_dict()) == keys
    assert torch.allclose(enc(x), expected, atol=1e-6)
    # CPU inputs keep nerfstudio's code
    assert torch.allclose(enc.cpu()(x.cpu()), expected.cpu(), atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason='CUDA present: the native test covers the kernels')
def test_kernels_under_triton_interpreter_match_nerfstudio():
    results = interpreted('test_fast_hashgrid', "[compare('cpu', 4, 2 ** 6, 2, 300, 2, 40, seed=1), "
                          "compare('cpu', 3, 2 ** 8, 8, 200, 4, 16, seed=2)]")  # 64-row table: collisions
    for errors in results:
        print('relative errors (forward, table grad, position grad):', errors)
        assert errors[0] < 1e-5
        assert errors[1] < 1e-4
        assert errors[2] < 1e-4


def opcheck_results(device):
    """Return torch.library.opcheck's verdicts for the kernels' custom ops (what torch.compile relies on)."""
    from f3rm_ros.core.fast.hashgrid import encode_backward_op, encode_op
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, generator=gen).to(device)
    table = (torch.rand(3 * 64, 2, generator=gen) - 0.5).to(device)
    scalings = torch.tensor([2.0, 5.0, 11.0], device=device)
    grad = torch.randn(50, 6, generator=gen).to(device)
    cases = [(encode_op, (x.clone().requires_grad_(True), table.clone().requires_grad_(True), scalings, 64))]
    cases += [(encode_backward_op, (x, table, scalings, grad, 64, need_dx, True)) for need_dx in (True, False)]
    return [torch.library.opcheck(op, args) for op, args in cases]


def _assert_opcheck(results):
    for result in results:
        assert set(result.values()) == {'SUCCESS'}, result


@pytest.mark.cuda(why='the interpreter test covers the CPU')
def test_custom_ops_pass_opcheck_on_cuda():
    _assert_opcheck(opcheck_results('cuda'))


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason='CUDA present: the native test covers the ops')
def test_custom_ops_pass_opcheck_under_triton_interpreter():
    """Schema, autograd registration, fake shapes and AOT tracing of the ops that torch.compile calls opaquely."""
    _assert_opcheck(interpreted('test_fast_hashgrid', "opcheck_results('cpu')"))
