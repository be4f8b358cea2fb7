"""2D feature teachers: what the feature field is distilled from, and the matching text encoder.

The teachers share one small interface (`Teacher`):

* ``clip`` (`ClipTeacher`): dense CLIP features, MaskCLIP style, one vector per 14-px patch in CLIP's joint
  image-text space; text queries go through CLIP's text tower.
* ``labels`` (`LabelsTeacher`): ground truth for scenes with per-pixel object ids; every object name maps to a
  fixed unit vector and its text encoder maps the same names to the same vectors.
* ``dino`` (`DinoTeacher`): dense DINO / DINOv2 patch tokens (timm ViT-S); no text encoder.
* ``custom`` (`CustomTeacher`): per-frame feature files named in transforms.json; no text encoder.
* several joined by ``+`` (``clip+dino``, ``labels+dino``, ``clip+custom`` ...: `MultiTeacher`): one feature head
  each, distilled together with nerfacto's shared density weights; the text teacher is the first head.

Feature grids are ``[B, h, w, dim]`` float32 on the CPU. Pixel ``(y, x)`` of an ``H x W`` image belongs to
patch ``(y * h // H, x * w // W)`` for both teachers.
"""
from __future__ import annotations

# Imported where used (an import cycle): the teacher modules (clip, dino, custom, labels, multi) import `Teacher` from
# this package, so `make_teacher` and its helpers import them when they build one.
import abc
import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..config import TeacherConfig
from ..capture.frames import PosedFrame

log = logging.getLogger(__name__)

__all__ = ['Teacher', 'make_teacher', 'choose_teacher', 'is_random', 'text_is_random', 'teacher_parts', 'size_field',
           'describe_teacher', 'RandomTeacherRefused', 'TEACHER_NAMES']

TEACHER_NAMES = ('clip', 'labels', 'dino', 'custom')
TEXT_TEACHERS = ('clip', 'labels')


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
    answers_text: bool = True  # False: no text encoder (dino, custom)

    @property
    def heads(self) -> List[Tuple[str, int]]:
        """``[(name, width)]`` of the feature heads `extract` concatenates, the text head first."""
        return [(self.name, int(self.dim))]

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
    """A random-weight teacher (CLIP or DINO) would be distilled (not semantic) and it was not allowed."""


def is_random(teacher: 'Teacher') -> bool:
    """Tell whether `teacher` (or a head of it) has random weights: its features (and text) mean nothing."""
    return bool(getattr(teacher, 'random_weights', False))


def text_is_random(teacher: 'Teacher') -> bool:
    """Tell whether the head text queries are answered from has random weights (a DINO head does not count)."""
    return is_random((getattr(teacher, 'parts', None) or [teacher])[0])


def teacher_parts(name: str) -> List[str]:
    """Split a teacher name such as ``clip+dino`` into its parts, the text teacher first.

    Raises ValueError for an unknown part, a part named twice or two text teachers.
    """
    parts = [part.strip().lower() for part in str(name or '').split('+')]
    unknown = [part for part in parts if part not in TEACHER_NAMES]
    if unknown or not parts:
        raise ValueError(f'unknown teacher {name!r}; choose one of {list(TEACHER_NAMES)} or several joined by + '
                         "(e.g. 'clip+dino')")
    if len(set(parts)) != len(parts):
        raise ValueError(f'teacher {name!r} names a teacher twice')
    text = [part for part in parts if part in TEXT_TEACHERS]
    if len(text) > 1:
        raise ValueError(f'teacher {name!r} has two text teachers ({text}); one answers text, add dino or custom')
    return text + [part for part in parts if part not in TEXT_TEACHERS]


def size_field(config, teacher: 'Teacher') -> None:
    """Size the feature field of `config` (an F3RMConfig) to `teacher`'s heads; sets teacher.name too."""
    heads = teacher.heads
    config.teacher.name = teacher.name
    config.feature_field.feature_dim = int(heads[0][1])
    config.feature_field.extra_heads = ','.join(f'{name}:{dim}' for name, dim in heads[1:])


RANDOM_HINT = ('give CLIP weights (teacher.pretrained: /path/to/open_clip_pytorch_model.bin, or the hub tag with '
               'internet) and DINO weights (teacher.dino_weights: /path/to/dinov2_vits14_pretrain.pth), publish '
               'label images for the labels teacher, or set allow_random_teacher: true to distil random weights '
               'anyway (plumbing tests only)')


