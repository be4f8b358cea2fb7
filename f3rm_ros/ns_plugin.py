"""``ns-train f3rm-ros``: the same model and teachers as a nerfstudio method (trainer, viewer, ns-render).

Registered through the ``nerfstudio.method_configs`` entry point (setup.py), so after ``pip install`` of this
package ``ns-train f3rm-ros --data DATASET`` trains F3RM's nerfacto + feature field with nerfstudio's own trainer
and viewer. Three pieces differ from nerfacto:

* `F3RMDataParser` keeps the dataset's frame (no re-orientation) and maps it into the field's unit box with the
  same workspace box as ``f3rm-ros train`` (the dataset's ``workspace`` entry, its depth maps or its cameras);
* `F3RMDataManager` computes the teacher's dense features of every training image once and adds each ray's
  nearest-patch feature to the batch (and its depth where the dataset has depth maps: the same DS-NeRF depth loss
  as ``f3rm-ros train``, weighted by the preset's ``model.depth_loss_mult``);
* `F3RMNSModel` is sized by the data manager's preset as ``f3rm-ros train --preset`` sizes it (nerfacto, proposal
  networks and feature field; every size given on the command line wins), its feature head by the teacher, and at
  every ``steps_per_save`` and at the end also writes ``f3rm_ros/latest.ckpt`` in the run folder (beside
  ``config.yml``; not in ``nerfstudio_models``, whose every entry nerfstudio's loaders read as a step) in
  f3rm_ros's own format: ``f3rm-ros query``, ``eval``, ``render``, ``export`` and the query node load it like any
  other.
"""
from __future__ import annotations

# Imported where used: dataset reading, the workspace and the teachers (core.capture.frames, core.training.offline,
# core.teachers: ~20 ms), which every `ns-train` pays when it lists methods (this module is its entry point).
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from torch.optim import lr_scheduler
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from tyro.conf import Suppress

from .core.config import F3RMConfig, FeatureFieldConfig, make_config, to_dict
from .core.geometry import WorkspaceBox
from .core.training.checkpoints import CHECKPOINT_VERSION, atomic_torch_save
from .core.training.model import F3RMModel, F3RMModelConfig, model_config

log = logging.getLogger(__name__)

CHECKPOINT_NAME = 'f3rm_ros/latest.ckpt'  # in the run folder


# ---------------------------------------------------------------------------------------------- data


@dataclass
class F3RMDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's dataparser in the dataset's own frame, mapped into the field's unit box by the workspace."""

    _target: Type = field(default_factory=lambda: F3RMDataParser)
    orientation_method: str = 'none'
    center_method: str = 'none'
    auto_scale_poses: bool = False
    workspace: Optional[Tuple[float, float, float, float, float, float]] = None
    """XMIN YMIN ZMIN XMAX YMAX ZMAX in the dataset frame (default: its entry, depth maps or cameras)."""


class F3RMDataParser(Nerfstudio):
    """Cameras in field units: ``(p - workspace centre) x scale``, the transform ``f3rm-ros train`` uses."""

    config: F3RMDataParserConfig
    _box: Optional[WorkspaceBox] = None

    def workspace_box(self) -> WorkspaceBox:
        """Return the workspace box of the dataset (resolved once)."""
        if self._box is None:
            from .core.capture.frames import read_dataset, read_metadata
            from .core.training.offline import resolve_workspace
            data = Path(self.config.data)
            root = data.parent if data.suffix == '.json' else data
            meta = read_metadata(root)
            override = self.config.workspace
            frames = [] if override or 'workspace' in meta else read_dataset(root)
            lo, hi = resolve_workspace(meta, frames, (override[:3], override[3:]) if override else None)
            self._box = WorkspaceBox(np.asarray(lo, float), np.asarray(hi, float))
        return self._box

    def _generate_dataparser_outputs(self, split='train', **kwargs):
        for name in ('orientation_method', 'center_method'):
            if getattr(self.config, name) != 'none':
                raise ValueError(f'f3rm-ros keeps the dataset frame: {name} must be "none"')
        if self.config.auto_scale_poses or self.config.scale_factor != 1.0:
            raise ValueError('f3rm-ros scales by the workspace box: leave auto_scale_poses off and scale_factor 1')
        outputs = super()._generate_dataparser_outputs(split, **kwargs)
        box = self.workspace_box()
        c2w = outputs.cameras.camera_to_worlds
        c2w[..., :3, 3] = (c2w[..., :3, 3] - torch.as_tensor(box.center, dtype=c2w.dtype)) * box.scale
        outputs.scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        transform = torch.eye(4)[:3]
        transform[:, 3] = -torch.as_tensor(box.center, dtype=torch.float32)
        outputs.dataparser_transform = transform @ outputs.dataparser_transform.new_tensor(
            np.vstack([outputs.dataparser_transform.numpy(), [0, 0, 0, 1]]))
        outputs.dataparser_scale = box.scale
        outputs.metadata['f3rm_workspace'] = (box.min_xyz.tolist(), box.max_xyz.tolist())
        return outputs


