"""F3RM's parallel feature field: hash grid + positional encoding → small MLP → feature vector.

Built from nerfstudio's field components so that the same configuration runs on tiny-cuda-nn when it
is installed (hash grid and fully-fused MLP) and on nerfstudio's torch implementation otherwise; the
hash-grid semantics (levels, per-level scale, table size) are tinycudann's ``HashGrid`` either way.
"""
from __future__ import annotations

# Imported where used (optional): tinycudann, only to tell whether it is installed (`tcnn_available`).
import dataclasses
import functools
import logging

import torch
from nerfstudio.field_components.encodings import HashEncoding, NeRFEncoding
from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SpatialDistortion
from torch import nn

from ..config import FeatureFieldConfig
from ..fast.patches import mlp_has_skip_connections

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def tcnn_available() -> bool:
    """Tell whether tiny-cuda-nn imports and a CUDA device exists."""
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_implementation(requested: str) -> str:
    """Map 'auto' | 'tcnn' | 'torch' to the implementation that will run ('tcnn' falls back with a log)."""
    if requested not in ('auto', 'tcnn', 'torch'):
        raise ValueError(f"implementation must be 'auto', 'tcnn' or 'torch', got {requested!r}")
    if requested == 'torch':
        return 'torch'
    if tcnn_available():
        return 'tcnn'
    if requested == 'tcnn':
        log.warning('tinycudann is not importable (or no CUDA): using the torch hash grid')
    return 'torch'


class FeatureField(nn.Module):
    """Maps points (field units, before contraction) to distilled features: every head's, concatenated.

    One hash grid and MLP trunk; its output layer is `out_dim` wide (the text head's `feature_dim`, then each of
    `config.extra_heads`): one projection per head from the shared trunk (the 'shared' head layout).
    """

    def __init__(self, config: FeatureFieldConfig, spatial_distortion: SpatialDistortion):
        super().__init__()
        self.config = config
        self.spatial_distortion = spatial_distortion
        # every head's width: one trunk, one output layer with a projection per head ('shared' layout)
        self.out_dim = sum(width for _, width in config.heads)
        implementation = resolve_implementation(config.implementation)
        self.hash_encoding = HashEncoding(
            num_levels=config.num_levels,
            min_res=config.min_resolution,
            max_res=config.max_resolution,
            log2_hashmap_size=config.log2_hashmap_size,
            features_per_level=config.features_per_level,
            implementation=implementation,
        )
        self.position_encoding = NeRFEncoding(
            in_dim=3, num_frequencies=config.pe_frequencies, min_freq_exp=0,
            max_freq_exp=config.pe_frequencies - 1, include_input=True, implementation=implementation,
        )
        # nerfstudio's MLP counts the output layer: `num_layers` hidden layers need num_layers + 1.
        self.mlp = MLP(
            in_dim=self.hash_encoding.get_out_dim() + self.position_encoding.get_out_dim(),
            num_layers=config.num_layers + 1,
            layer_width=config.hidden_dim,
            out_dim=self.out_dim,
            activation=nn.ReLU(),
            out_activation=None,
            implementation=implementation,
        )

    # Set by `core.fast.accelerate`: on CUDA, `render` applies the linear output layer once per ray.
    fast_render = False

    def _encode(self, positions: torch.Tensor) -> torch.Tensor:
        # Contraction maps the unbounded scene to [-2, 2]; the encodings expect [0, 1].
        unit = (self.spatial_distortion(positions) + 2.0) / 4.0
        flat = unit.reshape(-1, 3)
        return torch.cat([self.hash_encoding(flat), self.position_encoding(flat)], dim=-1)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Features [..., out_dim] at `positions` [..., 3] (every head's, concatenated in `config.heads` order)."""
        features = self.mlp(self._encode(positions)).float()
        return features.reshape(*positions.shape[:-1], self.out_dim)

    def text_features(self, positions: torch.Tensor) -> torch.Tensor:
        """Return the first (text) head's features [..., feature_dim] at `positions`."""
        return self(positions)[..., :self.config.feature_dim]

    def render(self, positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Render features along rays: ``sum_i w_i f(x_i)`` [..., D] of samples [..., S, 3] with weights [..., S, 1].

        With `fast_render` (CUDA, torch MLP) the last hidden layer is rendered and the output layer applied per
        ray: ``W (sum_i w_i h_i) + b sum_i w_i``, the same value without the per-sample feature_dim-wide output.
        """
        mlp = self.mlp
        if not (self.fast_render and positions.is_cuda and mlp.tcnn_encoding is None
                and mlp.out_activation is None and not mlp_has_skip_connections(mlp)):
            return torch.sum(weights * self(positions), dim=-2)
        return self.render_projected(positions, weights)

    def render_projected(self, positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`render` by rendering the last hidden layer, then the output layer (torch MLP only)."""
        mlp = self.mlp
        hidden = self._encode(positions)
        for layer in mlp.layers[:-1]:
            hidden = mlp.activation(layer(hidden))
        hidden = hidden.reshape(*positions.shape[:-1], hidden.shape[-1])
        rendered = torch.sum(weights * hidden, dim=-2)
        last = mlp.layers[-1]
        return (torch.nn.functional.linear(rendered, last.weight).float()
                + last.bias.float() * torch.sum(weights, dim=-2))


class SeparateFeatureFields(nn.Module):
    """The 'separate' head layout: one `FeatureField` (hash grid + MLP) per head, outputs concatenated."""

    def __init__(self, config: FeatureFieldConfig, spatial_distortion: SpatialDistortion):
        super().__init__()
        self.config = config
        self.out_dim = sum(width for _, width in config.heads)
        self.fields = nn.ModuleList(
            FeatureField(dataclasses.replace(config, feature_dim=width, extra_heads=''), spatial_distortion)
            for _, width in config.heads)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Features [..., out_dim] at `positions` [..., 3], every head's concatenated."""
        return torch.cat([field(positions) for field in self.fields], dim=-1)

    def render(self, positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Render every head with the same weights, concatenated [..., out_dim]."""
        return torch.cat([field.render(positions, weights) for field in self.fields], dim=-1)

    def text_features(self, positions: torch.Tensor) -> torch.Tensor:
        """Return the first (text) head's features, without evaluating the others."""
        return self.fields[0](positions)


def make_feature_field(config: FeatureFieldConfig, spatial_distortion: SpatialDistortion) -> nn.Module:
    """Build the feature field for `config.head_layout`: one trunk for every head ('shared') or one field each."""
    if config.head_layout == 'separate' and config.extra_heads:
        return SeparateFeatureFields(config, spatial_distortion)
    return FeatureField(config, spatial_distortion)
