"""Attacks: the conformance suite every registered attack must pass, oracle tests on a linear
model where the optimal attack has a closed form, behavioral tests on a trained digits model
(an attack that does nothing must fail them), bad input, and the losses."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustlab.attacks import ATTACKS, BIM, FGSM, PGD, Attack, GaussianNoise, build_attack
from robustlab.attacks.composition import BPDA, EOT, bpda_mode
from robustlab.attacks.fmn import FMN
from robustlab.models.preprocessing import InputTransformDefense
from robustlab.errors import ProbabilityOutputWarning, RobustlabError
from robustlab.losses import cross_entropy, dlr, get_loss, margin
from robustlab.threat import L1, L2, NORMS, Linf, ThreatModel
from conftest import InputRecorder, linear_two_class, ramp3

# --- helpers ----------------------------------------------------------------------------------

# Cheap hyperparameters per registered attack. Attacks missing here still run, with defaults,
# so that a newly registered attack is covered by the conformance suite automatically.
OVERRIDES: dict[str, dict] = {
    "pgd": {"steps": 5}, "bim": {"steps": 5}, "gaussian-noise": {"draws": 2},
    "fab": {"steps": 5}, "fab-t": {"steps": 3, "n_target_classes": 2},
    "deepfool": {"steps": 5}, "fmn": {"steps": 5}, "ddn": {"steps": 5}, "jsma": {"max_distortion": 0.1},
    "cw-l2": {"binary_search_steps": 3, "max_iterations": 10},
    "cw-l0": {"max_iterations": 10, "initial_const": 1.0, "largest_const": 16.0},
    "cw-linf": {"max_iterations": 10, "initial_const": 1.0, "largest_const": 16.0},
    "apgd": {"steps": 5}, "apgd-t": {"steps": 5, "n_target_classes": 2},
    "square": {"queries": 30}, "boundary": {"max_queries": 150, "init_draws": 20},
    "hopskipjump": {"max_queries": 400, "init_draws": 20, "steps": 2, "initial_evaluations": 20},
}
# Attacks that never call backward; every other attack is expected to.
GRADIENT_FREE = {"gaussian-noise", "square", "boundary", "hopskipjump"}
EPS = {"Linf": 0.1, "L2": 0.5, "L1": 2.0, "L0": 3}

CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name, cls in sorted(ATTACKS.items())
    for norm in sorted(cls.norms)
]
NAMES = sorted(ATTACKS)
N_CLASSES = 5


# Small tensors throughout: one thread is as fast, and robust to a busy machine (see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str) -> Attack:
    return build_attack(name, **OVERRIDES.get(name, {}))


def threat_for(norm: str) -> ThreatModel:
    return NORMS[norm](eps=EPS[norm])


def fresh_predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predictions from a forward pass in eval mode; the model's mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    finally:
        for m, mode in modes:
            m.training = mode


class TinyCNN(nn.Module):
    """[N, 3, 6, 6] -> [N, 5] with a BatchNorm and a Dropout, so that train/eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def make_tiny_model(seed: int = 0) -> nn.Module:
    """A TinyCNN in train mode with non-trivial BatchNorm statistics and ``.grad`` set, one
    parameter frozen and one without a gradient, and one submodule in eval mode (so that only a
    per-module restore passes)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyCNN()
        model.train()
        for _ in range(2):
            model(torch.rand(8, 3, 6, 6)).sum().backward()
    model.conv.bias.requires_grad_(False)
    model.conv.bias.grad = None
    model.bn.bias.grad = None
    model.fc.eval()
    return model


@pytest.fixture
def tiny_model() -> nn.Module:
    return make_tiny_model()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(1)
    x = torch.rand(6, 3, 6, 6, generator=g)
    y = torch.randint(0, N_CLASSES, (6,), generator=g)
    return x, y


@dataclass
class ModelState:
    training: list[bool]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    grad_values: list[torch.Tensor | None]
    tensors: list[torch.Tensor]  # parameters and buffers (BatchNorm statistics)

    @classmethod
    def of(cls, model: nn.Module) -> "ModelState":
        params = list(model.parameters())
        return cls(
            training=[m.training for m in model.modules()],
            requires_grad=[p.requires_grad for p in params],
            grads=[p.grad for p in params],
            grad_values=[None if p.grad is None else p.grad.clone() for p in params],
            tensors=[t.detach().clone() for t in [*params, *model.buffers()]],
        )

    def assert_unchanged(self, model: nn.Module) -> None:
        after = ModelState.of(model)
        assert after.training == self.training, "per-module training flags changed"
        assert after.requires_grad == self.requires_grad, "requires_grad flags changed"
        for before_grad, now_grad, value in zip(self.grads, after.grads, self.grad_values):
            assert now_grad is before_grad, ".grad was replaced"
            if value is not None:
                assert torch.equal(now_grad, value), ".grad values changed"
        for before, now in zip(self.tensors, after.tensors):
            assert torch.equal(before, now), "parameters or buffers changed"


# --- 1. conformance suite over every registered attack ---------------------------------------


def test_registry_lists_the_core_attacks():
    assert {"fgsm", "bim", "pgd", "gaussian-noise"} <= set(ATTACKS)
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == name and cls.norms
        assert cls.norms <= set(NORMS)


@pytest.mark.parametrize("name,norm", CASES)
def test_result_is_inside_the_threat_set_and_the_box(name, norm, tiny_model, batch):
    x, y = batch
    threat = threat_for(norm)
    result = build(name)(tiny_model, x, y, threat=threat, generator=gen())
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert threat.contains(x, result.x_adv, tol=1e-6).all()
    assert (result.x_adv >= 0).all() and (result.x_adv <= 1).all()
    assert result.success.dtype == torch.bool and result.success.shape == (6,)
    for per_sample in (result.distance, result.loss, result.predictions):
        assert per_sample.shape == (6,)
    assert len(result) == 6


@pytest.mark.parametrize("name,norm", CASES)
def test_inputs_are_not_mutated(name, norm, tiny_model, batch):
    x, y = batch
    x_before, y_before = x.clone(), y.clone()
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert not x.requires_grad and x.grad is None
    assert result.x_adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name,norm", CASES)
def test_model_state_is_restored(name, norm, tiny_model, batch):
    x, y = batch
    state = ModelState.of(tiny_model)
    build(name)(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    state.assert_unchanged(tiny_model)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("name,norm", CASES)
def test_model_state_is_restored_when_the_attack_raises(name, norm, tiny_model, batch, monkeypatch):
    x, y = batch
    attack = build(name)
    seen: dict[str, bool] = {}

    def failing_run(self, oracle, x, y, **kwargs):
        seen["any_training"] = any(m.training for m in tiny_model.modules())
        seen["any_requires_grad"] = any(p.requires_grad for p in tiny_model.parameters())
        oracle.loss_and_grad(x, lambda logits: logits.logsumexp(dim=1))  # use the model, then fail
        raise _Boom

    monkeypatch.setattr(type(attack), "_run", failing_run)
    state = ModelState.of(tiny_model)
    with pytest.raises(_Boom):
        attack(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    # During the run the model was in eval mode with frozen parameters ...
    assert seen == {"any_training": False, "any_requires_grad": False}
    # ... and afterwards everything is as before.
    state.assert_unchanged(tiny_model)


@pytest.mark.parametrize("name,norm", CASES)
def test_success_matches_a_fresh_forward_pass(name, norm, tiny_model, batch):
    x, y = batch
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    predictions = fresh_predictions(tiny_model, result.x_adv)
    assert torch.equal(result.predictions, predictions)
    assert torch.equal(result.success, predictions != y)
    assert result.targets is None


@pytest.mark.parametrize("name,norm", CASES)
def test_same_generator_seed_gives_the_same_result(name, norm, tiny_model, batch):
    x, y = batch
    attack, threat = build(name), threat_for(norm)
    first = attack(tiny_model, x, y, threat=threat, generator=gen(7))
    second = attack(tiny_model, x, y, threat=threat, generator=gen(7))
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.success, second.success)


@pytest.mark.parametrize("name,norm", CASES)
def test_batch_of_one(name, norm, tiny_model, batch):
    x, y = batch
    threat = threat_for(norm)
    result = build(name)(tiny_model, x[:1], y[:1], threat=threat, generator=gen())
    assert result.x_adv.shape == (1, 3, 6, 6) and result.success.shape == (1,)
    assert threat.contains(x[:1], result.x_adv).all()
    assert torch.equal(result.success, fresh_predictions(tiny_model, result.x_adv) != y[:1])


@pytest.mark.parametrize("name,norm", CASES)
def test_empty_batch(name, norm, tiny_model):
    x, y = torch.empty(0, 3, 6, 6), torch.empty(0, dtype=torch.int64)
    state = ModelState.of(tiny_model)
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    assert result.x_adv.shape == (0, 3, 6, 6)
    assert result.success.shape == (0,) and result.success.dtype == torch.bool
    assert result.distance.shape == (0,) and result.predictions.shape == (0,) and result.loss.shape == (0,)
    assert len(result) == 0 and math.isnan(result.success_rate)
    state.assert_unchanged(tiny_model)


@pytest.mark.parametrize("name,norm", CASES)
def test_distance_matches_the_threat_model(name, norm, tiny_model, batch):
    x, y = batch
    threat = threat_for(norm)
    result = build(name)(tiny_model, x, y, threat=threat, generator=gen())
    torch.testing.assert_close(result.distance, threat.distance(x, result.x_adv))
    assert (result.distance <= threat.eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("name,norm", CASES)
def test_cost_counters(name, norm, tiny_model, batch):
    x, y = batch
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), generator=gen())
    assert result.forwards >= 2 * len(x)  # at least the clean check and the fresh success check
    if name in GRADIENT_FREE:
        assert result.backwards == 0
    else:
        # Attacks with early stopping skip samples the model already misclassifies.
        assert result.backwards > 0


class _IdentityDefense(InputTransformDefense):
    """A non-differentiable layer whose transform and BPDA approximation are both the identity:
    BPDA through it must give the plain attack's result bit for bit."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _nested(name: str) -> Attack:
    """The decision-based attacks with a gradient ``init_attack`` nested inside, so that the
    wrappers' oracle must reach it (issue 16: EOT used to fail setting its counters)."""
    if name in ("boundary", "hopskipjump"):
        return build_attack(name, **OVERRIDES[name], init_attack=FMN(steps=3))
    return build(name)


