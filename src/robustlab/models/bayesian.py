"""Bayesian neural networks by variational inference (Bayes by backprop), the model of Adv-BNN
(Liu, Li, Wu & Hsieh, "Adv-BNN: Improved Adversarial Defense through Robust Bayesian Neural
Network", ICLR 2019; ``xuanqing94/BayesianDefense:models/layers/{conv2d,linear}.py``).

Every weight and bias of a :class:`BayesLinear` / :class:`BayesConv2d` is drawn afresh at each
forward pass as ``w = mu + exp(s) * eps``, ``eps ~ N(0, 1)`` from the layer's generator, in
training and in eval mode alike (by design, as in the reference). The prior is ``N(0,
prior_sigma^2)``; :func:`model_kl` sums the closed-form KL of every Bayesian layer,
``log(prior_sigma) - s + (exp(2 s) + mu^2) / (2 prior_sigma^2) - 1/2`` per weight, over *all*
layers (the reference's ``models/vgg_vi.py`` returns only the last layer's, a bug
``defenses-2.md`` §8(e) records).

The registered architecture ``"bayesian"`` turns any registered architecture (``base``, with
``base_arguments``) into its Bayesian version, every ``nn.Linear`` and ``nn.Conv2d`` replaced
(BatchNorm's affine parameters stay deterministic, unlike the reference, whose VGG has BN), with
weights drawn from one CPU generator seeded by ``sample_seed`` (None: torch's global RNG). In
eval mode the prediction averages ``ensemble`` weight draws, ``log mean_j softmax(f(x; w_j))``
(``acc_under_attack.py``; 50 draws there). Training: method ``"adv-bnn"``
(:mod:`robustlab.training.bayesian`). Attack: EOT over weight draws.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models.registry import build_model, register_model
from robustlab.validate import is_int, is_number

__all__ = ["BayesConv2d", "BayesLinear", "BayesianNet", "model_kl"]


class _BayesLayer(nn.Module):
    """Shared parts: the variational parameters ``*_mu`` / ``*_log_sigma`` and the KL."""

    generator: torch.Generator | None
    weight_mu: nn.Parameter
    weight_log_sigma: nn.Parameter
    bias_mu: nn.Parameter | None
    bias_log_sigma: nn.Parameter | None

    def _init_variational(self, weight: Tensor, bias: Tensor | None, prior_sigma: float, init_sigma: float) -> None:
        self.prior_sigma = prior_sigma
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_sigma = nn.Parameter(torch.full_like(weight, math.log(init_sigma)))
        if bias is None:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_log_sigma", None)
        else:
            self.bias_mu = nn.Parameter(bias.detach().clone())
            self.bias_log_sigma = nn.Parameter(torch.full_like(bias, math.log(init_sigma)))
        self.generator = None

    def _draw(self, mu: Tensor, log_sigma: Tensor) -> Tensor:
        noise = torch.randn(mu.shape, generator=self.generator, dtype=mu.dtype).to(mu.device)
        return mu + log_sigma.exp() * noise

    def _sample(self) -> tuple[Tensor, Tensor | None]:
        """One draw of the weight, then of the bias (None without one)."""
        weight = self._draw(self.weight_mu, self.weight_log_sigma)
        if self.bias_mu is None or self.bias_log_sigma is None:
            return weight, None
        return weight, self._draw(self.bias_mu, self.bias_log_sigma)

    def kl(self) -> Tensor:
        total = _kl(self.weight_mu, self.weight_log_sigma, self.prior_sigma)
        if self.bias_mu is not None and self.bias_log_sigma is not None:
            total = total + _kl(self.bias_mu, self.bias_log_sigma, self.prior_sigma)
        return total


def _kl(mu: Tensor, log_sigma: Tensor, prior_sigma: float) -> Tensor:
    return (math.log(prior_sigma) - log_sigma + ((2 * log_sigma).exp() + mu.square()) / (2 * prior_sigma**2)
            - 0.5).sum()


class BayesLinear(_BayesLayer):
    """``nn.Linear`` with Gaussian weights; ``mu`` starts at ``linear``'s weights."""

    def __init__(self, linear: nn.Linear, *, prior_sigma: float, init_sigma: float):
        super().__init__()
        self._init_variational(linear.weight, linear.bias, prior_sigma, init_sigma)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self._sample()
        return F.linear(x, weight, bias)


