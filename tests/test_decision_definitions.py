"""The decision-based attacks pinned to their published definitions (issue 15), on hand-built models.

Boundary Attack (Brendel, Rauber & Bethge, ICLR 2018) as Foolbox 3 runs it
(``boundary_attack.py``: ``draw_proposals``, the two success-rate queues and their thresholds), and
HopSkipJump (Chen, Jordan & Wainwright, S&P 2020) as the authors' ``hsja.py`` runs it
(``initialize``, ``binary_search_batch``, ``approximate_gradient``, ``select_delta``,
``geometric_progression_for_stepsize``). The models are half-spaces (class 1 iff ``w . x + c > 0``)
in float64, so every decision is known by hand; the replays draw from the same ``torch.Generator``
stream, in the documented order, through the formulas written here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustlab.attacks import decision
from robustlab.attacks.base import Attack, ModelOracle
from robustlab.attacks.decision import BoundaryAttack, HopSkipJump, _Decisions, _History, _uniform_box
from robustlab.errors import RobustlabError
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Halfspace(nn.Module):
    """Logits ``(0, w . x + c)``: class 1 iff ``w . x + c > 0`` (a tie is class 0)."""

    def __init__(self, w: Tensor, c: float):
        super().__init__()
        self.w, self.c = w.to(D), c

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).to(D) @ self.w + self.c
        return torch.stack([torch.zeros_like(s), s], dim=1)


def threshold_model(at: float = 0.3, features: int = 2) -> Halfspace:
    """Class 1 iff the first feature exceeds ``at``."""
    w = torch.zeros(features, dtype=D)
    w[0] = 1.0
    return Halfspace(w, -at)


def predict(model: nn.Module, points: Tensor) -> Tensor:
    with torch.no_grad():
        return model(points).argmax(1)


def adv(model: nn.Module, points: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(points).argmax(1) != y


# --- the shared pieces ----------------------------------------------------------------------------------------


def test_decisions_count_every_query_per_sample_and_judge_against_the_targets():
    model = threshold_model()
    y = torch.tensor([0, 0, 1])
    decide = _Decisions(ModelOracle(model), y, None)
    points = torch.tensor([[0.5, 0.0], [0.1, 0.0], [0.2, 0.0], [0.9, 0.0]], dtype=D)
    hit = decide(torch.tensor([0, 0, 2, 2]), points)
    assert hit.tolist() == [True, False, True, False]
    assert decide.queries.tolist() == [2, 0, 2]
    targeted = _Decisions(ModelOracle(model), y, torch.tensor([1, 1, 0]))
    assert targeted(torch.tensor([2, 0, 1]), points[:3]).tolist() == [False, False, False]
    assert targeted(torch.tensor([1, 2]), points[[0, 2]]).tolist() == [True, True]
    assert targeted.queries.tolist() == [1, 2, 2]


def test_uniform_noise_is_drawn_in_the_box():
    like = torch.zeros(1, dtype=D)
    threat = L2(eps=math.inf, bounds=(-2.0, 3.0))
    draw = _uniform_box(torch.Size([4, 5]), threat, gen(3), like)
    assert draw.dtype == D
    torch.testing.assert_close(draw, -2.0 + 5.0 * torch.rand(4, 5, generator=gen(3), dtype=D), rtol=0, atol=1e-15)


# Worst-case cost of HopSkipJump's boundary search: ceil(log2(gap / theta)) + 1 bisections, with
# theta = gamma / d^(3/2) (L2, gap 1) or gamma / d^2 (L-inf, gap max(1, hi - lo)).
@pytest.mark.parametrize("norm,bounds,gamma,bisections", [
    ("L2", (0.0, 1.0), 1.0, 6),  # theta = 8^-1.5: log2(22.6) = 4.5
    ("L2", (0.0, 1.0), 4.0, 4),  # theta = 4 / 22.6: log2(5.66) = 2.5
    ("L2", (0.0, 3.0), 1.0, 6),  # the L2 blend's gap is 1 whatever the box
    ("Linf", (-1.0, 2.0), 1.0, 9),  # hi - lo = 3: log2(192) = 7.6
    ("Linf", (0.0, 1.0), 1.0, 7),  # theta = 1 / 64: log2(64) = 6
    ("Linf", (0.0, 3.0), 1.0, 9),  # the radius starts at most at hi - lo = 3: log2(192) = 7.6
    ("Linf", (0.0, 0.5), 1.0, 7),  # ... and at least at 1
])
def test_hopskipjump_budget_covers_the_initialisation_and_one_boundary_search(norm, bounds, gamma, bisections):
    model = Halfspace(torch.zeros(8, dtype=D), -1.0)  # never adversarial: the run ends after the noise draws
    x, y = torch.full((2, 8), 0.25, dtype=D), torch.zeros(2, dtype=torch.int64)
    threat = (L2 if norm == "L2" else Linf)(eps=math.inf, bounds=bounds)
    cost = 1 + 3 + 10 + bisections
    result = HopSkipJump(max_queries=cost, init_draws=3, gamma=gamma)(model, x, y, threat=threat, generator=gen())
    assert result.extras["queries"].tolist() == [4, 4]
    with pytest.raises(RobustlabError, match=f"max_queries={cost - 1} is too small.*{cost} queries"):
        HopSkipJump(max_queries=cost - 1, init_draws=3, gamma=gamma)(model, x, y, threat=threat)


def test_boundary_budget_covers_the_initialisation():
    model = Halfspace(torch.zeros(3, dtype=D), -1.0)
    x, y = torch.full((1, 3), 0.5, dtype=D), torch.zeros(1, dtype=torch.int64)
    BoundaryAttack(max_queries=1 + 4 + 10, init_draws=4)(model, x, y, threat=L2(eps=math.inf))
    with pytest.raises(RobustlabError, match=r"^max_queries=14 is too small: finding and refining a starting point may take 15 queries for inputs "
                       r"of 3 features \(init_draws=4\); raise max_queries or lower init_draws$"):
        BoundaryAttack(max_queries=14, init_draws=4)(model, x, y, threat=L2(eps=math.inf))


@pytest.mark.parametrize("build,match", [
    (lambda: BoundaryAttack(init_draws=0), "init_draws must be a positive integer"),
    (lambda: BoundaryAttack(max_queries=2.0), "max_queries must be a positive integer"),
    (lambda: HopSkipJump(init_attack=object()), "init_attack must be a robustlab Attack or None, got object"),
    (lambda: BoundaryAttack(source_step=math.inf), "source_step must be a positive finite"),
    (lambda: BoundaryAttack(spherical_step=0.0), "spherical_step must be a positive finite"),
    (lambda: BoundaryAttack(source_step_convergence=-1.0), "source_step_convergence must be a positive finite"),
    (lambda: BoundaryAttack(step_adaptation=1.0), "step_adaptation must be a finite number > 1"),
    (lambda: BoundaryAttack(step_adaptation=math.inf), "step_adaptation must be a finite number > 1"),
    (lambda: BoundaryAttack(update_stats_every=0), "update_stats_every must be a positive integer"),
    (lambda: HopSkipJump(steps=0), "steps must be a positive integer"),
    (lambda: HopSkipJump(initial_evaluations=1.5), "initial_evaluations must be a positive integer"),
    (lambda: HopSkipJump(max_evaluations=0), "max_evaluations must be a positive integer"),
    (lambda: HopSkipJump(gamma=0.0), "gamma must be a positive finite"),
    (lambda: HopSkipJump(gamma=math.nan), "gamma must be a positive finite"),
])
def test_decision_attacks_reject_bad_settings(build, match):
    with pytest.raises(RobustlabError, match=match):
        build()


def test_decision_attacks_accept_the_smallest_valid_settings():
    BoundaryAttack(max_queries=1, init_draws=1, update_stats_every=1, step_adaptation=1.0001, spherical_step=1e-9,
                   source_step=1e-9, source_step_convergence=1e-12, init_attack=HopSkipJump())
    HopSkipJump(max_queries=1, init_draws=1, steps=1, initial_evaluations=1, max_evaluations=1, gamma=1e-9)


def reference_initialise(model, x, y, threat, generator, init_draws):
    """hsja.py's ``initialize``: uniform noise in the box until adversarial (at most ``init_draws``
    draws), then bisection on the blend ``(1 - a) x + a noise`` until ``high - low <= 0.001`` (10 steps)."""
    lo, hi = threat.bounds
    clean = adv(model, x, y)
    found, queries = clean.clone(), torch.ones(len(x), dtype=torch.int64)
    noise = x.clone()
    for _ in range(init_draws):
        todo = (~found).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        draw = lo + (hi - lo) * torch.rand(x[todo].shape, generator=generator, dtype=x.dtype)
        queries[todo] += 1
        hit = adv(model, draw, y[todo])
        noise[todo[hit]], found[todo[hit]] = draw[hit], True
    start = x.clone()
    for i in (found & ~clean).nonzero().squeeze(1).tolist():
        low, high = 0.0, 1.0
        while high - low > 0.001:
            mid = (low + high) / 2
            queries[i] += 1
            if adv(model, (x[i] + mid * (noise[i] - x[i]))[None], y[i:i + 1]).item():
                high = mid
            else:
                low = mid
        start[i] = x[i] + high * (noise[i] - x[i])
    return start, found, clean, queries


def test_initialisation_is_uniform_noise_blended_towards_x_by_bisection():
    w = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=D)
    model = Halfspace(w, -1.2)  # about a third of the box is class 1
    x = torch.rand(6, 4, generator=gen(1), dtype=D) * 0.4
    y = predict(model, x)  # the clean class: 0 everywhere here
    y[2] = 1  # sample 2 is already adversarial
    threat = L2(eps=math.inf)
    attack = BoundaryAttack(init_draws=3)
    decide = _Decisions(ModelOracle(model), y, None)
    start, found, clean = attack._initialise(decide, x, threat, gen(5))
    ref_start, ref_found, ref_clean, ref_queries = reference_initialise(model, x, y, threat, gen(5), 3)
    assert clean.tolist() == ref_clean.tolist() == [False, False, True, False, False, False]
    assert found.tolist() == ref_found.tolist() and 0 < int(found.sum()) < 6  # some samples get no start in 3 draws
    assert decide.queries.tolist() == ref_queries.tolist()
    torch.testing.assert_close(start, ref_start, rtol=0, atol=1e-15)
    # The start is adversarial and the blend 2^-10 closer to x is not (the bisection's last low end).
    blended = (found & ~clean).nonzero().squeeze(1)
    assert adv(model, start[blended], y[blended]).all()
    assert torch.equal(start[~found], x[~found]) and torch.equal(start[2], x[2])


@dataclass(frozen=True, kw_only=True)
class _Scripted(Attack):
    """Returns ``x + shift`` and records what it was called with."""

    name = "scripted"
    norms = frozenset({"L2"})
    shift: Tensor = field(default_factory=lambda: torch.zeros(1))
    calls: list = field(default_factory=list)

    def _run(self, oracle, x, y, *, threat, targets, generator) -> tuple[Tensor, dict[str, Any]]:
        self.calls.append({"oracle": oracle, "x": x.clone(), "y": y.clone(), "threat": threat, "targets": targets,
                           "generator": generator})
        return x + self.shift, {}


def test_init_attack_runs_unbounded_on_the_samples_without_a_start():
    model = threshold_model(0.3, features=2)
    x = torch.tensor([[0.0, 0.0], [0.9, 0.0], [0.1, 0.0], [0.2, 0.0]], dtype=D)
    y = torch.zeros(4, dtype=torch.int64)
    # Its outputs: beyond the box for sample 0 (projected onto it: adversarial), not adversarial for sample 2,
    # adversarial for sample 3 (sample 1 is adversarial already and not attacked).
    shift = torch.tensor([[5.0, -3.0], [0.1, 0.0], [0.3, 0.0]], dtype=D)
    init = _Scripted(shift=shift)
    threat = L2(eps=0.01, bounds=(0.0, 1.0))
    attack = BoundaryAttack(init_draws=1, init_attack=init)
    oracle = ModelOracle(model)
    decide = _Decisions(oracle, y, torch.tensor([1, 1, 1, 1]))
    g = gen()
    start, found, clean = attack._initialise(decide, x, threat, g)
    (call,) = init.calls
    assert call["generator"] is g
    assert call["oracle"] is oracle and call["threat"] == L2(eps=math.inf, bounds=(0.0, 1.0))
    assert torch.equal(call["x"], x[[0, 2, 3]]) and call["y"].tolist() == [0, 0, 0] and call["targets"].tolist() == [1, 1, 1]
    assert clean.tolist() == [False, True, False, False]
    torch.testing.assert_close(start[0], torch.tensor([1.0, 0.0], dtype=D))
    torch.testing.assert_close(start[3], x[3] + shift[2])
    assert torch.equal(start[1], x[1])
    # One decision per init output; sample 2 (init failed) then draws noise: one draw, blended if it hits.
    noise_hit = bool(found[2])
    assert decide.queries.tolist() == [2, 1, 3 + (10 if noise_hit else 0), 2]
    assert found[[0, 1, 3]].all()
    # Untargeted, without samples left over: the init attack is not called at all.
    init2 = _Scripted(shift=shift[:1])
    BoundaryAttack(init_attack=init2)._initialise(_Decisions(oracle, y[1:2], None), x[1:2], threat, gen())
    assert init2.calls == []


def test_init_attack_must_support_the_norm():
    model = threshold_model()
    x, y = torch.zeros(1, 2, dtype=D), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(RobustlabError, match=r"init_attack _Scripted supports the norms \['L2'\], not Linf"):
        HopSkipJump(init_attack=_Scripted())(model, x, y, threat=Linf(eps=math.inf))


# --- Boundary Attack --------------------------------------------------------------------------------------------


def foolbox_proposals(x, x_adv, spherical, source, eta, bounds):
    """Foolbox 3's ``draw_proposals`` (per-sample noise ``eta`` [N, D])."""
    lo, hi = bounds
    originals, perturbed = x.flatten(1), x_adv.flatten(1)
    unnormalized = originals - perturbed
    source_norms = unnormalized.norm(dim=1)
    directions = unnormalized / source_norms[:, None]
    eta = eta - (eta * directions).sum(1, keepdim=True) * directions
    eta = eta * (spherical * source_norms / eta.norm(dim=1))[:, None]
    distances = (spherical**2 + 1).sqrt()[:, None]
    spherical_candidates = (originals + (eta - unnormalized) / distances).clip(lo, hi)
    new_source_directions = originals - spherical_candidates
    new_norms = new_source_directions.norm(dim=1)
    lengths = (source * source_norms + new_norms - source_norms).clamp_min(0) / new_norms
    candidates = (spherical_candidates + lengths[:, None] * new_source_directions).clip(lo, hi)
    return candidates.reshape(x.shape), spherical_candidates.reshape(x.shape)


