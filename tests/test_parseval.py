"""Parseval networks and orthogonality regularization: the retraction's formula on singular
values, convergence to a tight frame, training that keeps every layer near 1-Lipschitz, the soft
penalty, PGD (not FGSM, the paper's kind of attack) as the evaluation, and the card round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnose
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.threat import Linf
from robustlab.training import METHODS, TrainConfig, train
from robustlab.training.parseval import (
    OrthogonalRegularization,
    ParsevalTraining,
    orthogonality_penalty,
    parseval_retraction,
    spectral_norms,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_registered():
    assert METHODS["parseval"] is ParsevalTraining and METHODS["orthogonal-reg"] is OrthogonalRegularization


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (4, 2, 3, 3)])
def test_retraction_maps_each_singular_value_s_to_s_plus_beta_s_minus_s_cubed(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 3  # s < sqrt(21)
    s = torch.linalg.svdvals(w.reshape(shape[0], -1))
    out = parseval_retraction(w, 0.05)
    assert out.shape == w.shape
    assert torch.allclose(torch.linalg.svdvals(out.reshape(shape[0], -1)), (1.05 * s - 0.05 * s**3).sort(
        descending=True).values, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_repeated_retraction_reaches_a_tight_frame(shape):
    w = 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / shape[1] ** 0.5
    for _ in range(500):
        w = parseval_retraction(w, 0.1)
    assert torch.allclose(torch.linalg.svdvals(w), torch.ones(min(shape), dtype=torch.float64), atol=1e-6)
    assert orthogonality_penalty(w) < 1e-10


def test_orthogonality_penalty_uses_the_smaller_gram_matrix():
    assert float(orthogonality_penalty(2 * torch.eye(3))) == pytest.approx(27.0)  # ||4I - I||^2 = 9 * 3
    w = torch.zeros(5, 2)
    w[0, 0] = w[1, 1] = 1.0  # orthonormal columns: W^T W = I although W W^T != I
    assert float(orthogonality_penalty(w)) == 0.0 and float(orthogonality_penalty(w.T)) == 0.0


def _mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[64], seed=seed)


def _train(digits, method: str, options: dict) -> nn.Module:
    x_train, y_train, _, _ = digits
    model = _mlp()
    # SGD as in the paper: Adam's per-coordinate steps move a layer's spectral norm much faster
    # than a small-beta retraction pulls it back.
    config = TrainConfig(epochs=8, batch_size=50, lr=0.01, weight_decay=0.0, schedule="constant", seed=0,
                         method=method, method_options=options)
    train(model, x_train, y_train, config=config)
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits):
    return {name: _train(digits, name, options) for name, options in
            (("natural", {}), ("parseval", {"beta": 0.1}), ("orthogonal-reg", {"weight": 0.01}))}


def test_parseval_training_keeps_every_layer_near_one_lipschitz(trained, digits):
    _, _, x_test, y_test = digits
    natural, parseval = spectral_norms(trained["natural"]), spectral_norms(trained["parseval"])
    assert max(parseval.values()) < 1.1 < max(natural.values())
    with torch.no_grad():
        assert (trained["parseval"](x_test).argmax(1) == y_test).float().mean() > 0.85


def test_orthogonal_regularization_lowers_the_penalty(trained):
    def total(model):
        return sum(float(orthogonality_penalty(m.weight.detach())) for m in model.modules() if isinstance(m, nn.Linear))

    assert total(trained["orthogonal-reg"]) < 0.5 * total(trained["natural"])


def test_no_masking_pgd_is_the_attack(trained, digits):
    _, _, x_test, y_test = digits
    x, y = x_test[:200], y_test[:200]
    model = trained["parseval"]
    assert diagnose(model, x[:20], y[:20], threat=Linf(eps=0.1),
                    checks=("stochastic", "zero-gradients")).verdict == "pass"
    accuracies = []
    for eps in (0.1, 0.2):
        threat = Linf(eps=eps)
        fgsm = 1 - FGSM()(model, x, y, threat=threat).success.float().mean()
        pgd = 1 - PGD(steps=40, step_size=eps / 10)(model, x, y, threat=threat,
                                                      generator=torch.Generator().manual_seed(0)).success.float().mean()
        assert pgd <= fgsm, (eps, fgsm, pgd)
        accuracies.append(float(pgd))
    assert accuracies[1] < 0.25, accuracies  # measured 55.5% and 18.5%: per-layer 1-Lipschitz alone is weak


def test_card_round_trip(trained, tmp_path):
    model = trained["parseval"]
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [64]},
                     dataset="digits", training={"method": "parseval", "method_options": {"beta": 0.1}})
    save_model(model, tmp_path / "parseval", card)
    loaded, loaded_card = load_model(tmp_path / "parseval")
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded_card.training["method"] == "parseval"
    assert spectral_norms(loaded) == spectral_norms(model)


@pytest.mark.parametrize("method, options, match", [
    ("parseval", {"beta": -1.0}, "beta"),
    ("parseval", {"beta": 0.7}, "beta"),
    ("orthogonal-reg", {"weight": -0.1}, "weight"),
    ("parseval", {"gamma": 1}, "gamma"),
])
def test_bad_options_are_rejected(method, options, match):
    with pytest.raises(RobustlabError, match=match):
        TrainConfig(method=method, method_options=options)