WRAPPED = [
    pytest.param("eot", lambda a: EOT(a, draws=2), id="eot"),
    pytest.param("bpda", lambda a: BPDA(a), id="bpda"),
    pytest.param("eot+bpda", lambda a: EOT(BPDA(a), draws=2), id="eot+bpda"),
]


@pytest.mark.parametrize("kind, wrap", WRAPPED)
@pytest.mark.parametrize("name,norm", CASES)
def test_every_attack_under_eot_and_bpda_is_the_plain_attack_on_a_deterministic_identity_defense(
        name, norm, kind, wrap, tiny_model, batch):
    """On a deterministic model EOT's mean of ``draws`` identical passes is the pass itself, and
    BPDA through an identity layer is the plain gradient: every registered attack (the
    decision-based ones with a nested init_attack) must return the plain attack's points bit for
    bit, at exactly ``draws`` times the attack's own model passes (the template's clean and
    final forwards are not repeated). The plain attack is the one the wrapper holds: EOT turns
    an early stop off."""
    x, y = batch
    defended = _IdentityDefense(tiny_model)
    threat = threat_for(norm)
    model = defended if "bpda" in kind else tiny_model
    wrapper = wrap(_nested(name))
    inner = wrapper.attack
    while isinstance(inner, (EOT, BPDA)):
        inner = inner.attack
    # The plain attack; on the defended model with the identity's gradient, as BPDA takes it.
    with bpda_mode(defended) if "bpda" in kind else contextlib.nullcontext():
        plain = inner(model, x, y, threat=threat, generator=gen())
    state = ModelState.of(tiny_model)
    wrapped = wrapper(model, x, y, threat=threat, generator=gen())
    state.assert_unchanged(tiny_model)
    assert threat.contains(x, wrapped.x_adv).all()
    assert torch.equal(wrapped.x_adv, plain.x_adv)
    assert torch.equal(wrapped.success, fresh_predictions(model, wrapped.x_adv) != y)
    draws = 2 if "eot" in kind else 1
    n = len(x)
    assert wrapped.forwards == draws * (plain.forwards - 2 * n) + 2 * n
    assert wrapped.backwards == draws * plain.backwards


# Documented costs per sample (forwards, backwards), template's two forwards included.
EXACT_COSTS = {
    ("fgsm", ()): (3, 1),
    ("pgd", (("steps", 5),)): (5 + 1 + 2, 5),
    ("pgd", (("restarts", 1), ("steps", 3))): (3 + 1 + 2, 3),
    ("bim", (("steps", 5),)): (5 + 1 + 2, 5),
    ("gaussian-noise", (("draws", 3),)): (3 + 2, 0),
}


