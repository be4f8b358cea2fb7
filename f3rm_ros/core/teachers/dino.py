"""Dense DINO / DINOv2 patch features with timm's ViT architectures (F3RM's `dino` feature type).

For every image:

1. resize (bicubic, antialiased) so the shorter side is `image_size` px, keeping the aspect ratio; both sides
   are rounded to whole patches (a 640x480 image at 336 px and 14-px patches becomes 448x336: a 24x32 grid, the
   same grid as CLIP ViT-L/14@336, so the two line up patch for patch);
2. normalise with the model's ImageNet mean/std;
3. timm's ``forward_features`` with ``dynamic_img_size`` (the positional embedding is interpolated to the grid)
   and the final norm; the class and register tokens are dropped, leaving one vector per patch (384-d for
   ViT-S). Vectors are not normalised.

Weights: a local file (the original DINO/DINOv2 ``.pth`` or a timm checkpoint; timm's own filter maps the key
names), ``'timm'`` for timm's pretrained tag from the Hugging Face hub (internet or the local cache), or ``''`` for
random weights, which are not semantic (plumbing tests only; refused unless ``allow_random_teacher``).
DINO has no text tower: a field distilled from DINO alone answers no text queries (use ``clip+dino``).
"""
from __future__ import annotations

# Imported where used (heavy): timm, only when a DINO teacher is built.
import logging
import os
from typing import Any, Dict, Sequence, Tuple

import torch

from .clip import looks_like_path, hub_offline, is_random_weights, resolve_device
from .vit import VitPatchTeacher

log = logging.getLogger(__name__)

DEFAULT_DINO = 'vit_small_patch14_dinov2'
HUB_TAG = 'timm'


def load_dino(model_name: str, weights: str, device: torch.device):
    """Create a timm ViT in eval mode (fp16 on CUDA) from a weights file, timm's hub tag or random weights.

    Raises `ValueError` for a model timm does not know, `FileNotFoundError` for a weights file that does not exist
    and `RuntimeError` for weights that cannot be loaded (a wrong file, the hub while offline).
    """
    import timm

    weights = (weights or '').strip()
    if model_name.split('.')[0] not in timm.list_models():
        raise ValueError(f'unknown timm model {model_name!r}; e.g. {DEFAULT_DINO} (DINOv2 ViT-S/14) or '
                         'vit_small_patch16_224.dino (DINO ViT-S/16)')
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if is_random_weights(weights):
        log.warning('DINO teacher %s with RANDOM weights: its features are meaningless (plumbing tests only)',
                    model_name)
        source = 'random weights'
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    elif os.path.isfile(os.path.expanduser(weights)):
        source = os.path.expanduser(weights)
        try:
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={'file': source}, **kwargs)
        except Exception as error:  # a wrong or corrupt file: say which one
            raise RuntimeError(f'could not load DINO weights file {source!r} into {model_name}: '
                               f'{str(error).splitlines()[0][:300]}') from error
    elif looks_like_path(weights):
        raise FileNotFoundError(f'DINO weights file not found: {weights!r} (teacher.dino_weights). Give the path of '
                                f'a {model_name} checkpoint (e.g. dinov2_vits14_pretrain.pth), {HUB_TAG!r} for '
                                "timm's hub weights (needs internet or the Hugging Face cache), or '' for random "
                                'weights')
    elif weights == HUB_TAG:
        source = f'timm hub weights of {model_name}'
        if hub_offline():
            raise RuntimeError(f'HF_HUB_OFFLINE is set, so the hub weights of {model_name} cannot be downloaded; copy '
                               'a DINO checkpoint to this machine and set teacher.dino_weights to its path')
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as error:
            raise RuntimeError(f'could not get the hub weights of {model_name}: {str(error).splitlines()[0][:300]}. '
                               'Without internet, set teacher.dino_weights to a local checkpoint file') from error
    else:
        raise ValueError(f'teacher.dino_weights {weights!r} is neither a weights file, {HUB_TAG!r} nor \'\' (random)')
    log.info('DINO teacher: %s (%s) on %s', model_name, source, device)
    model = model.to(device).eval()
    if device.type == 'cuda':
        model = model.half()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class DinoTeacher(VitPatchTeacher):
    """Dense patch tokens of a DINO / DINOv2 ViT (timm), one vector per patch.

    Args:
        model_name: a timm ViT, ``vit_small_patch14_dinov2`` (384-d, 14-px patches) by default.
        weights: a local checkpoint file, ``'timm'`` (hub) or ``''`` for random weights.
        image_size: shorter image side fed to the ViT, px.
        batch_size: images per forward pass.
        device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda:0'``...
    """

    name = 'dino'

    def __init__(self, model_name: str = DEFAULT_DINO, weights: str = HUB_TAG, image_size: int = 336,
                 batch_size: int = 4, device: str = 'auto'):
        if image_size < 1 or batch_size < 1:
            raise ValueError(f'image_size and batch_size must be positive, got {image_size}, {batch_size}')
        self.model_name = model_name
        self.weights = weights or ''
        self.random_weights = is_random_weights(self.weights)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.model = load_dino(model_name, self.weights, self.device)
        patch = self.model.patch_embed.patch_size
        patch = patch if isinstance(patch, tuple) else (patch, patch)
        if patch[0] != patch[1]:
            raise ValueError(f'non-square patches {patch} are not supported')
        self.patch_size = int(patch[0])
        self.dim = int(self.model.embed_dim)
        self.prefix_tokens = int(getattr(self.model, 'num_prefix_tokens', 1))
        config = getattr(self.model, 'pretrained_cfg', None) or {}
        mean, std = config.get('mean', (0.485, 0.456, 0.406)), config.get('std', (0.229, 0.224, 0.225))
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _dense(self, pixels: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        tokens = self.model.forward_features(pixels)[:, self.prefix_tokens:]       # [B, gh*gw, C]
        return tokens.reshape(len(pixels), grid[0], grid[1], -1)

    def _pixel_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """DINO has no text tower: raises ValueError saying which teacher to distil for text queries."""
        raise ValueError('the dino teacher has no text encoder: a field distilled from DINO alone answers no text '
                         'queries; distil clip+dino (teacher_choice) to ask in words and match with DINO')

    def state(self) -> Dict[str, Any]:
        """Model, weights source and working resolution (the weights themselves are not copied)."""
        return {'name': self.name, 'model_name': self.model_name, 'weights': self.weights,
                'image_size': self.image_size, 'patch_size': self.patch_size, 'dim': self.dim}
