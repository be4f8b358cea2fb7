"""F3RMModel: nerfstudio's nerfacto plus a feature field rendered with nerfacto's own weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Type

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.model_components.losses import DepthLossType, depth_loss
from nerfstudio.model_components.renderers import SemanticRenderer
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch.nn import Parameter

from ..config import F3RMConfig, FeatureFieldConfig, head_loss_weight
from ..fast import accelerate
from ..fast.patches import check_nerfstudio_version, no_lpips, record_final_samples
from .field import make_feature_field, resolve_implementation
from ..geometry import WorkspaceBox
from ..query.relevancy import TextQuery, relevancy

# Per-camera parameters, sized by the trainer's capacity (resized when a checkpoint's capacity differs).
PER_CAMERA_PARAMETERS = ('field.embedding_appearance.embedding.weight', 'field.embedding_appearance.trained_rows',
                         'camera_optimizer.pose_adjustment')


class CapacityEmbedding(Embedding):
    """Appearance embedding sized by capacity whose inference-time average covers only trained rows.

    nerfacto renders new views with the mean embedding; averaging the never-trained rows of empty capacity
    slots and held-out frames would condition the colour network on a code it never saw.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        self.register_buffer('trained_rows', torch.zeros(in_dim, dtype=torch.bool))

    def mean(self, dim=0):
        """Mean over the rows that training uses."""
        rows = self.embedding.weight[self.trained_rows] if self.trained_rows.any() else self.embedding.weight
        return rows.mean(dim)


@dataclass
class F3RMModelConfig(NerfactoModelConfig):
    """Nerfacto configuration plus the feature field and its loss weight."""

    _target: Type = field(default_factory=lambda: F3RMModel)
    feature_field: FeatureFieldConfig = field(default_factory=FeatureFieldConfig)
    feature_loss_mult: float = 1e-3
    depth_loss_mult: float = 0.0
    depth_sigma: float = 0.01  # field units
    # 'live': F3RM's gradient, the feature loss reaches the density through the weights; 'detached': it does not
    feature_weights: str = 'detached'
    # 'name:weight,...' loss weights of the extra feature heads (default feature_loss_mult)
    head_loss_weights: str = ''


