"""Progress bars on a terminal, one log line per stage elsewhere.

``progress_bar(...)`` takes tqdm's arguments. Where standard error is a terminal it is a tqdm
bar; where it is a file, a pipe or a CI log (where every redraw of a bar would be a line of its
own) it is a :class:`StageLog` with the same interface that logs one INFO line on the
``robustlab`` logger when the stage ends: ``evaluate: 1000/1000 sample in 12.3 s``, and, in a
stage that runs for long, one line at the first update after every ``HEARTBEAT_S`` seconds:
``evaluate: 250/1000 sample after 300.4 s``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Self

log = logging.getLogger("robustlab")

__all__ = ["HEARTBEAT_S", "StageLog", "progress_bar"]

# Seconds between a long stage's intermediate log lines (a multi-hour evaluation in a log file).
HEARTBEAT_S = 300.0


def _interactive() -> bool:
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class StageLog:
    """tqdm's interface (iteration, ``update``, ``set_postfix``, ``close``, context manager)
    without redraws: one log line when the stage is closed (or its iterable exhausted), and one
    at the first update after each ``HEARTBEAT_S`` seconds of a long stage."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str | None = None, total: float | None = None,
                 unit: str = "it", disable: bool = False, initial: float = 0, **_: Any) -> None:
        self.iterable = iterable
        self.desc = desc or "progress"
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.unit, self.disable = total, unit, disable
        self.n = initial  # work already done (a resumed run)
        self.postfix = ""
        self.start = self.last_line = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and not self.closed and now - self.last_line >= HEARTBEAT_S:
            self.last_line = now
            log.info("%s: %s %s after %.1f s%s", self.desc, self._done(), self.unit, now - self.start, self._extra())

    def _done(self) -> str:
        return f"{self.n:g}/{self.total:g}" if self.total is not None else f"{self.n:g}"

    def _extra(self) -> str:
        return f" ({self.postfix})" if self.postfix else ""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def reset(self, total: float | None = None) -> None:
        self.n, self.total = 0, total if total is not None else self.total

    def close(self) -> None:
        if self.closed or self.disable:
            self.closed = True
            return
        self.closed = True
        log.info("%s: %s %s in %.1f s%s", self.desc, self._done(), self.unit, time.perf_counter() - self.start,
                 self._extra())


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else a :class:`StageLog` (one line per stage)."""
    if _interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return StageLog(iterable, **kwargs)
