"""The seven objectives of Carlini & Wagner (S&P 2017, Sec. V-A), with the printed errors fixed.

Each objective maps logits ``[N, K]`` (pre-softmax; ``K >= 2``), labels ``[N]`` and targets
``[N]`` (or ``None`` for untargeted) to ``f [N]``, which the attack *minimises* (next to the
distance). ``Z`` are the logits, ``F = softmax(Z)`` is computed in at least float32 through
``log_softmax``, and ``t`` is the target class.

Targeted forms (``t`` must win):

==== ======================================= ===========================================
f1   ``CE_t - log 2 = -log F_t - log 2``     printed ``-loss_{F,t} + 1`` has the wrong sign
f2   ``(max_{i != t} F_i - F_t)^+``          as printed
f3   ``softplus(max_{i != t} F_i - F_t) - log 2``  as printed
f4   ``(0.5 - F_t)^+``                       as printed
f5   ``-log(2 F_t)``                         printed ``-log(2 F_t - 2)`` is undefined
f6   ``max(max_{i != t} Z_i - Z_t, -kappa)`` as printed, with the confidence ``kappa``
f7   ``softplus(max_{i != t} Z_i - Z_t) - log 2``  as printed
==== ======================================= ===========================================

(Corrections follow ``../shared/reference/algorithms.md`` §1; Carlini's own answer key marks
f1, f3, f4, f5 and f7 as wrong as printed.) After correction f1 and f5 are the same function,
``-log(2 F_t)``: f1 is computed as a cross-entropy, f5 as a log-probability.

Untargeted forms (the true class ``y`` must lose): f2, f3, f6 and f7 use the margin the other
way round, e.g. f6 ``= max(Z_y - max_{i != y} Z_i, -kappa)``; f1, f4 and f5, which only look at
one class's probability, aim at the most likely wrong class ``j = argmax_{i != y} F_i`` (so
f4 ``= (0.5 - F_j)^+``).

**What f <= 0 means.** "Success" here is the paper's ``C(x') = t`` with ties counted as
success: the target attains the largest logit (untargeted: ``y`` is not the unique largest).

- f2, f3, f6, f7: ``f <= 0  <=>  success``, both ways; at an exact tie ``f == 0``. For f2 and
  f3 this holds up to the float resolution of the softmax (logits closer than about one ulp
  give equal probabilities). f3 and f7 are evaluated as ``log1p(expm1(m) / 2)`` so that the
  sign of ``f`` is the sign of the margin ``m`` even for tiny margins, where
  ``softplus(m) - log 2`` rounds to 0.
- f1, f4, f5: ``f <= 0  =>  success`` only (``F_t >= 1/2`` makes ``t`` the largest). The
  converse fails: ``F = (0.4, 0.3, 0.3)`` has class 0 winning with ``f > 0``.

The library's success criterion (:func:`robustlab.attacks.base.is_adversarial`) takes the
argmax, which breaks exact ties towards the lowest class index; off ties the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError

__all__ = ["OBJECTIVES", "objective_floor", "get_objective", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]

Objective = Callable[..., Tensor]
_LOG2 = math.log(2.0)
# Above this margin softplus(m) - log 2 is computed directly (expm1 would overflow at ~88).
_SOFTPLUS_SWITCH = 20.0


def _check_classes(logits: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise RobustlabError(
            f"the C&W objectives need logits [N, K] with at least 2 classes, got {tuple(logits.shape)}")


def _split(values: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
    """``(values[cls], max of the other classes)``, each ``[N]``."""
    own = values.gather(1, cls[:, None]).squeeze(1)
    other = values.scatter(1, cls[:, None], float("-inf")).amax(dim=1)
    return own, other


def _margin(values: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """``max_{i != t} v_i - v_t`` (targeted) or ``v_y - max_{i != y} v_i``: <= 0 on success."""
    if targets is None:
        own, other = _split(values, labels)
        return own - other
    own, other = _split(values, targets)
    return other - own


def _log_probs(logits: Tensor) -> Tensor:
    _check_classes(logits)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits.to(dtype), dim=1)


def _winner_log_prob(log_probs: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """``log F_t`` (targeted) or ``log F_j`` of the most likely wrong class ``j`` (untargeted)."""
    if targets is None:
        return _split(log_probs, labels)[1]
    return log_probs.gather(1, targets[:, None]).squeeze(1)


def _softplus_minus_log2(m: Tensor) -> Tensor:
    """``softplus(m) - log 2 = log1p(expm1(m) / 2)``, with the sign of ``m`` kept exactly."""
    small = torch.log1p(torch.expm1(m.clamp_max(_SOFTPLUS_SWITCH)) / 2)
    return torch.where(m > _SOFTPLUS_SWITCH, F.softplus(m) - _LOG2, small)


def f1(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``CE_t - log 2`` (printed: ``-loss_{F,t} + 1``, wrong sign). f <= 0 is sufficient only."""
    log_probs = _log_probs(logits)
    return -_winner_log_prob(log_probs, labels, targets) - _LOG2


def f2(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``(max_{i != t} F_i - F_t)^+``. f <= 0 iff success."""
    return _margin(_log_probs(logits).exp(), labels, targets).clamp_min(0)


def f3(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``softplus(max_{i != t} F_i - F_t) - log 2``. f <= 0 iff success."""
    return _softplus_minus_log2(_margin(_log_probs(logits).exp(), labels, targets))


def f4(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``(0.5 - F_t)^+``. f <= 0 is sufficient only."""
    return (0.5 - _winner_log_prob(_log_probs(logits), labels, targets).exp()).clamp_min(0)


def f5(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``-log(2 F_t)`` (printed: ``-log(2 F_t - 2)``, undefined). f <= 0 is sufficient only."""
    return -(_winner_log_prob(_log_probs(logits), labels, targets) + _LOG2)


def f6(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``max(max_{i != t} Z_i - Z_t, -kappa)``, the paper's choice. f <= 0 iff success; the
    attack pushes on until the margin reaches ``kappa``."""
    _check_classes(logits)
    return _margin(logits, labels, targets).clamp_min(-kappa)


def f7(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """``softplus(max_{i != t} Z_i - Z_t) - log 2``. f <= 0 iff success."""
    _check_classes(logits)
    return _softplus_minus_log2(_margin(logits, labels, targets))


OBJECTIVES: dict[str, Objective] = {"f1": f1, "f2": f2, "f3": f3, "f4": f4, "f5": f5, "f6": f6, "f7": f7}
# Objectives that use the confidence kappa; for the others it must be 0.
KAPPA_OBJECTIVES = frozenset({"f6"})


def objective_floor(name: str, kappa: float = 0.0) -> float:
    """The infimum of objective ``name`` (f3's is ``softplus(-1) - log 2``: its margin is one of
    probabilities, at least -1). The attacks subtract it, so that their
    loss is non-negative as in the authors' code (for f6 this gives ``max(m + kappa, 0)``) and
    abort-early's relative test ``loss > 0.9999 * previous`` means "less than 0.01% progress"."""
    if name == "f6":
        return -kappa
    if name == "f3":  # softplus(m) - log 2 of a probability margin m >= -1
        return math.log1p(math.exp(-1.0)) - _LOG2
    return 0.0 if name in ("f2", "f4") else -_LOG2


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise RobustlabError(f"unknown C&W objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
