"""The surface prior of a scene repair: density rises at matter, falls at clear points, every level, until a step."""
import numpy as np
import torch

from f3rm_ros.core.config import make_config
from f3rm_ros.core.scenes import table as scenes
from labels_trainer import labels_trainer


def log_densities(trainer, points_base):
    """Mean log density per level (proposals, then the nerf field) at base-frame points."""
    positions = torch.as_tensor(trainer.box.to_field(points_base), dtype=torch.float32)
    with torch.no_grad():
        return [float(torch.log(fn(positions).clamp_min(1e-30)).mean())
                for fn in [*trainer.model.density_fns, trainer.model.field.density_fn]]


def test_the_surface_prior_raises_matter_and_clears_free_space_on_every_level_until_its_step():
    torch.manual_seed(0)
    scene = scenes.make_scene(seed=2, num_objects=2, num_views=6, width=48, height=36)
    trainer = labels_trainer(make_config('cpu-tiny'), scene)
    for _ in range(30):                   # air above the table learnt empty
        trainer.step()
    rng = np.random.default_rng(0)
    air = np.array([0.5, 0.0, 0.25]) + rng.uniform(-0.02, 0.02, (500, 3))
    table = np.array([0.5, 0.0, -0.005]) + rng.uniform(-0.02, 0.02, (500, 3)) * [1, 1, 0.1]   # learnt solid
    before, solid = log_densities(trainer, air), log_densities(trainer, table)
    trainer.set_surface_prior(air, table, 0.01, until_step=trainer.step_count + 40)
    assert trainer.surface.active(trainer.step_count)
    for _ in range(40):
        trainer.step()
    after, cleared = log_densities(trainer, air), log_densities(trainer, table)
    assert not trainer.surface.active(trainer.step_count)
    assert len(after) == len(before) >= 2
    assert all(a > b + 1.0 for a, b in zip(after, before)), (before, after)
    assert after[-1] >= trainer.surface.log_density - 1.0       # the nerf field about reached the target
    assert all(c < s - 1.0 for c, s in zip(cleared, solid)), (solid, cleared)
    trainer.set_surface_prior(np.zeros((0, 3)), table, 0.01, until_step=10 ** 6)   # no matter: off
    assert not trainer.surface.active(trainer.step_count)
