"""Tests of robustlab.training.certified: IBP and CROWN-IBP certified training in the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import torch_threads
from torch import nn

from robustlab.certify import CROWN, IBP
from robustlab.errors import RobustlabError
from robustlab.threat import Linf, threat_model
from robustlab.training import METHODS, Batch, TrainConfig, load_checkpoint, train
from robustlab.training.certified import (
    CERTIFIED_METHODS,
    CertifiedTrainingOptions,
    CROWNIBPMethod,
    IBPMethod,
    certified_loss,
    schedule,
    train_certified,
    worst_case_logits,
)

EPS = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def make_mlp(*, seed: int = 0, hidden: int = 64, batchnorm: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Flatten(), nn.Linear(64, hidden)]
        if batchnorm:
            layers += [nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.2)]
        else:
            layers += [nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(hidden, 10))


def adam(epochs: int, method: str = "ibp", **kwargs) -> TrainConfig:
    """The run's settings; certified methods get a placeholder radius that train_certified replaces."""
    if method in CERTIFIED_METHODS:
        kwargs.setdefault("method_options", {"eps": 0.1})
    return TrainConfig(epochs=epochs, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0.0,
                       schedule="constant", method=method, **kwargs)


class Stop(Exception):
    pass


def stop_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise Stop

    return callback


# --- registration and settings -------------------------------------------------------------


def test_methods_are_registered_and_need_options(digits):
    assert METHODS["ibp"] is IBPMethod and METHODS["crown-ibp"] is CROWNIBPMethod
    assert set(CERTIFIED_METHODS) == {"ibp", "crown-ibp"}
    with pytest.raises(RobustlabError, match="train_certified"):
        TrainConfig(method="ibp")
    with pytest.raises(RobustlabError, match="unknown option.*'epsilon'.*valid options: eps, norm"):
        TrainConfig(method="ibp", method_options={"epsilon": 0.1})
    with pytest.raises(RobustlabError, match="eps_warmup_epochs"):
        TrainConfig(method="ibp", method_options={"eps": 0.1}, threat={"norm": "Linf", "eps": 0.1}, eps_warmup_epochs=1)
    # The radius may come from the threat model instead.
    from_threat = IBPMethod(TrainConfig(method="ibp", threat=threat_model("L2", 0.5), method_options={"ramp_steps": 3}))
    assert (from_threat.options.eps, from_threat.options.norm, from_threat.options.ramp_steps) == (0.5, "L2", 3)
    x, y, _, _ = digits
    with pytest.raises(RobustlabError, match="config.method"):
        train_certified(make_mlp(), x[:50], y[:50], config=adam(1, "distillation-teacher"),
                        options=CertifiedTrainingOptions(eps=0.1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"), (dict(eps=math.nan), "eps"), (dict(eps=0.1, norm="L0"), "norm"),
    (dict(eps=0.1, bounds=(1.0, 0.0)), "bounds"), (dict(eps=0.1, ramp_steps=-1), "ramp_steps"),
    (dict(eps=0.1, warmup_steps=1.5), "warmup_steps"), (dict(eps=0.1, kappa_end=1.5), "kappa_end"),
    (dict(eps=0.1, beta_start=-0.1), "beta_start"),
])
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(RobustlabError, match=message):
        CertifiedTrainingOptions(**kwargs)


# --- schedules -------------------------------------------------------------------------------


def test_ramp_schedules_give_the_documented_values():
    options = CertifiedTrainingOptions(eps=0.4, warmup_steps=10, ramp_steps=100)  # Gowal: kappa 1 -> 0.5
    for step, fraction in [(0, 0.0), (10, 0.0), (35, 0.25), (60, 0.5), (110, 1.0), (10_000, 1.0)]:
        ibp = schedule(options, step, method="ibp")
        crown = schedule(options, step, method="crown-ibp")
        assert ibp.fraction == pytest.approx(fraction) and crown.fraction == pytest.approx(fraction)
        assert ibp.eps == pytest.approx(0.4 * fraction) and crown.eps == ibp.eps
        assert ibp.kappa == pytest.approx(1 - 0.5 * fraction) and crown.kappa == ibp.kappa
        assert ibp.beta == 0.0  # IBP never mixes in CROWN-IBP
        assert crown.beta == pytest.approx(1 - fraction)  # Zhang et al.: beta 1 -> 0
    jump = CertifiedTrainingOptions(eps=0.3, warmup_steps=5, kappa_end=0.0, beta_start=0.5, beta_end=0.5)
    assert schedule(jump, 4) == (0.0, 1.0, 0.5, 0.0)
    assert schedule(jump, 5) == (0.3, 0.0, 0.5, 1.0)


