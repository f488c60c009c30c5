"""Numbers and times as the reports, tables, documents and command line write them: the one
percent formatter and the one timestamp."""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime
from typing import Any

__all__ = ["percent", "timestamp"]


def percent(value: Any, missing: str = "–") -> str:
    """A fraction as a percentage with one decimal (``0.9876 -> "98.8%"``); ``missing`` for a
    value that is not a finite number (None, NaN, a count not measured). Each output keeps its
    own placeholder: Markdown and HTML an en dash, the terminal tables a hyphen."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return missing
    return f"{100 * value:.1f}%"


def timestamp() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-12-05T07:13:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
