"""MMA / OMMA and bilateral adversarial training: AN-PGD against closed-form margins of a linear
model, the per-example eps kept by dataset index (shuffling, resume), the MMA objective (wrong
examples, the d_max hinge, the clean mix), the bilateral attacks and labels, and bad options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_two_class
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.threat import threat_model
from robustlab.training import METHODS, Batch, TrainConfig, load_checkpoint, train
from robustlab.training.bilateral import adversarial_labels, uniform_labels
from robustlab.training.mma import MAX_EPS_FACTOR, an_pgd, slm_margin

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.15
CHEAP_MMA = {"steps": 5, "d_max": 0.3, "min_eps": 0.05}
# Inputs near 0 in a wide box, so that the box never binds and the linear margins are exact.
WIDE = (-50.0, 50.0)


def make_mlp(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        middle = [nn.BatchNorm1d(64), nn.ReLU()] if batchnorm else [nn.ReLU()]
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), *middle, nn.Linear(64, 10))


def config(method: str, options: dict | None = None, **kwargs) -> TrainConfig:
    values = {"epochs": 4, "batch_size": 50, "optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0,
              "schedule": "constant", "method": method, "method_options": options or {},
              "threat": {"norm": "Linf", "eps": EPS}, "robust_eval_samples": 0}
    return TrainConfig(**{**values, **kwargs})


def linear_data(n: int, dim: int = 20, seed: int = 0):
    """``linear_two_class`` with inputs near 0; labels = the model's prediction except for the
    first ``n // 8`` examples, which are flipped (misclassified)."""
    model, w, c = linear_two_class(dim)
    x = 0.05 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    score = x @ w + c
    y = (score > 0).long()
    y[: n // 8] = 1 - y[: n // 8]
    return model, w, x, y, score


# --- AN-PGD ----------------------------------------------------------------------------------------


def test_slm_margin_is_logsumexp_of_the_other_logits_minus_the_true_one():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 3.0]])
    y = torch.tensor([0, 1])
    expected = torch.tensor([math.log(math.exp(0.0) + math.exp(-1.0)) - 2.0, math.log(1 + math.exp(3.0)) - 3.0])
    assert torch.allclose(slm_margin(logits, y), expected)
    assert slm_margin(logits, y)[1] > 0  # argmax ties with y, but SLM counts it as wrong


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_an_pgd_bisection_lands_on_the_decision_boundary_of_a_linear_model(norm):
    model, w, x, y, score = linear_data(64)
    correct = (score > 0).long() == y
    x, y, score = x[correct], y[correct], score[correct]
    exact = score.abs() / (w.abs().sum() if norm == "Linf" else w.norm())  # minimal distance
    d_max = 1.2 * float(exact.max())
    max_eps = MAX_EPS_FACTOR * d_max
    prev = torch.full((len(x),), 0.3 * d_max)
    threat = threat_model(norm, 1.0, WIDE)
    x_adv, eps = an_pgd(model, x, y, prev, threat=threat, max_eps=max_eps, steps=10,
                        generator=torch.Generator().manual_seed(1))
    tol = max_eps / 2**10 + 1e-5
    # The crossing along AN-PGD's own direction u, in closed form: w.(x + t u) + c = 0.
    unit = (x_adv - x) / eps[:, None]
    crossing = -score / (unit @ w)
    assert torch.allclose(eps, crossing, atol=tol, rtol=0)
    assert torch.allclose(threat.distance(x, x_adv), eps, atol=1e-5)
    # No point on the boundary is closer than the minimal distance; for Linf, PGD's direction is
    # the optimal one (the sign of w), so AN-PGD recovers the exact margin.
    assert (eps >= exact - tol).all()
    if norm == "Linf":
        assert torch.allclose(eps, exact, atol=tol, rtol=0)
    assert (eps > 2 * prev).any() and (eps < prev).any()  # the search went both ways


def test_an_pgd_leaves_unbreakable_examples_just_below_max_eps():
    model, w, x, y, score = linear_data(64)
    correct = (score > 0).long() == y
    x, y = x[correct], y[correct]
    max_eps = 0.5 * float((score[correct].abs() / w.abs().sum()).min())
    _, eps = an_pgd(model, x, y, torch.full((len(x),), max_eps / 4), threat=threat_model("Linf", 1.0, WIDE),
                    max_eps=max_eps, steps=5, generator=torch.Generator().manual_seed(1))
    assert ((eps > max_eps / MAX_EPS_FACTOR) & (eps < max_eps)).all()


