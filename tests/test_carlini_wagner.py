"""Carlini & Wagner attacks: the seven objectives (f <= 0 vs success, ties included), the
binary search, a linear-model oracle for C&W L2, behaviour on the digits MLP against PGD and
FGSM, L0 pixel counting, the box encodings, and bad input. (The generic conformance suite in
test_attacks.py covers cw-l2, cw-l0 and cw-linf through the registry.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import CWL0, CWL2, FGSM, PGD, CWLinf, ModelOracle, is_adversarial
from robustlab.attacks.carlini_wagner import next_const
from robustlab.attacks.cw_objectives import OBJECTIVES, f1, f4, f5, f6, objective_floor
from robustlab.errors import RobustlabError
from robustlab.threat import L0, L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

IFF = ("f2", "f3", "f6", "f7")  # f <= 0 <=> success
SUFFICIENT = ("f1", "f4", "f5")  # f <= 0 => success only
UNBOUNDED_L2 = L2(eps=math.inf)
# Cheap C&W L2 settings for the digits MLP: starting at c = 0.1 instead of 1e-3 saves the
# search steps that only grow c (each failure multiplies it by 10).
CHEAP_L2 = dict(binary_search_steps=6, max_iterations=300, initial_const=0.1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tie_inclusive_success(logits, labels, targets):
    """The paper's C(x') = t with ties counted as success (untargeted: y not the unique max)."""
    if targets is None:
        own = logits.gather(1, labels[:, None]).squeeze(1)
        return (logits.scatter(1, labels[:, None], -math.inf).amax(1) >= own)
    own = logits.gather(1, targets[:, None]).squeeze(1)
    return own >= logits.scatter(1, targets[:, None], -math.inf).amax(1)


@pytest.fixture(scope="module")
def digits_sample(digits):
    _, _, x_test, y_test = digits
    return x_test[:50], y_test[:50]


# --- 1. objectives ------------------------------------------------------------------------------


def random_logits(n=4000, k=5, seed=0):
    g = gen(seed)
    logits = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 4
    labels = torch.randint(0, k, (n,), generator=g)
    targets = (labels + torch.randint(1, k, (n,), generator=g)) % k
    return logits, labels, targets


def tied_logits():
    """Rows where the decisive class ties exactly with the best other class, both as the largest
    logit and, in the last row, with the target tied for first among three."""
    logits = torch.tensor([[1.0, 1.0, -2.0], [0.5, -1.0, 0.5], [3.0, 3.0, 3.0], [-1.0, 2.0, 2.0]])
    labels = torch.tensor([0, 2, 1, 1])
    targets = torch.tensor([1, 0, 0, 2])
    return logits, labels, targets


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", IFF)
def test_objective_is_nonpositive_exactly_on_success(name, targeted):
    logits, labels, targets = random_logits()
    t = targets if targeted else None
    f = OBJECTIVES[name](logits, labels, t)
    assert torch.equal(f <= 0, is_adversarial(logits, labels, t))  # no ties in random logits
    assert (f <= 0).any() and (f > 0).any()


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", IFF)
def test_objective_is_zero_on_ties_and_signed_on_near_ties(name, targeted):
    logits, labels, targets = tied_logits()
    t = targets if targeted else None
    f = OBJECTIVES[name](logits, labels, t)
    assert tie_inclusive_success(logits, labels, t).all()
    assert torch.equal(f, torch.zeros_like(f))
    # Nudge the decisive class by a little: the sign must follow (f3/f7 evaluate
    # softplus(m) - log 2 without the rounding that makes it 0 for tiny margins).
    cls = t if targeted else labels
    nudge = 1e-3 if name in ("f2", "f3") else 1e-6  # probabilities resolve less than logits
    for sign in (1.0, -1.0):
        moved = logits.scatter_add(1, cls[:, None], torch.full((len(cls), 1), sign * nudge))
        success = tie_inclusive_success(moved, labels, t)
        # Raising the target makes it win; raising the true class makes it the unique winner.
        assert torch.equal(success, torch.full_like(success, (sign > 0) == targeted))
        assert torch.equal(OBJECTIVES[name](moved, labels, t) <= 0, success)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", SUFFICIENT)
def test_probability_objectives_are_sufficient_only(name, targeted):
    logits, labels, targets = random_logits()
    t = targets if targeted else None
    f = OBJECTIVES[name](logits, labels, t)
    success = tie_inclusive_success(logits, labels, t)
    assert (success[f <= 0]).all()  # f <= 0 => success
    assert (success & (f > 0)).any()  # ... but not the converse
    # The counterexample of the docstring: F = (0.4, 0.3, 0.3), class 0 wins with F_0 < 1/2.
    # Untargeted: F = (0.3, 0.4, 0.3) with y = 0, class 1 wins with F_1 < 1/2.
    if targeted:
        logits, label, target = torch.tensor([[0.4, 0.3, 0.3]]).log(), torch.tensor([1]), torch.tensor([0])
    else:
        logits, label, target = torch.tensor([[0.3, 0.4, 0.3]]).log(), torch.tensor([0]), None
    assert tie_inclusive_success(logits, label, target).all()
    assert float(OBJECTIVES[name](logits, label, target)) > 0


def test_f1_and_f5_coincide_after_correction_and_are_zero_at_one_half():
    logits, labels, targets = random_logits(200)
    torch.testing.assert_close(f1(logits, labels, targets), f5(logits, labels, targets))
    half = torch.tensor([[0.5, 0.25, 0.25]]).log()
    for fn in (f1, f4, f5):
        assert abs(float(fn(half, torch.tensor([1]), torch.tensor([0])))) < 1e-6


def test_probability_objectives_survive_huge_logits():
    # Distilled networks have logits in the hundreds: float32 softmax underflows, log_softmax not.
    logits = torch.tensor([[500.0, -480.0, 0.0]])
    for name, fn in OBJECTIVES.items():
        value = fn(logits, torch.tensor([0]), torch.tensor([1]))
        assert torch.isfinite(value).all(), name
    assert float(f5(logits, torch.tensor([0]), torch.tensor([1]))) > 900


def test_f6_confidence_floor_and_objective_floors():
    logits, labels, targets = random_logits(500)
    assert float(f6(logits, labels, targets, kappa=2.0).min()) == -2.0
    for name, fn in OBJECTIVES.items():
        assert float(fn(logits, labels, targets, kappa=2.0).min()) >= objective_floor(name, 2.0) - 1e-6


def test_objectives_need_two_classes():
    for fn in OBJECTIVES.values():
        with pytest.raises(RobustlabError, match="at least 2 classes"):
            fn(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64))


# --- 2. binary search ---------------------------------------------------------------------------


def test_binary_search_follows_the_authors_rule():
    const = torch.tensor([1e-3, 1e-3, 4.0, 4.0], dtype=torch.float64)
    lower = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    upper = torch.tensor([1e10, 1e10, 7.0, 7.0], dtype=torch.float64)
    succeeded = torch.tensor([False, True, False, True])
    const, lower, upper = next_const(const, lower, upper, succeeded)
    torch.testing.assert_close(lower, torch.tensor([1e-3, 0.0, 4.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(upper, torch.tensor([1e10, 1e-3, 7.0, 4.0], dtype=torch.float64))
    # No upper bound yet: x10 on failure; otherwise bisect.
    torch.testing.assert_close(const, torch.tensor([1e-2, 5e-4, 5.5, 2.5], dtype=torch.float64))


# --- 3. linear-model oracle -----------------------------------------------------------------------

D = 8
BOX = (-10.0, 10.0)  # far from the inputs: only the distance binds


def linear_two_class(seed=0):
    """f(x) = W x + b with logit difference z_1 - z_0 = w . x + c."""
    w = torch.randn(D, generator=gen(seed))
    model = nn.Linear(D, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(D), w]))
        model.bias.copy_(torch.tensor([0.0, 0.3]))
    return model, w


# The tanh encoding's slope at the centre of the box is (hi - lo) / 2 = 10 here, so its learning
# rate 1e-3 moves x' as far per step as 1e-2 does for the encodings that work on x' directly.
@pytest.mark.parametrize("box,learning_rate,max_iterations", [("tanh", 1e-3, 300), ("clip", 1e-2, 500),
                                                              ("project", 1e-2, 500)])
def test_linear_model_minimal_l2_distance_within_one_percent(box, learning_rate, max_iterations):
    model, w = linear_two_class(3)
    x = torch.randn(16, D, generator=gen(4))
    with torch.no_grad():
        margin = model(x)[:, 1] - model(x)[:, 0]
    y = (margin > 0).long()
    closed_form = margin.abs() / w.norm()
    attack = CWL2(binary_search_steps=9, max_iterations=max_iterations, initial_const=1.0,
                  learning_rate=learning_rate, box=box)
    result = attack(model, x, y, threat=L2(eps=math.inf, bounds=BOX))
    assert result.success.all()
    assert ((result.distance - closed_form).abs() <= 0.01 * closed_form).all()
    assert (result.distance >= closed_form * (1 - 1e-4)).all()  # nothing beats the optimum
    # The direction is -sign(margin) * w.
    direction = (result.x_adv - x) / result.distance[:, None]
    cosine = direction @ (w / w.norm()) * -torch.sign(margin)
    assert (cosine > 0.999).all()
    torch.testing.assert_close(result.extras["best_distance"], result.distance, rtol=1e-4, atol=1e-5)


# --- 4. behaviour on the digits MLP ------------------------------------------------------------


def minimal_successful_eps(attack, model, x, y, make_threat, grid):
    """Per sample, the smallest eps of ``grid`` at which ``attack`` succeeds (inf if none)."""
    smallest = torch.full((len(x),), math.inf)
    for eps in sorted(grid, reverse=True):
        result = attack(model, x, y, threat=make_threat(eps), generator=gen())
        smallest = torch.where(result.success, torch.tensor(eps), smallest)
    return smallest


@pytest.mark.parametrize("targets", [None, "random"], ids=["untargeted", "targeted"])
def test_unbounded_cw_l2_always_succeeds_on_digits(targets, digits_mlp, digits_sample):
    x, y = digits_sample
    result = CWL2(**CHEAP_L2)(digits_mlp, x, y, threat=UNBOUNDED_L2, targets=targets, generator=gen())
    assert result.success.all()
    with torch.no_grad():
        predictions = digits_mlp(result.x_adv).argmax(1)
    assert torch.equal(predictions != y if targets is None else predictions == result.targets, result.success)
    torch.testing.assert_close(result.extras["best_distance"], result.distance, rtol=1e-4, atol=1e-5)


def test_cw_l2_finds_smaller_perturbations_than_pgd(digits_mlp, digits_sample):
    x, y = digits_sample
    cw = CWL2(**CHEAP_L2)(digits_mlp, x, y, threat=UNBOUNDED_L2)
    grid = [0.1 * k for k in range(1, 16)]
    pgd_eps = minimal_successful_eps(PGD(steps=20), digits_mlp, x, y, lambda e: L2(eps=e), grid)
    assert float(cw.distance.median()) < float(pgd_eps.median())
    assert float((cw.distance <= pgd_eps).float().mean()) >= 0.8


def test_confidence_is_reached_at_the_returned_points(digits_mlp, digits_sample):
    x, y = digits_sample[0][:20], digits_sample[1][:20]
    kappa = 3.0
    result = CWL2(**CHEAP_L2, confidence=kappa)(digits_mlp, x, y, threat=UNBOUNDED_L2, targets="random")
    confident = torch.isfinite(result.extras["best_distance"])
    assert float(confident.float().mean()) >= 0.9
    with torch.no_grad():
        logits = digits_mlp(result.x_adv[confident])
    margins = -f6(logits, y[confident], result.targets[confident], kappa=10.0)
    assert float(margins.min()) >= kappa - 1e-3
    plain = CWL2(**CHEAP_L2)(digits_mlp, x, y, threat=UNBOUNDED_L2, targets=result.targets)
    assert float(result.distance.mean()) > float(plain.distance.mean())


def test_failed_samples_return_their_last_attempt_not_the_clean_input(digits_mlp, digits_sample):
    x, y = digits_sample[0][:10], digits_sample[1][:10]
    attack = CWL2(binary_search_steps=1, max_iterations=5, initial_const=1e-6, abort_early=False)
    result = attack(digits_mlp, x, y, threat=UNBOUNDED_L2)
    assert not result.success.any()
    assert (result.distance > 0).all()
    assert torch.isinf(result.extras["best_distance"]).all()


def test_cost_without_abort_early_is_exact(digits_mlp, digits_sample):
    x, y = digits_sample[0][:8], digits_sample[1][:8]
    result = CWL2(binary_search_steps=3, max_iterations=7, abort_early=False)(digits_mlp, x, y, threat=UNBOUNDED_L2)
    assert (result.forwards, result.backwards) == ((3 * 7 + 2) * 8, 3 * 7 * 8)
    aborted = CWL2(binary_search_steps=3, max_iterations=200, initial_const=10.0)(digits_mlp, x, y, threat=UNBOUNDED_L2)
    assert aborted.backwards < 3 * 200 * 8


@pytest.mark.parametrize("box", ["tanh", "clip", "project"])
def test_box_encodings_stay_in_the_box_and_never_nan(box, digits_mlp, digits_sample):
    x, y = digits_sample[0][:20], digits_sample[1][:20]
    assert (x == 0).any() and (x == 1).any()  # digits have pixels exactly at both bounds
    attack = CWL2(binary_search_steps=3, max_iterations=100, initial_const=1.0, box=box)
    # The raw output of the attack, before the template's projection.
    x_adv, extras = attack._run(ModelOracle(digits_mlp), x, y, threat=UNBOUNDED_L2, targets=None, generator=None)
    assert torch.isfinite(x_adv).all() and torch.isfinite(extras["best_distance"]).any()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    result = attack(digits_mlp, x, y, threat=UNBOUNDED_L2)
    assert float(result.success.float().mean()) >= 0.9


def test_bounded_threat_success_means_distance_within_eps(digits_mlp, digits_sample):
    x, y = digits_sample[0][:20], digits_sample[1][:20]
    threat = L2(eps=0.5)
    bounded = CWL2(**CHEAP_L2)(digits_mlp, x, y, threat=threat)
    unbounded = CWL2(**CHEAP_L2)(digits_mlp, x, y, threat=UNBOUNDED_L2)
    assert threat.contains(x, bounded.x_adv).all()
    within = unbounded.distance <= 0.5
    assert within.any() and bounded.success[within].all()


# --- 5. C&W L0 and L∞ ---------------------------------------------------------------------------


def test_cw_l0_counts_pixels_and_freezes_channels_together():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(6, 3, 4, 4, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = CWL0(max_iterations=30)(model, x, y, threat=L0(eps=math.inf))
    assert result.success.all()
    changed = result.x_adv != x
    pixels = changed.any(dim=1)
    torch.testing.assert_close(result.distance, pixels.flatten(1).sum(1).float())
    assert (changed.flatten(1).sum(1) > pixels.flatten(1).sum(1)).any()  # channels counted once
    assert (result.distance < 16).all()
    torch.testing.assert_close(result.extras["best_distance"], result.distance)


def test_cw_l0_succeeds_with_few_pixels_on_digits(digits_mlp, digits_sample):
    x, y = digits_sample
    x, y = x[:30], y[:30]
    result = CWL0(max_iterations=50)(digits_mlp, x, y, threat=L0(eps=math.inf))
    assert result.success.all()
    assert float(result.distance.median()) <= 6  # of 64 pixels
    assert float((result.distance <= 8).float().mean()) >= 0.8


def test_cw_linf_beats_fgsm(digits_mlp, digits_sample):
    x, y = digits_sample
    result = CWLinf(max_iterations=100)(digits_mlp, x, y, threat=Linf(eps=math.inf))
    assert result.success.all()
    grid = [0.025 * k for k in range(1, 17)]
    fgsm_eps = minimal_successful_eps(FGSM(), digits_mlp, x, y, lambda e: Linf(eps=e), grid)
    assert float((result.distance < fgsm_eps).float().mean()) >= 0.7
    x, y = x[:20], y[:20]
    attack = CWLinf(max_iterations=100)
    targeted = attack(digits_mlp, x, y, threat=Linf(eps=math.inf), targets="random", generator=gen())
    assert targeted.success.all()


# --- 6. bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,keyword",
    [
        (lambda: CWL2(confidence=-1.0), "confidence"),
        (lambda: CWL2(confidence=math.nan), "confidence"),
        (lambda: CWL2(initial_const=0.0), "initial_const"),
        (lambda: CWL2(initial_const=-1e-3), "initial_const"),
        (lambda: CWL2(objective="f8"), "unknown C&W objective"),
        (lambda: CWL2(box="sigmoid"), "unknown box encoding"),
        (lambda: CWL2(objective="f2", confidence=1.0), "f6"),
        (lambda: CWL2(binary_search_steps=0), "binary_search_steps"),
        (lambda: CWL2(max_iterations=2.5), "max_iterations"),
        (lambda: CWL2(learning_rate=0.0), "learning_rate"),
        (lambda: CWL0(confidence=-0.01), "confidence"),
        (lambda: CWL0(initial_const=0.0), "initial_const"),
        (lambda: CWL0(largest_const=-1.0), "largest_const"),
        (lambda: CWLinf(decrease_factor=1.0), "decrease_factor"),
        (lambda: CWLinf(max_iterations=0), "max_iterations"),
    ],
)
def test_bad_hyperparameters_are_rejected(make, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        make()


@pytest.mark.parametrize("attack,threat", [(CWL2(max_iterations=2), UNBOUNDED_L2), (CWL0(max_iterations=2), L0(eps=3)),
                                           (CWLinf(max_iterations=2), Linf(eps=0.1))])
def test_a_single_class_model_is_rejected(attack, threat):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RobustlabError, match="at least 2 classes"):
        attack(model, x, y, threat=threat)
