"""LazyHashAdam (trainer.lazy_hash_adam): torch's Adam where every entry has a gradient, untouched entries kept.

On CUDA the kernel runs natively (fused Adam for the dense parameters, AMP's scale and inf flag); without CUDA
the same checks run under TRITON_INTERPRET=1 in a subprocess, so CI exercises the kernel.
"""
import copy
import math

import pytest
import torch
from triton_interpreter import interpreted

triton = pytest.importorskip('triton', reason='Triton is not installed: the fast path cannot run')
HAS_CUDA = torch.cuda.is_available()


def _reference_lazy(p, g, m, v, step, lr, beta1, beta2, eps):
    touched = g != 0
    m = torch.where(touched, beta1 * m + (1 - beta1) * g, m)
    v = torch.where(touched, beta2 * v + (1 - beta2) * g * g, v)
    update = lr / (1 - beta1 ** step) * m / (v.sqrt() / math.sqrt(1 - beta2 ** step) + eps)
    return torch.where(touched, p - update, p), m, v


def check(device):
    """Return a list of (name, max abs error) of the checks; each should be ~0."""
    from f3rm_ros.core.fast.lazy_adam import LazyHashAdam, mark_hash_table
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter((torch.rand(300, 2, generator=gen) - 0.5).to(device))
    dense = torch.nn.Parameter(torch.rand(7, generator=gen).to(device))
    mark_hash_table(table)
    ref_table = torch.nn.Parameter(table.detach().clone())
    ref_dense = torch.nn.Parameter(dense.detach().clone())
    fused = device == 'cuda'
    options = dict(lr=0.01, eps=1e-15, betas=(0.9, 0.99))
    lazy = LazyHashAdam([table, dense], fused=fused, **options)
    torch_adam = torch.optim.Adam([ref_table, ref_dense], fused=fused, **options)
    errors = []
    # 1. every entry has a gradient: exactly torch's Adam
    for _ in range(3):
        g_table = torch.randn(300, 2, generator=gen).to(device)
        g_dense = torch.randn(7, generator=gen).to(device)
        table.grad, dense.grad, ref_table.grad, ref_dense.grad = g_table, g_dense, g_table.clone(), g_dense.clone()
        lazy.step()
        torch_adam.step()
    errors.append(('dense steps, table', float((table - ref_table).abs().max())))
    errors.append(('dense steps, other parameter', float((dense - ref_dense).abs().max())))
    # 2. rows without gradient keep parameter and moments; the others follow the lazy rule
    state = lazy.state[table]
    for step in (4, 5):
        g_table = torch.randn(300, 2, generator=gen).to(device)
        g_table[:100] = 0.0
        g_table[150, 1] = 0.0
        before = (table.detach().clone(), state['exp_avg'].clone(), state['exp_avg_sq'].clone())
        expected = _reference_lazy(*before[:1], g_table, *before[1:], step, 0.01, 0.9, 0.99, 1e-15)
        table.grad, dense.grad = g_table, torch.randn(7, generator=gen).to(device)
        lazy.step()
        errors.append((f'untouched rows, step {step}', float((table[:100] - before[0][:100]).abs().max())))
        errors.append((f'untouched moments, step {step}',
                       float((state['exp_avg_sq'][:100] - before[2][:100]).abs().max())))
        errors.append((f'lazy rule, step {step}', max(float((a - b).abs().max()) for a, b in
                                                      zip((table, state['exp_avg'], state['exp_avg_sq']), expected))))
    # 3. a loaded state continues the same way (host step count read back from the state)
    clone_table = torch.nn.Parameter(table.detach().clone())
    mark_hash_table(clone_table)
    clone = LazyHashAdam([clone_table, torch.nn.Parameter(dense.detach().clone())], fused=fused, **options)
    clone.load_state_dict(copy.deepcopy(lazy.state_dict()))  # as from a checkpoint: no shared moments
    g_table = torch.randn(300, 2, generator=gen).to(device)
    for optimizer, parameter in ((lazy, table), (clone, clone.param_groups[0]['params'][0])):
        parameter.grad = g_table.clone()
        optimizer.param_groups[0]['params'][1].grad = None
        optimizer.step()
    errors.append(('after load_state_dict', float((clone.param_groups[0]['params'][0] - table).abs().max())))
    # 4. checkpoints load either way: torch Adam continues from a LazyHashAdam state and the other way round
    for source, target_cls in ((lazy, torch.optim.Adam), (torch_adam, LazyHashAdam)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in source.param_groups[0]['params']]
        mark_hash_table(params[0])
        target = target_cls(params, fused=fused, **options)
        target.load_state_dict(copy.deepcopy(source.state_dict()))
        grads = [torch.randn(p.shape, generator=gen).to(device) for p in params]
        for optimizer in (source, target):
            for parameter, grad in zip(optimizer.param_groups[0]['params'], grads):
                parameter.grad = grad.clone()
            optimizer.step()
        errors.append((f'{type(source).__name__} state into {target_cls.__name__}', max(
            float((a - b).abs().max()) for a, b in zip(source.param_groups[0]['params'], params))))
    # 5. AMP through torch's GradScaler (fused Adam's protocol: grad_scale and found_inf handed to the step): an
    # overflow step changes nothing and is not counted, the scaled steps equal torch's
    errors += _amp_errors(device, gen, options)
    return errors


def _amp_errors(device, gen, options):
    from f3rm_ros.core.fast.lazy_adam import LazyHashAdam, mark_hash_table
    table = torch.nn.Parameter((torch.rand(300, 2, generator=gen) - 0.5).to(device))
    dense = torch.nn.Parameter(torch.rand(7, generator=gen).to(device))
    mark_hash_table(table)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in (table, dense)]
    runs = [(LazyHashAdam([table, dense], fused=True, **options), [table, dense]),
            (torch.optim.Adam(reference, fused=True, **options), reference)]
    scalers = [torch.amp.GradScaler(device, init_scale=1024.0) for _ in runs]
    for step in range(4):
        grads = [torch.randn(300, 2, generator=gen).to(device), torch.randn(7, generator=gen).to(device)]
        if step == 0:
            grads[1][3] = float('inf')  # an overflow: the step must be skipped
        for (optimizer, params), scaler in zip(runs, scalers):
            scaler.scale(torch.ones((), device=device))  # the scaler's state starts at its first scale()
            for parameter, grad in zip(params, grads):
                parameter.grad = grad * scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
    (lazy, _), (adam, _) = runs
    return [('AMP: table', float((table - reference[0]).abs().max())),
            ('AMP: other parameter', float((dense - reference[1]).abs().max())),
            ('AMP: step count', float(abs(lazy.state[table]['step'].cpu() - adam.state[reference[0]]['step'].cpu()))),
            ('AMP: steps taken', float(abs(lazy.state[table]['step'].cpu() - 3)))]


def _assert_small(errors):
    for name, error in errors:
        print(f'{name}: {error:.3g}')
        assert error < 1e-6, (name, error)


@pytest.mark.cuda(why='the interpreter test covers the CPU')
def test_lazy_adam_on_cuda():
    _assert_small(check('cuda'))


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason='CUDA present: the native test covers the kernel')
def test_lazy_adam_under_triton_interpreter():
    _assert_small(interpreted('test_fast_lazy_adam', "check('cpu')"))


def test_lazy_adam_refuses_settings_it_does_not_implement():
    from f3rm_ros.core.fast.lazy_adam import LazyHashAdam
    with pytest.raises(ValueError, match='weight decay'):
        LazyHashAdam([torch.nn.Parameter(torch.zeros(3))], lr=0.1, weight_decay=0.1)
