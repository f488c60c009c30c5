"""Jacobian-based Saliency Map Attack (JSMA; Papernot et al., EuroS&P 2016, "The Limitations of
Deep Learning in Adversarial Settings"), pairwise saliency, batched over images.

Defaults follow the paper (Sec. IV/V: theta = +1, Upsilon = 14.5% on MNIST) and Cleverhans'
``SaliencyMapMethod`` (``theta=1.0, gamma=1.0``, pairwise search, random targets when none are
given).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import flat
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial, require_two_classes
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
# Features per image whose pairs seed the lower bound of the pruned search.
_SEED_FEATURES = 8


def _pair_scores(a: Tensor, b: Tensor) -> Tensor:
    """``[M, K, K]`` pair saliency ``relu(a_p + a_q) * relu(-(b_p + b_q))`` from ``[M, K]`` sign-folded
    gradients: positive exactly on the pairs satisfying the sign conditions, 0 elsewhere."""
    score = (a[:, :, None] + a[:, None, :]).clamp_(min=0)
    return score.mul_((b[:, :, None] + b[:, None, :]).neg_().clamp_(min=0))


def _best_of(a: Tensor, b: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Best pair of each row of ``[M, K]`` gradients, rows in chunks; ``index`` (``[M, K]``) maps
    positions to feature numbers, increasing over the positions that can win (so ties resolve as
    in the full search). Returns ``(p, q, top score)``."""
    m, k = a.shape
    p = torch.zeros(m, dtype=torch.int64, device=a.device)
    q, top = torch.zeros_like(p), torch.zeros(m, dtype=a.dtype, device=a.device)
    rows = max(1, _PAIR_CHUNK // (k * k))
    for s in range(0, m, rows):
        score = _pair_scores(a[s:s + rows], b[s:s + rows])
        score.diagonal(dim1=1, dim2=2).fill_(0)
        top[s:s + rows], best = score.flatten(1).max(dim=1)
        p[s:s + rows], q[s:s + rows] = best // k, best % k
    if index is not None:
        p, q = index.gather(1, p[:, None]).squeeze(1), index.gather(1, q[:, None]).squeeze(1)
    return p, q, top


def _pick_pairs(alpha: Tensor, beta: Tensor, searchable: Tensor, increase: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Best pair per image by pairwise saliency.

    ``alpha``, ``beta``: ``[M, F]`` gradients of the target output and of the sum of the other
    outputs; ``searchable``: ``bool[M, F]``, the search set. Returns ``(p, q, found)``: the pair
    maximising ``-alpha_pq * beta_pq`` subject to ``alpha_pq > 0, beta_pq < 0`` (pair sums; signs
    flipped when decreasing), ``p != q`` both searchable, the first such pair in ``(p, q)`` order
    on ties; ``found`` is False where no pair qualifies.

    Exact, but pruned: the best pair among the top features by ``alpha`` and by ``-beta`` gives a
    score ``L``; a feature ``p`` can belong to the best pair only if its bound
    ``relu(alpha_p + max alpha) * relu(-(beta_p + min beta))`` reaches ``L`` (rounding is monotone,
    so the bound holds in floating point too). The full ``F x F`` search then runs on the
    surviving features, in increasing order, which returns the same pair as a search over all
    ``F x F`` pairs; rows where pruning keeps too many features get the full search.
    """
    m, features = alpha.shape
    sign = 1.0 if increase else -1.0
    # Signs folded in, and features outside the search set made unable to satisfy alpha_pq > 0.
    a = torch.where(searchable, sign * alpha, -math.inf)
    b = sign * beta
    seeds = min(features, _SEED_FEATURES)
    seed_index = torch.cat([a.topk(seeds, dim=1).indices,
                            torch.where(searchable, b, math.inf).topk(seeds, dim=1, largest=False).indices], dim=1)
    seed_scores = _pair_scores(a.gather(1, seed_index), b.gather(1, seed_index))
    seed_scores.masked_fill_(seed_index[:, :, None] == seed_index[:, None, :], 0)
    lower = seed_scores.flatten(1).amax(dim=1)
    a_max = a.amax(dim=1, keepdim=True)
    b_min = torch.where(searchable, b, math.inf).amin(dim=1, keepdim=True)
    bound = (a + a_max).clamp_(min=0).mul_((b + b_min).neg_().clamp_(min=0))
    keep = searchable & (bound >= lower[:, None])
    kept = keep.sum(dim=1)
    pruned = (lower > 0) & (kept <= max(2, features // 4))
    p = torch.zeros(m, dtype=torch.int64, device=a.device)
    q, top = torch.zeros_like(p), torch.zeros_like(lower)
    if bool(pruned.any()):
        rows = pruned.nonzero().squeeze(1)
        width = int(kept[rows].max())
        # A stable sort of "not kept" lists each row's kept features first, in increasing order.
        index = torch.sort((~keep[rows]).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        slot_kept = torch.arange(width, device=a.device)[None, :] < kept[rows, None]
        a_kept = torch.where(slot_kept, a[rows].gather(1, index), -math.inf)
        p[rows], q[rows], top[rows] = _best_of(a_kept, b[rows].gather(1, index), index)
    full = (~pruned).nonzero().squeeze(1)
    if full.numel():
        p[full], q[full], top[full] = _best_of(a[full], b[full])
    return p, q, top > 0


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
    exact over all ``F x F`` pairs, pruned by a bound (see ``_pick_pairs``) so that a step costs
    about as much as its two gradients.

    Search domain: features that can still move by more than ``search_margin`` of the box width
    in the direction of ``theta``. Cleverhans uses ``0`` (every feature below the bound);
    torchattacks' ``x < 0.99`` is ``0.01``, the default here: on MNIST, many stroke pixels sit
    just below 1, and spending a pair on them changes the L0 count but not the output (the
    JSMA benchmark, LeNet, 100 images, 40 pairs: success 76% -> 84%, median 42 -> 38 pixels).

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
        search_margin: room a feature needs, in units of the box width, to be searched; in
            ``[0, 1)``, default 0.01 (torchattacks).
        max_distortion: ``Upsilon``, the largest fraction of features changed, 0.145 (paper,
            MNIST).

    Minimum-norm: ``extras["best_distance"]`` is the L0 (pixel) distance where successful,
    ``inf`` elsewhere. A failed image returns its last iterate.

    Cost per step and still-active image: one forward and two backwards (``alpha`` and ``beta``);
    one forward per image still active at the end, a single-image forward to learn the number of
    classes when untargeted, and the template's two forwards.
    """

    name = "jsma"
    norms = frozenset({"L0"})
    minimum_norm = True

    variant: str = "z"
    theta: float = 1.0
    max_distortion: float = 0.145
    search_margin: float = 0.01

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise RobustlabError(f"unknown variant {self.variant!r}; choose 'z' (logits) or 'f' (softmax)")
        if not (-1 <= self.theta <= 1) or self.theta == 0:
            raise RobustlabError(
                f"theta must be nonzero and lie in [-1, 1] (units of the box width), got {self.theta!r}"
            )
        if not 0 < self.max_distortion <= 1:
            raise RobustlabError(f"max_distortion must lie in (0, 1], got {self.max_distortion!r}")
        if not 0 <= self.search_margin < 1:
            raise RobustlabError(f"search_margin must lie in [0, 1) (units of the box width), got {self.search_margin!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        lo, hi = threat.bounds
        increase = self.theta > 0
        goal = self._random_targets(oracle, x, y, generator) if targets is None else targets
        x_adv = x.clone()
        features = flat(x_adv)  # a view: writing it updates x_adv
        room = self.search_margin * (hi - lo)
        searchable = features < hi - room if increase else features > lo + room
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        max_pairs = int(self.max_distortion * features.shape[1] / 2)
        for step in range(max_pairs + 1):
            ta = None if targets is None else targets[active]
            if step == max_pairs:
                success[active] = is_adversarial(oracle.logits(x_adv[active]), y[active], ta)
                break
            goal_a = goal[active]
            _, (alpha, beta), logits = oracle.losses_and_grads(
                x_adv[active], (_target_output(self.variant, goal_a), _other_outputs(self.variant, goal_a)))
            require_two_classes(logits)
            reached = is_adversarial(logits, y[active], ta)
            success[active] = reached
            active, alpha, beta = active[~reached], alpha[~reached], beta[~reached]
            if active.numel() == 0:
                break
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
