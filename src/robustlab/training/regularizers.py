"""Gradient regularizers as training objectives: ``CE(f(x), y) + weight * term(x)`` on natural
inputs (algorithms.md §9).

- ``"jacobian-reg"``: the Frobenius norm of the input-logit Jacobian ``J(x) = dz/dx``
  (Jakubovitz & Giryes, "Improving DNN robustness to adversarial attacks using Jacobian
  regularization", ECCV 2018), exact or with the random-projection estimate of Hoffman, Roberts &
  Yaida, "Robust learning with Jacobian regularization", 2019.
- ``"input-grad-reg"``: double backpropagation, the squared norm of the input gradient of the
  cross-entropy (Ross & Doshi-Velez, "Improving the adversarial robustness and interpretability of
  deep neural networks by regularizing their input gradients", AAAI 2018).
- ``"cross-lipschitz"``: the mean squared distance between the input gradients of every pair of
  logits (Hein & Andriushchenko, "Formal guarantees on the robustness of a classifier against
  adversarial manipulation", NeurIPS 2017).

Every term is a function of *logits* (not of softmax outputs) and is computed per example, with
``create_graph=True`` so that the optimizer step differentiates through it. Per-example terms need
a forward pass in which the examples do not interact: when the model holds a BatchNorm in train
mode, the term is computed on a second forward pass in eval mode (running statistics), and the
cross-entropy on the usual train-mode pass (cost: one more forward).

Cost per batch, in passes over the batch: the forward and backward of the cross-entropy, plus,
for the term, ``r`` vector-Jacobian products built with ``create_graph`` and their
differentiation in the backward pass (roughly ``r`` more forward-backward pairs), with ``r = K``
(number of classes) for the exact Jacobian and cross-Lipschitz terms, ``r = projections`` for the
estimates, and ``r = 1`` for double backpropagation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustlab.errors import RobustlabError
from robustlab.training.adversarial import check_positive_int
from robustlab.training.methods import (
    METHODS,
    Batch,
    LossOutput,
    TrainingMethod,
    inner_mode,
    method_generator,
)
from robustlab.validate import is_number

__all__ = [
    "REGULARIZER_METHODS",
    "CrossLipschitzOptions",
    "CrossLipschitzRegularization",
    "InputGradientOptions",
    "InputGradientRegularization",
    "JacobianOptions",
    "JacobianRegularization",
    "cross_lipschitz_term",
    "input_gradient_term",
    "jacobian_frobenius_sq",
]


def _check_weight(owner: str, weight: object) -> None:
    if not is_number(weight, finite=False) or not (math.isfinite(weight) and weight >= 0):
        raise RobustlabError(f"{owner}.weight must be a finite number >= 0, got {weight!r}")


def _check_projections(owner: str, projections: object) -> None:
    if projections is not None:
        check_positive_int(owner, "projections", projections)


def _vjp(outputs: Tensor, x: Tensor, v: Tensor, scale: Tensor) -> Tensor:
    """``v^T d outputs / dx`` per example, ``[N, D]``, differentiable. ``scale`` (the
    mixed-precision loss scale) is applied before and removed after, against float16 underflow."""
    (grad,) = torch.autograd.grad((outputs * v).sum() * scale, x, create_graph=True)
    return grad.flatten(1).float() / scale


def jacobian_frobenius_sq(
    outputs: Tensor,
    x: Tensor,
    *,
    projections: int | None = None,
    generator: torch.Generator | None = None,
    scale: Tensor | float = 1.0,
) -> Tensor:
    """Per-example ``||d outputs_i / d x_i||_F^2``, ``[N]``, differentiable (``create_graph``).

    ``outputs``: ``[N, K]`` computed from ``x`` ``[N, ...]`` (a leaf that requires grad) with no
    interaction between examples. ``projections=None``: exact, one vector-Jacobian product per
    output (``K`` in all). ``projections=r``: the unbiased estimate of Hoffman et al. (2019),
    ``K * mean_r ||v_r^T J||^2`` with ``v_r`` uniform on the unit sphere of ``R^K``
    (independently per example), ``r`` products; ``generator`` draws the ``v_r``.
    """
    n, k = outputs.shape
    scale = torch.as_tensor(scale, device=outputs.device)
    if projections is None:
        eye = torch.eye(k, device=outputs.device, dtype=outputs.dtype)
        return cast(Tensor, sum(_vjp(outputs, x, eye[j], scale).square().sum(dim=1) for j in range(k)))
    total = torch.zeros(n, device=outputs.device)
    for _ in range(projections):
        v = torch.randn((n, k), generator=generator, device=outputs.device)
        v = (v / v.norm(dim=1, keepdim=True)).to(outputs.dtype)
        total = total + _vjp(outputs, x, v, scale).square().sum(dim=1)
    return k * total / projections


def cross_lipschitz_term(
    logits: Tensor,
    x: Tensor,
    *,
    projections: int | None = None,
    generator: torch.Generator | None = None,
    scale: Tensor | float = 1.0,
) -> Tensor:
    """Per-example ``(1/K^2) sum_{l,m} ||grad f_l(x_i) - grad f_m(x_i)||_2^2``, ``[N]``.

    The double sum equals ``2K ||P J||_F^2`` with ``P = I - 11^T/K`` (centring over classes), and
    ``P J`` is the Jacobian of the centred logits, so this is
    ``(2/K) * jacobian_frobenius_sq(logits - mean(logits))``: exact with ``K`` products, or the
    random-projection estimate with ``projections`` (not in the paper, which computes the ``K``
    gradients).
    """
    k = logits.shape[1]
    centred = logits - logits.mean(dim=1, keepdim=True)
    return (2.0 / k) * jacobian_frobenius_sq(centred, x, projections=projections, generator=generator, scale=scale)


def input_gradient_term(logits: Tensor, y: Tensor, x: Tensor, *, scale: Tensor | float = 1.0) -> Tensor:
    """Per-example ``||grad_{x_i} CE(f(x_i), y_i)||_2^2``, ``[N]``, differentiable (one product)."""
    scale = torch.as_tensor(scale, device=logits.device)
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    (grad,) = torch.autograd.grad(ce.sum() * scale, x, create_graph=True)
    return (grad.flatten(1).float() / scale).square().sum(dim=1)


def _has_batch_statistics(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.training for m in model.modules())


class GradientRegularization(TrainingMethod):
    """``CE(f(x), y) + weight * term`` on ``batch.x``; subclasses define ``term``."""

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.generator = method_generator(config, self.device)

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        x = x_train.detach().requires_grad_(True)
        logits = model(x)
        ce = F.cross_entropy(logits.float(), batch.y)
        scale = batch.scale_loss(torch.ones((), device=x.device))
        if _has_batch_statistics(model):
            with inner_mode(model, "eval"):
                term = self.term(model(x), x, batch, scale)
        else:
            term = self.term(logits, x, batch, scale)
        return LossOutput(ce + self.options.weight * term, logits)

    def term(self, logits: Tensor, x: Tensor, batch: Batch, scale: Tensor) -> Tensor:
        """The scalar regularization term on ``logits`` ``[N, K]`` computed from ``x``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