@pytest.mark.parametrize("name,options", list(EXACT_COSTS), ids=lambda v: str(v))
def test_cost_counters_match_the_documented_cost(name, options, tiny_model, batch):
    x, y = batch
    result = build_attack(name, **dict(options))(tiny_model, x, y, threat=Linf(eps=0.1), generator=gen())
    forwards, backwards = EXACT_COSTS[(name, options)]
    assert (result.forwards, result.backwards) == (forwards * len(x), backwards * len(x))


@pytest.mark.parametrize("name,norm", CASES)
def test_targeted_with_random_targets(name, norm, tiny_model, batch):
    x, y = batch
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), targets="random", generator=gen())
    t = result.targets
    assert t is not None and t.shape == y.shape and t.dtype == torch.int64
    assert (t != y).all() and (t >= 0).all() and (t < N_CLASSES).all()
    assert torch.equal(result.success, fresh_predictions(tiny_model, result.x_adv) == t)


@pytest.mark.parametrize("name,norm", CASES)
def test_targeted_with_given_targets(name, norm, tiny_model, batch):
    x, y = batch
    targets = (y + 1 + torch.arange(len(y)) % (N_CLASSES - 1)) % N_CLASSES
    result = build(name)(tiny_model, x, y, threat=threat_for(norm), targets=targets, generator=gen())
    assert torch.equal(result.targets, targets)
    assert torch.equal(result.success, fresh_predictions(tiny_model, result.x_adv) == targets)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_json_friendly(name):
    config = build(name).config()
    assert config["attack"] == name
    json.dumps(config)
    for key, value in OVERRIDES.get(name, {}).items():
        assert config[key] == value


@pytest.mark.parametrize("name", NAMES)
def test_attacks_are_frozen_configuration(name):
    attack = build(name)
    field = next(iter(attack.config().keys() - {"attack"}), None)
    if field is not None:
        with pytest.raises(AttributeError):
            setattr(attack, field, None)


def test_different_seeds_give_different_random_starts(tiny_model, batch):
    x, y = batch
    attack = PGD(steps=2)
    a = attack(tiny_model, x, y, threat=Linf(eps=0.1), generator=gen(1))
    b = attack(tiny_model, x, y, threat=Linf(eps=0.1), generator=gen(2))
    assert not torch.equal(a.x_adv, b.x_adv)


# --- 2. oracle tests on a linear model -------------------------------------------------------

D = 8
BOX = (-10.0, 10.0)  # far from the inputs: only the ball binds
# Each sample's minimal eps is factor * EPS_ORACLE: the attack must succeed exactly when factor < 1.
FACTORS = torch.tensor([0.5, 0.9, 0.97, 0.99, 1.01, 1.03, 1.1, 2.0])
EPS_ORACLE = 0.5


def samples_with_minimal_eps(w: torch.Tensor, c: float, dual_norm: float, seed: int = 1):
    """Points near 0 whose minimal flipping perturbation is ``FACTORS * EPS_ORACLE`` in the norm
    whose dual norm of ``w`` is ``dual_norm``; both signs of the margin. Labels = clean class."""
    factors = torch.cat([FACTORS, FACTORS])
    signs = torch.cat([torch.ones(len(FACTORS)), -torch.ones(len(FACTORS))])
    margins = signs * factors * EPS_ORACLE * dual_norm
    z = 0.1 * torch.randn(len(margins), D, generator=gen(seed))
    x = z + ((margins - z @ w - c) / (w @ w))[:, None] * w
    y = (margins > 0).long()
    return x, y, margins, factors


def _linf_vertex(x, w, margins, eps):
    return x - eps * torch.sign(w)[None] * torch.sign(margins)[:, None]


def _l2_point(x, w, margins, eps):
    return x - eps * (w / w.norm())[None] * torch.sign(margins)[:, None]


def _l1_vertex(x, w, margins, eps):
    k = w.abs().argmax()
    out = x.clone()
    out[:, k] -= eps * torch.sign(w[k]) * torch.sign(margins)
    return out


ORACLE_CASES = [
    pytest.param(lambda: FGSM(), "Linf", id="fgsm-Linf"),
    pytest.param(lambda: PGD(steps=10), "Linf", id="pgd-Linf"),
    pytest.param(lambda: BIM(steps=10, step_size=EPS_ORACLE / 4), "Linf", id="bim-Linf"),
    pytest.param(lambda: FGSM(), "L2", id="fgsm-L2"),
    # From a random start in L2 the iterate's angle to w shrinks by eps / (eps + step) per step,
    # so the default step (2.5 eps / steps) cannot reach a 1% margin; eps / 2 does in 20 steps.
    pytest.param(lambda: PGD(steps=20, step_size=EPS_ORACLE / 2), "L2", id="pgd-L2"),
    pytest.param(lambda: PGD(steps=20, random_start=False), "L2", id="pgd-L2-no-random-start"),
    pytest.param(lambda: PGD(steps=20), "L1", id="pgd-L1"),
]
DUAL = {"Linf": 1, "L2": 2, "L1": math.inf}


