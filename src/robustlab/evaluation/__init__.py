"""Evaluation: run attacks over data, keep per-sample results, derive metrics."""

from robustlab.evaluation.evaluate import CLEAN, Evaluation, evaluate
from robustlab.evaluation.metrics import accuracy, wilson_interval
from robustlab.evaluation.provenance import provenance

__all__ = ["CLEAN", "Evaluation", "evaluate", "accuracy", "wilson_interval", "provenance"]
