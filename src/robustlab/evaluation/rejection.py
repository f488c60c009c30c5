"""Evaluating a classifier with a reject option (a detector of adversarial examples such as
:class:`robustlab.models.lid.LIDDetector`): the metrics and the adaptive attack.

Metrics (``defenses-2.md`` §0): the detection rate (TPR) on successful adversarial examples at
the detector's threshold, which was set for a false-positive rate on clean data; the clean
rejection rate beside it; and **robust accuracy with rejection**, the fraction of attacked
points that are classified correctly *or* rejected, next to plain robust accuracy.

Attacks (Athalye, Carlini & Wagner, ICML 2018, on Ma et al.; Carlini & Wagner, AISec 2017):

- *detector-unaware*: any attack on the classifier alone, e.g. PGD with the uncapped margin
  loss (Athalye et al.'s ``lid.ipynb``: 100 steps at 8/255); its points are then judged by the
  detector;
- *adaptive*: :func:`detector_aware_loss` climbs the classifier's margin minus ``weight`` times
  the detector's logit above its threshold, through the same forward pass (the detector is
  differentiable); :func:`adaptive_attack` runs PGD with it and binary-searches the weight per
  sample, keeping the first point that is misclassified and not rejected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from robustlab.attacks import PGD
from robustlab.errors import RobustlabError
from robustlab.losses import margin
from robustlab.threat import ThreatModel
from robustlab.validate import is_number

__all__ = ["adaptive_attack", "detector_aware_loss", "rejection_metrics"]


class Detector(Protocol):
    """A detector of adversarial inputs inside a model (e.g. :class:`robustlab.models.LIDDetector`):
    the classifier's logits from a call, its own logit of that call in ``last_score``."""

    threshold: float
    last_score: Tensor | None

    def __call__(self, x: Tensor) -> Tensor: ...

    def reject(self, x: Tensor) -> Tensor: ...


def _detector(model: nn.Module) -> Any:
    found = [m for m in model.modules() if hasattr(m, "last_score") and hasattr(m, "reject")]
    if len(found) != 1:
        raise RobustlabError(f"expected exactly one detector (a module with last_score and reject, such as "
                             f"LIDDetector) inside the model, found {len(found)}")
    return found[0]