@dataclass
class F3RMDataManagerConfig(VanillaDataManagerConfig):
    """nerfstudio's data manager plus the teacher's features of every training image."""

    _target: Type = field(default_factory=lambda: F3RMDataManager)
    dataparser: F3RMDataParserConfig = field(default_factory=F3RMDataParserConfig)
    teacher: str = 'auto'
    """auto (CLIP if its weights load, else labels if the dataset has label maps), clip or labels."""
    preset: str = 'gpu'
    """f3rm_ros preset: the teacher (gpu: CLIP ViT-L-14-336, cpu: ViT-B-16, cpu-tiny: labels) and the model's sizes."""
    clip_weights: Optional[str] = None
    """A local open_clip weights file for the clip teacher."""


class F3RMDataManager(VanillaDataManager):
    """Adds ``batch['feature']``: each training ray's nearest teacher patch (computed once per image)."""

    config: F3RMDataManagerConfig

    def __init__(self, config: F3RMDataManagerConfig, device='cpu', test_mode='val', world_size=1, local_rank=0,
                 **kwargs):
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank,
                         **kwargs)
        from .core.capture.frames import read_dataset, read_metadata
        from .core.training.offline import dataset_labels
        from .core.teachers import choose_teacher
        root = Path(self.config.dataparser.data)
        overrides = {'teacher': {'pretrained': str(Path(config.clip_weights).resolve())}} if config.clip_weights else {}
        f3rm = make_config(config.preset, overrides=overrides)
        teacher, why = choose_teacher(f3rm, dataset_labels(read_metadata(root)), config.teacher)
        log.info('teacher: %s (%s)', teacher.name, why)
        by_name = {frame.name: frame for frame in read_dataset(root)}
        names = [Path(name).stem for name in self.train_dataparser_outputs.image_filenames]
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(f'{root}: no frame for training images {missing[:3]}')
        frames = [by_name[name] for name in names]
        chunks = [teacher.extract(frames[i:i + f3rm.teacher.batch_size])
                  for i in range(0, len(frames), f3rm.teacher.batch_size)]
        self.features = torch.cat(chunks).to(torch.float16)            # [N, h, w, D] on the CPU
        cameras = self.train_dataset.cameras
        self._sizes = torch.stack([cameras.height[:, 0], cameras.width[:, 0]], dim=-1).long()
        # depth maps (z-depth, field units; 0 = none) for the model's DS-NeRF loss, as f3rm-ros train uses them
        self.depths = None
        if all(frame.depth is not None for frame in frames):
            scale = WorkspaceBox(*(np.asarray(v, float) for v in
                                   self.train_dataparser_outputs.metadata['f3rm_workspace'])).scale
            self.depths = torch.from_numpy(np.stack([np.nan_to_num(f.depth) for f in frames]).astype(np.float32)
                                           * scale)
        self.train_dataset.metadata['f3rm'] = {
            'feature_dim': teacher.dim, 'teacher': {'name': teacher.name, 'state': teacher.state()},
            'teacher_config': to_dict(f3rm.teacher), 'why': why, 'num_frames': len(frames), 'preset': config.preset,
            'workspace': self.train_dataparser_outputs.metadata['f3rm_workspace']}

    def next_train(self, step: int):
        """Nerfstudio's batch of rays plus each ray's teacher feature."""
        ray_bundle, batch = super().next_train(step)
        index = batch['indices'].long().cpu()
        camera, y, x = index[:, 0], index[:, 1], index[:, 2]
        height, width = self._sizes[camera, 0], self._sizes[camera, 1]
        patches_h, patches_w = self.features.shape[1:3]
        batch['feature'] = self.features[camera, y * patches_h // height, x * patches_w // width].float().to(
            self.device)
        if self.depths is not None:
            depth_h, depth_w = self.depths.shape[1:3]
            batch['depth_image'] = self.depths[camera, y * depth_h // height, x * depth_w // width][:, None].to(
                self.device)
        return ray_bundle, batch


