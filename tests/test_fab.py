"""FAB and FAB-T: the exact hyperplane ∩ box projections against scipy's LP/QP solvers, the
closed-form minimal perturbation of a linear model, behaviour on the trained digits MLP
(against DeepFool), FAB-T's target rounds, and bad hyperparameters. (The conformance suite in
test_attacks.py covers both attacks too.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlab.attacks import FAB, FABT, DeepFool, build_attack
from robustlab.attacks.fab import hyperplane_projection
from robustlab.errors import RobustlabError
from robustlab.threat import L2, NORMS, Linf
from conftest import linear_two_class

pytestmark = pytest.mark.usefixtures("single_thread")

D = 8
BOX = (-10.0, 10.0)  # far from the inputs: only the norm matters
DUAL = {"Linf": 1, "L2": 2, "L1": math.inf}
ORDER = {"Linf": np.inf, "L2": 2, "L1": 1}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the projection onto hyperplane ∩ box --------------------------------------------------------


def projection_problems(m: int = 40, d: int = 5, seed: int = 0):
    """``m`` problems ``min ||delta|| s.t. <w, delta> = c, lower <= delta <= upper`` in float64,
    with points on the box faces (zero caps), zero normal entries, and both reachable and
    unreachable hyperplanes."""
    g = gen(seed)
    w = torch.randn(m, d, generator=g, dtype=torch.float64)
    w[::7, 1] = 0.0
    x = torch.rand(m, d, generator=g, dtype=torch.float64)
    x[::5, 2] = 1.0
    x[::3, 0] = 0.0
    c = 2.0 * torch.randn(m, generator=g, dtype=torch.float64)
    return w, c, -x, 1 - x


def reference_minimum(norm: str, w: np.ndarray, c: float, lower: np.ndarray, upper: np.ndarray) -> float:
    """The minimal norm from scipy: an LP for L∞ and L1, SLSQP for L2 (a strictly convex QP)."""
    from scipy.optimize import linprog, minimize

    d = len(w)
    box = list(zip(lower, upper))
    if norm == "L2":
        res = minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, bounds=box, method="SLSQP",
                       constraints=[{"type": "eq", "fun": lambda v: w @ v - c, "jac": lambda v: w}],
                       options={"ftol": 1e-15, "maxiter": 500})
        assert res.success
        return math.sqrt(res.fun)
    # Variables (delta, s): L∞ minimises one s >= |delta_i|; L1 the sum of s_i >= |delta_i|.
    k = 1 if norm == "Linf" else d
    spread = np.ones((d, 1)) if norm == "Linf" else np.eye(d)
    a_ub = np.vstack([np.hstack([np.eye(d), -spread]), np.hstack([-np.eye(d), -spread])])
    res = linprog(np.r_[np.zeros(d), np.ones(k)], A_ub=a_ub, b_ub=np.zeros(2 * d),
                  A_eq=np.r_[w, np.zeros(k)][None], b_eq=[c], bounds=box + [(0, None)] * k)
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_projection_is_the_exact_minimal_step_onto_the_hyperplane_in_the_box(norm):
    w, c, lower, upper = projection_problems()
    delta = hyperplane_projection(norm, w, c, lower, upper)
    assert ((delta >= lower - 1e-12) & (delta <= upper + 1e-12)).all()
    # The farthest <w, delta> the box allows (in the direction of c): the hyperplane is
    # reachable iff it covers |c|.
    corner = torch.where(w * c.sign()[:, None] > 0, upper, lower) * (w != 0)
    reachable = (w * corner).sum(dim=1).abs() >= c.abs()
    assert 10 <= int(reachable.sum()) <= len(c) - 5  # both kinds are tested
    for i in torch.nonzero(reachable).squeeze(1).tolist():
        assert float((w[i] * delta[i]).sum()) == pytest.approx(float(c[i]), abs=1e-10)
        expected = reference_minimum(norm, w[i].numpy(), float(c[i]), lower[i].numpy(), upper[i].numpy())
        found = float(torch.linalg.vector_norm(delta[i], ORDER[norm]))
        assert found == pytest.approx(expected, rel=1e-6, abs=1e-9), i
    # Unreachable: the corner of the box towards the hyperplane.
    torch.testing.assert_close(delta[~reachable], corner[~reachable], rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_projection_has_the_closed_form_without_a_box(norm):
    # Far bounds: ||delta|| = |c| / ||w||_dual, and for L2 delta = c w / ||w||^2.
    g = gen(3)
    w = torch.randn(16, 30, generator=g, dtype=torch.float64)
    c = torch.randn(16, generator=g, dtype=torch.float64)
    big = torch.full_like(w, 1e6)
    delta = hyperplane_projection(norm, w, c, -big, big)
    torch.testing.assert_close((w * delta).sum(dim=1), c)
    dual = torch.linalg.vector_norm(w, DUAL[norm], dim=1)
    torch.testing.assert_close(torch.linalg.vector_norm(delta, ORDER[norm], dim=1), c.abs() / dual)
    if norm == "L2":
        torch.testing.assert_close(delta, c[:, None] * w / (w * w).sum(dim=1, keepdim=True))


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_projection_of_a_point_already_on_the_hyperplane_is_zero(norm):
    w, _, lower, upper = projection_problems(m=6)
    w[0] = 0.0  # a degenerate normal as well
    delta = hyperplane_projection(norm, w, torch.zeros(6, dtype=w.dtype), lower, upper)
    assert torch.equal(delta, torch.zeros_like(delta))


# --- linear model: the minimal perturbation has a closed form --------------------------------------


def linear_problem(norm: str, seed: int = 0):
    """A 2-class linear model ``z_1 - z_0 = w.x + c`` and 16 points (both classes) whose minimal
    flipping perturbation in ``norm`` is ``|w.x + c| / ||w||_dual``, between 0.1 and 1."""
    model, w, c = linear_two_class(D, seed)
    dual = float(torch.linalg.vector_norm(w, DUAL[norm]))
    minimal = torch.linspace(0.1, 1.0, 16)
    margins = minimal * dual * torch.tensor([1.0, -1.0]).repeat(8)
    z = 0.1 * torch.randn(16, D, generator=gen(seed + 1))
    x = z + ((margins - z @ w - c) / (w @ w))[:, None] * w
    return model, x, (margins > 0).long(), minimal


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fab_finds_the_minimal_perturbation_of_a_linear_model(norm, seed):
    model, x, y, minimal = linear_problem(norm, seed)
    steps = 10
    result = FAB(steps=steps)(model, x, y, threat=NORMS[norm](eps=math.inf, bounds=BOX), generator=gen())
    assert result.success.all()
    ratio = result.distance / minimal
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all(), ratio
    torch.testing.assert_close(result.extras["best_distance"], result.distance)
    # Two classes: one logit difference, so one backward and two forwards per step, plus the
    # start and the template's two forwards.
    assert (result.forwards, result.backwards) == ((2 * steps + 3) * len(x), steps * len(x))


def test_the_first_step_overshoots_by_eta():
    # From x, d_k = d_0 = the exact projection, so the first iterate is x + eta * d whatever alpha.
    model, x, y, minimal = linear_problem("L2")
    result = FAB(steps=1, eta=1.3)(model, x, y, threat=L2(eps=math.inf, bounds=BOX))
    torch.testing.assert_close(result.distance, 1.3 * minimal)


def test_targeted_fab_on_a_linear_model():
    model, x, y, minimal = linear_problem("Linf")
    result = FAB(steps=10)(model, x, y, threat=Linf(eps=math.inf, bounds=BOX), targets=1 - y)
    assert result.success.all()
    assert ((result.distance / minimal) <= 1.01).all()


def test_a_bounded_threat_succeeds_where_the_found_distance_fits():
    model, x, y, _ = linear_problem("L2")
    eps = 0.55
    result = FAB(steps=10)(model, x, y, threat=L2(eps=eps, bounds=BOX), generator=gen())
    found = result.extras["best_distance"]
    assert result.success.tolist() == (found <= eps).tolist()
    assert 4 <= int(result.success.sum()) <= 12


def test_already_misclassified_inputs_are_returned_unchanged():
    model, x, y, _ = linear_problem("L2")
    y = y.clone()
    y[:4] = 1 - y[:4]
    result = FAB(steps=5)(model, x, y, threat=L2(eps=math.inf, bounds=BOX))
    assert torch.equal(result.x_adv[:4], x[:4])
    assert result.extras["best_distance"][:4].tolist() == [0.0] * 4
    assert (result.distance[4:] > 0.09).all() and result.success.all()


# --- the trained digits MLP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_batch(digits, digits_mlp):
    """The first 80 test digits that the MLP classifies correctly."""
    _, _, x, y = digits
    x, y = x[:80], y[:80]
    with torch.no_grad():
        correct = digits_mlp(x).argmax(1) == y
    return x[correct], y[correct]


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_fab_breaks_every_digit_no_farther_than_deepfool(norm, digits_mlp, digits_batch):
    x, y = digits_batch
    threat = NORMS[norm](eps=math.inf)
    fab = FAB(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    deepfool = DeepFool()(digits_mlp, x, y, threat=threat)
    assert fab.success.all()
    torch.testing.assert_close(fab.extras["best_distance"], fab.distance)
    assert float(fab.distance.median()) <= 1.2 * float(deepfool.distance[deepfool.success].median())
    # Not vacuous: the digits are far apart (about 3.5 in L2, 1 in L∞) and nothing is free.
    assert float(fab.distance.min()) > 0 and float(fab.distance.median()) < (1.0 if norm == "L2" else 0.2)


def test_fab_l1_breaks_every_digit(digits_mlp, digits_batch):
    x, y = digits_batch
    result = FAB(steps=20)(digits_mlp, x, y, threat=NORMS["L1"](eps=math.inf), generator=gen())
    assert result.success.all()
    # Sparse: far less L1 than the L2-minimal perturbations would need (about 8 times their L2).
    assert float(result.distance.median()) < 3.0


def test_more_steps_and_restarts_never_do_worse(digits_mlp, digits_batch):
    x, y = digits_batch
    threat = L2(eps=math.inf)
    once = FAB(steps=5)(digits_mlp, x, y, threat=threat, generator=gen(1))
    again = FAB(steps=5, restarts=3)(digits_mlp, x, y, threat=threat, generator=gen(1))
    # Same first restart, so per sample the best distance can only shrink ...
    assert (again.distance <= once.distance + 1e-6).all()
    # ... and the random restarts do find closer adversarials for some samples.
    assert int((again.distance < once.distance - 1e-4).sum()) >= 3


def test_targeted_fab_reaches_the_target(digits_mlp, digits_batch):
    x, y = digits_batch
    result = FAB(steps=20)(digits_mlp, x, y, threat=L2(eps=math.inf), targets="random", generator=gen())
    assert float(result.success.float().mean()) >= 0.95
    assert torch.equal(result.predictions[result.success], result.targets[result.success])


def test_fab_t_breaks_every_digit_and_names_the_winning_target(digits_mlp, digits_batch):
    x, y = digits_batch
    result = FABT(steps=20)(digits_mlp, x, y, threat=L2(eps=math.inf), generator=gen())
    assert result.success.all() and result.targets is None
    target = result.extras["target"]
    with torch.no_grad():
        ranked = digits_mlp(x).scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)[:, :9]
    assert ((target[:, None] == ranked).any(dim=1)).all()
    # Most digits fall to the most confusing class, in the first round.
    assert int((target == ranked[:, 0]).sum()) >= 0.5 * len(x)


def test_fab_t_attacks_only_the_samples_still_unbroken(digits_mlp, digits_batch):
    # Bounded: a sample counts as broken only within eps, so about 60% go on to later rounds.
    x, y = digits_batch
    steps, n, threat = 3, len(x), L2(eps=0.4)
    one = FABT(steps=steps, n_target_classes=1)(digits_mlp, x, y, threat=threat, generator=gen())
    # One round: one backward per step and sample, and only the top wrong class as target.
    assert one.backwards == steps * n
    assert (one.extras["target"][one.success] == ranked_first(digits_mlp, x, y)[one.success]).all()
    unbroken = int((~one.success).sum())
    assert 0.3 * n <= unbroken <= 0.8 * n
    all_rounds = FABT(steps=steps)(digits_mlp, x, y, threat=threat, generator=gen())
    assert steps * (n + unbroken) <= all_rounds.backwards <= steps * (n + 8 * unbroken)
    assert (all_rounds.success | ~one.success).all()


def ranked_first(model, x, y):
    with torch.no_grad():
        return model(x).scatter(1, y[:, None], -math.inf).argmax(dim=1)


def unreachable_top_class_model() -> torch.nn.Module:
    """3 classes on ``[0, 1]^2``: ``z = (0, -0.1 + 0.05 x_1, -1 + 4 x_2)``. Class 1 has the
    higher logit near ``x_2 = 0`` but never wins inside the box; class 2 wins for ``x_2 > 0.25``."""
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.05, 0.0], [0.0, 4.0]]))
        model.bias.copy_(torch.tensor([0.0, -0.1, -1.0]))
    return model


def test_fab_t_moves_on_to_the_next_target_where_the_first_is_out_of_reach():
    model = unreachable_top_class_model()
    x = torch.tensor([[0.5, 0.1], [0.2, 0.05], [0.9, 0.15]])
    y = torch.zeros(3, dtype=torch.int64)
    assert (ranked_first(model, x, y) == 1).all()
    threat = L2(eps=math.inf)
    first_only = FABT(steps=10, n_target_classes=1)(model, x, y, threat=threat)
    assert not first_only.success.any() and (first_only.extras["target"] == -1).all()
    assert (first_only.distance > 0).all()  # the best attempt, not the clean input
    result = FABT(steps=10)(model, x, y, threat=threat)
    assert result.success.all() and (result.extras["target"] == 2).all()
    ratio = result.distance / (0.25 - x[:, 1])
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all(), ratio


def test_fab_t_caps_the_rounds_at_the_number_of_wrong_classes():
    model, x, y, minimal = linear_problem("L2")
    result = FABT(steps=10, n_target_classes=9)(model, x, y, threat=L2(eps=math.inf, bounds=BOX))
    assert result.success.all() and (result.extras["target"] == 1 - y).all()
    assert ((result.distance / minimal) <= 1.01).all()


# --- bad hyperparameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,keyword",
    [
        ("fab", {"steps": 0}, "steps"),
        ("fab", {"steps": 2.5}, "steps"),
        ("fab", {"restarts": 0}, "restarts"),
        ("fab", {"alpha_max": -0.1}, "alpha_max"),
        ("fab", {"alpha_max": 1.5}, "alpha_max"),
        ("fab", {"eta": 0.9}, "eta"),
        ("fab", {"eta": math.inf}, "eta"),
        ("fab", {"beta": 0.0}, "beta"),
        ("fab", {"beta": 1.0}, "beta"),
        ("fab", {"beta": math.nan}, "beta"),
        ("fab-t", {"n_target_classes": 0}, "n_target_classes"),
        ("fab-t", {"eta": 0.5}, "eta"),
    ],
)
def test_bad_hyperparameters_are_rejected(name, options, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        build_attack(name, **options)


def test_projection_rejects_an_unsupported_norm():
    w, c, lower, upper = projection_problems(m=2)
    with pytest.raises(RobustlabError, match="norms"):
        hyperplane_projection("L0", w, c, lower, upper)


def test_fab_needs_two_classes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, 1))
    x, y = torch.rand(3, D), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RobustlabError, match="at least 2 classes"):
        FAB(steps=2)(model, x, y, threat=L2(eps=math.inf))
