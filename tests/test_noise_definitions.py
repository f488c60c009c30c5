"""Gaussian noise pinned to its definition (issue 15): Yan et al.'s ``add_noise_tensor`` (ICLR 2020,
TisODE: ``x + sigma / 255 * N(0, 1)`` on the 0-255 scale, clamped to the box) and
``add_noise_tensor_random`` (a fair coin per sample, sigma drawn from {50, 75, 100}), and the
attack that keeps the first adversarial draw. Replays of the same ``torch.Generator`` stream on a
hand-built threshold model; nothing trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from robustlab.attacks import GaussianNoise
from robustlab.attacks.noise import add_gaussian_noise, random_gaussian_noise
from robustlab.errors import RobustlabError
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class FirstFeature(nn.Module):
    """Class 1 iff the first feature exceeds ``at`` (a tie is class 0)."""

    def __init__(self, at: float):
        super().__init__()
        self.at = at

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1)[:, 0] - self.at
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_gaussian_noise_adds_sigma_over_255_of_the_box_width_and_clamps():
    x = torch.rand(5, 2, 3, generator=gen(1), dtype=D)
    out = add_gaussian_noise(x, 40.3, generator=gen(2), bounds=(-1.0, 2.0))  # 40.3: not a float32 number
    expected = (x + 3.0 * 40.3 / 255 * torch.randn(5, 2, 3, generator=gen(2), dtype=D)).clamp(-1.0, 2.0)
    assert out.dtype == D
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    # The default box is [0, 1]; a large sigma reaches both ends.
    out = add_gaussian_noise(x, 300.0, generator=gen(2))
    torch.testing.assert_close(out, (x + 300.0 / 255 * torch.randn(5, 2, 3, generator=gen(2), dtype=D)).clamp(0, 1))
    assert out.min() == 0.0 and out.max() == 1.0


def test_gaussian_noise_takes_one_sigma_per_sample():
    x = torch.full((3, 4), 0.5, dtype=D)
    out = add_gaussian_noise(x, torch.tensor([0.0, 25.5, 51.0]), generator=gen(3))  # float32 sigmas, float64 x
    noise = torch.randn(3, 4, generator=gen(3), dtype=D)
    torch.testing.assert_close(out, (x + torch.tensor([[0.0], [0.1], [0.2]], dtype=D) * noise).clamp(0, 1),
                               rtol=0, atol=1e-15)
    assert torch.equal(out[0], x[0])


def test_random_gaussian_noise_is_a_coin_then_a_sigma_per_sample():
    x = torch.rand(40, 3, generator=gen(4), dtype=D)
    out = random_gaussian_noise(x, sigmas=(20.1, 0.5, 90.0), probability=0.3, generator=gen(5), bounds=(0.0, 2.0))
    g = gen(5)
    noisy = torch.rand(40, generator=g) < 0.3
    choice = torch.randint(3, (40,), generator=g)
    sigma = torch.tensor([20.1, 0.5, 90.0], dtype=D)[choice]
    noise = torch.randn(40, 3, generator=g, dtype=D)
    expected = torch.where(noisy[:, None], (x + 2.0 * sigma[:, None] / 255 * noise).clamp(0, 2), x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    assert 0 < int(noisy.sum()) < 40
    assert torch.equal(out[~noisy], x[~noisy])


@pytest.mark.parametrize("probability,noisy", [(0.0, 0), (1.0, 6)])
def test_random_gaussian_noise_probability_bounds_are_allowed(probability, noisy):
    x = torch.full((6, 2), 0.5)
    out = random_gaussian_noise(x, probability=probability, generator=gen())
    assert int((out != x).any(1).sum()) == noisy


@pytest.mark.parametrize("options,match", [
    ({"sigmas": ()}, "sigmas must be a non-empty list of positive numbers"),
    ({"sigmas": (50.0, 0.0)}, "sigmas must be"),
    ({"sigmas": (-1.0,)}, "sigmas must be"),
    ({"probability": -0.01}, r"probability must be in \[0, 1\], got -0.01"),
    ({"probability": 1.01}, "probability must be in"),
])
def test_random_gaussian_noise_rejects_bad_settings(options, match):
    with pytest.raises(RobustlabError, match=match):
        random_gaussian_noise(torch.zeros(2, 2), **options)


@pytest.mark.parametrize("options,match", [
    ({"sigma": 0.0}, r"sigma must be > 0 \(0–255 scale\), got 0.0"),
    ({"sigma": -5.0}, "sigma must be > 0"),
    ({"draws": 0}, "draws must be a positive integer, got 0"),
    ({"draws": 2.0}, "draws must be a positive integer"),
])
def test_gaussian_noise_attack_rejects_bad_settings(options, match):
    with pytest.raises(RobustlabError, match=match):
        GaussianNoise(**options)


def test_gaussian_noise_attack_accepts_the_smallest_settings():
    assert GaussianNoise(sigma=0.5, draws=1).draws == 1


class ThreeBands(nn.Module):
    """Class 0 for a first feature f <= 1, class 1 for 1 < f <= 1.2, class 2 above (logits 0, f - 1, 2 f - 2.2)."""

    def forward(self, x: Tensor) -> Tensor:
        f = x.flatten(1)[:, 0]
        return torch.stack([torch.zeros_like(f), f - 1, 2 * f - 2.2 - (f - 1).clamp_max(0)], dim=1)


def replay(x, y, targets, threat, sigma, draws, seed, model):
    lo, hi = threat.bounds
    g = gen(seed)
    candidates = [threat.project(x, x + (hi - lo) * sigma / 255 * torch.randn(x.shape, generator=g, dtype=x.dtype))
                  for _ in range(draws)]
    out = candidates[-1].clone()
    broken = torch.zeros(draws, len(x), dtype=torch.bool)
    for k, c in enumerate(candidates):
        pred = model(c).argmax(1)
        broken[k] = pred != y if targets is None else pred == targets
    for i in range(len(x)):
        if draws > 1 and broken[:, i].any():  # the first adversarial draw
            out[i] = candidates[int(broken[:, i].nonzero()[0])][i]
    return out, broken


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("draws", [1, 2, 4])
@pytest.mark.parametrize("threat", [Linf(eps=0.3, bounds=(-1.0, 2.0)), L2(eps=math.inf, bounds=(-1.0, 2.0))],
                         ids=["Linf", "L2-unbounded"])
def test_gaussian_noise_attack_keeps_the_first_adversarial_draw_else_the_last(draws, threat, targeted):
    model = ThreeBands()
    x = torch.tensor([[0.9, 1.0], [0.95, 0.5], [0.2, 0.2], [0.99, 1.5], [1.1, 0.5], [1.15, 0.0], [0.97, 0.1],
                      [1.25, 0.3]], dtype=D)
    y = model(x).argmax(1)
    targets = torch.tensor([1, 2, 1, 2, 2, 2, 1, 1]) if targeted else None
    result = GaussianNoise(sigma=20.0, draws=draws)(model, x, y, threat=threat, targets=targets, generator=gen(8))
    expected, broken = replay(x, y, targets, threat, 20.0, draws, 8, model)
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-12)
    assert result.forwards == len(x) * (draws + 2)  # the template's clean check and success check
    # The cases the test is about: a sample broken by some draw but not the last, one broken by several
    # draws, one never broken.
    if draws > 1:
        assert (broken.any(0) & ~broken[-1]).any() and (broken.sum(0) >= 2).any()
    assert (~broken.any(0)).any() and broken.any()
