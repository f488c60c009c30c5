"""JSMA replayed one image at a time from Papernot et al. (EuroS&P 2016, Algorithms 2-3, the pairwise
saliency map) and Cleverhans' ``SaliencyMapMethod`` (the untargeted mode's random targets), with an exhaustive
search over pairs, on a fixed tiny tanh network (issue 15). Nothing here trains a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import JSMA
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


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_jsma_searches_only_features_with_more_room_than_the_margin(theta):
    # Feature 0 has exactly search_margin (0.01) of room left in the direction of theta: it is not searched
    # (strictly below hi - margin, as torchattacks' x < 0.99), although it has the largest saliency; the one pair
    # allowed (max_distortion 0.5 of 4 features) is then (1, 2), the first of the tied best pairs.
    sign = 1.0 if theta > 0 else -1.0
    model = _Linear([sign * 5.0, sign * 4.0, sign * 1.0, sign * 1.0], 10.0 if theta > 0 else -1.0)
    x = torch.tensor([[0.99, 0.2, 0.2, 0.2]] if theta > 0 else [[0.01, 0.8, 0.8, 0.8]], dtype=torch.float64)
    y, t = torch.tensor([0]), torch.tensor([1])
    result = JSMA(theta=theta, max_distortion=0.5)(model, x, y, threat=L0(eps=math.inf), targets=t)
    moved = 1.0 if theta > 0 else 0.0
    assert result.x_adv.tolist() == [[float(x[0, 0]), moved, moved, float(x[0, 3])]]
    assert result.success.all()
