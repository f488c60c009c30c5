"""Markdown summaries of evaluations (the HTML report builds on these later)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from robustlab.evaluation.evaluate import Evaluation
from robustlab.evaluation.minimum_norm import BEST, MinimumNormEvaluation
from robustlab.evaluation.targeted import CASES, TargetedEvaluation


def _pct(acc: dict[str, float]) -> str:
    return f"{100 * acc['value']:.1f}% [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]"


def metrics_table(metrics: dict[str, Any]) -> str:
    """A Markdown table: clean, per-attack and worst-case accuracy with 95% Wilson intervals."""
    rows = [("clean", metrics["clean_accuracy"])]
    rows += [(f"robust: {name}", acc) for name, acc in metrics["robust_accuracy_per_attack"].items()]
    rows.append(("robust: worst case", metrics["robust_accuracy"]))
    lines = ["| accuracy | value [95% CI] |", "|---|---|"]
    lines += [f"| {name} | {_pct(acc)} |" for name, acc in rows]
    return "\n".join(lines)


def evaluation_markdown(evaluation: Evaluation, *, title: str = "robustlab evaluation") -> str:
    """A short Markdown report: threat model, attacks, metrics and provenance."""
    m = evaluation.metrics
    lines = [f"# {title}", "", f"Threat model: **{evaluation.threat}**, {m['samples']} samples.", ""]
    lines += [metrics_table(m), "", "## Attacks", ""]
    for name, config in evaluation.attacks.items():
        params = ", ".join(f"{k}={v}" for k, v in config.items() if k != "attack")
        lines.append(f"- **{name}** ({config.get('attack')}): {params}; broke {m['broken_by'].get(name, 0)} samples first")
    if evaluation.model_card:
        card = evaluation.model_card
        lines += ["", "## Model", "", f"- architecture: {card.get('architecture')}", f"- dataset: {card.get('dataset')}",
                  f"- training: {card.get('training')}"]
    lines += ["", "## Provenance", ""] + [f"- {k}: {v}" for k, v in evaluation.provenance.items()]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "∞" if math.isinf(value) else f"{value:.4g}"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}%"


def curve_table(evaluation: MinimumNormEvaluation, eps_grid: Sequence[float] | None = None) -> str:
    """A Markdown table of robust accuracy (rows: eps; columns: each attack and the best of them)."""
    curve = evaluation.curve(eps_grid)
    columns = evaluation.columns
    names = [f"best of {len(evaluation.attacks)}" if c == BEST else c for c in columns]
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
        name = f"best of {len(evaluation.attacks)}" if column == BEST else column
        lines.append(f"| {name} | {_rate(st['success_rate'])} | {_num(st['median'])} | "
                     f"{_num(st['median_successful'])} | {_num(st['mean_successful'])} |")
    return "\n".join(lines)


def minimum_norm_markdown(evaluation: MinimumNormEvaluation, *, eps_grid: Sequence[float] | None = None,
                          title: str = "robustlab minimum-norm evaluation") -> str:
    """Markdown report: the robust-accuracy curve over ``eps_grid`` (default: the evaluation's
    :meth:`~MinimumNormEvaluation.default_eps_grid`), distance statistics, attacks, provenance."""
    m = evaluation.metrics
    lines = [f"# {title}", "", (f"Norm **{evaluation.norm}**, unbounded (box {evaluation.threat.bounds}), "
                                f"{m['samples']} samples, clean accuracy {_pct(m['clean_accuracy'])}."), "",
             "## Robust accuracy against eps", "", curve_table(evaluation, eps_grid), "",
             "## Minimal distances (clean-correct samples)", "", distance_table(evaluation), "", "## Attacks", ""]
    for name, config in evaluation.attacks.items():
        params = ", ".join(f"{k}={v}" for k, v in config.items() if k != "attack")
        cost = evaluation.cost.get(name, {})
        lines.append(f"- **{name}** ({config.get('attack')}): {params}; smallest distance on "
                     f"{m['best_attack'].get(name, 0)} samples; {cost.get('backwards', '?')} backward passes")
    lines += ["", "## Provenance", ""] + [f"- {k}: {v}" for k, v in evaluation.provenance.items()]
    return "\n".join(lines) + "\n"


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
    params = ", ".join(f"{k}={v}" for k, v in config.items() if k != "attack")
    lines = [f"# {title}", "",
             (f"Norm **{evaluation.norm}**, unbounded; {m['samples']} samples, clean accuracy "
              f"{_pct(m['clean_accuracy'])}; each clean-correct sample attacked towards all "
              f"{evaluation.num_classes - 1} other classes ({m['runs']} runs)."), "",
             targeted_table(evaluation), "",
             ("Best case: the easiest target; average case: a random target; worst case: the hardest "
              "target (failed if any target failed). Distances are over the successful samples."), "",
             f"Attack: **{config.get('attack')}** ({params}).", "", "## Provenance", ""]
    lines += [f"- {k}: {v}" for k, v in evaluation.provenance.items()]
    return "\n".join(lines) + "\n"