# -- Jacobian regularization ---------------------------------------------------------------------

JACOBIAN_VARIANTS = ("squared", "official-code")


@dataclass(frozen=True)
class JacobianOptions:
    """``weight``: ``lambda_JR`` in ``CE + lambda_JR * (1/2) mean_i ||J(x_i)||_F^2``; 0.01 and the
    factor 1/2 as in Hoffman et al.'s reference implementation
    (``facebookresearch/jacobian_regularizer``, README and ``jacobian.py``).
    ``projections``: number of random projections of the estimate; 1, which Hoffman et al. report
    to be enough (their reference code's default ``n=1``); ``None``: the exact norm (``K`` products, affordable for
    small ``K``). ``variant``: ``"squared"`` (the above; Jakubovitz & Giryes' paper writes the
    squared norm summed over examples, the same up to ``weight``) or ``"official-code"``:
    ``weight * ||J(x_0)||_F``, the *non-squared* exact norm at the first example of the batch only,
    as ``danieljakubovitz/Jacobian_Regularization`` computes it (there with weight 0.1, in a
    fine-tuning phase after normal training)."""

    weight: float = 0.01
    projections: int | None = 1
    variant: str = "squared"

    def __post_init__(self) -> None:
        _check_weight("JacobianOptions", self.weight)
        _check_projections("JacobianOptions", self.projections)
        if self.variant not in JACOBIAN_VARIANTS:
            raise RobustlabError(f"JacobianOptions.variant must be one of {list(JACOBIAN_VARIANTS)}, got {self.variant!r}")
        if self.variant == "official-code" and self.projections is not None:
            raise RobustlabError(
                "JacobianOptions.variant='official-code' uses the exact norm of the first example; set projections=None"
            )


