"""Attacks: one contract (:class:`Attack`), one file per family, and a registry by name."""

from __future__ import annotations

from typing import Any

from robustlab.attacks.apgd import APGD, APGDT, AutoPGD, AutoPGDTargeted
from robustlab.attacks.base import Attack, AttackResult, ModelOracle, is_adversarial, resolve_targets
from robustlab.attacks.carlini_wagner import CWL0, CWL2, CarliniWagnerL0, CarliniWagnerL2, CarliniWagnerLinf, CWLinf
from robustlab.attacks.composition import (
    BPDA,
    EOT,
    MinimumNormEnsemble,
    Reparameterization,
    SingleDrawEOTWarning,
    TransferAttack,
    bpda_mode,
)
from robustlab.attacks.ddn import DDN, DecoupledDirectionNorm
from robustlab.attacks.decision import HSJA, Boundary, BoundaryAttack, HopSkipJump, HopSkipJumpAttack
from robustlab.attacks.deepfool import DeepFool
from robustlab.attacks.fab import FAB, FABT, FABTargeted, FastAdaptiveBoundary
from robustlab.attacks.fmn import FMN, FastMinimumNorm
from robustlab.attacks.gradient import (
    BIM,
    FGSM,
    PGD,
    BasicIterativeMethod,
    FastGradientMethod,
    ProjectedGradientDescent,
)
from robustlab.attacks.jsma import JSMA, JacobianSaliencyMap
from robustlab.attacks.noise import GaussianNoise
from robustlab.attacks.square import Square, SquareAttack
from robustlab.errors import RobustlabError
from robustlab.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack", (
    FastGradientMethod, BasicIterativeMethod, ProjectedGradientDescent, GaussianNoise, DeepFool, FastMinimumNorm,
    DecoupledDirectionNorm, JacobianSaliencyMap, FastAdaptiveBoundary, FABTargeted, SquareAttack, BoundaryAttack,
    HopSkipJump, CarliniWagnerL2, CarliniWagnerL0, CarliniWagnerLinf, AutoPGD, AutoPGDTargeted))


def build_attack(name: str, **hyperparameters: Any) -> Attack:
    """Build a registered attack by name (``robustlab.attacks.ATTACKS`` lists them)."""
    attack = ATTACKS.lookup(name)
    try:
        return attack(**hyperparameters)
    except TypeError as exc:
        raise RobustlabError(f"bad hyperparameters for {name}: {exc}") from None


__all__ = [
    "ATTACKS", "Attack", "AttackResult", "ModelOracle", "build_attack", "is_adversarial", "resolve_targets",
    "FGSM", "FastGradientMethod", "BIM", "BasicIterativeMethod", "PGD", "ProjectedGradientDescent", "GaussianNoise",
    "DeepFool", "FMN", "FastMinimumNorm", "DDN", "DecoupledDirectionNorm", "JSMA", "JacobianSaliencyMap",
    "FAB", "FastAdaptiveBoundary", "FABT", "FABTargeted",
    "Square", "SquareAttack", "Boundary", "BoundaryAttack", "HopSkipJump", "HopSkipJumpAttack", "HSJA",
    "BPDA", "EOT", "MinimumNormEnsemble", "TransferAttack", "Reparameterization", "SingleDrawEOTWarning", "bpda_mode",
    "CarliniWagnerL2", "CWL2", "CarliniWagnerL0", "CWL0", "CarliniWagnerLinf", "CWLinf",
    "AutoPGD", "APGD", "AutoPGDTargeted", "APGDT",
]
