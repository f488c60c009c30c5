"""``robustlab report``: one self-contained HTML page (or Markdown) from the files robustlab writes.

Inputs, found in each run folder given (or given directly as files):

==========================  =====================================================================
``evaluation.json``         fixed-eps :class:`~robustlab.evaluation.Evaluation` (``evaluate``)
``minimum-norm.json``       :class:`~robustlab.evaluation.MinimumNormEvaluation`
``targeted.json``           :class:`~robustlab.evaluation.TargetedEvaluation` (C&W protocol)
``diagnostics.json``        :class:`~robustlab.evaluation.Diagnosis` (``evaluate --diagnose``)
``certify.json``            certified accuracy per method and eps (``robustlab certify``)
``bracket.json``            lower / exact / upper per sample (``certify --bracket``)
``metrics.jsonl``           training history, also under ``checkpoints/`` (``robustlab train``)
``model.json``              the model card (``robustlab train``)
``adversarial.safetensors`` adversarial inputs of ``robustlab attack`` (with its ``summary.json``)
``curve.json``              robust accuracy at a few eps (``robustlab demo``)
==========================  =====================================================================

The JSON files are documents (:mod:`robustlab.io`), each read by the loader of its ``kind``;
a file written before documents had a kind is read as the kind its name stands for.

Every section is optional; a given path that holds none of these is an error (a typo should
not give an empty report). The page has no scripts and loads nothing: CSS is inline, charts are
inline SVG (:mod:`robustlab.report.svg`), images are base64 PNG, and a Content-Security-Policy
forbids everything else. Every string read from the inputs (names, model cards, messages) is
escaped, in the HTML and in the Markdown.

Metrics are recomputed from the per-sample tables through the evaluation classes, not copied
from the stored ``metrics``, so the report shows what the samples say.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import robustlab
from robustlab.documentation import docs_pointer, read_page
from robustlab.errors import RobustlabError
from robustlab.evaluation.evaluate import Evaluation
from robustlab.evaluation.minimum_norm import BEST, MinimumNormEvaluation
from robustlab.evaluation.targeted import CASES, TargetedEvaluation
from robustlab.formatting import percent, timestamp
from robustlab.io import KINDS, read_document, read_json, write_atomic
from robustlab.report import tables
from robustlab.report.markdown import escape_markdown, markdown_table
from robustlab.report.store import card_hash
from robustlab.report.svg import Series, histogram, interval_chart, line_chart
from robustlab.report.tables import Table, accuracy_cell, column_name, eps_text, number
from robustlab.validate import is_number

__all__ = ["Examples", "ReportInputs", "html_report", "load_report_inputs", "markdown_report", "write_report"]

KNOWN_FILES = ("evaluation.json", "minimum-norm.json", "targeted.json", "diagnostics.json", "certify.json",
               "bracket.json", "metrics.jsonl", "checkpoints/metrics.jsonl", "model.json", "adversarial.safetensors",
               "curve.json")
# The kind of document each known JSON file holds (a file without a kind, written before
# documents had one, is read as this kind), and where the report keeps it.
LEGACY_KINDS = {"evaluation.json": "fixed", "minimum-norm.json": "minimum-norm", "targeted.json": "targeted",
                "diagnostics.json": "diagnostics", "certify.json": "certification", "bracket.json": "bracket",
                "model.json": "model-card", "curve.json": "curve"}
_PLACES = {"fixed": "evaluations", "minimum-norm": "minimum_norm", "targeted": "targeted", "diagnostics": "diagnostics",
           "certification": "certify", "bracket": "brackets", "model-card": "cards", "curve": "curves"}
VERDICT_CLASSES = ("pass", "warn", "fail", "skip")
# Rows of an example grid: enough to see what the perturbations look like, small enough to keep
# the page light.
MAX_EXAMPLES = 8
# Beyond this many distinct minimal distances, a minimum-norm curve is drawn on a grid of this
# many eps instead of at every step (the page stays small; the tables keep the exact numbers).
MAX_STEPS = 1000


@dataclass
class Examples:
    """Adversarial examples of ``robustlab attack``: ``x``/``x_adv`` ``[N, C, H, W]``; ``y``,
    ``predictions`` (at ``x_adv``), ``success`` and ``distance`` ``[N]``; ``summary`` its summary.json;
    ``clean`` the predictions at ``x`` (None in files written before they were stored)."""

    x: Any
    x_adv: Any
    y: Any
    predictions: Any
    success: Any
    distance: Any
    summary: dict[str, Any] | None = None
    clean: Any = None


@dataclass
class ReportInputs:
    """What :func:`load_report_inputs` found, each item as ``(source label, document)``."""

    evaluations: list[tuple[str, Evaluation]] = field(default_factory=list)
    minimum_norm: list[tuple[str, MinimumNormEvaluation]] = field(default_factory=list)
    targeted: list[tuple[str, TargetedEvaluation]] = field(default_factory=list)
    diagnostics: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    certify: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    brackets: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    training: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    cards: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    examples: list[tuple[str, Examples]] = field(default_factory=list)
    curves: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def all_evaluations(self) -> list[tuple[str, Evaluation | MinimumNormEvaluation | TargetedEvaluation]]:
        """The fixed-eps, minimum-norm and targeted evaluations, in that order."""
        return [*self.evaluations, *self.minimum_norm, *self.targeted]

    def model_cards(self) -> list[tuple[str, dict[str, Any]]]:
        """Distinct model cards: the card files, then those embedded in evaluations."""
        embedded = [(label, ev.model_card) for label, ev in self.all_evaluations() if isinstance(ev.model_card, dict)]
        seen, out = set(), []
        for label, card in [*self.cards, *embedded]:
            key = card_hash(card)
            if key not in seen:
                seen.add(key)
                out.append((label, card))
        return out


# -- loading ---------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise RobustlabError(f"cannot read {path}: {exc}") from None


def _load_examples(path: Path) -> Examples:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise RobustlabError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("x", "x_adv", "y", "predictions", "success", "distance") if k not in tensors]
    if missing:
        raise RobustlabError(f"{path} lacks {missing}; is it the adversarial.safetensors of `robustlab attack`?")
    summary = path.with_name("summary.json")
    return Examples(tensors["x"], tensors["x_adv"], tensors["y"], tensors["predictions"], tensors["success"].bool(),
                    tensors["distance"], read_json(summary) if summary.is_file() else None,
                    tensors.get("clean_predictions"))


def _add_file(inputs: ReportInputs, path: Path, label: str, name: str, certify_norm: str | None) -> None:
    """Load ``path`` as the known file ``name`` (one of :data:`KNOWN_FILES`) into ``inputs``."""
    try:
        if name.endswith("metrics.jsonl"):
            inputs.training.append((label, _read_jsonl(path)))
        elif name == "adversarial.safetensors":
            inputs.examples.append((label, _load_examples(path)))
        else:
            data = read_document(path, legacy_kind=LEGACY_KINDS[name])
            kind = data.get("kind", LEGACY_KINDS[name])
            if kind not in _PLACES:
                raise RobustlabError(f"{path} holds a {kind} document, which robustlab report does not show")
            document = KINDS[kind].load(data)
            if kind == "bracket":
                document = {"norm": certify_norm, **document}
            elif kind == "model-card":
                document = document.to_dict()
            getattr(inputs, _PLACES[kind]).append((label, document))
    except json.JSONDecodeError as exc:
        raise RobustlabError(f"cannot read {path}: not valid JSON ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RobustlabError(f"{path} is not a valid {name}: {type(exc).__name__} {exc}") from None
    inputs.files.append(str(path))


def load_report_inputs(paths: Iterable[str | Path]) -> ReportInputs:
    """Read the robustlab outputs in each run folder of ``paths`` (or each file, named as in
    :data:`KNOWN_FILES`). Raises :class:`RobustlabError` for a path that does not exist or holds
    none of them, and for a file that cannot be read."""
    inputs = ReportInputs()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = [(path / name, name) for name in KNOWN_FILES if (path / name).is_file()]
            label = str(given)
        elif path.is_file():
            name = path.name if path.name in KNOWN_FILES else None
            if name is None:
                raise RobustlabError(f"{path}: not a file robustlab report reads ({', '.join(KNOWN_FILES)})")
            found, label = [(path, name)], str(path.parent)
        else:
            raise RobustlabError(f"{given}: no such file or folder")
        if not found:
            raise RobustlabError(f"{given}: no robustlab outputs there (looked for {', '.join(KNOWN_FILES)})")
        certify = path.parent / "certify.json" if path.is_file() else path / "certify.json"
        norm = read_document(certify, "certification", legacy_kind="certification").get("norm") if certify.is_file() else None
        for file, name in found:
            _add_file(inputs, file, label, name, norm)
    return inputs


# -- formatting helpers ----------------------------------------------------------------------
def _e(value: Any) -> str:
    return escape(str(value), quote=True)


# -- HTML building blocks --------------------------------------------------------------------
def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    cell = (lambda c: str(c)) if raw else _e
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_table(table: Table) -> str:
    """A table of :mod:`robustlab.report.tables` in HTML (every cell escaped)."""
    return _table(table.header, table.rows)


def _value_html(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, default=str))}</code>"
    return _e(number(value) if isinstance(value, float) else value)


def _kv_table(items: dict[str, Any]) -> str:
    return _table(("field", "value"), ((_e(k), _value_html(v)) for k, v in items.items()), raw=True)


def _section(anchor: str, title: str, body: str) -> tuple[str, str, str]:
    return anchor, title, f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _image(image: Any, alt: str) -> str:
    """A PIL image as an ``<img>`` with a base64 PNG, at its own size (pixels stay square)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" width="{image.size[0]}" height="{image.size[1]}" '
            f'alt="{_e(alt)}">')


