"""FMN and DDN pinned to their published definitions on tiny model-free cases (issue 15).

Each attack is replayed here from its paper, written independently of the library (float64,
sorting and bisection instead of the library's projections), on a fixed untrained float64 MLP,
and robustlab's iterates must equal the replay's to 1e-9:

- FMN (Pintor et al., NeurIPS 2021, Algorithm 1; ``adv_lib``'s ``fmn``): alpha and gamma
  cosine-annealed, ``eps`` shrunk by ``(1 - gamma)`` (capped by the best norm) on success and
  grown by ``(1 + gamma)`` otherwise, the linearised distance ``||delta|| + |m| / ||grad m||_dual``
  before the first success (with robustlab's documented ``max(eps, .) (1 + gamma)``), L0's integer
  rule (``min(eps - 1, floor(eps (1 - gamma)), best)``, ``max(eps + 1, floor(eps (1 + gamma)))``),
  an L2-normalised gradient step, the projection onto the ``eps``-ball of each norm, the box clip,
  and ``eps`` never above the farthest corner of the box.
- DDN (Rony et al., CVPR 2019, Algorithm 1; ``fast_adversarial``/``adv_lib``): a step of
  cosine-annealed length alpha along the normalised gradient of the cross-entropy (away from ``y``,
  towards the target), ``eps *= 1 -/+ gamma``, the perturbation rescaled to norm ``eps`` (capped at
  the farthest corner), clipped to the box and quantised to ``levels`` values.

Both keep per sample the smallest adversarial iterate, or, for a sample never adversarial, the
iterate of lowest margin. Nothing here trains a model: each test takes well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import DDN, FMN
from robustlab.attacks.fmn import cosine_schedule
from robustlab.errors import RobustlabError
from robustlab.threat import L2, NORMS
from conftest import InputRecorder

pytestmark = pytest.mark.usefixtures("single_thread")

DUAL = {"L1": math.inf, "L2": 2.0, "Linf": 1.0}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_mlp(features: int, classes: int = 3, seed: int = 0, scale: float = 1.0) -> nn.Module:
    g = gen(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 10), nn.Tanh(), nn.Linear(10, classes)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()


def case(shape: tuple[int, ...], n: int = 6, seed: int = 0, scale: float = 1.0, bounds=(0.0, 1.0)):
    """A tiny MLP, ``n`` inputs in the box and the labels it gives them (every sample clean-correct)."""
    features = math.prod(shape)
    model = tiny_mlp(features, seed=seed, scale=scale)
    lo, hi = bounds
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=gen(seed + 100), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _margin(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """``Z_y - max_{j != y} Z_j`` (untargeted) or ``max_{j != t} Z_j - Z_t``, from sorted logits."""
    s = z.sort(dim=1, descending=True).values
    cls = y if t is None else t
    own = z.gather(1, cls[:, None]).squeeze(1)
    other = torch.where(z.argmax(1) == cls, s[:, 1], s[:, 0])
    return own - other if t is None else other - own


def _adversarial(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return z.argmax(1) != y if t is None else z.argmax(1) == t


def _pixels(delta: torch.Tensor) -> torch.Tensor:
    """``[N, P]``: the largest change over the channels of each pixel (``[N, C, H, W]``), else per feature."""
    return delta.abs().amax(1).flatten(1) if delta.dim() == 4 else delta.abs().flatten(1)


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    v = delta.flatten(1)
    if norm == "L0":
        return (_pixels(delta) > 0).sum(1).double()
    return {"L1": v.abs().sum(1), "L2": v.norm(dim=1), "Linf": v.abs().amax(1)}[norm]


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """The Euclidean projection onto each sample's ``eps``-ball (L0: keep the ``eps`` largest pixels)."""
    n = delta.shape[0]
    v = delta.flatten(1)
    if norm == "Linf":
        return torch.maximum(torch.minimum(v, eps[:, None]), -eps[:, None]).view_as(delta)
    if norm == "L2":
        return (v * (eps / v.norm(dim=1)).clamp(max=1.0)[:, None]).view_as(delta)
    if norm == "L1":  # bisection on the soft threshold: sum (|v| - theta)^+ = eps
        out = v.clone()
        for i in range(n):
            if v[i].abs().sum() <= eps[i]:
                continue
            a, b = 0.0, float(v[i].abs().max())
            for _ in range(200):
                mid = (a + b) / 2
                a, b = (mid, b) if (v[i].abs() - mid).clamp(min=0).sum() > eps[i] else (a, mid)
            out[i] = v[i].sign() * (v[i].abs() - b).clamp(min=0)
        return out.view_as(delta)
    magnitude = _pixels(delta)  # L0
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for i in range(n):
        order = sorted(range(magnitude.shape[1]), key=lambda p: -float(magnitude[i, p]))
        keep[i, order[: int(eps[i])]] = True
    mask = keep.view(n, 1, *delta.shape[2:]) if delta.dim() == 4 else keep.view_as(delta)
    return delta * mask


