"""What the evaluation tables say, once: each table as a header and rows of plain text.

:mod:`robustlab.report.markdown` renders them as Markdown, :mod:`robustlab.report.html` as HTML
(each renderer escapes the text for its format); neither decides what a table holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from robustlab.evaluation.minimum_norm import BEST, MinimumNormEvaluation
from robustlab.evaluation.targeted import CASES, TargetedEvaluation
from robustlab.formatting import percent

__all__ = ["Table", "accuracy_cell", "column_name", "curve_table", "distance_table", "eps_text", "metrics_table",
           "number", "targeted_table"]


@dataclass(frozen=True)
class Table:
    """A table of plain (unescaped) text: ``header`` and ``rows`` of cells."""

    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]

    @classmethod
    def of(cls, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> Table:
        """A table of any values: numbers as :func:`number` writes them, the rest as ``str``."""
        return cls(tuple(str(h) for h in header), [tuple(_cell(c) for c in row) for row in rows])


def _cell(value: Any) -> str:
    return number(value) if value is None or isinstance(value, float) else str(value)


def number(value: Any) -> str:
    """A measured number: 4 significant digits, ``∞`` for infinity, ``–`` where undefined (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def accuracy_cell(acc: dict[str, Any]) -> str:
    """An accuracy with its 95% Wilson interval: ``"98.8% [97.0%, 99.5%]"``."""
    return f"{percent(acc['value'])} [{percent(acc['ci_low'])}, {percent(acc['ci_high'])}]"


def eps_text(eps: Any) -> str:
    return "unbounded" if eps is None or (isinstance(eps, float) and math.isinf(eps)) else f"{eps:g}"


def column_name(column: str, attacks: int) -> str:
    """A minimum-norm column by name; the best of the attacks is the worst case for the model."""
    return f"worst case (best of {attacks})" if column == BEST else column


def metrics_table(metrics: dict[str, Any]) -> Table:
    """A fixed-eps evaluation's accuracies: clean, per attack (none in a cascade, where only the
    worst case is defined) and worst case, with 95% Wilson intervals and the samples each attack
    broke first."""
    rows = [("clean", accuracy_cell(metrics["clean_accuracy"]), "–")]
    rows += [(f"robust: {name}", accuracy_cell(acc), str(metrics["broken_by"].get(name, 0)))
             for name, acc in metrics["robust_accuracy_per_attack"].items()]
    rows.append(("robust: worst case", accuracy_cell(metrics["robust_accuracy"]), str(sum(metrics["broken_by"].values()))))
    return Table(("accuracy", "value [95% Wilson CI]", "broken first by it"), rows)


def curve_table(evaluation: MinimumNormEvaluation, eps_grid: Sequence[float] | None = None) -> Table:
    """Robust accuracy of a minimum-norm evaluation at each eps of ``eps_grid`` (default: its
    :meth:`~MinimumNormEvaluation.default_eps_grid`), per attack and for the best of them."""
    curve = evaluation.curve(eps_grid)
    columns = evaluation.columns
    return Table(("eps", *(column_name(c, len(evaluation.attacks)) for c in columns)),
                 [(f"{eps:.4g}", *(percent(curve["robust_accuracy"][c][i]) for c in columns))
                  for i, eps in enumerate(curve["eps"])])


def distance_table(evaluation: MinimumNormEvaluation) -> Table:
    """Minimal-distance statistics per attack over the clean-correct samples, with each attack's cost."""
    rows = []
    for column in evaluation.columns:
        st = evaluation.distance_statistics(column)
        rows.append((column_name(column, len(evaluation.attacks)), percent(st["success_rate"]), number(st["median"]),
                     number(st["median_successful"]), number(st["mean_successful"]),
                     number(evaluation.cost.get(column, {}).get("backwards"))))
    return Table(("attack", "success rate", "median", "median (successful)", "mean (successful)", "backward passes"),
                 rows)


def targeted_table(evaluation: TargetedEvaluation) -> Table:
    """The C&W Table IV/VI layout: per case, success rate and mean and median distance over successes."""
    cases = evaluation.metrics["cases"]
    return Table(("case", "success rate", "mean distance", "median distance"),
                 [(case, percent(cases[case]["success_rate"]), number(cases[case]["mean_distance"]),
                   number(cases[case]["median_distance"])) for case in CASES])
