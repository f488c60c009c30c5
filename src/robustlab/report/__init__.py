"""Human-readable outputs: image grids, Markdown summaries, the HTML report; the results database."""

from robustlab.report.grid import grid_image, save_examples, save_grid
from robustlab.report.html import ReportInputs, html_report, load_report_inputs, markdown_report, write_report
from robustlab.report.markdown import (
    curve_table,
    distance_table,
    evaluation_markdown,
    metrics_table,
    minimum_norm_markdown,
    targeted_markdown,
    targeted_table,
)
from robustlab.report.store import ResultsStore, RunInfo, default_results_path

__all__ = [
    "grid_image", "save_examples", "save_grid", "evaluation_markdown", "metrics_table",
    "curve_table", "distance_table", "minimum_norm_markdown", "targeted_markdown", "targeted_table",
    "ResultsStore", "RunInfo", "default_results_path",
    "ReportInputs", "html_report", "load_report_inputs", "markdown_report", "write_report",
]