# --- MMA: objective, per-example state ---------------------------------------------------------------


def test_mma_objective_wrong_examples_hinge_and_clean_mix():
    model, w, x, y, score = linear_data(64)
    exact = score.abs() / w.abs().sum()
    d_max = float(exact.median())
    cfg = config("mma", {"steps": 10, "d_max": d_max, "min_eps": d_max / 10},
                 threat={"norm": "Linf", "eps": 0.1, "bounds": WIDE})
    method = METHODS["mma"](cfg)
    batch = Batch(x, y, torch.arange(100, 164), threat=threat_model("Linf", 0.1, WIDE))
    x_train = method.make_inputs(model, batch)
    loss, logits = method.loss(model, x_train, batch)
    method.after_step(model, x_train, batch)

    wrong = (score > 0).long() != y
    assert wrong.sum() == 8
    assert torch.equal(x_train[wrong], x[wrong])
    eps = method.per_example["eps"]
    assert eps.shape == (164,) and not eps[:100].any()  # grown to the largest index, other rows untouched
    stored = eps[100:]
    assert (stored[wrong] == 0).all()
    tol = MAX_EPS_FACTOR * d_max / 2**10 + 1e-5
    assert torch.allclose(stored[~wrong], torch.minimum(exact[~wrong], stored[~wrong]), atol=tol)
    hinged = ~wrong & (stored >= d_max)
    kept = ~wrong & (stored < d_max)
    assert hinged.sum() >= 10 and kept.sum() >= 10
    assert torch.allclose(stored[kept], exact[kept], atol=tol)

    ce = F.cross_entropy(model(x_train), y, reduction="none")
    mma = (ce[kept].sum() + ce[wrong].sum()) / len(x)
    clean = F.cross_entropy(model(x), y)
    assert torch.allclose(loss, 2 / 3 * mma + 1 / 3 * clean)
    assert torch.equal(logits, model(x))  # accuracy is reported on the clean inputs


def test_omma_has_no_clean_term():
    model, _, x, y, score = linear_data(64)
    cfg = config("omma", {"steps": 10, "d_max": 0.05, "min_eps": 0.01}, threat={"norm": "Linf", "eps": 0.1, "bounds": WIDE})
    method = METHODS["omma"](cfg)
    batch = Batch(x, y, torch.arange(64), threat=cfg.threat_model())
    x_train = method.make_inputs(model, batch)
    loss, _ = method.loss(model, x_train, batch)
    method.after_step(model, x_train, batch)
    wrong = (score > 0).long() != y
    kept = ~wrong & (method.per_example["eps"] < 0.05)
    assert 0 < kept.sum() < (~wrong).sum()
    ce = F.cross_entropy(model(x_train), y, reduction="none")
    assert torch.allclose(loss, (ce[kept].sum() + ce[wrong].sum()) / len(x))


def test_mma_eps_is_kept_by_dataset_index_across_shuffles():
    # A frozen model (lr ~ 0) makes every example's margin a fixed, known function of the example,
    # so each stored row must hold the margin of *its* example after two shuffled epochs.
    model, w, x, y, score = linear_data(240)
    exact = score.abs() / w.abs().sum()
    d_max = float(exact.median())
    cfg = config("mma", {"steps": 10, "d_max": d_max, "min_eps": d_max / 10}, epochs=2, batch_size=16, lr=1e-12,
                 threat={"norm": "Linf", "eps": 0.1, "bounds": WIDE})
    method = METHODS["mma"](cfg)
    seen = []

    class Recording(type(method)):
        def after_step(self, model, x_train, batch):
            seen.append(batch.index.clone())
            super().after_step(model, x_train, batch)

    method = Recording(cfg)
    train(model, x, y, config=cfg, method=method)
    assert not torch.equal(seen[0], torch.arange(16))  # the data was shuffled
    eps = method.per_example["eps"]
    wrong = (score > 0).long() != y
    tol = MAX_EPS_FACTOR * d_max / 2**10 + 1e-5
    assert eps.shape == (240,) and (eps[wrong] == 0).all()
    robust = ~wrong & (exact > MAX_EPS_FACTOR * d_max)  # trivially robust: stay at the top of the search
    assert robust.sum() >= 10 and (eps[robust] > d_max).all()
    inside = ~wrong & ~robust
    assert inside.sum() >= 10
    assert torch.allclose(eps[inside], exact[inside], atol=tol, rtol=0)
    assert method.average_margin == pytest.approx(float(eps.mean()))


