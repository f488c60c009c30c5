"""Certification: interval and linear bound propagation, exact MILP verification, and the
per-sample bracket (certified lower bound <= exact minimal perturbation <= attack upper bound).
"""

from robustlab.certify.certifiers import (
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
from robustlab.certify.milp import MILPVerifier
from robustlab.certify.trace import parse_model
from robustlab.registry import Registry

#: The certifiers by name (``robustlab certify --methods``): bound propagation and the exact MILP.
CERTIFIERS: Registry[type[Certifier]] = Registry("certifier", (IBP, CROWN, CROWNIBP, AlphaCROWN, MILPVerifier))

__all__ = [
    "CROWN",
    "CERTIFIERS",
    "CROWNIBP",
    "IBP",
    "MILPVerifier",
    "SUPPORTED",
    "AlphaCROWN",
    "CertResult",
    "Certifier",
    "certified_accuracy",
    "certified_radius",
    "parse_model",
]
