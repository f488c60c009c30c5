"""FAB and FAB-T pinned to their definition (Croce & Hein, ICML 2020, Algorithm 1; FAB-T as run
by AutoAttack), model-free: robustlab's batched attack against a plain per-sample replay of the
algorithm on a fixed small tanh network (the linearised nearest boundary with the dual norm, the
projections of ``x_k`` and of ``x``, the bias ``alpha = min(||d_k|| / (||d_k|| + ||d_0||),
alpha_max)``, the overshoot ``eta``, the backward step ``beta`` after a success, the closest
adversarial kept; FAB-T's rounds over the top clean logits with ``g = Z_t - Z_y``), closed-form
first steps on linear models, and the restarts' radius ``min(best distance, eps) / 2``.
No trained model: these tests are the fast selection of the mutation run (benchmarks/mutation.py).
The projection onto hyperplane ∩ box itself is checked against scipy in test_fab.py."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.attacks import FAB, FABT
from robustlab.attacks.fab import hyperplane_projection
from robustlab.errors import RobustlabError
from robustlab.threat import L2, NORMS, Linf
from conftest import InputRecorder, linear_model, tanh_net, unit_box_inputs

pytestmark = pytest.mark.usefixtures("single_thread")

FAR = (-10.0, 10.0)  # a box that never binds: the projections have their closed forms
ORDER = {"Linf": math.inf, "L2": 2.0, "L1": 1.0}
DUAL = {"Linf": 1.0, "L2": 2.0, "L1": math.inf}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def closed_form_projection(norm: str, w: torch.Tensor, c: float) -> torch.Tensor:
    """The smallest ``d`` with ``<w, d> = c`` without a box: L2 ``c w / ||w||^2``; L∞
    ``c sign(w) / ||w||_1``; L1 all on the coordinate of the largest ``|w_i|``."""
    if norm == "L2":
        return c * w / (w @ w)
    if norm == "Linf":
        return c * w.sign() / w.abs().sum()
    d = torch.zeros_like(w)
    i = int(w.abs().argmax())
    d[i] = c / w[i]
    return d


def project(norm, w, c, origin, bounds):
    if bounds == FAR:
        return closed_form_projection(norm, w, c)
    lo, hi = bounds
    return hyperplane_projection(norm, w[None], torch.tensor([c], dtype=w.dtype), (lo - origin)[None],
                                 (hi - origin)[None])[0]


def value_and_grad(model, z, fn):
    z = z.clone().requires_grad_(True)
    value = fn(model(z[None])[0])
    (grad,) = torch.autograd.grad(value, z)
    return value.item(), grad


class Best:
    """The closest adversarial so far; before any, the attempt with the lowest margin."""

    def __init__(self, x, margin=math.inf):
        self.x, self.distance, self.margin, self.success = x, math.inf, margin, False

    def update(self, z, distance, margin, success):
        if success and distance < self.distance:
            self.x, self.distance = z, distance
        elif not self.success and not success and margin < self.margin:
            self.x, self.margin = z, margin
        self.success |= success


def margin_and_success(model, z, y, target=None):
    with torch.no_grad():
        logits = model(z[None])[0]
    cls = y if target is None else target
    rest = logits.clone()
    rest[cls] = -math.inf
    if target is None:
        return float(logits[y] - rest.max()), int(logits.argmax()) != y
    return float(rest.max() - logits[target]), int(logits.argmax()) == target


def reference_fab_search(model, x, y, norm, boundary, *, steps, alpha_max=0.1, eta=1.05, beta=0.9, bounds=FAR,
                         target=None, best=None):
    """Algorithm 1 for one sample ``x`` ``[D]`` from ``x`` itself (one restart): at ``x_k``,
    ``g, w = boundary(x_k)`` (the linearised boundary ``g + <w, z - x_k> = 0``); ``d_k``, ``d_0``:
    the smallest steps from ``x_k`` and from ``x`` onto it (inside the box);
    ``alpha = clip(||d_k|| / (||d_k|| + ||d_0||), 0, alpha_max)`` (norms at least 1e-8);
    ``x_{k+1} = clip((1 - alpha)(x_k + eta d_k) + alpha (x + eta d_0))``; where that is
    adversarial, keep it if closest, then ``x_{k+1} = x + beta (x_{k+1} - x)``."""
    lo, hi = bounds
    best = best or Best(x)
    x_k = x.clone()
    for _ in range(steps):
        g, w = boundary(x_k)
        d_k = project(norm, w, -g, x_k, bounds)
        d_0 = project(norm, w, -g + float(w @ (x_k - x)), x, bounds)
        n_k = max(float(d_k.norm(p=ORDER[norm])), 1e-8)
        n_0 = max(float(d_0.norm(p=ORDER[norm])), 1e-8)
        alpha = min(max(n_k / (n_k + n_0), 0.0), alpha_max)
        x_k = ((1 - alpha) * (x_k + eta * d_k) + alpha * (x + eta * d_0)).clamp(lo, hi)
        margin, success = margin_and_success(model, x_k, y, target)
        best.update(x_k, float((x_k - x).norm(p=ORDER[norm])), margin, success)
        if success:
            x_k = x + beta * (x_k - x)
    return best


def nearest_boundary(model, y, norm):
    """Untargeted FAB: the class ``j != y`` minimising ``|Z_j - Z_y| / ||grad (Z_j - Z_y)||_dual``."""

    def boundary(z):
        k = model(z[None]).shape[1]
        found = []
        for j in range(k):
            if j != y:
                g, w = value_and_grad(model, z, lambda out, j=j: out[j] - out[y])
                found.append((abs(g) / (float(w.norm(p=DUAL[norm])) + 1e-12), g, w))
        _, g, w = min(found, key=lambda item: item[0])
        return g, w

    return boundary


def towards(model, t, ref=None):
    """Targeted FAB: ``Z_t - max_{j != t} Z_j``; FAB-T's rounds: ``Z_t - Z_ref``."""

    def boundary(z):
        def g(out):
            if ref is not None:
                return out[t] - out[ref]
            rest = out.clone()
            rest[t] = -math.inf
            return out[t] - rest.max()

        return value_and_grad(model, z, g)

    return boundary