def _corner_distance(x: torch.Tensor, bounds, norm: str) -> torch.Tensor:
    lo, hi = bounds
    return _distance(torch.maximum(x - lo, hi - x), norm)


def replay_fmn(model, x, y, t, norm, steps, *, alpha=(1.0, 0.01), gamma=(0.05, 0.001), bounds=(0.0, 1.0),
               eps_trace=None):
    """FMN from the paper (robustlab's documented eps rule before the first success): the iterates
    ``x + delta_k``, the best distance and the returned point per sample."""
    n = x.shape[0]
    lo, hi = bounds
    worst = _corner_distance(x, bounds, norm)
    delta = torch.zeros_like(x)
    eps = torch.full((n,), 1.0 if norm == "L0" else 0.0, dtype=x.dtype)
    best = torch.full((n,), math.inf, dtype=x.dtype)
    best_margin = torch.full((n,), math.inf, dtype=x.dtype)
    best_x = x.clone()
    found = torch.zeros(n, dtype=torch.bool)
    iterates = []
    for k in range(steps):
        anneal = (1 + math.cos(math.pi * k / steps)) / 2
        a = alpha[1] + (alpha[0] - alpha[1]) * anneal
        g_k = gamma[1] + (gamma[0] - gamma[1]) * anneal
        xk = (x + delta).requires_grad_()
        z = model(xk)
        m = _margin(z, y, t)
        (g,) = torch.autograd.grad(m.sum(), xk)
        xk, m, z = xk.detach(), m.detach(), z.detach()
        iterates.append(xk)
        adv = _adversarial(z, y, t)
        d = _distance(delta, norm)
        smaller = adv & (d < best)
        closer = ~found & ~adv & (m < best_margin)
        best_x = torch.where((smaller | closer).view(-1, *[1] * (x.dim() - 1)), xk, best_x)
        best = torch.where(smaller, d, best)
        best_margin = torch.where(closer, m, best_margin)
        if norm == "L0":
            shrink = torch.minimum(torch.minimum(eps - 1, torch.floor(eps * (1 - g_k))), best)
            grow = torch.maximum(eps + 1, torch.floor(eps * (1 + g_k)))
            eps = torch.where(adv, shrink, grow).clamp(min=0)
        else:
            to_boundary = d + m.abs() / torch.linalg.vector_norm(g.flatten(1), DUAL[norm], dim=1)
            grow = torch.where(found, eps, torch.maximum(eps, to_boundary)) * (1 + g_k)
            eps = torch.where(adv, torch.minimum(eps * (1 - g_k), best), grow)
        found |= adv
        eps = torch.minimum(eps, worst)
        if eps_trace is not None:
            eps_trace.append(eps)
        delta = delta - a * g / g.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        delta = _project(delta, eps, norm)
        delta = (x + delta).clamp(lo, hi) - x
    return iterates, best, best_x


def _check_fmn(norm, shape, steps, targeted=False, seed=0, scale=1.0, **options):
    model, x, y = case(shape, seed=seed, scale=scale)
    t = (y + 1) % 3 if targeted else None
    recorder = InputRecorder(model)
    result = FMN(steps=steps, **options)(recorder, x, y, threat=NORMS[norm](eps=math.inf), targets=t)
    kwargs = {}
    if "step_size" in options or "final_step_size" in options:
        a0 = options.get("step_size", 1.0)
        kwargs["alpha"] = (a0, options.get("final_step_size") or a0 / 100)
    if "gamma" in options or "final_gamma" in options:
        kwargs["gamma"] = (options.get("gamma", 0.05), options.get("final_gamma", 0.001))
    iterates, best, best_x = replay_fmn(model, x, y, t, norm, steps, **kwargs)
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)
    _check_best(result, best, best_x)
    return result


