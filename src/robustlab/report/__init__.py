"""Human-readable outputs: image grids and Markdown summaries."""

from robustlab.report.grid import save_grid
from robustlab.report.markdown import evaluation_markdown, metrics_table

__all__ = ["save_grid", "evaluation_markdown", "metrics_table"]