def net_case(seed: int = 0):
    model = tanh_net(seed)
    x = unit_box_inputs()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


CASES = [(norm, bounds) for norm in ("Linf", "L2", "L1") for bounds in (FAR, (0.0, 1.0))]
IDS = [f"{norm}-{'free' if bounds == FAR else 'box'}" for norm, bounds in CASES]


@pytest.mark.parametrize("norm,bounds", CASES, ids=IDS)
def test_fab_is_algorithm_1_step_by_step(norm, bounds):
    model, x, y = net_case()
    options = {"steps": 8, "alpha_max": 0.3, "eta": 1.2, "beta": 0.7}
    result = FAB(**options)(model, x, y, threat=NORMS[norm](eps=math.inf, bounds=bounds))
    for i in range(len(x)):
        best = reference_fab_search(model, x[i], int(y[i]), norm, nearest_boundary(model, int(y[i]), norm),
                                    bounds=bounds, **options)
        assert bool(result.success[i]) == best.success, i
        torch.testing.assert_close(result.x_adv[i], best.x, rtol=1e-9, atol=1e-12)
        assert float(result.extras["best_distance"][i]) == pytest.approx(best.distance, rel=1e-9)
    assert result.success.any()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_defaults_are_the_papers(norm):
    # alpha_max 0.1, eta 1.05, beta 0.9 (paper's experiments, AutoAttack's FAB).
    model, x, y = net_case(seed=1)
    result = FAB(steps=6)(model, x, y, threat=NORMS[norm](eps=math.inf, bounds=(0.0, 1.0)))
    for i in range(len(x)):
        best = reference_fab_search(model, x[i], int(y[i]), norm, nearest_boundary(model, int(y[i]), norm),
                                    bounds=(0.0, 1.0), steps=6)
        torch.testing.assert_close(result.x_adv[i], best.x, rtol=1e-9, atol=1e-12)


