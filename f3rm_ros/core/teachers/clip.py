"""Dense CLIP features with open_clip, MaskCLIP style (Zhou et al., ECCV 2022), as F3RM distils them.

For every image:

1. resize (bicubic, antialiased) so the shorter side is `image_size` px, keeping the aspect ratio (no centre
   crop); the longer side is rounded to a multiple of the ViT patch size, so a 640x480 image becomes 448x336
   and a 32x24 patch grid;
2. normalise with the model's mean/std;
3. patch embedding + class token + the positional embedding interpolated (bicubic) to that patch grid, then
   ``ln_pre`` and every transformer block but the last;
4. in the last block only the value path of the attention: ``ln_1`` -> value projection -> ``out_proj``; no
   query-key attention, and the block's residual and MLP are dropped (MaskCLIP);
5. ``ln_post`` and the visual projection ``proj`` on each patch token (class token dropped): one vector per
   patch in CLIP's joint image-text space (768-d for ViT-L/14). Vectors are not normalised.
"""
from __future__ import annotations

# Imported where used: open_clip (heavy: its models, loaded only when a CLIP teacher is built) and huggingface_hub
# (optional: its absence is handled where it is asked).
import contextlib
import logging
import os
import threading
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .vit import VitPatchTeacher

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = ('.bin', '.pt', '.pth', '.safetensors', '.ckpt')
RANDOM_WEIGHTS = ('', 'none', 'random')
# How long a hub that does not answer may take before tagged weights fail (a robot without internet should
# hear at once that it needs a local weights file, not after the hub client's retries).
HUB_TIMEOUT_S = 2.0
_TRUE = ('1', 'on', 'yes', 'true')


def is_random_weights(pretrained: Optional[str]) -> bool:
    """Tell whether a `teacher.pretrained` value means random weights ('' / none / random)."""
    return (pretrained or '').strip().lower() in RANDOM_WEIGHTS


