"""Stochastic defenses that act inside a network: stochastic activation pruning and the random
self-ensemble. Both wrap any classifier, stay random in eval mode, draw from their own
``torch.Generator`` and are attacked with EOT (``robustlab.attacks.composition.EOT``).

* :class:`StochasticActivationPruning` (``"sap"``; Dhillon et al., "Stochastic Activation Pruning
  for Robust Adversarial Defense", ICLR 2018): after every ``nn.ReLU`` (or every ``nn.Conv2d``,
  Athalye et al.'s placement), each example's activations are sampled ``r`` times with
  replacement with probability ``p_j = |h_j| / sum_k |h_k|``; the units never drawn are zeroed
  and the survivors scaled by ``1 / P_j``, ``P_j`` their probability of surviving, so
  ``E[SAP(h)] = h``. Applied at test time to a pretrained network, without fine-tuning.
* :class:`RandomSelfEnsemble` (``"rse"``; Liu, Cheng, Zhang & Hsieh, "Towards Robust Neural
  Networks via Random Self-ensemble", ECCV 2018; ``xuanqing94/BayesianDefense:models/vgg_rse.py``):
  Gaussian noise ``N(0, init_noise^2)`` on the input and ``N(0, inner_noise^2)`` on the input of
  every later ``nn.Conv2d``, in training and at inference; in eval mode the prediction is the
  ensemble of ``ensemble`` noisy passes, ``log mean_j softmax(f(x; noise_j))``.

Both are :class:`~robustlab.models.preprocessing.InputTransformDefense` subclasses registered in
:data:`~robustlab.models.preprocessing.DEFENSES`, so a model card records them in ``defenses``
and ``load_model`` (or ``--defense sap`` on the command line) rebuilds them around the saved
network, whose weights are unchanged. They reach the layers inside the wrapped model through
forward hooks registered for the duration of each forward pass only: the wrapped network
itself stays a plain, deterministic model (the naive baseline of an evaluation). Only
``nn.Module`` layers can be hooked; a network that calls ``F.relu`` is refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models.preprocessing import DEFENSES, InputTransformDefense
from robustlab.validate import is_int

__all__ = ["RandomSelfEnsemble", "StochasticActivationPruning", "sap_keep_probability", "stochastic_activation_pruning"]

SAP_KEEP = ("exact", "exponential")
SAP_AFTER = {"relu": nn.ReLU, "conv": nn.Conv2d}


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise RobustlabError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_number(owner: str, name: str, value: Any, *, low: float, inclusive: bool) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= low if inclusive else value > low))
    if not ok:
        raise RobustlabError(f"{owner}: {name} must be a finite number {'>=' if inclusive else '>'} {low}, got {value!r}")
    return float(value)


def sap_keep_probability(p: Tensor, samples: int, keep: str = "exact") -> Tensor:
    """Probability that unit ``j`` survives ``samples`` draws with replacement from
    ``Categorical(p)``: ``1 - (1 - p_j)^samples`` (``"exact"``, Dhillon et al.), or Athalye et
    al.'s ``1 - exp(-samples * p_j)`` (``"exponential"``, ``obfuscated-gradients:sap/sap_model.py``).
    Computed as ``-expm1(...)`` so that small ``p`` keeps its precision."""
    if keep == "exact":
        return -torch.expm1(samples * torch.log1p(-p.clamp(max=1.0)))
    return -torch.expm1(-samples * p)


def stochastic_activation_pruning(h: Tensor, *, samples_ratio: float = 1.0, keep: str = "exact",
                                  generator: torch.Generator | None = None) -> Tensor:
    """SAP of the activations ``h [N, ...]``, per example over all its units (``n`` of them).

    ``r = max(1, round(samples_ratio * n))`` draws. ``keep="exact"``: the draws themselves (with
    replacement from ``p``, ``torch.multinomial``) decide who survives, and survivors are scaled
    by ``1 / (1 - (1 - p)^r)``. ``keep="exponential"``: Athalye et al.'s reimplementation, each
    unit kept independently with probability ``P = 1 - exp(-r p)`` and scaled by ``1 / P``.
    Either way ``E[out] = h``. A row of zeros (a dead layer) stays zero. Differentiable for a
    fixed draw (through ``h`` and ``P``).
    """
    if h.shape[0] == 0:
        return h
    flat = h.reshape(h.shape[0], -1)
    n = flat.shape[1]
    samples = max(1, round(samples_ratio * n))
    magnitude = flat.abs()
    total = magnitude.sum(dim=1, keepdim=True)
    dead = total == 0
    p = magnitude / torch.where(dead, torch.ones_like(total), total)
    P = sap_keep_probability(p, samples, keep)
    with torch.no_grad():
        if keep == "exact":
            weights = torch.where(dead, torch.ones_like(p), p).float()
            drawn = torch.multinomial(weights, samples, replacement=True, generator=generator)
            kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, drawn.to(flat.device), True)
        else:
            kept = torch.rand(flat.shape, generator=generator, dtype=flat.dtype).to(flat.device) < P
    scale = torch.where(kept, 1 / P.clamp_min(1e-8), torch.zeros_like(P))
    return (flat * scale).reshape(h.shape)


class _HookedDefense(InputTransformDefense):
    """An ``InputTransformDefense`` that also modifies layers inside ``model`` through hooks
    that exist only while its own forward runs."""

    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = True

    def _targets(self) -> list[nn.Module]:
        raise NotImplementedError

    def _hook(self, module: nn.Module, index: int) -> Any:
        raise NotImplementedError

    @contextlib.contextmanager
    def _hooked(self) -> Iterator[None]:
        handles = [self._hook(module, index) for index, module in enumerate(self._targets())]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def transform(self, x: Tensor) -> Tensor:
        return x

    def approximation(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def forward(self, x: Tensor) -> Tensor:
        with self._hooked():
            return self.model(self.preprocess(x))


class StochasticActivationPruning(_HookedDefense):
    """SAP after every ``after`` layer (``"relu"``: every ``nn.ReLU``, Dhillon et al.'s placement
    after the activations; ``"conv"``: every ``nn.Conv2d``, Athalye et al.'s reimplementation on
    Madry's CIFAR model) of the wrapped, pretrained network; see
    :func:`stochastic_activation_pruning`.

    ``samples_ratio``: draws per layer as a fraction of its units per example (1.0, "SAP-100",
    the default; Athalye et al. use 2.0 with ``keep="exponential"``). ``generator``: a CPU
    ``torch.Generator`` (its state advances with every forward; None: torch's global RNG).

    Random in train and eval mode alike: the diagnostics' ``stochastic`` check fires, and the
    attack is ``EOT(PGD(...), draws=10)`` (Athalye, Carlini & Wagner, ICML 2018, §5.3.1).
    Cost: one pass of the wrapped model plus one multinomial draw per hooked layer.
    """

    name = "sap"

    def __init__(self, model: nn.Module, *, samples_ratio: float = 1.0, keep: str = "exact", after: str = "relu",
                 generator: torch.Generator | None = None):
        super().__init__(model)
        self.samples_ratio = _check_number("sap", "samples_ratio", samples_ratio, low=0.0, inclusive=False)
        if keep not in SAP_KEEP:
            raise RobustlabError(f"sap: keep must be one of {SAP_KEEP}, got {keep!r}")
        if after not in SAP_AFTER:
            raise RobustlabError(f"sap: after must be one of {tuple(SAP_AFTER)}, got {after!r}")
        _check_generator(generator)
        self.keep = keep
        self.after = after
        self.generator = generator

    def _targets(self) -> list[nn.Module]:
        layer = SAP_AFTER[self.after]
        targets = [m for m in self.model.modules() if isinstance(m, layer)]
        if not targets and not isinstance(self.model, nn.Identity):
            raise RobustlabError(f"sap: the wrapped model has no {layer.__name__} module to prune after (activations "
                                 "computed with torch.nn.functional cannot be hooked)")
        return targets

    def _hook(self, module: nn.Module, index: int) -> Any:
        def prune(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
            return stochastic_activation_pruning(output, samples_ratio=self.samples_ratio, keep=self.keep,
                                                 generator=self.generator)

        return module.register_forward_hook(prune)

    def arguments(self) -> dict[str, Any]:
        return {"samples_ratio": self.samples_ratio, "keep": self.keep, "after": self.after}

    def extra_repr(self) -> str:
        return f"samples_ratio={self.samples_ratio}, keep={self.keep!r}, after={self.after!r}"


class RandomSelfEnsemble(_HookedDefense):
    """Random self-ensemble (Liu et al., ECCV 2018): noise layers before every convolution,
    active in training and at inference, and an ensemble over noisy passes at inference.

    ``init_noise``: std of the noise added to the input, on the box's scale, before the wrapped
    model (so before its ``Normalize``; ``BayesianDefense`` feeds ``[0, 1]`` images without
    normalization; 0.2 there, the default). ``inner_noise``: std of the noise added to the input
    of every ``nn.Conv2d`` after the first (0.1 there). ``ensemble``: noisy passes averaged in
    eval mode (``acc_under_attack.py: ensemble_inference``); the output is
    ``log mean_j softmax(f(x; noise_j))``, a log-probability that is a valid logit. In train
    mode each forward is one noisy pass with plain logits, so ``train(RandomSelfEnsemble(net),
    ...)`` is RSE's training (cross-entropy on noisy passes).

    Attack: ``EOT(PGD(...), draws=10)``; each EOT draw is a full ``ensemble``-pass prediction, as
    deployed. Cost: ``ensemble`` passes of the wrapped model in eval mode, one in train mode.
    """

    name = "rse"

    def __init__(self, model: nn.Module, *, init_noise: float = 0.2, inner_noise: float = 0.1, ensemble: int = 10,
                 generator: torch.Generator | None = None):
        super().__init__(model)
        self.init_noise = _check_number("rse", "init_noise", init_noise, low=0.0, inclusive=True)
        self.inner_noise = _check_number("rse", "inner_noise", inner_noise, low=0.0, inclusive=True)
        if not is_int(ensemble, 1):
            raise RobustlabError(f"rse: ensemble must be a positive integer, got {ensemble!r}")
        _check_generator(generator)
        self.ensemble = ensemble
        self.generator = generator

    def _noise_like(self, t: Tensor, std: float) -> Tensor:
        return torch.randn(t.shape, generator=self.generator, dtype=t.dtype).to(t.device) * std

    def _targets(self) -> list[nn.Module]:
        convs: list[nn.Module] = [m for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        return convs[1:]

    def _hook(self, module: nn.Module, index: int) -> Any:
        def add_noise(_module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return (inputs[0] + self._noise_like(inputs[0], self.inner_noise), *inputs[1:])

        return module.register_forward_pre_hook(add_noise)

    def transform(self, x: Tensor) -> Tensor:
        return x + self._noise_like(x, self.init_noise)

    def forward(self, x: Tensor) -> Tensor:
        with self._hooked():
            if self.training:
                return self.model(self.preprocess(x))
            log_probs = torch.stack([F.log_softmax(self.model(self.preprocess(x)), dim=1)
                                     for _ in range(self.ensemble)])
            return torch.logsumexp(log_probs, dim=0) - math.log(self.ensemble)

    def arguments(self) -> dict[str, Any]:
        return {"init_noise": self.init_noise, "inner_noise": self.inner_noise, "ensemble": self.ensemble}

    def extra_repr(self) -> str:
        return f"init_noise={self.init_noise}, inner_noise={self.inner_noise}, ensemble={self.ensemble}"


for _cls in (StochasticActivationPruning, RandomSelfEnsemble):
    DEFENSES.add(_cls)