def test_a_sample_never_broken_returns_its_lowest_margin_iterate():
    model, x, y = net_case()
    result = FAB(steps=1, eta=1.0)(model, x, y, threat=L2(eps=math.inf, bounds=(0.0, 1.0)))
    assert (~result.success).any()
    for i in torch.nonzero(~result.success).squeeze(1).tolist():
        best = reference_fab_search(model, x[i], int(y[i]), "L2", nearest_boundary(model, int(y[i]), "L2"),
                                    bounds=(0.0, 1.0), steps=1, eta=1.0)
        torch.testing.assert_close(result.x_adv[i], best.x, rtol=1e-9, atol=1e-12)
        assert math.isinf(float(result.extras["best_distance"][i]))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("steps,eta", [(8, 1.05), (2, 1.0)])
def test_targeted_fab_linearises_the_target_against_the_strongest_other_class(norm, steps, eta):
    # 2 steps without overshoot: some samples miss their target and return the iterate with the
    # lowest targeted margin max_{j != t} Z_j - Z_t.
    model, x, y = net_case()
    with torch.no_grad():
        targets = model(x).argmin(1)  # the weakest class: the strongest other one changes
    result = FAB(steps=steps, eta=eta)(model, x, y, threat=NORMS[norm](eps=math.inf, bounds=(0.0, 1.0)),
                                       targets=targets)
    for i in range(len(x)):
        t = int(targets[i])
        best = reference_fab_search(model, x[i], int(y[i]), norm, towards(model, t), bounds=(0.0, 1.0), steps=steps,
                                    eta=eta, target=t)
        assert bool(result.success[i]) == best.success, i
        torch.testing.assert_close(result.x_adv[i], best.x, rtol=1e-9, atol=1e-12)
    assert result.success.any()


def reference_fab_t(model, x, y, norm, eps, *, steps, n_target_classes=9, bounds=FAR):
    """FAB-T (AutoAttack): for one sample, rounds over the wrong classes by clean logit, highest
    first, each a FAB search along ``Z_t - Z_y`` counting any misclassification, until an
    adversarial within ``eps`` is found; the closest adversarial over the rounds, and its round's
    target. Returns ``(best, target)``."""
    with torch.no_grad():
        clean = model(x[None])[0]
    margin, _ = margin_and_success(model, x, y)
    best, winner = Best(x, margin), -1
    rest = clean.clone()
    rest[y] = -math.inf
    for t in rest.argsort(descending=True)[: min(n_target_classes, len(clean) - 1)].tolist():
        if best.success and best.distance <= eps:
            break
        found = reference_fab_search(model, x, y, norm, towards(model, t, ref=y), steps=steps, bounds=bounds)
        before = best.distance
        best.update(found.x, found.distance, found.margin, found.success)
        if found.success and found.distance < before:
            winner = t
    return best, winner


@pytest.mark.parametrize("norm,eps", [("Linf", 0.12), ("L2", 0.25)])
def test_fab_t_rounds_follow_autoattack(norm, eps):
    # Bounded: a sample found an adversarial outside eps in an early round goes on to the next.
    model, x, y = net_case()
    steps = 4
    result = FABT(steps=steps, n_target_classes=3)(model, x, y, threat=NORMS[norm](eps=eps, bounds=(0.0, 1.0)))
    targets = []
    for i in range(len(x)):
        best, winner = reference_fab_t(model, x[i], int(y[i]), norm, eps, steps=steps, n_target_classes=3,
                                       bounds=(0.0, 1.0))
        assert int(result.extras["target"][i]) == winner, i
        assert float(result.extras["best_distance"][i]) == pytest.approx(best.distance, rel=1e-9), i
        assert bool(result.success[i]) == (best.success and best.distance <= eps), i
        targets.append(winner)
    # Not vacuous: later rounds won somewhere, and something stayed out of reach within eps.
    with torch.no_grad():
        first = model(x).scatter(1, y[:, None], -math.inf).argmax(1)
    assert any(t not in (-1, int(f)) for t, f in zip(targets, first)), targets
    assert not result.success.all()


def test_fab_t_on_one_sample_is_fab_t_in_a_batch():
    model, x, y = net_case()
    threat = Linf(eps=0.12, bounds=(0.0, 1.0))
    batch = FABT(steps=4, n_target_classes=3)(model, x, y, threat=threat)
    assert (batch.extras["target"] >= 0).any()
    for i in range(len(x)):
        alone = FABT(steps=4, n_target_classes=3)(model, x[i:i + 1], y[i:i + 1], threat=threat)
        assert alone.extras["target"].tolist() == [int(batch.extras["target"][i])], i
        torch.testing.assert_close(alone.extras["best_distance"][0], batch.extras["best_distance"][i])


