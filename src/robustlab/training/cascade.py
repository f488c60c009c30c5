"""Cascade adversarial training with low-level similarity learning (Na, Ko & Mukhopadhyay,
"Cascade Adversarial Machine Learning Regularized with a Unified Embedding", ICLR 2018;
``taesikna/cascade_adv_training:model.py``, ``utils.py``).

``"cascade"``: every batch of ``n`` clean images is trained together with ``n`` adversarial
versions of them (Na et al.'s 128 inputs are 64 clean + 64 adversarial: use ``batch_size=64``).

- *step_ll* (one-step least-likely class): ``x - eps * sign(grad_x CE(f(x), y_LL))``, ``y_LL``
  the least-likely class, with a per-image ``eps ~ |N(0, eps_max / 2)|`` clipped to
  ``[0, eps_max]`` (``get_intensity``, option 2: the median is about ``0.34 eps_max``; ``eps_max``
  large is rare by design).
- *cascade*: with ``source`` (the path of an already adversarially trained network N1, saved by
  robustlab), half of the adversarial slots hold iterative-FGSM images made on N1 at an integer
  level ``e in {1..eps_max*255}`` drawn from the same distribution, ``floor(min(e + 4, 1.25 e))``
  steps of ``1/255`` (``get_adver_image``), the other half step_ll images of the network being
  trained. Na et al. precompute this bank once; iterative FGSM is deterministic, so computing it
  on the fly gives the same images at the cost of recomputing them each epoch.
- Loss: ``(sum_clean CE + adv_weight * sum_adv CE) / (n + adv_weight * n)`` plus the low-level
  similarity ("pivot") term ``pivot_weight * 1/2 * sum_j ||e(x_adv_j) - e(x_j)||^2`` on the
  logits (Na et al.'s embedding for the ResNet, ``embedding_at = 5``). A code comment says the
  clean side is frozen but the code has no stop-gradient; ``detach_pivot=True`` (default)
  freezes it, ``False`` follows the code.

The two stages: train N1 with ``"cascade"`` and no ``source``, save it, then train N2 (from the
clean-pretrained network, as Na et al. do) with ``source`` pointing at N1's checkpoint. Athalye
et al. (ICML 2018) find no obfuscated gradients, only limited robustness (15% at 4/255 on
CIFAR-10): attack it with PGD / APGD. Inputs must lie in ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.threat import Linf
from robustlab.training.adversarial import ascend
from robustlab.training.methods import METHODS, Batch, LossOutput, TrainingMethod, inner_mode, method_generator
from robustlab.validate import is_number

__all__ = ["CascadeOptions", "CascadeTraining", "iter_fgsm_steps", "sample_intensity", "step_ll"]


def sample_intensity(n: int, eps_max: float, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` draws of ``|N(0, eps_max / 2)|`` clipped to ``[0, eps_max]`` (``get_intensity``, option 2)."""
    return (torch.randn(n, generator=generator).abs() * eps_max / 2).clamp(max=eps_max)


def iter_fgsm_steps(level: int) -> int:
    """Na et al.'s iterative-FGSM step count at integer level ``level`` (0–255 scale): ``floor(min(level + 4, 1.25 level))``."""
    return math.floor(min(level + 4, 1.25 * level))


def step_ll(model: nn.Module, x: Tensor, eps: Tensor) -> Tensor:
    """One step away from the least-likely class, per-sample ``eps`` ``[N]``, clipped to ``[0, 1]``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), logits.argmin(dim=1).detach(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = eps.view(-1, *([1] * (x.dim() - 1))).to(x) * grad.sign()
    return (x.detach() - step).clamp(0, 1)


@dataclass(frozen=True)
class CascadeOptions:
    """``eps_max`` (16/255), ``adv_weight`` (λ = 0.3), ``pivot_weight`` (λ2 = 1e-4),
    ``detach_pivot`` (True), ``source`` (N1: a checkpoint path or ``zoo:NAME``, read as
    ``--model`` is; None for the first stage): Na et al.'s ``main.py`` defaults."""

    eps_max: float = 16 / 255
    adv_weight: float = 0.3
    pivot_weight: float = 1e-4
    detach_pivot: bool = True
    source: str | None = None

    def __post_init__(self) -> None:
        for name in ("eps_max", "adv_weight", "pivot_weight"):
            value = getattr(self, name)
            if not is_number(value, finite=False) or not (math.isfinite(value) and value >= 0):
                raise RobustlabError(f"CascadeOptions.{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.eps_max <= 1:
            raise RobustlabError(f"CascadeOptions.eps_max must be in (0, 1] (inputs in [0, 1]), got {self.eps_max!r}")
        if not isinstance(self.detach_pivot, bool):
            raise RobustlabError(f"CascadeOptions.detach_pivot must be a bool, got {self.detach_pivot!r}")
        if self.source is not None and not isinstance(self.source, str):
            raise RobustlabError(f"CascadeOptions.source must be a checkpoint path, zoo:NAME or None, got "
                                 f"{self.source!r}")


class CascadeTraining(TrainingMethod):
    """See the module docstring. Cost per batch (``n`` images): 2n forwards and backwards for
    the training step, n for step_ll, and with ``source`` up to 20 forwards and backwards of N1
    for each of the n/2 bank images."""

    name = "cascade"
    Options = CascadeOptions

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.generator = method_generator(config)
        self.source: nn.Module | None = None
        if self.options.source is not None:
            from robustlab.models.loading import resolve_model

            self.source = resolve_model(self.options.source)[0].to(self.device)
            for p in self.source.parameters():
                p.requires_grad_(False)

    def _bank(self, x: Tensor, y: Tensor, levels: Tensor) -> Tensor:
        """Iterative FGSM on N1 at the integer ``levels`` [N] (0–255 scale)."""
        source = self.source
        if source is None:
            raise RobustlabError("CascadeTraining has no source network to build the bank with (options.source)")
        out = x.clone()
        for level in levels.unique().tolist():
            if level == 0:
                continue
            rows = levels == level
            threat = Linf(eps=level / 255)
            labels = y[rows]
            out[rows] = ascend(source, x[rows], x[rows], lambda z: F.cross_entropy(z, labels, reduction="none"),
                               threat=threat, steps=iter_fgsm_steps(level), step_size=1 / 255)
        return out

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        n = batch.x.shape[0]
        eps = sample_intensity(n, self.options.eps_max, self.generator)
        with inner_mode(model, self.config.bn_mode):
            adversarial = step_ll(model, batch.x, eps.to(batch.x.device))
        if self.source is not None:
            levels = (eps * 255).round().long().clamp(min=1)
            half = torch.arange(n) < n // 2
            bank = self._bank(batch.x[half.to(batch.x.device)], batch.y[half.to(batch.y.device)], levels[half])
            adversarial[half.to(adversarial.device)] = bank
        return torch.cat([batch.x, adversarial.detach()])

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        n = batch.x.shape[0]
        logits = model(x_train)
        clean, adversarial = logits[:n], logits[n:]
        lam = self.options.adv_weight
        ce = (F.cross_entropy(clean, batch.y, reduction="sum")
              + lam * F.cross_entropy(adversarial, batch.y, reduction="sum")) / (n + lam * n)
        pivot = clean.detach() if self.options.detach_pivot else clean
        similarity = 0.5 * (adversarial - pivot).square().sum()
        return LossOutput(ce + self.options.pivot_weight * similarity, clean)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


METHODS.add(CascadeTraining)
