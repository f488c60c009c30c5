"""Adversarial training methods: FGSM, fast FGSM, free and PGD (Madry et al.) training.

Every method trains against ``batch.threat``, the run's :attr:`TrainConfig.threat` with its eps
warm-up applied (Linf, L2 or L1; the steepest-ascent step and the projection come from
:mod:`robustlab.threat`, so each norm gets its own step: sign for L∞, normalized gradient for L2).
The inner maximization runs with the model in ``TrainConfig.bn_mode`` (default eval, see
:func:`~robustlab.training.methods.inner_mode`) and differentiates with respect to the input
only, so it leaves no parameter gradients behind. Random starts come from a generator the method
owns (seeded from ``TrainConfig.seed``) and keeps in its checkpointed state.

Settings go in ``TrainConfig.method_options``; each method's ``Options`` lists them with their
defaults and sources. Costs are counted in forward and backward passes over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training.methods import (
    METHODS,
    Batch,
    LossOutput,
    TrainingMethod,
    inner_mode,
    method_generator,
)
from robustlab.validate import is_int, is_number

__all__ = [
    "ADVERSARIAL_METHODS",
    "FGSMTraining",
    "FastFGSMTraining",
    "FreeTraining",
    "PGDTraining",
    "ascend",
]


def check_positive_int(owner: str, name: str, value: object) -> None:
    if not is_int(value, 1):
        raise RobustlabError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


def check_positive_float(owner: str, name: str, value: object) -> None:
    if not is_number(value, finite=False) or not (math.isfinite(value) and value > 0):
        raise RobustlabError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


def _check_preset(owner: str, preset: object, presets: dict) -> None:
    if preset is not None and preset not in presets:
        raise RobustlabError(f"{owner}.preset must be one of {sorted(presets)} or None, got {preset!r}")


class Ball(Protocol):
    """What :func:`ascend` needs of its ``threat``: a threat model, or MMA's per-example ball."""

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor: ...

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor: ...


def ascend(
    model: nn.Module,
    x: Tensor,
    start: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    threat: Ball,
    steps: int,
    step_size: float | Tensor,
    scale_loss: Callable[[Tensor], Tensor] = lambda t: t,
) -> Tensor:
    """``steps`` steps of projected steepest ascent on ``sum(loss_fn(model(x_adv)))``; returns the
    last iterate (as Madry et al.'s and TRADES' training code do, not the best one).

    ``x``: clean inputs ``[N, ...]`` (the centre of the threat set), ``start``: the first iterate,
    ``loss_fn``: logits ``[N, K]`` -> per-sample loss ``[N]``. Each step moves ``step_size``
    along ``threat.steepest_direction`` and projects onto ball ∩ box. The model is used as it is
    (its mode is the caller's choice); gradients are taken with respect to the input only.
    ``scale_loss`` multiplies the loss before differentiating (the mixed-precision scaler):
    the direction does not change, float16 gradients just do not underflow; non-finite entries
    of an overflowing gradient are treated as 0. Cost: ``steps`` forwards and backwards.
    """
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x_adv)).sum()
            (grad,) = torch.autograd.grad(scale_loss(loss), x_adv)
        x_adv = x_adv.detach()
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        x_adv = threat.project(x, x_adv + step_size * threat.steepest_direction(grad, x_adv))
    return x_adv