@pytest.mark.parametrize("make_attack,norm", ORACLE_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_model_broken_exactly_above_the_minimal_eps(make_attack, norm, seed):
    model, w, c = linear_two_class(D, seed)
    x, y, margins, factors = samples_with_minimal_eps(w, c, float(torch.linalg.vector_norm(w, DUAL[norm])), seed + 10)
    assert torch.equal(fresh_predictions(model, x), y)  # the labels are the clean classes
    threat = NORMS[norm](eps=EPS_ORACLE, bounds=BOX)
    result = make_attack()(model, x, y, threat=threat, generator=gen(seed))
    assert result.success.tolist() == (factors < 1).tolist()


@pytest.mark.parametrize(
    "make_attack,norm,closed_form,atol",
    [
        pytest.param(lambda: FGSM(), "Linf", _linf_vertex, 1e-6, id="fgsm-Linf"),
        pytest.param(lambda: PGD(steps=10), "Linf", _linf_vertex, 1e-6, id="pgd-Linf"),
        pytest.param(lambda: FGSM(), "L2", _l2_point, 1e-5, id="fgsm-L2"),
        pytest.param(lambda: PGD(steps=10, random_start=False), "L2", _l2_point, 1e-5, id="pgd-L2-from-x"),
        # From a random start the iterate's angle to w halves at every step of size eps; the best
        # iterate is picked by a float32 loss, which cannot resolve angles much below 1e-3.
        pytest.param(lambda: PGD(steps=30, step_size=EPS_ORACLE), "L2", _l2_point, 1e-3, id="pgd-L2-random-start"),
        pytest.param(lambda: PGD(steps=30, step_size=EPS_ORACLE), "L1", _l1_vertex, 1e-4, id="pgd-L1"),
    ],
)
def test_linear_model_attack_reaches_the_closed_form_optimum(make_attack, norm, closed_form, atol):
    # The loss grows along -sign(margin) * w, so the best point of the ball is the closed form
    # for every sample, broken or not.
    model, w, c = linear_two_class(D, 3)
    x, y, margins, _ = samples_with_minimal_eps(w, c, float(torch.linalg.vector_norm(w, DUAL[norm])), 4)
    threat = NORMS[norm](eps=EPS_ORACLE, bounds=BOX)
    result = make_attack()(model, x, y, threat=threat, generator=gen(5))
    torch.testing.assert_close(result.x_adv, closed_form(x, w, margins, EPS_ORACLE), atol=atol, rtol=0)
    torch.testing.assert_close(result.distance, torch.full((len(x),), EPS_ORACLE), atol=atol, rtol=0)


class BandModel(nn.Module):
    """1-D input; class 1 only in the band |x - 0.5| < 0.15, class 0 elsewhere. A third output
    ``drift = x - 100`` (never the argmax) gives a loss that keeps growing with x, so gradient
    ascent on it walks through the band and out again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0]
        band = 0.15**2 - (x - 0.5) ** 2
        return torch.stack([torch.zeros_like(x), band, x - 100], dim=1)


def _drift(logits, labels, targets=None):
    return logits[:, 2]


def test_pgd_keeps_the_best_iterate_not_the_last():
    # Iterates 0.2, 0.3, ..., 1.0: only 0.4, 0.5 and 0.6 are adversarial. The best iterate is the
    # successful one with the highest loss, 0.6; the last iterate, 1.0, is not adversarial.
    x, y = torch.tensor([[0.2]]), torch.tensor([0])
    attack = PGD(steps=8, step_size=0.1, random_start=False, loss=_drift)
    result = attack(BandModel(), x, y, threat=Linf(eps=0.8))
    assert result.success.tolist() == [True]
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.6]]))


def test_pgd_early_stop_keeps_the_first_adversarial_iterate():
    x, y = torch.tensor([[0.2]]), torch.tensor([0])
    attack = PGD(steps=8, step_size=0.1, random_start=False, loss=_drift, early_stop=True)
    result = attack(BandModel(), x, y, threat=Linf(eps=0.8))
    assert result.success.tolist() == [True]
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.4]]))
    assert result.backwards == 3  # iterates 0.2, 0.3, 0.4, then stopped


def test_gaussian_noise_has_the_documented_scale(tiny_model):
    x = torch.full((64, 3, 6, 6), 0.5)
    y = torch.zeros(64, dtype=torch.int64)
    result = GaussianNoise(sigma=10.0)(tiny_model, x, y, threat=Linf(eps=math.inf), generator=gen())
    noise = result.x_adv - x
    assert float(noise.std()) == pytest.approx(10 / 255, rel=0.05)
    assert abs(float(noise.mean())) < 0.002


def test_gaussian_noise_more_draws_never_lose(tiny_model, batch):
    x, y = batch
    threat = L2(eps=2.0)
    one = GaussianNoise(sigma=80.0)(tiny_model, x, y, threat=threat, generator=gen(2))
    several = GaussianNoise(sigma=80.0, draws=6)(tiny_model, x, y, threat=threat, generator=gen(2))
    assert (several.success | ~one.success).all()
    # Unbroken samples keep a noisy draw, not the clean input.
    assert (threat.distance(x, several.x_adv) > 0).all()


# --- 3. behavioral tests on a trained, non-robust digits model -------------------------------


def assert_much_less_robust(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
    *, max_robust_accuracy: float = 0.10, min_drop: float = 0.60,
) -> None:
    """The behavioral bar: on a non-robust model, a working attack leaves robust accuracy (from a
    fresh forward pass, not from the attack's own report) well below clean accuracy."""
    with torch.no_grad():
        clean = float((model(x).argmax(dim=1) == y).float().mean())
        robust = float((model(x_adv).argmax(dim=1) == y).float().mean())
    assert robust <= max_robust_accuracy, f"robust accuracy {robust:.3f} > {max_robust_accuracy} (clean {clean:.3f})"
    assert clean - robust >= min_drop, f"robust accuracy {robust:.3f} is only {clean - robust:.3f} below clean {clean:.3f}"


@pytest.fixture(scope="module")
def digits_test(digits):
    _, _, x_test, y_test = digits
    return x_test, y_test


def test_digits_model_is_accurate(digits_mlp, digits_test):
    x, y = digits_test
    assert float((fresh_predictions(digits_mlp, x) == y).float().mean()) > 0.93


# Radii where the clean-trained MLP is not robust (the strongest attack we have, PGD with 200
# steps, 5 restarts and the margin loss, leaves robust accuracy about 42% at Linf eps 0.1, so
# 0.1 would test the model rather than the attack; at 0.2 a working attack gets it to ~1%).
BEHAVIOR_CASES = [
    pytest.param(PGD(steps=10), Linf(eps=0.2), 0.05, id="pgd-Linf"),
    pytest.param(PGD(steps=10), L2(eps=1.5), 0.05, id="pgd-L2"),
    pytest.param(PGD(steps=20), L1(eps=6.0), 0.08, id="pgd-L1"),
    pytest.param(BIM(), Linf(eps=0.2), 0.05, id="bim-Linf-paper-schedule"),
    pytest.param(FGSM(), Linf(eps=0.2), 0.05, id="fgsm-Linf"),
    pytest.param(FGSM(), L2(eps=1.5), 0.05, id="fgsm-L2"),
    pytest.param(PGD(steps=10, loss="margin"), Linf(eps=0.2), 0.05, id="pgd-margin-loss"),
    pytest.param(PGD(steps=10, loss="margin", kappa=5.0), Linf(eps=0.2), 0.05, id="pgd-margin-kappa"),
    pytest.param(PGD(steps=10, loss="dlr"), Linf(eps=0.2), 0.05, id="pgd-dlr-loss"),
    pytest.param(PGD(steps=10, early_stop=True), Linf(eps=0.2), 0.05, id="pgd-early-stop"),
]


@pytest.mark.parametrize("attack,threat,max_robust_accuracy", BEHAVIOR_CASES)
def test_attack_breaks_a_non_robust_model(attack, threat, max_robust_accuracy, digits_mlp, digits_test):
    x, y = digits_test
    result = attack(digits_mlp, x, y, threat=threat, generator=gen())
    assert threat.contains(x, result.x_adv).all()
    assert_much_less_robust(digits_mlp, x, y, result.x_adv, max_robust_accuracy=max_robust_accuracy)


def test_pgd_at_linf_eps_0_1_is_close_to_a_much_stronger_attack(digits_mlp, digits_test):
    # At eps 0.1 the model keeps ~42% robust accuracy against any attack we have; what PGD must
    # show here is strength relative to a far more expensive run, and a large drop from clean.
    x, y = digits_test
    threat = Linf(eps=0.1)
    pgd = PGD(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    strong = PGD(steps=100, restarts=4, loss="margin")(digits_mlp, x, y, threat=threat, generator=gen(1))
    assert int(pgd.success.sum()) >= int(strong.success.sum()) - 0.02 * len(x)
    assert_much_less_robust(digits_mlp, x, y, pgd.x_adv, max_robust_accuracy=0.55, min_drop=0.40)


@dataclass(frozen=True, kw_only=True)
class IdentityAttack(PGD):
    """A lazy attack: returns its input unchanged."""

    name = "identity"

    def _run(self, oracle, x, y, *, threat, targets, generator):
        return x.clone(), {}


@pytest.mark.parametrize("threat", [Linf(eps=0.2), L2(eps=1.5)], ids=["Linf", "L2"])
def test_behavioral_bar_rejects_an_attack_that_does_nothing(threat, digits_mlp, digits_test):
    x, y = digits_test
    result = IdentityAttack()(digits_mlp, x, y, threat=threat, generator=gen())
    with pytest.raises(AssertionError, match="robust accuracy"):
        assert_much_less_robust(digits_mlp, x, y, result.x_adv)


def test_behavioral_bar_rejects_random_noise_of_the_same_budget(digits_mlp, digits_test):
    x, y = digits_test
    result = GaussianNoise(sigma=50.0)(digits_mlp, x, y, threat=Linf(eps=0.2), generator=gen())
    with pytest.raises(AssertionError, match="robust accuracy"):
        assert_much_less_robust(digits_mlp, x, y, result.x_adv)


def test_restarts_never_lose_and_do_find_more(digits_mlp, digits_test):
    # Few, weak steps, so that the random start matters. Same seed: the first restart is the
    # single-start run, so restarts can only add successes.
    x, y = digits_test
    threat = Linf(eps=0.1)
    single = PGD(steps=1)(digits_mlp, x, y, threat=threat, generator=gen(3))
    several = PGD(steps=1, restarts=8)(digits_mlp, x, y, threat=threat, generator=gen(3))
    assert (several.success | ~single.success).all()
    assert int(several.success.sum()) >= int(single.success.sum()) + 5
    restart = several.extras["restart"]
    assert (restart[several.success & ~single.success] > 0).all()
    assert (restart[single.success] == 0).all()
    # Broken samples are not attacked again: fewer forwards than restarts * N * (steps + 1).
    assert several.forwards < 8 * len(x) * 2 + 2 * len(x)


def test_pgd_is_at_least_as_strong_as_fgsm(digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=0.15)
    pgd = PGD(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    fgsm = FGSM()(digits_mlp, x, y, threat=threat, generator=gen())
    assert int(pgd.success.sum()) >= int(fgsm.success.sum())


def test_targeted_pgd_reaches_the_target(digits_mlp, digits_test):
    x, y = digits_test
    result = PGD(steps=20)(digits_mlp, x, y, threat=Linf(eps=0.25), targets="random", generator=gen())
    assert float(result.success.float().mean()) >= 0.85
    predictions = fresh_predictions(digits_mlp, result.x_adv)
    assert torch.equal(predictions[result.success], result.targets[result.success])


def test_pgd_loss_goes_up(digits_mlp, digits_test):
    x, y = digits_test
    result = PGD(steps=10)(digits_mlp, x, y, threat=Linf(eps=0.05), generator=gen())
    with torch.no_grad():
        clean_loss = cross_entropy(digits_mlp(x), y)
    torch.testing.assert_close(result.loss, cross_entropy(digits_mlp(result.x_adv), y).detach())
    assert (result.loss >= clean_loss - 1e-5).all()
    assert float(result.loss.mean()) > 2 * float(clean_loss.mean())


# --- 4. bad input -----------------------------------------------------------------------------


def run_pgd(model, x, y, threat=None, **kwargs):
    return PGD(steps=2)(model, x, y, threat=threat or Linf(eps=0.1), generator=gen(), **kwargs)


@pytest.mark.parametrize(
    "make_x,make_y,keyword",
    [
        pytest.param(lambda x: x[0, 0, 0], lambda y: y, "dimensions", id="x-1d"),
        pytest.param(lambda x: x, lambda y: y[:, None], "y must have shape", id="y-2d"),
        pytest.param(lambda x: x, lambda y: y[:-1], "y must have shape", id="y-too-short"),
        pytest.param(lambda x: x, lambda y: y.float(), "integer", id="float-labels"),
        pytest.param(lambda x: x, lambda y: y > 0, "integer", id="bool-labels"),
        pytest.param(lambda x: (x * 255).to(torch.uint8), lambda y: y, "floating-point", id="integer-x"),
        pytest.param(lambda x: x, lambda y: torch.full_like(y, N_CLASSES), "labels must lie in", id="label-too-big"),
        pytest.param(lambda x: x, lambda y: torch.full_like(y, -1), "labels must lie in", id="label-negative"),
        pytest.param(lambda x: x.index_put((torch.tensor(0),), torch.tensor(math.nan)), lambda y: y, "NaN", id="nan-x"),
        pytest.param(lambda x: x.index_put((torch.tensor(1),), torch.tensor(math.inf)), lambda y: y, "inf", id="inf-x"),
        pytest.param(lambda x: x + 0.1 * (x > 0.5), lambda y: y, "outside", id="x-above-box"),
        pytest.param(lambda x: x - 0.1 * (x < 0.5), lambda y: y, "outside", id="x-below-box"),
        pytest.param(lambda x: x.numpy(), lambda y: y, "tensors", id="numpy-x"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(make_x, make_y, keyword, tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match=keyword):
        run_pgd(tiny_model, make_x(x), make_y(y))


def test_model_state_is_restored_after_a_rejected_label(tiny_model, batch):
    # Label range is checked against the model's outputs, i.e. inside the frozen-model context.
    x, y = batch
    state = ModelState.of(tiny_model)
    with pytest.raises(RobustlabError):
        run_pgd(tiny_model, x, torch.full_like(y, 99))
    state.assert_unchanged(tiny_model)


def test_x_slightly_outside_the_box_is_clamped_silently(tiny_model, batch):
    x, y = batch
    x = x.clone()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1 + 1e-7, -1e-7
    x_before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_pgd(tiny_model, x, y)
    assert (result.x_adv >= 0).all() and (result.x_adv <= 1).all()
    assert torch.equal(x, x_before)


def test_threat_must_be_a_threat_model(tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match="ThreatModel"):
        PGD(steps=2)(tiny_model, x, y, threat=0.1)  # type: ignore[arg-type]


def test_zero_eps_is_rejected_at_construction():
    with pytest.raises(RobustlabError, match="eps"):
        Linf(eps=0)


def test_probability_outputs_warn(tiny_model, batch):
    x, y = batch
    softmax_model = nn.Sequential(tiny_model, nn.Softmax(dim=1))
    with pytest.warns(ProbabilityOutputWarning, match="probabilities"):
        run_pgd(softmax_model, x, y)


def test_logits_do_not_warn(tiny_model, batch):
    x, y = batch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_pgd(tiny_model, x, y)


def test_model_with_wrong_output_shape_is_rejected(batch):
    x, y = batch
    with pytest.raises(RobustlabError, match="logits of shape"):
        run_pgd(nn.Flatten(0), x, y)


@pytest.mark.parametrize(
    "name,norm",
    [(name, norm) for name, cls in sorted(ATTACKS.items()) for norm in sorted(set(NORMS) - cls.norms)],
)
def test_unsupported_norm_is_rejected(name, norm, tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match="supports the norms"):
        build(name)(tiny_model, x, y, threat=threat_for(norm))


def test_dlr_with_two_classes_is_rejected(batch):
    x, _ = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    y = torch.zeros(len(x), dtype=torch.int64)
    with pytest.raises(RobustlabError, match="at least 3 classes"):
        PGD(steps=2, loss="dlr")(model, x, y, threat=Linf(eps=0.1))


def test_targeted_dlr_with_three_classes_is_rejected(batch):
    x, _ = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3))
    y = torch.zeros(len(x), dtype=torch.int64)
    with pytest.raises(RobustlabError, match="at least 4 classes"):
        PGD(steps=2, loss="dlr")(model, x, y, threat=Linf(eps=0.1), targets=torch.ones_like(y))


def test_unknown_attack_name_is_rejected():
    with pytest.raises(RobustlabError, match="unknown attack"):
        build_attack("pgd-but-better")


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(RobustlabError, match="bad hyperparameters"):
        build_attack("pgd", stepz=10)


def test_hyperparameters_must_be_keywords():
    with pytest.raises(TypeError):
        PGD(10)  # type: ignore[misc]


@pytest.mark.parametrize(
    "name,options,keyword",
    [
        ("pgd", {"steps": 0}, "steps"),
        ("pgd", {"steps": 2.5}, "steps"),
        ("pgd", {"restarts": 0}, "restarts"),
        ("pgd", {"step_size": -0.01}, "step_size"),
        ("pgd", {"step_size": 0.0}, "step_size"),
        ("pgd", {"step_size": math.inf}, "step_size"),
        ("bim", {"steps": 0}, "steps"),
        ("bim", {"restarts": 0}, "restarts"),
        ("bim", {"step_size": -0.01}, "step_size"),
        ("gaussian-noise", {"sigma": 0.0}, "sigma"),
        ("gaussian-noise", {"sigma": math.nan}, "sigma"),
        ("gaussian-noise", {"draws": 0}, "draws"),
    ],
)
def test_bad_hyperparameters_are_rejected(name, options, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        build_attack(name, **options)


def test_targets_equal_to_labels_are_rejected(tiny_model, batch):
    x, y = batch
    targets = (y + 1) % N_CLASSES
    targets[2] = y[2]
    with pytest.raises(RobustlabError, match="target equals the true label"):
        run_pgd(tiny_model, x, y, targets=targets)


@pytest.mark.parametrize(
    "make_targets,keyword",
    [
        pytest.param(lambda y: torch.full_like(y, N_CLASSES), "targets must lie in", id="out-of-range"),
        pytest.param(lambda y: ((y + 1) % N_CLASSES)[:-1], "targets must have shape", id="wrong-shape"),
        pytest.param(lambda y: ((y + 1) % N_CLASSES).float(), "integer", id="float"),
        pytest.param(lambda y: "most-likely", "unknown target mode", id="unknown-mode"),
    ],
)
def test_bad_targets_are_rejected(make_targets, keyword, tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match=keyword):
        run_pgd(tiny_model, x, y, targets=make_targets(y))


@pytest.mark.parametrize("mode", ["least-likely", "most-confusing"])
def test_named_target_modes(mode, tiny_model, batch):
    x, y = batch
    result = run_pgd(tiny_model, x, y, targets=mode)
    with torch.no_grad():
        tiny_model.eval()
        logits = tiny_model(x)
    expected = logits.argmin(1) if mode == "least-likely" else logits.scatter(1, y[:, None], -math.inf).argmax(1)
    assert torch.equal(result.targets, expected)


def test_fgsm_needs_a_bounded_threat(tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match=r"^FGSM steps by eps; it needs a bounded threat model$"):
        FGSM()(tiny_model, x, y, threat=Linf(eps=math.inf))
    with pytest.raises(RobustlabError, match=r"^BIM's default number of steps depends on eps; give steps= for an "
                                             r"unbounded threat$"):
        BIM()(tiny_model, x, y, threat=Linf(eps=math.inf))


def test_pgd_needs_a_step_size_for_an_unbounded_threat(tiny_model, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match=r"^ProjectedGradientDescent needs an explicit step_size for an "
                                             r"unbounded threat model$"):
        PGD(steps=2)(tiny_model, x, y, threat=L2(eps=math.inf))
    PGD(steps=2, step_size=0.1)(tiny_model, x, y, threat=L2(eps=math.inf))


# --- 5. losses --------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.5]])
LABELS = torch.tensor([0, 2])
TARGETS = torch.tensor([1, 3])


def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_cross_entropy_by_hand():
    expected = [_lse([2.0, 1.0, 0.5, -1.0]) - 2.0, _lse([0.0, 3.0, 1.0, 2.5]) - 1.0]
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS), torch.tensor(expected))
    # Targeted: minus the cross-entropy towards the target (climbing it makes the target win).
    expected_t = [-(_lse([2.0, 1.0, 0.5, -1.0]) - 1.0), -(_lse([0.0, 3.0, 1.0, 2.5]) - 2.5)]
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS, TARGETS), torch.tensor(expected_t))


def test_margin_by_hand():
    # Untargeted: max_{j != y} Z_j - Z_y = [1 - 2, 3 - 1] = [-1, 2].
    torch.testing.assert_close(margin(LOGITS, LABELS, kappa=10.0), torch.tensor([-1.0, 2.0]))
    # Targeted: Z_t - max_{j != t} Z_j = [1 - 2, 2.5 - 3] = [-1, -0.5].
    torch.testing.assert_close(margin(LOGITS, LABELS, TARGETS, kappa=10.0), torch.tensor([-1.0, -0.5]))


@pytest.mark.parametrize("kappa,expected", [(0.0, [-1.0, 0.0]), (1.5, [-1.0, 1.5]), (10.0, [-1.0, 2.0])])
def test_margin_is_capped_at_kappa(kappa, expected):
    torch.testing.assert_close(margin(LOGITS, LABELS, kappa=kappa), torch.tensor(expected))
    torch.testing.assert_close(get_loss("margin", kappa=kappa)(LOGITS, LABELS), torch.tensor(expected))


def test_margin_default_kappa_is_zero():
    torch.testing.assert_close(margin(LOGITS, LABELS), torch.tensor([-1.0, 0.0]))


def test_dlr_by_hand():
    # Untargeted: -(Z_y - max_{j != y} Z_j) / (pi1 - pi3).
    # Row 0: sorted 2, 1, 0.5, -1: -(2 - 1) / (2 - 0.5). Row 1: sorted 3, 2.5, 1, 0: -(1 - 3) / (3 - 1).
    torch.testing.assert_close(dlr(LOGITS, LABELS), torch.tensor([-1 / 1.5, 1.0]))
    # Targeted: -(Z_y - Z_t) / (pi1 - (pi3 + pi4) / 2).
    # Row 0: -(2 - 1) / (2 - (0.5 - 1) / 2). Row 1: -(1 - 2.5) / (3 - (1 + 0) / 2).
    torch.testing.assert_close(dlr(LOGITS, LABELS, TARGETS), torch.tensor([-1 / 2.25, 1.5 / 2.5]))


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_dlr_is_invariant_to_logit_shift_and_scale(targeted):
    g = gen(0)
    logits = torch.randn(16, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=g)
    targets = (labels + torch.randint(1, 10, (16,), generator=g)) % 10 if targeted else None
    base = dlr(logits, labels, targets)
    shift = torch.randn(16, 1, generator=g, dtype=torch.float64) * 5
    for scale in (0.1, 3.0, 100.0):
        torch.testing.assert_close(dlr(scale * logits + shift, labels, targets), base)
    # Cross-entropy is not: the invariance is a property of DLR, not of the test.
    assert not torch.allclose(cross_entropy(3.0 * logits, labels), cross_entropy(logits, labels))


def test_dlr_needs_enough_classes():
    with pytest.raises(RobustlabError, match="at least 3 classes"):
        dlr(torch.randn(2, 2), torch.tensor([0, 1]))
    with pytest.raises(RobustlabError, match="at least 4 classes"):
        dlr(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([1, 2]))


def test_get_loss_resolves_names_and_callables():
    assert get_loss("ce") is cross_entropy and get_loss("dlr") is dlr
    custom = lambda logits, labels, targets=None: logits.sum(1)  # noqa: E731
    assert get_loss(custom) is custom
    with pytest.raises(RobustlabError, match="unknown loss"):
        get_loss("hinge")


def test_losses_grow_as_the_true_class_loses():
    confident = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    unsure = torch.tensor([[1.0, 0.8, 0.0, 0.0]])
    wrong = torch.tensor([[0.0, 2.0, 0.5, 0.0]])
    label = torch.tensor([0])
    for loss in (cross_entropy, lambda z, y: margin(z, y, kappa=10.0), dlr):
        values = [float(loss(z, label)) for z in (confident, unsure, wrong)]
        assert values[0] < values[1] < values[2]


# --- gradient attacks pinned to their definitions (issue 15) ---------------------------------


@pytest.mark.parametrize("eps255,steps", [(0.5, 1), (1, 2), (4, 5), (8, 10), (16, 20), (32, 36)])
def test_bim_schedule_follows_the_paper(eps255, steps):
    # Kurakin et al. 2016: step 1 on the 0-255 scale and min(eps + 4, 1.25 eps) steps, rounded up.
    assert BIM()._schedule(Linf(eps=float(eps255), bounds=(0.0, 255.0))) == (steps, 1.0)
    assert BIM(steps=7, step_size=0.5)._schedule(Linf(eps=float(eps255), bounds=(0.0, 255.0))) == (7, 0.5)
    # The scale is the box's width: on [-1, 1] the step is 2/255.
    assert BIM()._schedule(Linf(eps=eps255 * 2 / 255, bounds=(-1.0, 1.0))) == (steps, pytest.approx(2 / 255))


def _linear3() -> nn.Module:
    g = torch.Generator().manual_seed(5)
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 6, generator=g) * 3)
        model.bias.copy_(-0.5 * model.weight.sum(1))  # logits W (x - 0.5): boundaries near the middle
    return model


