"""Decoupled Direction and Norm attack (DDN; Rony et al., CVPR 2019, "Decoupling Direction and
Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses"), Algorithm 1.

Reference implementations: ``jeromerony/fast_adversarial`` and ``ddn`` in Rony's ``adv_lib``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, difference_of_logits, is_adversarial, require_two_classes
from robustlab.attacks.fmn import MinimumNormBest, cosine_schedule, farthest_corner, normalize_l2
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

__all__ = ["DecoupledDirectionNorm", "DDN"]


def _descent_loss(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """What DDN descends: ``-CE(logits, y)`` (untargeted) or ``CE(logits, t)`` (targeted)."""
    require_two_classes(logits)
    if targets is None:
        return -F.cross_entropy(logits, labels, reduction="none")
    return F.cross_entropy(logits, targets, reduction="none")


@dataclass(frozen=True, kw_only=True)
class DecoupledDirectionNorm(Attack):
    """DDN (Rony et al., CVPR 2019), L2 only.

    The direction and the norm of the perturbation are decoupled. Each step (all samples in
    parallel, ``x`` of shape ``[N, ...]``): a gradient step of length ``alpha`` on the
    cross-entropy (away from ``y``, or towards the target), then the perturbation is rescaled to
    the norm ``eps``, which shrinks by ``(1 - gamma)`` while the current iterate is adversarial
    and grows by ``(1 + gamma)`` while it is not; then clipped to the box (and quantized to
    ``levels`` values where asked). The smallest adversarial iterate per sample is kept.
    ``alpha`` is cosine-annealed from ``step_size`` to ``final_step_size`` (reference code).

    A zero gradient (saturated softmax) is replaced by a fixed random direction per sample drawn
    from ``generator``, as the reference code does with fresh noise.

    Step sizes and ``init_norm`` are absolute, set (like the references') for inputs in
    ``[0, 1]``; scale them with the box width for other boxes.

    Args:
        steps: iterations; 100 (paper Sec. 4.1 uses 100 for evaluation; 1000 for its best
            numbers).
        init_norm: initial ``eps``, 1 (paper, Algorithm 1).
        gamma: norm factor, 0.05 (paper Sec. 4.1).
        step_size: initial ``alpha``, 1 (paper; ``adv_lib``).
        final_step_size: final ``alpha``, 0.01 (``adv_lib``'s cosine schedule).
        levels: quantize ``x + delta`` to this many values in the box (256 for 8-bit images, as
            in the paper); ``None`` (default) = no quantization.

    Minimum-norm: ``extras["best_distance"]`` is the smallest L2 distance found per sample
    (``inf`` where none); a failed sample returns its lowest-margin iterate.

    Cost per sample: ``steps`` forwards and backwards (plus the template's two forwards).
    """

    name = "ddn"
    norms = frozenset({"L2"})
    minimum_norm = True

    steps: int = 100
    init_norm: float = 1.0
    gamma: float = 0.05
    step_size: float = 1.0
    final_step_size: float = 0.01
    levels: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RobustlabError(f"steps must be a positive integer, got {self.steps!r}")
        for label, value in (("init_norm", self.init_norm), ("step_size", self.step_size),
                             ("final_step_size", self.final_step_size)):
            if not (value > 0 and math.isfinite(value)):
                raise RobustlabError(f"{label} must be a positive finite number, got {value!r}")
        if not 0 < self.gamma < 1:
            raise RobustlabError(f"gamma must lie in (0, 1), got {self.gamma!r}")
        if self.levels is not None and (not isinstance(self.levels, int) or self.levels < 2):
            raise RobustlabError(f"levels must be an integer >= 2 or None, got {self.levels!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        lo, hi = threat.bounds
        worst = threat.distance(x, farthest_corner(x, threat.bounds))
        fallback = normalize_l2(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        eps = x.new_full((x.shape[0],), self.init_norm)
        delta = torch.zeros_like(x)
        best = MinimumNormBest.start(x)
        for step in range(self.steps):
            alpha = cosine_schedule(step, self.steps, self.step_size, self.final_step_size)
            x_adv = x + delta
            _, grad, logits = oracle.loss_and_grad(x_adv, lambda z: _descent_loss(z, y, targets))
            success = is_adversarial(logits, y, targets)
            best.update(x_adv, threat.distance(x, x_adv), difference_of_logits(logits, y, targets), success)
            zero = per_sample(flat(grad).norm(dim=1) < 1e-12, grad)
            delta = delta - alpha * torch.where(zero, fallback, normalize_l2(grad))
            eps = torch.where(success, (1 - self.gamma) * eps, (1 + self.gamma) * eps).minimum(worst)
            delta = delta * per_sample(eps / flat(delta).norm(dim=1).clamp_min(1e-12), delta)
            delta = self._to_box(x + delta, lo, hi) - x
        return best.x, {"best_distance": best.distance}

    def _to_box(self, x_adv: Tensor, lo: float, hi: float) -> Tensor:
        x_adv = x_adv.clamp(lo, hi)
        if self.levels is None:
            return x_adv
        unit = (hi - lo) / (self.levels - 1)
        return lo + ((x_adv - lo) / unit).round() * unit


DDN = DecoupledDirectionNorm