# -- curves ----------------------------------------------------------------------------------
def _minimum_norm_series(ev: MinimumNormEvaluation, prefix: str, x_max: float) -> list[Series]:
    """One exact step curve per column (worst case first), in percent: at each distinct minimal
    distance ``d`` the curve drops from its value just below ``d`` to :meth:`robust_accuracy_at`
    ``(d)`` (broken means ``distance <= eps``)."""
    series = []
    for column in [BEST, *ev.attacks]:
        steps = sorted({d for d in ev.distances(column) if math.isfinite(d) and 0 < d <= x_max})
        if len(steps) > MAX_STEPS:
            steps = [x_max * (k + 1) / MAX_STEPS for k in range(MAX_STEPS)]
        values = ev.curve([0.0, *steps])["robust_accuracy"][column]
        xs, ys = [0.0], [100 * values[0]]
        for eps, before, after in zip(steps, values, values[1:]):
            xs += [eps, eps]
            ys += [100 * before, 100 * after]
        xs.append(x_max)
        ys.append(100 * values[-1])
        series.append(Series(f"{prefix}{column_name(column, len(ev.attacks))}", xs, ys))
    return series


def _fixed_series(evaluations: list[tuple[str, Evaluation]]) -> list[Series]:
    """Measured points, in percent with 95% CI bars: the worst case of all evaluations and,
    where not a cascade, each attack's. An attack name whose configuration differs between
    evaluations gets one series per configuration."""
    points: dict[str, list[tuple[float, dict[str, float]]]] = {}
    configs: dict[str, list[str]] = {}
    for _, ev in sorted(evaluations, key=lambda item: item[1].threat.eps):
        metrics = ev.metrics
        points.setdefault("worst case (fixed eps)", []).append((ev.threat.eps, metrics["robust_accuracy"]))
        for name, acc in metrics["robust_accuracy_per_attack"].items():
            config = json.dumps(ev.attacks.get(name), sort_keys=True, default=str)
            known = configs.setdefault(name, [])
            if config not in known:
                known.append(config)
            key = name if known.index(config) == 0 else f"{name} (configuration {known.index(config) + 1})"
            points.setdefault(key, []).append((ev.threat.eps, acc))
    return [Series(name, [e for e, _ in pts], [100 * a["value"] for _, a in pts], markers=True,
                   low=[100 * a["ci_low"] for _, a in pts], high=[100 * a["ci_high"] for _, a in pts])
            for name, pts in points.items()]