# ---------------------------------------------------------------------------------------------- model


# F3RMNSModelConfig field -> the f3rm_ros config field it sets; None on the command line = the preset's value
PRESET_FIELDS = {
    'hidden_dim': 'model.hidden_dim', 'hidden_dim_color': 'model.hidden_dim_color', 'num_levels': 'model.num_levels',
    'base_res': 'model.base_resolution', 'max_res': 'model.max_resolution',
    'log2_hashmap_size': 'model.log2_hashmap_size', 'features_per_level': 'model.features_per_level',
    'num_proposal_samples_per_ray': 'model.num_proposal_samples_per_ray',
    'num_nerf_samples_per_ray': 'model.num_nerf_samples_per_ray',
    'proposal_net_max_res': 'model.proposal_net_max_res',
    'proposal_net_log2_hashmap_size': 'model.proposal_net_log2_hashmap_size',
    'appearance_embed_dim': 'model.appearance_embed_dim', 'feature_loss_mult': 'model.feature_loss_weight',
    'depth_loss_mult': 'model.depth_loss_mult', 'depth_sigma': 'model.depth_sigma'}


@dataclass
class PresetFeatureFieldConfig:
    """The feature field's sizes; None = the preset's (`core.config.FeatureFieldConfig`; its width is the teacher's)."""

    num_levels: Optional[int] = None
    features_per_level: Optional[int] = None
    log2_hashmap_size: Optional[int] = None
    min_resolution: Optional[int] = None
    max_resolution: Optional[int] = None
    pe_frequencies: Optional[int] = None
    hidden_dim: Optional[int] = None
    num_layers: Optional[int] = None
    implementation: Optional[str] = None
    head_layout: Optional[str] = None


@dataclass
class F3RMNSModelConfig(F3RMModelConfig):
    """F3RM's model (nerfacto + feature field) sized by the f3rm_ros preset, its feature head by the teacher.

    Every size left at None is the preset's, as ``f3rm-ros train --preset`` sizes it (the data manager's
    ``--pipeline.datamanager.preset`` unless ``--pipeline.model.preset`` names another); a value given on the
    command line wins. The sizes are filled in when the model is built (`resolve_preset`).
    """

    _target: Type = field(default_factory=lambda: F3RMNSModel)
    preset: Optional[str] = None
    """f3rm_ros preset that sizes the model and is recorded in the exported checkpoint (default: the data manager's)."""
    hidden_dim: Optional[int] = None
    hidden_dim_color: Optional[int] = None
    num_levels: Optional[int] = None
    base_res: Optional[int] = None
    max_res: Optional[int] = None
    log2_hashmap_size: Optional[int] = None
    features_per_level: Optional[int] = None
    num_proposal_samples_per_ray: Optional[Tuple[int, ...]] = None
    num_nerf_samples_per_ray: Optional[int] = None
    proposal_net_max_res: Optional[Tuple[int, ...]] = None
    """Resolution of each proposal network (their number is nerfacto's num_proposal_iterations)."""
    proposal_net_log2_hashmap_size: Optional[int] = None
    appearance_embed_dim: Optional[int] = None
    feature_loss_mult: Optional[float] = None
    depth_loss_mult: Optional[float] = None
    depth_sigma: Optional[float] = None
    """DS-NeRF depth loss sigma in metres (field units once the model is built)."""
    # made from proposal_net_max_res and proposal_net_log2_hashmap_size
    proposal_net_args_list: Suppress[Optional[List[Dict]]] = None
    num_proposal_iterations: Suppress[Optional[int]] = None
    feature_field: PresetFeatureFieldConfig = field(default_factory=PresetFeatureFieldConfig)

    def resolve_preset(self, preset: str, workspace, feature_dim: int) -> None:
        """Fill every size left at None from `preset`, with the dataset's `workspace` ((min, max) metres)."""
        if isinstance(self.feature_field, FeatureFieldConfig):
            return  # resolved already (a model rebuilt from this config)
        self.preset = self.preset or preset
        given: Dict[str, Dict] = {}
        for name, path in PRESET_FIELDS.items():
            if getattr(self, name) is not None:
                section, key = path.split('.')
                given.setdefault(section, {})[key] = getattr(self, name)
        features = {f.name: getattr(self.feature_field, f.name) for f in dataclasses.fields(self.feature_field)
                    if getattr(self.feature_field, f.name) is not None}
        config = make_config(self.preset, overrides={
            **given, 'workspace': {'min_xyz': tuple(workspace[0]), 'max_xyz': tuple(workspace[1])},
            'feature_field': {**features, 'feature_dim': int(feature_dim)}})
        sized = model_config(config)  # what f3rm-ros train builds from this configuration (depth_sigma: field units)
        for name, path in PRESET_FIELDS.items():
            section, key = path.split('.')
            value = getattr(sized, name) if hasattr(sized, name) else getattr(getattr(config, section), key)
            setattr(self, name, value)
        self.proposal_net_args_list = sized.proposal_net_args_list
        self.num_proposal_iterations = sized.num_proposal_iterations
        self.feature_field = sized.feature_field