class Stop(Exception):
    pass


def test_mma_per_example_eps_survives_kill_and_resume_bitwise(digits, tmp_path):
    x, y = digits[0][:200], digits[1][:200]
    cfg = config("mma", CHEAP_MMA, epochs=5)
    whole = make_mlp(batchnorm=True)
    full_method = METHODS["mma"](cfg)
    train(whole, x, y, config=cfg, method=full_method)

    def stop(record):
        if record["epoch"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(make_mlp(batchnorm=True), x, y, config=cfg, checkpoint_dir=tmp_path, on_epoch_end=stop)
    saved = load_checkpoint(tmp_path / "last.ckpt")["method"]["per_example"]["eps"]
    assert saved.shape == (200,) and (saved > 0).sum() > 40, (saved > 0).sum()
    resumed_method = METHODS["mma"](cfg)
    resumed = make_mlp(seed=5, batchnorm=True)
    train(resumed, x, y, config=cfg, checkpoint_dir=tmp_path, method=resumed_method)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(full_method.per_example["eps"], resumed_method.per_example["eps"])
    assert not torch.equal(full_method.per_example["eps"], saved)


@pytest.mark.parametrize("index", [None, torch.arange(3), torch.zeros(4), torch.tensor([0, 1, -1, 2])])
def test_mma_needs_a_valid_dataset_index(digits, index):
    method = METHODS["mma"](config("mma", CHEAP_MMA))
    batch = Batch(digits[0][:4], digits[1][:4], index, threat=threat_model("Linf", EPS))
    with pytest.raises(RobustlabError, match="index"):
        method.make_inputs(make_mlp(), batch)


def test_mma_loss_must_follow_make_inputs(digits):
    method = METHODS["mma"](config("mma", CHEAP_MMA))
    batch = Batch(digits[0][:4], digits[1][:4], torch.arange(4), threat=threat_model("Linf", EPS))
    with pytest.raises(RobustlabError, match="make_inputs"):
        method.loss(make_mlp(), batch.x, batch)


def test_mma_presets_follow_the_reference_config():
    mnist = METHODS["mma"](config("mma"))
    assert (mnist.d_max, mnist.min_eps, mnist.steps) == (0.45, 0.1, 40)
    cifar = METHODS["mma"](config("mma", {"preset": "cifar10", "steps": 3}, threat={"norm": "L2", "eps": 0.5}))
    assert (cifar.d_max, cifar.min_eps, cifar.steps) == (2.0, 0.5, 3)
    assert METHODS["omma"](config("omma")).options.clean_loss_coeff == 0


# --- bilateral ---------------------------------------------------------------------------------------


def test_adversarial_labels_match_the_closed_form_and_the_beta_ratio():
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    beta, gamma = 9.0, 0.01
    labels = adversarial_labels(logits, y, beta=beta, gamma=gamma)
    assert torch.allclose(labels.sum(dim=1), torch.ones(32))
    p = logits.double().softmax(dim=1)
    for i in range(32):
        others = [k for k in range(10) if k != y[i]]
        loss = [-math.log(float(p[i, k]) + 1e-8) for k in range(10)]
        v_mc, v_ll = min(loss[k] for k in others), max(loss[k] for k in others)
        denom = sum(loss[k] - v_mc + gamma for k in others)
        eps_y = 1 / (1 + beta * (v_ll - v_mc + gamma) / denom)
        assert float(labels[i, y[i]]) == pytest.approx(1 - eps_y, abs=1e-5)
        for k in others:
            assert float(labels[i, k]) == pytest.approx(eps_y * (loss[k] - v_mc + gamma) / denom, abs=1e-5)
        assert 1 / (1 + beta) < eps_y <= 1 / (1 + beta / 9) + 1e-9
        assert float(labels[i, y[i]]) == pytest.approx(beta * float(labels[i, others].max()), rel=1e-4)
        # The least likely class gets the most mass, the most confusing one the least.
        least, most = max(others, key=lambda k: loss[k]), min(others, key=lambda k: loss[k])
        assert labels[i, least] == labels[i, others].max() and labels[i, most] == labels[i, others].min()


def test_uniform_labels():
    labels = uniform_labels(torch.tensor([0, 3]), 4, 0.3)
    assert torch.allclose(labels, torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))