def test_fab_t_with_given_targets_is_targeted_fab():
    # Explicit targets replace the ranked classes: targeted FAB towards them, restarts included.
    model, x, y = net_case()
    with torch.no_grad():
        targets = model(x).argmin(1)
    threat = L2(eps=math.inf, bounds=(0.0, 1.0))
    fab_t = FABT(steps=4, restarts=2)(model, x, y, threat=threat, targets=targets, generator=gen(3))
    fab = FAB(steps=4, restarts=2)(model, x, y, threat=threat, targets=targets, generator=gen(3))
    assert torch.equal(fab_t.x_adv, fab.x_adv) and fab.success.any()
    assert torch.equal(fab_t.predictions[fab_t.success], targets[fab_t.success])


def test_fab_t_with_unbounded_eps_stops_at_the_first_adversarial_round():
    model, x, y = net_case()
    result = FABT(steps=4)(model, x, y, threat=L2(eps=math.inf, bounds=(0.0, 1.0)))
    for i in range(len(x)):
        best, winner = reference_fab_t(model, x[i], int(y[i]), "L2", math.inf, steps=4, bounds=(0.0, 1.0))
        assert int(result.extras["target"][i]) == winner
        torch.testing.assert_close(result.x_adv[i], best.x, rtol=1e-9, atol=1e-12)


# --- linear models: the first step in closed form ----------------------------------------------------


# Class 0 wins at the origin, logits (0, -0.2, -0.1, -0.13). Distance to the boundary with class k
# is |f_k| / ||w_k||_dual: class 1, w = (1, 0, 0): 0.2 in every norm; class 2, w = (0.3, 0.3, 0.3):
# 0.192 (L2), 0.111 (L∞, dual L1), 0.333 (L1, dual L∞); class 3, w = (0.5, 0.5, 0): 0.184 (L2),
# 0.13 (L∞), 0.26 (L1). The nearest: class 3 for L2, class 2 for L∞, class 1 for L1.
FOUR = linear_model([[0, 0, 0], [1, 0, 0], [0.3, 0.3, 0.3], [0.5, 0.5, 0]], [0, -0.2, -0.1, -0.13])
ORIGIN, LABEL = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)


@pytest.mark.parametrize(
    "norm,step",
    [("L2", [0.13, 0.13, 0.0]), ("Linf", [1 / 9, 1 / 9, 1 / 9]), ("L1", [0.2, 0.0, 0.0])],
)
def test_the_first_step_goes_to_the_nearest_boundary_in_the_dual_norm(norm, step):
    # From x, d_k = d_0 (alpha plays no role): x_1 = x + eta * d, d the projection onto the nearest
    # linearised boundary (L2 along w, L∞ along sign(w), L1 on the largest |w_i|).
    result = FAB(steps=1, eta=1.2)(FOUR, ORIGIN, LABEL, threat=NORMS[norm](eps=math.inf, bounds=FAR))
    torch.testing.assert_close(result.x_adv, 1.2 * torch.tensor([step], dtype=torch.float64))
    assert result.success.all()


def test_targeted_fab_attacks_a_misclassified_sample_until_its_target_wins():
    # Both points are the origin, classified 0, given the label 1: untargeted they would count as
    # broken already; targeted, the one with target 3 is attacked (g = Z_3 - Z_0, the strongest
    # other class: one L2 step eta (0.13, 0.13, 0)), the one with target 0 is at its target.
    x = torch.zeros(2, 3, dtype=torch.float64)
    y, targets = torch.ones(2, dtype=torch.int64), torch.tensor([3, 0])
    result = FAB(steps=1, eta=1.2)(FOUR, x, y, threat=L2(eps=math.inf, bounds=FAR), targets=targets)
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.156, 0.156, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert result.success.tolist() == [True, True]
    assert result.extras["best_distance"][1].item() == 0.0


