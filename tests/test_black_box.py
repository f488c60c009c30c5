"""Black-box attacks: Square (score-based) and the decision-based Boundary Attack and
HopSkipJump. Behavioral tests on the trained digits MLP (an attack that does nothing fails
them), query accounting, the Square initialisations and L2 update, linear-model oracles for the
decision-based attacks, and bad input. (The conformance suite in test_attacks.py covers them too.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import PGD, BoundaryAttack, DeepFool, HopSkipJump, SquareAttack, build_attack
from robustlab.attacks.square import square_fraction
from robustlab.errors import RobustlabError
from robustlab.threat import L2, Linf
from conftest import linear_two_class

pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits_batch(digits, digits_mlp):
    """The test digits among the first 60 that the MLP classifies correctly."""
    _, _, x, y = digits
    x, y = x[:60], y[:60]
    with torch.no_grad():
        correct = digits_mlp(x).argmax(1) == y
    return x[correct], y[correct]


def assert_query_accounting(result, n: int, budget: int) -> None:
    queries = result.extras["queries"]
    assert queries.shape == (n,) and queries.dtype == torch.int64
    assert (queries >= 1).all() and (queries <= budget).all()
    assert result.backwards == 0
    # Every forward is a counted query, plus the template's clean check and final check.
    assert result.forwards == int(queries.sum()) + 2 * n


# --- Square -------------------------------------------------------------------------------------


def test_square_linf_breaks_most_digits_and_is_close_to_pgd(digits_mlp, digits_batch):
    x, y = digits_batch
    threat = Linf(eps=0.15)
    result = SquareAttack(queries=1000)(digits_mlp, x, y, threat=threat, generator=gen())
    pgd = PGD(steps=40)(digits_mlp, x, y, threat=threat, generator=gen())
    assert result.success_rate >= 0.75
    assert result.success_rate >= pgd.success_rate - 0.15
    assert threat.contains(x, result.x_adv).all()
    assert_query_accounting(result, len(x), 1000 + 1)
    queries = result.extras["queries"]
    # A sample stops at its first success; only unbroken samples use the whole budget.
    assert (queries[result.success] < 1001).all() and (queries[~result.success] == 1001).all()
    assert float(queries[result.success].float().median()) < 500


def test_square_l2_breaks_most_digits(digits_mlp, digits_batch):
    x, y = digits_batch
    threat = L2(eps=1.0)
    result = SquareAttack(queries=300)(digits_mlp, x, y, threat=threat, generator=gen())
    assert result.success_rate >= 0.6
    assert threat.contains(x, result.x_adv).all()
    assert_query_accounting(result, len(x), 300 + 1)


def test_square_targeted_reaches_the_targets(digits_mlp, digits_batch):
    x, y = digits_batch
    result = SquareAttack(queries=500)(digits_mlp, x, y, threat=Linf(eps=0.25), targets="random", generator=gen())
    assert result.success_rate >= 0.6
    assert torch.equal(result.success, result.predictions == result.targets)
    assert_query_accounting(result, len(x), 500 + 1)


def test_square_leaves_already_misclassified_samples_alone(digits_mlp, digits_batch):
    x, y = digits_batch
    wrong = y.clone()
    wrong[::2] = (y[::2] + 1) % 10  # these are "adversarial" before any perturbation
    result = SquareAttack(queries=50)(digits_mlp, x, wrong, threat=Linf(eps=0.1), generator=gen())
    assert torch.equal(result.x_adv[::2], x[::2])
    assert (result.extras["queries"][::2] == 1).all()
    assert (result.extras["queries"][1::2] >= 2).all()


def test_square_linf_starts_from_vertical_stripes(digits_mlp, digits_batch):
    x, y = digits_batch
    eps = 0.05
    result = SquareAttack(queries=1)(digits_mlp, x, y, threat=Linf(eps=eps), generator=gen())
    assert (result.extras["queries"] == 2).all()  # clean check + the initialisation
    delta = result.x_adv - x
    free = (x >= eps) & (x <= 1 - eps)  # pixels the box does not clip
    torch.testing.assert_close(delta[free].abs(), torch.full_like(delta[free], eps))
    # One sign per column: within a column the non-zero changes never disagree.
    signs = delta.sign()
    assert (signs.amax(dim=2) * signs.amin(dim=2) >= 0).all()
    column_signs = signs.sum(dim=2).sign()
    assert (column_signs > 0).any() and (column_signs < 0).any()


def wide_linear_images(seed: int = 0):
    """A 3-class linear model on ``[N, 1, 20, 20]`` images and 16 inputs, for a box of (-10, 10)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(400, 3))
    x = torch.rand(16, 1, 20, 20, generator=gen(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_square_l2_init_and_steps_use_exactly_the_budget():
    model, x, y = wide_linear_images()
    threat = L2(eps=0.5, bounds=(-10.0, 10.0))
    init = SquareAttack(queries=1, p_init=0.05)(model, x, y, threat=threat, generator=gen(3))
    torch.testing.assert_close(init.distance, torch.full((16,), 0.5))
    two = SquareAttack(queries=2, p_init=0.05)(model, x, y, threat=threat, generator=gen(3))
    torch.testing.assert_close(two.distance, torch.full((16,), 0.5))
    # The same seed gives the same start; one step rewrites at most two 5x5 windows (p = 0.05
    # of 400 pixels) and keeps every other pixel: the unused budget and the emptied window's
    # mass go into the new window, so no global rescaling touches the rest.
    changed = (two.x_adv - init.x_adv).abs().flatten(1) > 1e-6
    stepped = changed.any(dim=1)
    assert stepped.sum() >= 3
    assert (changed.sum(dim=1) <= 2 * 5 * 5).all()


def test_square_l2_step_spends_the_unused_budget_inside_its_window():
    # From a perturbation of norm eps / 2, one L2 step must hand the unused budget
    # (eps^2 - ||delta||^2, split over the channels) to the new window: the result has norm eps
    # without any global rescaling, so every pixel outside the two windows keeps its value.
    threat = L2(eps=0.5, bounds=(-10.0, 10.0))
    x = torch.rand(8, 2, 20, 20, generator=gen(0))
    delta = torch.randn(x.shape, generator=gen(1))
    delta = 0.25 * delta / delta.flatten(1).norm(dim=1)[:, None, None, None]
    stepped = SquareAttack._step_l2(x, x + delta, 0.05, threat, gen(2))
    torch.testing.assert_close(threat.distance(x, stepped), torch.full((8,), 0.5))
    changed = ((stepped - x - delta).abs() > 1e-6).any(dim=1).flatten(1)
    assert (changed.sum(dim=1) <= 2 * 5 * 5).all() and changed.any(dim=1).all()


def test_square_fraction_halves_on_the_rescaled_schedule():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 201, 10000) == 0.1
    assert square_fraction(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    # Rescaled to the budget: 5000 queries halve at 5.5 (= 11 / 2) and 4000.5.
    assert square_fraction(0.8, 6, 5000) == 0.4
    assert square_fraction(0.8, 4001, 5000) == pytest.approx(0.8 / 512)
    # Not rescaled (AutoAttack's Square): the 10000-query schedule cut at 5000.
    assert square_fraction(0.8, 11, 5000, rescale=False) == 0.4
    assert square_fraction(0.8, 4001, 5000, rescale=False) == pytest.approx(0.8 / 128)


def test_square_needs_a_bounded_threat_and_images(digits_mlp, digits_batch):
    x, y = digits_batch
    with pytest.raises(RobustlabError, match="bounded"):
        SquareAttack(queries=5)(digits_mlp, x, y, threat=Linf(eps=math.inf))
    with pytest.raises(RobustlabError, match="images"):
        SquareAttack(queries=5)(digits_mlp, x.flatten(1), y, threat=Linf(eps=0.1))


# --- decision-based -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deepfool_l2(digits_mlp, digits_batch):
    x, y = digits_batch
    return DeepFool()(digits_mlp, x, y, threat=L2(eps=math.inf))


def assert_walked_towards_x(result, factor: float) -> None:
    initial, final = result.extras["initial_distance"], result.distance
    assert result.success.all()
    assert torch.isfinite(initial).all() and (final <= initial + 1e-6).all()
    assert float(final.median()) <= factor * float(initial.median())
    torch.testing.assert_close(result.extras["best_distance"], final)


def test_boundary_attack_walks_towards_x_on_digits(digits_mlp, digits_batch):
    x, y = digits_batch
    result = BoundaryAttack(max_queries=1500)(digits_mlp, x, y, threat=L2(eps=math.inf), generator=gen())
    assert_walked_towards_x(result, 0.6)
    assert_query_accounting(result, len(x), 1500)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_hopskipjump_walks_towards_x_on_digits(norm, digits_mlp, digits_batch, deepfool_l2):
    x, y = digits_batch
    threat = L2(eps=math.inf) if norm == "L2" else Linf(eps=math.inf)
    result = HopSkipJump(max_queries=1500)(digits_mlp, x, y, threat=threat, generator=gen())
    assert_walked_towards_x(result, 0.5)
    assert_query_accounting(result, len(x), 1500)
    if norm == "L2":
        assert float(result.distance.median()) <= 3 * float(deepfool_l2.distance.median())


@pytest.mark.parametrize(
    "attack",
    [pytest.param(HopSkipJump(max_queries=2000), id="hopskipjump"),
     pytest.param(BoundaryAttack(max_queries=2500), id="boundary")],
)
def test_decision_attacks_find_the_minimal_l2_perturbation_of_a_linear_model(attack):
    model, w, c = linear_two_class(8)
    x = 0.3 * torch.randn(16, 8, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    minimal = (x @ w + c).abs() / w.norm()
    result = attack(model, x, y, threat=L2(eps=math.inf, bounds=(-10.0, 10.0)), generator=gen())
    assert result.success.all()
    ratio = result.distance / minimal
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.05).all()


def test_decision_attacks_start_from_the_init_attack(digits_mlp, digits_batch, deepfool_l2):
    x, y = digits_batch
    attack = BoundaryAttack(max_queries=300, init_attack=DeepFool())
    result = attack(digits_mlp, x, y, threat=L2(eps=math.inf), generator=gen())
    torch.testing.assert_close(result.extras["initial_distance"], deepfool_l2.distance)
    assert result.backwards > 0  # DeepFool's gradients are counted
    assert result.success.all() and (result.distance <= deepfool_l2.distance + 1e-6).all()


@pytest.mark.parametrize("make_attack", [lambda: BoundaryAttack(max_queries=200), lambda: HopSkipJump(max_queries=500)],
                         ids=["boundary", "hopskipjump"])
def test_decision_attacks_return_already_adversarial_inputs_unchanged(make_attack, digits_mlp, digits_batch):
    x, y = digits_batch
    wrong = y.clone()
    wrong[::2] = (y[::2] + 1) % 10
    result = make_attack()(digits_mlp, x, wrong, threat=L2(eps=math.inf), generator=gen())
    assert torch.equal(result.x_adv[::2], x[::2])
    assert (result.extras["best_distance"][::2] == 0).all() and (result.extras["queries"][::2] == 1).all()
    assert (result.distance[1::2] > 0).all() and result.success[1::2].all()


def test_samples_without_an_adversarial_start_are_returned_unchanged():
    # A constant model never changes its mind: no start exists, nothing is returned but x.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0]))
    x, y = torch.rand(3, 4, generator=gen()), torch.zeros(3, dtype=torch.int64)
    result = HopSkipJump(max_queries=200, init_draws=5)(model, x, y, threat=L2(eps=math.inf), generator=gen())
    assert torch.equal(result.x_adv, x) and not result.success.any()
    assert torch.isinf(result.extras["best_distance"]).all()
    assert (result.extras["queries"] == 1 + 5).all()


def test_hopskipjump_rejects_a_budget_smaller_than_its_initialisation(digits_mlp, digits_batch):
    x, y = digits_batch
    with pytest.raises(RobustlabError, match="max_queries"):
        HopSkipJump(max_queries=50)(digits_mlp, x, y, threat=L2(eps=math.inf))


@pytest.mark.parametrize(
    "name,options,keyword",
    [
        ("square", {"queries": 0}, "queries"),
        ("square", {"queries": 2.5}, "queries"),
        ("square", {"p_init": 0.0}, "p_init"),
        ("square", {"p_init": 1.5}, "p_init"),
        ("square", {"loss": "hinge"}, "loss"),
        ("boundary", {"max_queries": 0}, "max_queries"),
        ("boundary", {"spherical_step": -0.1}, "spherical_step"),
        ("boundary", {"source_step": math.nan}, "source_step"),
        ("boundary", {"step_adaptation": 1.0}, "step_adaptation"),
        ("boundary", {"update_stats_every": 0}, "update_stats_every"),
        ("boundary", {"init_attack": "pgd"}, "init_attack"),
        ("hopskipjump", {"steps": 0}, "steps"),
        ("hopskipjump", {"initial_evaluations": 0}, "initial_evaluations"),
        ("hopskipjump", {"gamma": 0.0}, "gamma"),
        ("hopskipjump", {"init_draws": 0}, "init_draws"),
    ],
)
def test_bad_hyperparameters_are_rejected(name, options, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        build_attack(name, **options)


class _Constant(nn.Module):
    """Logits that do not depend on the input: Square can make no progress."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0, 0.0]).expand(x.shape[0], 2) + 0 * x.flatten(1)[:, :1]


def test_square_gives_up_on_samples_that_make_no_progress():
    x, y = torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.int64)
    threat = Linf(eps=0.1)
    kept = SquareAttack(queries=400)(_Constant(), x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    given_up = SquareAttack(queries=400, give_up=100.0)(_Constant(), x, y, threat=threat,
                                                      generator=torch.Generator().manual_seed(0))
    # The clean check plus 400 queries without give_up; with it, the search stops at the first
    # checkpoint (100 queries) since the margin has not moved, however large the safety factor.
    assert kept.extras["queries"].tolist() == [401] * 3
    assert given_up.extras["queries"].tolist() == [101] * 3
    with pytest.raises(RobustlabError, match="give_up"):
        SquareAttack(give_up=0.0)


class _NearOnceMoved(nn.Module):
    """Margin 2 at the all-0.5 image and 0.1 (5% of it) at any other point: any perturbation
    brings a sample near the boundary, and no further search makes progress."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = (x - 0.5).flatten(1).abs().amax(dim=1) > 1e-6
        return torch.stack([torch.where(moved, 0.1, 2.0), torch.zeros(x.shape[0])], dim=1) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("keep_near, queries", [(0.06, 401), (0.04, 101), (None, 101)])
def test_square_keeps_searching_on_samples_near_the_boundary(keep_near, queries):
    # At 5% of the clean margin: searched on with keep_near 0.06, given up with 0.04 or without.
    x, y = torch.full((3, 1, 8, 8), 0.5), torch.zeros(3, dtype=torch.int64)
    result = SquareAttack(queries=400, give_up=100.0, keep_near=keep_near)(
        _NearOnceMoved(), x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0))
    assert result.extras["queries"].tolist() == [queries] * 3
    assert not result.success.any()


@pytest.mark.parametrize("options", [{"keep_near": 0.1}, {"give_up": 2.0, "keep_near": 0.0},
                                     {"give_up": 2.0, "keep_near": 1.0}, {"give_up": 2.0, "keep_near": True}])
def test_square_keep_near_is_validated(options):
    with pytest.raises(RobustlabError, match="keep_near"):
        SquareAttack(**options)


# --- Square from a given start (the fast protocol's warm start) -----------------------------------


def test_square_continues_from_a_start_that_scores_better(digits_mlp, digits_batch):
    x, y = digits_batch
    threat = Linf(eps=0.1)
    pgd = PGD(steps=20, early_stop=False)(digits_mlp, x, y, threat=threat, generator=gen())
    near = ~pgd.success  # PGD's points of the samples it did not break: near the boundary
    x, y, start = x[near], y[near], pgd.x_adv[near]
    budget = 60
    cold = SquareAttack(queries=budget)(digits_mlp, x, y, threat=threat, generator=gen())
    warm = SquareAttack(queries=budget)(digits_mlp, x, y, threat=threat, generator=gen(), start=start)
    # The start costs one query per sample; it is kept where its margin beats the stripes'.
    assert_query_accounting(warm, len(x), budget + 2)
    # Continuing from PGD's points ends nearer the boundary than the cold search, and never
    # farther than the start.
    assert warm.success.sum() >= cold.success.sum()
    assert (warm.margin < cold.margin).float().mean() > 0.8
    assert (warm.margin <= pgd.margin[near] + 1e-5).all()


@pytest.mark.parametrize("threat", [Linf(eps=0.15), L2(eps=1.5)], ids=["Linf", "L2"])
def test_square_keeps_an_adversarial_start_after_one_query(threat, digits_mlp, digits_batch):
    x, y = digits_batch
    pgd = PGD(steps=40)(digits_mlp, x, y, threat=threat, generator=gen())
    result = SquareAttack(queries=50, give_up=None)(digits_mlp, x, y, threat=threat, generator=gen(), start=pgd.x_adv)
    queries = result.extras["queries"]
    # Clean check, stripes, then the start: a sample the start breaks stops there (3 queries),
    # unless the stripes already broke it (2).
    assert pgd.success.sum() >= 5 and result.success[pgd.success].all()
    assert (queries[pgd.success] <= 3).all()
    assert torch.equal(result.x_adv[pgd.success & (queries == 3)], pgd.x_adv[pgd.success & (queries == 3)])


def test_start_must_lie_in_the_threat_set_and_only_attacks_that_take_one_accept_it(digits_mlp, digits_batch):
    x, y = digits_batch
    threat = Linf(eps=0.1)
    with pytest.raises(RobustlabError, match="outside"):
        SquareAttack(queries=5)(digits_mlp, x, y, threat=threat, start=(x + 0.2).clamp(0, 1))
    with pytest.raises(RobustlabError, match="shape"):
        SquareAttack(queries=5)(digits_mlp, x, y, threat=threat, start=x[:1])
    with pytest.raises(RobustlabError, match="does not take start"):
        PGD(steps=1)(digits_mlp, x, y, threat=threat, start=x)


def test_attack_result_margin_is_the_difference_of_logits_at_x_adv(digits_mlp, digits_batch):
    x, y = digits_batch
    result = PGD(steps=5)(digits_mlp, x, y, threat=Linf(eps=0.1), generator=gen())
    with torch.no_grad():
        z = digits_mlp(result.x_adv)
    own = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], -math.inf).amax(1)
    assert torch.allclose(result.margin, own - other)
    assert torch.equal(result.margin <= 0, result.success) or bool(((result.margin <= 0) == result.success).float().mean() > 0.99)