def f3rm_config_of(model_config: F3RMModelConfig, preset: str, workspace, teacher: Dict) -> F3RMConfig:
    """Return the `F3RMConfig` whose `core.model.build_model` rebuilds exactly this nerfstudio model."""
    config = make_config(preset)
    c = model_config
    config.workspace = dataclasses.replace(config.workspace, min_xyz=tuple(workspace[0]), max_xyz=tuple(workspace[1]))
    field_units_per_metre = WorkspaceBox.from_config(config.workspace).scale
    config.model = dataclasses.replace(
        config.model, hidden_dim=c.hidden_dim, hidden_dim_color=c.hidden_dim_color, num_levels=c.num_levels,
        base_resolution=c.base_res, max_resolution=c.max_res, log2_hashmap_size=c.log2_hashmap_size,
        features_per_level=c.features_per_level, num_proposal_samples_per_ray=tuple(c.num_proposal_samples_per_ray),
        num_nerf_samples_per_ray=c.num_nerf_samples_per_ray,
        proposal_net_max_res=tuple(a['max_res'] for a in c.proposal_net_args_list),
        proposal_net_log2_hashmap_size=c.proposal_net_args_list[0]['log2_hashmap_size'],
        appearance_embed_dim=c.appearance_embed_dim, camera_optimizer=c.camera_optimizer.mode,
        near_plane=c.near_plane, far_plane=c.far_plane, background_color=c.background_color,
        feature_loss_weight=c.feature_loss_mult, depth_loss_mult=c.depth_loss_mult,
        depth_sigma=c.depth_sigma / field_units_per_metre, predict_normals=c.predict_normals,
        feature_weights=c.feature_weights, head_loss_weights=c.head_loss_weights)
    config.feature_field = c.feature_field
    known = {f.name for f in dataclasses.fields(config.teacher)}
    config.teacher = dataclasses.replace(config.teacher, **{k: v for k, v in teacher.items() if k in known})
    return config


