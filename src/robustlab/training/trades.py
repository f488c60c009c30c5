"""TRADES (Zhang et al., "Theoretically principled trade-off between robustness and accuracy",
ICML 2019), as in the reference code ``yaodongyu/TRADES:trades.py``.

Objective: ``CE(f(x), y) + beta * (1/B) sum_i KL(softmax f(x_i) || softmax f(x'_i))``, with ``x'``
from the inner maximization of the same KL:

1. the model in ``TrainConfig.bn_mode`` (eval by default, as the reference code),
2. ``x' = x + 0.001 * N(0, I)``, projected onto ball ∩ box; a Gaussian start, because the KL
   and its gradient are exactly 0 at ``x' = x``,
3. ``steps`` steps of projected steepest ascent on ``sum_i KL(f(x_i) || f(x'_i))``.

Under mixed precision (``TrainConfig.mixed_precision``) the clean logits of the inner KL and its
first step are computed in float32: at the start the KL is nearly 0, and the rounding of
low-precision logits would pick that step's direction (bfloat16 keeps the gradient's sign on 53-78%
of the pixels there, 94-97% after one step: ``benchmarks/mixed_precision_cpu.py``). The other
steps and the outer objective run under the autocast. Without mixed precision this is the plain
loop.

In the outer objective ``f(x)`` is *not* detached (gradients flow through both arguments of the
KL), and the KL is summed and divided by the batch size (``reduction="batchmean"``), as
``KLDivLoss(size_average=False) / batch_size`` in the reference code. For L2 the reference code
uses an SGD step on a normalized gradient; here every norm takes its threat model's steepest
ascent step (normalized gradient for L2), with the same projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training.adversarial import RandomStartMethod, ascend
from robustlab.training.methods import METHODS, Batch, LossOutput, inner_mode
from robustlab.validate import is_int, is_number

__all__ = ["TRADES_PRESETS", "TradesOptions", "TradesTraining"]

#: ``train_trades_mnist.py``: 40 steps of 0.01 at eps 0.3; ``train_trades_cifar10.py``: 10 steps
#: of 0.007 at eps 0.031.
TRADES_PRESETS = {"mnist": (40, 0.01), "cifar10": (10, 0.007)}

# Standard deviation of the Gaussian start (reference code: 0.001 * randn).
START_STD = 0.001


@dataclass(frozen=True)
class TradesOptions:
    """``beta``: weight of the KL term; 6 as in the paper's CIFAR-10 results (Table 5, 1/lambda = 6)
    and ``train_trades_cifar10.py`` (the MNIST script defaults to 1). ``steps`` / ``step_size``:
    the inner maximization (absolute step); ``preset`` ``"mnist"`` (40 of 0.01) or ``"cifar10"``
    (10 of 0.007) takes the reference scripts' values, explicit ``steps`` / ``step_size``
    override it; without either, 10 steps of ``eps * 0.007 / 0.031`` (the CIFAR-10 ratio)."""

    beta: float = 6.0
    steps: int | None = None
    step_size: float | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        beta = self.beta
        if not is_number(beta, finite=False) or not 0 <= beta < float("inf"):
            raise RobustlabError(f"TradesOptions.beta must be a finite number >= 0, got {beta!r}")
        if self.preset is not None and self.preset not in TRADES_PRESETS:
            raise RobustlabError(f"TradesOptions.preset must be one of {sorted(TRADES_PRESETS)} or None, got {self.preset!r}")
        if self.steps is not None and (not is_int(self.steps, 1)):
            raise RobustlabError(f"TradesOptions.steps must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and (
            not is_number(self.step_size, finite=False) or not 0 < self.step_size < float("inf")
        ):
            raise RobustlabError(f"TradesOptions.step_size must be a finite number > 0, got {self.step_size!r}")

    def resolve(self, eps: float) -> tuple[int, float]:
        steps, step_size = TRADES_PRESETS[self.preset] if self.preset is not None else (10, None)
        steps = self.steps if self.steps is not None else steps
        step_size = self.step_size if self.step_size is not None else step_size
        return steps, eps * 0.007 / 0.031 if step_size is None else step_size


def _kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax clean || softmax adv)`` ``[N]``, in float32."""
    return F.kl_div(F.log_softmax(adv_logits.float(), dim=1), F.log_softmax(clean_logits.float(), dim=1),
                    reduction="none", log_target=True).sum(dim=1)


class TradesTraining(RandomStartMethod):
    """TRADES training; see the module docstring. The reported training accuracy is on ``x'``.
    Cost per batch: ``1 + steps`` forwards and ``steps`` backwards for the inner maximization,
    2 forwards and backwards for the objective."""

    name = "trades"
    Options = TradesOptions

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        threat, x = batch.required_threat, batch.x
        steps, step_size = self.options.resolve(threat.eps)
        with inner_mode(model, self.config.bn_mode):
            noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
            start = threat.project(x, x + START_STD * noise)
            with torch.autocast(x.device.type, enabled=False):  # float32 (see the module docstring)
                with torch.no_grad():
                    clean = model(x)

                def kl(logits: Tensor) -> Tensor:
                    return _kl(clean, logits)

                first = ascend(model, x, start, kl, threat=threat, steps=1, step_size=step_size,
                               scale_loss=batch.scale_loss)
            return ascend(model, x, first, kl, threat=threat, steps=steps - 1, step_size=step_size,
                          scale_loss=batch.scale_loss)

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        clean = model(batch.x)
        adv = model(x_train)
        loss = F.cross_entropy(clean, batch.y) + self.options.beta * _kl(clean, adv).mean()
        return LossOutput(loss, adv)


METHODS.add(TradesTraining)