def _norms(inputs: ReportInputs) -> list[str]:
    norms: list[Any] = [ev.threat.norm for _, ev in inputs.minimum_norm] + [ev.threat.norm for _, ev in inputs.evaluations]
    norms += [c.get("norm") for _, c in [*inputs.curves, *inputs.certify]]
    return [n for n in dict.fromkeys(norms) if isinstance(n, str)]


def robust_accuracy_charts(inputs: ReportInputs) -> dict[str, str]:
    """Per norm, the SVG chart of robust accuracy (%) against eps: exact step curves from the
    minimum-norm evaluations, measured points (with 95% CIs) from fixed-eps evaluations and
    ``curve.json`` files, and certified accuracy (dashed, a lower bound) from ``certify.json``.
    A norm without a minimum-norm run and with measurements at fewer than two eps gets no chart
    (one point is not a curve)."""
    charts = {}
    for norm in _norms(inputs):
        minimum = [(label, ev) for label, ev in inputs.minimum_norm if ev.threat.norm == norm]
        fixed = [(label, ev) for label, ev in inputs.evaluations if ev.threat.norm == norm and math.isfinite(ev.threat.eps)]
        curves = [(label, c) for label, c in inputs.curves if c.get("norm") == norm]
        certified = [(label, c) for label, c in inputs.certify if c.get("norm") == norm]
        eps_seen = [ev.threat.eps for _, ev in fixed] + [float(e) for _, c in curves for e in c["robust_accuracy"]]
        eps_seen += [float(e) for _, c in certified for m in c.get("certified_accuracy", {}).values() for e in m]
        if not minimum and len(set(eps_seen)) < 2:
            continue
        # Every column's largest distance fits, with a margin that shows where each curve ends.
        eps_seen += [d for _, ev in minimum for c in ev.columns for d in ev.distances(c) if math.isfinite(d)]
        x_max = 1.05 * max([e for e in eps_seen if math.isfinite(e)] or [1.0]) or 1.0
        series = []
        for label, ev in minimum:
            series += _minimum_norm_series(ev, f"{label}: " if len(minimum) > 1 else "", x_max)
        if fixed:
            series += _fixed_series(fixed)
        for label, curve in curves:
            items = sorted((float(e), a) for e, a in curve["robust_accuracy"].items())
            series.append(Series(f"{curve.get('attack', 'attack')} ({label})", [e for e, _ in items],
                                 [100 * a for _, a in items], markers=True))
        for label, cert in certified:
            for method, by_eps in cert.get("certified_accuracy", {}).items():
                items = sorted((float(e), a) for e, a in by_eps.items())
                series.append(Series(f"certified: {method} ({label})", [e for e, _ in items],
                                     [100 * a for _, a in items], markers=True, dashed=True))
        charts[norm] = line_chart(series, title=f"robust accuracy against {norm} eps", x_label=f"eps ({norm})",
                                  y_label="accuracy (%)", x_range=(0.0, x_max), y_range=(0.0, 100.0))
    return charts


