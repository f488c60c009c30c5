"""The LID detector (Ma et al., ICLR 2018): the estimator against its formula and on data of known
dimension, features per layer, the fitted detector's card round trip, the metrics with
rejection, and the attacks: a detector fitted on FGSM (one of the authors' training attacks)
catches FGSM, misses PGD it never saw, and the adaptive attack evades it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab.attacks import FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnose
from robustlab.evaluation.rejection import adaptive_attack, detector_aware_loss, rejection_metrics
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.models.lid import LIDDetector, fit_lid_detector, lid_estimates, lid_features
from robustlab.threat import Linf

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lid_estimate_is_the_mle_formula():
    query = torch.zeros(1, 2)
    reference = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-4.0, 0.0], [10.0, 10.0]])
    # k = 3 nearest: 1, 2, 4 -> -3 / (log(1/4) + log(2/4) + log(4/4)) = 3 / log 8
    assert float(lid_estimates(query, reference, 3)) == pytest.approx(3 / math.log(8), rel=1e-4)


@pytest.mark.parametrize("dimension", [2, 6])
def test_lid_estimate_recovers_the_dimension_of_a_subspace(dimension):
    basis = torch.linalg.qr(torch.randn(40, dimension, generator=gen(1), dtype=torch.float64))[0]
    reference = torch.rand(4000, dimension, generator=gen(2), dtype=torch.float64) @ basis.T
    queries = (0.25 + 0.5 * torch.rand(200, dimension, generator=gen(3), dtype=torch.float64)) @ basis.T
    estimate = lid_estimates(queries, reference, 20).mean()
    assert abs(float(estimate) - dimension) < 0.2 * dimension


def test_lid_gradient_is_finite_at_a_reference_point():
    reference = torch.randn(30, 5, generator=gen())
    query = reference[:2].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(lid_estimates(query, reference, 10).sum(), query)
    assert torch.isfinite(grad).all()


def test_features_are_one_lid_per_layer_input_included():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x, reference = torch.rand(5, 1, 8, 8, generator=gen()), torch.rand(30, 1, 8, 8, generator=gen(1))
    features = lid_features(net, x, reference, 10)
    assert features.shape == (5, 5)
    assert torch.allclose(features[:, 0], lid_estimates(x.flatten(1), reference.flatten(1), 10))
    assert torch.allclose(features[:, 0], features[:, 1])  # Flatten changes nothing


# --- a detector on the digits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_detector(digits, digits_mlp):
    x_train, y_train, _, _ = digits
    with torch.no_grad():
        ok = digits_mlp(x_train).argmax(1) == y_train
    x_ok, y_ok = x_train[ok], y_train[ok]
    reference, fit_x, fit_y, calibration = x_ok[:100], x_ok[100:500], y_ok[100:500], x_ok[500:800]
    adversarial = FGSM()(digits_mlp, fit_x, fit_y, threat=Linf(eps=0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_lid_detector(digits_mlp, reference=reference, positives=adversarial.x_adv[adversarial.success],
                                negatives=fit_x, calibration=calibration, k=20)


def test_the_fitted_detector_separates_its_training_attack(digits_detector, digits, digits_mlp):
    detector, metrics = digits_detector
    assert metrics["test_auc"] > 0.75, metrics
    _, _, x_test, y_test = digits
    x = x_test[:200]
    with torch.no_grad():
        assert torch.equal(detector(x), digits_mlp(x))  # the classifier's logits, unchanged
        assert torch.allclose(detector.last_score, detector.score(x))
    assert 0.0 < float(detector.reject(x).float().mean()) < 0.15  # ~5% false positives


def test_card_round_trip(digits_detector, digits, tmp_path):
    detector, _ = digits_detector
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [128]},
                     dataset="digits", defenses=[detector.config()])
    # The conftest MLP is a plain Sequential; the registry's "mlp" has the same layers.
    inner = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[128])
    weights = detector.model.state_dict()
    inner.load_state_dict({"fc1.weight": weights["1.weight"], "fc1.bias": weights["1.bias"],
                           "fc2.weight": weights["3.weight"], "fc2.bias": weights["3.bias"]})
    inner.eval()
    wrapped = LIDDetector(inner, **detector.arguments())
    save_model(wrapped, tmp_path / "lid", card)
    loaded, loaded_card = load_model(tmp_path / "lid")
    assert isinstance(loaded, LIDDetector) and loaded_card.defenses == [detector.config()]
    _, _, x_test, _ = digits
    x = x_test[:50]
    with torch.no_grad():
        assert torch.allclose(loaded.score(x), wrapped.score(x), atol=1e-5)
        assert torch.equal(loaded.reject(x), wrapped.reject(x))
    assert loaded.threshold == detector.threshold and torch.equal(loaded.reference, detector.reference)


def test_rejection_metrics_count_a_rejection_as_correct(digits_detector, digits, digits_mlp):
    detector, _ = digits_detector
    _, _, x_test, y_test = digits
    x, y = x_test[:100], y_test[:100]
    x_adv = PGD(steps=20)(digits_mlp, x, y, threat=Linf(eps=0.3), generator=gen()).x_adv
    threshold = detector.threshold
    try:
        detector.threshold = math.inf
        none = rejection_metrics(detector, x, y, x_adv)
        detector.threshold = -math.inf
        every = rejection_metrics(detector, x, y, x_adv)
    finally:
        detector.threshold = threshold
    assert none["robust_accuracy_with_rejection"] == none["robust_accuracy"] < 0.05
    assert none["detection_rate"] == 0.0 and none["clean_rejection_rate"] == 0.0
    assert every["robust_accuracy_with_rejection"] == 1.0 and every["detection_rate"] == 1.0
    assert every["clean_rejection_rate"] == 1.0 and every["attack_success_rate"] == none["attack_success_rate"] > 0.9


def test_bad_settings_are_rejected(digits_detector):
    detector, _ = digits_detector
    settings = detector.arguments()
    with pytest.raises(RobustlabError, match="reference batch"):
        LIDDetector(nn.Identity())
    with pytest.raises(RobustlabError, match="k must be"):
        LIDDetector(nn.Identity(), **{**settings, "k": 1000})
    with pytest.raises(RobustlabError, match="one value per layer"):
        LIDDetector(nn.Identity(), **{**settings, "coef": [1.0]})
    with pytest.raises(RobustlabError, match="layers"):
        LIDDetector(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), **settings).score(torch.rand(2, 1, 8, 8))
    with pytest.raises(RobustlabError, match="weight"):
        detector_aware_loss(detector, weight=-1)


# --- attacked as the seed prescribes, at MNIST scale -------------------------------------------


@pytest.fixture(scope="module")
def mnist_detector():
    from robustlab.data import load_dataset

    try:
        train_set, test_set = load_dataset("mnist", split="train"), load_dataset("mnist", split="test")
    except RobustlabError:
        pytest.skip("MNIST is not available")
    net = build_model("kw-small", input_shape=(1, 28, 28), num_classes=10, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.randperm(50000, generator=gen())[:12000]
    for start in range(0, len(order), 100):
        batch = order[start:start + 100]
        loss = F.cross_entropy(net(train_set.x[batch]), train_set.y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    pool, labels = train_set.x[50000:51000], train_set.y[50000:51000]  # not trained on
    with torch.no_grad():
        ok = net(pool).argmax(1) == labels
    pool, labels = pool[ok], labels[ok]
    threat = Linf(eps=0.3)
    fgsm = FGSM()(net, pool[100:500], labels[100:500], threat=threat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector, metrics = fit_lid_detector(net, reference=pool[:100], positives=fgsm.x_adv[fgsm.success],
                                             negatives=pool[100:500], calibration=pool[500:], k=20)
    return detector, metrics, test_set.x[:100], test_set.y[:100], threat


def test_lid_catches_fgsm_misses_pgd_and_falls_to_the_adaptive_attack(mnist_detector):
    detector, metrics, x, y, threat = mnist_detector
    net = detector.model
    assert metrics["test_auc"] > 0.85, metrics
    assert diagnose(detector, x[:20], y[:20], threat=threat,
                    checks=("stochastic", "zero-gradients")).verdict == "pass"  # nothing masked
    # the attack the detector was fitted on (Ma et al. evaluate on their training attacks)
    fgsm = rejection_metrics(detector, x, y, FGSM()(net, x, y, threat=threat).x_adv)
    # detector-unaware: PGD with the uncapped margin on the classifier alone
    unaware = rejection_metrics(detector, x, y, PGD(steps=40, step_size=0.02, loss="margin")(
        net, x, y, threat=threat, generator=gen()).x_adv)
    x_adaptive, info = adaptive_attack(detector, x, y, threat=threat, steps=40, generator=gen())
    adaptive = rejection_metrics(detector, x, y, x_adaptive)
    assert fgsm["detection_rate"] > 0.5, fgsm
    assert unaware["robust_accuracy"] < 0.05 and unaware["detection_rate"] < fgsm["detection_rate"] - 0.2
    assert adaptive["robust_accuracy_with_rejection"] <= fgsm["robust_accuracy_with_rejection"] - 0.3
    assert adaptive["robust_accuracy_with_rejection"] < 0.2, adaptive
    assert info["evaded"].float().mean() > 0.8


def test_adaptive_attack_binary_searches_the_detector_weight_per_sample(monkeypatch):
    """A scripted stand-in for PGD: per run and sample, (misclassified, rejected). Rejected ->
    the weight rises (x10 with no upper bound, else the midpoint); neither -> it falls to the
    midpoint below; evaded -> done."""
    import types

    from robustlab.evaluation import rejection

    class Detector(nn.Module):
        threshold = 0.0

        def __init__(self):
            super().__init__()
            self.last_score = None

        def forward(self, x):
            return x.new_zeros(x.shape[0], 2)

        def reject(self, x):
            return x[:, 0] > 0.5

    script = [  # run -> {sample: (misclassified, rejected)}
        {0: (True, True), 1: (False, False), 2: (True, True)},
        {0: (True, False), 1: (True, True), 2: (True, True)},
        {1: (True, False), 2: (False, False)},
        {2: (False, True)},
    ]
    seen = []

    class ScriptedPGD:
        def __init__(self, *, steps, step_size, loss):
            self.loss = loss

        def __call__(self, model, x, y, *, threat, generator):
            run = script[len(seen)]
            ids = [int(i) for i in x[:, 1]]
            detector.last_score = torch.full((len(ids),), 0.5)  # excess 1: the loss is -weight
            seen.append(sorted(zip(ids, (-self.loss(torch.zeros(len(ids), 2), y, None)).tolist())))
            outcome = torch.tensor([run[i] for i in ids])
            x_adv = x.clone()
            x_adv[:, 0] = outcome[:, 1].float()
            return types.SimpleNamespace(x_adv=x_adv, success=outcome[:, 0], forwards=1, backwards=1)

    detector = Detector()
    monkeypatch.setattr(rejection, "PGD", ScriptedPGD)
    x = torch.stack([torch.zeros(3), torch.arange(3.0)], dim=1)
    _, info = adaptive_attack(detector, x, torch.zeros(3, dtype=torch.int64), threat=Linf(eps=0.1),
                              steps=1, initial_weight=10.0, search_steps=4)
    assert seen == [[(0, 10.0), (1, 10.0), (2, 10.0)], [(0, 100.0), (1, 5.0), (2, 100.0)],
                    [(1, 7.5), (2, 1000.0)], [(2, 550.0)]]
    assert info["evaded"].tolist() == [True, True, False]
    assert info["weight"].tolist() == [100.0, 7.5, 775.0]
    assert info["forwards"] == 4
