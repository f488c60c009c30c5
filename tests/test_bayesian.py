"""Bayesian networks and Adv-BNN: the KL against torch.distributions summed over every layer
(the reference returned only the last one's), weights drawn afresh in eval mode from a seeded
generator, the ensemble output, the card round trip, and Adv-BNN training attacked with EOT."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from robustlab.attacks import PGD
from robustlab.attacks.composition import EOT, TransferAttack
from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnose
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.models.bayesian import BayesConv2d, BayesianNet, BayesLinear, model_kl
from robustlab.threat import Linf
from robustlab.training import METHODS, TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")

ARGUMENTS = {"input_shape": [1, 8, 8], "num_classes": 10, "base": "kw-small", "prior_sigma": 0.1,
             "init_sigma": 0.05, "ensemble": 3, "sample_seed": 4}


def bnn(**overrides) -> BayesianNet:
    arguments = {**ARGUMENTS, **overrides}
    return build_model("bayesian", **{k: tuple(v) if k == "input_shape" else v for k, v in arguments.items()}, seed=0)


def test_every_linear_and_conv_is_bayesian_and_starts_at_the_base_weights():
    model = bnn()
    base = build_model("kw-small", input_shape=(1, 8, 8), num_classes=10, seed=0)
    assert [type(m) for m in model.net.children() if not isinstance(m, (nn.ReLU, nn.Flatten))] == [
        BayesConv2d, BayesConv2d, BayesLinear, BayesLinear]
    assert torch.equal(model.net.conv1.weight_mu, base.conv1.weight)
    assert torch.allclose(model.net.fc2.weight_log_sigma.exp(), torch.tensor(0.05))


def test_kl_matches_torch_distributions_and_sums_every_layer():
    model = bnn()
    with torch.no_grad():
        model.net.fc1.weight_log_sigma.normal_(-2, 0.3, generator=torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, (BayesLinear, BayesConv2d))]
    expected = 0.0
    with torch.no_grad():
        for layer in layers:
            for mu, log_sigma in ((layer.weight_mu, layer.weight_log_sigma), (layer.bias_mu, layer.bias_log_sigma)):
                expected += float(kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 0.1)).sum())
        total, last = float(model_kl(model)), float(layers[-1].kl())
    assert total == pytest.approx(expected, rel=1e-5)
    assert total > last * 1.5
    with pytest.raises(RobustlabError, match="no Bayesian layer"):
        model_kl(nn.Linear(2, 2))


def test_weights_are_drawn_in_eval_mode_from_the_seeded_generator_and_averaged():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = bnn().eval()
    with torch.no_grad():
        first, second = model(x), model(x)
        assert not torch.allclose(first, second)
        assert torch.equal(bnn().eval()(x), first)  # same sample_seed, same draws
        single = bnn().train()
        passes = torch.stack([torch.softmax(single(x), dim=1) for _ in range(3)])
    assert torch.allclose(first, passes.mean(0).log(), atol=1e-5)
    assert diagnose(model, x, torch.zeros(4, dtype=torch.int64), threat=Linf(eps=0.1),
                    checks=("stochastic",))["stochastic"].verdict == "warn"


def test_card_round_trip(tmp_path):
    model = bnn()
    card = ModelCard(architecture="bayesian", arguments=ARGUMENTS, training={"method": "adv-bnn"})
    save_model(model, tmp_path / "bnn", card)
    loaded, _ = load_model(tmp_path / "bnn")
    assert isinstance(loaded, BayesianNet) and loaded.ensemble == 3
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), bnn().eval()(x))


@pytest.mark.parametrize("overrides, match", [
    ({"prior_sigma": 0}, "prior_sigma"), ({"init_sigma": -1.0}, "init_sigma"), ({"ensemble": 0}, "ensemble"),
    ({"base": "bayesian"}, "base"), ({"sample_seed": "x"}, "sample_seed"),
])
def test_bad_arguments_are_rejected(overrides, match):
    with pytest.raises(RobustlabError, match=match):
        bnn(**overrides)


def test_adv_bnn_is_registered_and_checks_its_options():
    assert METHODS["adv-bnn"].name == "adv-bnn"
    with pytest.raises(RobustlabError, match="kl_weight"):
        TrainConfig(method="adv-bnn", threat={"norm": "Linf", "eps": 0.1}, method_options={"kl_weight": -1.0})


def test_adv_bnn_on_digits_eot_is_at_least_the_authors_attack(digits):
    x_train, y_train, x_test, y_test = digits
    eps = 0.1
    model = build_model("bayesian", input_shape=(1, 8, 8), num_classes=10, base="mlp", base_arguments={"hidden": [128]},
                        init_sigma=0.01, ensemble=5, sample_seed=1, seed=0)
    config = TrainConfig(epochs=6, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant",
                         seed=0, method="adv-bnn", threat={"norm": "Linf", "eps": eps},
                         method_options={"steps": 3, "step_size": 0.05, "kl_weight": 1e-5})
    train(model, x_train, y_train, config=config)
    model.eval()
    x, y, threat = x_test[:200], y_test[:200], Linf(eps=eps)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.85
    pgd = PGD(steps=20, step_size=eps / 8)
    generator = torch.Generator().manual_seed(0)
    # The authors' attack: one weight draw per PGD step (model.net is a single-draw forward),
    # judged on the deployed ensemble.
    authors = 1 - TransferAttack(pgd, surrogates=[model.net])(model, x, y, threat=threat,
                                                             generator=generator).success.float().mean()
    eot = 1 - EOT(pgd, draws=5)(model, x, y, threat=threat, generator=generator).success.float().mean()
    assert eot <= authors + 0.03, (authors, eot)
    assert eot < 0.9, eot