@pytest.mark.parametrize("bounds", [(-10.0, 10.0), (0.0, 1.0)], ids=["inside", "clipped"])
def test_boundary_proposals_are_foolboxs_draw_proposals(bounds):
    x = torch.rand(5, 2, 3, generator=gen(1), dtype=D)
    x_adv = x + 0.8 * torch.randn(5, 2, 3, generator=gen(2), dtype=D)
    spherical = torch.tensor([0.01, 0.05, 0.3, 1.0, 0.02], dtype=D)
    source = torch.tensor([0.01, 0.2, 0.05, 0.5, 0.9], dtype=D)
    threat = L2(eps=math.inf, bounds=bounds)
    candidate, orthogonal = BoundaryAttack._proposals(x, x_adv, spherical, source, threat, gen(7))
    eta = torch.randn(5, 6, generator=gen(7), dtype=D)
    ref_candidate, ref_orthogonal = foolbox_proposals(x, x_adv, spherical, source, eta, bounds)
    torch.testing.assert_close(orthogonal, ref_orthogonal, rtol=0, atol=1e-12)
    torch.testing.assert_close(candidate, ref_candidate, rtol=0, atol=1e-12)
    if bounds == (-10.0, 10.0):
        # Paper Sec. 3.1: the orthogonal step stays on the sphere around x (Pythagoras), at an angle
        # with tan = spherical_step, and the step towards x shortens the distance by source_step.
        v = (x - x_adv).flatten(1).norm(dim=1)
        torch.testing.assert_close((orthogonal - x).flatten(1).norm(dim=1), v)
        cos = ((x_adv - x).flatten(1) * (orthogonal - x).flatten(1)).sum(1) / v**2
        torch.testing.assert_close(cos, 1 / (1 + spherical**2).sqrt())
        torch.testing.assert_close((candidate - x).flatten(1).norm(dim=1), (1 - source) * v)
    else:
        assert not torch.allclose(orthogonal, foolbox_proposals(x, x_adv, spherical, source, eta, (-10.0, 10.0))[1])