def detector_aware_loss(detector: Detector, *, weight: float | Tensor = 10.0, slack: float = 0.5
                        ) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """``(logits, y, targets) -> [N]`` to maximise: ``margin(logits)`` (uncapped) ``- weight *
    max(0, score - threshold + slack)``, where ``score`` is the detector's logit from the forward
    pass that produced ``logits`` (``detector.last_score``). ``weight``: one number, or one per
    sample (a tensor ``[N]`` for batches of ``N``). Use it as ``PGD(loss=...)`` on the
    detector-wrapped model."""
    if isinstance(weight, Tensor):
        if weight.dim() != 1 or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise RobustlabError("a per-sample weight must be a 1-D tensor of finite numbers >= 0")
    elif not is_number(weight, finite=False) or not (weight >= 0 and math.isfinite(weight)):
        raise RobustlabError(f"weight must be a finite number >= 0, got {weight!r}")

    def loss(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        score = detector.last_score
        if score is None or score.shape[0] != logits.shape[0]:
            raise RobustlabError("the detector's score does not belong to these logits: attack the detector-wrapped "
                                 "model, not the bare classifier")
        if isinstance(weight, Tensor) and weight.shape[0] != logits.shape[0]:
            raise RobustlabError(f"{weight.shape[0]} per-sample weights for a batch of {logits.shape[0]}")
        excess = (score - detector.threshold + slack).clamp_min(0)
        return margin(logits, y, targets, kappa=float("inf")) - weight * excess

    loss.__name__ = "detector_aware"
    return loss


def adaptive_attack(model: nn.Module, x: Tensor, y: Tensor, *, threat: ThreatModel, steps: int = 100,
                    initial_weight: float = 10.0, search_steps: int = 4, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, dict[str, Any]]:
    """PGD with :func:`detector_aware_loss`, its detector weight binary-searched per sample
    (``defenses-2.md`` §1(d); the rule of Carlini & Wagner's constant search): every sample starts
    at ``initial_weight``; after a run, a sample that is misclassified and not rejected is done
    (it keeps that point); one the detector rejected gets a larger weight (its lower bound
    becomes the weight; x10 while no upper bound is known, else the midpoint); one that is
    neither rejected nor misclassified gets a smaller one (upper bound, then the midpoint with
    the lower bound). At most ``search_steps`` runs, each on the samples not yet evaded; a sample
    never evaded gets the last run's point. Returns ``(x_adv, info)`` with ``info["evaded"]``
    (bool ``[N]``), ``info["weight"]`` (the last weight tried per sample) and the total
    ``forwards`` / ``backwards``. Cost: at most ``search_steps * steps`` forwards and backwards
    per sample."""
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 1:
        raise RobustlabError(f"search_steps must be a positive integer, got {search_steps!r}")
    if isinstance(initial_weight, bool) or not isinstance(initial_weight, (int, float)) \
            or not (0 < initial_weight < math.inf):
        raise RobustlabError(f"initial_weight must be a positive finite number, got {initial_weight!r}")
    detector = _detector(model)
    x_adv = x.clone()
    n = x.shape[0]
    evaded = torch.zeros(n, dtype=torch.bool, device=x.device)
    weight = torch.full((n,), float(initial_weight), dtype=x.dtype, device=x.device)
    low = torch.zeros_like(weight)
    high = torch.full_like(weight, math.inf)
    forwards = backwards = 0
    for _ in range(search_steps):
        todo = (~evaded).nonzero().flatten()
        if todo.numel() == 0:
            break
        attack = PGD(steps=steps, step_size=2.5 * threat.eps / steps,
                     loss=detector_aware_loss(detector, weight=weight[todo]))
        result = attack(model, x[todo], y[todo], threat=threat, generator=generator)
        forwards, backwards = forwards + result.forwards, backwards + result.backwards
        with torch.no_grad():
            rejected = detector.reject(result.x_adv)
        # Samples evaded earlier are not in todo and keep their point; the others take this run's.
        x_adv[todo] = result.x_adv
        evaded[todo] = result.success & ~rejected
        raise_weight, lower_weight = todo[rejected], todo[~rejected & ~result.success]
        low[raise_weight] = weight[raise_weight]
        high[lower_weight] = weight[lower_weight]
        bounded = torch.isfinite(high)
        new = torch.where(bounded, (low + high) / 2, weight * 10)
        changed = torch.zeros_like(evaded)
        changed[raise_weight] = True
        changed[lower_weight] = True
        weight = torch.where(changed, new, weight)
    return x_adv, {"evaded": evaded, "weight": weight, "forwards": forwards, "backwards": backwards}


def rejection_metrics(detector: Detector, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, float]:
    """Metrics of a classifier with a reject option on clean ``x`` and attacked ``x_adv``
    (same samples, same order):

    - ``clean_accuracy``; ``clean_rejection_rate`` (clean inputs rejected: the false positives);
    - ``robust_accuracy`` (attacked points classified correctly, rejection ignored);
    - ``robust_accuracy_with_rejection`` (attacked points classified correctly or rejected);
    - ``attack_success_rate`` (attacked points misclassified, among the clean-correct ones) and
      ``detection_rate`` (the TPR: of those successful adversarial points, the fraction rejected;
      NaN when there are none).
    """
    if x.shape != x_adv.shape or x.shape[0] != y.shape[0]:
        raise RobustlabError(f"x {tuple(x.shape)}, x_adv {tuple(x_adv.shape)} and y {tuple(y.shape)} must match")
    with torch.no_grad():
        clean_correct = detector(x).argmax(1) == y
        clean_rejected = detector.reject(x)
        adv_correct = detector(x_adv).argmax(1) == y
        adv_rejected = detector.reject(x_adv)
    fooled = clean_correct & ~adv_correct
    return {
        "samples": int(x.shape[0]),
        "clean_accuracy": float(clean_correct.float().mean()),
        "clean_rejection_rate": float(clean_rejected.float().mean()),
        "robust_accuracy": float(adv_correct.float().mean()),
        "robust_accuracy_with_rejection": float((adv_correct | adv_rejected).float().mean()),
        "attack_success_rate": float(fooled.float().sum() / clean_correct.float().sum().clamp_min(1)),
        "detection_rate": float(adv_rejected[fooled].float().mean()) if fooled.any() else float("nan"),
    }
