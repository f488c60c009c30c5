"""Gradient-masking diagnostics: silent on a clean, deterministic, differentiable model; each
check fires on a model built to trigger it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.evaluation.diagnostics import CHECKS, diagnose
from robustlab.threat import L2, L1, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

THREAT = Linf(eps=0.1)
N = 150


@pytest.fixture(scope="module")
def data(digits):
    _, _, x, y = digits
    return x[:N], y[:N]


class Quantize(nn.Module):
    """Rounds pixels to 4 levels: gradients are exactly zero (shattered gradients)."""

    def forward(self, x):
        return torch.round(x * 3) / 3


class GaussianInput(nn.Module):
    """Adds fresh noise at every forward pass, in eval mode too (a randomized defense)."""

    def forward(self, x):
        return x + 0.05 * torch.randn_like(x)


class _GradientOnGridOnly(torch.autograd.Function):
    """Identity; the backward is reversed for inputs off the 1/16 grid the digits live on."""

    @staticmethod
    def forward(ctx, x):
        on_grid = ((x * 16 - torch.round(x * 16)).abs() < 1e-4).flatten(1).all(1)
        ctx.save_for_backward(on_grid)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (on_grid,) = ctx.saved_tensors
        sign = torch.where(on_grid, 1.0, -1.0).view(-1, *[1] * (grad.dim() - 1))
        return grad * sign


class MaskedOffData(nn.Module):
    """Correct gradients at the data points, misleading ones anywhere else: a one-step attack
    from the clean input works, iterations from a random start are led astray."""

    def forward(self, x):
        return _GradientOnGridOnly.apply(x)


class _NoisyBackward(torch.autograd.Function):
    """Identity; the backward flips each gradient coordinate with probability 0.45
    (deterministically, from its own generator): a weak signal that needs many steps."""

    generator = torch.Generator().manual_seed(0)

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        flips = torch.rand(grad.shape, generator=_NoisyBackward.generator) < 0.45
        return torch.where(flips, -grad, grad)


class NoisyBackward(nn.Module):
    def forward(self, x):
        return _NoisyBackward.apply(x)


class Scale(nn.Module):
    """Multiplies the logits: the softmax saturates and cross-entropy gradients underflow."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def run(model, data, **kwargs):
    x, y = data
    return diagnose(model, x, y, threat=THREAT, **kwargs)


def test_a_clean_differentiable_model_passes_every_check(digits_mlp, data):
    diagnosis = run(digits_mlp, data, surrogate=digits_mlp)
    verdicts = {f.check: f.verdict for f in diagnosis.findings}
    assert set(verdicts) == set(CHECKS)
    assert all(v in ("pass", "skip") for v in verdicts.values()), verdicts
    assert diagnosis.verdict == "pass"
    assert verdicts["black-box"] == "pass" and verdicts["unbounded"] == "pass"
    report = diagnosis.to_dict()
    assert report["verdict"] == "pass" and all(f["docs"].endswith(f["check"]) for f in report["findings"])


def test_shattered_gradients_fail_five_checks(digits_mlp, data):
    diagnosis = run(nn.Sequential(Quantize(), digits_mlp), data, surrogate=digits_mlp)
    for check in ("zero-gradients", "unbounded", "random-sampling", "loss-rises", "black-box"):
        assert diagnosis[check].verdict == "fail", diagnosis[check]
    assert diagnosis["zero-gradients"].numbers["zero_fraction"] == 1.0
    assert diagnosis["black-box"].numbers["transfer_accuracy"] < diagnosis["black-box"].numbers["white_box_accuracy"]
    assert diagnosis["eps-monotone"].verdict != "pass"
    assert diagnosis.verdict == "fail"
    assert "| zero-gradients (`robustlab docs diagnostics#zero-gradients`) | fail |" in diagnosis.markdown()


def test_misleading_gradients_off_the_data_make_one_step_beat_iterative(digits_mlp, data):
    diagnosis = run(nn.Sequential(MaskedOffData(), digits_mlp), data, checks=("one-step",))
    finding = diagnosis["one-step"]
    assert finding.verdict == "fail", finding
    assert finding.numbers["fgsm_accuracy"] < finding.numbers["white_box_accuracy"] - 5


