"""Numbers as the reports, tables and command line print them: the one percent formatter."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["percent"]


def percent(value: Any, missing: str = "–") -> str:
    """A fraction as a percentage with one decimal (``0.9876 -> "98.8%"``); ``missing`` for a
    value that is not a finite number (None, NaN, a count not measured). Each output keeps its
    own placeholder: Markdown and HTML an en dash, the terminal tables a hyphen."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return missing
    return f"{100 * value:.1f}%"
