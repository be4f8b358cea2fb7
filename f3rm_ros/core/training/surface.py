"""The surface prior of a scene repair (`SurfacePrior`): density where a change's views saw a new surface.

A field that learnt empty space somewhere barely feels a new object there: the photometric and depth losses reach
the density through the rendering weights, which are nearly zero in learnt-empty space, and the proposal networks
never place samples where they hold nothing (measured on cpu-tiny: 300 repair steps after a move left the moved
ball's rendered depth 3-4 cm behind the observed one, its relevancy smeared over the table behind it). For
``changes.repair_steps`` after a change, one extra optimiser step per training step raises the log density of
every level (nerf field and proposals) at points just behind the surfaces the change's views saw by depth in the
changed voxels (`ChangeTracker.matter_and_clear`), up to "opaque within 1 cm", and lowers it at points the same
views saw through (in front of their surfaces, in changed voxels) to "clear": with matter raised alone, a moved
object's old place kept a ghost (cpu-tiny, seed 54: its views rendered the old place 3-4 cm too near).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..geometry import WorkspaceBox

# Matter: opacity 1 - 1/e over this much of a ray (m), as a solid surface renders at the query's voxel size.
OPAQUE_WITHIN_M = 0.01
# Free space: a density this many nats below matter's (opacity under 1 % over 1 cm).
CLEAR_NATS = 5.0
POINTS_PER_STEP = 4096
MAX_POINTS = 200_000     # kept on the device (a random subset of more): twelve 640x480 views would give 3.7 M


class SurfacePrior:
    """Points that must hold matter and points that must be clear until a step, and the optimiser step teaching them."""

    def __init__(self, box: WorkspaceBox, device: torch.device, generator: torch.Generator):
        self.box = box
        self.device = device
        self.generator = generator
        self.points: Optional[torch.Tensor] = None     # [N, 3] field units: matter
        self.clear: Optional[torch.Tensor] = None      # [M, 3] field units: free space
        self.weight = 0.0
        self.until_step = 0
        # density (per field unit) of "opaque within OPAQUE_WITHIN_M"
        self.log_density = math.log(1.0 / (OPAQUE_WITHIN_M * box.scale))

    def set(self, matter_base: np.ndarray, clear_base: np.ndarray, weight: float, until_step: int) -> None:
        """Teach `matter_base` [N, 3] and `clear_base` [M, 3] (base frame) with `weight` until `until_step`.

        No matter points or weight 0: off.
        """
        if not len(matter_base) or weight <= 0:
            self.points = self.clear = None
            return
        self.points, self.clear = (self._on_device(points) for points in (matter_base, clear_base))
        self.weight, self.until_step = float(weight), int(until_step)

    def _on_device(self, points_base: np.ndarray) -> Optional[torch.Tensor]:
        if not len(points_base):
            return None
        if len(points_base) > MAX_POINTS:
            keep = np.random.default_rng(len(points_base)).choice(len(points_base), MAX_POINTS, replace=False)
            points_base = points_base[keep]
        return torch.as_tensor(self.box.to_field(points_base), dtype=torch.float32, device=self.device)

    def active(self, step: int) -> bool:
        """Whether the prior still teaches at training step `step`."""
        return self.points is not None and step < self.until_step

    def step(self, model, optimizers, grad_scaler) -> None:
        """One optimiser step of the prior on a random draw of its points (only the density parameters move).

        Gradients are dropped before and after: the next training step (eager or a CUDA graph, which rebinds its
        own gradient buffers) starts from none.
        """
        optimizers.zero_grad_all()
        loss = self._loss(model, self.points, lambda log: torch.relu(self.log_density - log))
        if self.clear is not None:
            loss = loss + self._loss(model, self.clear, lambda log: torch.relu(log - self.log_density + CLEAR_NATS))
        grad_scaler.scale(loss).backward()
        optimizers.optimizer_scaler_step_all(grad_scaler)
        grad_scaler.update()
        optimizers.zero_grad_all()

    def _loss(self, model, points: torch.Tensor, shortfall) -> torch.Tensor:
        """`weight` x the mean `shortfall(log density)` over a random draw of `points`, averaged over the levels."""
        pick = torch.randint(len(points), (min(POINTS_PER_STEP, len(points)),), device=self.device,
                             generator=self.generator)
        levels = model.log_densities(points[pick])
        return self.weight * sum(shortfall(log).mean() for log in levels) / len(levels)
