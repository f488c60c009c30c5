"""BPDA, EOT and transfer wrappers: they break the defenses that mask gradients from plain PGD,
keep the cost counters honest, follow the attack contract, and reject bad settings."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from robustlab.attacks import APGD, APGDT, DDN, FGSM, PGD
from robustlab.attacks.composition import BPDA, EOT, Reparameterization, SingleDrawEOTWarning, TransferAttack
from robustlab.errors import RobustlabError
from robustlab.models.preprocessing import (
    BitDepthReduction,
    InputTransformDefense,
    JPEGDefense,
    RandomResizePad,
    ThermometerEncoding,
)
from robustlab.threat import L0, L2, Linf
from conftest import train_digits_mlp

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.15  # L∞ on [0, 1]: plain PGD-10 leaves the digits MLP about 5% accurate


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sample(digits) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits
    return x_test[:100], y_test[:100]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> float:
    """Mean accuracy over ``draws`` forward passes (the expectation, for a random model)."""
    with torch.no_grad():
        return sum(float((model(x).argmax(1) == y).float().mean()) for _ in range(draws)) / draws


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int = 0) -> nn.Module:
    """Adam on ``model``'s parameters, minibatches of 50 from a local generator; eval mode after."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = gen(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=order)
        for start in range(0, x.shape[0], 50):
            idx = perm[start : start + 50]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def mlp(in_features: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def resize_pad_model(digits, single_thread) -> RandomResizePad:
    """An MLP trained through the random resize-and-pad defense (r in {7, 8, 9}, canvas 10x10),
    so that the randomness is part of the deployed model, as in Xie et al."""
    x_train, y_train, _, _ = digits
    defense = RandomResizePad(mlp(100), min_size=7, out_size=10, generator=gen(1))
    train(defense, x_train, y_train, epochs=15)
    return defense


@pytest.fixture(scope="module")
def thermometer_model(digits, single_thread) -> ThermometerEncoding:
    """An MLP trained on 8-level thermometer codes of the digits (Buckman et al.'s defense)."""
    x_train, y_train, _, _ = digits
    defense = ThermometerEncoding(mlp(64 * 8), levels=8)
    train(defense.model, defense.transform(x_train), y_train, epochs=10)
    return defense


# --- BPDA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    pytest.param(lambda m: BitDepthReduction(m, bits=3), id="bit-depth"),
    pytest.param(lambda m: JPEGDefense(m, quality=75), id="jpeg"),
])
def test_plain_pgd_is_masked_but_bpda_pgd_breaks_the_defense(make, digits_mlp, sample):
    x, y = sample
    defended, threat = make(digits_mlp), Linf(eps=EPS)
    clean = accuracy(defended, x, y)
    assert clean > 0.9
    undefended = 1 - PGD(steps=10)(digits_mlp, x, y, threat=threat, generator=gen()).success_rate
    masked = 1 - PGD(steps=10)(defended, x, y, threat=threat, generator=gen()).success_rate
    bpda = 1 - BPDA(PGD(steps=10))(defended, x, y, threat=threat, generator=gen()).success_rate
    assert undefended < 0.15
    assert masked > clean - 0.1  # zero gradients: only the random start moves the input
    assert bpda < undefended + 0.1


def test_bpda_with_the_soft_thermometer_breaks_thermometer_encoding(thermometer_model, sample):
    x, y = sample
    threat = Linf(eps=EPS)
    clean = accuracy(thermometer_model, x, y)
    assert clean > 0.85
    masked = 1 - PGD(steps=10)(thermometer_model, x, y, threat=threat, generator=gen()).success_rate
    bpda = 1 - BPDA(PGD(steps=10))(thermometer_model, x, y, threat=threat, generator=gen()).success_rate
    assert masked > clean - 0.1
    assert bpda < 0.25


