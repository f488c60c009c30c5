"""Threat models: projection (exact, checked against an independent solver), random starts,
steepest-ascent directions, distances and validation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from robustlab.errors import RobustlabError
from robustlab.threat import L0, L1, L2, NORMS, Linf, ThreatModel, threat_model

# A radius per norm that binds for the far-away points used below ([N, 3, 5, 5] inputs).
EPS = {"Linf": 0.1, "L2": 0.5, "L1": 2.0, "L0": 5}
CONTINUOUS = ["Linf", "L2", "L1"]


def make(norm: str, eps: float | None = None, bounds=(0.0, 1.0)) -> ThreatModel:
    return NORMS[norm](eps=EPS[norm] if eps is None else eps, bounds=bounds)


# Small tensors throughout: one thread is as fast, and robust to a busy machine (see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(seed: int = 0, shape=(8, 3, 5, 5), dtype=torch.float64) -> torch.Tensor:
    """Random inputs in [0, 1] with some coordinates exactly on the box edges."""
    g = gen(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    edge = torch.rand(shape, generator=g, dtype=dtype)
    x = torch.where(edge < 0.1, torch.zeros_like(x), x)
    return torch.where(edge > 0.9, torch.ones_like(x), x)


def far_points(x: torch.Tensor, seed: int = 1, scale: float = 3.0) -> torch.Tensor:
    return x + scale * torch.randn(x.shape, generator=gen(seed), dtype=x.dtype)


def flat_norm(t: torch.Tensor, ord: float) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), ord=ord, dim=1)


# --- projection: generic properties ----------------------------------------------------------


@pytest.mark.parametrize("norm", list(NORMS))
def test_project_lands_inside(norm):
    threat = make(norm)
    x = batch()
    p = threat.project(x, far_points(x))
    assert threat.contains(x, p).all()
    assert (p >= 0).all() and (p <= 1).all()
    # The far points are outside, so the ball must actually bind.
    assert (threat.distance(x, far_points(x)) > threat.eps).all()


@pytest.mark.parametrize("norm", list(NORMS))
def test_project_is_idempotent(norm):
    threat = make(norm)
    x = batch(2)
    p = threat.project(x, far_points(x, 3))
    torch.testing.assert_close(threat.project(x, p), p, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", list(NORMS))
def test_project_leaves_inside_points_unchanged(norm):
    threat = make(norm)
    x = batch(4)
    # Points inside by construction: half-way from x to a projected point (the set is star-shaped
    # around x), and random starts.
    inside = [x + 0.5 * (threat.project(x, far_points(x, 5)) - x), threat.random_init(x, gen(6)), x.clone()]
    for point in inside:
        assert threat.contains(x, point).all()
        torch.testing.assert_close(threat.project(x, point), point, atol=1e-7, rtol=0)


@pytest.mark.parametrize("norm", list(NORMS))
def test_project_unbounded_eps_only_clips_to_box(norm):
    threat = make(norm, eps=math.inf)
    x = batch(7)
    v = far_points(x, 8)
    torch.testing.assert_close(threat.project(x, v), v.clamp(0, 1))


@pytest.mark.parametrize("norm", list(NORMS))
def test_project_respects_other_bounds(norm):
    threat = make(norm, bounds=(-2.0, 3.0))
    x = batch(9) * 5 - 2
    p = threat.project(x, far_points(x, 10, scale=10))
    assert threat.contains(x, p).all()
    assert (p >= -2).all() and (p <= 3).all()
    # The declared bounds are used, not [0, 1]: projections of points near x leave [0, 1].
    assert (p < 0).any() and (p > 1).any()


def test_linf_box_is_the_ball_intersected_with_the_input_box_and_the_others_have_none():
    threat = Linf(eps=0.25, bounds=(-1.0, 2.0))
    x = torch.tensor([[-1.0, -0.9, 0.5, 1.9, 2.0]], dtype=torch.float64)
    lower, upper = threat.box(x)
    assert lower.tolist() == [[-1.0, -1.0, 0.25, 1.65, 1.75]] and upper.tolist() == [[-0.75, -0.65, 0.75, 2.0, 2.0]]
    v = x + torch.tensor([[-3.0, 0.2, -0.1, 0.3, -0.5]], dtype=torch.float64)
    assert torch.equal(threat.project(x, v), torch.minimum(torch.maximum(v, lower), upper))
    assert threat.project(x, v).tolist() == [[-1.0, -0.7, 0.4, 2.0, 1.75]]
    for norm in ("L2", "L1", "L0"):
        assert make(norm).box(x) is None


@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_operations_accept_an_empty_batch(norm):
    threat = make(norm)
    x = torch.empty(0, 3, 5, 5)
    assert threat.project(x, x).shape == x.shape
    assert threat.distance(x, x).shape == (0,)
    assert threat.contains(x, x).shape == (0,)
    assert threat.random_init(x, gen(0)).shape == x.shape
    assert threat.steepest_direction(x, x).shape == x.shape


@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_operations_accept_inputs_without_features(norm):
    threat = make(norm)
    x = torch.empty(2, 0)
    assert threat.project(x, x).shape == x.shape
    assert threat.distance(x, x).tolist() == [0.0, 0.0]
    assert threat.contains(x, x).tolist() == [True, True]


# --- projection: exactness against an independent, certified oracle -----------------------------------


def _reference_projection(norm: str, x: np.ndarray, v: np.ndarray, eps: float, lo: float, hi: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{z : ||z - x|| <= eps, lo <= z <= hi}``, with a certificate.

    The oracle depends on no solver's convergence. For L2 and L1 the Lagrangian dual
    ``g(mu) = min over the box of 0.5 ||z - v||^2 + mu (||z - x|| - eps)`` is separable, with the
    closed-form minimiser ``z(mu)`` below; ``||z(mu) - x||`` falls monotonically with ``mu``, so a
    bracketing root finder (brentq, which always converges) finds the multiplier. Any ``mu >= 0``
    gives a lower bound on the optimum (weak duality), and the objective is 1-strongly convex, so
    ``||z - z*||^2 <= 2 (f(z) - g(mu))`` for every feasible ``z``: the asserted duality gap
    certifies the returned point. For L-inf the set is a box and the projection is a clip."""
    if norm == "Linf":
        return np.clip(v, np.maximum(lo, x - eps), np.minimum(hi, x + eps))
    ord = {"L2": 2, "L1": 1}[norm]

    def z_at(mu: float) -> np.ndarray:
        r = v - x
        if norm == "L2":  # argmin 0.5 (z - v)^2 + mu/2 (z - x)^2 on [lo, hi]
            return np.clip(x + r / (1 + mu), lo, hi)
        return np.clip(x + np.sign(r) * np.maximum(np.abs(r) - mu, 0.0), lo, hi)  # + mu |z - x|

    def excess(mu: float) -> float:
        return float(np.linalg.norm(z_at(mu) - x, ord=ord)) - eps

    mu = 0.0
    if excess(0.0) > 0:
        mu_hi = 1.0
        while excess(mu_hi) > 0:
            mu_hi *= 2
        mu = brentq(excess, 0.0, mu_hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    z = z_at(mu)
    if excess(mu) > 0:  # brentq's root may sit a hair outside the ball; shrink onto it
        z = x + (z - x) * eps / np.linalg.norm(z - x, ord=ord)
    lagrangian_term = 0.5 * mu * (np.linalg.norm(z_at(mu) - x) ** 2 - eps**2) if norm == "L2" else mu * excess(mu)
    dual = 0.5 * np.sum((z_at(mu) - v) ** 2) + lagrangian_term
    primal = 0.5 * np.sum((z - v) ** 2)
    assert primal - dual <= 1e-10, (primal, dual)  # the certificate: z is within 1.5e-5 of z*
    return z


def _feasible(norm, x, z, eps, lo, hi, tol=1e-12):
    ord = {"Linf": np.inf, "L2": 2, "L1": 1}[norm]
    dist = np.linalg.norm((z - x).reshape(z.shape[0], -1), ord=ord, axis=1)
    return (dist <= eps + tol) & (z >= lo - tol).all(axis=1) & (z <= hi + tol).all(axis=1)


def _random_feasible(norm, x, eps, lo, hi, rng, n):
    """Feasible points sampled independently of the library: in the ball, then clipped to the box
    (clipping towards a box that contains x never leaves the ball)."""
    d = x.size
    if norm == "Linf":
        delta = rng.uniform(-eps, eps, size=(n, d))
    elif norm == "L2":
        direction = rng.normal(size=(n, d))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        delta = direction * eps * rng.uniform(0, 1, size=(n, 1)) ** (1 / d)
    else:
        delta = rng.laplace(size=(n, d))
        delta *= eps * rng.uniform(0, 1, size=(n, 1)) / np.abs(delta).sum(axis=1, keepdims=True)
    return np.clip(x + delta, lo, hi)


@pytest.mark.parametrize("norm", CONTINUOUS)
@pytest.mark.parametrize("seed", range(5))
def test_project_is_the_exact_euclidean_projection(norm, seed):
    rng = np.random.default_rng(seed)
    d = 6 + seed % 5
    lo, hi = (0.0, 1.0) if seed % 2 == 0 else (-1.0, 2.0)
    eps = {"Linf": 0.15, "L2": 0.6, "L1": 1.0}[norm]
    x = rng.uniform(lo, hi, size=d)
    x[0], x[1] = lo, hi  # inputs on the box edges
    v = x + rng.normal(scale=2.0, size=d)
    threat = NORMS[norm](eps=eps, bounds=(lo, hi))

    proj = threat.project(torch.tensor(x)[None], torch.tensor(v)[None])[0].numpy()
    ref = _reference_projection(norm, x, v, eps, lo, hi)
    assert _feasible(norm, x, proj[None], eps, lo, hi, tol=1e-9).all()
    assert _feasible(norm, x, ref[None], eps, lo, hi, tol=1e-6).all()
    assert np.linalg.norm(proj - v) == pytest.approx(np.linalg.norm(ref - v), abs=1e-4)
    np.testing.assert_allclose(proj, ref, atol=2e-3)

    # No feasible point is closer: random ones, and small perturbations of the projection.
    best = np.linalg.norm(proj - v)
    samples = _random_feasible(norm, x, eps, lo, hi, rng, 4000)
    nearby = proj + rng.normal(scale=1e-3, size=(4000, d)) * (rng.uniform(size=(4000, d)) < 0.5)
    nearby = nearby[_feasible(norm, x, nearby, eps, lo, hi)]
    for points in (samples, nearby):
        assert (np.linalg.norm(points - v, axis=1) >= best - 1e-9).all()


@pytest.mark.parametrize("norm", CONTINUOUS)
def test_project_exact_when_only_the_box_binds(norm):
    # v is within eps of x but outside the box: the projection is the plain box clip.
    threat = NORMS[norm](eps=10.0)
    x = torch.tensor([[0.0, 0.5, 1.0, 0.2]], dtype=torch.float64)
    v = torch.tensor([[-0.3, 0.6, 1.4, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(threat.project(x, v), v.clamp(0, 1))


def _l0_brute_force(x: torch.Tensor, v: torch.Tensor, k: int) -> float:
    """Smallest ||z - v||_2 over all z in the box that differ from x in at most k pixels.

    For a fixed set of changed pixels the best z takes clip(v) there and x elsewhere."""
    pixels = x.shape[2] * x.shape[3] if x.dim() == 4 else x[0].numel()
    clipped = v.clamp(0, 1)
    best = math.inf
    for size in range(k + 1):
        for subset in itertools.combinations(range(pixels), size):
            mask = torch.zeros(pixels, dtype=torch.bool)
            mask[list(subset)] = True
            mask = mask.reshape(1, 1, *x.shape[2:]) if x.dim() == 4 else mask.reshape(x.shape)
            z = torch.where(mask, clipped, x)
            best = min(best, float((z - v).norm()))
    return best


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(1, 2, 2, 3), (1, 7)], ids=["image", "flat"])
def test_l0_project_is_exact_by_brute_force(shape, seed, k):
    g = gen(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    # A mix of in-box targets and far-out ones, so that clipping matters for the ranking.
    v = x + torch.randn(shape, generator=g, dtype=torch.float64) * torch.where(
        torch.rand(shape, generator=g) < 0.5, 0.3, 3.0
    ).double()
    threat = L0(eps=k)
    proj = threat.project(x, v)
    assert threat.distance(x, proj).item() <= k
    assert float((proj - v).norm()) == pytest.approx(_l0_brute_force(x, v, k), abs=1e-9)


def test_l0_project_ranks_pixels_by_saving_not_by_clipped_change():
    # Changing pixel 0 to 0.8 saves 0.64; changing pixel 1 (clipped from 5 to 1) saves
    # 4.1**2 - 4**2 = 0.81, even though its clipped change (0.1) is the smaller one.
    x = torch.tensor([[0.0, 0.9]])
    v = torch.tensor([[0.8, 5.0]])
    torch.testing.assert_close(L0(eps=1).project(x, v), torch.tensor([[0.0, 1.0]]))


def test_l0_project_moves_whole_pixels():
    x = torch.full((1, 3, 4, 4), 0.5)
    v = x.clone()
    v[0, 0, 1, 1] = 0.9  # one channel of pixel (1, 1)
    v[0, :, 2, 3] = 0.0  # all channels of pixel (2, 3): the larger change
    v[0, 2, 0, 0] = 0.45
    p = L0(eps=1).project(x, v)
    expected = x.clone()
    expected[0, :, 2, 3] = 0.0
    torch.testing.assert_close(p, expected)


# --- random_init ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", list(NORMS))
def test_random_init_is_inside_and_moves_every_sample(norm):
    threat = make(norm)
    x = batch(11, dtype=torch.float32)
    r = threat.random_init(x, gen(0))
    assert r.shape == x.shape and r.dtype == x.dtype
    assert threat.contains(x, r).all()
    assert ((r - x).flatten(1).abs() > 0).any(dim=1).all()


@pytest.mark.parametrize("norm", list(NORMS))
def test_random_init_is_reproducible_with_a_generator(norm):
    threat = make(norm)
    x = batch(12, dtype=torch.float32)
    a = threat.random_init(x, gen(3))
    torch.testing.assert_close(threat.random_init(x, gen(3)), a, atol=0, rtol=0)
    assert not torch.equal(threat.random_init(x, gen(4)), a)


@pytest.mark.parametrize("norm", list(NORMS))
def test_random_init_does_not_touch_the_global_rng(norm):
    state = torch.get_rng_state()
    make(norm).random_init(batch(13, dtype=torch.float32), gen(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_linf_random_init_covers_the_ball():
    threat = Linf(eps=0.3)
    x = torch.full((64, 3, 4, 4), 0.5)
    delta = threat.random_init(x, gen(0)) - x
    assert delta.min() < -0.29 and delta.max() > 0.29
    # Uniform on [-eps, eps]: mean 0, mean |delta| = eps / 2.
    assert abs(float(delta.mean())) < 0.01
    assert float(delta.abs().mean()) == pytest.approx(0.15, abs=0.01)


def test_linf_random_init_where_the_box_binds():
    threat = Linf(eps=0.3)
    x = torch.zeros(64, 1, 4, 4)
    delta = threat.random_init(x, gen(0)) - x
    assert (delta >= 0).all() and delta.max() > 0.29
    assert float((delta > 0).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_l2_random_init_is_uniform_in_the_ball():
    threat = L2(eps=0.5)
    x = torch.full((4000, 1, 1, 2), 0.5)  # 2-D, so the ball is a disc and nothing is clipped
    delta = (threat.random_init(x, gen(0)) - x).flatten(1)
    radius = delta.norm(dim=1)
    assert (radius <= 0.5 + 1e-6).all() and radius.max() > 0.49
    # Uniform in a disc: P(r <= eps / 2) = 1/4; the mean is at the centre.
    assert float((radius <= 0.25).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert delta.mean(dim=0).abs().max() < 0.02
    # All directions: every quadrant gets about a quarter.
    quadrant = (delta[:, 0] > 0).long() * 2 + (delta[:, 1] > 0).long()
    assert (torch.bincount(quadrant, minlength=4) > 800).all()


def test_l1_random_init_is_uniform_in_the_ball():
    threat = L1(eps=0.4)
    x = torch.full((4000, 2), 0.5)  # 2-D: a diamond, nothing clipped
    delta = threat.random_init(x, gen(0)) - x
    l1 = delta.abs().sum(dim=1)
    assert (l1 <= 0.4 + 1e-6).all() and l1.max() > 0.39
    # Uniform in a 2-D L1 ball: P(||delta||_1 <= eps / 2) = 1/4.
    assert float((l1 <= 0.2).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert delta.mean(dim=0).abs().max() < 0.02
    quadrant = (delta[:, 0] > 0).long() * 2 + (delta[:, 1] > 0).long()
    assert (torch.bincount(quadrant, minlength=4) > 800).all()


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (6, 1)], ids=["one-sample", "one-feature"])
def test_random_init_moves_a_single_sample_and_a_single_feature(norm, shape):
    x = torch.full(shape, 0.5)
    r = make(norm).random_init(x, gen(0))
    assert ((r - x).flatten(1).abs() > 0).any(dim=1).all()


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_random_init_draws_in_the_dtype_and_on_the_device_of_x(norm, dtype):
    # float16 noise drawn in float32 would come back as float32; noise drawn on the default
    # device would not be on x's (the "meta" device shows it without an accelerator).
    threat = make(norm)
    assert threat.random_init(torch.full((3, 3, 4, 4), 0.5, dtype=dtype), gen(0)).dtype == dtype
    assert threat.random_init(torch.empty(2, 3, 4, 4, device="meta")).device.type == "meta"


@pytest.mark.parametrize("norm", list(NORMS))
def test_unbounded_random_init_spreads_over_the_whole_box(norm):
    # eps = inf: the start may be anywhere in the box (here [-1, 1], not [0, 1]); the radius is
    # capped at the box's own diameter in the norm, not at less.
    threat = NORMS[norm](eps=math.inf, bounds=(-1.0, 1.0))
    x = torch.zeros(64, 3, 4, 4)
    r = threat.random_init(x, gen(0))
    assert threat.contains(x, r).all()
    assert (r < -0.5).float().mean() > 0.1 and (r > 0.5).float().mean() > 0.1
    if norm == "L0":  # every pixel redrawn uniformly in the box
        assert abs(float(r.mean())) < 0.05
        assert float(r.abs().mean()) == pytest.approx(0.5, abs=0.05)


def test_l2_random_init_is_uniform_in_a_ball_of_all_features():
    # The dimension is every feature (channels included): uniform in a 3-ball, P(r <= eps/2) = 1/8.
    threat = L2(eps=0.3)
    x = torch.full((3000, 3, 1, 1), 0.5)
    radius = (threat.random_init(x, gen(0)) - x).flatten(1).norm(dim=1)
    assert (radius <= 0.3 + 1e-6).all()
    assert float((radius <= 0.15).float().mean()) == pytest.approx(1 / 8, abs=0.03)


def test_l0_random_init_changes_eps_pixels():
    threat = L0(eps=4)
    x = torch.full((16, 3, 5, 5), 0.5)
    r = threat.random_init(x, gen(0))
    assert (threat.distance(x, r) == 4).all()
    assert (r >= 0).all() and (r <= 1).all()


# --- steepest_direction -----------------------------------------------------------------------


def _random_unit(shape, ord, g):
    d = torch.randn(shape, generator=g, dtype=torch.float64)
    if ord == math.inf:
        return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1  # inside the unit Linf ball
    return d / torch.linalg.vector_norm(d.flatten(1), ord=ord, dim=1).reshape(-1, *[1] * (d.dim() - 1))


@pytest.mark.parametrize(
    "threat,dual_ord,unit_ord",
    [(Linf(eps=0.1), 1, math.inf), (L2(eps=0.5), 2, 2), (L1(eps=1.0, sparsity_quantile=1.0), math.inf, 1)],
    ids=["Linf", "L2", "L1-exact"],
)
def test_steepest_direction_is_the_steepest_unit_direction(threat, dual_ord, unit_ord):
    g = gen(0)
    grad = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    d = threat.steepest_direction(grad)
    torch.testing.assert_close(flat_norm(d, unit_ord), torch.ones(6, dtype=torch.float64))
    gain = (grad * d).flatten(1).sum(dim=1)
    # <g, d> equals the dual norm of g, the maximum over the unit ball ...
    torch.testing.assert_close(gain, flat_norm(grad, dual_ord))
    # ... and no random unit direction does better.
    for _ in range(20):
        other = _random_unit(grad.shape, unit_ord, g)
        assert ((grad * other).flatten(1).sum(dim=1) <= gain + 1e-9).all()


def test_linf_steepest_direction_is_the_sign():
    grad = torch.tensor([[0.3, -2.0, 0.0, 1e-8]])
    torch.testing.assert_close(Linf(eps=0.1).steepest_direction(grad), torch.tensor([[1.0, -1.0, 0.0, 1.0]]))


def test_l1_exact_steepest_direction_is_one_coordinate():
    grad = torch.tensor([[0.3, -2.0, 0.5, 1.0]])
    d = L1(eps=1.0, sparsity_quantile=1.0).steepest_direction(grad)
    torch.testing.assert_close(d, torch.tensor([[0.0, -1.0, 0.0, 0.0]]))


def test_l1_sparse_direction_uses_the_top_coordinates():
    threat = L1(eps=1.0)  # sparsity_quantile 0.99: the top 1% of 1000 coordinates
    grad = torch.randn(3, 1000, generator=gen(0), dtype=torch.float64)
    d = threat.steepest_direction(grad)
    torch.testing.assert_close(d.abs().sum(dim=1), torch.ones(3, dtype=torch.float64))
    top = grad.abs().topk(10, dim=1).indices
    expected = torch.zeros_like(grad).scatter(1, top, grad.gather(1, top).sign() / 10)
    torch.testing.assert_close(d, expected)


def test_l1_direction_skips_coordinates_stuck_at_the_box_edge():
    threat = L1(eps=1.0, sparsity_quantile=1.0)
    grad = torch.tensor([[5.0, -4.0, 3.0, 0.1]])
    x_adv = torch.tensor([[1.0, 0.0, 0.5, 0.5]])  # coordinates 0 and 1 cannot move along the gradient
    torch.testing.assert_close(threat.steepest_direction(grad, x_adv), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    # Without x_adv nothing is skipped.
    torch.testing.assert_close(threat.steepest_direction(grad), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_l1_direction_at_the_box_edge_with_small_gradients():
    # Top 2 of 4 coordinates. Row 0: coordinates on the edges whose gradient points back into the
    # box are free. Row 1: a coordinate on the upper edge with a small ascent gradient is stuck.
    # Row 2: fewer non-zero coordinates than the top 2; the direction keeps unit L1 norm.
    threat = L1(eps=1.0, sparsity_quantile=0.5)
    grad = torch.tensor([[0.3, -0.2, 0.05, -0.01], [0.3, -0.2, 0.05, 0.4], [0.0, -0.7, 0.0, 0.0]])
    x_adv = torch.tensor([[0.0, 1.0, 0.5, 0.5], [0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5]])
    expected = torch.tensor([[0.5, -0.5, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(threat.steepest_direction(grad, x_adv), expected)
    # One feature: its sign.
    torch.testing.assert_close(threat.steepest_direction(torch.tensor([[0.3], [-0.2]])), torch.tensor([[1.0], [-1.0]]))


def test_l1_sparsity_quantile_zero_uses_every_coordinate():
    grad = torch.tensor([[0.3, -2.0, 0.5, 1.0]])
    d = L1(eps=1.0, sparsity_quantile=0.0).steepest_direction(grad)
    torch.testing.assert_close(d, torch.tensor([[0.25, -0.25, 0.25, 0.25]]))


def test_l1_project_treats_each_sample_alone():
    threat = L1(eps=1.0)
    x = batch(30, shape=(5, 2, 3, 3))
    v = far_points(x, seed=31, scale=torch.tensor([0.02, 0.5, 1.0, 3.0, 0.05]).view(-1, 1, 1, 1).double())
    together = threat.project(x, v)
    alone = torch.cat([threat.project(x[i:i + 1], v[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_l0_steepest_direction_on_flat_inputs_and_single_pixels():
    threat = L0(eps=1)
    grad = torch.tensor([[0.3, -2.0, 0.5], [0.1, 0.0, -0.2]])
    torch.testing.assert_close(threat.steepest_direction(grad), torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]))
    one = torch.tensor([[0.3], [-0.2]])
    torch.testing.assert_close(threat.steepest_direction(one), torch.tensor([[1.0], [-1.0]]))


def test_l0_steepest_direction_moves_the_strongest_pixel():
    grad = torch.zeros(1, 3, 2, 2)
    grad[0, :, 1, 0] = torch.tensor([0.5, -3.0, 0.1])
    grad[0, 0, 0, 1] = 2.0
    d = L0(eps=1).steepest_direction(grad)
    expected = torch.zeros_like(grad)
    expected[0, :, 1, 0] = torch.tensor([1.0, -1.0, 1.0])
    torch.testing.assert_close(d, expected)
    assert L0(eps=1).distance(torch.zeros_like(d), d).item() == 1


# --- distance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,ord", [("Linf", math.inf), ("L2", 2), ("L1", 1)])
def test_distance_matches_torch_norms(norm, ord):
    x = batch(20, dtype=torch.float32)
    x_adv = batch(21, dtype=torch.float32)
    torch.testing.assert_close(make(norm).distance(x, x_adv), flat_norm(x_adv - x, ord))


def test_l0_distance_counts_pixels_not_channels():
    x = torch.zeros(2, 3, 4, 4)
    x_adv = x.clone()
    x_adv[0, :, 0, 0] = 0.5  # one pixel, all three channels
    x_adv[0, 1, 2, 3] = 0.1  # one pixel, one channel
    x_adv[1, 0, 1, 1] = 0.2
    x_adv[1, 2, 1, 1] = 0.2  # same pixel, two channels
    torch.testing.assert_close(L0(eps=5).distance(x, x_adv), torch.tensor([2.0, 1.0]))


def test_l0_distance_counts_features_for_flat_inputs():
    x = torch.zeros(1, 6)
    x_adv = torch.tensor([[0.0, 0.1, 0.0, 0.3, 0.2, 0.0]])
    torch.testing.assert_close(L0(eps=5).distance(x, x_adv), torch.tensor([3.0]))


@pytest.mark.parametrize("norm", list(NORMS))
def test_distance_is_zero_at_x(norm):
    x = batch(22, dtype=torch.float32)
    assert (make(norm).distance(x, x) == 0).all()


def test_contains_rejects_points_outside_the_ball_or_the_box():
    threat = L2(eps=0.5)
    x = torch.full((4, 4), 0.25)
    x[2, 0] = 0.0
    x_adv = x.clone()
    x_adv[0, 0] += 0.5  # on the sphere
    x_adv[1, 0] += 0.51  # outside the ball, inside the box
    x_adv[2, 0] = -0.01  # inside the ball, outside the box (below)
    x_adv[3, 1] = 0.0
    x_adv[3, 0] = 0.0  # both moves 0.25: distance 0.354, inside both
    assert threat.contains(x, x_adv).tolist() == [True, False, False, True]
    above = torch.full((1, 4), 0.9)
    assert not threat.contains(above, above + torch.tensor([[0.11, 0.0, 0.0, 0.0]])).item()  # above the box
    # The tolerance is relative to eps, not a factor of it.
    assert not threat.contains(x[:1], x[:1] + torch.tensor([[0.6, 0.0, 0.0, 0.0]])).item()


def test_contains_keeps_float64_precision_and_rounds_half_precision_outward():
    # 0.6 - 0.5 = 0.09999999999999998 in float64: inside with no tolerance; in float32 it would
    # be 0.10000002 > 0.1.
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    assert Linf(eps=0.1).contains(x, x + torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64), tol=0).item()
    # float16 0.6 is 0.60009765625: outside the 0.1-ball of 0.5, whatever the tolerance rounds to in float16.
    xh = torch.full((1, 3), 0.5, dtype=torch.float16)
    assert not Linf(eps=0.1).contains(xh, torch.tensor([[0.6, 0.5, 0.5]], dtype=torch.float16)).item()
    assert Linf(eps=0.1).contains(xh, torch.tensor([[0.59, 0.5, 0.5]], dtype=torch.float16)).item()


# --- validation and construction -------------------------------------------------------------


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("eps", [0, 0.0, -0.1, -math.inf, math.nan])
def test_non_positive_or_nan_eps_is_rejected(norm, eps):
    with pytest.raises(RobustlabError, match="eps"):
        NORMS[norm](eps=eps)


@pytest.mark.parametrize("eps", ["0.3", None, True, torch.tensor(0.3), [0.3]])
def test_non_number_eps_is_rejected(eps):
    with pytest.raises(RobustlabError, match="eps must be a number"):
        Linf(eps=eps)


@pytest.mark.parametrize("bounds", [(1.0, 1.0), (1.0, 0.0), (0.0, math.inf), (math.nan, 1.0)])
def test_bad_bounds_are_rejected(bounds):
    with pytest.raises(RobustlabError, match="bounds"):
        L2(eps=0.5, bounds=bounds)


@pytest.mark.parametrize("norm", list(NORMS))
def test_infinite_eps_means_unbounded(norm):
    threat = NORMS[norm](eps=math.inf)
    assert threat.unbounded and not make(norm).unbounded
    x = batch(23, dtype=torch.float32)
    assert threat.contains(x, torch.rand(x.shape, generator=gen(0))).all()


def test_threat_models_are_frozen_and_store_floats():
    threat = Linf(eps=1, bounds=(0, 255))
    assert threat.eps == 1.0 and isinstance(threat.eps, float) and threat.bounds == (0.0, 255.0)
    assert all(isinstance(b, float) for b in threat.bounds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        threat.eps = 0.5  # type: ignore[misc]


def test_with_eps_keeps_the_kind_and_the_options():
    threat = L1(eps=1.0, bounds=(-1.0, 1.0), sparsity_quantile=0.9)
    other = threat.with_eps(2.0)
    assert other == L1(eps=2.0, bounds=(-1.0, 1.0), sparsity_quantile=0.9)
    assert Linf(eps=0.1, bounds=(0.0, 2.0)).with_eps(0.2) == Linf(eps=0.2, bounds=(0.0, 2.0))


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_l1_sparsity_quantile_is_validated(q):
    assert L1(eps=1.0, sparsity_quantile=0.0).sparsity_quantile == 0.0  # the ends are valid
    assert L1(eps=1.0, sparsity_quantile=1.0).sparsity_quantile == 1.0
    with pytest.raises(RobustlabError, match="sparsity_quantile"):
        L1(eps=1.0, sparsity_quantile=q)


@pytest.mark.parametrize(
    "name,cls",
    [("linf", Linf), ("Linf", Linf), ("inf", Linf), ("L2", L2), ("l2", L2), ("L1", L1), ("l1", L1), ("L0", L0)],
)
def test_threat_model_builds_by_name(name, cls):
    threat = threat_model(name, 0.3, bounds=(-1.0, 1.0))
    assert type(threat) is cls and threat.eps == 0.3 and threat.bounds == (-1.0, 1.0)


@pytest.mark.parametrize("name", ["l3", "Lfoo", "", "linfinity"])
def test_threat_model_rejects_unknown_norms(name):
    with pytest.raises(RobustlabError, match="unknown norm"):
        threat_model(name, 0.3)


def test_threat_model_validates_eps():
    with pytest.raises(RobustlabError):
        threat_model("linf", 0)