def _check_best(result, best, best_x):
    """The smallest adversarial distance per sample, and the returned point: one at that distance
    where the sample was broken (several iterates may share it to the last bit: after a success the
    next one is projected onto the sphere of the best norm), the lowest-margin iterate elsewhere."""
    torch.testing.assert_close(result.extras["best_distance"], best, rtol=1e-9, atol=1e-12)
    broken = torch.isfinite(best)
    assert torch.equal(result.success, broken)
    torch.testing.assert_close(result.distance[broken], best[broken], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.x_adv[~broken], best_x[~broken], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", ["L1", "L2", "Linf"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_fmn_iterates_follow_algorithm_1(norm, targeted):
    # 12 steps: samples are broken at different steps and cross the boundary back and forth (eps
    # shrinks, capped by the best norm, or grows by 1 + gamma), before their first success eps grows
    # from the linearised distance: every branch of the eps rule is taken.
    result = _check_fmn(norm, (8,), steps=12, targeted=targeted, scale=2.0)
    assert result.success.any()


def test_fmn_l0_iterates_follow_the_integer_eps_rule_and_count_pixels():
    # 2 channels x 36 pixels; the projection keeps both channels of a pixel together.
    result = _check_fmn("L0", (2, 6, 6), steps=40, scale=0.3)
    assert result.success.any()
    changed = (result.x_adv != case((2, 6, 6), scale=0.3)[1])
    assert (changed.sum(1) == 2).any()  # both channels of some pixel moved


class _Sum(nn.Module):
    """Two classes; class 1 wins once ``w . x > 4``, ``w`` in [0.06, 0.1] (distinct: no ties in the
    pixels' order): some 25 of 72 features must change."""

    w = 0.06 + 0.04 * torch.rand(72, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def forward(self, x):
        s = x.flatten(1) @ self.w - 4.0
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_fmn_l0_eps_moves_by_floor_of_eps_times_one_plus_or_minus_gamma():
    # With gamma 0.3 (annealed to 0.1) and some 25 pixels needed, floor(eps (1 + gamma)) and
    # floor(eps (1 - gamma)) move eps by more than one pixel, up before the first success, down after.
    x = 0.5 * torch.rand(3, 2, 6, 6, generator=gen(5), dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    recorder = InputRecorder(_Sum())
    steps = 40
    result = FMN(steps=steps, gamma=0.3, final_gamma=0.1)(recorder, x, y, threat=NORMS["L0"](eps=math.inf))
    trace = []
    iterates, best, best_x = replay_fmn(_Sum(), x, y, None, "L0", steps, gamma=(0.3, 0.1), eps_trace=trace)
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)
    _check_best(result, best, best_x)
    assert result.success.all()
    moves = torch.stack(trace).diff(dim=0)
    assert (moves > 1).any() and (moves < -1).any()


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_fmn_schedules_use_the_given_step_sizes_and_gammas(norm):
    _check_fmn(norm, (8,), steps=10, scale=2.0, step_size=0.3, final_step_size=0.05, gamma=0.2, final_gamma=0.02)


def test_fmn_without_a_success_returns_the_lowest_margin_iterate():
    # Three steps of at most 0.005: no sample is broken, each returns the iterate of lowest margin.
    result = _check_fmn("L2", (8,), steps=3, scale=2.0, step_size=0.005)
    assert not result.success.any()
    assert torch.isinf(result.extras["best_distance"]).all()
    assert (result.distance > 0).all()


def test_fmn_eps_never_exceeds_the_farthest_corner():
    # A box so narrow that the linearised distance to the boundary lies far outside it: eps is
    # capped at the corner's distance, and once the sample is broken it shrinks from there.
    model, x, y = case((8,), scale=2.0, bounds=(0.45, 0.55))
    recorder = InputRecorder(model)
    steps = 15
    FMN(steps=steps)(recorder, x, y, threat=NORMS["L2"](eps=math.inf, bounds=(0.45, 0.55)))
    iterates, _, _ = replay_fmn(model, x, y, None, "L2", steps, bounds=(0.45, 0.55))
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_cosine_schedule_is_the_published_annealing(steps):
    # alpha_k = alpha_K + (alpha_0 - alpha_K) (1 + cos(pi k / K)) / 2 (Pintor et al.; adv_lib).
    for k in range(steps + 1):
        expected = 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * k / steps)) / 2
        assert cosine_schedule(k, steps, 1.0, 0.01) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert cosine_schedule(0, steps, 1.0, 0.01) == 1.0
    assert cosine_schedule(steps, steps, 1.0, 0.01) == pytest.approx(0.01, rel=1e-12)


