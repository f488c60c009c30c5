"""Training: one loop with pluggable inner maximization and objective.

``train(model, x, y, config=TrainConfig(...))`` runs the method ``config.method`` from
:data:`METHODS` with the settings ``config.method_options``; see
:mod:`robustlab.training.methods` for the plug-point contract and
:mod:`robustlab.training.checkpoint` for the checkpoint format. Methods: natural training;
adversarial training with FGSM, fast FGSM, free and PGD (:mod:`~robustlab.training.adversarial`)
and TRADES (:mod:`~robustlab.training.trades`) against ``config.threat``; defensive distillation
(:mod:`~robustlab.training.distillation`); certified training with IBP / CROWN-IBP bounds
(:mod:`~robustlab.training.certified`).
"""

from robustlab.training.adversarial import (
    ADVERSARIAL_METHODS,
    FastFGSMTraining,
    FGSMTraining,
    FreeTraining,
    PGDTraining,
)
from robustlab.training.certified import CertifiedTrainingOptions, train_certified
from robustlab.training.checkpoint import load_checkpoint
from robustlab.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from robustlab.training.distillation import (
    DistillationResult,
    distill,
    logit_norms,
    soft_labels,
)
from robustlab.training.loop import TrainResult, train
from robustlab.training.methods import (
    METHODS,
    Batch,
    LossOutput,
    Method,
    NaturalMethod,
    TrainingMethod,
)
from robustlab.training.optim import build_optimizer, build_scheduler
from robustlab.training.trades import TradesTraining

__all__ = [
    "ADVERSARIAL_METHODS",
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Batch",
    "CertifiedTrainingOptions",
    "DistillationResult",
    "FGSMTraining",
    "FastFGSMTraining",
    "FreeTraining",
    "LossOutput",
    "Method",
    "NaturalMethod",
    "PGDTraining",
    "TradesTraining",
    "TrainConfig",
    "TrainResult",
    "TrainingMethod",
    "build_optimizer",
    "build_scheduler",
    "distill",
    "load_checkpoint",
    "logit_norms",
    "soft_labels",
    "train",
    "train_certified",
]
