"""JSMA replayed one image at a time from Papernot et al. (EuroS&P 2016, Algorithms 2-3, the pairwise
saliency map) and Cleverhans' ``SaliencyMapMethod`` (the untargeted mode's random targets), with an exhaustive
search over pairs, on a fixed tiny tanh network (issue 15). Nothing here trains a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import JSMA
from robustlab.attacks.jsma import _best_of, _pick_pairs
from robustlab.errors import RobustlabError
from robustlab.threat import L0
from conftest import random_mlp

pytestmark = pytest.mark.usefixtures("single_thread")


def replay_jsma(model, x, y, goal, *, targeted, variant, theta, max_distortion, search_margin, bounds):
    """Per image: the search set is the features with more than ``search_margin`` of the box width left in the
    direction of ``theta``; while the image is not adversarial (the target wins; untargeted: any wrong class)
    and fewer than ``floor(max_distortion * F / 2)`` pairs were changed, take ``alpha = grad F_t`` and ``beta =
    grad sum_{j != t} F_j`` (F logits or softmax), pick the first pair ``p < q`` of the search set maximising
    ``-alpha_pq beta_pq`` with ``alpha_pq > 0, beta_pq < 0`` (both signs flipped for ``theta < 0``; pair sums),
    move both by ``theta (hi - lo)`` clipped to the box, remove them from the search set; stop when no pair
    qualifies. Returns the points, the success flags and the forward and backward counts (the two gradients
    are taken with every forward but the last one, at ``max_pairs``)."""
    lo, hi = bounds
    width = hi - lo
    out, success, forwards, backwards = x.clone(), torch.zeros(len(x), dtype=torch.bool), 0, 0
    for i in range(len(x)):
        xi, yi, ti = x[i].clone(), int(y[i]), int(goal[i])
        features = xi.numel()
        flat = xi.view(-1)
        room = search_margin * width
        search = [bool(v < hi - room) if theta > 0 else bool(v > lo + room) for v in flat]
        max_pairs = int(max_distortion * features / 2)
        adversarial = lambda z: int(z.argmax()) != yi if not targeted else int(z.argmax()) == ti  # noqa: E731
        for step in range(max_pairs + 1):
            v = xi[None].clone().requires_grad_()
            z = model(v)[0]
            forwards += 1
            backwards += 2 if step < max_pairs else 0  # the gradients come with the forward (one call)
            if adversarial(z.detach()):
                success[i] = True
                break
            if step == max_pairs:
                break
            out_f = z if variant == "z" else z.softmax(0)
            (alpha,) = torch.autograd.grad(out_f[ti], v, retain_graph=True)
            (beta,) = torch.autograd.grad(out_f.sum() - out_f[ti], v)
            alpha, beta = alpha.view(-1), beta.view(-1)
            best, pair = 0.0, None
            for p in range(features):
                for q in range(p + 1, features):
                    if not (search[p] and search[q]):
                        continue
                    a, b = float(alpha[p] + alpha[q]), float(beta[p] + beta[q])
                    ok = (a > 0 and b < 0) if theta > 0 else (a < 0 and b > 0)
                    if ok and -a * b > best:
                        best, pair = -a * b, (p, q)
            if pair is None:
                break
            for f in pair:
                flat[f] = min(max(float(flat[f]) + theta * width, lo), hi)
                search[f] = False
        out[i] = xi
    return out, success, forwards, backwards


def _case(n, shape, classes, bounds, seed=0):
    lo, hi = bounds
    model = random_mlp(math.prod(shape), classes, seed=seed, scale=0.5)
    g = torch.Generator().manual_seed(seed + 10)
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)
    x.view(n, -1)[:, :3] = torch.tensor([lo, hi, hi - 0.005 * (hi - lo)], dtype=torch.float64)  # at, near the bounds
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize(
    "variant,theta,max_distortion,search_margin,bounds,targeted",
    [
        pytest.param("z", 1.0, 0.5, 0.01, (0.0, 1.0), True, id="z-increase"),
        pytest.param("f", 1.0, 0.5, 0.01, (0.0, 1.0), True, id="f-increase"),
        pytest.param("z", -1.0, 0.6, 0.0, (-1.0, 2.0), True, id="z-decrease-box"),
        pytest.param("z", 0.4, 0.4, 0.3, (0.0, 1.0), True, id="z-partial-step-margin"),
        pytest.param("f", -0.5, 0.7, 0.01, (0.0, 1.0), False, id="f-untargeted-decrease"),
        pytest.param("z", 1.0, 0.3, 0.01, (0.0, 1.0), False, id="z-untargeted"),
    ],
)
def test_jsma_follows_the_papers_algorithm(variant, theta, max_distortion, search_margin, bounds, targeted):
    n, shape, classes = 8, (2, 3, 2), 4
    model, x, y = _case(n, shape, classes, bounds)
    if targeted:
        goal = (y + 1 + torch.arange(n) % (classes - 1)) % classes
    else:  # Cleverhans' random wrong class per image, from the generator (one draw of offsets in 1..K-1)
        goal = (y + torch.randint(1, classes, (n,), generator=torch.Generator().manual_seed(5))) % classes
    attack = JSMA(variant=variant, theta=theta, max_distortion=max_distortion, search_margin=search_margin)
    result = attack(model, x, y, threat=L0(eps=math.inf, bounds=bounds), targets=goal if targeted else None,
                    generator=torch.Generator().manual_seed(5))
    x_ref, success_ref, forwards, backwards = replay_jsma(
        model, x, y, goal, targeted=targeted, variant=variant, theta=theta, max_distortion=max_distortion,
        search_margin=search_margin, bounds=bounds)
    torch.testing.assert_close(result.x_adv, x_ref, rtol=0, atol=1e-12)
    assert torch.equal(result.success, success_ref)
    changed = (result.x_adv != x).flatten(1)
    pixels = changed.view(n, shape[0], -1).any(1).sum(1)
    assert torch.equal(result.extras["changed_features"], changed.sum(1))
    expected = torch.where(success_ref, pixels.double(), torch.full((n,), math.inf, dtype=torch.float64))
    torch.testing.assert_close(result.extras["best_distance"], expected)
    assert result.backwards == backwards
    # One forward per step and image, the template's two per image, one to learn the classes when untargeted.
    assert result.forwards == forwards + 2 * n + (0 if targeted else 1)
    assert success_ref.any()
    assert (changed.sum(1) > 2).any() if max_distortion * 12 >= 4 else (changed.sum(1) == 2).all()  # the pair budget


@pytest.mark.parametrize(
    "options,message",
    [
        ({"variant": "softmax"}, "unknown variant 'softmax'; choose 'z' (logits) or 'f' (softmax)"),
        ({"theta": 0.0}, "theta must be nonzero and lie in [-1, 1] (units of the box width), got 0.0"),
        ({"theta": 1.0001}, "theta must be nonzero and lie in [-1, 1] (units of the box width), got 1.0001"),
        ({"theta": -1.0001}, "theta must be nonzero and lie in [-1, 1] (units of the box width), got -1.0001"),
        ({"max_distortion": 0.0}, "max_distortion must lie in (0, 1], got 0.0"),
        ({"max_distortion": 1.0001}, "max_distortion must lie in (0, 1], got 1.0001"),
        ({"search_margin": 1.0}, "search_margin must lie in [0, 1) (units of the box width), got 1.0"),
        ({"search_margin": -1e-9}, "search_margin must lie in [0, 1) (units of the box width), got -1e-09"),
    ],
)
def test_jsma_bad_hyperparameters_are_rejected_with_their_message(options, message):
    with pytest.raises(RobustlabError) as info:
        JSMA(**options)
    assert str(info.value) == message


def test_jsma_edge_hyperparameters_are_accepted():
    JSMA(variant="f", theta=1.0, max_distortion=1.0, search_margin=0.0)
    JSMA(theta=-1.0, max_distortion=1e-9, search_margin=0.999)


class _Linear(nn.Module):
    """Two classes: ``Z_1 = w . x - b = -Z_0``."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.tensor(w, dtype=torch.float64), b

    def forward(self, x):
        s = x.flatten(1) @ self.w - self.b
        return torch.stack([-s, s], dim=1)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 3.0)], ids=["unit-box", "box-width-4"])