def test_boundary_proposal_never_steps_away_from_x_when_clipping_left_the_sphere():
    # The clipped orthogonal point lies far inside the sphere: the corrected length is negative, clamped to 0.
    x = torch.tensor([[0.5, 0.0]], dtype=D)
    x_adv = torch.tensor([[0.5, 1.0]], dtype=D)
    threat = L2(eps=math.inf, bounds=(0.0, 1.0))
    candidate, orthogonal = BoundaryAttack._proposals(x, x_adv, torch.tensor([1.0], dtype=D),
                                                      torch.tensor([0.01], dtype=D), threat, gen(0))
    assert float((orthogonal - x).norm()) < 0.9  # sqrt(0.5^2 + 0.5): the clip took it off the unit sphere
    torch.testing.assert_close(candidate, orthogonal)


def test_history_is_a_ring_buffer_of_the_last_outcomes():
    h = _History(3, 4, torch.device("cpu"))
    for k in range(6):  # sample 0: six outcomes, the last four True True False True
        h.append(torch.tensor([0]), torch.tensor([k in (2, 3, 5)]))
    h.append(torch.tensor([1, 2]), torch.tensor([True, False]))
    assert h.count.tolist() == [6, 1, 1] and h.full().tolist() == [True, False, False]
    torch.testing.assert_close(h.rate(), torch.tensor([0.75, 0.25, 0.0]))
    for _ in range(3):
        h.append(torch.tensor([1]), torch.tensor([True]))
    assert h.full().tolist() == [True, True, False]
    h.clear(torch.tensor([True, False, False]))
    assert h.count.tolist() == [0, 4, 1] and h.full().tolist() == [False, True, False]