def hub_offline() -> bool:
    """Tell whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    if any(os.environ.get(name, '').strip().lower() in _TRUE for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.is_offline_mode())
    except ImportError:  # no hub client: nothing would be downloaded anyway
        return True


def reachable(url: str, timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """Tell whether the server at `url` answers an HTTP HEAD within `timeout_s` (DNS and TLS included).

    Any HTTP answer counts (even an error status); no answer, a refused connection or a broken TLS handshake
    (a network that swallows traffic) does not.
    """
    result = []

    def attempt():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout_s).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except (OSError, ValueError):
            result.append(False)
    thread = threading.Thread(target=attempt, name='f3rm-hub-probe', daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def cached_hub_file(hf_hub: str) -> Optional[str]:
    """Path of open_clip weights for `hf_hub` ('org/repo/' or 'org/repo/file') in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    model_id, filename = os.path.split(hf_hub)
    names = [filename] if filename else ['open_clip_model.safetensors', 'open_clip_pytorch_model.bin']
    for name in names:
        found = try_to_load_from_cache(model_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


@contextlib.contextmanager
def _hub_offline_mode():
    """Make the hub client use its cache only while the block runs (no update check over the network)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_access(model_name: str, tag: str):
    """Return a context manager to download/load the `tag` weights of `model_name` in, failing fast.

    Weights in the local cache are loaded without any network access; with ``HF_HUB_OFFLINE`` set and no
    cached copy, or a hub that does not answer within `HUB_TIMEOUT_S`, RuntimeError is raised at once.
    """
    import open_clip
    config = open_clip.get_pretrained_cfg(model_name, tag) or {}
    hf_hub, url = config.get('hf_hub', ''), config.get('url', '')
    if 'file' in config:
        return contextlib.nullcontext()
    if hf_hub and cached_hub_file(hf_hub):
        return _hub_offline_mode()
    where = f'Hugging Face repo {hf_hub.strip("/")}' if hf_hub else url
    if hub_offline():
        raise RuntimeError(f'HF_HUB_OFFLINE is set and the {tag!r} weights of {model_name} ({where}) are not in '
                           'the local Hugging Face cache; the hub was not contacted')
    if hf_hub:
        try:
            from huggingface_hub import constants
            server = constants.ENDPOINT or 'https://huggingface.co'
        except ImportError:
            server = 'https://huggingface.co'
    else:
        parts = urlparse(url)
        server = f'{parts.scheme}://{parts.netloc}' if parts.netloc else ''
    if server and not reachable(server, HUB_TIMEOUT_S):
        raise RuntimeError(f'{urlparse(server).hostname} did not answer within {HUB_TIMEOUT_S:.0f} s, so the '
                           f'{tag!r} weights of {model_name} ({where}) cannot be downloaded')
    return contextlib.nullcontext()


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else is passed to `torch.device`."""
    if device in (None, '', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def looks_like_path(value: str) -> bool:
    return (os.sep in value or '/' in value or value.startswith(('~', '.'))
            or value.lower().endswith(WEIGHT_SUFFIXES))


def load_clip(model_name: str, pretrained: Optional[str], device: torch.device):
    """Create an open_clip model in eval mode (fp16 on CUDA) from a hub tag, a weights file or random weights.

    Returns ``(model, tokenizer)``. Raises `FileNotFoundError` for a weights file that does not exist,
    `ValueError` for an unknown model or tag and `RuntimeError` when tagged weights cannot be fetched.
    """
    import open_clip

    pretrained = (pretrained or '').strip()
    schema = model_name.split(':', 1)[0] if ':' in model_name else ''
    if not schema and model_name not in open_clip.list_models():
        raise ValueError(f'unknown open_clip model {model_name!r}; e.g. ViT-L-14-336-quickgelu, ViT-B-16 '
                         f'(open_clip.list_models() has them all)')
    precision = 'fp16' if device.type == 'cuda' else 'fp32'
    kwargs = dict(device=device, precision=precision)
    if schema:  # 'hf-hub:org/repo' or 'local-dir:/path': open_clip takes weights from there
        source = model_name
        model = open_clip.create_model(model_name, **kwargs)
    elif is_random_weights(pretrained):
        log.warning('CLIP teacher %s with RANDOM weights: features and text queries are meaningless '
                    '(plumbing tests only)', model_name)
        source = 'random weights'
        model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    elif os.path.isfile(os.path.expanduser(pretrained)):
        source = os.path.expanduser(pretrained)
        try:
            model = open_clip.create_model(model_name, pretrained=source, **kwargs)
        except Exception as error:  # a wrong or corrupt file: say which one
            raise RuntimeError(f'could not load CLIP weights file {source!r} into {model_name}: '
                               f'{error}') from error
    elif looks_like_path(pretrained):
        raise FileNotFoundError(
            f'CLIP weights file not found: {pretrained!r} (teacher.pretrained / clip_weights). Give the path '
            f'of an open_clip checkpoint for {model_name} (e.g. open_clip_pytorch_model.bin), a hub tag such '
            f"as 'openai' (needs internet or the Hugging Face cache), or '' for random weights")
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(f'{pretrained!r} is neither a weights file nor a pretrained tag of {model_name} '
                             f'(tags: {tags}); pass a local weights file path instead')
        source = f'tag {pretrained!r}'
        try:
            with hub_access(model_name, pretrained):
                model = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
        except Exception as error:
            hub = (open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get('hf_hub', '').strip('/')
            where = f' (Hugging Face repo {hub}, file open_clip_pytorch_model.bin)' if hub else ''
            raise RuntimeError(
                f'could not get the {pretrained!r} weights of {model_name}: {str(error).rstrip(". ")}. '
                f'Without internet, copy the '
                f'weights{where} to this machine and set teacher.pretrained (clip_weights) to that file '
                f'path, e.g. /path/to/open_clip_pytorch_model.bin') from error
    log.info('CLIP teacher: %s (%s) on %s, %s', model_name, source, device, precision)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, tokenizer


def _check_visual(visual: nn.Module) -> None:
    """Raise a clear error for towers the MaskCLIP path does not support."""
    needed = ('conv1', 'class_embedding', 'positional_embedding', 'ln_pre', 'transformer', 'ln_post', 'proj')
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise ValueError(f'dense MaskCLIP features need an open_clip VisionTransformer image tower; '
                         f'{type(visual).__name__} lacks {missing}')
    if getattr(visual, 'attn_pool', None) is not None:
        raise ValueError('dense MaskCLIP features do not support attentional pooling towers (e.g. CoCa)')
    if visual.proj is None:
        raise ValueError('the image tower has no projection to the joint image-text space')
    last = visual.transformer.resblocks[-1]
    if not isinstance(getattr(last, 'attn', None), nn.MultiheadAttention):
        raise ValueError(f'dense MaskCLIP features need nn.MultiheadAttention blocks, got '
                         f'{type(getattr(last, "attn", None)).__name__}')


def interpolate_positional_embedding(visual: nn.Module, grid: Tuple[int, int]) -> torch.Tensor:
    """Resample (bicubic) the tower's positional embedding ``[1 + gh0*gw0, C]`` to ``[1 + gh*gw, C]``."""
    embedding = visual.positional_embedding
    native = tuple(visual.grid_size)
    if tuple(grid) == native:
        return embedding
    cls_token, patches = embedding[:1], embedding[1:]
    channels = patches.shape[-1]
    patches = patches.float().reshape(1, native[0], native[1], channels).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode='bicubic', align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], channels).to(embedding.dtype)
    return torch.cat([cls_token, patches], dim=0)


def maskclip_dense_features(visual: nn.Module, pixels: torch.Tensor,
                            positional_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Compute MaskCLIP patch features of normalised images ``[B, 3, H, W]`` (H, W multiples of the patch).

    Returns ``[B, H / p, W / p, output_dim]`` in the tower's dtype. `positional_embedding` may be given
    pre-interpolated to the patch grid (see `interpolate_positional_embedding`).
    """
    patch_h, patch_w = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    batch, _, height, width = pixels.shape
    if height % patch_h or width % patch_w:
        raise ValueError(f'image size {height}x{width} is not a multiple of the patch size '
                         f'{patch_h}x{patch_w}')
    grid = (height // patch_h, width // patch_w)
    if positional_embedding is None:
        positional_embedding = interpolate_positional_embedding(visual, grid)
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))                    # [B, C, gh, gw]
    x = x.flatten(2).transpose(1, 2)                                            # [B, gh*gw, C]
    cls_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, 1, -1)
    x = torch.cat([cls_token, x], dim=1) + positional_embedding.to(x.dtype)   # [B, 1 + gh*gw, C]
    x = visual.ln_pre(x)

    transformer = visual.transformer
    *blocks, last = transformer.resblocks
    batch_first = getattr(transformer, 'batch_first', True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)

    # Last block: value path only (no query-key attention, no residual, no MLP).
    attn = last.attn
    embed_dim = attn.embed_dim
    if getattr(attn, 'in_proj_weight', None) is not None:
        value_weight = attn.in_proj_weight[2 * embed_dim:]
    else:  # separate q/k/v projections (kdim/vdim differ from embed_dim)
        value_weight = attn.v_proj_weight
    value_bias = attn.in_proj_bias[2 * embed_dim:] if attn.in_proj_bias is not None else None
    tokens = x[:, 1:]
    value = F.linear(last.ln_1(tokens), value_weight, value_bias)
    value = attn.out_proj(value)
    value = last.ls_1(value) if hasattr(last, 'ls_1') else value
    features = visual.ln_post(value) @ visual.proj
    return features.reshape(batch, grid[0], grid[1], -1)


class ClipTeacher(VitPatchTeacher):
    """Dense CLIP (MaskCLIP) patch features and CLIP text embeddings from one open_clip model.

    Args:
        model_name: an open_clip model, ``ViT-L-14-336-quickgelu`` for F3RM.
        pretrained: a hub tag (``'openai'``), a local weights file, or ``''``/None for random weights.
        image_size: shorter image side fed to the ViT, px (336 for F3RM).
        batch_size: images per forward pass.
        device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda:0'``...; fp16 on CUDA, fp32 on CPU.
    """

    name = 'clip'

    def __init__(self, model_name: str = 'ViT-L-14-336-quickgelu', pretrained: Optional[str] = 'openai',
                 image_size: int = 336, batch_size: int = 4, device: str = 'auto'):
        if image_size < 1 or batch_size < 1:
            raise ValueError(f'image_size and batch_size must be positive, got {image_size}, {batch_size}')
        self.model_name = model_name
        self.pretrained = pretrained or ''
        # random weights: features and text are not semantic (nodes refuse them unless allow_random_teacher)
        self.random_weights = is_random_weights(self.pretrained) and ':' not in model_name
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_clip(model_name, pretrained, self.device)
        visual = self.model.visual
        _check_visual(visual)
        patch = visual.patch_size
        patch = patch if isinstance(patch, tuple) else (patch, patch)
        if patch[0] != patch[1]:
            raise ValueError(f'non-square patches {patch} are not supported')
        self.patch_size = int(patch[0])
        self.dim = int(visual.proj.shape[1])
        config = getattr(visual, 'preprocess_cfg', None) or {}
        mean = config.get('mean', getattr(visual, 'image_mean', None)) or (0.48145466, 0.4578275, 0.40821073)
        std = config.get('std', getattr(visual, 'image_std', None)) or (0.26862954, 0.26130258, 0.27577711)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._positional_cache: Dict[Tuple[int, int], torch.Tensor] = {}

    def _dense(self, pixels: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return maskclip_dense_features(self.model.visual, pixels, self._positional_embedding(grid))

    def _pixel_dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings ``[N, dim]`` (float32, CPU), L2-normalised."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.zeros((0, self.dim))
        tokens = self.tokenizer(texts).to(self.device)
        embeddings = self.model.encode_text(tokens).float()
        return F.normalize(embeddings, dim=-1).cpu()

    def state(self) -> Dict[str, Any]:
        """Model, weights source and working resolution (the weights themselves are not copied)."""
        return {'name': self.name, 'model_name': self.model_name, 'pretrained': self.pretrained,
                'image_size': self.image_size, 'patch_size': self.patch_size, 'dim': self.dim}

    def _positional_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        if grid not in self._positional_cache:
            self._positional_cache[grid] = interpolate_positional_embedding(self.model.visual, grid)
        return self._positional_cache[grid]
