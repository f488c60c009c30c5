"""DeepFool pinned to its definition (Moosavi-Dezfooli et al., CVPR 2016; Foolbox's conventions),
model-free: every iterate of robustlab's batched DeepFool equals a plain per-sample replay of the
paper's algorithm on a fixed small network, and linear multi-class models give the step in
closed form (nearest linearised boundary, ``|f_l| / ||w_l||_q`` along ``w_l / ||w_l||_2`` for L2
and ``sign(w_l)`` for L∞, overshoot applied to the total perturbation, candidates among the top
clean logits, the targeted variant against the strongest other class, the box mask).
No trained model: these tests are the fast selection of the mutation run (benchmarks/mutation.py)."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.attacks import DeepFool
from robustlab.threat import L2, NORMS, Linf
from conftest import linear_model, tanh_net, unit_box_inputs

pytestmark = pytest.mark.usefixtures("single_thread")

FAR = (-10.0, 10.0)  # a box that never binds


def reference_deepfool(model, x, y, norm, *, steps=50, overshoot=0.02, candidates=10, bounds=FAR, target=None):
    """The paper's DeepFool for one sample ``x`` ``[D]``, written out plainly: at ``x_i``, for each
    candidate ``k`` (the top ``candidates - 1`` clean logits other than ``y``; targeted: only ``t``,
    against the strongest other class at ``x_i``), ``f_k = Z_k - Z_ref`` and ``w_k = grad f_k``
    (coordinates at a face of the box whose gradient points out of it dropped); the nearest
    ``l = argmin |f_k| / ||w_k||_q``; ``r = |f_l| / ||w_l||_2^2 w_l`` (L2) or
    ``|f_l| / ||w_l||_1 sign(w_l)`` (L∞); ``x_{i+1} = clip(x + (1 + overshoot) sum r)``.
    Stops once the label changes (the target wins) by more than a tie (robustlab's ``_TIE_MARGIN``:
    the lead must exceed 1e-5 of the largest logit, at least 1e-5). Returns every iterate."""
    lo, hi = bounds
    q = 2 if norm == "L2" else 1
    with torch.no_grad():
        clean = model(x[None])[0]
    if target is None:
        others = clean.clone()
        others[y] = -math.inf
        classes = others.argsort(descending=True)[: min(candidates, len(clean)) - 1].tolist()
    iterates, x_i, r_tot = [], x.clone(), torch.zeros_like(x)
    for _ in range(steps):
        with torch.no_grad():
            z = model(x_i[None])[0]
        winner = y if target is None else target
        rest = z.clone()
        rest[winner] = -math.inf
        lead = float(rest.max() - z[winner]) if target is None else float(z[winner] - rest.max())
        if lead > 1e-5 * max(float(z.abs().max()), 1.0):  # past the tie by robustlab's margin
            break
        if target is not None:
            rest = z.clone()
            rest[target] = -math.inf
            cands, ref = [target], int(rest.argmax())
        else:
            cands, ref = classes, y
        best = None
        for k in cands:
            xr = x_i.clone().requires_grad_(True)
            out = model(xr[None])[0]
            f = out[k] - out[ref]
            (w,) = torch.autograd.grad(f, xr)
            w = torch.where(((x_i <= lo) & (w < 0)) | ((x_i >= hi) & (w > 0)), torch.zeros_like(w), w)
            dist = abs(f.item()) / (w.norm(p=q).item() + 1e-8)
            if best is None or dist < best[0]:
                best = (dist, f.item(), w)
        dist, f, w = best
        r = abs(f) / (float(w.norm()) ** 2 + 1e-8) * w if norm == "L2" else dist * w.sign()
        r_tot = r_tot + r
        x_i = (x + (1 + overshoot) * r_tot).clamp(lo, hi)
        iterates.append(x_i)
    return iterates


def check_against_reference(norm, bounds, *, seed=0, targets=None, **options):
    model = tanh_net(seed)
    x = unit_box_inputs()
    with torch.no_grad():
        y = model(x).argmax(1)
    result = DeepFool(**options)(model, x, y, threat=NORMS[norm](eps=math.inf, bounds=bounds), targets=targets)
    iterations = result.extras["iterations"]
    for i in range(len(x)):
        want = reference_deepfool(model, x[i], int(y[i]), norm, bounds=bounds,
                                  target=None if targets is None else int(targets[i]), **options)
        assert int(iterations[i]) == len(want), i
        expected = want[-1] if want else x[i]
        torch.testing.assert_close(result.x_adv[i], expected, rtol=1e-9, atol=1e-12)
    return result


@pytest.mark.parametrize("norm", ["L2", "Linf"])
@pytest.mark.parametrize("bounds", [FAR, (0.0, 1.0)], ids=["free", "box"])
def test_every_iterate_is_the_papers_deepfool_step(norm, bounds):
    # candidates=3: only the two wrong classes with the highest clean logits are linearised.
    result = check_against_reference(norm, bounds, steps=50, overshoot=0.02, candidates=3)
    assert result.success.all()
    assert (result.extras["iterations"] >= 2).any()  # not only one-step cases
    torch.testing.assert_close(result.extras["best_distance"], result.distance)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_a_sample_not_broken_within_the_steps_returns_its_last_iterate(norm):
    # Cut off after 2 steps without overshoot: some samples are not broken yet.
    result = check_against_reference(norm, (0.0, 1.0), steps=2, overshoot=0.0, candidates=4)
    assert (~result.success).any() and result.success.any()
    assert torch.isinf(result.extras["best_distance"][~result.success]).all()
    assert (result.extras["iterations"][~result.success] == 2).all()


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_targeted_steps_against_the_strongest_other_class(norm):
    x = unit_box_inputs()
    with torch.no_grad():
        logits = tanh_net()(x)
    # The weakest class as target: the strongest other class changes along the way.
    targets = logits.argmin(1)
    result = check_against_reference(norm, FAR, targets=targets, steps=50, overshoot=0.02)
    assert result.success.all() and torch.equal(result.predictions, targets)


# --- linear models: the step in closed form ---------------------------------------------------------


# Class 0 wins at the origin with logits (0, -0.2, -0.15, -0.5). The boundaries Z_k = Z_0 lie at
# |f_k| / ||w_k||_q: class 1 (w = (1, 0, 0)) at 0.2 in L2 and L∞ (dual L1); class 2
# (w = (0.3, 0.3, 0.3)) at 0.289 in L2 but 0.167 in L∞; class 3 (w = (0, 0, 4)) at 0.125 in both.
FOUR = linear_model([[0, 0, 0], [1, 0, 0], [0.3, 0.3, 0.3], [0, 0, 4]], [0, -0.2, -0.15, -0.5])
ORIGIN, LABEL = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
SIXTH = 1 / 6


@pytest.mark.parametrize(
    "norm,candidates,expected",
    [
        # All classes: class 3 is nearest in both norms; the step moves along w_3 onto its boundary.
        ("L2", 10, [0, 0, 0.125]), ("Linf", 10, [0, 0, 0.125]),
        # The top 2 wrong classes by clean logit (2 and 1; not 3): L2 picks class 1 and steps
        # along w_1; L∞ (distance with the dual norm) picks class 2 and steps along sign(w_2).
        ("L2", 3, [0.2, 0, 0]), ("Linf", 3, [SIXTH, SIXTH, SIXTH]),
        # Only class 2, the wrong class with the highest clean logit: L2 step 0.15 w_2 / ||w_2||^2.
        ("L2", 2, [SIXTH, SIXTH, SIXTH]),
    ],
)
def test_one_step_onto_the_nearest_linearised_boundary_among_the_candidates(norm, candidates, expected):
    threat = NORMS[norm](eps=math.inf, bounds=FAR)
    result = DeepFool(steps=1, overshoot=0.0, candidates=candidates)(FOUR, ORIGIN, LABEL, threat=threat)
    # Exactly on the boundary (some other class may win there); one backward per candidate class.
    torch.testing.assert_close(result.x_adv, torch.tensor([expected], dtype=torch.float64))
    assert result.backwards == min(candidates, 4) - 1
    # With the overshoot the same step, lengthened by 1 + overshoot, crosses the boundary.
    over = DeepFool(steps=1, overshoot=0.02, candidates=candidates)(FOUR, ORIGIN, LABEL, threat=threat)
    torch.testing.assert_close(over.x_adv, 1.02 * torch.tensor([expected], dtype=torch.float64))
    assert over.success.all() and over.extras["iterations"].tolist() == [1]


def test_l2_distances_are_measured_in_the_l2_norm():
    # Logits (0, -0.2, -0.1, -0.13) at 0 with w = (1, 0, 0), (0.3, 0.3, 0.3), (0.5, 0.5, 0): L2
    # distances 0.2, 0.192, 0.184, so class 3 is nearest (any p > 2 would favour class 1, whose
    # w has a single coordinate); the step 0.13 w_3 / ||w_3||^2 = (0.13, 0.13, 0).
    model = linear_model([[0, 0, 0], [1, 0, 0], [0.3, 0.3, 0.3], [0.5, 0.5, 0]], [0, -0.2, -0.1, -0.13])
    result = DeepFool(steps=1, overshoot=0.0)(model, ORIGIN, LABEL, threat=L2(eps=math.inf, bounds=FAR))
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.13, 0.13, 0.0]], dtype=torch.float64))


def test_l2_step_is_along_w_and_linf_step_along_its_sign():
    # Two classes, Z_1 - Z_0 = <w, x> - 1 with w = (2, -1, 0.5); from 0 the boundary is 1 away in
    # <w, .>: L2 step w / ||w||^2, L∞ step sign(w) / ||w||_1.
    model = linear_model([[0, 0, 0], [2, -1, 0.5]], [0, -1])
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    l2 = DeepFool(steps=1, overshoot=0.1)(model, ORIGIN, LABEL, threat=L2(eps=math.inf, bounds=FAR))
    torch.testing.assert_close(l2.x_adv[0], 1.1 * w / (w @ w))
    linf = DeepFool(steps=1, overshoot=0.1)(model, ORIGIN, LABEL, threat=Linf(eps=math.inf, bounds=FAR))
    torch.testing.assert_close(linf.x_adv[0], 1.1 * w.sign() / w.abs().sum())
    assert l2.success.all() and linf.success.all()


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_coordinates_pushed_out_of_the_box_are_left_out(norm):
    # On a face of the box, a coordinate whose gradient points out of it is dropped from w: the
    # step uses the others only (and reaches the boundary, where Foolbox's unmasked step would be
    # clipped short). Lower face: x_0 = 0 with w_0 = -2; the gap 0.5 is covered by (0, 1, 1).
    threat = NORMS[norm](eps=math.inf, bounds=(0.0, 1.0))
    model = linear_model([[0, 0, 0], [-2, 1, 1]], [0, -0.5])
    result = DeepFool(steps=1, overshoot=0.0)(model, ORIGIN, LABEL, threat=threat)
    torch.testing.assert_close(result.x_adv, torch.tensor([[0.0, 0.25, 0.25]], dtype=torch.float64))
    # Upper face: x_0 = x_1 = 1 with w_0, w_1 > 0; the gap 0.5 is covered by x_2 alone.
    model = linear_model([[0, 0, 0], [2, 1, 1]], [0, -3.5])
    x = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    result = DeepFool(steps=1, overshoot=0.0)(model, x, LABEL, threat=threat)
    torch.testing.assert_close(result.x_adv, torch.tensor([[1.0, 1.0, 0.5]], dtype=torch.float64))


def test_a_sample_counts_as_broken_past_the_tie_margin_of_its_own_logits():
    # Z_0 = x_2 (the logit scale: 0 or 10), Z_1 = x_2 + x_0 - 1: from x_0 = 1 - gap one step with
    # overshoot 1e-5 leaves Z_1 ahead by lead = 1e-5 * gap. The search counts a sample as broken
    # only past a tie by 1e-5 of its largest |logit| (at least 1e-5): gaps 0.5 and 5 stay below
    # (scales 1 and 10), gaps 1.5 and 20 pass; the first two are misclassified all the same.
    model = linear_model([[0, 0, 1], [1, 0, 1]], [0, -1])
    gap = torch.tensor([0.5, 1.5, 5.0, 20.0], dtype=torch.float64)
    scale = torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64)
    x = torch.stack([1 - gap, torch.zeros(4, dtype=torch.float64), scale], dim=1)
    y = torch.zeros(4, dtype=torch.int64)
    result = DeepFool(steps=1, overshoot=1e-5)(model, x, y, threat=L2(eps=math.inf, bounds=(-30.0, 30.0)))
    # The step: gap / (||w||^2 + 1e-8) along w = (1, 0, 0), lengthened by 1 + overshoot.
    torch.testing.assert_close(result.x_adv[:, 0], 1 - gap + (1 + 1e-5) * gap / (1 + 1e-8), rtol=0, atol=1e-12)
    assert result.extras["best_distance"].isfinite().tolist() == [False, True, False, True]
    assert result.extras["iterations"].dtype == torch.int64