def _history(rates: list[float], length: int) -> _History:
    h = _History(len(rates), length, torch.device("cpu"))
    for i, rate in enumerate(rates):
        if rate is None:
            continue
        hits = round(rate * length)
        for k in range(length):
            h.append(torch.tensor([i]), torch.tensor([k < hits]))
    return h


def test_boundary_step_adaptation_follows_foolboxs_thresholds():
    # Orthogonal success over the last 100: > 50% both steps x 1.5, < 20% both / 1.5, else (or not yet 100) kept.
    # Candidate success over the last 30: > 25% source x 1.5, < 10% source / 1.5.
    spherical_rates = [0.51, 0.5, 0.2, 0.19, None, 0.3, 0.6, 0.1]
    step_rates = [8 / 30, 8 / 30, 8 / 30, 8 / 30, 8 / 30, 3 / 30, 2 / 30, 7 / 30]
    sph, stp = _history(spherical_rates, 100), _history(step_rates, 30)
    stp.count[4] = 29  # not full
    spherical = torch.full((8,), 0.1, dtype=D)
    source = torch.full((8,), 0.1, dtype=D)
    BoundaryAttack(step_adaptation=2.0)._adapt(spherical, source, sph, stp)
    torch.testing.assert_close(spherical, 0.1 * torch.tensor([2, 1, 1, 0.5, 1, 1, 2, 0.5], dtype=D))
    # step rates: 8/30 > 0.25 up (not for the queue that is one short of full); 3/30 = 0.1 kept; 2/30 < 0.1
    # down; 7/30 kept
    torch.testing.assert_close(source, 0.1 * torch.tensor([4, 2, 2, 1, 1, 1, 1, 0.5], dtype=D))
    assert sph.count.tolist() == [0, 100, 100, 0, 0, 100, 0, 0]
    assert stp.count.tolist() == [0, 0, 0, 0, 29, 30, 0, 30]


class _Queue:
    """Foolbox's ``ArrayQueue`` per sample: the last ``length`` outcomes, cleared on adaptation."""

    def __init__(self, n: int, length: int):
        self.items = [deque(maxlen=length) for _ in range(n)]
        self.length = length

    def full(self, i: int) -> bool:
        return len(self.items[i]) == self.length

    def mean(self, i: int) -> float:
        return sum(self.items[i]) / len(self.items[i])


def reference_boundary(model, x, y, start, found, clean, queries, threat, generator, *, max_queries, spherical_step,
                       source_step, adaptation, convergence, every):
    """Foolbox's Boundary Attack loop, one sample at a time for the bookkeeping (noise drawn per step for
    the samples still running, in index order, as robustlab documents)."""
    n = len(x)
    x_adv, queries = start.clone(), queries.clone()
    spherical = torch.full((n,), spherical_step, dtype=D)
    source = torch.full((n,), source_step, dtype=D)
    sph, stp = _Queue(n, 100), _Queue(n, 30)
    running = found & ~clean
    step = 0
    while True:
        step += 1
        check = step % every == 0
        running &= (source >= convergence) & (queries + 1 + int(check) <= max_queries)
        todo = running.nonzero().squeeze(1)
        if len(todo) == 0:
            return x_adv, queries
        eta = torch.randn(len(todo), x[0].numel(), generator=generator, dtype=D)
        candidate, orthogonal = foolbox_proposals(x[todo], x_adv[todo], spherical[todo], source[todo], eta,
                                                  threat.bounds)
        hit = adv(model, candidate, y[todo])
        queries[todo] += 1
        closer = (candidate - x[todo]).flatten(1).norm(dim=1) < (x_adv[todo] - x[todo]).flatten(1).norm(dim=1)
        for k, i in enumerate(todo.tolist()):
            if hit[k] and closer[k]:
                x_adv[i] = candidate[k]
        if check:
            orth_hit = adv(model, orthogonal, y[todo])
            queries[todo] += 1
            for k, i in enumerate(todo.tolist()):
                sph.items[i].append(float(orth_hit[k]))
                stp.items[i].append(float(hit[k]))
                if sph.full(i) and sph.mean(i) > 0.5:
                    spherical[i] *= adaptation
                    source[i] *= adaptation
                    sph.items[i].clear()
                elif sph.full(i) and sph.mean(i) < 0.2:
                    spherical[i] /= adaptation
                    source[i] /= adaptation
                    sph.items[i].clear()
                if stp.full(i) and stp.mean(i) > 0.25:
                    source[i] *= adaptation
                    stp.items[i].clear()
                elif stp.full(i) and stp.mean(i) < 0.1:
                    source[i] /= adaptation
                    stp.items[i].clear()