def test_fab_t_linearises_the_target_against_the_label():
    # FAB-T's first round targets class 2 (the highest wrong clean logit, -0.1), along
    # Z_2 - Z_0 = <(0.3, 0.3, 0.3), x> - 0.1, though class 3's boundary is nearer in L2.
    result = FABT(steps=1, eta=1.2, n_target_classes=1)(FOUR, ORIGIN, LABEL, threat=L2(eps=math.inf, bounds=FAR))
    torch.testing.assert_close(result.x_adv, 1.2 * torch.tensor([[1 / 9, 1 / 9, 1 / 9]], dtype=torch.float64))
    assert result.extras["target"].tolist() == [2]


# --- restarts -------------------------------------------------------------------------------------


def restart_start(model, x, y, threat, steps=3, seed=0):
    """Where the second restart starts: the first point queried that a one-restart run (the same
    first restart, deterministic from ``x``) does not query. Two-class models: the boundary is
    queried once per sample, at the start."""
    once, twice = InputRecorder(model), InputRecorder(model)
    first = FAB(steps=steps)(once, x, y, threat=threat)
    FAB(steps=steps, restarts=2)(twice, x, y, threat=threat, generator=gen(seed))
    new = [q for q in twice.inputs if not any(q.shape == p.shape and torch.equal(q, p) for p in once.inputs)]
    assert new[0].shape == x.shape
    return new[0], first.extras["best_distance"]


def net_restart_start(norm, eps):
    model = tanh_net(0, k=2)
    x = unit_box_inputs()
    with torch.no_grad():
        y = model(x).argmax(1)
    start, best = restart_start(model, x, y, NORMS[norm](eps=eps, bounds=FAR))
    return x, start, best


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_restarts_start_at_half_the_best_distance(norm):
    # r = min(best distance so far, eps) / 2 around x; eps unbounded: capped at the reference's
    # default (0.3, 1, 5) times the box width, here 20: far above the distances found, but where
    # the first restart found nothing (best = inf) the cap is the radius.
    x, start, best = net_restart_start(norm, math.inf)
    assert best.isfinite().any()
    cap = {"Linf": 0.3, "L2": 1.0, "L1": 5.0}[norm] * 20
    torch.testing.assert_close(torch.linalg.vector_norm(start - x, ord=ORDER[norm], dim=1), best.clamp_max(cap) / 2)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.02), ("L2", 0.05), ("L1", 0.1)])
def test_restarts_start_within_half_eps(norm, eps):
    x, start, best = net_restart_start(norm, eps)
    assert (best > eps).all()
    torch.testing.assert_close(torch.linalg.vector_norm(start - x, ord=ORDER[norm], dim=1),
                               torch.full_like(best, eps / 2))


@pytest.mark.parametrize("norm,radius", [("Linf", 0.3 * 2 / 2), ("L2", 1.0 * 2 / 2)])
def test_unbounded_restarts_are_capped_at_the_reference_radius(norm, radius):
    # Two classes, Z_1 - Z_0 = sum(x) - 12.8 in [-1, 1]^16: from 0 the boundary is 0.8 away in L∞
    # and 3.2 in L2, beyond the cap (0.3 resp. 1 times the box width 2), so the radius is cap / 2.
    model = linear_model([[0.0] * 16, [1.0] * 16], [0, -12.8])
    x, y = torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    start, best = restart_start(model, x, y, NORMS[norm](eps=math.inf, bounds=(-1.0, 1.0)), steps=1)
    assert (best > 2 * radius).all()
    torch.testing.assert_close(torch.linalg.vector_norm(start, ord=ORDER[norm], dim=1),
                               torch.full((2,), radius, dtype=torch.float64))