# -- HTML sections ---------------------------------------------------------------------------
def _model_section(inputs: ReportInputs) -> str:
    parts = []
    for label, card in inputs.model_cards():
        recorded = card.get("training")
        training = recorded if isinstance(recorded, dict) else {}
        summary = {"architecture": card.get("architecture"), "dataset": card.get("dataset"),
                   "input bounds": card.get("input_bounds"), "normalization": card.get("normalization"),
                   "arguments": card.get("arguments"), "training method": training.get("method"),
                   "metrics": card.get("metrics"), "library version": card.get("library_version"),
                   "created": card.get("created")}
        rest = {k: v for k, v in card.items() if k not in ("architecture", "dataset", "input_bounds", "normalization",
                                                           "arguments", "metrics", "library_version", "created")}
        parts.append(f"<h3>{_e(card.get('architecture'))} <small>from {_e(label)}, card sha256 "
                     f"{_e(card_hash(card)[:12])}</small></h3>{_kv_table(summary)}"
                     f"<details><summary>full card (training configuration, extra)</summary>{_kv_table(rest)}</details>")
    return "\n".join(parts)


def _threat_section(inputs: ReportInputs) -> str:
    rows: list[tuple[Any, ...]] = [(label, kind, ev.threat.norm, eps_text(ev.threat.eps), list(ev.threat.bounds), len(ev.samples))
            for kind, group in (("fixed eps", inputs.evaluations), ("minimum norm", inputs.minimum_norm),
                                ("targeted (C&W)", inputs.targeted)) for label, ev in group]
    rows += [(label, "certified", c.get("norm"), ", ".join(sorted({e for m in c.get("certified_accuracy", {}).values() for e in m})),
              "–", c.get("samples")) for label, c in inputs.certify]
    return _table(("source", "evaluation", "norm", "eps", "box", "samples"), rows)


def _accuracy_section(inputs: ReportInputs) -> str:
    parts = []
    for label, ev in inputs.evaluations:
        m = ev.metrics
        note = "" if len(m["robust_accuracy_per_attack"]) == len(ev.attacks) else (
            "<p class=note>Run as a cascade: per-attack accuracies are not defined, only the worst case.</p>")
        configs = _table(("attack", "configuration"), ((n, json.dumps(c, default=str)) for n, c in ev.attacks.items()))
        parts.append(f"<h3>{_e(label)}: {_e(ev.threat)}, {m['samples']} samples</h3>"
                     + _html_table(tables.metrics_table(m)) + note
                     + f"<details><summary>attacks</summary>{configs}</details>")
    for label, mn in inputs.minimum_norm:
        parts.append(f"<h3>{_e(label)}: minimum-norm {_e(mn.norm)}</h3>"
                     + _table(("accuracy", "value [95% Wilson CI]"), [("clean", accuracy_cell(mn.metrics["clean_accuracy"]))]))
    return "\n".join(parts)


