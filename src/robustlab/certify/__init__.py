"""Certification: interval and linear bound propagation, exact MILP verification, and the
per-sample bracket (certified lower bound <= exact minimal perturbation <= attack upper bound).
"""

from robustlab.certify.certifiers import (
    CERTIFIERS,
    CROWN,
    CROWNIBP,
    IBP,
    AlphaCROWN,
    Certifier,
    CertResult,
    certified_accuracy,
    certified_radius,
)
from robustlab.certify.graph import SUPPORTED
from robustlab.certify.trace import parse_model

__all__ = [
    "CROWN",
    "CERTIFIERS",
    "CROWNIBP",
    "IBP",
    "SUPPORTED",
    "AlphaCROWN",
    "CertResult",
    "Certifier",
    "certified_accuracy",
    "certified_radius",
    "parse_model",
]
