"""Cascade adversarial training (Na et al., ICLR 2018): step_ll against its formula, the eps
distribution and the iterative-FGSM step counts of the reference, the loss with its pivot term,
the bank made on the source network N1, the two-stage cascade with a card round trip between
the stages, and the evaluation the seed prescribes (PGD beats the one-step attacks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab.attacks import FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnose
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.threat import Linf
from robustlab.training import METHODS, Batch, TrainConfig, train
from robustlab.training.cascade import CascadeTraining, iter_fgsm_steps, sample_intensity, step_ll

pytestmark = pytest.mark.usefixtures("single_thread")


def test_registered():
    assert METHODS["cascade"] is CascadeTraining


def test_step_ll_moves_away_from_the_least_likely_class_by_eps_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1])
    out = step_ll(model, x, eps)
    least = model(x).argmin(1)
    w = model[1].weight
    # CE gradient of a linear model wrt x for target t: (softmax - onehot_t) @ W
    grad = ((torch.softmax(model(x), 1) - F.one_hot(least, 3).float()) @ w).view_as(x)
    assert torch.allclose(out, (x - eps.view(-1, 1, 1, 1) * grad.sign()).clamp(0, 1), atol=1e-6)
    assert (out - x).abs().flatten(1).amax(1).tolist() == pytest.approx(eps.tolist(), abs=1e-6)


def test_intensity_is_a_clipped_half_normal_with_sd_half_eps_max():
    eps = sample_intensity(200_000, 16.0, torch.Generator().manual_seed(0))
    assert float(eps.max()) == 16.0 and float(eps.min()) >= 0
    assert float(eps.median()) == pytest.approx(8 * 0.6745, rel=0.02)  # half-normal median: 0.6745 sd
    assert float((eps == 16).float().mean()) == pytest.approx(2 * (1 - 0.97725), rel=0.1)  # P(|z| > 2)


def test_iter_fgsm_step_counts_follow_the_reference():
    assert [iter_fgsm_steps(e) for e in (1, 2, 4, 8, 16)] == [1, 2, 5, 10, 20]


def _config(**options) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=8, seed=0, method="cascade", method_options=options)


def test_loss_is_the_weighted_mean_plus_the_pivot_term():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    method = CascadeTraining(_config(adv_weight=0.3, pivot_weight=0.01))
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    batch = Batch(x=x, y=y, index=torch.arange(4))
    x_train = method.make_inputs(model, batch)
    assert x_train.shape == (8, 1, 4, 4) and torch.equal(x_train[:4], x)
    loss, logits = method.loss(model, x_train, batch)
    z = model(x_train)
    expected = ((F.cross_entropy(z[:4], y, reduction="sum") + 0.3 * F.cross_entropy(z[4:], y, reduction="sum")) / 5.2
                + 0.01 * 0.5 * (z[4:] - z[:4]).square().sum())
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6) and torch.equal(logits, z[:4])
    # detach_pivot: no gradient reaches the weights through the clean side of the pivot term
    only_pivot = CascadeTraining(_config(adv_weight=0.0, pivot_weight=1.0))
    grads = []
    for detach in (True, False):
        only_pivot.options = type(only_pivot.options)(adv_weight=0.0, pivot_weight=1.0, detach_pivot=detach)
        model.zero_grad()
        (only_pivot.loss(model, x_train, batch).loss - F.cross_entropy(model(x), y) / 4).backward()
        grads.append(model[1].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("options, match", [
    ({"eps_max": 0.0}, "eps_max"), ({"eps_max": 2.0}, "eps_max"), ({"adv_weight": -1}, "adv_weight"),
    ({"detach_pivot": 1}, "detach_pivot"), ({"source": 3}, "source"), ({"steps": 3}, "steps"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(RobustlabError, match=match):
        _config(**options)


def _train(x, y, options, seed=0, epochs=8) -> nn.Module:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[128], seed=seed)
    train(model, x, y, config=TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                                          schedule="constant", seed=seed, method="cascade", method_options=options))
    return model.eval()


@pytest.fixture(scope="module")
def stage_one(digits, tmp_path_factory):
    """N1 on the digits (step_ll + pivot), saved and reloaded through its card."""
    x_train, y_train, x_test, _ = digits
    n1 = _train(x_train, y_train, {"eps_max": 0.3})
    path = tmp_path_factory.mktemp("cascade") / "n1"
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [128]},
                     dataset="digits", training={"method": "cascade", "method_options": {"eps_max": 0.3}})
    save_model(n1, path, card)
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x_test), n1(x_test))
    return n1, path


def test_the_bank_is_iterative_fgsm_on_the_source_network(stage_one, digits):
    n1, path = stage_one
    _, _, x_test, y_test = digits
    method = CascadeTraining(_config(source=str(path)))
    x, y = x_test[:6], y_test[:6]
    levels = torch.tensor([1, 4, 8, 8, 16, 12])
    bank = method._bank(x, y, levels)
    assert ((bank - x).abs().flatten(1).amax(1) <= levels / 255 + 1e-6).all()
    expected = x[5:].clone()
    for _ in range(iter_fgsm_steps(12)):
        expected.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(n1(expected), y[5:], reduction="sum"), expected)
        expected = torch.min(torch.max(expected.detach() + g.sign() / 255, x[5:] - 12 / 255), x[5:] + 12 / 255)
        expected = expected.clamp(0, 1)
    assert torch.allclose(bank[5:], expected, atol=1e-6)
    # half of the adversarial slots come from the bank, the other half from step_ll
    batch = Batch(x=x_test[:8], y=y_test[:8], index=torch.arange(8))
    x_train = method.make_inputs(n1, batch)
    assert x_train.shape[0] == 16 and torch.equal(x_train[:8], x_test[:8])


def test_stage_one_is_not_masked_and_pgd_is_the_attack(stage_one, digits):
    n1, _ = stage_one
    _, _, x_test, y_test = digits
    x, y, threat = x_test[:200], y_test[:200], Linf(eps=0.1)
    with torch.no_grad():
        clean = (n1(x).argmax(1) == y).float().mean()
    assert clean > 0.85
    assert diagnose(n1, x[:20], y[:20], threat=threat, checks=("stochastic", "zero-gradients")).verdict == "pass"
    fgsm = 1 - FGSM()(n1, x, y, threat=threat).success.float().mean()
    pgd = 1 - PGD(steps=40, step_size=0.01)(n1, x, y, threat=threat,
                                          generator=torch.Generator().manual_seed(0)).success.float().mean()
    assert pgd <= fgsm and pgd < clean - 0.2, (float(clean), float(fgsm), float(pgd))


@pytest.mark.slow
def test_stage_two_trains_on_the_bank(stage_one, digits):
    _, path = stage_one
    x_train, y_train, x_test, y_test = digits
    n2 = _train(x_train, y_train, {"source": str(path)}, epochs=4)
    x, y, threat = x_test[:200], y_test[:200], Linf(eps=0.1)
    with torch.no_grad():
        assert (n2(x).argmax(1) == y).float().mean() > 0.85
    fgsm = 1 - FGSM()(n2, x, y, threat=threat).success.float().mean()
    pgd = 1 - PGD(steps=40, step_size=0.01)(n2, x, y, threat=threat,
                                          generator=torch.Generator().manual_seed(0)).success.float().mean()
    assert pgd <= fgsm, (float(fgsm), float(pgd))
