"""The overview picture of an answer, drawn beside the answer path: never holding up the next question.

A query node publishes its answer first and draws the picture afterwards in a worker of its own, from a
`PictureJob`: a snapshot taken when the answer was made (the embedded text query, the workspace box, the model
and its lock, the picture's size). The view is rendered in bands of rows; the model's lock (a live trainer's)
is held for one band at a time, and between bands `cancelled()` is asked: a newer question drops the picture
(the next answer's picture replaces it). The model's own ``query`` is never set: the similarity is computed
from the rendered features here, so a picture and a query or a training step never share mutable state beyond
the lock.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..geometry import WorkspaceBox
from .relevancy import TextQuery, relevancy
from ..study.views import default_view, similarity_overlay
from ..training.trainer import render_model

# Rows rendered per band: a band of a 160-pixel-wide picture is ~5000 rays, a few tens of ms of a CPU model, so a
# newer question waits at most that long for the picture to step aside.
BAND_ROWS = 32


class PictureCancelled(Exception):
    """A newer question arrived while the picture was drawn: it is dropped."""


@dataclass
class PictureJob:
    """What one answer's picture needs, taken when the answer was made.

    Attributes:
        stamp: the answer's header stamp (the picture carries it).
        query: the answer's embedded text query.
        model: the model answered from (a live trainer's keeps training: the picture shows it as it is drawn).
        box: the workspace box (field scaling).
        lock: the model's lock (a live trainer's), held one band at a time; None for a loaded checkpoint.
        width, height: picture size in pixels.
        colormap: the similarity's colormap.
        generation: the question counter when the answer was made (a newer one cancels the picture).
    """

    stamp: object
    query: TextQuery
    model: object
    box: WorkspaceBox
    lock: object
    width: int
    height: int
    colormap: str
    generation: int


def draw_overview(job: PictureJob, cancelled: Callable[[], bool] = lambda: False,
                  band_rows: int = BAND_ROWS) -> np.ndarray:
    """Render the job's overview (`views.default_view`) and return its similarity overlay, float RGB [H, W, 3].

    Raises `PictureCancelled` as soon as `cancelled()` is true between bands.
    """
    view = default_view(job.box, job.width, job.height)
    rgb, similarity = [], []
    for top in range(0, job.height, band_rows):
        if cancelled():
            raise PictureCancelled('a newer question arrived')
        rows = min(band_rows, job.height - top)
        K = view.K.copy()
        K[1, 2] -= top          # the band's rows as an image of their own: principal point moved up
        with (job.lock if job.lock is not None else contextlib.nullcontext()):
            band = render_model(job.model, job.box, view.T_base_optical, K, job.width, rows, names=('rgb', 'feature'))
        rgb.append(band['rgb'])
        with torch.no_grad():
            features = torch.from_numpy(band['feature'].reshape(-1, band['feature'].shape[-1]))
            values = relevancy(features, job.query.to(features.device))
        similarity.append(values.reshape(rows, job.width).float().numpy())
    rendered = {'rgb': np.concatenate(rgb), 'similarity': np.concatenate(similarity)}
    return similarity_overlay(rendered, job.query, job.colormap)


def picture_pixels(picture: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of a float RGB picture in [0, 1]."""
    return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)


__all__ = ['BAND_ROWS', 'PictureCancelled', 'PictureJob', 'draw_overview', 'picture_pixels']
