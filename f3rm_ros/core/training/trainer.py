"""OnlineTrainer: fits the F3RM model while its FrameStore is still growing.

Per-camera parameters (appearance embedding, SO3xR3 pose refinement) are sized by the store's capacity,
so frames can arrive at any time and a checkpoint written with 12 frames loads into a run with 30.
Every step samples random pixels of the training frames with their teacher features (nearest patch).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

from ..config import F3RMConfig, from_dict, to_dict
from .. import fast
from ..fast import adam_config, sample_rays
from ..fast.graphs import CAPTURE_FROM_STEP, GraphedTrainStep, model_losses, step_stats
from ..capture.frames import FrameStore, PosedFrame
from ..geometry import WorkspaceBox, optical_to_opengl, resized_intrinsics
from .checkpoints import CHECKPOINT_VERSION, atomic_torch_save, cloned_state, plain_state, read_checkpoint
from .model import PER_CAMERA_PARAMETERS, F3RMModel, build_model, restore_sampler_schedule
from .pixels import PixelSampler
from .surface import SurfacePrior
from .render import render_camera
from ..teachers import Teacher

log = logging.getLogger(__name__)


def pick_device(name: str = 'auto') -> torch.device:
    """Resolve 'auto' to CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def psnr(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]."""
    mse = torch.mean((predicted.float() - target.float()) ** 2).item()
    return float('inf') if mse == 0 else -10.0 * math.log10(mse)


def make_cameras(frames: List[PosedFrame], box: WorkspaceBox, device: torch.device,
                 corrections: Optional[torch.Tensor] = None) -> Cameras:
    """Build nerfstudio Cameras (OpenGL axes, field units) for posed frames.

    `corrections` [N, 3, 4] are pose refinements in nerfstudio's convention (`CameraOptimizer.apply_to_camera`:
    rotation applied in world axes about the camera centre, translation added to it).
    """
    c2w = torch.as_tensor(box.pose_to_field(optical_to_opengl(np.stack([f.T_base_optical for f in frames])))[:, :3, :4],
                          dtype=torch.float32)
    if corrections is not None:
        corrections = corrections.detach().float().cpu()
        c2w = torch.cat([corrections[:, :3, :3] @ c2w[:, :3, :3], c2w[:, :3, 3:] + corrections[:, :3, 3:]], dim=-1)
    K = np.stack([f.K for f in frames])
    return Cameras(
        camera_to_worlds=c2w,
        fx=torch.as_tensor(K[:, 0, 0:1], dtype=torch.float32), fy=torch.as_tensor(K[:, 1, 1:2], dtype=torch.float32),
        cx=torch.as_tensor(K[:, 0, 2:3], dtype=torch.float32), cy=torch.as_tensor(K[:, 1, 2:3], dtype=torch.float32),
        width=torch.tensor([[f.width] for f in frames]), height=torch.tensor([[f.height] for f in frames]),
        camera_type=CameraType.PERSPECTIVE,
    ).to(device)


RENDERED = ('rgb', 'accumulation', 'depth', 'feature', 'similarity')


@torch.no_grad()
def render_model(model: F3RMModel, box: WorkspaceBox, T_base_optical: np.ndarray, K: np.ndarray, width: int,
                 height: int, names: Sequence[str] = RENDERED,
                 correction: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    """Render a view in eval mode in memory-bounded chunks (`render.render_camera`), restoring the model's mode.

    Returns rgb, depth (metres along the ray), accumulation, feature, feature_<head> of extra heads, normals and
    pred_normals (with predict_normals), and similarity when the model has a query (those of `names`).
    `correction` [3, 4]: a pose refinement for this view. The caller holds any trainer lock.
    """
    probe = PosedFrame(np.zeros((height, width, 3), np.uint8), K, T_base_optical)
    camera = make_cameras([probe], box, next(model.parameters()).device,
                          None if correction is None else correction[None])
    outputs = render_camera(model, camera, getattr(model, 'render_memory_mb', 1024.0),
                            model.config.eval_num_rays_per_chunk, names)
    result = {name: value.float().cpu().numpy() for name, value in outputs.items()
              if name in ('rgb', 'accumulation', 'feature', 'similarity', 'pred_normals', 'normals')
              or name.startswith('feature_')}  # feature_<head>: the extra heads (teachers.multi)
    for name in ('accumulation', 'similarity'):
        if name in result:
            result[name] = result[name][..., 0]
    if 'depth' in outputs:
        result['depth'] = outputs['depth'][..., 0].float().cpu().numpy() / box.scale
    return result


def holdout_split(num_frames: int, holdout_every: int) -> Tuple[List[int], List[int]]:
    """(train, eval) frame indices: every `holdout_every`-th frame is held out (0 = none)."""
    if holdout_every <= 1:
        return list(range(num_frames)), []
    held = [i for i in range(num_frames) if i % holdout_every == holdout_every // 2]
    return [i for i in range(num_frames) if i not in held], held


def _resize_per_camera(state_dict: Dict[str, torch.Tensor], model: F3RMModel) -> bool:
    """Fit per-camera rows of a checkpoint to this model's capacity; True if anything was resized."""
    resized = False
    own = model.state_dict()
    for name in PER_CAMERA_PARAMETERS:
        if name in state_dict and state_dict[name].shape != own[name].shape:
            rows = min(state_dict[name].shape[0], own[name].shape[0])
            fitted = own[name].clone()
            fitted[:rows] = state_dict[name][:rows]
            state_dict[name] = fitted
            resized = True
    return resized


