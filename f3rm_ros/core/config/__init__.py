"""Every tunable of the core as dataclasses; `config/*.yaml` mirrors them field for field.

A configuration is built from a preset (``cpu-tiny`` for tests, ``cpu`` for a laptop-sized run,
``gpu`` for the F3RM defaults, ``auto`` for ``gpu`` where CUDA is available and ``cpu`` elsewhere) and then
overlaid with YAML files and keyword overrides, so the launch
file, the one-process pipeline and the CLI all read the same numbers.

The sections live by what they tune: `training` (workspace, feature field, model, trainer, teacher) and
`answering` (query, grasp, manipulation, changes), with their shared checks in `checks`; every name is
re-exported here, so ``from ..config import QueryConfig`` works wherever it did.
"""
from __future__ import annotations

# Imported where used (heavy): torch, only to resolve the ``auto`` preset; the configuration itself is torch-free.
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .answering import (GRIPPER_NAMES, QUERY_THRESHOLDS, ChangesConfig, GraspConfig, GripperName,  # noqa: F401
                        ManipulationConfig, QueryConfig)
from .training import (EVAL_POSES, FEATURE_WEIGHTS, HEAD_LAYOUTS, FeatureFieldConfig, ModelConfig,  # noqa: F401
                       TeacherConfig, TrainerConfig, WorkspaceConfig, head_loss_weight, parse_heads)

log = logging.getLogger(__name__)


@dataclass
class F3RMConfig:
    """Everything together; the unit a YAML file or a preset describes."""

    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    feature_field: FeatureFieldConfig = field(default_factory=FeatureFieldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    grasp: GraspConfig = field(default_factory=GraspConfig)
    changes: ChangesConfig = field(default_factory=ChangesConfig)
    manipulation: ManipulationConfig = field(default_factory=ManipulationConfig)


PRESETS: Dict[str, Dict[str, Any]] = {
    # F3RM's published settings, for a workstation GPU; a query evaluates the 220k-voxel grid in one chunk.
    'gpu': {'query': {'chunk_size': 262144}},
    # Small enough to learn a synthetic table in about a minute on 2 CPU cores.
    'cpu-tiny': {
        'feature_field': {'feature_dim': 16, 'num_levels': 6, 'features_per_level': 2,
                          'log2_hashmap_size': 15, 'min_resolution': 8, 'max_resolution': 64,
                          'pe_frequencies': 4, 'hidden_dim': 32, 'num_layers': 1},
        'model': {'hidden_dim': 32, 'hidden_dim_color': 32, 'num_levels': 8, 'max_resolution': 256,
                  'log2_hashmap_size': 15, 'num_proposal_samples_per_ray': (48, 24),
                  'num_nerf_samples_per_ray': 24, 'proposal_net_max_res': (64, 128),
                  'proposal_net_log2_hashmap_size': 13, 'appearance_embed_dim': 8,
                  # a few hundred CPU steps: lean on depth harder so geometry (and so features) forms
                  'depth_loss_mult': 1e-2},
        'trainer': {'steps': 400, 'rays_per_batch': 512, 'capacity': 64, 'eval_every': 200,
                    'checkpoint_every': 200, 'mixed_precision': False, 'eval_chunk_rays': 4096,
                    'lr_fields': 2e-2, 'lr_proposal': 2e-2, 'lr_feature': 2e-2},
        'teacher': {'name': 'labels', 'patch_size': 8, 'labels_dim': 16},
        'query': {'voxel_size': 0.01, 'chunk_size': 32768},
    },
    # A real scan on a CPU: a few minutes, recognisable renders, not a quality run. ViT-L-14-336 costs
    # 10-20 s per image on two cores; ViT-B-16 about a second.
    'cpu': {
        'teacher': {'model_name': 'ViT-B-16', 'image_size': 224},
        'feature_field': {'feature_dim': 512, 'num_levels': 8, 'features_per_level': 4,
                          'log2_hashmap_size': 16, 'min_resolution': 16, 'max_resolution': 128,
                          'pe_frequencies': 6, 'hidden_dim': 64, 'num_layers': 2},
        'model': {'hidden_dim': 48, 'hidden_dim_color': 48, 'num_levels': 12, 'max_resolution': 1024,
                  'log2_hashmap_size': 17, 'num_proposal_samples_per_ray': (48, 24),
                  'num_nerf_samples_per_ray': 24, 'proposal_net_max_res': (64, 128),
                  'proposal_net_log2_hashmap_size': 14, 'appearance_embed_dim': 16, 'depth_loss_mult': 1e-2},
        'trainer': {'steps': 500, 'rays_per_batch': 1024, 'capacity': 128, 'eval_every': 250,
                    'checkpoint_every': 250, 'mixed_precision': False, 'eval_chunk_rays': 4096},
    },
}


# Fields renamed to nerfstudio's names: (section, old name) -> new name. Checkpoints and YAML files written before
# keep working (the old name is read as the new one, with a warning).
RENAMED_FIELDS = {('model', 'depth_loss_weight'): 'depth_loss_mult'}


def merge_into(obj: Any, overrides: Dict[str, Any], path: str = '') -> Any:
    """Return a copy of dataclass `obj` with nested `overrides` applied; unknown keys are errors."""
    if not dataclasses.is_dataclass(obj):
        raise TypeError(f'{path or "config"} is not a section')
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        renamed = RENAMED_FIELDS.get((path.rstrip('.'), key))
        if renamed is not None and renamed not in overrides:
            log.warning('config key %s%s is now %s%s (nerfstudio\'s name); read as that', path, key, path, renamed)
            key = renamed
        if key not in names:
            raise KeyError(f'unknown config key {path + key!r}; known: {sorted(names)}')
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f'{path + key} must be a mapping, got {value!r}')
            changes[key] = merge_into(current, value, path + key + '.')
        else:
            changes[key] = _coerce(value, current, path + key)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert YAML/ROS values to the type of the default (lists → tuples, ints → floats)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str) and all(isinstance(c, str) for c in current):
                # ROS string parameters carry lists of names comma-separated.
                return tuple(s.strip() for s in value.split(',') if s.strip())
            raise TypeError(f'{name} must be a list, got {value!r}')
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError(f'{name} must be true/false, got {value!r}')
        return value
    if isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str) and isinstance(value, str):
        return value
    if current is None:
        return value
    raise TypeError(f'{name} must be {type(current).__name__}, got {value!r}')