# --- DDN ---------------------------------------------------------------------------------------


def replay_ddn(model, x, y, t, steps, *, init_norm=1.0, gamma=0.05, alpha=(1.0, 0.01), bounds=(0.0, 1.0),
               levels=None, fallback=None):
    """DDN, Algorithm 1 of Rony et al. (alpha cosine-annealed, as adv_lib): the iterates, the best
    distance and the returned point per sample."""
    n = x.shape[0]
    lo, hi = bounds
    view = (-1, *[1] * (x.dim() - 1))
    worst = _corner_distance(x, bounds, "L2")
    delta = torch.zeros_like(x)
    eps = torch.full((n,), init_norm, dtype=x.dtype)
    best = torch.full((n,), math.inf, dtype=x.dtype)
    best_margin = torch.full((n,), math.inf, dtype=x.dtype)
    best_x = x.clone()
    found = torch.zeros(n, dtype=torch.bool)
    iterates = []
    for k in range(steps):
        a = alpha[1] + (alpha[0] - alpha[1]) * (1 + math.cos(math.pi * k / steps)) / 2
        xk = (x + delta).requires_grad_()
        z = model(xk)
        # Descend -CE(z, y) (untargeted) or CE(z, t) (targeted).
        loss = F.cross_entropy(z, t, reduction="sum") if t is not None else -F.cross_entropy(z, y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xk)
        xk, z = xk.detach(), z.detach()
        iterates.append(xk)
        adv = _adversarial(z, y, t)
        m = _margin(z, y, t)
        d = delta.flatten(1).norm(dim=1)
        smaller = adv & (d < best)
        closer = ~found & ~adv & (m < best_margin)
        best_x = torch.where((smaller | closer).view(view), xk, best_x)
        best = torch.where(smaller, d, best)
        best_margin = torch.where(closer, m, best_margin)
        found |= adv
        norms = g.flatten(1).norm(dim=1)
        direction = g / norms.view(view)
        if fallback is not None:
            direction = torch.where((norms == 0).view(view), fallback, direction)
        delta = delta - a * direction
        eps = torch.minimum(torch.where(adv, eps * (1 - gamma), eps * (1 + gamma)), worst)
        delta = delta * (eps / delta.flatten(1).norm(dim=1)).view(view)
        x_adv = (x + delta).clamp(lo, hi)
        if levels is not None:
            unit = (hi - lo) / (levels - 1)
            x_adv = lo + torch.round((x_adv - lo) / unit) * unit
        delta = x_adv - x
    return iterates, best, best_x


def _check_ddn(shape, steps, targeted=False, seed=0, scale=1.0, bounds=(0.0, 1.0), **options):
    model, x, y = case(shape, seed=seed, scale=scale, bounds=bounds)
    t = (y + 1) % 3 if targeted else None
    recorder = InputRecorder(model)
    result = DDN(steps=steps, **options)(recorder, x, y, threat=L2(eps=math.inf, bounds=bounds), targets=t,
                                        generator=gen(0))
    replay = dict(options)
    if "step_size" in replay or "final_step_size" in replay:
        replay["alpha"] = (replay.pop("step_size", 1.0), replay.pop("final_step_size", 0.01))
    iterates, best, best_x = replay_ddn(model, x, y, t, steps, bounds=bounds, **replay)
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)
    _check_best(result, best, best_x)
    return result


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_ddn_iterates_follow_algorithm_1(targeted):
    result = _check_ddn((8,), steps=12, targeted=targeted, scale=2.0, init_norm=0.2)
    assert result.success.any()


def test_ddn_uses_its_hyperparameters():
    result = _check_ddn((8,), steps=10, scale=2.0, init_norm=0.3, gamma=0.2, step_size=0.4, final_step_size=0.1)
    assert result.success.any()


