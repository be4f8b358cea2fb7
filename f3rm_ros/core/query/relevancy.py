"""Language relevancy of features, as F3RM and LERF compute it.

Several positive phrases are averaged into one embedding; each negative phrase stays separate.
Relevancy is the minimum over negatives of the pairwise softmax ``softmax([s_pos, s_neg] / T)[0]``,
which equals ``sigmoid((s_pos - s_neg) / T)``; with no negatives it is the plain cosine similarity.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu


# CLIP reads 77 tokens; a phrase far longer than any object's name is a mistake, not a query.
MAX_PHRASE_CHARS = 200


def split_phrases(text: str) -> list:
    """'mug, coffee cup' → ['mug', 'coffee cup'] (empty parts dropped)."""
    return [part.strip() for part in text.split(',') if part.strip()]


def positive_phrases(positives) -> list:
    """Return the positives of a query (comma-separated text or phrases), checked; ValueError when none is usable."""
    phrases = check_phrases(split_phrases(positives) if isinstance(positives, str) else list(positives))
    if not phrases:
        raise ValueError(f'the query {positives!r} is empty: give at least one phrase, e.g. "mug" or '
                         f'"mug, coffee cup"')
    return phrases


def check_phrases(phrases: Sequence[str], what: str = 'query') -> list:
    """Return the stripped, non-empty phrases; ValueError names control characters or overlong phrases."""
    out = []
    for phrase in phrases:
        if not isinstance(phrase, str):
            raise ValueError(f'{what} phrases must be text, got {type(phrase).__name__}')
        if any(ord(c) < 32 or ord(c) == 127 for c in phrase):
            raise ValueError(f'{what} phrase {phrase[:40]!r} contains control characters (a NUL byte cuts text '
                             f'short): send plain text')
        phrase = phrase.strip()
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ValueError(f'{what} phrase of {len(phrase)} characters is too long (at most {MAX_PHRASE_CHARS}; '
                             f'CLIP reads 77 tokens): name the object, e.g. "mug"')
        if phrase:
            out.append(phrase)
    return out


@dataclass
class TextQuery:
    """Embedded query: one averaged positive and zero or more negatives, all unit length."""

    positive: torch.Tensor                 # [D]
    negatives: Optional[torch.Tensor]      # [M, D] or None
    temperature: float = 0.1
    mode: str = 'pairwise_softmax'
    _copies: dict = field(default_factory=dict, repr=False, compare=False)   # device -> this query there

    @classmethod
    def from_embeddings(cls, positives: torch.Tensor, negatives: Optional[torch.Tensor] = None,
                        temperature: float = 0.1, mode: str = 'pairwise_softmax') -> 'TextQuery':
        """Average `positives` [P, D] into one direction; keep `negatives` [M, D] separate."""
        if positives.ndim != 2 or positives.shape[0] == 0:
            raise ValueError('at least one positive embedding is needed')
        if mode not in ('pairwise_softmax', 'cosine'):
            raise ValueError(f"mode must be 'pairwise_softmax' or 'cosine', got {mode!r}")
        if temperature <= 0:
            raise ValueError(f'temperature must be positive, got {temperature}')
        positive = F.normalize(F.normalize(positives.float(), dim=-1).mean(0), dim=-1)
        if negatives is not None and negatives.shape[0] > 0:
            negatives = F.normalize(negatives.float(), dim=-1)
        else:
            negatives = None
        return cls(positive, negatives, temperature, mode)

    @property
    def contrastive(self) -> bool:
        """True when scores are pairwise softmaxes against negatives (0.5 = no more like the query than one)."""
        return self.mode == 'pairwise_softmax' and self.negatives is not None

    def to(self, device) -> 'TextQuery':
        """Return the same query on another device (copied once per device, then kept: a cached query pays no copy)."""
        device = torch.device(device)
        if self.positive.device == device:
            return self
        if device not in self._copies:
            negatives = None if self.negatives is None else self.negatives.to(device)
            self._copies[device] = TextQuery(self.positive.to(device), negatives, self.temperature, self.mode)
        return self._copies[device]


class PhraseEmbeddings:
    """Text embeddings by phrase, each computed once (least recently used dropped beyond `size`).

    A repeated query, and the negatives of every query, skip the text tower (~10 ms a phrase for CLIP on a
    GPU, more than the rest of a warm query).
    """

    def __init__(self, teacher, size: int = 256):
        self.teacher = teacher
        self.size = int(size)
        self._cache: 'OrderedDict[str, torch.Tensor]' = OrderedDict()

    def __call__(self, phrases: Sequence[str]) -> torch.Tensor:
        """Return embeddings [P, D] of `phrases`, the missing ones encoded in one batch."""
        missing = list(dict.fromkeys(p for p in phrases if p not in self._cache))
        encoded = dict(zip(missing, self.teacher.encode_text(missing))) if missing else {}
        out = []
        for phrase in phrases:
            embedding = self._cache[phrase] if phrase in self._cache else encoded[phrase]
            out.append(embedding)
            if self.size:
                self._cache[phrase] = embedding
                self._cache.move_to_end(phrase)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return torch.stack(out)


def embed_query(teacher, positives: Sequence[str], negatives: Sequence[str] = (),
                temperature: float = 0.1, mode: str = 'pairwise_softmax',
                embeddings: Optional[PhraseEmbeddings] = None) -> TextQuery:
    """Encode phrases with the teacher's text encoder (through `embeddings`, a cache, when given) into a `TextQuery`."""
    if not positives:
        raise ValueError('the query is empty: give at least one phrase')
    encode = embeddings if embeddings is not None else (lambda phrases: teacher.encode_text(list(phrases)))
    negative_embeddings = encode(list(negatives)) if negatives else None
    return TextQuery.from_embeddings(encode(list(positives)), negative_embeddings, temperature, mode)