@pytest.mark.parametrize("options", [
    {"max_queries": 700, "update_stats_every": 2},
    {"max_queries": 500, "update_stats_every": 3, "spherical_step": 0.2, "source_step": 0.05, "step_adaptation": 2.0,
     "source_step_convergence": 0.02},
    {"max_queries": 90, "update_stats_every": 1},
    # A source step equal to the threshold has not converged (Foolbox stops below it): the walk runs.
    {"max_queries": 200, "update_stats_every": 2, "source_step": 0.01, "source_step_convergence": 0.01},
], ids=["budget", "convergence", "every-step", "at-the-threshold"])
def test_boundary_attack_replays_foolboxs_walk(options):
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5, 1.0], dtype=D)
    model = Halfspace(w, -1.0)
    x = torch.rand(4, 6, generator=gen(3), dtype=D) * 0.3
    y = predict(model, x)
    y[1] = 1  # already adversarial
    threat = L2(eps=math.inf)
    attack = BoundaryAttack(init_draws=20, **options)
    result = attack(model, x, y, threat=threat, generator=gen(11))
    g = gen(11)
    decide = _Decisions(ModelOracle(model), y, None)
    start, found, clean = attack._initialise(decide, x, threat, g)
    assert found.all() and clean.tolist() == [False, True, False, False]
    ref, queries = reference_boundary(
        model, x, y, start, found, clean, decide.queries, threat, g, max_queries=options["max_queries"],
        spherical_step=options.get("spherical_step", 0.01), source_step=options.get("source_step", 0.01),
        adaptation=options.get("step_adaptation", 1.5), convergence=options.get("source_step_convergence", 1e-7),
        every=options["update_stats_every"])
    torch.testing.assert_close(result.x_adv, ref, rtol=0, atol=1e-12)
    assert result.extras["queries"].tolist() == queries.tolist()
    distance = (ref - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(result.extras["best_distance"], distance)
    torch.testing.assert_close(result.extras["initial_distance"], (start - x).flatten(1).norm(dim=1))
    assert (distance[[0, 2, 3]] < (start - x).flatten(1).norm(dim=1)[[0, 2, 3]]).all()
    if options["max_queries"] in (700, 90):  # the budget ends the walk: at most one query (a check step's two) left
        assert (queries[[0, 2, 3]] >= options["max_queries"] - 1).all()
    elif options["max_queries"] == 500:  # convergence ends it first
        assert (queries[[0, 2, 3]] < options["max_queries"] - 1).all()
    else:  # starting at the threshold: it ends once the step has shrunk below it, for some samples before the budget
        assert (queries[[0, 2, 3]] < options["max_queries"] - 1).any()


def test_boundary_attack_without_a_start_reports_infinite_distances():
    model = Halfspace(torch.zeros(3, dtype=D), -1.0)
    x, y = torch.full((2, 3), 0.5, dtype=D), torch.tensor([0, 1])
    result = BoundaryAttack(max_queries=100, init_draws=2)(model, x, y, threat=L2(eps=math.inf), generator=gen())
    assert result.extras["initial_distance"].tolist() == [math.inf, 0.0]
    assert result.extras["best_distance"].tolist() == [math.inf, 0.0]
    assert result.extras["queries"].tolist() == [3, 1]
    assert torch.equal(result.x_adv, x)


# --- HopSkipJump ------------------------------------------------------------------------------------------------


def test_boundary_search_bisects_the_blend_in_l2_to_theta():
    model = threshold_model(0.3)
    decide = _Decisions(ModelOracle(model), torch.zeros(3, dtype=torch.int64), None)
    x = torch.zeros(2, 2, dtype=D)
    x_adv = torch.tensor([[1.0, 0.0], [0.6, 0.6]], dtype=D)
    out = HopSkipJump._boundary_search(decide, torch.tensor([2, 0]), x, x_adv, False, 0.125)
    # Sample 2: blend 0.5 hit, 0.25 miss, 0.375 hit: gap 0.125. Sample 0: first feature 0.6 a, a > 0.5:
    # 0.5 miss, 0.75 hit, 0.625 hit: gap 0.125.
    torch.testing.assert_close(out, torch.tensor([[0.375, 0.0], [0.375, 0.375]], dtype=D))
    assert decide.queries.tolist() == [3, 0, 3]
    out = HopSkipJump._boundary_search(decide, torch.tensor([1]), x[:1], x_adv[:1], False, 0.1)
    torch.testing.assert_close(out, torch.tensor([[0.3125, 0.0]], dtype=D))
    assert decide.queries.tolist() == [3, 4, 3]


def test_boundary_search_in_linf_bisects_the_radius_to_theta_times_the_distance_up_to_1():
    model = threshold_model(0.3)
    decide = _Decisions(ModelOracle(model), torch.zeros(3, dtype=torch.int64), None)
    x = torch.zeros(3, 2, dtype=D)
    x_adv = torch.tensor([[1.0, 0.5], [0.5, 0.2], [4.0, 0.0]], dtype=D)
    out = HopSkipJump._boundary_search(decide, torch.tensor([0, 1, 2]), x, x_adv, True, 0.1)
    # Radius r clips x_adv into [x - r, x + r]; adversarial iff min(x_adv_0, r) > 0.3.
    # Sample 0: r in [0, 1], threshold 0.1: 0.5 hit, 0.25 miss, 0.375 hit, 0.3125 hit (gap 0.0625).
    # Sample 1: r in [0, 0.5], threshold 0.05: 0.25 miss, 0.375 hit, 0.3125 hit, 0.28125 miss (gap 0.03125).
    # Sample 2: r in [0, 4], threshold min(0.4, 0.1): 2, 1, 0.5 hit, 0.25 miss, 0.375 hit, 0.3125 hit.
    torch.testing.assert_close(out, torch.tensor([[0.3125, 0.3125], [0.3125, 0.2], [0.3125, 0.0]], dtype=D))
    assert decide.queries.tolist() == [4, 4, 6]
    empty = HopSkipJump._boundary_search(decide, torch.zeros(0, dtype=torch.int64), x[:0], x_adv[:0], True, 0.1)
    assert empty.shape == (0, 2)


def test_boundary_search_in_linf_measures_the_radius_from_x():
    model = threshold_model(0.3)
    decide = _Decisions(ModelOracle(model), torch.zeros(1, dtype=torch.int64), None)
    out = HopSkipJump._boundary_search(decide, torch.tensor([0]), torch.tensor([[0.2, 0.2]], dtype=D),
                                       torch.tensor([[0.6, 0.2]], dtype=D), True, 0.1)
    # r in [0, 0.4], threshold 0.04; adversarial iff min(0.6, 0.2 + r) > 0.3: 0.2 hit, 0.1 miss, 0.15 hit, 0.125 hit.
    torch.testing.assert_close(out, torch.tensor([[0.325, 0.2]], dtype=D))
    assert decide.queries.tolist() == [4]


def test_boundary_search_in_linf_keeps_theta_as_the_threshold_beyond_distance_1():
    model = threshold_model(0.3)
    decide = _Decisions(ModelOracle(model), torch.zeros(1, dtype=torch.int64), None)
    out = HopSkipJump._boundary_search(decide, torch.tensor([0]), torch.zeros(1, 2, dtype=D),
                                       torch.tensor([[4.0, 0.0]], dtype=D), True, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0]], dtype=D))  # 2, 1, 0.5 hit: gap 0.5
    assert decide.queries.tolist() == [3]


