"""Training: one loop with pluggable inner maximization and objective.

``train(model, x, y, config=TrainConfig(...))`` runs the method ``config.method`` from
:data:`METHODS`; see :mod:`robustlab.training.methods` for the plug-point contract and
:mod:`robustlab.training.checkpoint` for the checkpoint format. Methods: natural training,
defensive distillation (:mod:`~robustlab.training.distillation`) and certified training with
IBP / CROWN-IBP bounds (:mod:`~robustlab.training.certified`).
"""

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
from robustlab.training.methods import METHODS, LossOutput, Method, NaturalMethod
from robustlab.training.optim import build_optimizer, build_scheduler

__all__ = [
    "CertifiedTrainingOptions",
    "train_certified",
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "DistillationResult",
    "LossOutput",
    "Method",
    "NaturalMethod",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "distill",
    "load_checkpoint",
    "logit_norms",
    "soft_labels",
    "train",
]
