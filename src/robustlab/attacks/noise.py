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

__all__ = ["GaussianNoise", "add_gaussian_noise", "random_gaussian_noise"]


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


def add_gaussian_noise(x: Tensor, sigma: float | Tensor, *, generator: torch.Generator | None = None,
                       bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """``clamp(x + (high - low) * sigma / 255 * N(0, 1), low, high)``, as Yan et al.'s
    ``mnist/MiscTools.py:add_noise_tensor`` (``sigma`` on the 0–255 scale, clamped afterwards).

    ``x``: ``[N, ...]``; ``sigma``: a number or a per-sample tensor ``[N]`` (0 leaves a sample as
    it is). The noise is drawn from ``generator`` on ``x``'s device.
    """
    low, high = bounds
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 1:
        sigma = per_sample(sigma, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (high - low) * sigma / 255 * noise).clamp(low, high)


def random_gaussian_noise(x: Tensor, *, sigmas: tuple[float, ...] = (50.0, 75.0, 100.0), probability: float = 0.5,
                          generator: torch.Generator | None = None,
                          bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Training augmentation: each sample independently gets, with ``probability``, Gaussian noise
    of a ``sigma`` drawn uniformly from ``sigmas`` (0–255 scale), then is clamped to ``bounds``.

    Defaults are Yan et al.'s (ICLR 2020, ``mnist/main_*_gaus.py:add_noise_tensor_random``: a
    fair coin, sigma in {50, 75, 100}). Vectorized: three draws from ``generator`` per batch.
    """
    if not sigmas or any(not s > 0 for s in sigmas):
        raise RobustlabError(f"sigmas must be a non-empty list of positive numbers (0–255 scale), got {sigmas!r}")
    if not 0 <= probability <= 1:
        raise RobustlabError(f"probability must be in [0, 1], got {probability!r}")
    n = x.shape[0]
    noisy = torch.rand(n, generator=generator, device=x.device) < probability
    choice = torch.randint(len(sigmas), (n,), generator=generator, device=x.device)
    sigma = torch.tensor(sigmas, dtype=x.dtype, device=x.device)[choice] * noisy
    return torch.where(per_sample(noisy, x), add_gaussian_noise(x, sigma, generator=generator, bounds=bounds), x)