# Relevancy of a voxel exactly as close to the query as to its closest negative: in pairwise-softmax mode
# nothing at or below it is "the queried thing" (no negatives: no floor). Selection needs a margin above it:
# a phrase that is also a negative scores 0.5 give or take a float32 rounding.
SOFTMAX_FLOOR = 0.5
FLOOR_MARGIN = 1e-6
# Relevancy values above the floor that span less than this are one mode, not two for Otsu to separate.
OTSU_MIN_SPREAD = 0.05


def _otsu_mid_gap(values: np.ndarray) -> float:
    """Otsu's split of `values` (scikit-image), the cut placed half way between the two classes.

    Every cut inside an empty stretch of the histogram scores the same; scikit-image returns the lowest, right
    above the lower class. The middle leaves the same partition with room on both sides.
    """
    cut = float(threshold_otsu(values))
    lower, upper = values[values <= cut], values[values > cut]
    return cut if lower.size == 0 or upper.size == 0 else float(lower.max() + upper.min()) / 2


def select_threshold(values: np.ndarray, mode: str = 'otsu', percentile: float = 99.0, value: float = 0.6,
                     contrastive: bool = True) -> float:
    """Relevancy threshold of `values`: voxels strictly above it are the queried thing (nan when empty).

    ``otsu`` (scikit-image) splits only the values above the softmax floor when `contrastive`: most voxels (the
    table, the room) sit near 0.5, like no negative and unlike the query, and a split of the whole histogram
    would fall among them, letting a broad region of barely relevant surface join the object's cluster. One
    tight mode above the floor (an ideal field: the object alone) has nothing to split. ``percentile`` takes that
    percentile of all values, ``value`` the given relevancy. With `contrastive` the result is never below the floor.
    """
    values = np.asarray(values)
    if values.size == 0:
        return float('nan')
    floor = SOFTMAX_FLOOR + FLOOR_MARGIN if contrastive else -np.inf
    if mode == 'percentile':
        threshold = float(np.percentile(values, percentile))
    elif mode == 'value':
        threshold = float(value)
    elif mode == 'otsu':
        above = values[values > floor]
        split = above.size > 0 and float(np.ptp(above)) > OTSU_MIN_SPREAD
        threshold = _otsu_mid_gap(above) if split else floor
    else:
        raise ValueError(f"threshold mode must be 'otsu', 'percentile' or 'value', got {mode!r}")
    return max(threshold, floor)


def relevancy(features: torch.Tensor, query: TextQuery, normalized: bool = False) -> torch.Tensor:
    """Score features [..., D] → [...]: relevancy in [0, 1] (softmax mode) or cosine in [-1, 1].

    `normalized` says the features are unit length already (`VoxelField.unit_features`): the same scores, without
    normalising them again on every query.
    """
    if not normalized:
        features = F.normalize(features.float(), dim=-1)
    positive_similarity = features @ query.positive.to(features.device)
    if not query.contrastive:
        return positive_similarity
    negative_similarity = features @ query.negatives.to(features.device).T
    pairwise = torch.sigmoid((positive_similarity[..., None] - negative_similarity) / query.temperature)
    return pairwise.min(dim=-1).values
