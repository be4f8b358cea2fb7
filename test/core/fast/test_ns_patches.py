"""One test per patch of nerfstudio internals (`f3rm_ros.core.fast.patches`), against the installed nerfstudio.

The sync-free replacements (rays, PSNR, camera-optimiser metrics, SpacedSampler bins) are checked against
nerfstudio's own code in test_fast_model.py; here the version check and the patches the model and the CUDA
graphs rely on: LPIPS deferred, final samples recorded, the hash-grid class swap, the proposal sampler's schedule,
the anneal exponent routed into a tensor, the cached autograd history released, and the MLP's skip connections.
"""
import logging

import pytest
import torch

pytest.importorskip('nerfstudio')

from nerfstudio.cameras.rays import RayBundle  # noqa: E402
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation  # noqa: E402
from nerfstudio.field_components.encodings import HashEncoding  # noqa: E402

from f3rm_ros.core.config import make_config  # noqa: E402
from f3rm_ros.core.fast import FastHashEncoding  # noqa: E402
from f3rm_ros.core.fast import patches  # noqa: E402
from f3rm_ros.core.training.model import build_model  # noqa: E402


def _model():
    torch.manual_seed(0)
    model = build_model(make_config('cpu-tiny'), 4)
    model.proposal_sampler.initial_sampler.train_stratified = False
    model.proposal_sampler.pdf_sampler.train_stratified = False
    return model


def _rays(count=32):
    gen = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=gen) + torch.tensor([0, 0, -2.0]),
                                               dim=-1)
    return RayBundle(origins=torch.tensor([0.0, 0.0, 0.8]).expand(count, 3).clone(), directions=directions,
                     pixel_area=torch.full((count, 1), 1e-4), camera_indices=torch.zeros(count, 1, dtype=torch.long),
                     nears=torch.full((count, 1), 0.05), fars=torch.full((count, 1), 3.0))


def _callbacks(model):
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None)
    return model.get_training_callbacks(attributes)


def test_version_check_names_the_patches_on_another_nerfstudio(caplog, monkeypatch):
    """The installed 1.1.5 passes quietly; another version is warned about once, naming what to re-test."""
    assert patches.nerfstudio_version() in patches.SUPPORTED_NERFSTUDIO
    monkeypatch.setattr(patches, '_VERSION_CHECKED', [False])
    with caplog.at_level(logging.WARNING, logger=patches.__name__):
        assert patches.check_nerfstudio_version() is True
        assert not caplog.records
        assert patches.check_nerfstudio_version('9.9.9') is False
    monkeypatch.setattr(patches, '_VERSION_CHECKED', [False])
    with caplog.at_level(logging.WARNING, logger=patches.__name__):
        patches.check_nerfstudio_version('9.9.9')
        patches.check_nerfstudio_version('9.9.9')
    warned = [r.getMessage() for r in caplog.records if '9.9.9' in r.getMessage()]
    assert len(warned) == 1 and 'record_final_samples' in warned[0] and 'test_ns_patches.py' in warned[0]


def test_no_lpips_keeps_nerfacto_from_building_the_metric():
    """The LPIPS slot of nerfacto holds the stand-in, which refuses to run instead of downloading weights."""
    model = _model()
    assert isinstance(model.lpips, patches.DeferredLPIPS)
    with pytest.raises(RuntimeError, match='offline'):
        model.lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_recorded_final_samples_render_eval_features_with_the_colours_weights():
    """Eval-mode features (recorded samples) equal training-mode features (nerfacto's own weights list)."""
    model = _model()
    seen = []
    patches.record_final_samples(model.field, lambda samples, density: seen.append((samples, density)))
    model.train()
    trained = model(_rays())
    model.eval()
    with torch.no_grad():
        evaluated = model(_rays())
    assert torch.allclose(trained['feature'].detach(), evaluated['feature'], atol=1e-5)
    samples, density = seen[-1]
    assert density.shape == (*samples.shape, 1) == tuple(trained['weights_list'][-1].shape)


def test_swap_class_keeps_parameters_and_the_cpu_result():
    """A HashEncoding made a FastHashEncoding keeps its state dict and (on a CPU) its output; no sideways swap."""
    torch.manual_seed(0)
    encoding = HashEncoding(num_levels=4, min_res=4, max_res=32, log2_hashmap_size=10, implementation='torch')
    points = torch.rand(64, 3)
    before, keys = encoding(points), set(encoding.state_dict())
    patches.swap_class(encoding, FastHashEncoding)
    assert isinstance(encoding, FastHashEncoding) and set(encoding.state_dict()) == keys
    assert torch.equal(encoding(points), before)
    with pytest.raises(TypeError):
        patches.swap_class(torch.nn.Linear(2, 2), FastHashEncoding)