def test_bpda_costs_what_the_wrapped_attack_costs(digits_mlp, sample):
    x, y = sample[0][:8], sample[1][:8]
    threat = Linf(eps=EPS)
    plain = PGD(steps=3)(digits_mlp, x, y, threat=threat, generator=gen())
    wrapped = BPDA(PGD(steps=3))(BitDepthReduction(digits_mlp, bits=8), x, y, threat=threat, generator=gen())
    assert (wrapped.forwards, wrapped.backwards) == (plain.forwards, plain.backwards) == (8 * (2 + 3 + 1), 8 * 3)


def test_bpda_needs_a_defense_in_the_model(digits_mlp, sample):
    with pytest.raises(RobustlabError, match="no robustlab.models.preprocessing.InputTransformDefense"):
        BPDA(PGD(steps=2))(digits_mlp, *sample, threat=Linf(eps=EPS))


# --- EOT ----------------------------------------------------------------------------------------


def test_eot_pgd_beats_single_draw_pgd_on_random_resize_and_pad(resize_pad_model, sample):
    x, y = sample
    threat = Linf(eps=0.1)
    assert accuracy(resize_pad_model, x, y, draws=20) > 0.7
    resize_pad_model.generator.manual_seed(5)
    single = PGD(steps=10)(resize_pad_model, x, y, threat=threat, generator=gen())
    resize_pad_model.generator.manual_seed(5)
    eot = EOT(PGD(steps=10), draws=10)(resize_pad_model, x, y, threat=threat, generator=gen())
    single_acc = accuracy(resize_pad_model, single.x_adv, y, draws=20)
    eot_acc = accuracy(resize_pad_model, eot.x_adv, y, draws=20)
    assert eot_acc < single_acc - 0.05


