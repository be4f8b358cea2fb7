"""Language relevancy of features, as F3RM and LERF compute it.

Several positive phrases are averaged into one embedding; each negative phrase stays separate.
Relevancy is the minimum over negatives of the pairwise softmax ``softmax([s_pos, s_neg] / T)[0]``,
which equals ``sigmoid((s_pos - s_neg) / T)``; with no negatives it is the plain cosine similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def split_phrases(text: str) -> list:
    """'mug, coffee cup' → ['mug', 'coffee cup'] (empty parts dropped)."""
    return [part.strip() for part in text.split(',') if part.strip()]


@dataclass
class TextQuery:
    """Embedded query: one averaged positive and zero or more negatives, all unit length."""

    positive: torch.Tensor                 # [D]
    negatives: Optional[torch.Tensor]      # [M, D] or None
    temperature: float = 0.1
    mode: str = 'pairwise_softmax'

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
        """Return the same query on another device."""
        negatives = None if self.negatives is None else self.negatives.to(device)
        return TextQuery(self.positive.to(device), negatives, self.temperature, self.mode)


def embed_query(teacher, positives: Sequence[str], negatives: Sequence[str] = (),
                temperature: float = 0.1, mode: str = 'pairwise_softmax',
                negative_cache: Optional[Dict[Tuple[str, ...], torch.Tensor]] = None) -> TextQuery:
    """Encode phrases with the teacher's text encoder into a `TextQuery`.

    `negative_cache` (a dict the caller keeps per teacher) saves encoding the same negatives for every query.
    """
    if not positives:
        raise ValueError('the query is empty: give at least one phrase')
    positive_embeddings = teacher.encode_text(list(positives))
    negative_embeddings = None
    if negatives:
        cache = {} if negative_cache is None else negative_cache
        key = tuple(negatives)
        if key not in cache:
            cache[key] = teacher.encode_text(list(negatives))
        negative_embeddings = cache[key]
    return TextQuery.from_embeddings(positive_embeddings, negative_embeddings, temperature, mode)


def relevancy(features: torch.Tensor, query: TextQuery) -> torch.Tensor:
    """Score features [..., D] → [...]: relevancy in [0, 1] (softmax mode) or cosine in [-1, 1]."""
    features = F.normalize(features.float(), dim=-1)
    positive_similarity = features @ query.positive.to(features.device)
    if not query.contrastive:
        return positive_similarity
    negative_similarity = features @ query.negatives.to(features.device).T
    pairwise = torch.sigmoid((positive_similarity[..., None] - negative_similarity) / query.temperature)
    return pairwise.min(dim=-1).values