class F3RMModel(NerfactoModel):
    """Nerfacto with a parallel feature field; outputs `feature` and, with a query set, `similarity`."""

    config: F3RMModelConfig

    def populate_modules(self):
        """Build nerfacto's modules (without LPIPS), then the feature field and its renderer."""
        with no_lpips():
            super().populate_modules()
        if self.field.embedding_appearance is not None:
            self.field.embedding_appearance = CapacityEmbedding(self.num_train_data, self.config.appearance_embed_dim)
        self.feature_field = make_feature_field(self.config.feature_field, SceneContraction(order=float('inf')))
        # [(output name, width)]: 'feature' (the text head), then 'feature_<name>' per extra head
        self.feature_heads = [('feature' if i == 0 else f'feature_{name}', width)
                              for i, (name, width) in enumerate(self.config.feature_field.heads)]
        self.renderer_feature = SemanticRenderer()
        self.query: Optional[TextQuery] = None
        # False while rendering pictures or scores that need no features (held-out PSNR): skips the feature head
        self.render_features = True
        self._final_samples = None
        # nerfacto keeps its final ray samples only in training mode; record them for every forward so the
        # feature field is rendered with exactly the weights that rendered the colour.
        record_final_samples(self.field, self._record)

    def _record(self, ray_samples, density) -> None:
        self._final_samples = (ray_samples, density)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        """Nerfacto's groups plus `feature_field`."""
        groups = super().get_param_groups()
        groups['feature_field'] = list(self.feature_field.parameters())
        return groups

    def get_outputs(self, ray_bundle: RayBundle):
        """Nerfacto's outputs plus the volume-rendered `feature` (and `similarity` when a query is set)."""
        outputs = super().get_outputs(ray_bundle)
        if self.training and ray_bundle.metadata and 'directions_norm' in ray_bundle.metadata:
            outputs['directions_norm'] = ray_bundle.metadata['directions_norm']
        ray_samples, density = self._final_samples
        self._final_samples = None
        if not (self.training or self.render_features):
            return outputs
        weights = outputs['weights_list'][-1] if self.training else ray_samples.get_weights(density)
        if self.config.feature_weights != 'live':
            weights = weights.detach()  # the feature loss fits the colour's geometry and never moves it
        # Sample positions are detached either way (as in F3RM): the feature loss does not move the cameras.
        positions = ray_samples.frustums.get_positions().detach()
        rendered = self.feature_field.render(positions, weights)
        if len(self.feature_heads) == 1:
            outputs['feature'] = rendered
        else:
            outputs.update(zip((name for name, _ in self.feature_heads),
                               torch.split(rendered, [width for _, width in self.feature_heads], dim=-1)))
        if self.query is not None:
            outputs['similarity'] = relevancy(outputs['feature'], self.query)[..., None]
        return outputs

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        """Nerfacto's losses plus the MSE to the teacher's features (when the batch has them)."""
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if 'feature' in batch:
            target = batch['feature'].to(outputs['feature'])
            widths = [width for _, width in self.feature_heads]
            # every head's target, concatenated (a teacher with more heads than this model: the first ones)
            targets = torch.split(target[..., :sum(widths)], widths, dim=-1) if target.shape[-1] >= sum(widths) \
                else (target,)
            for (name, _), head_target in zip(self.feature_heads, targets):
                weight = (self.config.feature_loss_mult if name == 'feature' else head_loss_weight(
                    self.config.head_loss_weights, name[len('feature_'):], self.config.feature_loss_mult))
                loss_dict[f'{name}_loss'] = weight * torch.nn.functional.mse_loss(outputs[name], head_target)
        if self.training and 'depth_image' in batch and self.config.depth_loss_mult > 0:
            sigma = self.config.depth_sigma  # a Python float: no host-to-device copy inside a CUDA graph
            levels = len(outputs['weights_list'])
            loss_dict['depth_loss'] = self.config.depth_loss_mult * sum(
                depth_loss(weights=weights, ray_samples=samples, termination_depth=batch['depth_image'],
                           predicted_depth=outputs['expected_depth'], sigma=sigma,
                           directions_norm=outputs['directions_norm'], is_euclidean=False,
                           depth_loss_type=DepthLossType.DS_NERF)
                for weights, samples in zip(outputs['weights_list'], outputs['ray_samples_list'])) / levels
        return loss_dict

    def log_densities(self, positions: torch.Tensor) -> List[torch.Tensor]:
        """Log density [N] at `positions` [N, 3] (field units) of each proposal network, then of the nerf field.

        Every level: a proposal that holds empty space never samples a surface there, so the nerf field never sees
        it. Log: its gradient does not vanish where the density is nearly zero (the photometric loss's does).
        """
        functions = list(dict.fromkeys([*self.density_fns, self.field.density_fn]))
        return [torch.log(fn(positions).clamp_min(1e-30)).reshape(-1) for fn in functions]

    def mark_cameras_trained(self, indices: torch.Tensor) -> None:
        """Record camera slots that received training rays (their mean appearance code renders new views)."""
        if self.field.embedding_appearance is not None:
            self.field.embedding_appearance.trained_rows.index_fill_(0, indices.reshape(-1), True)  # no host sync

    def set_query(self, query: Optional[TextQuery]) -> None:
        """Set (or clear with None) the text query rendered as `similarity`."""
        self.query = None if query is None else query.to(self.device)

    @torch.no_grad()
    def density_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Density [..., 1] at points in field units."""
        return self.field.density_fn(positions)

    @torch.no_grad()
    def features_at(self, positions: torch.Tensor, head: Optional[str] = None) -> torch.Tensor:
        """Feature field [..., D] at points in field units: the text head, or the head named `head` ('dino')."""
        if head is None or head == 'feature' or len(self.feature_heads) == 1:
            return self.feature_field.text_features(positions)
        names = [name for name, _ in self.feature_heads]
        key = head if head in names else f'feature_{head}'
        if key not in names:
            raise KeyError(f'no feature head {head!r}; this field has {[n[len("feature_"):] for n in names[1:]]}')
        index = names.index(key)
        start = sum(width for _, width in self.feature_heads[:index])
        if hasattr(self.feature_field, 'fields'):  # separate layout: evaluate that head only
            return self.feature_field.fields[index](positions)
        return self.feature_field(positions)[..., start:start + self.feature_heads[index][1]]

    @torch.no_grad()
    def normals_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Return unit surface normals [..., 3] at points in field units (the field's axes are base_frame's).

        nerfacto's predicted normals (`predict_normals`: an MLP on the position and the density features,
        trained towards the density gradient) where the model has them, else the negative normalised density
        gradient (outward).
        """
        flat = positions.reshape(-1, 3)
        if self.config.predict_normals:
            zeros = torch.zeros_like(flat[:, :1])
            samples = RaySamples(frustums=Frustums(origins=flat, directions=torch.nn.functional.normalize(
                torch.ones_like(flat), dim=-1), starts=zeros, ends=zeros, pixel_area=torch.ones_like(zeros)),
                camera_indices=zeros.long())
            _, embedding = self.field.get_density(samples)
            inputs = torch.cat([self.field.position_encoding(flat), embedding.reshape(len(flat), -1)], dim=-1)
            normals = self.field.field_head_pred_normals(self.field.mlp_pred_normals(inputs).float())
        else:
            with torch.enable_grad():
                points = flat.detach().clone().requires_grad_(True)
                density = self.field.density_fn(points)
                normals = -torch.autograd.grad(density.sum(), points)[0]
        return torch.nn.functional.normalize(normals.float(), dim=-1).reshape(*positions.shape[:-1], 3)