def test_method_counts_steps_and_uses_the_schedule(digits):
    x, y, _, _ = digits
    options = CertifiedTrainingOptions(eps=0.2, warmup_steps=3, ramp_steps=8)
    method = CROWNIBPMethod(adam(1, "crown-ibp", method_options=options.to_dict()))
    model = make_mlp()
    seen = []
    batch = Batch(x[:20], y[:20], torch.arange(20))
    for _ in range(12):
        method.loss(model, x[:20], batch)
        seen.append(method.last)
    assert method.step == 12 and method.state_dict()["step"] == 12
    assert [s.eps for s in seen] == pytest.approx([0, 0, 0, 0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2])
    assert seen[-1].kappa == pytest.approx(0.5) and seen[-1].beta == pytest.approx(0.0)


# --- the objective ------------------------------------------------------------------------------


def test_worst_case_logits_match_the_certifiers(digits, digits_mlp):
    _, _, x, y = digits
    x, y = x[:64], y[:64]
    threat = threat_model("Linf", EPS)
    with torch.no_grad():
        ibp = worst_case_logits(digits_mlp, x, y, threat=threat, beta=0.0)
        crown_ibp = worst_case_logits(digits_mlp, x, y, threat=threat, beta=1.0)
        mixed = worst_case_logits(digits_mlp, x, y, threat=threat, beta=0.25)
    assert torch.all(ibp.gather(1, y[:, None]) == 0)
    margins = IBP()(digits_mlp, x, y, threat=threat).margins
    finite = torch.isfinite(margins)
    assert torch.allclose(-ibp[finite], margins[finite], atol=1e-5)
    crown_margins = CROWN(intermediate="ibp", with_ibp=False)(digits_mlp, x, y, threat=threat).margins
    assert torch.allclose(-crown_ibp[finite], crown_margins[finite], atol=1e-4)
    assert torch.allclose(mixed, 0.25 * crown_ibp + 0.75 * ibp, atol=1e-5)
    # Sound: the worst-case logits are at least as adversarial as the clean ones.
    with torch.no_grad():
        clean = digits_mlp(x)
    assert torch.all(ibp + 1e-5 >= clean - clean.gather(1, y[:, None]))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_loss_is_finite_and_differentiable(digits, beta):
    x, y, _, _ = digits
    x, y = x[:32].double(), y[:32]
    model = make_mlp(hidden=16).double().train()
    out = certified_loss(model, x, y, threat=Linf(0.1), kappa=0.5, beta=beta)
    assert out.worst_logits is not None and torch.isfinite(out.loss)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.loss, params)
    assert all(torch.isfinite(g).all() for g in grads) and all(g.abs().sum() > 0 for g in grads)
    # Directional finite difference: the bound is piecewise smooth, so at a generic point the
    # analytic gradient matches it.
    generator = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    h = 1e-6

    def at(sign):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * h * d)
            value = certified_loss(model, x, y, threat=Linf(0.1), kappa=0.5, beta=beta).loss
            for p, d in zip(params, direction):
                p.sub_(sign * h * d)
        return value

    numeric = (at(1) - at(-1)) / (2 * h)
    assert float(numeric) == pytest.approx(float(analytic), rel=1e-4, abs=1e-7)