def _cdf_series(name: str, distances: Sequence[float], x_max: float) -> Series:
    """The empirical distribution function of ``distances`` in percent of all of them (an
    infinite distance, no adversarial example, never counts), as a step line up to ``x_max``."""
    found = sorted(d for d in distances if math.isfinite(d))
    n = max(1, len(distances))
    xs, ys = [0.0], [0.0]
    for k, d in enumerate(found):
        xs += [d, d]
        ys += [100 * k / n, 100 * (k + 1) / n]
    return Series(name, [*xs, x_max], [*ys, ys[-1]])


def _distance_section(inputs: ReportInputs) -> str:
    parts = []
    for label, ev in inputs.minimum_norm:
        correct = [s["clean_prediction"] == s["label"] for s in ev.samples]
        best = [d for ok, d in zip(correct, ev.distances(BEST)) if ok]
        failed = sum(1 for d in best if not math.isfinite(d))
        columns = [BEST, *ev.attacks]  # the order (and colours) of the eps curves
        per_column = {c: [d for ok, d in zip(correct, ev.distances(c)) if ok] for c in columns}
        x_max = 1.05 * max([d for ds in per_column.values() for d in ds if math.isfinite(d)] or [1.0])
        cdf = [_cdf_series(column_name(c, len(ev.attacks)), ds, x_max) for c, ds in per_column.items()]
        parts.append(f"<h3>{_e(label)}: minimal {_e(ev.norm)} distances of the clean-correct samples</h3>"
                     + _html_table(tables.distance_table(ev))
                     + line_chart(cdf, title=f"cumulative distribution of the minimal {ev.norm} distances",
                                  x_label=f"{ev.norm} distance", y_label="broken (%)",
                                  x_range=(0.0, x_max), y_range=(0.0, 100.0))
                     + histogram(best, title=f"minimal {ev.norm} perturbation, best of the attacks",
                                 x_label=f"minimal {ev.norm} distance")
                     + f"<p class=note>The distribution function: the share of clean-correct samples each attack "
                       f"broke within a distance (100% minus robust accuracy there). {len(best) - failed} successful "
                       f"samples in the histogram; {failed} that no attack broke are not.</p>")
    for label, tg in inputs.targeted:
        x_max = 1.05 * max([d for case in CASES for d in tg.case_distances(case) if math.isfinite(d)] or [1.0])
        cdf = [_cdf_series(f"{case} case", tg.case_distances(case), x_max) for case in CASES]
        parts.append(f"<h3>{_e(label)}: targeted (C&amp;W protocol), {_e(tg.norm)}, attack "
                     f"{_e(tg.attack.get('attack'))}</h3>"
                     + _html_table(tables.targeted_table(tg))
                     + line_chart(cdf, title="targeted success against distance", x_label=f"{tg.norm} distance",
                                  y_label="samples broken (%)", x_range=(0.0, x_max), y_range=(0.0, 100.0)))
    return "\n".join(parts)


def _certify_section(inputs: ReportInputs) -> str:
    parts = []
    for label, cert in inputs.certify:
        by_method = cert.get("certified_accuracy", {})
        eps_list = sorted({e for m in by_method.values() for e in m}, key=float)
        rows: list[tuple[str, ...]] = [(method, *(percent(values.get(e)) for e in eps_list))
                                       for method, values in by_method.items()]
        parts.append(f"<h3>{_e(label)}: certified accuracy ({_e(cert.get('norm'))}, {_e(cert.get('samples'))} samples)</h3>"
                     + _table(("method", *(f"eps {e}" for e in eps_list)), rows))
    for label, br in inputs.brackets:
        bracket_rows = sorted(br.get("rows", []), key=lambda r: (r.get("upper") is None, r.get("upper") or 0.0))
        intervals = [(r["lower"], r.get("exact"), r["upper"]) for r in bracket_rows
                     if r.get("milp_status") != "misclassified"]
        norm = br.get("norm") or "?"
        parts.append(f"<h3>{_e(label)}: minimal {_e(norm)} perturbation, certified lower ≤ exact (MILP) ≤ attack upper</h3>"
                     + interval_chart(intervals, title="per-sample bracket", y_label=f"{norm} distance",
                                      labels=("certified lower bound", "exact (MILP, where solved)", "attack upper bound"))
                     + _kv_table(br.get("summary", {})))
    return "\n".join(parts)