@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_jsma_searches_only_features_with_more_room_than_the_margin(theta, bounds):
    # Feature 0 has exactly search_margin (0.01) of the box width of room left in the direction of theta: it is
    # not searched (strictly inside hi - margin * (hi - lo), as torchattacks' x < 0.99 on [0, 1]), although it has
    # the largest saliency; the one pair allowed (max_distortion 0.5 of 4 features) is then (1, 2), the first of
    # the tied best pairs. On a box of width 4 the room is 0.04, not 0.01 or 0.01 * (hi + lo).
    lo, hi = bounds
    width, sign = hi - lo, (1.0 if theta > 0 else -1.0)
    w = [sign * 5.0, sign * 4.0, sign * 1.0, sign * 1.0]
    edge = hi - 0.01 * width if theta > 0 else lo + 0.01 * width
    start, moved = (lo + 0.2 * width, hi) if theta > 0 else (lo + 0.8 * width, lo)
    before, after = [edge, start, start, start], [edge, moved, moved, start]
    bias = (sum(a * b for a, b in zip(w, before)) + sum(a * b for a, b in zip(w, after))) / 2  # flips between them
    x = torch.tensor([before], dtype=torch.float64)
    result = JSMA(theta=theta, max_distortion=0.5)(_Linear(w, bias), x, torch.tensor([0]),
                                                   threat=L0(eps=math.inf, bounds=bounds), targets=torch.tensor([1]))
    assert result.x_adv.tolist() == [after]
    assert result.success.all()


