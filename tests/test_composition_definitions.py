"""The attack wrappers pinned to their definitions (issue 15), on hand-built models; nothing trains.

BPDA (Athalye, Carlini & Wagner, ICML 2018, §4.1): the forward value is the real transform, the
gradient that of its approximation, only while a gradient is computed. EOT (§4.2): losses,
gradients and logits are the mean over ``draws`` fresh passes, each counted. The minimum-norm
ensemble keeps, per sample, the smallest successful perturbation (first attack on ties). Transfer
crafts on the surrogates' mean logits (Liu et al., ICLR 2017). Reparameterization (§4.3): Adam on
the latent of ``x = decoder(z)`` against the margin of ``classifier(decoder(z))`` minus the hinge
penalty on the distance beyond eps, keeping the best projected point as the real model judges it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from robustlab.attacks import DDN, FMN, PGD
from robustlab.attacks.base import Attack, ModelOracle
from robustlab.attacks.composition import (
    BPDA,
    EOT,
    MinimumNormEnsemble,
    Reparameterization,
    TransferAttack,
    _BPDAOracle,
    _EOTOracle,
    _LogitEnsemble,
    bpda_mode,
)
from robustlab.documentation import docs_pointer
from robustlab.errors import RobustlabError, SingleDrawEOTWarning
from robustlab.losses import margin
from robustlab.models.preprocessing import InputTransformDefense
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Linear(nn.Module):
    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.to(D))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).to(D) @ self.weight


class Counting(nn.Module):
    """The k-th forward (k = 1, 2, ...) returns ``k * (x @ W)``: a random model with known draws."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = weight.to(D)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.calls * (x.flatten(1) @ self.weight)


class Rounding(InputTransformDefense):
    """``model(round(x))``: no gradient without BPDA, the identity's with it. Records its BPDA flag
    at every forward."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.flags: list[bool] = []

    def transform(self, x: Tensor) -> Tensor:
        self.flags.append(self.bpda)
        return x.round()


@dataclass(frozen=True, kw_only=True)
class Scripted(Attack):
    """Returns ``outputs`` (or ``x + shift``) and records every call."""

    name = "scripted"
    norms: ClassVar[frozenset[str]] = frozenset({"L2", "Linf"})
    minimum_norm = True
    outputs: Tensor | None = None
    shift: float = 0.0
    calls: list = field(default_factory=list)

    def _run(self, oracle, x, y, *, threat, targets, generator) -> tuple[Tensor, dict[str, Any]]:
        self.calls.append({"oracle": oracle, "x": x, "y": y, "threat": threat, "targets": targets,
                           "generator": generator})
        return (x + self.shift if self.outputs is None else self.outputs.clone()), {"ran": True}


W = torch.tensor([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]])  # [2 features, 3 classes]


def assert_passed_on(call: dict, x: Tensor, y: Tensor, threat, targets: Tensor | None, generator) -> None:
    """The wrapped attack got the wrapper's inputs, threat, targets and generator, unchanged."""
    assert torch.equal(call["x"], x) and torch.equal(call["y"], y) and call["threat"] == threat
    assert (call["targets"] is None) if targets is None else torch.equal(call["targets"], targets)
    assert call["generator"] is generator


# --- BPDA --------------------------------------------------------------------------------------------------------


def test_bpda_mode_switches_every_defense_and_restores_each_setting():
    inner, outer = Rounding(nn.Identity()), Rounding(nn.Identity())
    outer.model = nn.Sequential(inner)
    outer.bpda = True
    model = nn.Sequential(outer)
    with bpda_mode(model) as defenses:
        assert defenses == [outer, inner] and inner.bpda and outer.bpda
    assert outer.bpda and not inner.bpda
    with pytest.raises(ValueError), bpda_mode(model):
        assert inner.bpda
        raise ValueError
    assert outer.bpda and not inner.bpda


