"""Plain-text tables the commands print (evaluate, demo, results)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from robustlab.formatting import percent


def print_table(rows: list[tuple[str, str]], header: tuple[str, str]) -> None:
    width = max(len(r[0]) for r in [header, *rows])
    print(f"{header[0]:<{width}}  {header[1]}")
    print(f"{'-' * width}  {'-' * len(header[1])}")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def accuracy_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Clean, per-attack and worst-case accuracy with their 95% intervals, for :func:`print_table`."""

    def number(value: float | None) -> str:  # None or NaN: an accuracy over zero samples
        return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"

    def fmt(acc: dict[str, float]) -> str:
        value = number(acc["value"])
        return f"{value:>5}{'%' if value != '-' else ' '}  [{number(acc['ci_low'])}, {number(acc['ci_high'])}]"

    rows = [("clean", fmt(metrics["clean_accuracy"]))]
    rows += [(name, fmt(acc)) for name, acc in metrics["robust_accuracy_per_attack"].items()]
    rows.append(("worst case", fmt(metrics["robust_accuracy"])))
    return rows


def print_columns(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def percent_or_dash(value: float | None) -> str:
    return percent(value, missing="-")