class BayesConv2d(_BayesLayer):
    """``nn.Conv2d`` (zero padding) with Gaussian weights; ``mu`` starts at ``conv``'s weights."""

    def __init__(self, conv: nn.Conv2d, *, prior_sigma: float, init_sigma: float):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise RobustlabError("bayesian: only convolutions with numeric zero padding can be converted")
        self._init_variational(conv.weight, conv.bias, prior_sigma, init_sigma)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self._sample()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _convert(module: nn.Module, prior_sigma: float, init_sigma: float) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, BayesLinear(child, prior_sigma=prior_sigma, init_sigma=init_sigma))
            count += 1
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, BayesConv2d(child, prior_sigma=prior_sigma, init_sigma=init_sigma))
            count += 1
        else:
            count += _convert(child, prior_sigma, init_sigma)
    return count


def model_kl(model: nn.Module) -> Tensor:
    """Sum of the KL divergences of every Bayesian layer in ``model`` (raises if there is none)."""
    layers = [m for m in model.modules() if isinstance(m, _BayesLayer)]
    if not layers:
        raise RobustlabError("model_kl: the model has no Bayesian layer (build it with build_model('bayesian', ...))")
    total = layers[0].kl()
    for layer in layers[1:]:
        total = total + layer.kl()
    return total


class BayesianNet(nn.Module):
    """``net`` (its Linear/Conv2d layers Bayesian) with an ``ensemble`` of weight draws in eval
    mode (one draw per forward in train mode). ``generator`` is shared by all layers.
    ``stochastic``: every forward draws afresh (EOT's and the command line's ``--eot`` test)."""

    stochastic = True

    def __init__(self, net: nn.Module, *, ensemble: int, generator: torch.Generator | None):
        super().__init__()
        self.net = net
        self.ensemble = ensemble
        self.generator = generator
        for module in net.modules():
            if isinstance(module, _BayesLayer):
                module.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.net(x)
        log_probs = torch.stack([F.log_softmax(self.net(x), dim=1) for _ in range(self.ensemble)])
        return torch.logsumexp(log_probs, dim=0) - math.log(self.ensemble)


def _positive(value: Any, name: str) -> float:
    if not is_number(value, finite=False) or not (math.isfinite(value) and value > 0):
        raise RobustlabError(f"bayesian: {name} must be a finite number > 0, got {value!r}")
    return float(value)


@register_model("bayesian")
def bayesian(*, input_shape: tuple[int, int, int], num_classes: int, base: str = "kw-small",
             base_arguments: dict | None = None, prior_sigma: float = 0.1, init_sigma: float = 0.1,
             ensemble: int = 10, sample_seed: int | None = None) -> BayesianNet:
    """The Bayesian version of the registered architecture ``base`` (built with
    ``base_arguments``; PyTorch's initialization for the means). ``prior_sigma`` and
    ``init_sigma``: the prior's std and the initial posterior std (0.1 and 0.1 in the Adv-BNN
    README; ``train_adv_vi.sh`` uses 0.08 and 0.08). ``ensemble``: weight draws averaged in eval
    mode (10; the reference evaluates with 50). ``sample_seed``: seed of the CPU generator the
    weights are drawn from."""
    if base == "bayesian":
        raise RobustlabError("bayesian: base must be another architecture")
    if base_arguments is not None and not isinstance(base_arguments, dict):
        raise RobustlabError(f"bayesian: base_arguments must be a dict, got {base_arguments!r}")
    prior_sigma, init_sigma = _positive(prior_sigma, "prior_sigma"), _positive(init_sigma, "init_sigma")
    if not is_int(ensemble, 1):
        raise RobustlabError(f"bayesian: ensemble must be a positive integer, got {ensemble!r}")
    if sample_seed is not None and (not is_int(sample_seed)):
        raise RobustlabError(f"bayesian: sample_seed must be an int or None, got {sample_seed!r}")
    net = build_model(base, input_shape=input_shape, num_classes=num_classes, **(base_arguments or {}))
    if _convert(net, prior_sigma, init_sigma) == 0:
        raise RobustlabError(f"bayesian: {base!r} has no nn.Linear or nn.Conv2d layer to make Bayesian")
    generator = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
    return BayesianNet(net, ensemble=ensemble, generator=generator)
