"""Markdown summaries of evaluations (the HTML report builds on these later)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from robustlab.evaluation.evaluate import Evaluation
from robustlab.evaluation.minimum_norm import BEST, MinimumNormEvaluation
from robustlab.evaluation.targeted import CASES, TargetedEvaluation
from robustlab.formatting import percent

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


def _pct(acc: dict[str, float]) -> str:
    return f"{100 * acc['value']:.1f}% [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]"


def metrics_table(metrics: dict[str, Any]) -> str:
    """A Markdown table: clean, per-attack and worst-case accuracy with 95% Wilson intervals."""
    rows = [("clean", metrics["clean_accuracy"])]
    rows += [(f"robust: {escape_markdown(name)}", acc) for name, acc in metrics["robust_accuracy_per_attack"].items()]
    rows.append(("robust: worst case", metrics["robust_accuracy"]))
    lines = ["| accuracy | value [95% CI] |", "|---|---|"]
    lines += [f"| {name} | {_pct(acc)} |" for name, acc in rows]
    return "\n".join(lines)


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


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "∞" if math.isinf(value) else f"{value:.4g}"


def _rate(value: float) -> str:
    return percent(value)


def curve_table(evaluation: MinimumNormEvaluation, eps_grid: Sequence[float] | None = None) -> str:
    """A Markdown table of robust accuracy (rows: eps; columns: each attack and the best of them)."""
    curve = evaluation.curve(eps_grid)
    columns = evaluation.columns
    names = [f"best of {len(evaluation.attacks)}" if c == BEST else escape_markdown(c) for c in columns]
    lines = ["| eps | " + " | ".join(names) + " |", "|---|" + "---|" * len(columns)]
    for i, eps in enumerate(curve["eps"]):
        cells = [_rate(curve["robust_accuracy"][c][i]) for c in columns]
        lines.append(f"| {eps:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def distance_table(evaluation: MinimumNormEvaluation) -> str:
    """A Markdown table of minimal-distance statistics per attack over the clean-correct samples."""
    lines = ["| attack | success rate | median | median (successful) | mean (successful) |", "|---|---|---|---|---|"]
    for column in evaluation.columns:
        st = evaluation.distance_statistics(column)
        name = f"best of {len(evaluation.attacks)}" if column == BEST else escape_markdown(column)
        lines.append(f"| {name} | {_rate(st['success_rate'])} | {_num(st['median'])} | "
                     f"{_num(st['median_successful'])} | {_num(st['mean_successful'])} |")
    return "\n".join(lines)


def minimum_norm_markdown(evaluation: MinimumNormEvaluation, *, eps_grid: Sequence[float] | None = None,
                          title: str = "robustlab minimum-norm evaluation") -> str:
    """Markdown report: the robust-accuracy curve over ``eps_grid`` (default: the evaluation's
    :meth:`~MinimumNormEvaluation.default_eps_grid`), distance statistics, attacks, provenance."""
    m = evaluation.metrics
    lines = [f"# {escape_markdown(title)}", "",
             (f"Norm **{evaluation.norm}**, unbounded (box {evaluation.threat.bounds}), "
              f"{m['samples']} samples, clean accuracy {_pct(m['clean_accuracy'])}."), "",
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
    cases = evaluation.metrics["cases"]
    lines = ["| case | success rate | mean distance | median distance |", "|---|---|---|---|"]
    for case in CASES:
        c = cases[case]
        lines.append(f"| {case} | {_rate(c['success_rate'])} | {_num(c['mean_distance'])} | {_num(c['median_distance'])} |")
    return "\n".join(lines)


def targeted_markdown(evaluation: TargetedEvaluation, *, title: str = "robustlab targeted evaluation (C&W protocol)") -> str:
    """Markdown report of the targeted protocol: best/average/worst case table, attack, provenance."""
    m = evaluation.metrics
    config = evaluation.attack
    lines = [f"# {escape_markdown(title)}", "",
             (f"Norm **{evaluation.norm}**, unbounded; {m['samples']} samples, clean accuracy "
              f"{_pct(m['clean_accuracy'])}; each clean-correct sample attacked towards all "
              f"{'?' if evaluation.num_classes is None else evaluation.num_classes - 1} other classes "
              f"({m['runs']} runs)."), "",
             targeted_table(evaluation), "",
             ("Best case: the easiest target; average case: a random target; worst case: the hardest "
              "target (failed if any target failed). Distances are over the successful samples."), "",
             f"Attack: **{escape_markdown(config.get('attack'))}** ({_params(config)})."]
    return "\n".join(lines + _provenance(evaluation.provenance)) + "\n"