def _ce(y: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda logits: F.cross_entropy(logits.float(), y, reduction="none")


class RandomStartMethod(TrainingMethod):
    """An adversarial method that owns a generator for its random starts."""

    needs_threat = True

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.generator = method_generator(config, self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


# -- FGSM (Goodfellow et al.) ---------------------------------------------------------------------


@dataclass(frozen=True)
class FGSMOptions:
    """``clean_weight``: ``alpha`` in ``alpha J(x) + (1 - alpha) J(x_FGSM)``; 0.5 as in
    Goodfellow et al., "Explaining and harnessing adversarial examples", ICLR 2015, Sec. 6."""

    clean_weight: float = 0.5

    def __post_init__(self) -> None:
        w = self.clean_weight
        if not is_number(w, finite=False) or not 0 <= w <= 1:
            raise RobustlabError(f"FGSMOptions.clean_weight must lie in [0, 1], got {w!r}")


class FGSMTraining(TrainingMethod):
    """FGSM adversarial training (Goodfellow et al., ICLR 2015, Sec. 6): the objective
    ``alpha CE(x) + (1 - alpha) CE(x_FGSM)`` with ``x_FGSM = Proj(x + eps * dir(grad CE(x)))``
    (``dir`` = sign for L∞), no random start. Cost per batch: 1 forward + 1 backward for the
    attack, 2 forwards + 2 backwards for the objective."""

    name = "fgsm"
    Options = FGSMOptions
    needs_threat = True

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        with inner_mode(model, self.config.bn_mode):
            return ascend(model, batch.x, batch.x, _ce(batch.y), threat=batch.required_threat, steps=1,
                          step_size=batch.required_threat.eps, scale_loss=batch.scale_loss)

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        alpha = self.options.clean_weight
        adv_logits = model(x_train)
        loss = (1 - alpha) * F.cross_entropy(adv_logits, batch.y)
        if alpha > 0:
            loss = loss + alpha * F.cross_entropy(model(batch.x), batch.y)
        return LossOutput(loss, adv_logits)


# -- fast FGSM (Wong et al.) ------------------------------------------------------------------------


@dataclass(frozen=True)
class FastFGSMOptions:
    """``step_size_factor``: the FGSM step ``alpha`` as a multiple of eps; 1.25 as in Wong et al.,
    "Fast is better than free: revisiting adversarial training", ICLR 2020, Sec. 4 (alpha = 1.25
    eps; they report catastrophic overfitting from about alpha = 2 eps on)."""

    step_size_factor: float = 1.25

    def __post_init__(self) -> None:
        check_positive_float("FastFGSMOptions", "step_size_factor", self.step_size_factor)


class FastFGSMTraining(RandomStartMethod):
    """"Fast" FGSM training (Wong et al., ICLR 2020, Sec. 4): a uniform random start in ball ∩ box,
    one step of ``alpha = step_size_factor * eps`` along the steepest-ascent direction of the
    cross-entropy, projection back onto ball ∩ box, and cross-entropy on the result only.
    Wong et al. pair it with the cyclic learning rate (``schedule="onecycle"``) and build the
    attack in train mode (``bn_mode="train"``). Cost per batch: 2 forwards + 2 backwards."""

    name = "fast-fgsm"
    Options = FastFGSMOptions

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        threat = batch.required_threat
        with inner_mode(model, self.config.bn_mode):
            start = threat.random_init(batch.x, self.generator)
            return ascend(model, batch.x, start, _ce(batch.y), threat=threat, steps=1,
                          step_size=self.options.step_size_factor * threat.eps, scale_loss=batch.scale_loss)


# -- free adversarial training (Shafahi et al.) -------------------------------------------------------


@dataclass(frozen=True)
class FreeOptions:
    """``replays``: ``m``, the number of times each minibatch is replayed; 8 as in Shafahi et al.,
    "Adversarial training for free!", NeurIPS 2019, Sec. 4 (their CIFAR-10 "Free m=8").
    ``step_size_factor``: the perturbation step as a multiple of eps; 1 (Alg. 1 steps by eps)."""

    replays: int = 8
    step_size_factor: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("FreeOptions", "replays", self.replays)
        check_positive_float("FreeOptions", "step_size_factor", self.step_size_factor)


class FreeTraining(TrainingMethod):
    """Free adversarial training (Shafahi et al., NeurIPS 2019, Alg. 1): each minibatch is replayed
    ``m`` times; every replay takes one optimizer step on ``CE(x + delta)`` and, from the *same*
    backward pass, one ascent step on ``delta`` (``delta <- Proj(delta + step * dir(grad_x))``).
    ``delta`` starts at 0 and is carried over from replay to replay and from one minibatch to the
    next (as in Alg. 1), so it is state: ``[batch_size, ...]``, checkpointed.

    Epochs: ``TrainConfig.epochs`` counts epochs' worth of optimizer steps, as in the paper's
    ``N_ep``; the loop makes ``epochs / m`` passes over the data (``epochs`` must be a multiple
    of ``m``). The perturbation step reuses the training pass, so ``bn_mode`` does not apply.
    Cost per optimizer step: 1 forward + 1 backward (the input gradient comes for free).
    """

    name = "free"
    Options = FreeOptions
    needs_threat = True

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.delta: Tensor | None = None

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        replays = config.method_options.get("replays", FreeOptions.replays)
        if config.epochs % replays:
            raise RobustlabError(
                f"free training replays each minibatch {replays} times, so TrainConfig.epochs ({config.epochs}) "
                f"must be a multiple of {replays}: the loop makes epochs / replays passes over the data"
            )

    @property
    def replays(self) -> int:
        return self.options.replays

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        x = batch.x
        if self.delta is None:
            self.delta = torch.zeros((self.config.batch_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        x_adv = batch.required_threat.project(x, x + self.delta[: len(x)])
        return x_adv.detach().requires_grad_(True)

    def after_step(self, model: nn.Module, x_train: Tensor, batch: Batch) -> None:
        threat, x = batch.required_threat, batch.x
        if x_train.grad is None or self.delta is None:
            raise RobustlabError("FreeTraining.after_step must follow make_inputs, with the training gradient in x_train.grad")
        grad = torch.nan_to_num(x_train.grad, nan=0.0, posinf=0.0, neginf=0.0)
        x_adv = x_train.detach()
        stepped = threat.project(
            x, x_adv + self.options.step_size_factor * threat.eps * threat.steepest_direction(grad, x_adv)
        )
        self.delta[: len(x)] = stepped - x

    def state_dict(self) -> dict:
        return {"delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        delta = state["delta"]
        self.delta = None if delta is None else delta.to(self.device)


# -- PGD training (Madry et al.) ----------------------------------------------------------------------

#: Madry et al., ICLR 2018, Sec. 4 / Appendix: (steps, absolute step size) of the training attack.
#: MNIST: 40 steps of 0.01 at eps 0.3; CIFAR-10: 7 steps of 2/255 at eps 8/255.
PGD_PRESETS = {"mnist": (40, 0.01), "cifar10": (7, 2 / 255)}


@dataclass(frozen=True)
class PGDOptions:
    """``steps`` / ``step_size`` of the training attack (absolute, in input units). ``preset``:
    ``"mnist"`` (40 steps of 0.01, for eps 0.3) or ``"cifar10"`` (7 steps of 2/255, for eps 8/255),
    Madry et al.'s training attacks; explicit ``steps`` / ``step_size`` override it. Without
    either: 7 steps of ``eps / 4``, Madry et al.'s CIFAR-10 ratio. ``random_start``: uniform in
    ball ∩ box (Madry et al.)."""

    steps: int | None = None
    step_size: float | None = None
    preset: str | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        _check_preset("PGDOptions", self.preset, PGD_PRESETS)
        if self.steps is not None:
            check_positive_int("PGDOptions", "steps", self.steps)
        if self.step_size is not None:
            check_positive_float("PGDOptions", "step_size", self.step_size)
        if not isinstance(self.random_start, bool):
            raise RobustlabError(f"PGDOptions.random_start must be a bool, got {self.random_start!r}")

    def resolve(self, eps: float, presets: dict, default_steps: int, default_ratio: float) -> tuple[int, float]:
        """``(steps, step_size)`` at radius ``eps``: explicit values, else the preset, else
        ``default_steps`` of ``default_ratio * eps``."""
        steps, step_size = presets[self.preset] if self.preset is not None else (default_steps, None)
        steps = self.steps if self.steps is not None else steps
        step_size = self.step_size if self.step_size is not None else step_size
        return steps, default_ratio * eps if step_size is None else step_size


class PGDTraining(RandomStartMethod):
    """PGD adversarial training (Madry et al., "Towards deep learning models resistant to
    adversarial attacks", ICLR 2018): minimize the cross-entropy at the last iterate of PGD
    (random start, ``steps`` projected steepest-ascent steps on the cross-entropy), with no clean
    term. Cost per batch: ``steps + 1`` forwards and backwards."""

    name = "pgd"
    Options = PGDOptions

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        threat = batch.required_threat
        steps, step_size = self.options.resolve(threat.eps, PGD_PRESETS, 7, 1 / 4)
        with inner_mode(model, self.config.bn_mode):
            start = threat.random_init(batch.x, self.generator) if self.options.random_start else batch.x
            return ascend(model, batch.x, start, _ce(batch.y), threat=threat, steps=steps, step_size=step_size,
                          scale_loss=batch.scale_loss)


ADVERSARIAL_METHODS = {
    "fgsm": FGSMTraining,
    "fast-fgsm": FastFGSMTraining,
    "free": FreeTraining,
    "pgd": PGDTraining,
}
for _method in ADVERSARIAL_METHODS.values():
    METHODS.add(_method)