def _examples_section(inputs: ReportInputs) -> str:
    """The captioned example grid (:func:`robustlab.report.grid.grid_image`) of each attack run,
    broken samples first."""
    import torch

    from robustlab.report.grid import grid_image

    parts = []
    for label, ex in inputs.examples:
        order = torch.cat([torch.nonzero(ex.success).flatten(), torch.nonzero(~ex.success).flatten()])[:MAX_EXAMPLES]
        x, x_adv = ex.x[order].float(), ex.x_adv[order].float()
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            parts.append(f"<h3>{_e(label)}</h3><p class=note>The inputs are not images ([N, 1 or 3, H, W]; "
                         f"these are {list(ex.x.shape)}), so none are shown.</p>")
            continue
        summary = ex.summary or {}
        # The box is not stored beside the examples: [0, 1] unless the data leave it.
        lo, hi = min(0.0, float(x.min())) if x.numel() else 0.0, max(1.0, float(x.max())) if x.numel() else 1.0
        classes = summary.get("classes") if isinstance(summary.get("classes"), list) else None
        image = grid_image(x, x_adv, labels=ex.y[order], clean=None if ex.clean is None else ex.clean[order],
                           adversarial=ex.predictions[order], distance=ex.distance[order],
                           norm=summary.get("norm") if isinstance(summary.get("norm"), str) else None,
                           classes=classes, bounds=(lo, hi), max_rows=MAX_EXAMPLES)
        broken = int(ex.success[order].sum())
        alt = (f"{len(order)} examples ({broken} broken): clean image, adversarial image and perturbation, "
               "captioned with the true label, the predictions and the distance")
        caption = (f"Attack {_e(json.dumps(summary.get('attack'), default=str))}, threat {_e(summary.get('threat'))}, "
                   f"success rate {percent(summary.get('success_rate'))}. " if summary else "")
        parts.append(f"<h3>{_e(label)}</h3><figure class=grid>{_image(image, alt)}<figcaption class=note>{caption}"
                     "Broken samples first (adversarial prediction in red where it differs from the clean one). "
                     "Perturbation: adversarial minus clean, blue below zero, red above, scale in the colour bar."
                     "</figcaption></figure>")
    return "\n".join(parts)


def _doc_details(page: str, anchor: str) -> str:
    """The documentation's section ``page#anchor`` folded under the name it explains (nothing
    if there is no such section), so the report carries its own explanations."""
    try:
        text = read_page(f"{page}#{anchor}")
    except RobustlabError:
        return ""
    return (f"<details><summary>what it means (<code>{_e(docs_pointer(page, anchor))}</code>)</summary>"
            f"<div class=doc>{_e(text)}</div></details>")


def _diagnostics_section(inputs: ReportInputs) -> str:
    parts = []
    for label, diagnosis in inputs.diagnostics:
        rows = []
        for f in diagnosis.get("findings", []):
            check = str(f.get("check"))
            verdict = str(f.get("verdict"))
            badge = verdict if verdict in VERDICT_CLASSES else "unknown"
            # The explanation comes from the shipped page, by the check's name, never from the file.
            link = _e(check) + _doc_details("diagnostics", check)
            rows.append((link, f'<span class="badge {badge}">{_e(verdict)}</span>', _e(f.get("message")),
                         _value_html(f.get("numbers", {}))))
        overall = str(diagnosis.get("verdict"))
        badge = overall if overall in VERDICT_CLASSES else "unknown"
        parts.append(f'<h3>{_e(label)}: <span class="badge {badge}">{_e(overall)}</span></h3>'
                     + _table(("check", "verdict", "finding", "numbers"), rows, raw=True))
    return "\n".join(parts)


def _history_series(history: list[dict[str, Any]], key: str, name: str, scale: float = 1.0) -> list[Series]:
    """``key`` of each epoch record against the epoch; none if never measured (e.g. no validation)."""
    values = [r.get(key) for r in history]
    if not any(is_number(v) for v in values):
        return []
    epochs: list[Any] = [r.get("epoch") for r in history]
    return [Series(name, epochs, [scale * v if is_number(v) else None for v in values],
                   markers=len(history) < 30)]


def _training_section(inputs: ReportInputs) -> str:
    parts = []
    for label, history in inputs.training:
        loss = _history_series(history, "train_loss", "train loss") + _history_series(history, "val_loss", "validation loss")
        acc = (_history_series(history, "train_acc", "train accuracy", 100)
               + _history_series(history, "val_acc", "validation accuracy", 100)
               + _history_series(history, "val_robust_acc", "validation robust accuracy", 100))
        charts = ""
        if loss:
            charts += line_chart(loss, title="training loss", x_label="epoch", y_label="loss", x_integer=True)
        if acc:
            charts += line_chart(acc, title="training accuracy", x_label="epoch", y_label="accuracy (%)",
                                 y_range=(0.0, 100.0), x_integer=True)
        last = history[-1] if history else {}
        parts.append(f"<h3>{_e(label)}: {len(history)} epochs</h3>{charts}"
                     f"<details><summary>last epoch</summary>{_kv_table(last)}</details>")
    return "\n".join(parts)