class AlwaysDropout(nn.Module):
    """Dropout that stays on in eval mode (Monte-Carlo dropout as a randomised defense)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, p=0.5, training=True)


def test_eot_averages_out_dropout_noise(digits_mlp, sample):
    x, y = sample
    flatten, hidden, relu, head = digits_mlp
    noisy = nn.Sequential(flatten, hidden, relu, AlwaysDropout(), head)
    threat = Linf(eps=0.1)
    with torch.random.fork_rng():  # the dropout draws come from the global RNG
        torch.manual_seed(0)
        clean = accuracy(noisy, x, y, draws=20)
        single = PGD(steps=5)(noisy, x, y, threat=threat, generator=gen())
        eot = EOT(PGD(steps=5), draws=32)(noisy, x, y, threat=threat, generator=gen())
        single_acc = accuracy(noisy, single.x_adv, y, draws=20)
        eot_acc = accuracy(noisy, eot.x_adv, y, draws=20)
    assert eot_acc < clean - 0.3
    # Over seeds 0-2 the gap was 0.05-0.09 (100 samples, 20 evaluation draws).
    assert eot_acc < single_acc - 0.03


def test_eot_counts_every_draw(resize_pad_model, sample):
    x, y = sample[0][:8], sample[1][:8]
    result = EOT(PGD(steps=3), draws=4)(resize_pad_model, x, y, threat=Linf(eps=0.1), generator=gen())
    # template: clean + final check; PGD: 3 gradient steps and 1 last-iterate score, each x4 draws.
    assert result.forwards == 8 * (2 + 4 * 3 + 4 * 1)
    assert result.backwards == 8 * 4 * 3


def test_eot_runs_the_wrapped_attack_s_whole_budget(resize_pad_model, sample):
    # A point misclassified on the average of the draws is not yet misclassified by one draw:
    # EOT turns the wrapped attack's early stop off (and the give-up rules that need it).
    x, y = sample[0][:8], sample[1][:8]
    eot = EOT(APGD(loss="ce", steps=4, give_up=2.0, keep_near=0.5), draws=3)
    assert (eot.attack.early_stop, eot.attack.give_up, eot.attack.keep_near) == (False, None, None)
    assert eot.config()["inner"]["early_stop"] is False  # what evaluations record and fingerprint
    assert EOT(BPDA(APGDT(steps=4)), draws=3).attack.attack.early_stop is False
    assert EOT(PGD(steps=4, early_stop=True), draws=3).attack.early_stop is False
    result = eot(resize_pad_model, x, y, threat=Linf(eps=0.5), generator=gen())
    assert bool(result.success.all())  # broken early, yet attacked to the end:
    # the start and 3 steps take a gradient (the last iterate is only scored), each x3 draws.
    assert result.backwards == 8 * 3 * 4
    early = APGD(loss="ce", steps=4)(resize_pad_model, x, y, threat=Linf(eps=0.5), generator=gen())
    assert early.backwards < 8 * 4  # without EOT the early stop stays


def test_eot_and_bpda_compose_on_a_random_non_differentiable_defense(resize_pad_model, sample):
    x, y = sample
    defended = BitDepthReduction(resize_pad_model, bits=3)
    threat = Linf(eps=EPS)
    resize_pad_model.generator.manual_seed(0)
    clean = accuracy(defended, x, y, draws=10)
    masked = EOT(PGD(steps=5), draws=4)(defended, x, y, threat=threat, generator=gen())
    broken = EOT(BPDA(PGD(steps=5)), draws=4)(defended, x, y, threat=threat, generator=gen())
    reversed_order = BPDA(EOT(PGD(steps=5), draws=4))(defended, x, y, threat=threat, generator=gen())
    assert accuracy(defended, masked.x_adv, y, draws=10) > clean - 0.1
    assert accuracy(defended, broken.x_adv, y, draws=10) < clean - 0.4
    assert accuracy(defended, reversed_order.x_adv, y, draws=10) < clean - 0.4
    assert broken.backwards == reversed_order.backwards == 100 * 4 * 5


def test_single_draw_eot_warns():
    with pytest.warns(SingleDrawEOTWarning, match="draws=1"):
        EOT(PGD(), draws=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EOT(PGD(), draws=2)


# --- transfer -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def surrogate(digits, single_thread) -> nn.Module:
    x_train, y_train, _, _ = digits
    return train_digits_mlp(x_train, y_train, seed=1, epochs=10)


def test_transfer_from_an_independent_surrogate_breaks_most_inputs(digits_mlp, surrogate, sample):
    x, y = sample
    result = TransferAttack(PGD(steps=10), surrogates=[surrogate])(digits_mlp, x, y, threat=Linf(eps=EPS), generator=gen())
    correct = digits_mlp(x).argmax(1) == y
    assert result.success[correct].float().mean() > 0.5
    assert result.extras["surrogate_success"].float().mean() > 0.8
    # Only the template's clean and success forwards touch the target; surrogate cost is separate.
    assert (result.forwards, result.backwards) == (200, 0)
    assert result.extras["surrogate_backwards"] == 100 * 10
    assert result.extras["surrogate_forwards"] == 100 * (2 + 10 + 1)


def test_transfer_from_an_ensemble_of_surrogates(digits, digits_mlp, surrogate, sample):
    x, y = sample
    other = train_digits_mlp(digits[0], digits[1], seed=2, epochs=5)
    attack = TransferAttack(PGD(steps=10), surrogates=[surrogate, other])
    result = attack(digits_mlp, x, y, threat=Linf(eps=EPS), generator=gen())
    assert result.success.float().mean() > 0.5
    assert result.extras["surrogate_backwards"] == 100 * 10  # one ensemble backward per step


def test_transfer_judges_success_on_the_target_not_the_surrogate(surrogate, sample):
    x, y = sample
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))
    # The target always answers 9: only the samples labelled 9 can be broken, whatever transfers.
    result = TransferAttack(PGD(steps=5), surrogates=[surrogate])(constant, x, y, threat=Linf(eps=EPS), generator=gen())
    assert torch.equal(result.success, y != 9)


def test_transfer_refuses_the_target_as_its_own_surrogate(digits_mlp, sample):
    with pytest.raises(RobustlabError, match="white-box"):
        TransferAttack(PGD(steps=2), surrogates=[digits_mlp])(digits_mlp, *sample, threat=Linf(eps=EPS))


# --- the contract, for every wrapper ----------------------------------------------------------


WRAPPERS = [
    pytest.param(lambda m, s: (BPDA(PGD(steps=3)), BitDepthReduction(m, bits=3)), id="bpda"),
    pytest.param(lambda m, s: (EOT(PGD(steps=3), draws=2), m), id="eot"),
    pytest.param(lambda m, s: (TransferAttack(PGD(steps=3), surrogates=[s]), m), id="transfer"),
]


@pytest.mark.parametrize("make", WRAPPERS)
def test_wrappers_follow_the_attack_contract(make, digits_mlp, surrogate, sample):
    attack, model = make(digits_mlp, surrogate)
    x, y = sample[0][:6].clone(), sample[1][:6].clone()
    x_before = x.clone()
    threat = Linf(eps=EPS)
    training = [m.training for m in model.modules()]
    requires_grad = [p.requires_grad for p in model.parameters()]
    result = attack(model, x, y, threat=threat, generator=gen())
    assert torch.equal(x, x_before) and not x.requires_grad
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert threat.contains(x, result.x_adv).all() and not torch.equal(result.x_adv, x)
    assert torch.equal(result.success, accuracy_mask(model, result.x_adv, y).logical_not())
    again = attack(model, x, y, threat=threat, generator=gen())
    assert torch.equal(again.x_adv, result.x_adv)
    assert len(attack(model, x[:1], y[:1], threat=threat, generator=gen())) == 1
    assert len(attack(model, x[:0], y[:0], threat=threat, generator=gen())) == 0
    json.dumps(attack.config())
    assert attack.config()["inner"]["attack"] == "pgd"
    with pytest.raises(AttributeError):
        attack.attack = PGD()  # type: ignore[misc]


def accuracy_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_wrappers_take_norms_family_and_loss_from_the_wrapped_attack(digits_mlp, sample):
    assert BPDA(PGD()).norms == PGD.norms and not BPDA(PGD()).minimum_norm
    assert EOT(DDN(), draws=2).minimum_norm and EOT(DDN(), draws=2).norms == DDN.norms
    with pytest.raises(RobustlabError, match="supports the norms"):
        BPDA(FGSM())(BitDepthReduction(digits_mlp), *sample, threat=L0(eps=3))
    result = BPDA(PGD(steps=3))(BitDepthReduction(digits_mlp, bits=3), *sample, threat=L2(eps=1.0), generator=gen())
    assert torch.isfinite(result.loss).all()


@pytest.mark.parametrize("build,match", [
    (lambda: EOT(PGD(), draws=0), "draws"),
    (lambda: EOT(PGD(), draws=2.0), "draws"),
    (lambda: EOT("pgd", draws=2), "wraps a robustlab Attack"),
    (lambda: BPDA(PGD), "wraps a robustlab Attack"),
    (lambda: TransferAttack(PGD(), surrogates=[]), "at least one surrogate"),
    (lambda: TransferAttack(PGD(), surrogates=[lambda z: z]), "nn.Modules"),
])
def test_bad_settings_are_rejected(build, match):
    with pytest.raises(RobustlabError, match=match):
        build()


# --- reparameterization -------------------------------------------------------------------------


class _PCAPurifier(InputTransformDefense):
    """A defense defined by an inner optimization: gradient descent onto the span of the training
    data's top principal components, then the classifier. Its gradient is zero, as for a
    purifier whose unrolled optimization attacks cannot differentiate. ``decode``/``encode`` map
    between that span and the image space."""

    def __init__(self, classifier: nn.Module, x_train: torch.Tensor, k: int = 16):
        super().__init__(classifier)
        flat = x_train.flatten(1)
        self.register_buffer("mean", flat.mean(0))
        _, _, v = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
        self.register_buffer("basis", v[:k].T.contiguous())  # [D, k], orthonormal columns
        self.shape = x_train.shape[1:]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.basis

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.basis.T + self.mean).clamp(0, 1).view(-1, *self.shape)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(x.shape[0], self.basis.shape[1])
        for _ in range(50):  # the inner optimization: least squares by gradient descent
            z = z - 0.5 * ((z @ self.basis.T + self.mean - x.flatten(1)) @ self.basis)
        return self.decode(z)


def test_reparameterization_breaks_a_purifier_that_masks_gradients(digits, digits_mlp):
    x_train, _, x_test, y_test = digits
    defended = _PCAPurifier(digits_mlp, x_train)
    x, y = x_test[:80], y_test[:80]
    threat = L2(eps=1.5)
    plain = PGD(steps=20)(defended, x, y, threat=threat, generator=gen())
    attack = Reparameterization(decoder=defended.decode, encoder=defended.encode, classifier=digits_mlp, steps=60)
    result = attack(defended, x, y, threat=threat, generator=gen())
    clean_correct = (defended(x).argmax(1) == y).float().mean()
    assert clean_correct > 0.85
    assert plain.success.float().mean() < 0.3  # zero gradients: plain PGD is stuck
    assert result.success.float().mean() > plain.success.float().mean() + 0.4
    assert threat.contains(x, result.x_adv).all()
    assert result.forwards >= 60 * len(x) and result.extras["classifier_backwards"] == 60 * len(x)


def test_reparameterization_rejects_bad_settings(digits_mlp):
    with pytest.raises(RobustlabError, match="callable"):
        Reparameterization(decoder=None, encoder=lambda x: x, classifier=digits_mlp)
    with pytest.raises(RobustlabError, match="steps"):
        Reparameterization(decoder=lambda z: z, encoder=lambda x: x, classifier=digits_mlp, steps=0)


# --- minimum-norm ensemble ---------------------------------------------------------------------


def test_minimum_norm_ensemble_keeps_the_smallest_success_per_sample(digits_mlp, sample):
    from robustlab.attacks import FMN, MinimumNormEnsemble

    x, y = sample
    threat = L2(eps=float("inf"))
    ddn, fmn = DDN(steps=8), FMN(steps=8)
    together = MinimumNormEnsemble((ddn, fmn))(digits_mlp, x, y, threat=threat, generator=gen(3))
    g = gen(3)  # the ensemble hands one generator to its attacks in turn
    alone = [attack(digits_mlp, x, y, threat=threat, generator=g) for attack in (ddn, fmn)]
    distances = torch.stack([torch.where(r.success, r.distance, torch.inf) for r in alone])
    smallest, winner = distances.min(dim=0)
    assert torch.equal(together.success, torch.isfinite(smallest))
    torch.testing.assert_close(together.distance[together.success], smallest[together.success])
    torch.testing.assert_close(together.extras["best_distance"], smallest)
    # Each attack wins somewhere at 8 steps: the ensemble is strictly better than either alone.
    assert set(together.extras["best_attack"][together.success].tolist()) == {0, 1}
    for row in distances:
        assert (together.extras["best_distance"] < row).any()
    assert together.backwards == sum(r.backwards for r in alone)


@pytest.mark.parametrize(
    "attacks,match",
    [((), "non-empty"), ((PGD(),), "minimum-norm"), ((DDN(),), None)],
)
def test_minimum_norm_ensemble_rejects_bad_members(attacks, match):
    from robustlab.attacks import JSMA, MinimumNormEnsemble

    if match is None:  # DDN is L2 only and JSMA L0 only: no shared norm
        attacks, match = attacks + (JSMA(),), "no norm"
    with pytest.raises(RobustlabError, match=match):
        MinimumNormEnsemble(attacks)
