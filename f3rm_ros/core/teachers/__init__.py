"""2D feature teachers: what the feature field is distilled from, and the matching text encoder.

Two teachers share one small interface (`Teacher`):

* ``clip`` (`ClipTeacher`): dense CLIP features, MaskCLIP style, one vector per 14-px patch in CLIP's joint
  image-text space; text queries go through CLIP's text tower.
* ``labels`` (`LabelsTeacher`): ground truth for scenes with per-pixel object ids; every object name maps to a
  fixed unit vector and its text encoder maps the same names to the same vectors.

Feature grids are ``[B, h, w, dim]`` float32 on the CPU. Pixel ``(y, x)`` of an ``H x W`` image belongs to
patch ``(y * h // H, x * w // W)`` for both teachers.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..config import TeacherConfig
from ..frames import PosedFrame

log = logging.getLogger(__name__)

__all__ = ['Teacher', 'make_teacher', 'choose_teacher', 'is_random', 'RandomTeacherRefused', 'TEACHER_NAMES']

TEACHER_NAMES = ('clip', 'labels')


class Teacher(abc.ABC):
    """A 2D feature extractor plus the text encoder living in the same embedding space.

    Attributes:
        name: the teacher's kind, ``'clip'`` or ``'labels'`` (as in `TeacherConfig.name`).
        dim: width of every feature and text vector.
        patch_size: pixels per patch side at the teacher's working resolution.
    """

    name: str = ''
    dim: int = 0
    patch_size: int = 0

    @abc.abstractmethod
    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Patch grid ``(h, w)`` that `extract` returns for an image of ``height x width`` pixels."""

    @abc.abstractmethod
    def extract(self, frames: Sequence[PosedFrame]) -> torch.Tensor:
        """Dense features ``[B, h, w, dim]`` float32 on the CPU, one row per frame (same grid for all)."""

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[N, dim]`` float32 on the CPU, each L2-normalised."""

    @abc.abstractmethod
    def state(self) -> Dict[str, Any]:
        """Plain data (JSON- and torch.save-able) that `make_teacher` needs to rebuild this teacher."""


class RandomTeacherRefused(RuntimeError):
    """Random-weight CLIP would be distilled (not semantic) and it was not allowed."""


def is_random(teacher: 'Teacher') -> bool:
    """Tell whether `teacher` is CLIP with random weights: its features and text embeddings mean nothing."""
    return bool(getattr(teacher, 'random_weights', False))


RANDOM_HINT = ('give CLIP weights (teacher.pretrained: /path/to/open_clip_pytorch_model.bin, or the hub tag with '
               'internet), publish label images for the labels teacher, or set allow_random_teacher: true '
               'to distil random-weight CLIP anyway (plumbing tests only)')


def make_teacher(config: TeacherConfig, labels: Optional[Mapping[int, str]] = None,
                 state: Optional[Dict[str, Any]] = None) -> Teacher:
    """Build the teacher that `config.name` names.

    Args:
        config: the teacher section of the configuration.
        labels: ``{object id: name}`` for the ``labels`` teacher (id 0 is the background).
        state: a previous teacher's `Teacher.state()`, e.g. from a checkpoint; it wins over `config` for
            everything that changes the embedding space (model, vocabulary, widths).

    Raises:
        ValueError: unknown teacher name, a state of another teacher, a labels teacher without labels.
        FileNotFoundError: a CLIP weights file that does not exist.
        RuntimeError: CLIP weights that cannot be obtained (e.g. a hub tag while offline).
    """
    name = (config.name or '').strip().lower()
    if name not in TEACHER_NAMES:
        raise ValueError(f'unknown teacher {config.name!r}; choose one of {list(TEACHER_NAMES)}')
    if state is not None and state.get('name', name) != name:
        stored = state.get('name')
        raise ValueError(f'the checkpoint was made with the {stored!r} teacher but the config asks for '
                         f'{name!r}; set teacher.name: {stored} to use this checkpoint')
    if name == 'clip':
        from .clip import ClipTeacher
        model_name, image_size = config.model_name, config.image_size
        if state is not None:
            for key, current in (('model_name', model_name), ('image_size', image_size)):
                if key in state and state[key] != current:
                    log.warning('teacher.%s: using %r from the checkpoint instead of %r from the config',
                                key, state[key], current)
            model_name = state.get('model_name', model_name)
            image_size = int(state.get('image_size', image_size))
            if state.get('pretrained') not in (None, config.pretrained):
                log.info('the checkpoint was distilled from CLIP weights %r; loading %r now',
                         state.get('pretrained'), config.pretrained)
        return ClipTeacher(model_name=model_name, pretrained=config.pretrained, image_size=image_size,
                           batch_size=config.batch_size, device=config.device)
    from .labels import LabelsTeacher
    if state is not None:
        for key, current in (('dim', config.labels_dim), ('patch_size', config.patch_size)):
            if key in state and int(state[key]) != current:
                log.warning('teacher %s: using %s from the checkpoint instead of %s from the config',
                            'labels_dim' if key == 'dim' else key, state[key], current)
        return LabelsTeacher.from_state(state, labels=labels)
    if not labels:
        raise ValueError('the labels teacher needs an {object id: name} mapping (from the synthetic scene or '
                         "the dataset's label names) or a checkpoint's teacher state; use teacher.name: clip "
                         'for images without label maps')
    return LabelsTeacher(labels, dim=config.labels_dim, patch_size=config.patch_size)


def choose_teacher(config, labels: Optional[Mapping[int, str]] = None,
                   choice: str = 'auto', allow_random: bool = True) -> Tuple[Teacher, str]:
    """Pick the teacher a run will distil from and say why; sizes the feature field to match it.

    ``choice``: 'clip' and 'labels' insist on that teacher; 'auto' takes CLIP when its weights load, else the
    labels teacher when ground-truth labels exist, else random-weight CLIP, which is plumbing and NOT
    semantic (the reason says so). With `allow_random` False, random-weight CLIP (that fallback, or
    ``teacher.pretrained: ''``) raises `RandomTeacherRefused` with the reason instead. `config` is an
    `F3RMConfig`; its feature_field.feature_dim and teacher.name are updated in place.
    """
    if choice not in ('auto', 'clip', 'labels'):
        raise ValueError(f"teacher choice must be 'auto', 'clip' or 'labels', got {choice!r}")
    teacher_config = config.teacher
    if choice == 'labels' or (choice == 'auto' and teacher_config.name == 'labels' and labels):
        teacher = make_teacher(dataclasses.replace(teacher_config, name='labels'), labels=labels)
        reason = 'ground-truth labels of the scene (exact semantics, no CLIP weights needed)'
    else:
        try:
            teacher = make_teacher(dataclasses.replace(teacher_config, name='clip'))
            reason = f'CLIP {teacher_config.model_name} with weights {teacher_config.pretrained!r}'
        except (RuntimeError, FileNotFoundError, ValueError) as error:
            if choice == 'clip':
                raise
            if labels:
                teacher = make_teacher(dataclasses.replace(teacher_config, name='labels'), labels=labels)
                reason = f'ground-truth labels, because CLIP weights could not be loaded: {error}'
            else:
                if not allow_random:
                    raise RandomTeacherRefused(
                        f'no semantic teacher: CLIP weights could not be loaded ({error}) and there are no label '
                        f'images; refusing to distil RANDOM-WEIGHT CLIP. To fix: {RANDOM_HINT}') from error
                teacher = make_teacher(dataclasses.replace(teacher_config, name='clip', pretrained=''))
                reason = (f'RANDOM-WEIGHT CLIP: features are not semantic (plumbing only), because CLIP weights '
                          f'could not be loaded: {error}')
    if is_random(teacher):
        if not allow_random:
            raise RandomTeacherRefused(f'teacher.pretrained is {teacher_config.pretrained!r}: RANDOM-WEIGHT CLIP is '
                                       f'not semantic; refusing it. To fix: {RANDOM_HINT}')
        if not reason.startswith('RANDOM'):
            reason = f'RANDOM-WEIGHT CLIP (teacher.pretrained {teacher_config.pretrained!r}): features are not semantic'
    config.teacher.name = teacher.name
    config.feature_field.feature_dim = teacher.dim
    return teacher, reason