class OnlineTrainer:
    """Trains an `F3RMModel` on the frames of a `FrameStore`; `lock` guards the model for readers.

    Why one class: every method reads or changes the one model, its optimisers and the frames' device arrays under
    the one `lock` (sync, step, render and held-out scores, the checkpoint's state, a scene change's masks and
    schedule rewind). What stands alone lives beside it: which pixels a batch draws (`pixels`), a scene change's
    surface prior (`surface`), the checkpoint file (`checkpoints`), rendering in chunks (`render`), the CUDA-graph
    step (`fast.graphs`).
    """

    def __init__(self, config: F3RMConfig, store: FrameStore, teacher: Teacher):
        self.config = config
        self.store = store
        self.teacher = teacher
        self.box = WorkspaceBox.from_config(config.workspace)
        self.device = pick_device(config.trainer.device)
        self.lock = threading.RLock()
        torch.manual_seed(config.trainer.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.trainer.seed)
        self.model = build_model(config, store.capacity).to(self.device)
        self.model.train()
        self.use_amp = config.trainer.mixed_precision and self.device.type == 'cuda'
        self.grad_scaler = torch.amp.GradScaler('cuda', enabled=self.use_amp)
        self.optimizers = Optimizers(self._optimizer_config(), self.model.get_param_groups())
        self.callbacks = self.model.get_training_callbacks(TrainingCallbackAttributes(
            optimizers=self.optimizers, grad_scaler=self.grad_scaler, pipeline=None, trainer=None))
        self.graphed: Optional[GraphedTrainStep] = None
        if config.trainer.cuda_graphs and self.device.type == 'cuda' and fast.enabled():
            self.graphed = GraphedTrainStep(self.model, self.grad_scaler, self.use_amp, compile=config.trainer.compile)
        self.step_count = 0
        self.cameras: Optional[Cameras] = None
        self.images: Optional[torch.Tensor] = None     # [capacity, H, W, 3] uint8 on device
        self.features: Optional[torch.Tensor] = None   # [capacity, h, w, D] fp16 on device
        self.depths: Optional[torch.Tensor] = None     # [capacity, H, W] z-depth in field units, 0 = none
        self.pixels = PixelSampler(self.device, self.generator)   # masks, a scene change's focus
        self.surface = SurfacePrior(self.box, self.device, self.generator)   # a scene change's new surfaces
        self._revisions: List[int] = []                # the store's slot revisions the arrays hold
        self.frames: List[PosedFrame] = []
        self.train_indices: List[int] = []
        self.eval_indices: List[int] = []
        self.last_checkpoint: Optional[Path] = None

    def _optimizer_config(self) -> Dict:
        t = self.config.trainer

        def adam(lr: float) -> Dict:
            return {'optimizer': adam_config(lr=lr, eps=1e-15, device=self.device, lazy=t.lazy_hash_adam),
                    'scheduler': ExponentialDecaySchedulerConfig(lr_final=lr * t.lr_final_ratio, max_steps=t.steps)}
        return {'fields': adam(t.lr_fields), 'proposal_networks': adam(t.lr_proposal),
                'feature_field': adam(t.lr_feature), 'camera_opt': adam(t.lr_camera)}

    @property
    def num_frames(self) -> int:
        """Frames the trainer has features for."""
        return len(self.frames)

    def sync_frames(self, should_stop: Optional[Callable[[], bool]] = None) -> int:
        """Take frames added to (or replaced in) the store since the last call: teacher features, images, cameras.

        A replaced slot also forgets its old camera's appearance code and pose correction. `should_stop` is
        asked before each teacher chunk: when it says True, nothing is taken (0 is returned) and a later call
        starts again (a node shutting down must not wait for minutes of feature extraction).
        """
        frames, revisions = self.store.state()
        if len(frames) < len(self.frames):  # the store was cleared
            self.frames, self._revisions = [], []
        replaced = [i for i in range(len(self.frames)) if revisions[i] != self._revisions[i]]
        slots = replaced + list(range(len(self.frames), len(frames)))
        if not slots:
            return 0
        changed = [frames[i] for i in slots]
        batch_size = self.config.teacher.batch_size
        chunks = []
        for i in range(0, len(changed), batch_size):
            if should_stop is not None and should_stop():
                return 0
            chunks.append(self.teacher.extract(changed[i:i + batch_size]))
            if len(changed) > batch_size:  # a resumed or offline scan: this can take minutes on a CPU
                log.info('teacher features: %d of %d new frames', min(i + batch_size, len(changed)), len(changed))
        features = torch.cat(chunks)
        with self.lock:
            if self.features is None:
                capacity = self.store.capacity
                self.features = torch.zeros((capacity, *features.shape[1:]), dtype=torch.float16, device=self.device)
                self.images = torch.zeros((capacity, changed[0].height, changed[0].width, 3), dtype=torch.uint8,
                                          device=self.device)
                self.depths = torch.zeros((capacity, changed[0].height, changed[0].width), device=self.device)
            index = torch.as_tensor(slots, device=self.device)
            self.features[index] = features.to(self.device, torch.float16)
            self.images[index] = torch.from_numpy(np.stack([f.image for f in changed])).to(self.device)
            for slot, frame in zip(slots, changed):
                depth = frame.depth if frame.depth is not None else np.zeros(frame.image.shape[:2], np.float32)
                self.depths[slot] = torch.from_numpy(np.nan_to_num(depth).astype(np.float32)).to(
                    self.device) * self.box.scale
            self.pixels.take_masks(slots, [frame.mask for frame in changed], self.images.shape[:3])
            if replaced:
                self._forget_cameras(replaced)
            self.pixels.frames_changed()
            self.frames, self._revisions = frames, revisions
            self.cameras = make_cameras(frames, self.box, self.device)
            self.train_indices, self.eval_indices = holdout_split(len(frames), self.config.trainer.holdout_every)
        return len(slots)

    @torch.no_grad()
    def _forget_cameras(self, slots: List[int]) -> None:
        """Reset the per-camera parameters of replaced slots: another camera view lives there now."""
        index = torch.as_tensor(slots, device=self.device)
        appearance = self.model.field.embedding_appearance
        if appearance is not None:
            appearance.trained_rows[index] = False
            fresh = torch.empty_like(appearance.embedding.weight[index])
            torch.nn.init.normal_(fresh)                 # torch.nn.Embedding's own initialisation
            appearance.embedding.weight[index] = fresh
        adjustment = getattr(self.model.camera_optimizer, 'pose_adjustment', None)
        if adjustment is not None:
            adjustment[index] = 0.0

    def refresh_masks(self, slots: Sequence[int]) -> None:
        """Take the masks of held frames again (a scene change masked what they saw of the old scene)."""
        with self.lock:
            if self.images is None or not slots:
                return
            self.pixels.take_masks(slots, [self.frames[slot].mask for slot in slots], self.images.shape[:3],
                                   always=True)

    def rewind_schedule(self, step: int) -> None:
        """Set the learning rates to the schedule's value at `step` (if that is earlier) and decay from there.

        A scene change is new ground: at the end of the decay (1 % of the initial rates) a region relearns slowly.
        """
        with self.lock:
            for scheduler in self.optimizers.schedulers.values():
                if scheduler.last_epoch <= step:
                    continue
                scheduler.last_epoch = int(step)
                for group, base, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                             scheduler.lr_lambdas):
                    group['lr'] = base * rate(scheduler.last_epoch)

    def set_focus(self, pixels: Optional[np.ndarray], fraction: float, until_step: int) -> None:
        """Draw `fraction` of each batch's rays from `pixels` until `until_step` (the views of a scene change).

        `pixels`: flat ids (frame * H * W + y * W + x) of training frames' pixels; None or empty: no focus.
        """
        with self.lock:
            self.pixels.set_focus(pixels, fraction, until_step)

    def set_surface_prior(self, matter_base: np.ndarray, clear_base: np.ndarray, weight: float,
                          until_step: int) -> None:
        """Raise the density at `matter_base`, lower it at `clear_base` ([N, 3] base frame) until `until_step`.

        See `SurfacePrior`.
        """
        with self.lock:
            self.surface.set(matter_base, clear_base, weight, until_step)

    def _sample_batch(self, num_rays: int):
        height, width = self.images.shape[1:3]
        patches_h, patches_w = self.features.shape[1:3]
        frame, y, x = self.pixels.draw(num_rays, self.train_indices, height, width, (patches_h, patches_w),
                                       self.step_count)
        coords = torch.stack([y, x], dim=-1).float() + 0.5
        ray_bundle = sample_rays(self.cameras, frame[:, None], coords)
        batch = {
            'image': self.images[frame, y, x].float() / 255.0,
            # nearest teacher patch of each pixel
            'feature': self.features[frame, y * patches_h // height, x * patches_w // width],
            'depth_image': self.depths[frame, y, x][:, None],  # 0 where the frame has no depth: ignored
        }
        return ray_bundle, batch

    def step(self) -> Dict[str, torch.Tensor]:
        """One optimisation step; returns detached loss terms (tensors: read them only when shown)."""
        if not self.train_indices:
            raise RuntimeError('no training frames yet: add frames to the store and call sync_frames()')
        with self.lock:
            self.model.train()
            for callback in self.callbacks:
                callback.run_callback_at_location(self.step_count, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            ray_bundle, batch = self._sample_batch(self.config.trainer.rays_per_batch)
            self.model.mark_cameras_trained(ray_bundle.camera_indices[:, 0])
            if self.graphed is not None and self.step_count >= CAPTURE_FROM_STEP:
                stats = self.graphed.run(ray_bundle, batch, self.optimizers)
            else:
                stats = self._eager_step(ray_bundle, batch)
            self.grad_scaler.update()
            if self.surface.active(self.step_count):
                self.surface.step(self.model, self.optimizers, self.grad_scaler)
            self.optimizers.scheduler_step_all(self.step_count)
            for callback in self.callbacks:
                callback.run_callback_at_location(self.step_count, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
            self.step_count += 1
        return stats

    def _eager_step(self, ray_bundle, batch) -> Dict[str, torch.Tensor]:
        """Forward, backward and optimiser step launched op by op (the CPU path, and warm-up on CUDA)."""
        losses, psnr = model_losses(self.model, ray_bundle, batch, self.use_amp)
        total = sum(losses.values())
        self.optimizers.zero_grad_all()
        self.grad_scaler.scale(total).backward()
        self.optimizers.optimizer_scaler_step_all(self.grad_scaler)
        return step_stats(losses, total, psnr)

    @torch.no_grad()
    def render(self, T_base_optical: np.ndarray, K: np.ndarray, width: int, height: int,
               names: Sequence[str] = RENDERED, correction: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
        """Render a view of the current model.

        Returns rgb [H, W, 3] in [0, 1], depth [H, W] (metres along the ray), accumulation, feature
        [H, W, D], and similarity [H, W] when a query is set on the model (those of `names`).
        """
        with self.lock:
            return render_model(self.model, self.box, T_base_optical, K, width, height, names, correction)

    @torch.no_grad()
    def pose_correction(self, index: int, neighbours: int = 2) -> Optional[torch.Tensor]:
        """Pose refinement [3, 4] for frame `index` that training did not refine (a held-out view), or None.

        Pose refinement moves the training cameras, and the field moves with them; a held-out view rendered
        from its recorded pose is then scored partly on that shift, not on the field. Its estimate: the mean
        correction of the `neighbours` trained cameras nearest to it (camera centres), rotations averaged and
        projected back onto SO(3). None when refinement is off or nothing is trained yet.
        """
        optimizer = self.model.camera_optimizer
        if optimizer.config.mode == 'off' or not self.train_indices or self.cameras is None:
            return None
        train = torch.as_tensor(self.train_indices, device=self.device)
        if index in self.train_indices:
            return optimizer(torch.as_tensor([index], device=self.device))[0]
        centres = self.cameras.camera_to_worlds[:, :3, 3]
        distance = torch.linalg.vector_norm(centres[train] - centres[index], dim=-1)
        nearest = train[torch.argsort(distance)[:neighbours]]
        matrices = optimizer(nearest)                                 # [k, 3, 4]
        u, _, vh = torch.linalg.svd(matrices[:, :3, :3].mean(0))
        rotation = u @ vh
        if torch.det(rotation) < 0:
            u = u.clone()
            u[:, -1] = -u[:, -1]
            rotation = u @ vh
        return torch.cat([rotation, matrices[:, :3, 3:].mean(0)], dim=-1)

    def evaluate(self, indices: Optional[List[int]] = None, max_pixels: Optional[int] = None,
                 poses: Optional[str] = None) -> Dict[str, float]:
        """Mean PSNR (and count) over held-out frames (or the given indices), computed on the model's device.

        `poses` ('aligned' | 'given', default ``trainer.eval_poses``): held-out views rendered with the pose
        correction of their nearest refined training cameras (`pose_correction`) or as recorded. With
        `max_pixels`, larger views are rendered at an integer fraction of their size and compared with the
        image shrunk the same way (area average): a progress figure that costs a CPU seconds, not minutes.
        """
        indices = self.eval_indices if indices is None else indices
        poses = poses or self.config.trainer.eval_poses
        if not indices:
            return {'psnr': float('nan'), 'frames': 0}
        values = []
        for index in indices:
            frame = self.frames[index]
            shrink = 1
            if max_pixels and frame.width * frame.height > max_pixels:
                shrink = math.ceil(math.sqrt(frame.width * frame.height / max_pixels))
            width, height = frame.width // shrink, frame.height // shrink
            K = resized_intrinsics(frame.K, frame.width, frame.height, width, height)
            if shrink == 1 and self.images is not None and index < len(self.images):
                target = self.images[index].float() / 255.0
            else:
                image = frame.image if shrink == 1 else cv2.resize(frame.image, (width, height),
                                                                   interpolation=cv2.INTER_AREA)
                target = torch.from_numpy(image / 255.0).to(self.device)
            with self.lock:
                correction = self.pose_correction(index) if poses == 'aligned' else None
                probe = PosedFrame(np.zeros((height, width, 3), np.uint8), K, frame.T_base_optical)
                camera = make_cameras([probe], self.box, self.device, None if correction is None else correction[None])
                predicted = render_camera(self.model, camera, self.config.trainer.render_memory_mb,
                                          self.config.trainer.eval_chunk_rays, ('rgb',))['rgb']
            target = target.to(predicted)
            if frame.mask is not None:  # the gripper is not the scene: score the rest
                keep = cv2.resize(frame.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                keep = torch.from_numpy(keep).to(predicted.device)
                predicted, target = predicted[keep], target[keep]
            values.append(psnr(predicted, target))
        return {'psnr': float(np.mean(values)), 'frames': len(values)}

    def save_checkpoint(self, path: Path, scan_id: str = '', state: Optional[Dict] = None) -> Path:
        """Write model, optimiser state, config and teacher state atomically (a crash keeps the old file).

        Tensors go through torch.save, everything else as one JSON string (`read_checkpoint`). `state` is a
        `checkpoint_state` taken earlier (written without waiting for the lock: a step in progress may take
        long), else the state now. Raises `CheckpointWriteError` (disk full, ...) leaving the previous
        checkpoint and no temporary file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.checkpoint_state(scan_id) if state is None else state, path)
        self.last_checkpoint = path
        return path

    def checkpoint_state(self, scan_id: str = '', copy: bool = False) -> Dict:
        """Return what `save_checkpoint` writes, taken under the lock: a consistent state between two steps.

        `copy` clones every tensor, so that later steps cannot change the state (on a CPU ``.cpu()`` returns
        the parameters' own storage, and the optimisers' states are their live tensors).
        """
        with self.lock:
            meta = {
                'format': 'f3rm_ros',
                'version': CHECKPOINT_VERSION,
                'step': self.step_count,
                'num_frames': self.num_frames,
                'capacity': self.store.capacity,
                'config': to_dict(self.config),
                'teacher': {'name': self.teacher.name, 'state': self.teacher.state()},
                'scan_id': scan_id,
                'saved_at': time.time(),
            }
            state = {
                'meta_json': json.dumps(meta),
                'model': {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                'optimizers': {k: plain_state(o.state_dict()) for k, o in self.optimizers.optimizers.items()},
                'schedulers': {k: plain_state(s.state_dict()) for k, s in self.optimizers.schedulers.items()},
                'grad_scaler': plain_state(self.grad_scaler.state_dict()),
            }
            return cloned_state(state) if copy else state

    def load_checkpoint(self, path: Path, state: Optional[Dict] = None) -> Dict:
        """Restore a checkpoint; per-camera parameters are fitted when the capacity differs.

        `state` is the checkpoint's `read_checkpoint` when the caller has read it already.
        """
        state = read_checkpoint(path) if state is None else state
        model_state = dict(state['model'])
        resized = _resize_per_camera(model_state, self.model)
        with self.lock:
            self.model.load_state_dict(model_state)
            if resized:
                log.warning('checkpoint capacity %s differs from %s: optimiser state not restored',
                            state['capacity'], self.store.capacity)
            else:
                self.optimizers.load_optimizers(state['optimizers'])
                self.optimizers.load_schedulers(state['schedulers'])
                self.grad_scaler.load_state_dict(state['grad_scaler'])
            self.step_count = state['step']
            restore_sampler_schedule(self.model, self.step_count)
        self.last_checkpoint = Path(path)
        return state


def load_model(path: Path, device: str = 'auto') -> Tuple[F3RMModel, F3RMConfig, Dict]:
    """Load a checkpoint for querying only: (model in eval mode, its config, the raw checkpoint)."""
    state = read_checkpoint(path)
    config = from_dict(state['config'])
    model = build_model(config, state['capacity'])
    model.load_state_dict(state['model'])
    restore_sampler_schedule(model, state['step'])
    model.to(pick_device(device)).eval()
    return model, config, state
