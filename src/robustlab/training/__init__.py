"""Training: one loop with pluggable inner maximization and objective.

``train(model, x, y, config=TrainConfig(...))`` runs the method ``config.method`` from
:data:`METHODS` with the settings ``config.method_options``; see
:mod:`robustlab.training.methods` for the plug-point contract and
:mod:`robustlab.training.checkpoint` for the checkpoint format. Methods: natural training;
adversarial training with FGSM, fast FGSM, free and PGD (:mod:`~robustlab.training.adversarial`)
TRADES (:mod:`~robustlab.training.trades`), MMA / OMMA (:mod:`~robustlab.training.mma`) and
bilateral adversarial training (:mod:`~robustlab.training.bilateral`) against ``config.threat``; defensive distillation
(:mod:`~robustlab.training.distillation`); certified training with IBP / CROWN-IBP bounds
(:mod:`~robustlab.training.certified`); YOPO-m-n (:mod:`~robustlab.training.yopo`); gradient
regularizers (:mod:`~robustlab.training.regularizers`); Gaussian-noise augmentation and TisODE's
steady-state term (:mod:`~robustlab.training.noise`); Parseval networks and orthogonality
regularization (:mod:`~robustlab.training.parseval`); Adv-BNN's adversarial training of Bayesian
networks (:mod:`~robustlab.training.bayesian`); cascade adversarial training
(:mod:`~robustlab.training.cascade`).
"""

from robustlab.training.adversarial import (
    ADVERSARIAL_METHODS,
    FastFGSMTraining,
    FGSMTraining,
    FreeTraining,
    PGDTraining,
)
from robustlab.training.bayesian import AdvBNNTraining
from robustlab.training.bilateral import BilateralTraining
from robustlab.training.cascade import CascadeTraining
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
from robustlab.training.mma import MMATraining, OMMATraining
from robustlab.training.noise import GaussianNoiseTraining, SteadyStateTraining
from robustlab.training.optim import build_optimizer, build_scheduler
from robustlab.training.parseval import OrthogonalRegularization, ParsevalTraining
from robustlab.training.regularizers import REGULARIZER_METHODS
from robustlab.training.trades import TradesTraining
from robustlab.training.yopo import YOPOTraining

__all__ = [
    "ADVERSARIAL_METHODS",
    "METHODS",
    "OPTIMIZERS",
    "REGULARIZER_METHODS",
    "SCHEDULES",
    "AdvBNNTraining",
    "Batch",
    "BilateralTraining",
    "CascadeTraining",
    "CertifiedTrainingOptions",
    "DistillationResult",
    "FGSMTraining",
    "FastFGSMTraining",
    "FreeTraining",
    "GaussianNoiseTraining",
    "LossOutput",
    "MMATraining",
    "Method",
    "NaturalMethod",
    "OMMATraining",
    "OrthogonalRegularization",
    "PGDTraining",
    "ParsevalTraining",
    "SteadyStateTraining",
    "TradesTraining",
    "TrainConfig",
    "TrainResult",
    "TrainingMethod",
    "YOPOTraining",
    "build_optimizer",
    "build_scheduler",
    "distill",
    "load_checkpoint",
    "logit_norms",
    "soft_labels",
    "train",
    "train_certified",
]