def test_bpda_oracle_differentiates_the_approximation_at_the_real_forward_value():
    defended = Rounding(Linear(W))
    oracle = ModelOracle(defended)
    bpda = _BPDAOracle(oracle)
    x = torch.tensor([[0.4, 1.6], [2.2, -0.7]], dtype=D)
    assert bpda.model is defended
    torch.testing.assert_close(bpda.logits(x), x.round() @ W.to(D))
    assert defended.flags == [False]  # forward-only queries use the real model
    (loss,), (grad,), logits = bpda.losses_and_grads(x, [lambda z: z[:, 0] - z[:, 2]])
    torch.testing.assert_close(logits, x.round() @ W.to(D))
    torch.testing.assert_close(loss, (x.round() @ W.to(D))[:, 0] - (x.round() @ W.to(D))[:, 2])
    torch.testing.assert_close(grad, (W[:, 0] - W[:, 2]).to(D).expand(2, 2))  # the identity's Jacobian
    assert defended.flags == [False, True] and not defended.bpda
    (_,), (plain,), _ = oracle.losses_and_grads(x, [lambda z: z[:, 0]])
    assert torch.equal(plain, torch.zeros_like(x))  # without BPDA the gradient is masked
    assert (bpda.forwards, bpda.backwards) == (oracle.forwards, oracle.backwards) == (6, 4)


def test_bpda_hands_the_wrapped_attack_a_bpda_oracle_and_needs_a_defense():
    defended = Rounding(Linear(W))
    inner = Scripted(shift=0.1)
    x, y, targets, g = torch.tensor([[0.2, 0.3]], dtype=D), torch.tensor([2]), torch.tensor([0]), gen()
    threat = L2(eps=1.0, bounds=(-5.0, 5.0))
    result = BPDA(inner)(defended, x, y, threat=threat, targets=targets, generator=g)
    (call,) = inner.calls
    assert isinstance(call["oracle"], _BPDAOracle) and call["oracle"].model is defended
    assert_passed_on(call, x, y, threat, targets, g)
    torch.testing.assert_close(result.x_adv, x + 0.1)
    with pytest.raises(RobustlabError, match=r"^BPDA found no robustlab\.models\.preprocessing\.InputTransformDefense "
                       r"inside the model; wrap the non-differentiable layer in one \(subclass it with transform\(\) and "
                       r"approximation\(\)\)$"):
        BPDA(Scripted())(Linear(W), x, y, threat=L2(eps=1.0, bounds=(-5.0, 5.0)))


# --- EOT ---------------------------------------------------------------------------------------------------------


def test_eot_oracle_averages_logits_over_fresh_draws():
    model = Counting(W)
    oracle = ModelOracle(model)
    eot = _EOTOracle(oracle, 3)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=D)
    torch.testing.assert_close(eot.logits(x), (1 + 2 + 3) / 3 * (x @ W.to(D)))
    assert model.calls == 3 and eot.forwards == oracle.forwards == 6 and eot.backwards == 0
    torch.testing.assert_close(_EOTOracle(oracle, 1).logits(x), 4 * (x @ W.to(D)))


def test_eot_oracle_averages_losses_gradients_and_logits_over_fresh_draws():
    model = Counting(W)
    oracle = ModelOracle(model)
    eot = _EOTOracle(oracle, 4)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=D)
    fns = [lambda z: z[:, 1], lambda z: z[:, 0] ** 2]
    losses, grads, logits = eot.losses_and_grads(x, fns)
    z = x @ W.to(D)
    ks = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    torch.testing.assert_close(logits, ks.mean() * z)
    torch.testing.assert_close(losses[0], ks.mean() * z[:, 1])
    torch.testing.assert_close(losses[1], (ks**2).mean() * z[:, 0] ** 2)
    torch.testing.assert_close(grads[0], ks.mean() * W[:, 1].to(D).expand(2, 2))
    torch.testing.assert_close(grads[1], (ks**2).mean() * 2 * z[:, :1] * W[:, 0].to(D))
    assert (eot.forwards, eot.backwards) == (8, 16)


def test_eot_hands_the_wrapped_attack_an_averaging_oracle():
    inner = Scripted()
    model = Counting(W)
    x, y, targets, g = torch.tensor([[0.2, 0.3]], dtype=D), torch.tensor([0]), torch.tensor([2]), gen()
    threat = Linf(eps=0.1, bounds=(-5.0, 5.0))
    EOT(inner, draws=5)(model, x, y, threat=threat, targets=targets, generator=g)
    (call,) = inner.calls
    assert isinstance(call["oracle"], _EOTOracle) and call["oracle"].draws == 5
    assert call["oracle"].base.model is model
    assert_passed_on(call, x, y, threat, targets, g)


