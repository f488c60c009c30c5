"""Parseval networks and orthogonality regularization as training methods.

- ``"parseval"`` (Cisse, Bojanowski, Grave, Dauphin & Usunier, "Parseval Networks: Improving
  Robustness to Adversarial Examples", ICML 2017): after every optimizer step, each weight
  ``W`` of an ``nn.Linear`` or ``nn.Conv2d`` (a convolution's kernel unfolded to
  ``out x (in * kh * kw)``) is pulled towards a Parseval tight frame by the retraction
  ``W <- (1 + beta) W - beta W W^T W``, one gradient step of size ``beta / 2`` on
  ``(1/4) ||W^T W - I||_F^2`` (the update of the third-party port
  ``Ivan1248/Parseval-networks:code/models/tf_utils/update_ops.py``; ``beta = 3e-4`` there).
  Its fixed points have all singular values 1, so each layer is (about) 1-Lipschitz.
- ``"orthogonal-reg"``: the soft version, ``CE + weight * sum_l ||W_l W_l^T - I||_F^2`` with
  the Gram matrix taken on the smaller side of ``W_l`` (``W W^T`` if ``out <= in``, else
  ``W^T W``), as in orthogonality penalties such as Lin, Gan & Han's Defensive Quantization
  (ICLR 2019) [recalled].

Neither masks gradients: both are deterministic and differentiable, so PGD and APGD are the
right attacks and the diagnostics should pass. What they bound is each layer's spectral norm
on the unfolded matrix: for a stride-1 convolution the layer's Lipschitz constant may still be
up to ``sqrt(kh * kw)`` times larger, BatchNorm rescales outside the constraint, and the paper's
convex aggregation of residual branches is not implemented (robustlab's small nets have no
residual sums). :func:`spectral_norms` measures what a layer really has on its unfolded matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training.methods import METHODS, Batch, LossOutput, TrainingMethod
from robustlab.validate import is_number

__all__ = ["OrthogonalRegularization", "OrthogonalOptions", "ParsevalOptions", "ParsevalTraining",
           "orthogonality_penalty", "parseval_retraction", "spectral_norms"]

#: Cisse et al.'s retraction parameter as the port uses it (``beta=3e-4``) [recalled for the paper].
PARSEVAL_BETA = 3e-4


def _constrained(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def parseval_retraction(weight: Tensor, beta: float) -> Tensor:
    """``(1 + beta) W - beta W W^T W`` on ``weight`` unfolded to ``[out, rest]``, reshaped back."""
    w = weight.reshape(weight.shape[0], -1)
    return ((1 + beta) * w - beta * (w @ (w.T @ w))).reshape(weight.shape)


def orthogonality_penalty(weight: Tensor) -> Tensor:
    """``||G - I||_F^2`` with ``G`` the Gram matrix of the unfolded ``weight`` on its smaller side."""
    w = weight.reshape(weight.shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return (gram - torch.eye(gram.shape[0], device=w.device, dtype=w.dtype)).square().sum()


def spectral_norms(model: nn.Module) -> dict[str, float]:
    """Largest singular value of every ``nn.Linear`` / ``nn.Conv2d`` weight, unfolded to
    ``[out, in * kh * kw]``, by name (exact: ``torch.linalg.matrix_norm(ord=2)``)."""
    return {name: float(torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2))
            for name, m in _constrained(model)}


def _check_number(owner: str, name: str, value: object, *, upper: float = math.inf) -> None:
    if not is_number(value, finite=False) or not (0 <= value < upper):
        raise RobustlabError(f"{owner}.{name} must be a number in [0, {upper}), got {value!r}")


@dataclass(frozen=True)
class ParsevalOptions:
    """``beta``: retraction step (3e-4, the port's value). Values much above 0.1 diverge
    (the retraction overshoots when ``beta * sigma^2`` is large)."""

    beta: float = PARSEVAL_BETA

    def __post_init__(self) -> None:
        _check_number(type(self).__name__, "beta", self.beta, upper=0.5)


class ParsevalTraining(TrainingMethod):
    """Cross-entropy on clean inputs; after each optimizer step (so the optimizer's momentum
    is not orthogonalised, as in the paper) every Linear and Conv2d weight is retracted towards
    a Parseval tight frame. Cost per batch: 1 forward and 1 backward, plus ``O(out^2 * rest)``
    per layer for the retraction."""

    name = "parseval"
    Options = ParsevalOptions

    def after_step(self, model: nn.Module, x_train: Tensor, batch: Batch) -> None:
        layers = _constrained(model)
        if not layers:
            raise RobustlabError("training method 'parseval' found no nn.Linear or nn.Conv2d layer to constrain")
        with torch.no_grad():
            for _, module in layers:
                module.weight.copy_(parseval_retraction(module.weight, self.options.beta))


@dataclass(frozen=True)
class OrthogonalOptions:
    """``weight``: the penalty's coefficient (1e-3; our default, not from a paper)."""

    weight: float = 1e-3

    def __post_init__(self) -> None:
        _check_number(type(self).__name__, "weight", self.weight)


class OrthogonalRegularization(TrainingMethod):
    """``CE(f(x), y) + weight * sum_l ||W_l W_l^T - I||_F^2`` on clean inputs. Cost per batch:
    1 forward and 1 backward, plus one Gram matrix per layer."""

    name = "orthogonal-reg"
    Options = OrthogonalOptions

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        layers = _constrained(model)
        if not layers:
            raise RobustlabError("training method 'orthogonal-reg' found no nn.Linear or nn.Conv2d layer to regularize")
        logits = model(x_train)
        penalty = sum(orthogonality_penalty(m.weight) for _, m in layers)
        return LossOutput(F.cross_entropy(logits, batch.y) + self.options.weight * penalty, logits)


METHODS.add(ParsevalTraining)
METHODS.add(OrthogonalRegularization)
