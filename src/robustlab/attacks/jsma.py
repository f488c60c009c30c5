"""Jacobian-based Saliency Map Attack (JSMA; Papernot et al., EuroS&P 2016, "The Limitations of
Deep Learning in Adversarial Settings"), pairwise saliency, batched over images.

Defaults follow the paper (Sec. IV/V: theta = +1, Upsilon = 14.5% on MNIST) and Cleverhans'
``SaliencyMapMethod`` (``theta=1.0, gamma=1.0``, pairwise search, random targets when none are
given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from robustlab._tensors import flat
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial
from robustlab.attacks.fmn import require_two_classes
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

__all__ = ["JSMA", "JacobianSaliencyMap"]

VARIANTS = ("z", "f")


def _outputs(logits: Tensor, variant: str) -> Tensor:
    return logits if variant == "z" else logits.softmax(dim=1)


def _target_output(variant: str, targets: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda logits: _outputs(logits, variant).gather(1, targets[:, None]).squeeze(1)


def _other_outputs(variant: str, targets: Tensor) -> Callable[[Tensor], Tensor]:
    def other(logits: Tensor) -> Tensor:
        out = _outputs(logits, variant)
        return out.sum(dim=1) - out.gather(1, targets[:, None]).squeeze(1)

    return other


# Pair scores are [rows, F, F]; images are processed in chunks of about this many elements so
# that the temporaries stay small (a [100, 784, 784] float tensor alone is 245 MB).
_PAIR_CHUNK = 2**22


def _pick_pairs(alpha: Tensor, beta: Tensor, searchable: Tensor, increase: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Best pair per image by pairwise saliency.

    ``alpha``, ``beta``: ``[M, F]`` gradients of the target output and of the sum of the other
    outputs; ``searchable``: ``bool[M, F]``, the search set. Pair sums form ``[M, F, F]`` outer
    sums (computed in chunks of images). Returns ``(p, q, found)``: the pair maximising
    ``-alpha_pq * beta_pq`` subject to ``alpha_pq > 0, beta_pq < 0`` (signs flipped when
    decreasing), ``p != q`` both searchable; ``found`` is False where no pair qualifies.
    """
    m, features = alpha.shape
    sign = 1.0 if increase else -1.0
    # Signs folded in, and features outside the search set made unable to satisfy alpha_pq > 0.
    a1 = torch.where(searchable, sign * alpha, -math.inf)
    b1 = sign * beta
    p = torch.zeros(m, dtype=torch.int64, device=alpha.device)
    q, found = torch.zeros_like(p), torch.zeros(m, dtype=torch.bool, device=alpha.device)
    rows = max(1, _PAIR_CHUNK // (features * features))
    for s in range(0, m, rows):
        # score = relu(alpha_pq) * relu(-beta_pq): positive exactly on the valid pairs, 0 elsewhere.
        score = (a1[s:s + rows, :, None] + a1[s:s + rows, None, :]).clamp_(min=0)
        score.mul_((b1[s:s + rows, :, None] + b1[s:s + rows, None, :]).neg_().clamp_(min=0))
        score.diagonal(dim1=1, dim2=2).fill_(0)
        top, best = score.flatten(1).max(dim=1)
        p[s:s + rows], q[s:s + rows], found[s:s + rows] = best // features, best % features, top > 0
    return p, q, found


@dataclass(frozen=True, kw_only=True)
class JacobianSaliencyMap(Attack):
    """JSMA with the pairwise saliency map, L0 (``x`` of shape ``[N, ...]``).

    Per step and image: ``alpha = grad F_t``, ``beta = grad sum_{j != t} F_j`` (``F`` = logits
    for ``variant="z"``, softmax for ``"f"``; on softmax ``beta = -alpha``, and JSMA-F fails on
    distilled networks whose softmax saturates). Over pairs ``(p, q)`` of the search set it picks
    ``argmax -alpha_pq * beta_pq`` with ``alpha_pq > 0`` and ``beta_pq < 0`` (pair sums; signs
    flipped for ``theta < 0``), moves both features by ``theta * (hi - lo)`` clipped to the box
    and removes them from the search set. It stops when the target wins, when
    ``floor(max_distortion * F / 2)`` pairs have been changed (so at most ``max_distortion`` of
    the features), or when no pair qualifies. All images advance together; the pair search is
    one ``[M, F, F]`` tensor per step (MNIST: 784 x 784 per image).

    Features vs pixels: JSMA changes *features* (each channel of each pixel), and
    ``max_distortion`` bounds the fraction of features; robustlab's L0 counts *pixels* (a pixel
    counts once if any channel changed), so the reported distance is at most the number of
    features changed (``extras["changed_features"]``); they coincide for one-channel images.

    Untargeted calls (``targets=None``): as in Cleverhans, ART and torchattacks, each image gets
    a random target class (from ``generator``); the attack then stops as soon as the image is
    misclassified (the untargeted criterion), which may be before the target wins.

    Args:
        variant: ``"z"`` (saliency on logits, default) or ``"f"`` (on softmax).
        theta: change per selected feature in units of the box width; ``+1`` saturates to the
            upper bound (paper), negative values decrease features. Nonzero, in ``[-1, 1]``.
        max_distortion: ``Upsilon``, the largest fraction of features changed, 0.145 (paper,
            MNIST).

    Minimum-norm: ``extras["best_distance"]`` is the L0 (pixel) distance where successful,
    ``inf`` elsewhere. A failed image returns its last iterate.

    Cost per step and still-active image: 2 forwards and backwards (``alpha`` and ``beta``);
    one forward per image still active at the end, a single-image forward to learn the number of
    classes when untargeted, and the template's two forwards.
    """

    name = "jsma"
    norms = frozenset({"L0"})
    minimum_norm = True

    variant: str = "z"
    theta: float = 1.0
    max_distortion: float = 0.145

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise RobustlabError(f"unknown variant {self.variant!r}; choose 'z' (logits) or 'f' (softmax)")
        if not (-1 <= self.theta <= 1) or self.theta == 0:
            raise RobustlabError(
                f"theta must be nonzero and lie in [-1, 1] (units of the box width), got {self.theta!r}"
            )
        if not 0 < self.max_distortion <= 1:
            raise RobustlabError(f"max_distortion must lie in (0, 1], got {self.max_distortion!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        lo, hi = threat.bounds
        increase = self.theta > 0
        goal = self._random_targets(oracle, x, y, generator) if targets is None else targets
        x_adv = x.clone()
        features = flat(x_adv)  # a view: writing it updates x_adv
        searchable = features < hi if increase else features > lo
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        max_pairs = int(self.max_distortion * features.shape[1] / 2)
        for step in range(max_pairs + 1):
            ta = None if targets is None else targets[active]
            if step == max_pairs:
                success[active] = is_adversarial(oracle.logits(x_adv[active]), y[active], ta)
                break
            goal_a = goal[active]
            _, alpha, logits = oracle.loss_and_grad(x_adv[active], _target_output(self.variant, goal_a))
            require_two_classes(logits)
            reached = is_adversarial(logits, y[active], ta)
            success[active] = reached
            active, alpha, goal_a = active[~reached], alpha[~reached], goal_a[~reached]
            if active.numel() == 0:
                break
            _, beta, _ = oracle.loss_and_grad(x_adv[active], _other_outputs(self.variant, goal_a))
            p, q, found = _pick_pairs(flat(alpha), flat(beta), searchable[active], increase)
            active, p, q = active[found], p[found], q[found]
            if active.numel() == 0:
                break
            for feature in (p, q):
                features[active, feature] = (features[active, feature] + self.theta * (hi - lo)).clamp(lo, hi)
                searchable[active, feature] = False
        distance = threat.distance(x, x_adv)
        return x_adv, {
            "best_distance": torch.where(success, distance, torch.full_like(distance, math.inf)),
            "changed_features": (flat(x_adv) != flat(x)).sum(dim=1),
        }

    @staticmethod
    def _random_targets(oracle: ModelOracle, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        """A uniformly random wrong class per image (one forward to learn the number of classes)."""
        classes = oracle.logits(x[:1]).shape[1]
        if classes < 2:
            raise RobustlabError(f"JSMA needs a model with at least 2 classes, got {classes}")
        offset = torch.randint(1, classes, y.shape, generator=generator, device=y.device)
        return (y + offset) % classes


JSMA = JacobianSaliencyMap