def reference_gradient(model, x_adv, y, delta, u_draws, bounds):
    """hsja.py's ``approximate_gradient`` for one sample from its unit draws ``u`` [B, D]."""
    lo, hi = bounds
    origin = x_adv.flatten()
    perturbed = (origin + delta * u_draws).clip(lo, hi)
    rv = (perturbed - origin) / delta
    fval = 2 * adv(model, perturbed, y.expand(len(perturbed))).to(D) - 1
    if fval.mean() == 1.0:
        g = rv.mean(0)
    elif fval.mean() == -1.0:
        g = -rv.mean(0)
    else:
        g = ((fval - fval.mean())[:, None] * rv).mean(0)
    return g / g.norm()


@pytest.mark.parametrize("linf", [False, True], ids=["L2", "Linf"])
@pytest.mark.parametrize("chunk_elements", [2**22, 40, 16, 5], ids=["one-chunk", "chunks-of-2", "chunks-of-1", "floor"])
def test_gradient_estimate_is_hsjas_baseline_corrected_mean(linf, chunk_elements, monkeypatch):
    monkeypatch.setattr(decision, "_CHUNK_ELEMENTS", chunk_elements)
    w = torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=D)
    model = Halfspace(w, -1.0)
    x_adv = torch.tensor([[0.6, 0.05, 0.3, 0.9], [0.2, 0.3, 0.9, 0.99], [0.1, 0.1, 0.1, 0.1], [0.9, 0.0, 0.9, 0.9]],
                         dtype=D)
    x_adv[0] += (1.0 - x_adv[0] @ w) * w / w.norm() ** 2  # on the boundary
    x_adv[1] += (1.0 - x_adv[1] @ w) * w / w.norm() ** 2 + 1e-3 * w / w.norm()  # just inside class 1
    # samples 2 and 3: far inside class 0 and class 1, every probe agrees (unanimous: no baseline), -1 and +1
    y = torch.tensor([0, 1, 0, 0])
    delta = torch.tensor([0.1, 0.05, 0.01, 0.01], dtype=D)
    evaluations = 7
    decide = _Decisions(ModelOracle(model), torch.tensor([9, 0, 1, 0, 0]), None)
    idx = torch.tensor([1, 2, 3, 4])
    estimate = HopSkipJump._estimate_direction(decide, idx, x_adv, delta, evaluations, linf, L2(eps=math.inf), gen(4))
    assert decide.queries.tolist() == [0, 7, 7, 7, 7]
    # The draws, in robustlab's order: per chunk of b evaluations (as many as fit in _CHUNK_ELEMENTS, at least
    # one), [4, b, 4] normal (L2) or uniform in [-1, 1] (L-inf), each row normalised to unit L2 norm.
    chunk = {2**22: 7, 40: 2, 16: 1, 5: 1}[chunk_elements]
    g = gen(4)
    parts = []
    for begin in range(0, evaluations, chunk):
        b = min(chunk, evaluations - begin)
        u = 2 * torch.rand(4, b, 4, generator=g, dtype=D) - 1 if linf else torch.randn(4, b, 4, generator=g, dtype=D)
        parts.append(u / u.norm(dim=2, keepdim=True))
    u = torch.cat(parts, dim=1)
    for i in range(4):
        expected = reference_gradient(model, x_adv[i], y[i], delta[i], u[i], (0.0, 1.0))
        torch.testing.assert_close(estimate[i], expected, rtol=0, atol=1e-12)
    for i, hit in ((2, False), (3, True)):
        probes = (x_adv[i] + delta[i] * u[i]).clip(0, 1)
        assert (adv(model, probes, y[i].expand(7)) == hit).all()


def test_gradient_estimate_points_along_the_normal_of_a_halfspace():
    # Paper Theorem 2: at the boundary, the estimate's cosine with the true gradient tends to 1 as B grows.
    w = torch.tensor([1.0, -2.0, 0.5, 1.0, 0.0, 3.0], dtype=D)
    model = Halfspace(w, -1.0)
    x_adv = torch.full((1, 6), 0.5, dtype=D)
    x_adv[0] += (1.0 - x_adv[0] @ w) * w / w.norm() ** 2
    for linf in (False, True):
        decide = _Decisions(ModelOracle(model), torch.zeros(1, dtype=torch.int64), None)
        estimate = HopSkipJump._estimate_direction(decide, torch.tensor([0]), x_adv, torch.tensor([0.01], dtype=D), 2000,
                                                   linf, L2(eps=math.inf), gen(0))
        assert float(estimate[0] @ w / w.norm()) > 0.9