def test_single_draw_eot_warns_with_its_whole_text():
    with pytest.warns(SingleDrawEOTWarning) as caught:
        EOT(PGD(), draws=1)
    (warning,) = caught
    assert str(warning.message) == (
        "EOT with draws=1 averages nothing: each step follows the gradient of a single random draw. Use tens of "
        f"draws (Athalye et al. use 30). See `{docs_pointer('diagnostics', 'eot')}`")
    assert docs_pointer("diagnostics", "eot") == "robustlab docs diagnostics#eot"


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames")
def test_single_draw_eot_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EOT(PGD(), draws=1)
    (warning,) = caught
    assert warning.filename == __file__


@pytest.mark.parametrize("build,match", [
    (lambda: EOT(PGD(), draws=0), "draws must be a positive integer, got 0"),
    (lambda: EOT(PGD(), draws=1.5), "draws must be a positive integer"),
    (lambda: EOT(PGD, draws=2), "EOT wraps a robustlab Attack, got type"),
    (lambda: BPDA("pgd"), "BPDA wraps a robustlab Attack, got str"),
])
def test_wrappers_reject_bad_settings(build, match):
    with pytest.raises(RobustlabError, match=match):
        build()


def test_wrappers_describe_themselves_and_take_the_wrapped_attacks_properties():
    pgd, ddn = PGD(steps=3), DDN(steps=4)
    eot = EOT(pgd, draws=3)
    assert eot.config() == {"attack": "eot", "inner": pgd.config(), "draws": 3}
    assert BPDA(ddn).config() == {"attack": "bpda", "inner": ddn.config()}
    assert EOT(BPDA(pgd), draws=2).config() == {"attack": "eot", "inner": {"attack": "bpda", "inner": pgd.config()},
                                               "draws": 2}
    assert eot.norms == pgd.norms and BPDA(ddn).norms == ddn.norms
    assert not eot.minimum_norm and BPDA(ddn).minimum_norm
    assert eot.loss_fn is pgd.loss_fn and BPDA(Scripted()).loss_fn is None


# --- the minimum-norm ensemble ------------------------------------------------------------------------------------


