"""The HTML/Markdown report (robustlab.report.html, robustlab.report.svg, `robustlab report`).

Inputs are small synthetic run folders written with the real writers (``Evaluation.save``, ...),
so these tests need no model and run in well under a second each; the headless-Chromium check
is skipped where no Chromium binary is installed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from robustlab.cli import main
from robustlab.documentation import read_page
from robustlab.errors import RobustlabError
from robustlab.evaluation import (
    Evaluation,
    MinimumNormEvaluation,
    TargetedEvaluation,
    accuracy,
)
from robustlab.models import ModelCard
from robustlab.report import (
    html_report,
    load_report_inputs,
    markdown_report,
    tables,
    write_report,
)
from robustlab.report.markdown import evaluation_markdown, markdown_table
from robustlab.threat import L2, Linf

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"

# Each optional input file and the sections of the page it makes appear on its own ("provenance"
# lists the files read, so it is always there).
FILES = {
    "evaluation.json": {"model", "threat", "accuracy"},  # the card embedded in the evaluation
    "minimum-norm.json": {"threat", "accuracy", "curve", "distances"},
    "targeted.json": {"threat", "distances"},
    "diagnostics.json": {"diagnostics"},
    "certify.json": {"threat", "curve", "certified"},  # certified accuracy at two eps is a curve
    "bracket.json": {"certified"},
    "checkpoints/metrics.jsonl": {"training"},
    "model.json": {"model"},
    "adversarial.safetensors": {"examples"},
    "curve.json": {"curve"},  # the demo's PGD accuracies at four eps
}
SECTIONS = ("model", "threat", "accuracy", "curve", "distances", "certified", "examples", "diagnostics", "training",
            "provenance")


# -- synthetic run folders -------------------------------------------------------------------
def card(architecture: str = "mlp", **extra) -> dict:
    return ModelCard(architecture=architecture, arguments={"input_shape": [1, 4, 4], "num_classes": 3},
                     dataset="toy", training={"method": "natural"}, metrics={"best_val_acc": 0.9}, **extra).to_dict()


def fixed_evaluation(eps: float, robust: list[bool], *, attack: str = "pgd", model_card: dict | None = None) -> Evaluation:
    """Sample 0 is misclassified clean; the others are broken by ``attack`` unless ``robust``."""
    samples = [{"index": 0, "label": 1, "clean_prediction": 0, "broken_by": "clean", "distance": 0.0,
                "attacks": {attack: {"success": None, "distance": None}}}]
    for i, ok in enumerate(robust, start=1):
        samples.append({"index": i, "label": 0, "clean_prediction": 0, "broken_by": None if ok else attack,
                        "distance": math.inf if ok else eps,
                        "attacks": {attack: {"success": not ok, "distance": None if ok else eps}}})
    return Evaluation(threat=Linf(eps=eps), attacks={attack: {"attack": "pgd", "steps": 10}}, samples=samples,
                      provenance={"seed": 0, "torch": torch.__version__}, model_card=model_card)


def minimum_norm_evaluation(distances: dict[str, list[float]]) -> MinimumNormEvaluation:
    """Per-attack distances of clean-correct samples, plus one clean error; ``inf`` = failed."""
    names = list(distances)
    n = len(distances[names[0]])
    samples = [{"index": 0, "label": 2, "clean_prediction": 1, "distance": 0.0, "best_attack": "clean",
                "attacks": {a: {"distance": 0.0} for a in names}}]
    for i in range(n):
        row = {a: {"distance": distances[a][i]} for a in names}
        best = min(names, key=lambda a: row[a]["distance"])
        finite = math.isfinite(row[best]["distance"])
        samples.append({"index": i + 1, "label": 0, "clean_prediction": 0, "distance": row[best]["distance"],
                        "best_attack": best if finite else None, "attacks": row})
    return MinimumNormEvaluation(threat=L2(eps=math.inf), attacks={a: {"attack": a} for a in names}, samples=samples,
                                 cost={a: {"forwards": 10, "backwards": 10, "samples": n} for a in names},
                                 provenance={"seed": 0})


def targeted_evaluation() -> TargetedEvaluation:
    samples = [{"index": i, "label": 0, "clean_prediction": 0, "attacked": True,
                "targets": {"1": 0.1 * (i + 1), "2": 0.3 * (i + 1)}, "random_target": 1,
                "best": 0.1 * (i + 1), "average": 0.1 * (i + 1), "worst": 0.3 * (i + 1) if i else math.inf,
                "best_target": 1, "worst_target": 2} for i in range(4)]
    return TargetedEvaluation(threat=L2(eps=math.inf), attack={"attack": "cw"}, num_classes=3, samples=samples)


def write_run(folder: Path, *, model_card: dict | None = None, names: tuple[str, ...] = tuple(FILES)) -> Path:
    """A run folder holding the given files of :data:`FILES`, written by the real writers."""
    folder.mkdir(parents=True, exist_ok=True)
    model_card = model_card or card()
    writers = {
        "evaluation.json": lambda p: fixed_evaluation(0.1, [True, False, False, True], model_card=model_card).save(p),
        "minimum-norm.json": lambda p: minimum_norm_evaluation(
            {"ddn": [0.5, 1.25, math.inf, 2.0, 0.75], "fmn": [0.625, 1.0, 3.0, math.inf, 0.875]}).save(p),
        "targeted.json": lambda p: targeted_evaluation().save(p),
        "diagnostics.json": lambda p: p.write_text(json.dumps({"verdict": "warn", "findings": [
            {"check": "one-step", "verdict": "pass", "message": "ok", "numbers": {"fgsm": 50.0}},
            {"check": "eps-monotone", "verdict": "warn", "message": "flat", "numbers": {},
             "docs": "javascript:alert(1)"}]})),
        "certify.json": lambda p: p.write_text(json.dumps({"norm": "Linf", "samples": 4, "certified_accuracy": {
            "ibp": {"0.01": 0.5, "0.05": 0.25}, "crown": {"0.01": 0.75, "0.05": 0.5}}})),
        "bracket.json": lambda p: p.write_text(json.dumps({"rows": [
            {"index": 0, "lower": 0.01, "exact": 0.02, "upper": 0.03, "milp_status": "optimal"},
            {"index": 1, "lower": 0.02, "exact": None, "upper": math.inf, "milp_status": "timeout"},
            {"index": 2, "lower": 0.0, "exact": 0.0, "upper": 0.0, "milp_status": "misclassified"}],
            "summary": {"samples": 3, "solved_exactly": 1, "all_consistent": True}})),
        "checkpoints/metrics.jsonl": lambda p: p.write_text("".join(json.dumps(
            {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e, "val_loss": 1.2 / e, "val_acc": 0.5 + 0.08 * e,
             "val_robust_acc": None, "lr": 0.1, "seconds": 1.0}) + "\n" for e in range(1, 4))),
        "model.json": lambda p: p.write_text(json.dumps(model_card)),
        "adversarial.safetensors": write_examples,
        "curve.json": lambda p: p.write_text(json.dumps({"attack": "pgd-20", "norm": "Linf", "robust_accuracy": {
            "0.02": 0.75, "0.05": 0.5, "0.1": 0.25, "0.2": 0.0}})),
    }
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        writers[name](path)
    return folder


def write_examples(path: Path) -> None:
    """Three 4x4 grayscale samples: 0 and 2 broken by a perturbation, 1 untouched and not broken."""
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_adv = x.clone()
    x_adv[0, 0, 1, 2] += 0.1
    x_adv[2, 0, 3, 3] -= 0.05
    save_file({"x": x, "x_adv": x_adv.clamp(0, 1), "y": torch.tensor([0, 1, 2]), "predictions": torch.tensor([1, 1, 0]),
               "success": torch.tensor([1, 0, 1], dtype=torch.uint8), "distance": torch.tensor([0.1, 0.0, 0.05]),
               "indices": torch.arange(3)}, str(path))
    path.with_name("summary.json").write_text(json.dumps({"attack": {"attack": "pgd"}, "threat": "Linf(eps=0.1)",
                                                          "success_rate": 2 / 3}))


# -- parsing helpers -------------------------------------------------------------------------
class _Structure(HTMLParser):
    """Checks that non-void elements nest and close properly; records section ids and images."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "circle", "line", "rect", "polyline", "path"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def structure(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed elements {parser.stack}"
    return parser


