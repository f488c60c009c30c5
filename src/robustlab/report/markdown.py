"""Markdown: the summaries of one evaluation, and the Markdown rendering of the tables of
:mod:`robustlab.report.tables` (which :mod:`robustlab.report.html`'s Markdown report uses too)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from robustlab.evaluation.evaluate import Evaluation
from robustlab.evaluation.minimum_norm import MinimumNormEvaluation
from robustlab.evaluation.targeted import TargetedEvaluation
from robustlab.report import tables
from robustlab.report.tables import Table, accuracy_cell

# Characters that open or close inline Markdown (emphasis, code, links, table cells, strikethrough).
_MARKUP = re.compile(r"([\\`*_\[\]|~])")


def escape_markdown(value: Any) -> str:
    """``value`` as literal text inside a Markdown line or table cell.

    Names come from users and model cards: ``|`` would split a table cell, ``*``, ``_`` and
    backticks start emphasis or code, ``<`` starts raw HTML (renderers pass it through) and a
    newline ends the table row. Markup characters are backslash-escaped, ``&``/``<``/``>``
    become HTML entities and line breaks become spaces.
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKUP.sub(r"\\\1", " ".join(text.splitlines()))


def markdown_table(table: Table) -> str:
    """``table`` as a Markdown table; every cell and header escaped (:func:`escape_markdown`)."""
    lines = ["| " + " | ".join(escape_markdown(h) for h in table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(escape_markdown(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def metrics_table(metrics: dict[str, Any]) -> str:
    """A Markdown table: clean, per-attack and worst-case accuracy with 95% Wilson intervals
    (:func:`robustlab.report.tables.metrics_table`)."""
    return markdown_table(tables.metrics_table(metrics))


def evaluation_markdown(evaluation: Evaluation, *, title: str = "robustlab evaluation") -> str:
    """A short Markdown report: threat model, attacks, metrics and provenance."""
    m = evaluation.metrics
    lines = [f"# {escape_markdown(title)}", "",
             f"Threat model: **{escape_markdown(evaluation.threat)}**, {m['samples']} samples.", ""]
    lines += [metrics_table(m), "", "## Attacks", ""]
    for name, config in evaluation.attacks.items():
        lines.append(f"- **{escape_markdown(name)}** ({escape_markdown(config.get('attack'))}): {_params(config)}; "
                     f"broke {m['broken_by'].get(name, 0)} samples first")
    if evaluation.model_card:
        card = evaluation.model_card
        lines += ["", "## Model", ""] + [f"- {key}: {escape_markdown(card.get(key))}"
                                         for key in ("architecture", "dataset", "training")]
    return "\n".join(lines + _provenance(evaluation.provenance)) + "\n"


def _params(config: dict[str, Any]) -> str:
    return escape_markdown(", ".join(f"{k}={v}" for k, v in config.items() if k != "attack"))


def _provenance(provenance: dict[str, Any]) -> list[str]:
    return ["", "## Provenance", ""] + [f"- {escape_markdown(k)}: {escape_markdown(v)}" for k, v in provenance.items()]


def curve_table(evaluation: MinimumNormEvaluation, eps_grid: Sequence[float] | None = None) -> str:
    """A Markdown table of robust accuracy (rows: eps; columns: each attack and the best of them)."""
    return markdown_table(tables.curve_table(evaluation, eps_grid))


def distance_table(evaluation: MinimumNormEvaluation) -> str:
    """A Markdown table of minimal-distance statistics per attack over the clean-correct samples."""
    return markdown_table(tables.distance_table(evaluation))


def minimum_norm_markdown(evaluation: MinimumNormEvaluation, *, eps_grid: Sequence[float] | None = None,
                          title: str = "robustlab minimum-norm evaluation") -> str:
    """Markdown report: the robust-accuracy curve over ``eps_grid`` (default: the evaluation's
    :meth:`~MinimumNormEvaluation.default_eps_grid`), distance statistics, attacks, provenance."""
    m = evaluation.metrics
    lines = [f"# {escape_markdown(title)}", "",
             (f"Norm **{evaluation.norm}**, unbounded (box {evaluation.threat.bounds}), "
              f"{m['samples']} samples, clean accuracy {accuracy_cell(m['clean_accuracy'])}."), "",
             "## Robust accuracy against eps", "", curve_table(evaluation, eps_grid), "",
             "## Minimal distances (clean-correct samples)", "", distance_table(evaluation), "", "## Attacks", ""]
    for name, config in evaluation.attacks.items():
        cost = evaluation.cost.get(name, {})
        lines.append(f"- **{escape_markdown(name)}** ({escape_markdown(config.get('attack'))}): {_params(config)}; "
                     f"smallest distance on {m['best_attack'].get(name, 0)} samples; "
                     f"{cost.get('backwards', '?')} backward passes")
    return "\n".join(lines + _provenance(evaluation.provenance)) + "\n"


def targeted_table(evaluation: TargetedEvaluation) -> str:
    """The C&W Table IV/VI layout: per case, success rate and mean distance over successes."""
    return markdown_table(tables.targeted_table(evaluation))


def targeted_markdown(evaluation: TargetedEvaluation, *, title: str = "robustlab targeted evaluation (C&W protocol)") -> str:
    """Markdown report of the targeted protocol: best/average/worst case table, attack, provenance."""
    m = evaluation.metrics
    config = evaluation.attack
    lines = [f"# {escape_markdown(title)}", "",
             (f"Norm **{evaluation.norm}**, unbounded; {m['samples']} samples, clean accuracy "
              f"{accuracy_cell(m['clean_accuracy'])}; each clean-correct sample attacked towards all "
              f"{'?' if evaluation.num_classes is None else evaluation.num_classes - 1} other classes "
              f"({m['runs']} runs)."), "",
             targeted_table(evaluation), "",
             ("Best case: the easiest target; average case: a random target; worst case: the hardest "
              "target (failed if any target failed). Distances are over the successful samples."), "",
             f"Attack: **{escape_markdown(config.get('attack'))}** ({_params(config)})."]
    return "\n".join(lines + _provenance(evaluation.provenance)) + "\n"