def test_geometric_step_halves_until_adversarial():
    model = threshold_model(0.3)
    decide = _Decisions(ModelOracle(model), torch.zeros(4, dtype=torch.int64), None)
    threat = L2(eps=math.inf, bounds=(0.0, 1.0))
    x_adv = torch.tensor([[0.5, 0.5], [0.3 + 1e-9, 0.5], [0.95, 0.5], [0.5, 0.1]], dtype=D)
    direction = torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-0.6, 0.8]], dtype=D)
    size = torch.tensor([0.4, 0.4, 1.0, 0.4], dtype=D)
    out = HopSkipJump._geometric_step(decide, torch.tensor([0, 1, 3, 2]), x_adv, direction, size, threat)
    # Sample 0: 0.1 miss, 0.3 miss (not > 0.3), 0.4 hit. Sample 1: every step leaves the class within
    # 20 halvings (0.4 / 2^19 > 1e-9): it stays. Sample 3: 1.95 clipped to 1.0, hit at once. Sample 2:
    # 0.5 - 0.4 * 0.6 = 0.26 miss, 0.5 - 0.2 * 0.6 = 0.38 hit.
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.5], [0.3 + 1e-9, 0.5], [1.0, 0.5], [0.38, 0.26]], dtype=D))
    assert decide.queries.tolist() == [3, 20, 2, 1]
    assert size.tolist() == [0.4, 0.4, 1.0, 0.4]  # not halved in place


@pytest.mark.parametrize("max_queries,steps", [(700, 5), (260, 50)], ids=["steps", "budget"])
def test_hopskipjump_follows_hsjas_schedules(max_queries, steps, monkeypatch):
    """Per iteration t: B_t = min(int(B_0 sqrt(t)), max), delta_1 = 0.1 (hi - lo) and then sqrt(d) theta
    ||x_t - x||_2 (L2), xi = ||x_t - x|| / sqrt(t), then a boundary search from the stepped point;
    the closest iterate is returned. An iteration runs only if its worst case fits the budget."""
    calls = []
    estimate, step, search = (HopSkipJump._estimate_direction, HopSkipJump._geometric_step,
                              HopSkipJump._boundary_search)

    def spy_estimate(decide, idx, x_adv, delta, evaluations, linf, threat, generator):
        before = decide.queries.clone()
        out = estimate(decide, idx, x_adv, delta, evaluations, linf, threat, generator)
        calls.append({"what": "estimate", "idx": idx.tolist(), "x_adv": x_adv.clone(), "delta": delta.clone(),
                      "evaluations": evaluations, "queries": before, "out": out})
        return out

    def spy_step(decide, idx, x_adv, direction, size, threat):
        out = step(decide, idx, x_adv, direction, size, threat)
        calls.append({"what": "step", "direction": direction.clone(), "size": size.clone(), "x_adv": x_adv.clone(),
                      "out": out})
        return out

    def spy_search(decide, idx, x, x_adv, linf, theta):
        out = search(decide, idx, x, x_adv, linf, theta)
        calls.append({"what": "search", "idx": idx.tolist(), "x_adv": x_adv.clone(), "theta": theta, "out": out,
                      "linf": linf})
        return out

    monkeypatch.setattr(HopSkipJump, "_estimate_direction", staticmethod(spy_estimate))
    monkeypatch.setattr(HopSkipJump, "_geometric_step", staticmethod(spy_step))
    monkeypatch.setattr(HopSkipJump, "_boundary_search", staticmethod(spy_search))
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5, 1.0, 0.3, -0.2, 1.0], dtype=D)
    model = Halfspace(w, -1.0)
    x = torch.rand(3, 1, 3, 3, generator=gen(3), dtype=D) * 0.3
    y = predict(model, x)  # the clean classes
    y[1] = 1 - y[1]  # sample 1 is already adversarial
    threat = L2(eps=math.inf, bounds=(-1.0, 2.0))
    d, theta = 9, 1 / 27
    attack = HopSkipJump(max_queries=max_queries, init_draws=20, initial_evaluations=30, max_evaluations=50,
                         steps=steps)
    result = attack(model, x, y, threat=threat, generator=gen(1))
    first = calls.pop(0)
    assert first["what"] == "search" and first["idx"] == [0, 2] and first["theta"] == theta and first["linf"] is False
    start_distance = (first["x_adv"] - x[[0, 2]]).flatten(1).norm(dim=1)
    torch.testing.assert_close(result.extras["initial_distance"], torch.stack([start_distance[0], x.new_zeros(()),
                                                                               start_distance[1]]))
    bisections = math.ceil(math.log2(27)) + 1
    iterates, t, ran = [first["out"]], 0, {0: 0, 2: 0}
    while calls:
        t += 1
        est, stp, srch = calls[0], calls[1], calls[2]
        del calls[:3]
        assert (est["what"], stp["what"], srch["what"]) == ("estimate", "step", "search")
        assert est["evaluations"] == min(int(30 * math.sqrt(t)), 50)
        todo = est["idx"]
        assert all(int(est["queries"][i]) + est["evaluations"] + 20 + bisections <= max_queries for i in todo)
        for i in todo:
            ran[i] = t
        torch.testing.assert_close(est["x_adv"], iterates[-1][[[0, 2].index(i) for i in todo]])
        distance = (est["x_adv"] - x[todo]).flatten(1).norm(dim=1)
        expected_delta = torch.full_like(distance, 0.3) if t == 1 else math.sqrt(d) * theta * distance
        torch.testing.assert_close(est["delta"], expected_delta)
        torch.testing.assert_close(stp["direction"], est["out"])
        torch.testing.assert_close(stp["size"], distance / math.sqrt(t))
        torch.testing.assert_close(srch["x_adv"], stp["out"])
        assert srch["idx"] == todo and srch["theta"] == theta
        iterate = iterates[-1].clone()
        iterate[[[0, 2].index(i) for i in todo]] = srch["out"]
        iterates.append(iterate)
    if steps == 5:
        assert ran == {0: 5, 2: 5}
    else:  # the budget ends each sample's run: its next iteration's worst case does not fit
        queries = result.extras["queries"]
        assert min(ran.values()) >= 2 and max(ran.values()) < steps
        for i, t_i in ran.items():
            assert int(queries[i]) + min(int(30 * math.sqrt(t_i + 1)), 50) + 20 + bisections > max_queries
    distances = torch.stack([(it - x[[0, 2]]).flatten(1).norm(dim=1) for it in iterates])
    best = distances.argmin(0)
    torch.testing.assert_close(result.extras["best_distance"][[0, 2]], distances.min(0).values)
    torch.testing.assert_close(result.x_adv[[0, 2]], torch.stack([iterates[int(b)][k] for k, b in enumerate(best)]))
    assert result.extras["best_distance"][1] == 0 and torch.equal(result.x_adv[1], x[1])


