"""Tiny inline-SVG charts for the HTML report: line/step charts, histograms and interval charts.

Standard library only, no matplotlib: the report must be one self-contained file, and these are
the only three kinds of chart it needs. Every string that reaches the SVG (titles, axis labels,
series names) is XML-escaped here.

Each chart's plotting area is a ``<g class="plot">`` whose ``data-*`` attributes give the data
range and the pixel frame (``data-x-min``, ``data-x-max``, ``data-y-min``, ``data-y-max``,
``data-left``, ``data-right``, ``data-top``, ``data-bottom``), so that a test (or a curious
reader) can map the pixel coordinates of a ``<polyline class="series" data-name="...">`` back
to data values: ``x = x_min + (px - left) / (right - left) * (x_max - x_min)``, and likewise
for ``y`` with ``bottom`` at ``y_min``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from robustlab.validate import is_number

__all__ = ["PALETTE", "Series", "histogram", "interval_chart", "line_chart", "nice_ticks"]

# Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008), black first: the first
# series of a chart is the one that matters most (the worst case, the best-of column).
PALETTE = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")

_WIDTH, _HEIGHT = 560, 300
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 16, 12, 40
_LEGEND_ROW = 16
_LEGEND_TOP = 10  # gap between the x-axis label and the legend


@dataclass(frozen=True)
class Series:
    """One line of a :func:`line_chart`: ``x`` and ``y`` of equal length (vertices, in order).

    ``markers`` draws a dot at each vertex (measured points, as opposed to a step function drawn
    exactly); ``low``/``high`` draw vertical error bars; ``dashed`` marks bounds of a different
    kind (e.g. certified accuracy, a lower bound, beside attack curves, which are upper bounds).
    """

    name: str
    x: Sequence[float]
    y: Sequence[float | None]  # None: not measured there (a gap)
    markers: bool = False
    dashed: bool = False
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.name!r}: {len(self.x)} x values but {len(self.y)} y values")


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) in ``[lo, hi]``;
    with ``integer``, steps of at least 1 (counts, epochs)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = max((hi - lo) / max(1, count), 1.0 if integer else 0.0)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi * (1 + 1e-9) + 1e-12:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _label(value: float) -> str:
    return f"{value:.4g}"


class _Frame:
    """Maps data coordinates to pixels and draws the axes."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], legend_rows: int = 0) -> None:
        self.x0, self.x1 = _widen(*x_range)
        self.y0, self.y1 = _widen(*y_range)
        self.left, self.right = _MARGIN_LEFT, _WIDTH - _MARGIN_RIGHT
        self.top, self.bottom = _MARGIN_TOP, _HEIGHT - _MARGIN_BOTTOM
        self.height = _HEIGHT + (legend_rows * _LEGEND_ROW + _LEGEND_TOP if legend_rows else 0)

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def open(self, title: str) -> list[str]:
        return [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} {self.height}" '
                 f'width="{_WIDTH}" height="{self.height}" role="img" aria-label="{escape(title)}">'),
                f"<title>{escape(title)}</title>",
                (f'<g class="plot" data-x-min="{self.x0!r}" data-x-max="{self.x1!r}" data-y-min="{self.y0!r}" '
                 f'data-y-max="{self.y1!r}" data-left="{self.left}" data-right="{self.right}" data-top="{self.top}" '
                 f'data-bottom="{self.bottom}">')]

    def axes(self, x_label: str, y_label: str, *, x_ticks: bool = True, x_integer: bool = False,
             y_integer: bool = False) -> list[str]:
        out = [(f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
                f'height="{self.bottom - self.top}" fill="none" stroke="#888"/>')]
        if x_ticks:
            for t in nice_ticks(self.x0, self.x1, integer=x_integer):
                x = _fmt(self.px(t))
                out.append(f'<line x1="{x}" y1="{self.bottom}" x2="{x}" y2="{self.bottom + 4}" stroke="#888"/>'
                           f'<text x="{x}" y="{self.bottom + 15}" text-anchor="middle">{_label(t)}</text>')
        for t in nice_ticks(self.y0, self.y1, integer=y_integer):
            y = _fmt(self.py(t))
            out.append(f'<line x1="{self.left}" y1="{y}" x2="{self.right}" y2="{y}" stroke="#eee"/>'
                       f'<text x="{self.left - 5}" y="{y}" text-anchor="end" dominant-baseline="middle">{_label(t)}</text>')
        out.append(f'<text x="{(self.left + self.right) / 2}" y="{self.bottom + 32}" text-anchor="middle">{escape(x_label)}</text>')
        out.append(f'<text transform="translate(14 {(self.top + self.bottom) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
        return out

    def legend(self, entries: Sequence[tuple[str, str, bool]]) -> list[str]:
        out = []
        for i, (name, colour, dashed) in enumerate(entries):
            y = _HEIGHT + _LEGEND_TOP + i * _LEGEND_ROW
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            out.append(f'<line x1="{self.left}" y1="{y}" x2="{self.left + 24}" y2="{y}" stroke="{colour}" '
                       f'stroke-width="2"{dash}/><text x="{self.left + 30}" y="{y}" dominant-baseline="middle">'
                       f"{escape(name)}</text>")
        return out


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """A non-empty range: a single value gets a unit-wide (or 10%) range around it."""
    if hi > lo:
        return float(lo), float(hi)
    pad = abs(lo) * 0.1 or 1.0
    return float(lo) - (pad if lo != 0 else 0.0), float(hi) + pad


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               x_integer: bool = False) -> str:
    """An SVG line chart, one ``<polyline class="series">`` per series, with a legend below.

    Ranges default to the extent of the finite data; ``x_integer`` puts x ticks on integers.
    Non-finite or ``None`` vertices are left out of the polyline (a curve with a gap is drawn
    through it, which suits monotone curves). The first series is drawn on top of the others."""
    xs = [v for s in series for v in _finite(s.x)]
    ys = [v for s in series for v in _finite([*s.y, *(s.low or ()), *(s.high or ())])]
    frame = _Frame(x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0)),
                   y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0)), legend_rows=len(series))
    out = frame.open(title) + frame.axes(x_label, y_label, x_integer=x_integer)
    entries = [(s.name, PALETTE[i % len(PALETTE)], s.dashed) for i, s in enumerate(series)]
    for i, s in reversed(list(enumerate(series))):
        colour = PALETTE[i % len(PALETTE)]
        vertices = [(x, y) for x, y in zip(s.x, s.y) if is_number(x) and is_number(y)]
        points = " ".join(f"{_fmt(frame.px(x))},{_fmt(frame.py(y))}" for x, y in vertices)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<polyline class="series" data-name="{escape(s.name)}" points="{points}" fill="none" '
                   f'stroke="{colour}" stroke-width="{2.5 if i == 0 else 1.8}"{dash}/>')
        if s.markers:
            out += [f'<circle cx="{_fmt(frame.px(x))}" cy="{_fmt(frame.py(y))}" r="3" fill="{colour}"/>' for x, y in vertices]
        if s.low is not None and s.high is not None:
            for x, lo, hi in zip(s.x, s.low, s.high):
                if is_number(x) and is_number(lo) and is_number(hi):
                    px = _fmt(frame.px(x))
                    out.append(f'<line class="error-bar" x1="{px}" y1="{_fmt(frame.py(lo))}" x2="{px}" '
                               f'y2="{_fmt(frame.py(hi))}" stroke="{colour}"/>')
    out += ["</g>", *frame.legend(entries), "</svg>"]
    return "\n".join(out)


