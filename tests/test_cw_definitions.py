"""Carlini & Wagner pieces pinned to their definitions on model-free cases (issue 15): each
objective's floor is its infimum (f3's was -log 2, below what f3 can take: fixed), the objectives' inputs are checked, and they are computed in at
least float32. Nothing here trains a model."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from robustlab.attacks import CWL2
from robustlab.attacks.cw_objectives import OBJECTIVES, get_objective, objective_floor
from robustlab.errors import RobustlabError
from robustlab.threat import L2
from conftest import random_mlp

pytestmark = pytest.mark.usefixtures("single_thread")

LOG2 = math.log(2.0)
# The infimum of each objective (algorithms.md §1): f2 and f4 are clipped at 0; f1, f5 (-log 2F) and
# f7 (softplus(m) - log 2 of a logit margin) tend to -log 2 as the success grows certain; f3 is
# softplus(m) - log 2 of a probability margin m >= -1, so it tends to softplus(-1) - log 2; f6 stops
# at -kappa.
INFIMUM = {"f1": -LOG2, "f2": 0.0, "f3": math.log1p(math.exp(-1.0)) - LOG2, "f4": 0.0, "f5": -LOG2, "f6": 0.0,
           "f7": -LOG2}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_each_objective_floor_is_its_infimum(name, targeted):
    kappa = 2.5 if name == "f6" else 0.0
    floor = objective_floor(name, kappa)
    assert floor == pytest.approx(INFIMUM[name] - kappa, abs=1e-15)
    # A certain success (the target, or the winning wrong class, 60 above every other logit; the
    # true class 60 below) reaches the floor; anything less sure stays above it.
    logits = torch.tensor([[0.0, 60.0, -5.0], [0.0, 1.0, -5.0]], dtype=torch.float64)
    y, t = torch.tensor([0, 0]), torch.tensor([1, 1]) if targeted else None
    f = OBJECTIVES[name](logits, y, t, kappa=kappa)
    assert float(f[0]) == pytest.approx(floor, abs=1e-12)
    if name in ("f2", "f4"):  # clipped at 0: any sure enough success is at the floor
        assert float(f[1]) == floor
    else:
        assert float(f[1]) > floor + 1e-3


def test_default_objective_floors():
    assert objective_floor("f6") == 0.0
    assert objective_floor("f6", 1.5) == -1.5
    assert objective_floor("f2", 1.5) == 0.0 and objective_floor("f4") == 0.0
    assert objective_floor("f7", 1.5) == -LOG2


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_need_logits_of_shape_n_k(name):
    with pytest.raises(RobustlabError, match="logits"):
        OBJECTIVES[name](torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(RobustlabError, match="at least 2 classes"):
        OBJECTIVES[name](torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64))


def test_get_objective_resolves_names_and_rejects_others():
    for name, fn in OBJECTIVES.items():
        assert get_objective(name) is fn
    with pytest.raises(RobustlabError, match="unknown C&W objective 'f8'"):
        get_objective("f8")


@pytest.mark.parametrize("name", ["f1", "f2", "f3", "f4", "f5"])
def test_probability_objectives_are_computed_in_at_least_float32(name):
    # Half-precision logits: the softmax is taken in float32, so the result matches the float64 one
    # to float32 precision (in float16, F_t of a 10-logit gap is resolved to 3 digits only).
    z = torch.tensor([[0.0, 10.0, -3.0], [2.0, 1.0, 0.5]], dtype=torch.float16)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 0])
    got = OBJECTIVES[name](z, y, t)
    assert got.dtype == torch.float32
    expected = OBJECTIVES[name](z.double(), y, t)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)


def test_objectives_do_not_warn():
    z = torch.tensor([[0.0, 3.0, -1.0], [2.0, 1.0, 0.5]], dtype=torch.float64)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in OBJECTIVES.values():
            fn(z, y, t)
            fn(z, y)


def test_f7_at_margins_beyond_the_switch_to_softplus():
    # softplus(m) - log 2 for logit margins of +-50 (above 20 it is computed as softplus(m) - log 2).
    z = torch.tensor([[50.0, 0.0], [0.0, 50.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    expected = torch.tensor([50 + math.log1p(math.exp(-50)) - LOG2, math.log1p(math.exp(-50)) - LOG2],
                            dtype=torch.float64)
    torch.testing.assert_close(OBJECTIVES["f7"](z, y), expected, rtol=1e-12, atol=1e-12)


def test_f6_default_confidence_is_zero():
    # max(Z_y - max_{i != y} Z_i, -kappa) with kappa = 0: a misclassification by 3 is clipped to 0.
    z = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    assert float(OBJECTIVES["f6"](z, torch.tensor([0]))) == 0.0


# --- C&W L2 replayed from the paper and the authors' l2_attack.py ---------------------------------


def _l2_case(n=5, bounds=(0.0, 1.0), seed=0, at_bounds=False, classes=3):
    """A tiny MLP, inputs in the box (with ``at_bounds``, features 0 and 1 exactly at lo and hi, as
    image pixels often are) and the labels it gives them."""
    model = random_mlp(8, classes=classes, seed=seed)
    lo, hi = bounds
    x = lo + (hi - lo) * torch.rand(n, 8, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    if at_bounds:
        x[:, 0], x[:, 1] = lo, hi
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _confident_success(z: torch.Tensor, y: int, t: int | None, kappa: float) -> bool:
    """The authors' ``compare``: the target wins with its logit lowered by kappa (untargeted: some
    other class beats the true logit raised by kappa)."""
    z = z.clone()
    if t is None:
        z[y] += kappa
        return int(z.argmax()) != y
    z[t] -= kappa
    return int(z.argmax()) == t


def replay_cw_l2(model, x, y, t, *, steps, iterations, const, lr, kappa, abort, box, bounds):
    """One sample at a time: Adam (torch.optim.Adam) on ``||x' - x||² + c max(Z_other - Z_t + kappa, 0)``
    through the box encoding, the authors' binary search and abort-early; returns the smallest
    confident success per sample, the c that found it, and the returned point."""
    lo, hi = bounds
    calls = 0
    out_x = x.clone()
    out_d = torch.full((len(x),), math.inf, dtype=x.dtype)
    out_c = torch.full((len(x),), math.nan, dtype=torch.float64)
    for i in range(len(x)):
        xi, yi, ti = x[i:i + 1], int(y[i]), None if t is None else int(t[i])
        c, lower, upper = const, 0.0, 1e10
        last = xi
        for step in range(steps):
            if steps >= 10 and step == steps - 1:
                c = upper
            if box == "tanh":
                v = torch.atanh((2 * (xi - lo) / (hi - lo) - 1) * 0.999999).requires_grad_()
                image_of = lambda v: lo + (hi - lo) * (torch.tanh(v) + 1) / 2  # noqa: E731
            else:
                v = xi.clone().requires_grad_()
                image_of = (lambda v: v.clamp(lo, hi)) if box == "clip" else (lambda v: v)
            adam = torch.optim.Adam([v], lr=lr)
            succeeded, previous = False, math.inf
            for it in range(iterations):
                image = image_of(v)
                z = model(image)[0]
                calls += 1
                cls = yi if ti is None else ti
                others = torch.cat([z[:cls], z[cls + 1:]]).max()
                margin = z[cls] - others if ti is None else others - z[cls]
                hinge = (margin + kappa).clamp(min=0)
                dist2 = ((v if box == "clip" else image) - xi).pow(2).sum()
                loss = dist2 + c * hinge
                image_d = image.detach()
                last = image_d
                if _confident_success(z.detach(), yi, ti, kappa):
                    succeeded = True
                    d = float((image_d - xi).norm())
                    if d < out_d[i]:
                        out_d[i], out_x[i], out_c[i] = d, image_d[0], c
                if abort and it % max(1, iterations // 10) == 0:
                    if float(loss.detach()) > 0.9999 * previous:
                        break
                    previous = float(loss.detach())
                adam.zero_grad()
                loss.backward()
                adam.step()
                if box == "project":
                    with torch.no_grad():
                        v.clamp_(lo, hi)
            if succeeded:
                upper = min(upper, c)
            else:
                lower = max(lower, c)
            c = (lower + upper) / 2 if upper < 1e9 else (c if succeeded else c * 10)
        if not math.isfinite(out_d[i]):
            out_x[i] = last[0]
    return out_x, out_d, out_c, calls


@pytest.mark.parametrize(
    "box,bounds,targeted,kappa,abort,steps",
    [
        pytest.param("tanh", (0.0, 1.0), False, 0.0, True, 4, id="tanh-untargeted-abort"),
        pytest.param("tanh", (-1.0, 2.0), True, 1.0, True, 10, id="tanh-box-targeted-kappa-10-steps"),
        pytest.param("clip", (0.0, 1.0), False, 0.0, False, 3, id="clip"),
        # Features exactly at the bounds: clip's gradient (the authors' tf.clip_by_value, torch.clamp)
        # passes there, so they can move inwards; abort-early reads the per-sample distance ||v - x||².
        pytest.param("clip", (0.0, 1.0), True, 0.0, True, 3, id="clip-at-bounds-abort"),
        pytest.param("project", (0.0, 1.0), True, 0.0, True, 3, id="project"),
        # Fewer than 10 iterations: abort-early checks at every step (max(1, 8 // 10)); 15 // 10 too.
        pytest.param("tanh", (0.0, 1.0), False, 0.0, True, 3, id="tanh-abort-every-step"),
        pytest.param("tanh", (0.0, 1.0), True, 0.0, True, 3, id="tanh-abort-every-step-15"),
        # A large c: abort-early's relative test on ||x' - x||² + c (f - floor) hinges on the floor
        # (0 for f6 at kappa 0, -kappa otherwise); 5 classes, so the target must beat every other by kappa.
        pytest.param("tanh", (0.0, 1.0), False, 0.0, True, 2, id="tanh-large-c-abort"),
        pytest.param("tanh", (0.0, 1.0), False, 0.0, True, 2, id="tanh-large-c-abort-100"),
        pytest.param("tanh", (0.0, 1.0), True, 0.5, True, 3, id="tanh-large-c-kappa-abort-5-classes"),
    ],
)
def test_cw_l2_follows_the_authors_search(box, bounds, targeted, kappa, abort, steps, request):
    # Several c per sample (x10 until a success, then bisection; with 10 steps the last one uses
    # c = upper), Adam restarted at each c, abort-early, the confident success, the smallest L2.
    at_bounds = request.node.callspec.id == "clip-at-bounds-abort"
    case_id = request.node.callspec.id
    classes = 5 if case_id.endswith("5-classes") else 3
    model, x, y = _l2_case(bounds=bounds, at_bounds=at_bounds, classes=classes, seed=2 if classes == 5 else 0)
    t = (y + 1) % classes if targeted else None
    iterations = {"tanh-abort-every-step": 8, "tanh-abort-every-step-15": 15,
                  "tanh-large-c-abort-100": 100}.get(request.node.callspec.id, 20)
    const, lr = (1e3 if "large-c" in case_id else 0.05), 0.05
    attack = CWL2(binary_search_steps=steps, max_iterations=iterations, initial_const=const, learning_rate=lr,
                  confidence=kappa, abort_early=abort, box=box)
    result = attack(model, x, y, threat=L2(eps=math.inf, bounds=bounds), targets=t)
    x_ref, d_ref, c_ref, calls = replay_cw_l2(model, x, y, t, steps=steps, iterations=iterations, const=const,
                                              lr=lr, kappa=kappa, abort=abort, box=box, bounds=bounds)
    assert result.backwards == calls  # every abort-early decision as the replay's
    torch.testing.assert_close(result.extras["best_distance"], d_ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(result.extras["best_const"], c_ref.double(), rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(result.x_adv, x_ref, rtol=1e-7, atol=1e-9)
    found = torch.isfinite(d_ref)
    assert found.any()
    if iterations == 20 and not at_bounds and "large-c" not in case_id:
        assert len(set(c_ref[found].tolist())) > 1  # the search moved c
    if at_bounds:  # some feature at a bound moved inwards
        assert ((result.x_adv[:, :2] - x[:, :2]).abs() > 1e-3).any()


class _Linear2(nn.Module):
    """Two classes with ``Z_0 - Z_1 = w . x`` (``||w|| = 1``)."""

    w = torch.tensor([0.6, 0.8, 0.0, 0.0], dtype=torch.float64)

    def forward(self, x):
        s = x @ self.w
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_cw_l2_last_of_ten_steps_tries_the_upper_bound_or_1e10():
    # ||delta||² + c max(w . (x + delta), 0) is minimised at delta = -c w / 2 while the margin m0 = w . x
    # stays positive: the sample is broken only for c > 2 m0 = 40. From c = 1e-6, x10 per failure:
    # steps 0-7 fail (up to 10), step 8 succeeds at 100, and the last step repeats c = upper = 100
    # (a no-op: the same run again). Where no upper bound was found yet, the last step tries 1e10.
    x = torch.tensor([[12.0, 16.0, 1.0, -1.0], [0.3, 0.4, 0.0, 0.0]], dtype=torch.float64)  # m0 = 20, 0.5
    y = torch.zeros(2, dtype=torch.int64)
    bounds, steps = (-100.0, 100.0), 10
    attack = CWL2(binary_search_steps=steps, max_iterations=20, initial_const=1e-6, learning_rate=0.05)
    result = attack(_Linear2(), x, y, threat=L2(eps=math.inf, bounds=bounds))
    x_ref, d_ref, c_ref, _ = replay_cw_l2(_Linear2(), x, y, None, steps=steps, iterations=20, const=1e-6, lr=0.05,
                                       kappa=0.0, abort=True, box="tanh", bounds=bounds)
    torch.testing.assert_close(result.extras["best_const"], c_ref, rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(result.extras["best_distance"], d_ref, rtol=1e-7, atol=1e-9)
    assert float(c_ref[0]) == pytest.approx(100.0)


def test_cw_l2_keeps_float32_inputs_in_float32():
    model, x, y = _l2_case()
    model, x = model.float(), x.float()
    result = CWL2(binary_search_steps=2, max_iterations=5, initial_const=1.0)(model, x, y, threat=L2(eps=math.inf))
    assert result.x_adv.dtype == torch.float32
    assert result.extras["best_distance"].dtype == torch.float32
    assert result.extras["best_const"].dtype == torch.float32


class _Trailing(nn.Module):
    """Three classes, logits ``(0, s, s - 1)`` with ``s = x_0``: class 2 always trails class 1 by 1."""

    def forward(self, x):
        s = x[:, 0]
        return torch.stack([torch.zeros_like(s), s, s - 1], dim=1)


def test_cw_l2_confident_success_needs_the_target_ahead_of_every_class_by_kappa():
    # The target (1) leads the true class (0) by 5 but class 2 by 1 only: with kappa 2 no point is a
    # confident success (the authors' compare lowers the target's logit by kappa), so none is recorded.
    x = torch.tensor([[5.0, 0.0, 0.0]])
    result = CWL2(binary_search_steps=2, max_iterations=10, confidence=2.0)(
        _Trailing(), x, torch.tensor([0]), threat=L2(eps=math.inf, bounds=(-10.0, 10.0)), targets=torch.tensor([1]))
    assert torch.isinf(result.extras["best_distance"]).all()


def test_cw_l2_abort_early_measures_progress_of_the_loss_above_its_floor():
    # ||x' - x||² + c (f6 - 0) on a linear model (m0 = 0.5, c = 1, lr 0.01): the loss falls to 0.25 and
    # stalls; between the checks at 60 and 70 it falls by 7.6e-5, more than 0.01% of itself (2.5e-5), so
    # the search goes on and stops at 80, where it rises. Measured on the loss plus any constant (a wrong
    # floor: + c log 2 for another objective's), the same fall is under 0.01% and it would stop at 70.
    x = torch.tensor([[0.3, 0.4, 0.0, 0.0]], dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.int64)
    bounds = (-1.0, 1.0)
    result = CWL2(binary_search_steps=1, max_iterations=100, initial_const=1.0, learning_rate=0.01)(
        _Linear2(), x, y, threat=L2(eps=math.inf, bounds=bounds))
    *_, calls = replay_cw_l2(_Linear2(), x, y, None, steps=1, iterations=100, const=1.0, lr=0.01, kappa=0.0,
                             abort=True, box="tanh", bounds=bounds)
    assert result.backwards == calls == 81
