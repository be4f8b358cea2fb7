"""Which teacher an online session distils, why, and whether that deserves a warning (`TeacherChoice`).

The teachers' networks (open_clip, timm) are loaded by `..teachers` only when a teacher is built, which the trainer
node's training thread does after start-up.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..config import F3RMConfig
from ..teachers import (RANDOM_HINT, RandomTeacherRefused, choose_teacher, is_random, make_teacher, size_field,
                        teacher_parts)

log = logging.getLogger(__name__)


class TeacherChoice:
    """The teacher of an online session: the resumed checkpoint's, else chosen by `choose_teacher`.

    `teacher` is None until `choose`; `reason` says why it is the one it is, `warning` why it deserves a WARN ('':
    it does not).
    """

    def __init__(self, config: F3RMConfig, choice: str = 'auto', allow_random: bool = False):
        self.config = config
        self.choice = choice
        self.allow_random = allow_random
        self.asked = config.teacher.name   # choose_teacher rewrites config.teacher.name
        self.teacher = None
        self.reason = ''
        self.warning = ''

    def needs_labels(self) -> bool:
        """Whether the teacher (or the one that will be chosen) distils label images."""
        if self.teacher is not None:
            return 'labels' in self.teacher.name.split('+')
        return 'labels' in self.choice.split('+') or (self.choice == 'auto' and self.config.teacher.name == 'labels')

    def choose(self, labels: Optional[Dict[int, str]], frames: List, checkpoint: Optional[Mapping[str, Any]] = None,
               path: Optional[Path] = None):
        """Build the teacher: the one `checkpoint` (read from `path`) was distilled from, else `choose_teacher`'s.

        `RandomTeacherRefused` for a random-weight CLIP that is not allowed. Returns the teacher.
        """
        if checkpoint is not None:
            stored = checkpoint['teacher']
            self.config.teacher.name = stored['name']
            self.teacher = make_teacher(self.config.teacher, labels=labels, state=stored['state'], frames=frames)
            size_field(self.config, self.teacher)
            self.reason = f'{stored["name"]} teacher of the resumed checkpoint'
            if is_random(self.teacher) and not self.allow_random:
                raise RandomTeacherRefused(f'the resumed checkpoint {path} was distilled from RANDOM-WEIGHT CLIP '
                                           f'(not semantic); refusing it. To fix: {RANDOM_HINT}')
        else:
            self.teacher, self.reason = choose_teacher(self.config, labels, self.choice,
                                                       allow_random=self.allow_random, frames=frames)
        self.warning = self.judge()
        (log.warning if self.warning else log.info)('teacher: %s (%s)', self.teacher.name, self.reason)
        return self.teacher

    def judge(self) -> str:
        """Say why the teacher deserves a WARN ('' if not): not semantic, or a fallback from what was asked."""
        if is_random(self.teacher):
            return f'RANDOM-WEIGHT teacher ({self.teacher.name}): features are not semantic ({self.reason})'
        asked = self.choice if self.choice != 'auto' else self.asked
        try:
            asked = '+'.join(teacher_parts(asked))   # 'dino+clip' asks for what 'clip+dino' is
        except ValueError:
            pass
        if self.teacher.name != asked and 'resumed checkpoint' not in self.reason:
            return f'{self.teacher.name} teacher instead of {asked}: {self.reason}'
        return ''

    def clear(self) -> None:
        """No teacher (a new scan, or chosen again once enough labelled keyframes are held)."""
        self.teacher = None
        self.warning = ''
