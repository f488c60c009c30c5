"""Evaluation: run attacks over data, keep per-sample results, derive metrics."""

from robustlab.evaluation.diagnostics import Diagnosis, Finding, diagnose
from robustlab.evaluation.evaluate import CLEAN, Evaluation, evaluate
from robustlab.evaluation.metrics import accuracy, wilson_interval
from robustlab.evaluation.minimum_norm import (
    BEST,
    DistanceMismatchWarning,
    MinimumNormEvaluation,
    distance_statistics,
    evaluate_minimum_norm,
)
from robustlab.evaluation.provenance import provenance
from robustlab.evaluation.suites import SUITES, build_suite
from robustlab.evaluation.targeted import CASES, TargetedEvaluation, evaluate_targeted

__all__ = [
    "CLEAN", "Evaluation", "evaluate", "SUITES", "build_suite", "accuracy", "wilson_interval", "provenance",
    "BEST", "DistanceMismatchWarning", "MinimumNormEvaluation", "distance_statistics", "evaluate_minimum_norm",
    "CASES", "TargetedEvaluation", "evaluate_targeted", "Diagnosis", "Finding", "diagnose",
]