@pytest.mark.parametrize("attack", ["r-mc", "r-ll", "r-fgsm"])
def test_bilateral_attacks_move_the_way_they_should(digits, digits_mlp, attack):
    x, y = digits[2][:200], digits[3][:200]
    threat = threat_model("Linf", EPS)
    method = METHODS["bilateral"](config("bilateral", {"attack": attack, "labels": "none"}))
    x_adv = method.make_inputs(digits_mlp, Batch(x, y, torch.arange(200), threat=threat))
    assert threat.contains(x, x_adv).all() and (threat.distance(x, x_adv) > 0.9 * EPS).all()
    with torch.no_grad():
        clean, adv = digits_mlp(x), digits_mlp(x_adv)
    if attack == "r-fgsm":
        assert F.cross_entropy(adv, y) > F.cross_entropy(clean, y) + 0.5
    else:
        others = clean.scatter(1, y[:, None], math.inf if attack == "r-ll" else -math.inf)
        target = others.argmin(1) if attack == "r-ll" else others.argmax(1)
        moved = F.cross_entropy(adv, target, reduction="none") < F.cross_entropy(clean, target, reduction="none")
        assert moved.float().mean() > 0.9


def test_bilateral_la_loss_uses_labels_from_the_clean_logits(digits, digits_mlp):
    x, y = digits[2][:100], digits[3][:100]
    method = METHODS["bilateral"](config("bilateral"))
    batch = Batch(x, y, torch.arange(100), threat=threat_model("Linf", EPS))
    x_adv = method.make_inputs(digits_mlp, batch)
    loss, logits = method.loss(digits_mlp, x_adv, batch)
    soft = adversarial_labels(digits_mlp(x), y, beta=9.0, gamma=0.01)
    assert torch.allclose(loss, -(soft * digits_mlp(x_adv).log_softmax(1)).sum(1).mean())
    assert torch.equal(logits, digits_mlp(x_adv))


@pytest.mark.parametrize(("method", "options"), [
    ("mma", CHEAP_MMA),
    ("omma", CHEAP_MMA),
    ("bilateral", {}),
    ("bilateral", {"attack": "r-fgsm", "labels": "ls"}),
])
def test_each_method_trains_and_its_objective_decreases(digits, method, options):
    x, y, vx, vy = digits
    history = train(make_mlp(), x[:600], y[:600], config=config(method, options), val_x=vx, val_y=vy).history
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.15
    assert history[-1]["train_acc"] > 0.55 and history[-1]["val_acc"] > 0.6


@pytest.mark.parametrize(("method", "options", "extra", "message"), [
    ("mma", {"preset": "imagenet"}, {}, "preset"),
    ("mma", {"d_max": -1.0}, {}, "d_max"),
    ("mma", {"min_eps": 0.5, "d_max": 0.3}, {}, "min_eps < d_max"),
    ("mma", {"clean_loss_coeff": 1.5}, {}, "clean_loss_coeff"),
    ("mma", {"bisection_steps": 0}, {}, "bisection_steps"),
    ("mma", {"dmax": 0.3}, {}, "unknown option"),
    ("mma", {}, {"threat": {"norm": "L1", "eps": 1.0}}, "norms"),
    ("mma", {}, {"eps_warmup_epochs": 1}, "warm-up"),
    ("mma", {}, {"threat": None}, "threat model"),
    ("omma", {"clean_loss_coeff": 0.3}, {}, "clean_loss_coeff must be 0"),
    ("bilateral", {"attack": "pgd"}, {}, "attack"),
    ("bilateral", {"labels": "soft"}, {}, "labels"),
    ("bilateral", {"label_smoothing": 1.0}, {}, "label_smoothing"),
    ("bilateral", {"beta": 0}, {}, "beta"),
])
def test_bad_options_give_clear_errors(method, options, extra, message):
    with pytest.raises(RobustlabError, match=message):
        config(method, options, **extra)