SECTIONS = tuple(f.name for f in dataclasses.fields(F3RMConfig))


def yaml_config_section(data: Dict[str, Any]) -> Dict[str, Any]:
    """Return the config part of a parsed YAML file, in any of the three shapes config/*.yaml may take.

    * ``f3rm: {trainer: {...}, ...}``: the section under ``f3rm``;
    * a ROS 2 parameters file (``/**: {ros__parameters: {...}}`` plus per-node sections, as the launch
      file reads it): the ``/**`` parameters, keeping only the config sections (``trainer``, ``query``...;
      dotted names such as ``trainer.steps`` too) and ignoring node settings (``preset``, ``dataset_dir``);
    * the sections at the top level.
    """
    if not isinstance(data, dict):
        raise TypeError(f'a config file must hold a mapping, got {type(data).__name__}')
    if 'f3rm' in data:
        return data['f3rm']
    ros = data.get('/**')
    if isinstance(ros, dict) and isinstance(ros.get('ros__parameters'), dict):
        params = ros['ros__parameters']
        flat = {k: v for k, v in params.items() if '.' in k and k.split('.')[0] in SECTIONS}
        section = {k: v for k, v in params.items() if k in SECTIONS}
        for name, value in unflatten(flat).items():
            section[name] = {**section.get(name, {}), **value}
        return section
    return data


def apply_yaml_files(config: F3RMConfig, yaml_files: Sequence[Path] = ()) -> F3RMConfig:
    """Overlay YAML files (any shape `yaml_config_section` reads) on `config`, in order: every command's path."""
    for path in yaml_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        config = merge_into(config, yaml_config_section(data))
    return config


# The preset that picks one for the machine (`resolve_preset`), and what it picks without CUDA: F3RM's `gpu`
# sizes on two CPU cores took 12 s a step and could not stop within launch's 5 s.
AUTO_PRESET = 'auto'
CPU_PRESET = 'cpu'
PRESET_NAMES = (AUTO_PRESET, *PRESETS)


def resolve_preset(preset: str) -> Tuple[str, str]:
    """Return (the preset to build, a sentence saying which and why).

    ``auto`` becomes ``gpu`` where CUDA is available and `CPU_PRESET` elsewhere; any other name stays as given.

    Raises:
        KeyError: an unknown preset.
    """
    if preset != AUTO_PRESET:
        if preset not in PRESETS:
            raise KeyError(f'unknown preset {preset!r}; choose one of {list(PRESET_NAMES)}')
        return preset, f'preset {preset} (as configured)'
    import torch
    if torch.cuda.is_available():
        return 'gpu', f'preset auto: gpu (CUDA device {torch.cuda.get_device_name(0)})'
    return CPU_PRESET, f'preset auto: {CPU_PRESET} (no CUDA device; set preset: gpu to train F3RM\'s sizes anyway)'


def make_config(preset: str = 'gpu', yaml_files: Sequence[Path] = (),
                overrides: Optional[Dict[str, Any]] = None) -> F3RMConfig:
    """Build a config: preset (``auto``: `resolve_preset`), then each YAML file in order, then `overrides`."""
    preset = resolve_preset(preset)[0]
    config = apply_yaml_files(merge_into(F3RMConfig(), PRESETS[preset]), yaml_files)
    if overrides:
        config = merge_into(config, overrides)
    return config


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML and checkpoints."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def from_dict(data: Dict[str, Any]) -> F3RMConfig:
    """Inverse of `to_dict` (a checkpoint's configuration; fields of `RENAMED_FIELDS` under their old name too)."""
    return merge_into(F3RMConfig(), data)


def flatten(config: Any, prefix: str = '') -> List[Tuple[str, Any]]:
    """(dotted.name, value) pairs: how ROS parameters name the config fields."""
    items = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            items.extend(flatten(value, prefix + f.name + '.'))
        else:
            items.append((prefix + f.name, value))
    return items


def unflatten(pairs: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of `flatten` for a subset of names: {'a.b': 1} → {'a': {'b': 1}}."""
    nested: Dict[str, Any] = {}
    for name, value in pairs.items():
        node = nested
        *parents, leaf = name.split('.')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
