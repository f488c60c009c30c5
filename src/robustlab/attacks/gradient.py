"""Fixed-budget gradient attacks: FGSM, iterative FGSM (BIM) and PGD with restarts.

Cost, per sample: FGSM 1 forward + 1 backward; BIM and PGD ``steps`` forwards and backwards
per restart, plus one forward to score the last iterate. The template adds two forwards (clean
logits for checks and targets, and the fresh success check).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import per_sample
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial
from robustlab.errors import RobustlabError
from robustlab.losses import Loss, get_loss
from robustlab.threat import ThreatModel

__all__ = ["FastGradientMethod", "FGSM", "ProjectedGradientDescent", "PGD", "BasicIterativeMethod", "BIM"]


@dataclass(frozen=True, kw_only=True)
class LossMixin:
    """The ``loss`` and ``kappa`` hyperparameters shared by gradient attacks."""

    loss: str | Callable[..., Tensor] = "ce"
    kappa: float = 0.0

    @property
    def loss_fn(self) -> Loss:
        name = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", "")
        return get_loss(self.loss, kappa=self.kappa) if name == "margin" else get_loss(self.loss)


@dataclass(frozen=True, kw_only=True)
class FastGradientMethod(LossMixin, Attack):
    """FGSM (Goodfellow et al., ICLR 2015): one step of size eps along the steepest-ascent
    direction of the loss: ``x + eps * sign(grad)`` for L∞ and ``x + eps * grad/||grad||_2`` for L2.

    Cost: 1 forward + 1 backward per sample.
    """

    name = "fgsm"
    norms = frozenset({"Linf", "L2"})

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if threat.unbounded:
            raise RobustlabError("FGSM steps by eps; it needs a bounded threat model")
        loss_fn = self.loss_fn
        _, grad, _ = oracle.loss_and_grad(x, lambda logits: loss_fn(logits, y, targets))
        return x + threat.eps * threat.steepest_direction(grad, x), {}


FGSM = FastGradientMethod


@dataclass
class BestIterate:
    """Per-sample best iterate: successful beats unsuccessful, then higher loss wins."""

    x: Tensor
    loss: Tensor
    success: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> BestIterate:
        n = x.shape[0]
        return cls(x.clone(), x.new_full((n,), -math.inf), torch.zeros(n, dtype=torch.bool, device=x.device))

    def update(self, idx: Tensor | None, x: Tensor, loss: Tensor, success: Tensor) -> None:
        """Offer candidates ``x`` for the samples ``idx`` (all samples when ``None``)."""
        old_loss = self.loss if idx is None else self.loss[idx]
        old_success = self.success if idx is None else self.success[idx]
        better = (success & ~old_success) | ((success == old_success) & (loss > old_loss))
        new_x = torch.where(per_sample(better, x), x, self.x if idx is None else self.x[idx])
        new_loss = torch.where(better, loss, old_loss)
        new_success = old_success | success
        if idx is None:
            self.x, self.loss, self.success = new_x, new_loss, new_success
        else:
            self.x[idx], self.loss[idx], self.success[idx] = new_x, new_loss, new_success


@dataclass(frozen=True, kw_only=True)
class ProjectedGradientDescent(LossMixin, Attack):
    """PGD (Madry et al., ICLR 2018) for L∞, L2 and L1, with random start and restarts.

    Each step moves ``step_size`` along the threat model's steepest-ascent direction of the loss
    (sign of the gradient for L∞, normalised gradient for L2, sparse top-coordinates direction
    for L1) and projects back onto ball ∩ box. Every iterate's loss and success come from the
    same forward pass that gives the gradient, so the best iterate per sample (successful first,
    then highest loss) is kept at no extra cost, and so is the best over restarts.

    Args:
        steps: iterations per restart (Madry et al. evaluate MNIST with 40 and 100).
        step_size: absolute step; default ``2.5 * eps / steps``, the rule of Madry et al.'s
            ``robustness`` library, which reaches the boundary of the ball from anywhere in it.
        random_start: start uniformly in ball ∩ box (Madry et al.); otherwise at ``x``.
        restarts: independent starts; a sample counts as robust only if every restart fails.
            Restarts after the first run only on the samples not yet broken.
        loss: ``"ce"``, ``"margin"`` (with ``kappa``), ``"dlr"`` or a callable
            ``(logits, labels, targets) -> [N]`` to maximise.
        early_stop: stop updating a sample once it is adversarial and drop it from the batch
            (saves compute; the success rate is unchanged, the loss of broken samples is lower).

    Cost per sample: ``restarts * (steps)`` forwards and backwards at most, plus one forward
    per restart for the last iterate.
    """

    name = "pgd"
    norms = frozenset({"Linf", "L2", "L1"})

    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RobustlabError(f"steps must be a positive integer, got {self.steps!r}")
        self._check_restarts_and_step_size()

    def _check_restarts_and_step_size(self) -> None:
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise RobustlabError(f"restarts must be a positive integer, got {self.restarts!r}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise RobustlabError(f"step_size must be a positive finite number, got {self.step_size!r}")

    def _step_size(self, threat: ThreatModel) -> float:
        if self.step_size is not None:
            return self.step_size
        if threat.unbounded:
            raise RobustlabError(f"{type(self).__name__} needs an explicit step_size for an unbounded threat model")
        return 2.5 * threat.eps / self.steps

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        best = BestIterate.empty(x)
        winning_restart = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for restart in range(self.restarts):
            if restart > 0:
                todo = todo[~best.success[todo]]
                if todo.numel() == 0:
                    break
            t = None if targets is None else targets[todo]
            run = self._descend(oracle, x[todo], y[todo], t, threat, generator)
            was_success = best.success[todo].clone()
            best.update(todo, run.x, run.loss, run.success)
            winning_restart[todo[run.success & ~was_success]] = restart
        return best.x, {"restart": winning_restart}

    def _descend(self, oracle: ModelOracle, x: Tensor, y: Tensor, targets: Tensor | None, threat: ThreatModel,
                 generator: torch.Generator | None) -> BestIterate:
        """One start: ``steps`` projected steps; returns the best iterate per sample."""
        loss_fn, alpha = self.loss_fn, self._step_size(threat)
        x_adv = threat.random_init(x, generator) if self.random_start else x.clone()
        best = BestIterate.empty(x)
        active: Tensor | None = torch.arange(x.shape[0], device=x.device) if self.early_stop else None
        box = None if self.early_stop else threat.box(x)  # L∞ without compaction: the bounds once
        for _ in range(self.steps):
            if active is None:
                xa, x0, ya, ta = x_adv, x, y, targets
            else:
                xa, x0, ya = x_adv[active], x[active], y[active]
                ta = None if targets is None else targets[active]
            loss, grad, logits = oracle.loss_and_grad(xa, lambda z: loss_fn(z, ya, ta))
            success = is_adversarial(logits, ya, ta)
            best.update(active, xa, loss, success)
            stepped = xa + alpha * threat.steepest_direction(grad, xa)
            stepped = threat.project(x0, stepped) if box is None else stepped.clamp(*box)
            if active is None:
                x_adv = stepped
            else:
                x_adv[active] = stepped
                active = active[~success]
                if active.numel() == 0:
                    return best
        idx = active
        xa = x_adv if idx is None else x_adv[idx]
        ya = y if idx is None else y[idx]
        ta = targets if idx is None or targets is None else targets[idx]
        logits = oracle.logits(xa)
        best.update(idx, xa, loss_fn(logits, ya, ta), is_adversarial(logits, ya, ta))
        return best


PGD = ProjectedGradientDescent


@dataclass(frozen=True, kw_only=True)
class BasicIterativeMethod(ProjectedGradientDescent):
    """Iterative FGSM / BIM (Kurakin et al., 2016): PGD without random start.

    Defaults follow the paper, on the 0–255 scale of the box: step 1 and ``min(eps + 4,
    1.25 eps)`` steps (``steps=None`` picks that; it needs a bounded threat model).
    ``targets="least-likely"`` gives the paper's iterative least-likely class method.
    """

    name = "bim"
    norms = frozenset({"Linf", "L2"})

    steps: int | None = None  # type: ignore[assignment]
    random_start: bool = False

    def __post_init__(self) -> None:
        # steps=None (the paper's eps-dependent schedule) is valid; the rest is checked as for PGD.
        if self.steps is not None:
            super().__post_init__()
        else:
            self._check_restarts_and_step_size()

    def _schedule(self, threat: ThreatModel) -> tuple[int, float]:
        scale = (threat.bounds[1] - threat.bounds[0]) / 255
        step = self.step_size if self.step_size is not None else scale
        if self.steps is not None:
            return self.steps, step
        if threat.unbounded:
            raise RobustlabError("BIM's default number of steps depends on eps; give steps= for an unbounded threat")
        eps255 = threat.eps / scale
        return max(1, math.ceil(min(eps255 + 4, 1.25 * eps255))), step

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        steps, step = self._schedule(threat)
        pgd = ProjectedGradientDescent(steps=steps, step_size=step, random_start=self.random_start,
                                       restarts=self.restarts, loss=self.loss, kappa=self.kappa,
                                       early_stop=self.early_stop)
        return pgd._run(oracle, x, y, threat=threat, targets=targets, generator=generator)


BIM = BasicIterativeMethod