def _provenance_section(inputs: ReportInputs) -> str:
    parts = []
    for kind, group in (("fixed eps", inputs.evaluations), ("minimum norm", inputs.minimum_norm),
                        ("targeted", inputs.targeted)):
        for label, ev in group:
            parts.append(f"<h3>{_e(label)} ({kind})</h3>{_kv_table(ev.provenance)}")
    parts.append("<h3>files read</h3>" + _table(("file",), ((f,) for f in inputs.files)))
    return "\n".join(parts)


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fff}
main{max-width:1000px;margin:0 auto;padding:1em 1.5em 3em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}h3{font-size:1.05em}
small{color:#666;font-weight:normal}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f5f5f5}
code{font-size:.85em;word-break:break-all}
.note{color:#555;font-size:.9em}
.badge{display:inline-block;padding:0 .5em;border-radius:.7em;font-weight:600;font-size:.85em;color:#fff}
.badge.pass{background:#1a7f37}.badge.warn{background:#b35900}.badge.fail{background:#cf222e}
.badge.skip,.badge.unknown{background:#6e7781}
svg.chart{display:block;margin:.6em 0;font-size:11px;max-width:100%;height:auto}
svg.chart text{fill:#333}
img{image-rendering:pixelated;display:block;border:1px solid #ccc;max-width:100%;height:auto}
figure{margin:.6em 0}
details{font-size:90%;margin-top:.3em}div.doc{white-space:pre-wrap;max-width:40em;color:#333}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def html_report(inputs: ReportInputs, *, title: str = "robustlab report") -> str:
    """The report as one self-contained HTML page (sections for whatever ``inputs`` holds)."""
    charts = robust_accuracy_charts(inputs)
    sections = [
        ("model", "Model", _model_section(inputs) if inputs.model_cards() else ""),
        ("threat", "Threat model", _threat_section(inputs) if any(
            (inputs.evaluations, inputs.minimum_norm, inputs.targeted, inputs.certify)) else ""),
        ("accuracy", "Clean and robust accuracy", _accuracy_section(inputs)),
        ("curve", "Robust accuracy against eps",
         "".join(f"<h3>{_e(norm)}</h3>{svg}" for norm, svg in charts.items())
         + ('<p class=note>Attack curves are upper bounds on the true robust accuracy; certified '
            'accuracy (dashed) is a lower bound. Bars: 95% Wilson intervals.</p>' if charts else "")),
        ("distances", "Minimal perturbations", _distance_section(inputs)),
        ("certified", "Certification and the bracket", _certify_section(inputs)),
        ("examples", "Adversarial examples", _examples_section(inputs)),
        ("diagnostics", "Gradient-masking diagnostics", _diagnostics_section(inputs)),
        ("training", "Training", _training_section(inputs)),
        ("provenance", "Provenance", _provenance_section(inputs)),
    ]
    present = [_section(anchor, name, body) for anchor, name, body in sections if body.strip()]
    nav = " ".join(f'<a href="#{anchor}">{_e(name)}</a>' for anchor, name, _ in present)
    generated = timestamp()
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n<h1>{_e(title)}</h1>\n"
            f"<nav>{nav}</nav>\n" + "\n".join(html for _, _, html in present)
            + f"\n<footer class=note><p>Generated by robustlab {_e(robustlab.__version__)} on {generated}.</p></footer>"
            "\n</main></body></html>\n")


# -- Markdown --------------------------------------------------------------------------------
def _md(value: Any) -> str:
    """Text from the inputs inside a Markdown line (:func:`~robustlab.report.markdown.escape_markdown`)."""
    return escape_markdown(number(value) if isinstance(value, float) else value)


def _md_table_of(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    return markdown_table(Table.of(header, rows))


def markdown_report(inputs: ReportInputs, *, title: str = "robustlab report") -> str:
    """The report in Markdown: the same sections as :func:`html_report`, with tables in place of
    charts and images (the robust-accuracy curves of minimum-norm runs at their default grid)."""
    out = [f"# {_md(title)}", ""]

    def section(name: str, blocks: list[str]) -> None:
        if blocks:
            out.extend([f"## {name}", "", *[b + "\n" for b in blocks]])

    section("Model", [f"### {_md(card.get('architecture'))} (from {_md(label)})\n\n"
                      + _md_table_of(("field", "value"), ((k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
                                                       for k, v in card.items()))
                      for label, card in inputs.model_cards()])
    section("Clean and robust accuracy", [
        f"### {_md(label)}: {_md(ev.threat)}, {ev.metrics['samples']} samples\n\n" + markdown_table(tables.metrics_table(ev.metrics))
        for label, ev in inputs.evaluations])
    blocks = [f"### {_md(label)}: minimum-norm {_md(mn.norm)}, clean accuracy {accuracy_cell(mn.metrics['clean_accuracy'])}\n\n"
              + markdown_table(tables.curve_table(mn)) + "\n\n" + markdown_table(tables.distance_table(mn))
              for label, mn in inputs.minimum_norm]
    fixed = sorted(inputs.evaluations, key=lambda item: (item[1].threat.norm, item[1].threat.eps))
    if len({(ev.threat.norm, ev.threat.eps) for _, ev in fixed}) > 1:
        blocks.append(_md_table_of(("source", "norm", "eps", "worst-case robust accuracy [95% CI]"),
                                ((label, ev.threat.norm, eps_text(ev.threat.eps), accuracy_cell(ev.metrics["robust_accuracy"]))
                                 for label, ev in fixed)))
    blocks += [f"### {_md(label)}: {_md(c.get('attack'))}, {_md(c.get('norm'))}\n\n" + _md_table_of(
        ("eps", "robust accuracy"), ((e, percent(a)) for e, a in sorted(c["robust_accuracy"].items(), key=lambda i: float(i[0]))))
        for label, c in inputs.curves]
    section("Robust accuracy against eps", blocks)
    section("Targeted (C&W protocol)", [
        f"### {_md(label)}: {_md(ev.norm)}\n\n" + markdown_table(tables.targeted_table(ev))
        for label, ev in inputs.targeted])
    blocks = []
    for label, cert in inputs.certify:
        by_method = cert.get("certified_accuracy", {})
        eps_list = sorted({e for m in by_method.values() for e in m}, key=float)
        blocks.append(f"### {_md(label)}: certified accuracy ({_md(cert.get('norm'))})\n\n" + _md_table_of(
            ("method", *(f"eps {e}" for e in eps_list)), ((k, *(percent(v.get(e)) for e in eps_list)) for k, v in by_method.items())))
    blocks += [f"### {_md(label)}: bracket summary\n\n" + _md_table_of(("statistic", "value"), br.get("summary", {}).items())
               for label, br in inputs.brackets]
    section("Certification and the bracket", blocks)
    section("Adversarial examples", [f"- {_md(label)}: {int(ex.success.sum())} of {len(ex.success)} broken "
                                     "(images in the HTML report)" for label, ex in inputs.examples])
    section("Gradient-masking diagnostics", [
        f"### {_md(label)}: {_md(d.get('verdict'))}\n\n" + "\n".join(
            ["| check | verdict | finding |", "|---|---|---|"]
            + [f"| {_md(f.get('check'))} (`{_md(docs_pointer('diagnostics', str(f.get('check'))))}`) | "
               f"{_md(f.get('verdict'))} | {_md(f.get('message'))} |" for f in d.get("findings", [])])
        for label, d in inputs.diagnostics])
    section("Training", [
        f"### {_md(label)}\n\n" + _md_table_of(("epoch", "train loss", "train acc", "val loss", "val acc", "val robust acc"),
                                            ((r.get("epoch"), r.get("train_loss"), percent(r.get("train_acc")), r.get("val_loss"),
                                              percent(r.get("val_acc")), percent(r.get("val_robust_acc"))) for r in history))
        for label, history in inputs.training])
    section("Provenance", [f"### {_md(label)}\n\n" + _md_table_of(("field", "value"), ev.provenance.items())
                           for label, ev in inputs.all_evaluations()]
            + [_md_table_of(("files read",), ((f,) for f in inputs.files))])
    return "\n".join(out).rstrip() + "\n"


def write_report(paths: Iterable[str | Path], out: str | Path, *, title: str = "robustlab report") -> Path:
    """Read ``paths`` (run folders or files) and write the report to ``out``: Markdown for a
    ``.md``/``.markdown`` suffix, HTML for ``.html``/``.htm``. Written atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".markdown"):
        raise RobustlabError(f"--out {out}: give a .html or .md file name (the suffix picks the format)")
    inputs = load_report_inputs(paths)
    text = markdown_report(inputs, title=title) if suffix in (".md", ".markdown") else html_report(inputs, title=title)
    return write_atomic(out, lambda temporary: temporary.write_text(text, encoding="utf-8"))