@pytest.mark.slow
def test_proposal_schedule_predicts_and_steers_nerfstudios_updates():
    """Say before each step (proposal_update_due) whether nerfstudio's sampler will update; forcing and marking work."""
    model = _model()
    model.train()
    sampler = model.proposal_sampler
    callbacks = _callbacks(model)
    observed = []
    for step in range(40):
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        due = patches.proposal_update_due(sampler)
        model(_rays(8))
        observed.append((due, sampler._steps_since_update == 0))
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    assert all(due == updated for due, updated in observed), observed
    assert {due for due, _ in observed} == {True, False}                # both variants happen in 40 steps
    before = dict(sampler.__dict__)
    saved = patches.pin_proposal_schedule(sampler)
    for wanted in (True, False, True):
        patches.force_proposal_update(sampler, wanted)
        assert patches.proposal_update_due(sampler) is wanted
        model(_rays(8))
        assert (sampler._steps_since_update == 0) is wanted   # nerfstudio's own code took the forced path
    patches.restore_proposal_schedule(sampler, saved)
    assert {k: sampler.__dict__[k] for k in saved} == {k: before[k] for k in saved}
    patches.mark_proposal_updated(sampler)
    assert sampler._steps_since_update == 0


def test_anneal_exponent_routed_into_a_tensor_follows_nerfactos_callback():
    """After route_anneal, nerfacto's anneal callback writes the exponent it computes into the device scalar."""
    model, reference = _model(), _model()
    anneal = torch.zeros(())
    patches.route_anneal(model.proposal_sampler, anneal)
    assert model.proposal_sampler._anneal is anneal and float(anneal) == 1.0
    for step in (0, 50, 300):
        for m in (model, reference):
            for callback in _callbacks(m):
                callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        assert float(anneal) == pytest.approx(float(reference.proposal_sampler._anneal))


def test_release_autograd_history_drops_the_cached_samples():
    """A training forward leaves nerfacto's cached sample positions; release clears every one of them."""
    model = _model()
    model.train()
    model(_rays(8))
    cached = [m for m in model.modules() if getattr(m, '_sample_locations', None) is not None]
    assert cached
    patches.release_autograd_history(model)
    assert not [m for m in model.modules()
                if getattr(m, '_sample_locations', None) is not None
                or getattr(m, '_density_before_activation', None) is not None]


def test_mlp_skip_connections_read_from_nerfstudios_mlp():
    """The feature field's render shortcut asks whether an MLP has skips: nerfstudio's MLP answers both ways."""
    from nerfstudio.field_components.mlp import MLP
    plain = MLP(in_dim=4, num_layers=3, layer_width=8, out_dim=2, implementation='torch')
    skipping = MLP(in_dim=4, num_layers=3, layer_width=8, out_dim=2, skip_connections=(1,), implementation='torch')
    assert patches.mlp_has_skip_connections(plain) is False
    assert patches.mlp_has_skip_connections(skipping) is True


def test_median_depth_without_searchsorted_equals_nerfstudios():
    """The patched median depth gives nerfstudio's values, with the cumulative weight exactly 0.5 and above/below."""
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.model_components.renderers import DepthRenderer
    model = _model()
    patched = [m for m in model.modules() if isinstance(m, DepthRenderer) and m.method == 'median']
    assert patched and patches.patch_model(model) >= len(patched)
    assert all('forward' in vars(m) for m in patched)  # the instances, not nerfstudio's class
    gen = torch.Generator().manual_seed(3)
    rays, samples = 64, 12
    starts = torch.sort(torch.rand(rays, samples, 1, generator=gen) * 3, dim=1).values
    ends = starts + 0.01
    weights = torch.rand(rays, samples, 1, generator=gen) / samples
    weights[0] = 0.0                                    # empty ray: no entry reaches 0.5 -> last sample
    weights[1] = 0.0
    weights[1, 3] = 0.5                                 # a tie: cumulative weight exactly 0.5 from sample 3 on
    weights[2] = 0.0
    weights[2, 0] = 1.0                                 # all weight on the first sample
    weights[3] = 0.25                                   # 0.25, 0.5 (tie at index 1), 0.75 ...
    ray_samples = RaySamples(frustums=Frustums(origins=torch.zeros(rays, samples, 3),
                                               directions=torch.ones(rays, samples, 3), starts=starts, ends=ends,
                                               pixel_area=torch.ones(rays, samples, 1)))
    reference = DepthRenderer(method='median')(weights=weights, ray_samples=ray_samples)
    for renderer in patched:
        assert torch.equal(renderer(weights=weights, ray_samples=ray_samples), reference)
    midpoints = (starts + ends)[..., 0] / 2
    assert reference[1, 0] == midpoints[1, 3] and reference[3, 0] == midpoints[3, 1]
    assert reference[0, 0] == midpoints[0, -1] and reference[2, 0] == midpoints[2, 0]