def test_robust_term_is_skipped_at_eps_zero_or_kappa_one(digits):
    x, y, _, _ = digits
    model = make_mlp()
    plain = nn.functional.cross_entropy(model(x[:20]), y[:20])
    for eps, kappa in [(0.0, 0.5), (0.1, 1.0)]:
        out = certified_loss(model, x[:20], y[:20], threat=Linf(0.1), eps=eps, kappa=kappa)
        assert out.worst_logits is None and torch.equal(out.loss, plain)


# --- training ------------------------------------------------------------------------------------


def test_ibp_training_gives_much_higher_certified_accuracy(digits, digits_mlp):
    x, y, vx, vy = digits
    threat = threat_model("Linf", EPS)
    natural = IBP()(digits_mlp, vx, vy, threat=threat)
    model = make_mlp()
    steps = 20 * 28  # 20 epochs of 1400 / 50
    options = CertifiedTrainingOptions(eps=1.5 * EPS, warmup_steps=steps // 10, ramp_steps=steps // 2)
    history = train_certified(model, x, y, config=adam(20), options=options).history
    assert all(math.isfinite(r["train_loss"]) for r in history)
    certified = IBP()(model, vx, vy, threat=threat)
    clean = float(certified.clean_correct.float().mean())
    assert clean > 0.9
    assert natural.certified_accuracy < 0.4
    assert certified.certified_accuracy > 0.7
    assert certified.certified_accuracy > natural.certified_accuracy + 0.4
    assert CROWN()(model, vx, vy, threat=threat).certified_accuracy >= certified.certified_accuracy


def test_crown_ibp_training_trains(digits):
    x, y, vx, vy = digits
    model = make_mlp()
    options = CertifiedTrainingOptions(eps=EPS, warmup_steps=28, ramp_steps=5 * 28)
    train_certified(model, x, y, config=adam(8, "crown-ibp"), options=options)
    result = CROWN(intermediate="ibp")(model, vx, vy, threat=threat_model("Linf", EPS))
    assert float(result.clean_correct.float().mean()) > 0.85
    assert result.certified_accuracy > 0.5


def test_warmup_only_is_natural_training(digits):
    x, y, _, _ = digits
    natural, certified = make_mlp(), make_mlp()
    train(natural, x[:300], y[:300], config=adam(2, "natural"))
    train_certified(certified, x[:300], y[:300], config=adam(2, "ibp"),
                    options=CertifiedTrainingOptions(eps=0.1, warmup_steps=1000))
    for (key, a), b in zip(natural.state_dict().items(), certified.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("method, batchnorm", [("ibp", False), ("crown-ibp", True)])
def test_resume_is_exact_with_the_method_state(digits, tmp_path, method, batchnorm):
    x, y, vx, vy = digits
    x, y = x[:300], y[:300]
    options = CertifiedTrainingOptions(eps=0.1, warmup_steps=3, ramp_steps=12)  # ramp spans the break
    config = adam(4, method)
    whole = make_mlp(batchnorm=batchnorm)
    train_certified(whole, x, y, config=config, options=options, val_x=vx, val_y=vy)
    with pytest.raises(Stop):
        train_certified(make_mlp(batchnorm=batchnorm), x, y, config=config, options=options,
                        checkpoint_dir=tmp_path, on_epoch_end=stop_after(2))
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["method"]["step"] == 2 * 6 and state["config"]["method_options"] == options.to_dict()
    # Different options: refused.
    with pytest.raises(RobustlabError, match="method_options"):
        train_certified(make_mlp(batchnorm=batchnorm), x, y, config=config,
                        options=CertifiedTrainingOptions(eps=0.2, warmup_steps=3, ramp_steps=12),
                        checkpoint_dir=tmp_path)
    resumed = make_mlp(seed=99, batchnorm=batchnorm)
    result = train_certified(resumed, x, y, config=config, options=options, val_x=vx, val_y=vy,
                             checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "last.ckpt")["method"]["step"] == 4 * 6
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_options_in_the_config_and_model_mode(digits):
    x, y, _, _ = digits
    model = make_mlp(batchnorm=True)
    result = train(model, x[:100], y[:100], config=adam(1, method_options={"eps": 0.1}))
    assert len(result.history) == 1 and not model.training
