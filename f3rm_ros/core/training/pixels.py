"""Which pixels a training batch's rays come from (`PixelSampler`): masks, a scene change's focus, else uniform."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


class PixelSampler:
    """Draw the pixels (frame, y, x) of a training batch from the training frames, on the trainer's device.

    Once any keyframe has a mask (`take_masks`), only pixels its mask keeps and whose teacher patch is at least half
    unmasked; with a focus (`set_focus`: the views of a scene change), a share of each batch from its pixels until a
    given step. The caller holds the trainer's lock.
    """

    def __init__(self, device: torch.device, generator: torch.Generator):
        self.device = device
        self.generator = generator
        self.masks: Optional[torch.Tensor] = None      # [capacity, H, W] bool, once any frame has a mask
        self._pixels: Optional[Tuple[List[int], torch.Tensor]] = None  # (train indices, trainable pixel ids)
        # (pixel ids, fraction, until step): a share of each batch from the views of a scene change
        self._focus: Optional[Tuple[torch.Tensor, float, int]] = None
        self._train: Optional[Tuple[List[int], torch.Tensor]] = None   # the train indices on the device

    def take_masks(self, slots: Sequence[int], masks: Sequence[Optional[np.ndarray]], shape: Tuple[int, int, int],
                   always: bool = False) -> None:
        """Take the masks of the frames in `slots` (None: keep every pixel); `shape` is [capacity, H, W].

        The mask array is made when the first frame with a mask comes (or at once with `always`).
        """
        if self.masks is None and (always or any(mask is not None for mask in masks)):
            self.masks = torch.ones(shape, dtype=torch.bool, device=self.device)
        if self.masks is not None:
            for slot, mask in zip(slots, masks):
                self.masks[slot] = True if mask is None else torch.from_numpy(mask).to(self.device)
        self._pixels = None

    def frames_changed(self) -> None:
        """Find the trainable pixels again at the next draw: the training frames changed (a sync)."""
        self._pixels = None

    def set_focus(self, pixels: Optional[np.ndarray], fraction: float, until_step: int) -> None:
        """Draw `fraction` of each batch's rays from `pixels` until `until_step` (the views of a scene change).

        `pixels`: flat ids (frame * H * W + y * W + x) of training frames' pixels; None or empty: no focus.
        """
        if pixels is None or not len(pixels) or fraction <= 0:
            self._focus = None
            return
        ids = torch.as_tensor(np.asarray(pixels, dtype=np.int64), device=self.device)
        self._focus = (ids, float(fraction), int(until_step))

    def draw(self, num_rays: int, train_indices: List[int], height: int, width: int, patches: Tuple[int, int],
             step: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, y, x) [num_rays] each of one batch at training step `step`; `patches` is the teacher's grid."""
        pixels = self._trainable_pixels(train_indices, patches)
        if pixels is not None:
            flat = pixels[torch.randint(len(pixels), (num_rays,), device=self.device, generator=self.generator)]
            frame, rest = flat // (height * width), flat % (height * width)
            y, x = rest // width, rest % width
        else:
            if self._train is None or self._train[0] != train_indices:  # a host->device copy waits for the GPU
                self._train = (list(train_indices), torch.as_tensor(train_indices, device=self.device))
            train = self._train[1]
            pick = torch.randint(len(train), (num_rays,), device=self.device, generator=self.generator)
            frame = train[pick]
            y = torch.randint(height, (num_rays,), device=self.device, generator=self.generator)
            x = torch.randint(width, (num_rays,), device=self.device, generator=self.generator)
        focus = self._focus_rays(num_rays, step)
        if focus is not None:  # the first rays come from the keyframes of a scene change
            count, flat = focus
            frame, y, x = frame.clone(), y.clone(), x.clone()
            frame[:count], y[:count], x[:count] = flat // (height * width), (flat // width) % height, flat % width
        return frame, y, x

    def _trainable_pixels(self, train_indices: List[int], patches: Tuple[int, int]) -> Optional[torch.Tensor]:
        """Flat ids (frame * H * W + y * W + x) of the pixels rays may come from, when some frame has a mask.

        A pixel qualifies when its mask keeps it and its teacher patch is at least half unmasked: the patch's
        feature is the pixel's target, and a patch mostly covering a gripper would teach the gripper.
        """
        if self.masks is None:
            return None
        if self._pixels is not None and self._pixels[0] == train_indices:
            return self._pixels[1]
        train = torch.as_tensor(train_indices, device=self.device)
        masks = self.masks[train]                                              # [T, H, W]
        count, height, width = masks.shape
        patches_h, patches_w = patches
        rows = torch.arange(height, device=self.device) * patches_h // height
        cols = torch.arange(width, device=self.device) * patches_w // width
        patch = (rows[:, None] * patches_w + cols[None, :]).reshape(1, -1).expand(count, -1)
        kept = torch.zeros((count, patches_h * patches_w), device=self.device).scatter_add_(
            1, patch, masks.reshape(count, -1).float())
        total = torch.zeros_like(kept).scatter_add_(1, patch, torch.ones_like(kept[:, :1]).expand(-1, patch.shape[1]))
        usable = masks.reshape(count, -1) & (kept / total.clamp(min=1) >= 0.5).gather(1, patch)
        t, pixel = usable.nonzero(as_tuple=True)
        if len(t) == 0:
            raise RuntimeError('every training pixel is masked: check the mask (white = keep, black = ignore)')
        ids = train[t] * (height * width) + pixel
        self._pixels = (list(train_indices), ids)
        return ids

    def _focus_rays(self, num_rays: int, step: int):
        """(count, flat pixel ids) of the batch's rays that come from the focus pixels, or None."""
        if self._focus is None or step >= self._focus[2]:
            return None
        ids, fraction, _ = self._focus
        count = int(num_rays * fraction)
        if count < 1:
            return None
        return count, ids[torch.randint(len(ids), (count,), device=self.device, generator=self.generator)]