def charts(page: str) -> list[ET.Element]:
    """Every inline SVG, parsed as XML (which it must be)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def series_points(svg: ET.Element, name: str) -> list[tuple[float, float]]:
    """A polyline's vertices mapped back to data coordinates through the plot's data-* frame."""
    plot = svg.find(f"{SVG}g[@class='plot']")
    f = {k[5:]: float(v) for k, v in plot.attrib.items() if k.startswith("data-")}
    line = next(p for p in plot.iter(f"{SVG}polyline") if p.get("data-name") == name)
    out = []
    for pair in line.get("points").split():
        px, py = map(float, pair.split(","))
        out.append((f["x-min"] + (px - f["left"]) / (f["right"] - f["left"]) * (f["x-max"] - f["x-min"]),
                    f["y-min"] + (f["bottom"] - py) / (f["bottom"] - f["top"]) * (f["y-max"] - f["y-min"])))
    return out


def step_value(points: list[tuple[float, float]], eps: float) -> float:
    """The value of a drawn step curve at ``eps`` (the last vertex at or left of it)."""
    return [y for x, y in points if x <= eps][-1]


# -- tests -----------------------------------------------------------------------------------
def test_full_report_has_every_section_and_is_well_formed(tmp_path):
    page = html_report(load_report_inputs([write_run(tmp_path / "run")]))
    parsed = structure(page)
    assert parsed.sections == list(SECTIONS)
    assert len(parsed.images) == 1  # the captioned example grid
    assert len(charts(page)) == 8  # eps curves (L2, Linf), minimum-norm CDF and histogram, targeted CDF, bracket, 2 training
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    linf = next(svg for svg in charts(page) if "Linf" in svg.get("aria-label"))
    drawn = series_points(linf, f"pgd-20 ({tmp_path / 'run'})")
    assert [v for point in drawn for v in point] == pytest.approx([0.02, 75, 0.05, 50, 0.1, 25, 0.2, 0], abs=1e-3)
    assert "| 0.05 | 50.0% |" in markdown_report(load_report_inputs([tmp_path / "run"]))


@pytest.mark.parametrize("name", list(FILES))
def test_report_renders_with_only_one_input_and_without_it(tmp_path, name):
    def sections(names: tuple[str, ...], folder: Path) -> list[str]:
        return structure(html_report(load_report_inputs([write_run(folder, names=names)]))).sections

    def expected(names: tuple[str, ...]) -> list[str]:
        wanted = set().union(*(FILES[n] for n in names)) | {"provenance"}
        return [s for s in SECTIONS if s in wanted]

    rest = tuple(n for n in FILES if n != name)
    assert sections((name,), tmp_path / "only") == expected((name,))
    assert sections(rest, tmp_path / "rest") == expected(rest)
    assert markdown_report(load_report_inputs([tmp_path / "only"])).startswith("# robustlab report")


def test_every_user_string_is_escaped(tmp_path):
    evil_card = card(architecture=EVIL, extra={EVIL: EVIL})
    evil_card["dataset"] = EVIL
    run = write_run(tmp_path / "run", model_card=evil_card)
    fixed_evaluation(0.2, [True, False], attack="<img src=x onerror=alert(1)>", model_card=evil_card).save(
        run / "evaluation.json")
    diagnostics = json.loads((run / "diagnostics.json").read_text())
    diagnostics["findings"][0].update(check='"><script>x</script>', message=EVIL, verdict=EVIL)
    (run / "diagnostics.json").write_text(json.dumps(diagnostics))
    inputs = load_report_inputs([run])
    page = html_report(inputs, title=EVIL)
    structure(page)
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="badge unknown"' in page  # an unknown verdict gets no class of its choosing
    text = markdown_report(inputs, title=EVIL)
    assert "<script" not in text.lower() and "<img src=x" not in text and "&lt;script&gt;" in text


def test_minimum_norm_curves_in_the_svg_are_the_evaluation_numbers(tmp_path):
    gen = torch.Generator().manual_seed(1)
    ddn = (torch.rand(40, generator=gen) * 2).tolist() + [math.inf] * 3
    fmn = (torch.rand(43, generator=gen) * 2.5).tolist()
    ev = minimum_norm_evaluation({"ddn": ddn, "fmn": fmn})
    ev.save(tmp_path / "minimum-norm.json")
    svg = charts(html_report(load_report_inputs([tmp_path])))[0]
    all_distances = sorted({d for d in [*ddn, *fmn] if math.isfinite(d)})
    probes = [0.0, *((a + b) / 2 for a, b in zip(all_distances, all_distances[1:])), all_distances[-1] + 1e-3]
    for column, name in (("best", "worst case (best of 2)"), ("ddn", "ddn"), ("fmn", "fmn")):
        points = series_points(svg, name)
        drawn = [step_value(points, e) for e in probes]
        assert drawn == pytest.approx([100 * ev.robust_accuracy_at(e, column) for e in probes], abs=0.01)
    # Where DDN failed the sample stays robust at every eps; FMN broke everything.
    assert step_value(series_points(svg, "ddn"), 5.0) == pytest.approx(100 * 3 / 44, abs=0.01)
    assert step_value(series_points(svg, "worst case (best of 2)"), 5.0) == pytest.approx(0.0, abs=0.01)


def test_fixed_eps_points_and_certified_curve_match_the_inputs(tmp_path):
    runs = []
    for eps, robust in ((0.05, [True] * 5 + [False]), (0.1, [True, True, False, False, True, False]),
                        (0.2, [False] * 5 + [True])):
        runs.append(tmp_path / f"eps{eps}")
        fixed_evaluation(eps, robust).save(runs[-1] / "evaluation.json")
    write_run(tmp_path / "cert", names=("certify.json",))
    svg = charts(html_report(load_report_inputs([*runs, tmp_path / "cert"])))[0]
    expected = [(0.05, 5 / 7), (0.1, 3 / 7), (0.2, 1 / 7)]
    for name in ("worst case (fixed eps)", "pgd"):
        drawn = series_points(svg, name)
        assert [x for x, _ in drawn] == pytest.approx([e for e, _ in expected], abs=1e-4)
        assert [y for _, y in drawn] == pytest.approx([100 * a for _, a in expected], abs=0.01)
    bars = svg.findall(f".//{SVG}line[@class='error-bar']")
    low = accuracy(1, 7)["ci_low"]
    assert len(bars) == 6 and any(abs(float(b.get("y1")) - float(b.get("y2"))) > 10 for b in bars) and low < 1 / 7
    assert [y for _, y in series_points(svg, f"certified: crown ({tmp_path / 'cert'})")] == pytest.approx([75, 50], abs=0.01)


def test_distance_histogram_counts_the_successful_clean_correct_samples(tmp_path):
    write_run(tmp_path, names=("minimum-norm.json",))
    page = html_report(load_report_inputs([tmp_path]))
    hist = next(s for s in charts(page) if s.find(f".//{SVG}rect[@class='bar']") is not None)
    counts = [int(r.get("data-count")) for r in hist.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert sum(counts) == 5  # best of ddn/fmn: all five clean-correct samples broken; the clean error left out
    assert "5 successful samples in the histogram; 0 that no attack broke" in page
    cdf = next(s for s in charts(page) if "cumulative distribution" in s.get("aria-label", ""))
    best = series_points(cdf, "worst case (best of 2)")
    assert best[0] == pytest.approx((0.0, 0.0), abs=1e-6) and best[-1][1] == pytest.approx(100.0)  # all 5 broken
    assert [y for _, y in best] == sorted(y for _, y in best)  # a distribution function never falls


def test_diagnostics_carry_their_explanations_from_the_shipped_docs(tmp_path):
    page = html_report(load_report_inputs([write_run(tmp_path, names=("diagnostics.json",))]))
    assert "robustlab docs diagnostics#one-step" in page and "robustlab docs diagnostics#eps-monotone" in page
    # The section of the shipped page itself, folded under the check (escaped like every other text).
    first_line = read_page("diagnostics#one-step").splitlines()[2]
    assert html.escape(first_line, quote=True) in page
    assert "javascript:" not in page and "https://" not in page
    assert page.count('class="badge pass"') == 1 and page.count('class="badge warn"') == 2  # one finding + overall


def test_markdown_report_has_tables_for_the_curves(tmp_path):
    text = markdown_report(load_report_inputs([write_run(tmp_path)]))
    for heading in ("## Model", "## Clean and robust accuracy", "## Robust accuracy against eps", "## Targeted",
                    "## Certification and the bracket", "## Gradient-masking diagnostics", "## Training", "## Provenance"):
        assert heading in text
    assert "| eps | ddn | fmn | worst case (best of 2) |" in text
    assert "| one-step (`robustlab docs diagnostics#one-step`) |" in text


def test_html_and_markdown_render_the_same_evaluation_tables(tmp_path):
    # One table model (robustlab.report.tables) decides what each evaluation table says; the HTML
    # page, the report's Markdown and the single-evaluation Markdown only render it.
    inputs = load_report_inputs([write_run(tmp_path / "run")])
    page, text = html_report(inputs), markdown_report(inputs)
    ev, mn, tg = inputs.evaluations[0][1], inputs.minimum_norm[0][1], inputs.targeted[0][1]
    for table in (tables.metrics_table(ev.metrics), tables.distance_table(mn), tables.targeted_table(tg)):
        assert markdown_table(table) in text
        header = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
        assert f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody>" in page
    assert markdown_table(tables.curve_table(mn)) in text
    assert markdown_table(tables.metrics_table(ev.metrics)) in evaluation_markdown(ev)
    worst = tables.metrics_table(ev.metrics).rows[-1]
    assert worst == ("robust: worst case", tables.accuracy_cell(ev.metrics["robust_accuracy"]), "2")


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(RobustlabError, match="no such file"):
        load_report_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustlabError, match="no robustlab outputs"):
        load_report_inputs([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "evaluation.json").write_text("{not json")
    with pytest.raises(RobustlabError, match="cannot read"):
        load_report_inputs([tmp_path / "bad"])
    with pytest.raises(RobustlabError, match=".html or .md"):
        write_report([write_run(tmp_path / "run", names=("model.json",))], tmp_path / "report.pdf")


def test_cli_writes_html_and_markdown(tmp_path, capsys):
    run = write_run(tmp_path / "run", names=("evaluation.json", "model.json"))
    html_out, md_out = tmp_path / "out" / "report.html", tmp_path / "out" / "report.md"
    assert main(["report", str(run), "--out", str(html_out), "--out", str(md_out), "--title", "digits"]) == 0
    assert "<title>digits</title>" in html_out.read_text() and md_out.read_text().startswith("# digits")
    assert "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(html_out)]) == 2
    assert "no such file" in capsys.readouterr().err


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)

# Appended to the page for the browser check only: records script errors and, once loaded, each
# image's natural width into the DOM that --dump-dom prints.
_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  document.body.setAttribute("data-errors", JSON.stringify(window.__errors));
  document.body.setAttribute("data-image-widths", JSON.stringify([...document.images].map(i => i.naturalWidth)));
  document.body.setAttribute("data-image-aspects", JSON.stringify([...document.images].map(i => {
    const box = i.getBoundingClientRect();
    return [i.naturalWidth / i.naturalHeight, box.width / box.height];
  })));
  document.body.setAttribute("data-captions", JSON.stringify([...document.querySelectorAll("figcaption")].map(
    c => c.textContent)));
  document.body.setAttribute("data-svg-count", String(document.querySelectorAll("svg").length));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_page_loads_in_headless_chromium_without_errors_and_images_render(tmp_path):
    page = html_report(load_report_inputs([write_run(tmp_path / "run")]))
    # The page's CSP forbids every script; the probe needs inline scripts, nothing else changes.
    probed = page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'", 1)
    probed = probed.replace("</body>", _PROBE + "</body>")
    file = tmp_path / "report.html"
    file.write_text(probed, encoding="utf-8")
    done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--disable-background-networking", "--window-size=600,800",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", "--dump-dom", file.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout).group(1)
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body))
    assert json.loads(attrs["data-errors"].replace("&quot;", '"')) == []
    widths = json.loads(attrs["data-image-widths"])
    assert len(widths) == 1 and all(w > 0 for w in widths)  # the example grid
    # Shown at its own aspect ratio (in a 600-pixel window, narrower than the page: scaled, not stretched).
    for natural, shown in json.loads(attrs["data-image-aspects"]):
        assert shown == pytest.approx(natural, rel=0.02)
    captions = json.loads(attrs["data-captions"].replace("&quot;", '"'))
    assert len(captions) == 1 and "Broken samples first" in captions[0] and "colour bar" in captions[0]
    assert int(attrs["data-svg-count"]) == len(charts(page))
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Content Security Policy" in line]
    assert console == []
