"""The checks behind robustlab's argument validation: each caller keeps its own error message,
the test of what counts as an integer or a number is written once here."""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_int", "is_number"]


def is_int(value: object, minimum: int | None = None) -> TypeGuard[int]:
    """``value`` is an int and not a bool (``True`` is an int in Python), ``>= minimum`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(value: object, *, finite: bool = True, positive: bool = False) -> TypeGuard[int | float]:
    """``value`` is an int or a float and not a bool; finite unless ``finite=False``, ``> 0`` with
    ``positive=True``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (not finite or math.isfinite(value)) and (not positive or value > 0)