def histogram(values: Sequence[float], *, title: str, x_label: str, bins: int = 20,
              x_range: tuple[float, float] | None = None) -> str:
    """An SVG histogram of the finite ``values`` (counts; equal-width bins over ``x_range``,
    default the data's extent). Each bar is a ``<rect class="bar" data-count="...">``."""
    data = _finite(values)
    lo, hi = _widen(*(x_range or ((min(data), max(data)) if data else (0.0, 1.0))))
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in data:
        if lo <= v <= hi:
            counts[min(bins - 1, int((v - lo) / width))] += 1
    frame = _Frame((lo, hi), (0.0, max(1, max(counts))))
    out = frame.open(title) + frame.axes(x_label, "samples", y_integer=True)
    for k, count in enumerate(counts):
        x0, x1 = frame.px(lo + k * width), frame.px(lo + (k + 1) * width)
        top = frame.py(count)
        out.append(f'<rect class="bar" data-count="{count}" x="{_fmt(x0)}" y="{_fmt(top)}" '
                   f'width="{_fmt(max(0.0, x1 - x0 - 1))}" height="{_fmt(frame.bottom - top)}" fill="{PALETTE[1]}"/>')
    out += ["</g>", "</svg>"]
    return "\n".join(out)


def interval_chart(intervals: Sequence[tuple[float, float | None, float]], *, title: str, y_label: str,
                   labels: tuple[str, str, str] = ("lower", "exact", "upper")) -> str:
    """One vertical bar per item from ``lower`` to ``upper``, with a dot at ``exact`` (``None``:
    none). Items are drawn left to right in the given order; an infinite upper end is drawn at
    the top of the chart with an open end (no cap)."""
    finite = _finite([v for lo, mid, hi in intervals for v in (lo, mid, hi)])
    top = max(finite) if finite else 1.0
    frame = _Frame((0.0, max(1, len(intervals))), (0.0, top * 1.05 if top > 0 else 1.0), legend_rows=3)
    out = frame.open(title) + frame.axes("sample (sorted by upper bound)", y_label, x_ticks=False)
    step = (frame.right - frame.left) / max(1, len(intervals))
    for i, (lo, mid, hi) in enumerate(intervals):
        x = _fmt(frame.left + (i + 0.5) * step)
        hi_px = frame.py(hi) if is_number(hi) else frame.top
        out.append(f'<g class="interval" data-lower="{lo!r}" data-exact="{mid!r}" data-upper="{hi!r}">'
                   f'<line x1="{x}" y1="{_fmt(frame.py(lo))}" x2="{x}" y2="{_fmt(hi_px)}" stroke="{PALETTE[1]}" '
                   f'stroke-width="3"/><circle cx="{x}" cy="{_fmt(frame.py(lo))}" r="2.5" fill="{PALETTE[3]}"/>')
        if is_number(hi):
            out.append(f'<circle cx="{x}" cy="{_fmt(hi_px)}" r="2.5" fill="{PALETTE[2]}"/>')
        if is_number(mid):
            out.append(f'<circle cx="{x}" cy="{_fmt(frame.py(mid))}" r="3.5" fill="{PALETTE[0]}"/>')
        out.append("</g>")
    out += ["</g>", *frame.legend([(labels[0], PALETTE[3], False), (labels[1], PALETTE[0], False),
                                   (labels[2], PALETTE[2], False)]), "</svg>"]
    return "\n".join(out)