def test_untargeted_jsma_on_two_classes_aims_at_the_other_class():
    # The random wrong class of a two-class model is the other one (offsets drawn from 1..K-1 = {1}).
    x = torch.tensor([[0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
    model = _Linear([5.0, 4.0, 1.0, 1.0], 5.0)  # class 0 at x; moving features 0 and 1 to 1 flips it
    result = JSMA(max_distortion=0.5)(model, x, torch.tensor([0]), threat=L0(eps=math.inf),
                                      generator=torch.Generator().manual_seed(0))
    assert result.success.all()
    assert result.x_adv.tolist() == [[1.0, 1.0, 0.2, 0.2]]


def test_jsma_stops_with_a_failure_when_no_pair_qualifies():
    # Every feature already at the upper bound: the search set is empty at the first step, so the attack ends
    # there and returns the image unchanged, unbroken (the gradients of that step taken, nothing more).
    x = torch.ones(2, 4, dtype=torch.float64)
    result = JSMA(max_distortion=1.0)(_Linear([5.0, 4.0, 1.0, 1.0], 20.0), x, torch.tensor([0, 0]),
                                      threat=L0(eps=math.inf), targets=torch.tensor([1, 1]))
    assert not result.success.any()
    assert torch.equal(result.x_adv, x)
    assert torch.equal(result.extras["changed_features"], torch.tensor([0, 0]))
    assert result.backwards == 2 * 2


def test_jsma_full_pair_search_is_exact_beyond_float32_integers():
    # 4100 features: a flat pair index p * F + q passes 2 ** 24 from p = 4092, where float32 no longer holds
    # every integer; the best pair (4095, 4099) has flat index 4096 * 4100 - 1, which a float division would
    # round up to row 4096.
    k = 4100
    a, b = torch.zeros(1, k), torch.zeros(1, k)
    a[0, [4095, 4099]], b[0, [4095, 4099]] = 1.0, -1.0
    p, q, top = _best_of(a, b)
    assert (int(p), int(q), float(top)) == (4095, 4099, 4.0)


def _definition_of_pruning(alpha, beta, searchable, increase):
    """Per row, from ``_pick_pairs``' docstring: the signed gradients, the best seed pair's score ``L`` (seeds:
    the top 8 features by ``a`` and by ``-b``), the kept features (searchable, ``relu(a_p + max a) * relu(-(b_p +
    min b))`` at least ``L``; max and min over the row's search set) and whether the row is searched pruned
    (``L > 0`` and at most ``max(2, F // 4)`` features kept)."""
    sign = 1.0 if increase else -1.0
    rows = []
    for i in range(alpha.shape[0]):
        s = searchable[i]
        a = torch.where(s, sign * alpha[i], -math.inf)
        b = sign * beta[i]
        seeds = set(a.topk(8).indices.tolist()) | set(torch.where(s, b, math.inf).topk(8, largest=False).indices.tolist())
        lower = max([float(((a[p] + a[q]).clamp(min=0) * (-(b[p] + b[q])).clamp(min=0)))
                     for p in seeds for q in seeds if p != q])
        a_max, b_min = a[s].max(), b[s].min()
        kept = [p for p in range(len(a)) if bool(s[p])
                and float((a[p] + a_max).clamp(min=0) * (-(b[p] + b_min)).clamp(min=0)) >= lower]
        rows.append((a, b, kept, lower > 0 and len(kept) <= max(2, len(a) // 4)))
    return rows


@pytest.mark.parametrize("features", [8, 12, 64])
@pytest.mark.parametrize("increase", [True, False])
def test_pruned_pair_search_runs_on_exactly_the_features_its_bound_keeps(monkeypatch, features, increase):
    # The pruning is exact whatever it keeps (test_minimum_norm.py compares the pairs with an exhaustive search);
    # here its own rule is pinned, through the arguments of the pair searches: the rows searched pruned and, for
    # each, exactly its kept features (in increasing order, the signed gradients as they are); the other rows
    # searched in full. Rows on scales from 0.05 to 20 (a row's max and min are not the batch's; bounds below 1),
    # and one row where no pair qualifies with few features searchable (L = 0: a full search).
    import robustlab.attacks.jsma as jsma

    calls = []
    real = jsma._best_of
    monkeypatch.setattr(jsma, "_best_of", lambda a, b, index=None: calls.append((a, b, index)) or real(a, b, index))
    g = torch.Generator().manual_seed(features + 2 * increase)
    m = 40
    scale = torch.logspace(math.log10(0.05), math.log10(20.0), m)[:, None]
    alpha = scale * torch.randn(m, features, generator=g)
    beta = -0.5 * alpha + scale * torch.randn(m, features, generator=g)
    searchable = torch.rand(m, features, generator=g) < 0.85
    alpha[0] = -(1.0 if increase else -1.0) * alpha[0].abs()  # no pair with alpha_pq > 0 (decreasing: < 0)
    searchable[0] = torch.arange(features) < max(2, features // 4)
    _pick_pairs(alpha, beta, searchable, increase)
    rows = _definition_of_pruning(alpha, beta, searchable, increase)
    pruned = [i for i, row in enumerate(rows) if row[3]]
    full = [i for i, row in enumerate(rows) if not row[3]]
    assert 0 in full and len(pruned) >= 5 and len(full) >= 2
    if features > 8:  # max(2, F // 4) = 2 keeps only the best pair's two features at F = 8
        assert len({len(rows[i][2]) for i in pruned}) >= 2  # rows of different widths in one pruned search
    expected_calls = [c for c in (pruned, full) if c]
    assert len(calls) == len(expected_calls)
    if pruned:
        a_kept, b_kept, index = calls[0]
        assert a_kept.shape == (len(pruned), max(len(rows[i][2]) for i in pruned))
        for j, i in enumerate(pruned):
            a, b, kept, _ = rows[i]
            slots = torch.isfinite(a_kept[j])
            assert index[j][slots].tolist() == kept
            assert torch.equal(a_kept[j][slots], a[kept]) and torch.equal(b_kept[j][slots], b[kept])
    a_full, b_full, index = calls[-1]
    assert index is None
    assert torch.equal(a_full, torch.stack([rows[i][0] for i in full]))
    assert torch.equal(b_full, torch.stack([rows[i][1] for i in full]))