class FirstFeature(nn.Module):
    """Class 1 iff the first feature exceeds 0.5."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1)[:, 0].to(D) - 0.5
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_minimum_norm_ensemble_keeps_the_smallest_success_first_attack_on_ties():
    x = torch.zeros(5, 2, dtype=D)
    y = torch.zeros(5, dtype=torch.int64)
    # Per sample (distance if adversarial, "-" if not): A: 1.0, -, 0.8, -, 0.7;  B: 0.9, 0.6, 0.8, -, 3.0.
    a = torch.tensor([[1.0, 0.0], [0.3, 0.0], [0.8, 0.0], [0.1, 0.0], [0.7, 0.0]], dtype=D)
    b = torch.tensor([[0.9, 0.0], [0.6, 0.0], [0.8, 0.0], [0.2, 0.0], [3.0, 0.0]], dtype=D)
    first, second = Scripted(outputs=a), Scripted(outputs=b)
    g = gen()
    result = MinimumNormEnsemble((first, second))(FirstFeature(), x, y, threat=L2(eps=math.inf, bounds=(-5, 5)),
                                                 generator=g)
    assert result.extras["best_attack"].tolist() == [1, 1, 0, -1, 0]
    assert result.extras["best_distance"].tolist() == [0.9, 0.6, 0.8, math.inf, 0.7]
    torch.testing.assert_close(result.x_adv, torch.stack([b[0], b[1], a[2], a[3], a[4]]))  # no success: the first's
    threat = L2(eps=math.inf, bounds=(-5, 5))
    for attack in (first, second):
        (call,) = attack.calls
        assert type(call["oracle"]) is ModelOracle and isinstance(call["oracle"].model, FirstFeature)
        assert_passed_on(call, x, y, threat, None, g)
    assert result.forwards == 5 * 2 + 2 * 5  # one success check per sample and attack, and the template's two


def test_minimum_norm_ensemble_judges_targeted_success_against_the_targets():
    model = Linear(torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 0.0]]))  # class 1 for x_0 > 0, class 2 for x_0 < 0
    x, y = torch.zeros(2, 2, dtype=D), torch.zeros(2, dtype=torch.int64)
    targets = torch.tensor([2, 1])
    towards = Scripted(outputs=torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=D))  # class 1: the target of sample 1
    away = Scripted(outputs=torch.tensor([[-0.9, 0.0], [-0.1, 0.0]], dtype=D))  # class 2: the target of sample 0
    threat = L2(eps=math.inf, bounds=(-5, 5))
    g = gen()
    result = MinimumNormEnsemble((towards, away))(model, x, y, threat=threat, targets=targets, generator=g)
    assert result.extras["best_attack"].tolist() == [1, 0]
    assert result.extras["best_distance"].tolist() == pytest.approx([0.9, 0.5])
    assert_passed_on(towards.calls[0], x, y, threat, targets, g)


def test_minimum_norm_ensemble_projects_each_output_before_judging_it():
    x = torch.zeros(2, 2, dtype=D)
    y = torch.zeros(2, dtype=torch.int64)
    far = Scripted(outputs=torch.tensor([[3.0, 0.0], [0.6, 0.0]], dtype=D))  # sample 0: projected to 1.0
    near = Scripted(outputs=torch.tensor([[0.9, 0.0], [0.7, 0.0]], dtype=D))
    result = MinimumNormEnsemble((far, near))(FirstFeature(), x, y, threat=L2(eps=1.0, bounds=(-5, 5)))
    assert result.extras["best_distance"].tolist() == [0.9, 0.6]
    assert result.extras["best_attack"].tolist() == [1, 0]
    result = MinimumNormEnsemble((far,))(FirstFeature(), x, y, threat=L2(eps=0.8, bounds=(-5, 5)))
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.8, 0.0], [0.6, 0.0]], dtype=D))
    assert result.extras["best_distance"].tolist() == pytest.approx([0.8, 0.6], abs=1e-12)


def test_minimum_norm_ensemble_norms_config_and_checks():
    ddn, fmn = DDN(steps=2), FMN(steps=2)
    ensemble = MinimumNormEnsemble((ddn, fmn))
    assert ensemble.norms == frozenset({"L2"}) == ddn.norms & fmn.norms
    assert MinimumNormEnsemble((fmn,)).norms == fmn.norms
    assert ensemble.config() == {"attack": "minimum-norm-ensemble", "attacks": [ddn.config(), fmn.config()]}
    with pytest.raises(RobustlabError, match="^MinimumNormEnsemble needs a non-empty tuple of attacks$"):
        MinimumNormEnsemble([ddn])
    with pytest.raises(RobustlabError, match="^MinimumNormEnsemble takes minimum-norm robustlab attacks only, got "
                       "ProjectedGradientDescent: the distance of a fixed-budget attack is not a minimum$"):
        MinimumNormEnsemble((ddn, PGD()))
    with pytest.raises(RobustlabError, match="minimum-norm robustlab attacks only, got str"):
        MinimumNormEnsemble(("ddn",))


# --- transfer ----------------------------------------------------------------------------------------------------


def test_logit_ensemble_is_the_mean_of_the_members_logits():
    members = [Linear(W), Linear(2 * W), Linear(-W)]
    x = torch.tensor([[1.0, 2.0]], dtype=D)
    torch.testing.assert_close(_LogitEnsemble(members)(x), (2 / 3) * (x @ W.to(D)))


def test_transfer_crafts_on_the_surrogates_and_judges_on_the_target():
    target, a, b = FirstFeature(), Linear(W), Linear(2 * W)
    x, y = torch.tensor([[0.3, 0.0], [0.45, 0.0]], dtype=D), torch.tensor([0, 0])
    inner = Scripted(shift=0.1)
    threat, g = Linf(eps=0.2, bounds=(-5, 5)), gen()
    result = TransferAttack(inner, surrogates=a)(target, x, y, threat=threat, generator=g)
    assert inner.calls[-1]["oracle"].model is a
    assert_passed_on(inner.calls[-1], x, y, threat, None, g)
    TransferAttack(inner, surrogates=a)(target, x, y, threat=threat, targets=torch.tensor([1, 1]), generator=g)
    assert_passed_on(inner.calls[-1], x, y, threat, torch.tensor([1, 1]), g)
    assert result.success.tolist() == [False, True] and result.forwards == 2 * 2 and result.backwards == 0
    assert result.extras["surrogate_forwards"] == 4 and result.extras["surrogate_backwards"] == 0
    surrogate_success = (((x + 0.1) @ W.to(D)).argmax(1) != y).tolist()
    assert result.extras["surrogate_success"].tolist() == surrogate_success
    assert result.extras["surrogate_extras"] == {"ran": True}
    TransferAttack(inner, surrogates=[a, b])(target, x, y, threat=Linf(eps=0.2, bounds=(-5, 5)))
    ensemble = inner.calls[-1]["oracle"].model
    assert isinstance(ensemble, _LogitEnsemble) and list(ensemble.members) == [a, b]
    with pytest.raises(RobustlabError, match=r"^a surrogate is the target model itself: that is a white-box attack, "
                       r"not transfer$"):
        TransferAttack(inner, surrogates=[a, target])(target, x, y, threat=Linf(eps=0.2, bounds=(-5, 5)))


def test_transfer_settings():
    a = Linear(W)
    attack = TransferAttack(PGD(steps=2), surrogates=a)
    assert attack.surrogates == (a,)
    assert TransferAttack(PGD(), surrogates=[a, a]).surrogates == (a, a)
    assert attack.config() == {"attack": "transfer", "inner": PGD(steps=2).config(), "surrogates": ["Linear"]}
    with pytest.raises(RobustlabError, match=r"^TransferAttack needs at least one surrogate model$"):
        TransferAttack(PGD())
    with pytest.raises(RobustlabError, match=r"surrogates must be nn\.Modules, got function"):
        TransferAttack(PGD(), surrogates=[a, lambda z: z])
    with pytest.raises(RobustlabError, match="wraps a robustlab Attack"):
        TransferAttack("pgd", surrogates=[a])


# --- reparameterization ------------------------------------------------------------------------------------------


def reference_reparameterization(x, y, targets, threat, decoder, encoder, classifier, real, steps, lr, penalty):
    """Adam on z from encoder(x) on -(margin(classifier(decoder(z))) - penalty (d(x, decoder(z)) - eps)^+);
    each step's decoder(z) is projected and judged on the real model; the best point per sample
    (adversarial first, then the highest margin) is kept, x itself when nothing beats -inf."""
    z = encoder(x).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    best_x, best_loss = x.clone(), torch.full((len(x),), -math.inf, dtype=D)
    best_success = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        x_hat = decoder(z)
        loss = margin(classifier(x_hat), y, targets, kappa=math.inf)
        excess = ((x_hat - x).flatten(1).norm(dim=1) - threat.eps).clamp_min(0)
        optimizer.zero_grad()
        (-(loss - penalty * excess).sum()).backward()
        optimizer.step()
        candidate = threat.project(x, x_hat.detach())
        with torch.no_grad():
            logits = real(candidate)
        value = margin(logits, y, targets, kappa=math.inf)
        success = logits.argmax(1) != y if targets is None else logits.argmax(1) == targets
        for i in range(len(x)):
            if (success[i] and not best_success[i]) or (success[i] == best_success[i] and value[i] > best_loss[i]):
                best_x[i], best_loss[i], best_success[i] = candidate[i], value[i], success[i]
    return best_x


@pytest.mark.parametrize("targeted", [False, True])
def test_reparameterization_replays_adam_on_the_latent_with_the_hinge_penalty(targeted):
    basis = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype=D)  # latent 2 -> image 3
    decoder = lambda z: z @ basis  # noqa: E731
    encoder = lambda x: x @ basis.T / 1.25  # noqa: E731
    classifier = Linear(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 1.0]]))
    # The defended model: here a copy of the classifier (not the same module: the template restores the attacked
    # model's state, so only a separate classifier shows whether the attack froze it).
    real = Linear(classifier.weight.detach().clone())
    x = torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.6, 0.1], [0.9, 0.2, 0.4]], dtype=D)
    with torch.no_grad():
        y = classifier(x).argmax(1)
    targets = (y + 1) % 3 if targeted else None
    threat = L2(eps=0.3, bounds=(-5.0, 5.0))
    attack = Reparameterization(decoder=decoder, encoder=encoder, classifier=classifier, steps=12, step_size=0.05,
                                penalty=3.0)
    result = attack(real, x, y, threat=threat, targets=targets, generator=gen())
    assert all(p.requires_grad and p.grad is None for p in classifier.parameters())  # frozen, then restored
    expected = reference_reparameterization(x, y, targets, threat, decoder, encoder, classifier, real, 12, 0.05, 3.0)
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-12)
    assert result.extras == {"classifier_forwards": 36, "classifier_backwards": 36}
    assert result.forwards == 12 * 3 + 2 * 3


def test_reparameterization_restores_a_frozen_classifier_as_it_was():
    classifier = Linear(W.T)
    classifier.weight.requires_grad_(False)
    attack = Reparameterization(decoder=lambda z: z, encoder=lambda x: x, classifier=classifier, steps=1)
    attack(Linear(W.T), torch.zeros(1, 3, dtype=D), torch.tensor([0]), threat=L2(eps=0.1, bounds=(-1, 1)))
    assert not classifier.weight.requires_grad and classifier.weight.grad is None


def test_reparameterization_settings():
    c = Linear(W)
    ok = {"decoder": lambda z: z, "encoder": lambda x: x, "classifier": c}
    Reparameterization(**ok, steps=1, step_size=math.inf, penalty=1e-9)
    assert Reparameterization(**ok, steps=3).config() == {
        "attack": "reparameterization", "decoder": repr(ok["decoder"]), "encoder": repr(ok["encoder"]),
        "classifier": "Linear", "steps": 3, "step_size": 0.1, "penalty": 10.0}
    for bad, match in [({"decoder": None}, "decoder must be callable"), ({"encoder": 3}, "encoder must be callable"),
                       ({"classifier": lambda x: x}, "classifier must be an nn.Module, got function"),
                       ({"steps": 0}, "steps must be a positive integer, got 0"),
                       ({"step_size": 0.0}, "step_size must be a positive number, got 0.0"),
                       ({"penalty": -1.0}, "penalty must be a positive number"),
                       ({"step_size": "1"}, "step_size must be a positive number")]:
        with pytest.raises(RobustlabError, match=match):
            Reparameterization(**{**ok, **bad})
    with pytest.raises(RobustlabError, match="^Reparameterization penalises distances beyond eps; it needs a bounded "
                       "threat model$"):
        Reparameterization(**ok)(c, torch.zeros(1, 2, dtype=D), torch.tensor([0]), threat=L2(eps=math.inf))


def test_reparameterization_keeps_the_best_point_as_the_real_model_judges_it_against_the_targets():
    # A decoder that walks a fixed path (the latent has no effect): the candidates are the path's points. Class
    # of a point: its largest coordinate (the real model's logits are the point). Target 2: the first point is
    # class 1 (neither the label nor the target, margin -2), the second class 0 (margin -0.2): neither is adversarial,
    # so the higher margin wins; counting the first as a success (it is misclassified) would keep it.
    path = iter(torch.tensor([[[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]], [[1.0, 0.5, 0.8], [1.0, 0.5, 0.8]]], dtype=D))
    decoder = lambda z: next(path) + 0 * z.sum()  # noqa: E731
    x = torch.zeros(2, 3, dtype=D)
    real = Linear(torch.eye(3))
    attack = Reparameterization(decoder=decoder, encoder=lambda v: v[:, :1], classifier=Linear(torch.eye(3)), steps=2)
    result = attack(real, x, torch.zeros(2, dtype=torch.int64), threat=Linf(eps=5.0, bounds=(-5.0, 5.0)),
                    targets=torch.tensor([2, 2]))
    torch.testing.assert_close(result.x_adv, torch.tensor([[1.0, 0.5, 0.8]] * 2, dtype=D))
    assert result.extras == {"classifier_forwards": 4, "classifier_backwards": 4}  # samples x steps


def test_reparameterization_keeps_a_point_of_the_target_class_over_a_higher_misclassified_one():
    # The first point is of the target class (adversarial, margin 1); the second is misclassified as another class
    # with a margin of -0.2: the adversarial one is kept, though judging success against the labels only would
    # count both and prefer neither by success.
    path = iter(torch.tensor([[[0.0, 0.0, 1.0]], [[1.0, 0.5, 0.8]]], dtype=D))
    decoder = lambda z: next(path) + 0 * z.sum()  # noqa: E731
    attack = Reparameterization(decoder=decoder, encoder=lambda v: v[:, :1], classifier=Linear(torch.eye(3)), steps=2)
    result = attack(Linear(torch.eye(3)), torch.zeros(1, 3, dtype=D), torch.tensor([1]),
                    threat=Linf(eps=5.0, bounds=(-5.0, 5.0)), targets=torch.tensor([2]))
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.0, 0.0, 1.0]], dtype=D))