def make_teacher(config: TeacherConfig, labels: Optional[Mapping[int, str]] = None,
                 state: Optional[Dict[str, Any]] = None, frames: Optional[Sequence[PosedFrame]] = None) -> Teacher:
    """Build the teacher that `config.name` names (``clip``, ``labels``, ``dino``, ``custom`` or several joined by +).

    Args:
        config: the teacher section of the configuration.
        labels: ``{object id: name}`` for the ``labels`` teacher (id 0 is the background).
        state: a previous teacher's `Teacher.state()`, e.g. from a checkpoint; it wins over `config` for
            everything that changes the embedding space (model, vocabulary, widths). The heads after the first
            of a multi-head teacher are then built only when features are extracted (a query needs none).
        frames: frames naming feature files, for the ``custom`` teacher (its width and grid come from them).

    Raises:
        ValueError: unknown teacher name, a state of another teacher, a labels teacher without labels.
        FileNotFoundError: a CLIP or DINO weights file that does not exist.
        RuntimeError: weights that cannot be obtained (e.g. a hub tag while offline).
    """
    parts = teacher_parts(config.name)
    name = '+'.join(parts)
    if state is not None and state.get('name', name) != name:
        stored = state.get('name')
        try:
            same = '+'.join(teacher_parts(stored)) == name
        except ValueError:
            same = False
        if not same:
            raise ValueError(f'the checkpoint was made with the {stored!r} teacher but the config asks for '
                             f'{name!r}; set teacher.name: {stored} to use this checkpoint')
    if len(parts) > 1:
        return _make_multi(config, parts, labels, state, frames)
    if name == 'dino':
        from .dino import DinoTeacher
        model_name = config.dino_model
        image_size = config.dino_image_size or config.image_size
        if state is not None:
            model_name = state.get('model_name', model_name)
            image_size = int(state.get('image_size', image_size))
        return DinoTeacher(model_name=model_name, weights=config.dino_weights, image_size=image_size,
                           batch_size=config.batch_size, device=config.device)
    if name == 'custom':
        from .custom import CustomTeacher
        return CustomTeacher.from_state(state) if state is not None else CustomTeacher.probe(frames)
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


def _stored_random(state: Dict[str, Any]) -> bool:
    """Tell whether a stored part state was distilled from random weights."""
    from .clip import is_random_weights
    if state.get('name') == 'clip':
        return is_random_weights(state.get('pretrained')) and ':' not in str(state.get('model_name', ''))
    if state.get('name') == 'dino':
        return is_random_weights(state.get('weights'))
    return False


def _make_multi(config: TeacherConfig, parts: List[str], labels, state, frames) -> Teacher:
    """Build a `MultiTeacher`: parts from their states lazily (all but the first) or all now from `config`."""
    from .multi import LazyTeacher, MultiTeacher
    if state is None:
        return MultiTeacher([make_teacher(dataclasses.replace(config, name=part), labels=labels, frames=frames)
                             for part in parts])
    stored = {part_state.get('name'): part_state for part_state in state.get('parts', [])}
    missing = [part for part in parts if part not in stored]
    if missing:
        raise ValueError(f'the checkpoint\'s teacher state has no {missing} part')
    teachers = []
    for i, part in enumerate(parts):
        part_config = dataclasses.replace(config, name=part)
        if i == 0:
            teachers.append(make_teacher(part_config, labels=labels, state=stored[part], frames=frames))
        else:
            teachers.append(LazyTeacher(stored[part], lambda c=part_config, s=stored[part]: make_teacher(
                c, labels=labels, state=s, frames=frames), _stored_random(stored[part])))
    return MultiTeacher(teachers)


def choose_teacher(config, labels: Optional[Mapping[int, str]] = None, choice: str = 'auto',
                   allow_random: bool = True, frames: Optional[Sequence[PosedFrame]] = None) -> Tuple[Teacher, str]:
    """Pick the teacher a run will distil from and say why; sizes the feature field to match it.

    ``choice``: 'clip' and 'labels' insist on that teacher; 'auto' takes CLIP when its weights load, else the
    labels teacher when ground-truth labels exist, else random-weight CLIP, which is plumbing and NOT
    semantic (the reason says so). With `allow_random` False, random-weight CLIP (that fallback, or
    ``teacher.pretrained: ''``) raises `RandomTeacherRefused` with the reason instead. Any other choice names
    the teacher(s) to insist on: 'dino', 'custom' or several joined by + ('clip+dino', 'labels+dino',
    'clip+custom' ...; the text teacher becomes the first head); a random-weight part is refused the same way.
    'auto' with such a `teacher.name` in the config insists on that name.
    `frames` size the custom teacher. `config` is an `F3RMConfig`; its feature_field.feature_dim and
    extra_heads and teacher.name are updated in place (`size_field`).
    """
    teacher_config = config.teacher
    if choice == 'auto' and (teacher_config.name or 'clip') not in ('clip', 'labels'):
        choice = teacher_config.name   # teacher.name: clip+dino (or dino, custom) in a config file: those heads
    if choice not in ('auto', 'clip', 'labels'):
        parts = teacher_parts(choice)
        teacher = make_teacher(dataclasses.replace(teacher_config, name='+'.join(parts)), labels=labels,
                               frames=frames)
        reason = describe_teacher(teacher)
        if is_random(teacher) and not allow_random:
            raise RandomTeacherRefused(f'{reason}: a RANDOM-WEIGHT teacher is not semantic; refusing it. To fix: '
                                       f'{RANDOM_HINT}')
        size_field(config, teacher)
        return teacher, reason
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
    size_field(config, teacher)
    return teacher, reason


def describe_teacher(teacher: Teacher) -> str:
    """One line per head: which model and weights (RANDOM said loudly), for logs and status."""
    out = []
    parts = getattr(teacher, 'parts', None) or [teacher]
    for part in parts:
        state = part.state()
        random = ' RANDOM WEIGHTS, not semantic' if is_random(part) else ''
        if part.name == 'clip':
            out.append(f'CLIP {state.get("model_name")} (weights {state.get("pretrained")!r}{random})')
        elif part.name == 'dino':
            out.append(f'DINO {state.get("model_name")} (weights {state.get("weights")!r}{random})')
        elif part.name == 'custom':
            out.append(f'custom {part.dim}-d features from the dataset\'s feature files')
        else:
            out.append('ground-truth labels')
    heads = ', '.join(f'{name} {dim}-d' for name, dim in teacher.heads)
    return f'{" + ".join(out)}; heads: {heads}'