def test_restart_directions_are_uniform_for_linf_and_gaussian_for_l2_and_l1():
    # The reference code's draws: L∞ uniform in [-1, 1]^D scaled to max-norm 1 (about 10% of the
    # coordinates above 0.9; few for a scaled Gaussian), L2 and L1 Gaussian (the largest of 400
    # coordinates near 3 standard deviations; uniform ones stay below sqrt(3)).
    d = 400
    model = linear_model([[0.0] * d, [1.0] * d], [0, -20.0])
    x, y = torch.zeros(2, d, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    for norm in ("Linf", "L2", "L1"):
        u, _ = restart_start(model, x, y, NORMS[norm](eps=math.inf, bounds=FAR), steps=1)
        assert 0.4 <= float((u > 0).double().mean()) <= 0.6, norm  # symmetric
        peak = u.abs().amax(dim=1) / u.pow(2).mean(dim=1).sqrt()
        if norm == "Linf":
            assert ((u.abs() / u.abs().amax(dim=1, keepdim=True) > 0.9).double().mean(dim=1) > 0.06).all()
            assert (peak < 1.8).all()
        else:
            assert (peak > 2.3).all(), (norm, peak)


def test_restarts_are_drawn_from_the_generator():
    model, x, y = net_case()
    threat = L2(eps=math.inf, bounds=(0.0, 1.0))
    for attack in (FAB(steps=3, restarts=3), FABT(steps=3, restarts=3, n_target_classes=2)):
        a, b, c = (attack(model, x, y, threat=threat, generator=gen(s)) for s in (5, 5, 6))
        assert torch.equal(a.x_adv, b.x_adv)
        assert not torch.equal(a.x_adv, c.x_adv)


def test_a_targeted_sample_short_of_its_target_keeps_the_iterate_closest_to_it():
    # Target 1 from the origin (label 0): the box stops the step at x_0 = 0.05, short of the
    # boundary Z_1 = Z_0 at 0.2. The iterate's targeted margin max_{j != 1} Z_j - Z_1 = 0.15 is
    # below the clean point's 0.2, so it is returned (the untargeted clean margin, 0.1, is not the
    # one to compare with).
    result = FAB(steps=1)(FOUR, ORIGIN, LABEL, threat=L2(eps=math.inf, bounds=(-1.0, 0.05)), targets=torch.tensor([1]))
    assert not result.success.any()
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.05, 0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    "options,message",
    [({"steps": 0}, "steps must be a positive integer"), ({"restarts": 0}, "restarts must be a positive integer")],
)
def test_bad_counts_are_named_in_the_error(options, message):
    with pytest.raises(RobustlabError, match=f"^{message}"):
        FAB(**options)


def test_the_ends_of_the_hyperparameter_ranges_are_valid():
    # alpha_max in [0, 1] (0: no bias towards x; 1: no cap), eta >= 1 (1: no overshoot).
    for options in ({"alpha_max": 0.0}, {"alpha_max": 1.0}, {"eta": 1.0}):
        FAB(**options)
        FABT(**options)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_restarts_stay_in_the_box_and_in_the_dtype_of_x(norm):
    # Every point queried lies in the box, the random starts included (x on the faces of [0, 1]);
    # a half-precision model gets half-precision restarts (draws in x's dtype).
    model, x, y = net_case()
    recorder = InputRecorder(model)
    FAB(steps=2, restarts=3)(recorder, x, y, threat=NORMS[norm](eps=math.inf, bounds=(0.0, 1.0)), generator=gen())
    assert all(((q >= 0) & (q <= 1)).all() for q in recorder.inputs)
    half = linear_model([[0.0] * 4, [1.0] * 4], [0, -1.0]).half()
    x, y = torch.zeros(2, 4, dtype=torch.float16), torch.zeros(2, dtype=torch.int64)
    result = FAB(steps=2, restarts=2)(half, x, y, threat=NORMS[norm](eps=math.inf, bounds=(-1.0, 1.0)), generator=gen())
    assert result.x_adv.dtype == torch.float16 and result.success.all()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_starts_come_from_the_given_generator(norm):
    # The restarts' random starts (uniform in the L∞ ball, Gaussian directions in L2) are drawn from the call's
    # generator only: the same generator gives the same result whatever the global RNG's state.
    model, x, y = net_case()
    threat = NORMS[norm](eps=math.inf)
    attack = FAB(steps=2, restarts=4)
    results = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        results.append(attack(model, x, y, threat=threat, generator=gen(7)))
    assert torch.equal(results[0].x_adv, results[1].x_adv)
    other = attack(model, x, y, threat=threat, generator=gen(8))
    assert not torch.equal(other.x_adv, results[0].x_adv)  # the restarts do draw from it
