"""The checks every config section's ``__post_init__`` runs: one ValueError listing every problem."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Sequence


def raise_problems(problems: List[str]) -> None:
    """Raise one ValueError listing every problem (a config section's __post_init__ helper)."""
    if problems:
        raise ValueError('; '.join(problems))


def is_finite(value: Any) -> bool:
    """Tell whether `value` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """Tell whether `value` is an int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def field_rule(problems: List[str], section: str, values: Any, names: Sequence[str], what: str,
               ok: Callable[[Any], bool]) -> None:
    """Append '<section>.<name> must be <what>, got <value>' for each of `names` whose value fails `ok`."""
    for name in names:
        value = getattr(values, name)
        if not ok(value):
            problems.append(f'{section}.{name} must be {what}, got {value!r}')
