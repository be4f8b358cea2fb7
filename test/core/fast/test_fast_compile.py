"""torch.compile of the captured training forward (trainer.compile): one graph, the eager step's losses and gradients.

The GPU run (inductor, CUDA graphs) is in test_fast_model.py; here the CPU checks what decides whether compiling
works at all: nerfstudio's forward and losses trace into a single graph per proposal-update variant once the
sampler's schedule is pinned (a graph break would silently split it, and a numpy call in nerfstudio's schedule did),
and the traced step computes what the eager step computes.
"""
import pytest
import torch

pytest.importorskip('nerfstudio')

from f3rm_ros.core.config import make_config  # noqa: E402


def _model_and_batch():
    from nerfstudio.cameras.cameras import Cameras

    from f3rm_ros.core.fast import accelerate
    from f3rm_ros.core.training.model import build_model
    torch.manual_seed(0)
    config = make_config('cpu-tiny', overrides={'feature_field': {'feature_dim': 16}})
    model = build_model(config, 4)
    accelerate(model, force=True)  # the fast path's patches (median depth, PSNR, bins) as on CUDA
    model.train()
    gen = torch.Generator().manual_seed(1)
    c2w = torch.eye(4)[:3].repeat(4, 1, 1)
    c2w[:, :3, 3] = torch.rand(4, 3, generator=gen) * 0.4 - 0.2 + torch.tensor([0.0, 0.0, 1.2])
    cameras = Cameras(camera_to_worlds=c2w, fx=60.0, fy=60.0, cx=32.0, cy=24.0, width=64, height=48)
    indices = torch.randint(0, 4, (128, 1), generator=gen)
    coords = torch.rand(128, 2, generator=gen) * torch.tensor([48.0, 64.0])
    rays = cameras.generate_rays(camera_indices=indices, coords=coords)
    batch = {'image': torch.rand(128, 3, generator=gen), 'feature': torch.randn(128, 16, generator=gen)}
    sampler = model.proposal_sampler  # no jitter: eager and traced steps see the same samples
    sampler.initial_sampler.train_stratified = False
    sampler.pdf_sampler.train_stratified = False
    return model, rays, batch


def _bundle(rays):
    """Return a fresh copy of `rays` (nerfacto's camera optimiser rewrites the bundle it is given)."""
    from nerfstudio.cameras.rays import RayBundle
    return RayBundle(origins=rays.origins.clone(), directions=rays.directions.clone(), pixel_area=rays.pixel_area,
                     camera_indices=rays.camera_indices, metadata=dict(rays.metadata))


def _step(function, model, rays, batch):
    """Run one step: its losses and parameter gradients."""
    model.zero_grad(set_to_none=True)
    losses, psnr = function(model, _bundle(rays), batch, False)
    sum(losses.values()).backward()
    return ({name: value.detach() for name, value in losses.items()},
            {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})


@pytest.mark.slow
def test_training_forward_traces_to_one_graph_and_matches_the_eager_step():
    from torch._dynamo.backends.registry import lookup_backend

    from f3rm_ros.core.fast.graphs import compiled, model_losses
    from f3rm_ros.core.fast.patches import force_proposal_update, pin_proposal_schedule, restore_proposal_schedule
    model, rays, batch = _model_and_batch()
    sampler = model.proposal_sampler
    graphs = []

    def counting_aot_eager(graph_module, example_inputs):  # dynamo + AOT autograd, no code generation (fast)
        graphs.append(graph_module)
        return lookup_backend('aot_eager')(graph_module, example_inputs)

    saved = pin_proposal_schedule(sampler)
    traced = compiled(model_losses, backend=counting_aot_eager)
    for updated in (True, False):
        force_proposal_update(sampler, updated)
        eager_losses, eager_grads = _step(model_losses, model, rays, batch)
        force_proposal_update(sampler, updated)
        graphs.clear()
        traced_losses, traced_grads = _step(traced, model, rays, batch)
        assert len(graphs) == 1, f'{len(graphs)} graphs: a graph break split the step (proposal update {updated})'
        assert traced_losses.keys() == eager_losses.keys()
        for name, value in eager_losses.items():
            assert torch.allclose(traced_losses[name], value, rtol=1e-5, atol=1e-8), name
        assert traced_grads.keys() == eager_grads.keys()
        # the proposal networks get gradients exactly on update steps, as nerfstudio's eager code gives them
        assert any(name.startswith('proposal_networks') for name in traced_grads) is updated
        for name, grad in eager_grads.items():
            assert torch.allclose(traced_grads[name], grad, rtol=1e-4, atol=1e-7), name
    restore_proposal_schedule(sampler, saved)
    assert all(sampler.__dict__[name] is value for name, value in saved.items())