@pytest.mark.parametrize("options", [
    {"loss": "margin", "kappa": 3.0},
    {"random_start": True, "restarts": 3, "early_stop": True, "targeted": True},
], ids=["margin-kappa", "random-restarts-early-stop-targeted"])
def test_bim_is_pgd_with_every_option_passed_through(options):
    # Without steps=, BIM is PGD on its schedule (here ceil(min(40 + 4, 50)) = 44 steps of 1/255),
    # and every other option reaches the PGD it runs.
    options = dict(options)
    model = _linear3()
    x = 0.5 + 0.1 * torch.randn(4, 6, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    targets = (y + 1) % 3 if options.pop("targeted", False) else None
    threat = Linf(eps=40 / 255)
    bim, pgd = InputRecorder(model), InputRecorder(model)
    BIM(**options)(bim, x, y, threat=threat, targets=targets, generator=gen(3))
    result = PGD(steps=44, step_size=1 / 255, **{"random_start": False, **options})(
        pgd, x, y, threat=threat, targets=targets, generator=gen(3))
    assert result.success.any()  # broken samples: early stop and the cap at kappa are in play
    assert len(bim.inputs) == len(pgd.inputs)
    for a, b in zip(bim.inputs, pgd.inputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Each option changes the run (so that dropping one would show).
    plain = InputRecorder(model)
    PGD(steps=44, step_size=1 / 255, random_start=False)(plain, x, y, threat=threat, generator=gen(3))
    assert len(plain.inputs) != len(pgd.inputs) or any(not torch.equal(a, b) for a, b in zip(plain.inputs, pgd.inputs))


class _Feature0(nn.Module):
    """Two classes: class 1 when feature 0 exceeds 0.5 (logit difference 10 (x_0 - 0.5))."""

    def forward(self, x):
        s = 10 * (x[:, 0] - 0.5)
        return torch.stack([-s, s], dim=1)


def test_restarts_attack_only_the_unbroken_samples_and_report_the_winning_restart():
    # Sample 0 breaks in the first restart (0.49 + 0.05 > 0.5), sample 1 never (0.1 + 0.05).
    x = torch.tensor([[0.49, 0.5], [0.1, 0.5]])
    y = torch.zeros(2, dtype=torch.long)
    threat = Linf(eps=0.05)
    recorder = InputRecorder(_Feature0())
    result = PGD(steps=1, step_size=0.05, random_start=False, restarts=3)(recorder, x, y, threat=threat)
    # The template's clean pass, then per restart the start and the scored last iterate, then the check.
    assert [len(t) for t in recorder.inputs] == [2, 2, 2, 1, 1, 1, 1, 2]
    assert result.success.tolist() == [True, False]
    assert result.extras["restart"].dtype == torch.int64 and result.extras["restart"].tolist() == [0, 0]
    # All broken before the last restart: the remaining restarts are skipped.
    recorder = InputRecorder(_Feature0())
    result = PGD(steps=1, step_size=0.05, random_start=False, restarts=3)(recorder, x[:1], y[:1], threat=threat)
    assert [len(t) for t in recorder.inputs] == [1, 1, 1, 1] and result.success.tolist() == [True]


def test_targeted_fgsm_steps_towards_the_target():
    model = _linear3()
    x = 0.5 + 0.1 * torch.randn(4, 6, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    t = (y + 1) % 3
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(-torch.nn.functional.cross_entropy(model(xg), t, reduction="sum"), xg)
    result = FGSM()(model, x, y, threat=Linf(eps=0.05), targets=t)
    torch.testing.assert_close(result.x_adv, (x + 0.05 * g.sign()).clamp(0, 1))


def test_pgd_default_step_is_two_and_a_half_eps_over_steps():
    # Madry et al.'s `robustness` library: step = 2.5 eps / steps; from x, the first L-inf step moves
    # every coordinate (with a non-zero gradient) by exactly that.
    model, _, _ = linear_two_class(6)
    x = torch.full((2, 6), 0.5)
    recorder = InputRecorder(model)
    PGD(steps=10, random_start=False)(recorder, x, torch.zeros(2, dtype=torch.long), threat=Linf(eps=0.1))
    torch.testing.assert_close((recorder.inputs[2] - x).abs(), torch.full_like(x, 0.025))


def test_a_callable_margin_loss_gets_kappa():
    z = torch.tensor([[10.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([1, 1])
    assert PGD(loss=margin, kappa=4.0).loss_fn(z, y, None).tolist() == [4.0, -2.0]
    assert PGD(loss=cross_entropy, kappa=4.0).loss_fn(z, y, None).tolist() == cross_entropy(z, y).tolist()


def test_fgsm_l2_steps_eps_along_the_normalised_gradient():
    model, _, _ = linear_two_class(6)
    x = torch.full((2, 6), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    result = FGSM()(model, x, y, threat=L2(eps=0.2))
    torch.testing.assert_close(result.x_adv, x + 0.2 * g / g.norm(dim=1, keepdim=True))


def test_targeted_pgd_success_is_the_target_with_or_without_early_stop():
    # Early stop must not change which samples succeed: a sample that passes through a third class
    # on its way to the target is not done there.
    model = _linear3()
    x = 0.5 + 0.1 * torch.randn(16, 6, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
        t = model(x).argmin(1)  # the least likely class: the path often crosses the third class
    threat = Linf(eps=0.2)
    recorder = InputRecorder(model)
    full = PGD(steps=20, step_size=0.01, random_start=False)(recorder, x, y, threat=threat, targets=t)
    with torch.no_grad():
        through_third = torch.stack([(model(it).argmax(1) != y) & (model(it).argmax(1) != t)
                                     for it in recorder.inputs[1:21]]).any(dim=0)
        assert torch.equal(full.success, model(full.x_adv).argmax(1) == t)
    assert (through_third & full.success).any()
    stopped = PGD(steps=20, step_size=0.01, random_start=False, early_stop=True)(model, x, y, threat=threat, targets=t)
    assert torch.equal(stopped.success, full.success)


def test_targeted_pgd_scores_its_last_iterate_by_the_target():
    # Targeted at class 1 from u = -1.4: the iterates are u = -1.4, -0.4 (both class 0) and the last one,
    # u = 0.6, jumps over the narrow target band into class 2. Misclassified, but not the target: the last
    # iterate is neither a success nor the best targeted loss, so the best is u = -0.4 (x = 0.46).
    x, y, t = torch.tensor([[0.36]]), torch.tensor([0]), torch.tensor([1])
    model = ramp3()
    for early_stop in (False, True):
        result = PGD(steps=2, step_size=0.1, random_start=False, early_stop=early_stop)(
            model, x, y, threat=Linf(eps=0.3), targets=t)
        torch.testing.assert_close(result.x_adv, torch.tensor([[0.46]]))
        assert not bool(result.success)


def test_pgd_early_stop_returns_the_first_adversarial_iterate():
    # Sample 0 (u = -0.9) is misclassified at its second iterate (u = 0.1, class 1) and stops there, while
    # sample 1 (u = -5, eps 0.3 reaches u = -2 at most) never breaks and keeps the batch running to the
    # last step. The stopped sample's point is its first adversarial iterate, not the step past it.
    x, y = torch.tensor([[0.41], [0.0]]), torch.tensor([0, 0])
    result = PGD(steps=3, step_size=0.1, random_start=False, early_stop=True)(ramp3(), x, y, threat=Linf(eps=0.3))
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.51], [0.3]]))
    assert result.success.tolist() == [True, False]
