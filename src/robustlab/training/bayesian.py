"""Adv-BNN training (Liu, Li, Wu & Hsieh, ICLR 2019; ``xuanqing94/BayesianDefense:main_adv_vi.py``).

``"adv-bnn"``: PGD adversarial training of a Bayesian network (``build_model("bayesian", ...)``):
the inputs are PGD iterates made on the sampled network (every forward of the attack draws new
weights, one draw per step, as in the reference), the objective is the ELBO's
``CE(f(x_adv; w), y) + kl_weight * KL(q || prior)`` with the KL summed over *every* Bayesian
layer (:func:`robustlab.models.bayesian.model_kl`). The reference writes ``kl_weight`` as
``alpha / N`` with ``N`` the training-set size and ``alpha = 1`` (``train_adv_vi.sh``; the README
says 0.02): the default is ``1 / 60000``, MNIST's ``N``; set it for other data. The training
attack's options are those of ``"pgd"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.models.bayesian import model_kl
from robustlab.training.adversarial import PGDOptions, PGDTraining
from robustlab.training.methods import METHODS, Batch, LossOutput
from robustlab.validate import is_number

__all__ = ["AdvBNNOptions", "AdvBNNTraining"]


@dataclass(frozen=True)
class AdvBNNOptions(PGDOptions):
    """PGD's options plus ``kl_weight`` (``alpha / N``; default ``1 / 60000``)."""

    kl_weight: float = 1 / 60000

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.kl_weight
        if not is_number(w, finite=False) or not (math.isfinite(w) and w >= 0):
            raise RobustlabError(f"AdvBNNOptions.kl_weight must be a finite number >= 0, got {w!r}")


class AdvBNNTraining(PGDTraining):
    """PGD training of a Bayesian network with the KL term. Cost per batch: ``steps + 1``
    forwards and backwards (each with fresh weights) plus the KL of every layer."""

    name = "adv-bnn"
    Options = AdvBNNOptions

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        logits = model(x_train)
        return LossOutput(F.cross_entropy(logits, batch.y) + self.options.kl_weight * model_kl(model), logits)


METHODS.add(AdvBNNTraining)