def model_config(config: F3RMConfig) -> F3RMModelConfig:
    """Return the nerfstudio model configuration an `F3RMConfig` makes (also the ``ns-train f3rm-ros`` plugin's)."""
    check_nerfstudio_version()
    m = config.model
    field_units_per_metre = WorkspaceBox.from_config(config.workspace).scale
    implementation = resolve_implementation('auto')
    proposal_args = [
        {'hidden_dim': 16, 'log2_hashmap_size': m.proposal_net_log2_hashmap_size, 'num_levels': 5,
         'max_res': res, 'use_linear': False}
        for res in m.proposal_net_max_res
    ]
    return F3RMModelConfig(
        near_plane=m.near_plane, far_plane=m.far_plane, background_color=m.background_color,
        hidden_dim=m.hidden_dim, hidden_dim_color=m.hidden_dim_color, num_levels=m.num_levels,
        base_res=m.base_resolution, max_res=m.max_resolution, log2_hashmap_size=m.log2_hashmap_size,
        features_per_level=m.features_per_level,
        num_proposal_samples_per_ray=tuple(m.num_proposal_samples_per_ray),
        num_nerf_samples_per_ray=m.num_nerf_samples_per_ray,
        num_proposal_iterations=len(proposal_args), proposal_net_args_list=proposal_args,
        appearance_embed_dim=m.appearance_embed_dim, predict_normals=m.predict_normals,
        camera_optimizer=CameraOptimizerConfig(mode=m.camera_optimizer),
        implementation=implementation, eval_num_rays_per_chunk=config.trainer.eval_chunk_rays,
        feature_field=config.feature_field, feature_loss_mult=m.feature_loss_weight,
        depth_loss_mult=m.depth_loss_mult, depth_sigma=m.depth_sigma * field_units_per_metre,
        feature_weights=m.feature_weights, head_loss_weights=m.head_loss_weights,
    )


def build_model(config: F3RMConfig, num_cameras: int) -> F3RMModel:
    """Instantiate the model for `num_cameras` camera slots (the trainer's capacity)."""
    # The field's unit box: the workspace spans [-1, 1] on its longest side (see geometry.WorkspaceBox).
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    model = model_config(config).setup(scene_box=scene_box, num_train_data=num_cameras)
    model.render_memory_mb = float(config.trainer.render_memory_mb)  # read by render.render_camera's callers
    accelerate(model)  # Triton hash grids on CUDA when tinycudann is absent; a no-op elsewhere
    return model


def restore_sampler_schedule(model: F3RMModel, step: int) -> None:
    """Put the proposal sampler's annealing where training left it after `step` steps.

    nerfacto keeps that schedule in callbacks, not in the state dict; without this a loaded checkpoint
    samples (and so renders) differently from the model that wrote it.
    """
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None)
    for callback in model.get_training_callbacks(attributes):
        callback.run_callback_at_location(max(step - 1, 0), TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
