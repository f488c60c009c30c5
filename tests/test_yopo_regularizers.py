"""YOPO-m-n and the gradient regularizers (Jacobian, double backpropagation, cross-Lipschitz):
their gradients and terms against brute-force computations, training, bad settings and resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.threat import threat_model
from robustlab.training import METHODS, Batch, TrainConfig, load_checkpoint, train
from robustlab.training.adversarial import ascend
from robustlab.training.regularizers import (
    cross_lipschitz_term,
    input_gradient_term,
    jacobian_frobenius_sq,
)
from robustlab.training.yopo import first_layer_name

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.15
LINF = {"norm": "Linf", "eps": EPS}
CHEAP = {
    "yopo": {"outer_steps": 2, "inner_steps": 2},
    "jacobian-reg": {"weight": 0.05},
    "input-grad-reg": {"weight": 0.5},
    "cross-lipschitz": {"weight": 0.01},
}


def make_mlp(*, seed: int = 0, hidden: int = 32, batchnorm: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        middle = [nn.BatchNorm1d(hidden)] if batchnorm else []
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), *middle, nn.ReLU(), nn.Linear(hidden, 10))


def config(method: str, epochs: int = 3, **kwargs) -> TrainConfig:
    values = {"epochs": epochs, "batch_size": 50, "optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0,
              "schedule": "constant", "method": method, "method_options": CHEAP[method],
              "threat": LINF if method == "yopo" else None, "robust_eval_samples": 0}
    return TrainConfig(**{**values, **kwargs})


def batch_of(digits, n: int = 20, eps: float = EPS) -> Batch:
    x, y = digits[0][:n], digits[1][:n]
    return Batch(x, y, torch.arange(n), threat=threat_model("Linf", eps))


def parameter_gradients(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


# --- YOPO --------------------------------------------------------------------------------------


def brute_force_yopo(model: nn.Module, x, y, start, *, m: int, n: int, sigma: float, eps: float):
    """YOPO-m-n written out on the MLP's weights (f0 = Flatten-Linear-ReLU), without hooks or the
    graph cut: returns the accumulated gradients [W0, b0, W1, b1] and the mean cross-entropy."""
    w0, b0, w1, b1 = (p.detach().clone().requires_grad_(True) for p in model.parameters())
    f0 = lambda inp: torch.relu(inp.flatten(1) @ w0.T + b0)
    g = lambda z: z @ w1.T + b1
    total = [torch.zeros_like(w) for w in (w0, b0, w1, b1)]
    losses = []
    x_adv = start
    for _ in range(m):
        ce = F.cross_entropy(g(f0(x_adv)), y)
        z = f0(x_adv).detach().requires_grad_(True)
        (costate,) = torch.autograd.grad(F.cross_entropy(g(z), y), z)
        full = torch.autograd.grad(ce, [w0, b0, w1, b1])
        for _ in range(n):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((f0(x_adv) * costate).sum(), x_adv)
            x_adv = torch.clamp(torch.min(torch.max(x_adv + sigma * grad.sign(), x - eps), x + eps), 0, 1).detach()
        hamiltonian = torch.autograd.grad((f0(x_adv) * costate).sum(), [w0, b0])
        for i in range(4):
            total[i] += full[i] + (hamiltonian[i] if i < 2 else 0)
        losses.append(ce.detach())
    return total, torch.stack(losses).mean()


def test_yopo_gradient_is_the_full_gradients_plus_the_first_layer_hamiltonian(digits):
    model = make_mlp(hidden=16)
    batch = batch_of(digits)
    m, n, sigma = 2, 3, 0.04
    method = METHODS["yopo"](config("yopo", method_options={"outer_steps": m, "inner_steps": n, "step_size": sigma}))
    start = method.make_inputs(model, batch)
    assert 0 < (start - batch.x).abs().max() <= EPS + 1e-6
    loss, logits = method.loss(model, start, batch)
    expected, mean_ce = brute_force_yopo(model, batch.x, batch.y, start, m=m, n=n, sigma=sigma, eps=EPS)
    assert torch.allclose(loss, mean_ce, atol=1e-6)  # the surrogate's value is the mean CE
    for got, want in zip(parameter_gradients(model, loss), expected):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # Teeth: the Hamiltonian part is not negligible, and the perturbation moved.
    natural = parameter_gradients(model, F.cross_entropy(model(start), batch.y))
    assert not torch.allclose(natural[0] * m, expected[0], atol=1e-3)
    assert logits.shape == (20, 10)


def test_yopo_with_one_inner_step_follows_pgd_exactly(digits):
    # n = 1: the frozen co-state is the exact gradient, so the outer iterates are PGD's.
    model = make_mlp(hidden=16)
    batch = batch_of(digits)
    sigma = 0.05
    method = METHODS["yopo"](config("yopo", method_options={"outer_steps": 3, "inner_steps": 1, "step_size": sigma}))
    start = method.make_inputs(model, batch)
    _, logits = method.loss(model, start, batch)
    ce = lambda out: F.cross_entropy(out, batch.y, reduction="none")
    pgd_2 = ascend(model, batch.x, start, ce, threat=batch.threat, steps=2, step_size=sigma)
    assert torch.allclose(logits, model(pgd_2), atol=1e-5)
    assert not torch.allclose(logits, model(start), atol=1e-3)

    # YOPO-1-1 is one-step adversarial training from the random start: g's gradient is the
    # natural gradient there, f0's adds the gradient of <f0(x_FGSM), dCE/dz> at the FGSM point.
    one = METHODS["yopo"](config("yopo", method_options={"outer_steps": 1, "inner_steps": 1, "step_size": sigma}))
    loss, _ = one.loss(model, start, batch)
    got = parameter_gradients(model, loss)
    at_start = parameter_gradients(model, F.cross_entropy(model(start), batch.y))
    x_fgsm = ascend(model, batch.x, start, ce, threat=batch.threat, steps=1, step_size=sigma)
    z = model[:3](start).detach().requires_grad_(True)
    (costate,) = torch.autograd.grad(F.cross_entropy(model[3](z), batch.y), z)
    hamiltonian = torch.autograd.grad((model[:3](x_fgsm) * costate).sum(), list(model[1].parameters()))
    assert torch.allclose(got[2], at_start[2], atol=1e-6) and torch.allclose(got[3], at_start[3], atol=1e-6)
    assert torch.allclose(got[0], at_start[0] + hamiltonian[0], atol=1e-6)
    assert torch.allclose(got[1], at_start[1] + hamiltonian[1], atol=1e-6)


def test_default_first_layer_takes_the_following_activation():
    assert first_layer_name(make_mlp()) == "2"  # Flatten -> Linear -> ReLU
    stem = nn.Sequential()
    stem.add_module("conv1", nn.Conv2d(1, 4, 3))
    stem.add_module("pool", nn.MaxPool2d(2))
    assert first_layer_name(nn.Sequential(stem, nn.Flatten(), nn.LazyLinear(10))) == "0.conv1"
    assert first_layer_name(make_mlp(), "1") == "1"


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(64, 10)

    def forward(self, x):
        return self.first(x.flatten(1)) + x.flatten(1)[:, :10]


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(64, 64)
        self.last = nn.Linear(64, 10)

    def forward(self, x):
        return self.last(self.first(self.first(x.flatten(1))))


@pytest.mark.parametrize(
    "model, first_layer, message",
    [
        (nn.Sequential(nn.Flatten(), nn.Tanh()), None, "no Conv or Linear"),
        (nn.Linear(64, 10), None, "no Conv or Linear"),
        (make_mlp(), "nope", "not a submodule"),
        (make_mlp(), "0", "no trainable parameters"),
        (Skip(), None, "skip connection"),
        (Twice(), None, "more than once"),
        (make_mlp(batchnorm=True), "3", "BatchNorm"),
    ],
)
def test_models_without_a_splittable_first_layer_are_refused(digits, model, first_layer, message):
    options = {"outer_steps": 1, "inner_steps": 1, "first_layer": first_layer}
    method = METHODS["yopo"](config("yopo", method_options=options))
    batch = batch_of(digits, 4)
    if isinstance(model, nn.Linear):
        batch = Batch(batch.x.flatten(1), batch.y, batch.index, threat=batch.threat)
    with pytest.raises(RobustlabError, match=message):
        method.loss(model, method.make_inputs(model, batch), batch)


def test_yopo_presets_and_defaults():
    options = METHODS["yopo"].Options
    assert options().resolve(8 / 255) == (5, 3, 2 / 255)
    assert options(preset="mnist").resolve(0.3) == (5, 10, 0.01)
    assert options(preset="cifar10", inner_steps=4).resolve(8 / 255) == (5, 4, 2 / 255)


# --- regularizer terms ---------------------------------------------------------------------------


def test_exact_jacobian_norm_matches_autograd_and_the_projection_estimate_is_unbiased(digits, digits_mlp):
    x = digits[0][:3].clone().requires_grad_(True)
    logits = digits_mlp(x)
    exact = jacobian_frobenius_sq(logits, x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda inp: digits_mlp(inp[None])[0], x[i].detach())
        assert torch.allclose(exact[i], jac.square().sum(), rtol=1e-5)
    # 600 copies of one example x 5 projections = 3000 independent draws of the estimator.
    copies = digits[0][:1].repeat(600, 1, 1, 1).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    estimates = jacobian_frobenius_sq(digits_mlp(copies), copies, projections=5, generator=generator).detach()
    assert estimates.std() > 0.05 * estimates.mean()  # a real random estimate, not the exact value
    assert abs(estimates.mean() / exact[0].detach() - 1) < 0.06


def test_double_backprop_term_is_the_squared_input_gradient_norm(digits, digits_mlp):
    x, y = digits[0][:5].clone().requires_grad_(True), digits[1][:5]
    term = input_gradient_term(digits_mlp(x), y, x)
    for i in range(5):
        xi = x[i : i + 1].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(digits_mlp(xi), y[i : i + 1]), xi)
        assert torch.allclose(term[i], grad.square().sum(), rtol=1e-5)
    assert term.requires_grad  # differentiable: the optimizer step sees the double backward


def test_cross_lipschitz_term_has_its_closed_form_on_a_linear_model(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    w = model[1].weight.detach()
    closed = sum((w[l] - w[m]).square().sum() for l in range(10) for m in range(10)) / 100
    x = digits[0][:4].clone().requires_grad_(True)
    exact = cross_lipschitz_term(model(x), x)
    assert torch.allclose(exact, closed.expand(4), rtol=1e-5)
    copies = digits[0][:1].repeat(2000, 1, 1, 1).requires_grad_(True)
    estimate = cross_lipschitz_term(model(copies), copies, projections=1, generator=torch.Generator().manual_seed(0))
    assert abs(estimate.mean() / closed - 1) < 0.05


def test_regularized_objectives_are_ce_plus_weight_times_term(digits):
    model = make_mlp()
    x, y = digits[0][:8], digits[1][:8]
    batch = Batch(x, y, torch.arange(8))
    ce = F.cross_entropy(model(x), y)
    xg = x.clone().requires_grad_(True)
    expected = {
        "input-grad-reg": input_gradient_term(model(xg), y, xg).mean(),
        "cross-lipschitz": cross_lipschitz_term(model(xg), xg).mean(),
        "jacobian-reg": 0.5 * jacobian_frobenius_sq(model(xg), xg).mean(),
    }
    for name, term in expected.items():
        options = {"weight": 3.0} if name != "jacobian-reg" else {"weight": 3.0, "projections": None}
        method = METHODS[name](config(name, method_options=options))
        loss, _ = method.loss(model, x, batch)
        assert torch.allclose(loss, ce + 3.0 * term, rtol=1e-5), name
        assert term > 1e-3 * ce
    code = METHODS["jacobian-reg"](config("jacobian-reg", method_options={"variant": "official-code", "projections": None,
                                                                            "weight": 1.0}))
    first = torch.autograd.functional.jacobian(lambda inp: model(inp[None])[0], x[0]).square().sum().sqrt()
    assert torch.allclose(code.loss(model, x, batch).loss, ce + first, rtol=1e-5)


def test_batchnorm_in_train_mode_gets_per_example_terms(digits):
    # The cross-entropy on the train-mode pass (which updates the running statistics), the term
    # on an eval-mode pass, where examples do not interact.
    model = make_mlp(batchnorm=True).train()
    reference = copy.deepcopy(model)
    x, y = digits[0][:8], digits[1][:8]
    method = METHODS["input-grad-reg"](config("input-grad-reg", method_options={"weight": 1.0}))
    loss, _ = method.loss(model, x, Batch(x, y, torch.arange(8)))
    assert model.training and model[2].training
    ce = F.cross_entropy(reference(x), y)
    reference.eval()
    xg = x.clone().requires_grad_(True)
    expected = ce + input_gradient_term(reference(xg), y, xg).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    batch_coupled = ce + input_gradient_term(reference.train()(xg), y, xg).mean()
    assert not torch.allclose(loss, batch_coupled, rtol=1e-3)


# --- training, settings, resume ------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CHEAP))
def test_each_method_trains_and_its_objective_decreases(digits, method):
    x, y, vx, vy = digits
    model = make_mlp()
    result = train(model, x[:600], y[:600], config=config(method, epochs=4), val_x=vx[:200], val_y=vy[:200])
    history = result.history
    assert len(history) == 4
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.6


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("yopo", {"inner_steps": 0}, "inner_steps"),
        ("yopo", {"outer_steps": 2.5}, "outer_steps"),
        ("yopo", {"step_size": -0.1}, "step_size"),
        ("yopo", {"preset": "svhn"}, "preset"),
        ("yopo", {"first_layer": 3}, "first_layer"),
        ("yopo", {"lr_over_m": True}, "unknown option"),
        ("jacobian-reg", {"weight": -1.0}, "weight"),
        ("jacobian-reg", {"projections": 0}, "projections"),
        ("jacobian-reg", {"variant": "paper"}, "variant"),
        ("jacobian-reg", {"variant": "official-code"}, "projections=None"),
        ("input-grad-reg", {"weight": float("nan")}, "weight"),
        ("cross-lipschitz", {"projections": True}, "projections"),
    ],
)
def test_bad_options_give_clear_errors(method, options, message):
    with pytest.raises(RobustlabError, match=message):
        config(method, method_options=options)


def test_yopo_needs_a_threat_model():
    with pytest.raises(RobustlabError, match="threat model"):
        config("yopo", threat=None)


class Stop(Exception):
    pass


def stop_after_first(record):
    if record["epoch"] == 1:
        raise Stop


@pytest.mark.parametrize("method, options", [("yopo", None), ("jacobian-reg", None),
                                             ("cross-lipschitz", {"projections": 2, "weight": 0.01})])
def test_kill_and_resume_gives_bitwise_identical_weights(digits, tmp_path, method, options):
    x, y = digits[0][:100], digits[1][:100]
    cfg = config(method, epochs=2, **({} if options is None else {"method_options": options}))
    whole = make_mlp()
    train(whole, x, y, config=cfg)
    with pytest.raises(Stop):
        train(make_mlp(), x, y, config=cfg, checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    assert "generator" in load_checkpoint(tmp_path / "last.ckpt")["method"]
    resumed = make_mlp(seed=3)
    train(resumed, x, y, config=cfg, checkpoint_dir=tmp_path)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
