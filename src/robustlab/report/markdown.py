"""Markdown summaries of evaluations (the HTML report builds on these later)."""

from __future__ import annotations

from typing import Any

from robustlab.evaluation.evaluate import Evaluation


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
