"""Per-sample losses on logits, in the form an attack *climbs*.

Every loss has the signature ``loss(logits, labels, targets=None) -> Tensor[N]``: ``logits`` is
``[N, K]`` (pre-softmax), ``labels`` the true classes ``[N]``, ``targets`` the classes a
targeted attack aims for (``None`` for untargeted). The returned value is what the attack
maximises: untargeted losses grow as the true class loses, targeted ones as the target wins.

The loss is what an attack climbs; whether the attack *succeeded* is decided separately by
:func:`robustlab.attacks.base.is_adversarial` on a fresh forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError

Loss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

__all__ = ["cross_entropy", "margin", "dlr", "LOSSES", "get_loss"]


def _other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """Largest logit among the classes other than ``cls`` ([N])."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Untargeted: ``CE(logits, y)``. Targeted: ``-CE(logits, t)``."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, kappa: float = 0.0) -> Tensor:
    """Carlini & Wagner's margin (their f6), capped at the confidence ``kappa``.

    Untargeted: ``min(max_{j != y} Z_j - Z_y, kappa)``; targeted: ``min(Z_t - max_{j != t} Z_j,
    kappa)``. Madry et al.'s "CW+" evaluation uses ``kappa = 50``.
    """
    cls = labels if targets is None else targets
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = _other_max(logits, cls)
    value = other - own if targets is None else own - other
    return value.clamp_max(kappa)


def dlr(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6 and its targeted form eq. 7).

    Untargeted: ``-(Z_y - max_{j != y} Z_j) / (Z_pi1 - Z_pi3)``, needs at least 3 classes.
    Targeted: ``-(Z_y - Z_t) / (Z_pi1 - (Z_pi3 + Z_pi4) / 2)``, needs at least 4 classes.
    (``pi`` sorts the logits in decreasing order.) Shift- and scale-invariant in the logits.
    """
    k = logits.shape[1]
    need = 3 if targets is None else 4
    if k < need:
        kind = "untargeted" if targets is None else "targeted"
        raise RobustlabError(
            f"the {kind} DLR loss needs at least {need} classes, the model has {k}; "
            "use the 'margin' loss instead (it is DLR without the scale normalisation)"
        )
    top = logits.topk(need, dim=1).values
    own = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        return -(own - _other_max(logits, labels)) / (top[:, 0] - top[:, 2] + 1e-12)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(own - target) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


LOSSES: dict[str, Callable[..., Tensor]] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(loss: str | Loss, **options: float) -> Loss:
    """Resolve a loss name (``"ce"``, ``"margin"``, ``"dlr"``) or pass a callable through.

    ``options`` go to the loss (e.g. ``kappa`` for ``margin``).
    """
    if callable(loss):
        return partial(loss, **options) if options else loss
    if loss not in LOSSES:
        raise RobustlabError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    fn = LOSSES[loss]
    return partial(fn, **options) if options else fn


def looks_like_probabilities(logits: Tensor, tol: float = 1e-3) -> bool:
    """True if every row is non-negative and sums to 1: softmax outputs, not logits."""
    if logits.numel() == 0 or logits.shape[1] < 2:
        return False
    with torch.no_grad():
        rows = logits.detach().float()
        return bool((rows >= 0).all() and ((rows.sum(dim=1) - 1).abs() <= tol).all())