def test_hopskipjump_in_linf_steps_along_the_sign_and_scales_delta_by_d():
    calls, searches = [], []
    estimate, step, search = HopSkipJump._estimate_direction, HopSkipJump._geometric_step, HopSkipJump._boundary_search

    def spy_estimate(decide, idx, x_adv, delta, evaluations, linf, threat, generator):
        out = estimate(decide, idx, x_adv, delta, evaluations, linf, threat, generator)
        calls.append(("estimate", x_adv.clone(), delta.clone(), linf, out))
        return out

    def spy_step(decide, idx, x_adv, direction, size, threat):
        calls.append(("step", direction.clone(), size.clone()))
        return step(decide, idx, x_adv, direction, size, threat)

    def spy_search(decide, idx, x, x_adv, linf, theta):
        searches.append(linf)
        return search(decide, idx, x, x_adv, linf, theta)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HopSkipJump, "_estimate_direction", staticmethod(spy_estimate))
        mp.setattr(HopSkipJump, "_geometric_step", staticmethod(spy_step))
        mp.setattr(HopSkipJump, "_boundary_search", staticmethod(spy_search))
        w = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=D)
        model = Halfspace(w, -1.0)
        x = torch.full((1, 4), 0.1, dtype=D)
        attack = HopSkipJump(max_queries=400, init_draws=20, initial_evaluations=20, steps=3)
        attack(model, x, torch.zeros(1, dtype=torch.int64), threat=Linf(eps=math.inf, bounds=(0.0, 2.0)),
               generator=gen(2))
    theta = 1 / 16
    assert searches == [True] * 4  # the first search, then one per iteration, all over the L-inf radius
    assert [c[0] for c in calls] == ["estimate", "step"] * 3
    for t in (1, 2, 3):
        (_, x_adv, delta, linf, out), (_, direction, size) = calls[2 * t - 2], calls[2 * t - 1]
        distance = (x_adv - x).abs().amax(1)
        assert linf
        torch.testing.assert_close(delta, torch.full_like(delta, 0.2) if t == 1 else 4 * theta * distance)
        torch.testing.assert_close(direction, out.sign())
        torch.testing.assert_close(size, distance / math.sqrt(t))


def test_hopskipjump_runs_an_iteration_exactly_when_its_worst_case_fits():
    """Iteration t runs iff queries + B_t + 20 halvings + the bisections <= max_queries."""
    model = Halfspace(torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=D), -1.0)
    x, y = torch.full((1, 4), 0.1, dtype=D), torch.zeros(1, dtype=torch.int64)
    before = []
    estimate = HopSkipJump._estimate_direction

    def spy(decide, idx, x_adv, delta, evaluations, linf, threat, generator):
        before.append((int(decide.queries[0]), evaluations))
        return estimate(decide, idx, x_adv, delta, evaluations, linf, threat, generator)

    bisections = math.ceil(math.log2(8)) + 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HopSkipJump, "_estimate_direction", staticmethod(spy))
        HopSkipJump(max_queries=5000, init_draws=20, initial_evaluations=20, steps=4)(
            model, x, y, threat=L2(eps=math.inf), generator=gen(2))
        queries, evaluations = before[2]  # the third iteration's
        fits = queries + evaluations + 20 + bisections
        for budget, iterations in ((fits, 3), (fits - 1, 2)):
            before.clear()
            HopSkipJump(max_queries=budget, init_draws=20, initial_evaluations=20, steps=3)(
                model, x, y, threat=L2(eps=math.inf), generator=gen(2))
            assert len(before) == iterations


@pytest.mark.parametrize("make", [lambda: BoundaryAttack(max_queries=400), lambda: HopSkipJump(max_queries=600)],
                         ids=["boundary", "hopskipjump"])
def test_decision_attacks_walk_to_the_target_class_not_the_nearest(make):
    # Class 1 lies just beyond x_0 = 0.6, class 2 beyond x_1 = 0.9; x = (0.5, 0.5) is class 0.
    class Regions(nn.Module):
        def forward(self, z: Tensor) -> Tensor:
            z = z.to(D)
            return torch.stack([torch.zeros_like(z[:, 0]), 20 * (z[:, 0] - 0.6), 20 * (z[:, 1] - 0.9)], dim=1)

    x = torch.full((2, 2), 0.5, dtype=D)
    y = torch.zeros(2, dtype=torch.int64)
    result = make()(Regions(), x, y, threat=L2(eps=math.inf), targets=torch.tensor([2, 1]), generator=gen(3))
    assert result.success.all()
    assert Regions()(result.x_adv).argmax(1).tolist() == [2, 1]

