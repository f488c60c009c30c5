"""Human-readable outputs: image grids and Markdown summaries."""

from robustlab.report.grid import save_grid
from robustlab.report.markdown import (
    curve_table,
    distance_table,
    evaluation_markdown,
    metrics_table,
    minimum_norm_markdown,
    targeted_markdown,
    targeted_table,
)

__all__ = [
    "save_grid", "evaluation_markdown", "metrics_table",
    "curve_table", "distance_table", "minimum_norm_markdown", "targeted_markdown", "targeted_table",
]
