"""Third-party deprecation warnings a user cannot act on, silenced at the entry points only.

nerfstudio 1.1.5 decorates its activations with ``torch.cuda.amp.custom_fwd`` / ``custom_bwd`` and scripts
functions with ``torch.jit.script``; torch 2.4+ warns about both on import, so every ``f3rm-ros`` command and node
printed them before its own first line. Only these messages are silenced, and only by the entry points
(`cli.main` run as the console script, `ros.common.node_main`): tests keep seeing every warning.
"""
from __future__ import annotations

import warnings

KNOWN = (
    (FutureWarning, r'`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated'),
    (FutureWarning, r'`torch\.jit\.script` is deprecated'),
)


def silence_known_warnings() -> None:
    """Ignore the `KNOWN` third-party warnings in this process (an entry point calls this first)."""
    for category, message in KNOWN:
        warnings.filterwarnings('ignore', message=message, category=category)