def test_a_reversed_backward_is_caught_by_finite_differences(digits_mlp, data):
    reversed_everywhere = nn.Sequential(Scale(1.0), MaskedOffData(), digits_mlp)
    x, y = data
    off_grid = x * 0.98 + 0.01
    finding = diagnose(reversed_everywhere, off_grid, y, threat=THREAT, checks=("non-differentiable",)).findings[0]
    assert finding.verdict == "fail" and finding.numbers["cosine"] < -0.5


def test_a_randomized_model_is_flagged_for_eot(digits_mlp, data):
    diagnosis = run(nn.Sequential(GaussianInput(), digits_mlp), data, checks=("stochastic", "non-differentiable"))
    assert diagnosis["stochastic"].verdict == "warn" and "EOT" in diagnosis["stochastic"].message
    assert diagnosis["non-differentiable"].verdict == "skip"


def test_probabilities_are_flagged(digits_mlp, data):
    diagnosis = run(nn.Sequential(digits_mlp, nn.Softmax(dim=1)), data, checks=("probabilities",))
    assert diagnosis["probabilities"].verdict == "fail"


def test_saturated_cross_entropy_makes_the_losses_disagree(digits_mlp, data):
    diagnosis = run(nn.Sequential(digits_mlp, Scale(1e4)), data, checks=("loss-agreement",))
    finding = diagnosis["loss-agreement"]
    assert finding.verdict == "warn", finding
    assert finding.numbers["ce_accuracy"] > finding.numbers["margin_accuracy"] + 10


def test_a_pgd_number_far_above_apgd_fails(digits_mlp, data):
    diagnosis = run(nn.Sequential(digits_mlp, Scale(1e4)), data, checks=("stronger-attack",))
    finding = diagnosis["stronger-attack"]
    assert finding.verdict == "fail", finding
    assert finding.numbers["pgd_accuracy"] > finding.numbers["apgd_accuracy"] + 10


def test_a_weak_gradient_signal_needs_more_steps(digits_mlp, data):
    diagnosis = run(nn.Sequential(NoisyBackward(), digits_mlp), data, checks=("more-steps",))
    finding = diagnosis["more-steps"]
    assert finding.verdict == "warn", finding
    assert finding.numbers["long_accuracy"] < finding.numbers["accuracy"]


def test_accuracy_that_stays_high_at_large_eps_is_flagged(digits_mlp, data):
    diagnosis = run(nn.Sequential(Quantize(), digits_mlp), data, checks=("eps-monotone",))
    finding = diagnosis["eps-monotone"]
    assert finding.verdict in ("warn", "fail") and finding.numbers["accuracy"][-1] > 10


def test_results_are_reproducible_from_the_seed(digits_mlp, data):
    first = run(nn.Sequential(Quantize(), digits_mlp), data, checks=("random-sampling", "one-step"), seed=3)
    second = run(nn.Sequential(Quantize(), digits_mlp), data, checks=("random-sampling", "one-step"), seed=3)
    assert first.to_dict() == second.to_dict()


def test_the_model_runs_in_eval_mode_and_its_mode_is_restored(data):
    model = nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(64, 10))
    model.train()
    diagnosis = run(model, data, checks=("stochastic",))
    assert diagnosis["stochastic"].verdict == "pass"
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("kwargs,match", [
    ({"threat": L1(eps=1.0)}, "Linf or L2"),
    ({"threat": Linf(eps=float("inf"))}, "bounded"),
    ({"steps": 5}, "at least 20"),
    ({"checks": ("nonsense",)}, "unknown checks"),
])
def test_bad_settings_are_refused(digits_mlp, data, kwargs, match):
    x, y = data
    kwargs = {"threat": THREAT, **kwargs}
    with pytest.raises(RobustlabError, match=match):
        diagnose(digits_mlp, x, y, **kwargs)


def test_l2_threats_are_supported(digits_mlp, data):
    x, y = data
    diagnosis = diagnose(digits_mlp, x, y, threat=L2(eps=0.5), checks=("one-step", "random-sampling", "eps-monotone"))
    assert diagnosis.verdict == "pass", diagnosis.to_dict()