class JacobianRegularization(GradientRegularization):
    """Jacobian regularization (Jakubovitz & Giryes 2018; estimator of Hoffman et al. 2019); see
    :class:`JacobianOptions` and the module docstring for the objective and its cost."""

    name = "jacobian-reg"
    Options = JacobianOptions

    def term(self, logits, x, batch, scale):
        if self.options.variant == "official-code":
            return jacobian_frobenius_sq(logits[:1], x, scale=scale)[0].sqrt()
        sq = jacobian_frobenius_sq(logits, x, projections=self.options.projections, generator=self.generator,
                                   scale=scale)
        return 0.5 * sq.mean()


# -- input gradient regularization (double backpropagation) -------------------------------------

# Ross & Doshi-Velez penalize (1/2) ||grad_X mean_i CE_i||^2 (``l2_double_backprop``), the gradient of
# the batch-mean loss, at batch 256; its smallest lambda in ``scripts/train_all.py`` is 100.
_ROSS_LAMBDA, _ROSS_BATCH = 100.0, 256


@dataclass(frozen=True)
class InputGradientOptions:
    """``weight``: ``lambda`` in ``CE + lambda * mean_i ||grad_{x_i} CE(f(x_i), y_i)||_2^2``.

    Ross & Doshi-Velez's code penalizes ``(1/2) ||grad_X CE_mean||^2``, whose per-example
    gradients carry a ``1/B`` factor, so their lambda depends on the batch size ``B``; the term
    here is per example, and their ``lambda_ref`` at batch ``B`` is ``weight = lambda_ref / (2 B)``.
    Default: their smallest swept value, 100 at ``B = 256`` (``dtak/adversarial-robustness-public``,
    ``scripts/train_all.py``), i.e. ``100 / 512``."""

    weight: float = _ROSS_LAMBDA / (2 * _ROSS_BATCH)

    def __post_init__(self) -> None:
        _check_weight("InputGradientOptions", self.weight)


class InputGradientRegularization(GradientRegularization):
    """Input gradient regularization / double backpropagation (Ross & Doshi-Velez, AAAI 2018);
    see :class:`InputGradientOptions`. Cost: about twice natural training."""

    name = "input-grad-reg"
    Options = InputGradientOptions

    def term(self, logits, x, batch, scale):
        return input_gradient_term(logits, batch.y, x, scale=scale).mean()


# -- cross-Lipschitz regularization --------------------------------------------------------------


@dataclass(frozen=True)
class CrossLipschitzOptions:
    """``weight``: ``lambda`` in ``CE + lambda * (1/(n K^2)) sum_i sum_{l,m} ||grad f_l(x_i) -
    grad f_m(x_i)||_2^2``; 1e-4 as in ``max-andr/cross-lipschitz`` (its ResNet example).
    ``projections``: ``None`` (default) computes the ``K`` gradients as the paper does; an integer
    uses the random-projection estimate of :func:`cross_lipschitz_term` instead."""

    weight: float = 1e-4
    projections: int | None = None

    def __post_init__(self) -> None:
        _check_weight("CrossLipschitzOptions", self.weight)
        _check_projections("CrossLipschitzOptions", self.projections)


class CrossLipschitzRegularization(GradientRegularization):
    """Cross-Lipschitz regularization (Hein & Andriushchenko, NeurIPS 2017); see
    :class:`CrossLipschitzOptions`."""

    name = "cross-lipschitz"
    Options = CrossLipschitzOptions

    def term(self, logits, x, batch, scale):
        return cross_lipschitz_term(logits, x, projections=self.options.projections, generator=self.generator,
                                    scale=scale).mean()


REGULARIZER_METHODS = {
    "jacobian-reg": JacobianRegularization,
    "input-grad-reg": InputGradientRegularization,
    "cross-lipschitz": CrossLipschitzRegularization,
}
for _method in REGULARIZER_METHODS.values():
    METHODS.add(_method)
