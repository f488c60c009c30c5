"""Additive Gaussian noise, the seed's "attack" for noise robustness (TisODE tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import per_sample
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

__all__ = ["GaussianNoise"]


@dataclass(frozen=True, kw_only=True)
class GaussianNoise(Attack):
    """Add ``N(0, sigma^2) / 255`` (scaled to the box's width) and clamp to the box.

    ``sigma`` is on the 0–255 pixel scale, as in Yan et al.'s TisODE tables (their
    ``add_noise_tensor``). With ``draws > 1`` the first adversarial draw per sample is kept
    (otherwise the last), so ``draws`` turns noise into a weak random-search attack.

    The result is projected onto the threat set like every attack's: to reproduce the seed's
    unbounded noise, pass an unbounded threat model (``Linf(eps=math.inf)``).

    Cost: ``draws`` forwards per sample, no backward.
    """

    name = "gaussian-noise"
    norms = frozenset({"Linf", "L2", "L1", "L0"})

    sigma: float = 50.0
    draws: int = 1

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise RobustlabError(f"sigma must be > 0 (0–255 scale), got {self.sigma!r}")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise RobustlabError(f"draws must be a positive integer, got {self.draws!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        scale = (threat.bounds[1] - threat.bounds[0]) * self.sigma / 255
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.draws):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            candidate = threat.project(x, x + scale * noise)
            success = is_adversarial(oracle.logits(candidate), y, targets)
            take = success & ~found if self.draws > 1 else torch.ones_like(found)
            best = torch.where(per_sample(take, x), candidate, best)
            found |= success
        if self.draws > 1:
            # Samples that no draw broke keep the last draw, not the clean input.
            best = torch.where(per_sample(found, x), best, candidate)
        return best, {}