class F3RMNSModel(F3RMModel):
    """`F3RMModel` for nerfstudio's trainer; exports f3rm_ros checkpoints."""

    config: F3RMNSModelConfig

    def populate_modules(self):
        """Size the model by the preset and its feature head by the teacher (from the data manager), then build it."""
        self.f3rm = (self.kwargs.get('metadata') or {}).get('f3rm')
        if self.f3rm is None:
            raise ValueError('the f3rm-ros model needs the f3rm-ros data manager (its teacher features)')
        self.config.resolve_preset(self.f3rm.get('preset', 'gpu'), self.f3rm['workspace'], self.f3rm['feature_dim'])
        super().populate_modules()

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        """Nerfacto's callbacks plus the f3rm_ros checkpoint export."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            first = []  # the run's first step: a run resumed with --load-dir goes on from the loaded step

            def export(step: int) -> None:
                first[:] = first or [step]
                last = step + 1 >= first[0] + trainer.config.max_num_iterations
                if last or (step + 1) % trainer.config.steps_per_save == 0:
                    self.export_checkpoint(Path(trainer.base_dir) / CHECKPOINT_NAME, step + 1)
            callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], export))
        return callbacks

    def export_checkpoint(self, path: Path, step: int) -> Path:
        """Write the model in f3rm_ros's checkpoint format (tensors + JSON metadata, atomically)."""
        config = f3rm_config_of(self.config, self.config.preset, self.f3rm['workspace'], self.f3rm['teacher_config'])
        meta = {'format': 'f3rm_ros', 'version': CHECKPOINT_VERSION, 'step': int(step),
                'num_frames': int(self.f3rm['num_frames']), 'capacity': int(self.num_train_data),
                'config': to_dict(config), 'teacher': self.f3rm['teacher'], 'scan_id': '', 'saved_at': time.time(),
                'source': 'ns-train f3rm-ros'}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({'meta_json': json.dumps(meta),
                           'model': {k: v.detach().cpu() for k, v in self.state_dict().items()}}, path)
        return path


# ---------------------------------------------------------------------------------------------- method


@dataclass
class DecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """nerfstudio's exponential decay with warm-up, its learning rates Python floats."""

    _target: Type = field(default_factory=lambda: DecayScheduler)


class DecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's schedule, returning Python floats.

    nerfstudio 1.1.5's factors are numpy floats; they land in its checkpoints (optimiser and scheduler states), and
    torch >= 2.6 then refuses to load them (``weights_only``): ns-render, ns-viewer and ``--load-dir`` fail.
    """

    def get_scheduler(self, optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        """Return nerfstudio's `LambdaLR` schedule with each factor converted to a Python float."""
        decay = super().get_scheduler(optimizer, lr_init).lr_lambdas[0]
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: float(decay(step)))


def _method(preset: str = 'gpu') -> TrainerConfig:
    """Return the ``ns-train f3rm-ros`` trainer configuration: nerfacto's schedule plus the feature field."""
    model = model_config(make_config(preset))
    sized = {'_target', 'feature_field', 'proposal_net_args_list', 'num_proposal_iterations', *PRESET_FIELDS}
    # the fields every preset shares (near plane, camera optimiser, ...); the sizes come from the preset at setup
    model_kwargs = {f.name: getattr(model, f.name) for f in dataclasses.fields(F3RMModelConfig) if f.name not in sized}
    adam = {'optimizer': AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            'scheduler': DecaySchedulerConfig(lr_final=1e-4, max_steps=200000)}
    return TrainerConfig(
        method_name='f3rm-ros', steps_per_eval_batch=500, steps_per_save=2000, max_num_iterations=30000,
        mixed_precision=True,
        pipeline=VanillaPipelineConfig(
            datamanager=F3RMDataManagerConfig(preset=preset, train_num_rays_per_batch=4096,
                                              eval_num_rays_per_batch=4096),
            model=F3RMNSModelConfig(**{**model_kwargs, 'eval_num_rays_per_chunk': 1 << 15})),
        optimizers={'proposal_networks': dict(adam), 'fields': dict(adam), 'feature_field': dict(adam),
                    'camera_opt': {'optimizer': AdamOptimizerConfig(lr=1e-3, eps=1e-15),
                                   'scheduler': DecaySchedulerConfig(lr_final=1e-4, max_steps=5000)}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15), vis='viewer')


f3rm_ros_method = MethodSpecification(
    config=_method('gpu'),
    description='F3RM (distilled feature fields) as in f3rm_ros: nerfacto + a hash-grid CLIP feature field; '
                'exports f3rm_ros checkpoints for f3rm-ros query/eval/render and the ROS query node')