def test_ddn_rounds_to_levels_of_the_box():
    # A box that does not start at 0, and 5 levels: every iterate after the first lies on the grid
    # lo + k (hi - lo) / 4, rounded to the nearest level.
    bounds = (-1.0, 2.0)
    result = _check_ddn((8,), steps=10, scale=1.0, bounds=bounds, levels=5, init_norm=1.0)
    model, x, y = case((8,), scale=1.0, bounds=bounds)
    recorder = InputRecorder(model)
    DDN(steps=10, levels=5)(recorder, x, y, threat=L2(eps=math.inf, bounds=bounds))
    for it in recorder.inputs[2:11]:
        torch.testing.assert_close((it + 1.0) / 0.75, ((it + 1.0) / 0.75).round(), rtol=0, atol=1e-9)
    assert result.success.any()


def test_ddn_norm_is_capped_at_the_farthest_corner():
    # init_norm far larger than any perturbation in the box: eps starts at the corner's distance.
    _check_ddn((8,), steps=8, scale=2.0, init_norm=50.0)


class _Flat(nn.Module):
    """Logits that do not depend on the input (a saturated model): every gradient is zero."""

    def forward(self, x):
        return torch.tensor([[3.0, 0.0, -1.0]], dtype=x.dtype).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


def test_ddn_steps_along_a_fixed_random_direction_where_the_gradient_vanishes():
    x = torch.full((3, 6), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    bounds = (-100.0, 100.0)
    runs = []
    for seed in (0, 0, 1):
        recorder = InputRecorder(_Flat())
        DDN(steps=6, init_norm=0.5)(recorder, x, y, threat=L2(eps=math.inf, bounds=bounds), generator=gen(seed))
        runs.append(torch.stack(recorder.inputs[1:7]) - x)
    deltas = runs[0]
    norms = deltas.norm(dim=2)
    # Never adversarial: eps grows by (1 + gamma) at every step; the direction never changes.
    for k in range(1, 6):
        torch.testing.assert_close(norms[k], torch.full((3,), 0.5 * 1.05**k, dtype=torch.float64))
        torch.testing.assert_close(deltas[k] / norms[k, :, None], deltas[1] / norms[1, :, None])
    u = deltas[1] / norms[1, :, None]
    assert (u @ u.T - torch.eye(3, dtype=torch.float64)).abs().max() > 0.01  # one direction per sample
    assert torch.equal(runs[0], runs[1])  # drawn from the generator: the same seed, the same run
    assert not torch.allclose(runs[0], runs[2])
    # The direction is the generator's first normal draw in x's shape and dtype, normalised per sample
    # (the step descends along it: delta = -alpha u, rescaled to eps).
    draw = torch.randn(x.shape, generator=gen(0), dtype=x.dtype)
    torch.testing.assert_close(deltas[1] / norms[1, :, None], -draw / draw.norm(dim=1, keepdim=True),
                               rtol=1e-12, atol=1e-14)


class _DeadBelowZero(nn.Module):
    """Two classes, logits ``(0, relu(x_0))``: no gradient where ``x_0 < 0``, along ``e_0`` elsewhere."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), torch.relu(x[:, 0])], dim=1)


def test_ddn_falls_back_per_sample_where_the_gradient_vanishes():
    # One sample without gradient, one with: the first takes a random unit step, the second its
    # normalised gradient step (lowering x_0 raises the cross-entropy of its class 1), both rescaled
    # to eps (grown by 1 + gamma: neither was adversarial).
    x = torch.tensor([[-0.5, 0.1, 0.2, 0.3], [0.3, 0.1, 0.2, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    recorder = InputRecorder(_DeadBelowZero())
    DDN(steps=2, init_norm=0.5)(recorder, x, y, threat=L2(eps=math.inf, bounds=(-100.0, 100.0)), generator=gen(0))
    step = recorder.inputs[2] - x
    torch.testing.assert_close(step.norm(dim=1), torch.full((2,), 0.5 * 1.05, dtype=torch.float64))
    torch.testing.assert_close(step[1], torch.tensor([-0.5 * 1.05, 0, 0, 0], dtype=torch.float64))
    assert step[0, 1:].abs().max() > 1e-3  # not along e_0: a random direction


# --- FMN: the returned point of a failed sample, L0 on features, bad hyperparameters ------------


class _Bowl(nn.Module):
    """Two classes, never class 1: the margin ``1 + 4 (x_0 - 0.5)^2`` is smallest at ``x_0 = 0.5``."""

    def forward(self, x):
        m = 1 + 4 * (x[:, 0] - 0.5) ** 2 + 0 * x.sum(1)
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def test_fmn_failed_sample_returns_its_lowest_margin_iterate_not_its_last():
    # Constant steps of 0.3 along x_0 bounce around the bottom of the bowl (0.9, 0.6, 0.3, 0.6, ...):
    # the lowest margin is met first at 0.6 (or 0.45), never improved on, and the last iterate is worse.
    x = torch.tensor([[0.9, 0.2, 0.4], [0.15, 0.5, 0.5], [0.7, 0.1, 0.9]], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    recorder = InputRecorder(_Bowl())
    steps = 7
    result = FMN(steps=steps, step_size=0.3, final_step_size=0.3)(recorder, x, y, threat=L2(eps=math.inf))
    iterates, best, best_x = replay_fmn(_Bowl(), x, y, None, "L2", steps, alpha=(0.3, 0.3))
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)
    assert not result.success.any() and torch.isinf(best).all()
    torch.testing.assert_close(result.x_adv, best_x, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(result.x_adv, iterates[-1])


class _OneFeature(nn.Module):
    """Two classes on features: class 1 wins once ``x_0 + 0.2 x_1`` exceeds 0.6."""

    def forward(self, x):
        s = x[:, 0] + 0.2 * x[:, 1] - 0.6
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_fmn_l0_on_features_follows_the_integer_eps_rule_down_to_zero():
    # One changed feature breaks each sample: eps goes 2 -> 1 -> 0 on successes (min(eps - 1, floor,
    # best), never below 0), the next iterate is x itself, then eps grows back to 1: the replay on
    # [N, D] inputs.
    x = torch.tensor([[0.3, 0.2, 0.5, 0.1], [0.1, 0.9, 0.2, 0.3]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.int64)
    recorder = InputRecorder(_OneFeature())
    steps = 6
    result = FMN(steps=steps)(recorder, x, y, threat=NORMS["L0"](eps=math.inf))
    iterates, best, best_x = replay_fmn(_OneFeature(), x, y, None, "L0", steps)
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(iterates), rtol=1e-9, atol=1e-12)
    assert torch.equal(iterates[3], x)  # eps 2, 1 (successes), then 0: no feature may change
    assert result.success.all()
    torch.testing.assert_close(result.extras["best_distance"], torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize(
    "options,message",
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"step_size": 0.0}, "step_size must be a positive finite number, got 0.0"),
        ({"final_step_size": -1.0}, "final_step_size must be a positive finite number, got -1.0"),
        ({"step_size": math.inf}, "step_size must be a positive finite number, got inf"),
        ({"gamma": 0.0}, r"gamma must lie in \(0, 1\), got 0.0"),
        ({"gamma": 1.0}, r"gamma must lie in \(0, 1\), got 1.0"),
        ({"final_gamma": 1.0}, r"final_gamma must lie in \(0, 1\), got 1.0"),
    ],
)
def test_fmn_rejects_bad_hyperparameters_by_name(options, message):
    with pytest.raises(RobustlabError, match=f"^{message}$"):
        FMN(**options)


def test_fmn_accepts_the_smallest_valid_hyperparameters():
    FMN(steps=1, step_size=1e-9, final_step_size=1e-9, gamma=1e-9, final_gamma=0.999)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"init_norm": 0.0}, "init_norm must be a positive finite number, got 0.0"),
        ({"step_size": math.inf}, "step_size must be a positive finite number, got inf"),
        ({"final_step_size": -1.0}, "final_step_size must be a positive finite number, got -1.0"),
        ({"gamma": 0.0}, r"gamma must lie in \(0, 1\), got 0.0"),
        ({"gamma": 1.0}, r"gamma must lie in \(0, 1\), got 1.0"),
        ({"levels": 1}, "levels must be an integer >= 2 or None, got 1"),
        ({"levels": 2.5}, "levels must be an integer >= 2 or None, got 2.5"),
    ],
)
def test_ddn_rejects_bad_hyperparameters_by_name(options, message):
    with pytest.raises(RobustlabError, match=f"^{message}$"):
        DDN(**options)


def test_ddn_accepts_the_smallest_valid_hyperparameters():
    DDN(steps=1, init_norm=1e-9, step_size=1e-9, final_step_size=1e-9, gamma=1e-9, levels=2)
    DDN(gamma=0.999)
