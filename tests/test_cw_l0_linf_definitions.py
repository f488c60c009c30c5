"""C&W L0 and L∞ replayed one sample at a time from the paper (Sec. VI) and the authors' code
(``carlini/nn_robust_attacks``: ``l0_attack.py``, ``li_attack.py``), with ``torch.optim.Adam`` and
autograd through the tanh box, on a fixed tiny tanh network (issue 15). Nothing here trains a model.

Where the library documents a deviation from the code, the replay follows the library: the box
``[lo, hi]`` instead of ``[-0.5, 0.5]`` (thresholds scaled by ``hi - lo``), the argmax checked with the
loss at the same iterate, and a sample that never succeeds returning its last iterate (not the clean
input)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import CWL0, CWL2, CWLinf
from robustlab.errors import RobustlabError
from robustlab.threat import L0, Linf
from conftest import random_mlp

pytestmark = pytest.mark.usefixtures("single_thread")


def _case(shape, n=4, bounds=(0.0, 1.0), seed=0, classes=3):
    model = random_mlp(math.prod(shape), classes=classes, seed=seed)
    lo, hi = bounds
    g = torch.Generator().manual_seed(seed + 100)
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _hinge(z, y, t, kappa):
    """``max(Z_other - Z_t + kappa, 0)`` (targeted), ``max(Z_y - Z_other + kappa, 0)`` (untargeted)."""
    cls = y if t is None else t
    others = torch.cat([z[:cls], z[cls + 1:]]).max()
    margin = z[cls] - others if t is None else others - z[cls]
    return (margin + kappa).clamp(min=0)


def _adversarial(z, y, t):
    return int(z.argmax()) == t if t is not None else int(z.argmax()) != y


class _Box:
    """The tanh change of variables in ``[lo, hi]``: ``x' = lo + (hi - lo) (tanh(w) + 1) / 2``."""

    def __init__(self, bounds):
        self.lo, self.hi = bounds

    def to_w(self, x):
        return torch.atanh((2 * (x - self.lo) / (self.hi - self.lo) - 1) * 0.999999)

    def image(self, w):
        return self.lo + (self.hi - self.lo) * (torch.tanh(w) + 1) / 2


# --- the pieces, against the authors' code at their edges ------------------------------------------


def _solver(x, mask, tau=None):
    from robustlab.attacks.carlini_wagner import _Adam, _Solver

    n = x.shape[0]
    return _Solver(rows=torch.arange(n), x=x, y=torch.zeros(n, dtype=torch.int64), t=None, start=x, w=x,
                   adam=_Adam.fresh(x, 0.1), const=x.new_ones(n), steps=torch.zeros(n, dtype=torch.int64),
                   mask=mask, tau=x.new_ones(n) if tau is None else tau)


def authors_freeze(delta, grad, valid, width):
    """``l0_attack.py``'s loop on one sample: ``delta``, ``grad`` ``[P, C]``, ``valid`` ``[P]`` (0/1); returns
    the new ``valid``."""
    equal_count = int((delta.abs().amax(dim=1) >= 1e-4 * width).sum())
    total_change = delta.sum(dim=1).abs() * grad.abs().sum(dim=1)
    valid = valid.clone()
    did = 0
    for e in total_change.argsort(stable=True).tolist():
        if valid[e]:
            did += 1
            valid[e] = 0
            if total_change[e] > 0.01:
                break
            if did >= 0.3 * equal_count ** 0.5:
                break
    return valid


def test_cw_l0_freezes_pixels_as_the_authors_loop():
    # Random scores with 0..400 changed pixels (up to ceil(0.3 sqrt(400)) = 6 frozen; none changed: one frozen),
    # unchanged pixels moved by round-off only (as through tanh and back: distinct scores, no ties), some pixels
    # frozen already, a score of exactly 0.01 (frozen, and not the last: the authors stop *after* a pixel
    # scoring above 0.01), and a sample with every pixel frozen (finished).
    g = torch.Generator().manual_seed(0)
    n, c, side = 12, 2, 20
    width = 2.0
    x = torch.rand(n, c, side, side, generator=g, dtype=torch.float64) * width - 1
    delta = 1e-9 * torch.rand(n, c, side, side, generator=g, dtype=torch.float64)
    grad = torch.randn(n, c, side, side, generator=g, dtype=torch.float64)
    mask = torch.ones(n, 1, side, side, dtype=torch.float64)
    for i in range(n):
        k = [1, 2, 11, 12, 13, 50, 100, 400, 0, 30, 30, 5][i]
        where = torch.randperm(side * side, generator=g)[:k]
        d = delta[i].flatten(1)
        d[:, where] = 1e-3 * torch.rand(c, k, generator=g, dtype=torch.float64)
        if i % 3 == 0:  # some scores above the limit
            d[:, where[: k // 2]] *= 50
        mask[i].view(-1)[torch.randperm(side * side, generator=g)[: 3 * i]] = 0
    # Sample 9: 30 changed pixels (cap ceil(0.3 sqrt 30) = 2), the lowest score exactly 0.01 = |0.005 + 0| (1 + 1).
    x[9], mask[9] = 0.0, 0.0  # x = 0: image - x is delta exactly
    mask[9].view(-1)[:30] = 1.0
    delta[9] = 0.0
    delta[9].view(c, -1)[0, :30] = 0.005 * torch.linspace(1, 2, 30, dtype=torch.float64)
    grad[9].view(c, -1)[:, :30] = 1.0
    mask[11] = 0.0
    delta *= mask
    image = x + delta
    solver = _solver(x, mask.clone())
    finished = CWL0()._tighten(solver, image, grad, width)
    assert finished.tolist() == [False] * 11 + [True]
    for i in range(n):
        expected = authors_freeze((image[i] - x[i]).flatten(1).T, grad[i].flatten(1).T, mask[i].flatten(), width)
        assert solver.mask[i].flatten().tolist() == expected.tolist(), i
    frozen = (mask - solver.mask).flatten(1).sum(1)
    assert frozen[:11].max() == 6 and frozen[8] == 1 and frozen[9] == 2


def test_cw_l0_freeze_cap_is_computed_in_float64_as_the_authors():
    # 2500 changed pixels: the authors stop once did >= .3 * 2500 ** .5 = 15.0 (Python floats); in float32,
    # 0.3 * 50 rounds to 15.000001 and would let a 16th pixel be frozen.
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(1, 1, 50, 50, dtype=torch.float64)
    image = 1e-3 + 1e-3 * torch.rand(1, 1, 50, 50, generator=g, dtype=torch.float64)  # scores below 0.01
    grad = torch.rand(1, 1, 50, 50, generator=g, dtype=torch.float64)
    solver = _solver(x, torch.ones(1, 1, 50, 50, dtype=torch.float64))
    CWL0()._tighten(solver, image, grad, 1.0)
    expected = authors_freeze(image[0].flatten(1).T, grad[0].flatten(1).T, torch.ones(2500), 1.0)
    assert solver.mask.flatten().tolist() == expected.tolist()
    assert int((solver.mask == 0).sum()) == 15


def test_cw_l0_counts_changed_pixels_with_the_authors_tolerance():
    # 11 pixels moved by 1e-3 and one by exactly 1e-4 (hi - lo) = 2e-4 (changed: the authors' "equal" is
    # |d| < 1e-4 on their box of width 1): 12 changed, ceil(0.3 sqrt 12) = 2 frozen; with that pixel moved by
    # 1e-4 only (equal), 11 changed and 1 frozen.
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    delta = torch.zeros_like(x)
    delta.view(2, -1)[:, :11] = 1e-3 * (1 + torch.rand(2, 11, generator=g, dtype=torch.float64))
    delta.view(2, -1)[:, 11] = torch.tensor([2e-4, 1e-4], dtype=torch.float64)
    delta.view(2, -1)[:, 12:] = 1e-9 * torch.rand(2, 4, generator=g, dtype=torch.float64)
    grad = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)  # every score below 0.01
    solver = _solver(x, torch.ones_like(x))
    CWL0()._tighten(solver, x + delta, grad, 2.0)
    for i in range(2):
        expected = authors_freeze(delta[i].flatten(1).T, grad[i].flatten(1).T, torch.ones(16), 2.0)
        assert solver.mask[i].flatten().tolist() == expected.tolist()
    assert (solver.mask == 0).flatten(1).sum(1).tolist() == [2, 1]


def test_cw_l0_stops_freezing_after_the_first_pixel_above_the_limit_per_sample():
    # 16 changed pixels each (cap ceil(0.3 * 4) = 2): no score above 0.01 -> 2 frozen; every score above -> 1
    # frozen (the first one, then stop); the rule is per sample, whatever the other samples of the batch hold.
    g = torch.Generator().manual_seed(4)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    delta = 1e-3 * (1 + torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64))
    grad = (1 + torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)) * torch.tensor([1.0, 100.0, 1.0]).view(3, 1, 1, 1)
    grad[2].view(-1)[delta[2].view(-1).argmax()] = 100.0  # one score above the limit, not the lowest
    solver = _solver(x, torch.ones_like(x))
    CWL0()._tighten(solver, x + delta, grad, 1.0)
    for i in range(3):
        expected = authors_freeze(delta[i].flatten(1).T, grad[i].flatten(1).T, torch.ones(16), 1.0)
        assert solver.mask[i].flatten().tolist() == expected.tolist()
    assert (solver.mask == 0).flatten(1).sum(1).tolist() == [2, 1, 2]


def test_cw_l0_freezes_features_of_flat_inputs_one_by_one():
    # [N, D] inputs: each feature is a pixel; the 3 changed features have scores 1e-4, 2e-4 (below the limit)
    # and 0.5: cap ceil(0.3 sqrt 3) = 1 freezes the lowest one only.
    x = torch.zeros(1, 5, dtype=torch.float64)
    image = torch.tensor([[0.0, 0.1, 0.2, 0.5, 0.0]], dtype=torch.float64)
    grad = torch.tensor([[3.0, 1e-3, 1e-3, 1.0, 0.0]], dtype=torch.float64)
    solver = _solver(x, torch.ones_like(x))
    assert not CWL0()._tighten(solver, image, grad, 1.0).any()
    assert solver.mask.tolist() == [[1.0, 0.0, 1.0, 1.0, 1.0]] or solver.mask.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0]]
    assert solver.mask.shape == x.shape


def test_cw_l0_snaps_pixels_moved_less_than_the_authors_tolerance():
    # A pixel counts as changed when some channel moved by >= 1e-4 (the authors' "equal" is |d| < 1e-4), scaled
    # by the box width: 2.5e-4 in a box of width 2.5 is changed, 2.4999e-4 is not.
    width = 2.5
    x = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    image = x.clone()
    image[0, 1, 0, 0] = 2.5e-4  # one channel at the tolerance: the pixel (both channels) kept
    image[0, 0, 0, 1] = 2.4999e-4  # below in both channels: reset
    image[0, 1, 0, 1] = -2.4999e-4
    image[0, 0, 0, 2] = -0.3
    snapped = CWL0()._snap(image, x, width)
    assert torch.equal(snapped[..., 0], image[..., 0]) and torch.equal(snapped[..., 2], image[..., 2])
    assert torch.equal(snapped[..., 1], x[..., 1])
    flat_x = torch.zeros(1, 3, dtype=torch.float64)
    flat_image = torch.tensor([[1e-4, 0.99e-4, -1e-4]], dtype=torch.float64)
    assert CWL0()._snap(flat_image, flat_x, 1.0).tolist() == [[1e-4, 0.0, -1e-4]]
    # Away from 0: the move image - x is what counts (2^-20 is below the tolerance, 2^-13 above).
    x = torch.full((1, 3), 0.25, dtype=torch.float64)
    image = x + torch.tensor([[2.0**-20, -(2.0**-13), 0.0]], dtype=torch.float64)
    assert CWL0()._snap(image, x, 1.0).tolist() == [[0.25, 0.25 - 2.0**-13, 0.25]]


def test_cw_l0_and_linf_works_below_the_authors_thresholds():
    hinge = torch.tensor([0.0, 0.99e-4, 1e-4, 0.5], dtype=torch.float64)
    assert CWL0()._works(hinge, torch.zeros(4), torch.ones(4)).tolist() == [True, True, False, False]
    # L∞: c hinge + penalty < 1e-4 c (the authors' loss < .0001 * CONST).
    const = torch.tensor([2.0, 2.0, 2.0, 0.5], dtype=torch.float64)
    penalty = torch.tensor([1e-4, 0.0, 2e-4, 0.0], dtype=torch.float64)
    hinge = torch.tensor([0.0, 0.5e-4, 0.0, 0.99e-4], dtype=torch.float64)
    assert CWLinf()._works(hinge, penalty, const).tolist() == [True, True, False, True]
    assert not bool(CWLinf()._works(torch.zeros(1), torch.tensor([1e-4]), torch.tensor([1.0])))


def test_cw_linf_penalty_and_its_gradient():
    # sum_i max(|delta_i| - tau, 0); its gradient sign(delta_i) where |delta_i| > tau (tf.maximum(0, e) passes
    # no gradient at e = 0).
    delta = torch.tensor([[0.3, -0.5, 0.2, -0.25], [0.1, -0.1, 0.0, 0.05]], dtype=torch.float64)
    tau = torch.tensor([0.25, 0.05], dtype=torch.float64)
    penalty, grad = CWLinf()._penalty(delta, tau)
    torch.testing.assert_close(penalty, torch.tensor([0.05 + 0.25, 0.05 + 0.05], dtype=torch.float64))
    assert grad.tolist() == [[1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]
    l0_penalty, l0_grad = CWL0()._penalty(delta, tau)
    torch.testing.assert_close(l0_penalty, delta.pow(2).sum(1))
    torch.testing.assert_close(l0_grad, 2 * delta)


def test_cw_linf_shrinks_tau_and_stops_at_a_256th_of_the_box():
    # tau <- decrease * min(tau, max |delta|); finished once tau <= (hi - lo) / 256: in a box of width 256,
    # tau = 0.5 * 2 = 1 stops (at the tie), 0.5 * 2.25 does not.
    x = torch.full((3, 2), 0.5, dtype=torch.float64)
    image = x + torch.tensor([[2.0, -1.0], [-2.25, 0.0], [3.0, 0.0]], dtype=torch.float64)  # exact in float64
    solver = _solver(x, torch.ones_like(x), tau=torch.tensor([10.0, 10.0, 1.5], dtype=torch.float64))
    finished = CWLinf(decrease_factor=0.5)._tighten(solver, image, image, 256.0)
    assert solver.tau.tolist() == [1.0, 1.125, 0.75]
    assert finished.tolist() == [True, False, True]


class _Constant(nn.Module):
    """Logits that do not depend on the input (but are differentiable in it)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)

    def forward(self, x):
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("attack,threat", [(CWL0, L0(eps=math.inf)), (CWLinf, Linf(eps=math.inf))],
                         ids=["l0", "linf"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_cw_l0_linf_success_needs_the_argmax_not_only_a_small_hinge(attack, threat, targeted):
    # The hinge (kappa 0) is 1e-5 < 1e-4 at every point, but the true class keeps the lead (untargeted), or a third
    # class does (targeted): no step works (the authors' compare on the argmax), the rounds fail.
    logits = [[1e-5, 0.0, -1.0]] if not targeted else [[0.0, 1.0, 1.0 - 1e-5]]
    x, y = torch.full((1, 4), 0.5, dtype=torch.float64), torch.tensor([0])
    result = attack(max_iterations=2, initial_const=1.0, largest_const=4.0, confidence=0.0)(
        _Constant(logits), x, y, threat=threat, targets=torch.tensor([2]) if targeted else None)
    assert not result.success.any() and torch.isinf(result.extras["best_distance"]).all()
    assert result.backwards == 4  # two steps at c = 1, two at c = 2: c = 4 is largest_const


# --- hyperparameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: CWL0(max_iterations=0), "max_iterations must be a positive integer, got 0"),
        (lambda: CWL0(max_iterations=True), "max_iterations must be a positive integer, got True"),
        (lambda: CWL0(max_iterations=2.0), "max_iterations must be a positive integer, got 2.0"),
        (lambda: CWL0(learning_rate=0.0), "learning_rate must be a positive finite number, got 0.0"),
        (lambda: CWL0(learning_rate=math.inf), "learning_rate must be a positive finite number, got inf"),
        (lambda: CWLinf(initial_const=-1.0), "initial_const (c) must be a positive finite number, got -1.0"),
        (lambda: CWLinf(initial_const="1"), "initial_const (c) must be a positive finite number, got '1'"),
        (lambda: CWL0(largest_const=math.inf), "largest_const must be a positive finite number, got inf"),
        (lambda: CWL0(largest_const=math.nan), "largest_const must be a positive finite number, got nan"),
        (lambda: CWL0(confidence=math.inf), "confidence (kappa) must be a finite number >= 0, got inf"),
        (lambda: CWLinf(confidence=-1e-9), "confidence (kappa) must be a finite number >= 0, got -1e-09"),
        (lambda: CWLinf(confidence=None), "confidence (kappa) must be a finite number >= 0, got None"),
        (lambda: CWLinf(max_iterations=0), "max_iterations must be a positive integer, got 0"),
        (lambda: CWLinf(decrease_factor=0.0), "decrease_factor must lie in (0, 1), got 0.0"),
        (lambda: CWLinf(decrease_factor=1), "decrease_factor must lie in (0, 1), got 1"),
        (lambda: CWLinf(decrease_factor="0.5"), "decrease_factor must lie in (0, 1), got '0.5'"),
        (lambda: CWL2(binary_search_steps=0), "binary_search_steps must be a positive integer, got 0"),
        (lambda: CWL2(max_iterations=0), "max_iterations must be a positive integer, got 0"),
        (lambda: CWL2(initial_const=0.0), "initial_const (c) must be a positive finite number, got 0.0"),
        (lambda: CWL2(learning_rate=-1.0), "learning_rate must be a positive finite number, got -1.0"),
        (lambda: CWL2(confidence=-1.0), "confidence (kappa) must be a finite number >= 0, got -1.0"),
        (lambda: CWL2(box="sigmoid"), "unknown box encoding 'sigmoid'; choose one of ['tanh', 'clip', 'project']"),
        (lambda: CWL2(objective="f2", confidence=1e-3),
         "confidence (kappa) is defined for objective 'f6' only, not 'f2'"),
    ],
)
def test_cw_bad_hyperparameters_are_rejected_with_their_message(make, message):
    with pytest.raises(RobustlabError) as info:
        make()
    assert str(info.value) == message


def test_cw_edge_hyperparameters_are_accepted():
    CWL0(max_iterations=1, learning_rate=1e-300, initial_const=1e-300, largest_const=1e300, confidence=0)
    CWLinf(max_iterations=1, confidence=0.0, decrease_factor=1e-9)
    CWLinf(decrease_factor=0.999999)
    CWL2(binary_search_steps=1, max_iterations=1, confidence=0.0, objective="f2")
    for box in ("tanh", "clip", "project"):
        CWL2(box=box, confidence=2.0)


# --- C&W L0 ---------------------------------------------------------------------------------------


def replay_cw_l0(model, x, y, t, *, iterations, lr, const, largest, kappa, bounds):
    """``l0_attack.py``'s ``attack_single`` and ``doit``: per round, Adam (fresh) on ``c hinge + ||x' - x||²``
    over ``x' = valid tanh(s + w) + (1 - valid) x``, warm-started at the last solution ``s``; a step works when
    the hinge is below 1e-4 (the argmax agreeing), else c doubles after ``iterations`` steps until ``largest``.
    After a success, pixels are scored ``|sum_ch delta| sum_ch |d loss / d w|`` and frozen in increasing order,
    stopping after a pixel scoring above 0.01 or once ``>= 0.3 sqrt(#changed pixels)`` are frozen."""
    box = _Box(bounds)
    width = bounds[1] - bounds[0]
    images = x.dim() == 4
    out_x, out_d, calls, masks = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype), 0, []
    for i in range(len(x)):
        xi, yi, ti = x[i:i + 1], int(y[i]), None if t is None else int(t[i])
        valid = torch.ones_like(xi[:, :1] if images else xi)
        prev, c, solution, last = xi, const, None, xi
        while True:
            # doit: a fresh modifier and Adam, c carried over from the last round.
            start = box.to_w(prev)
            w = torch.zeros_like(xi, requires_grad=True)
            adam = torch.optim.Adam([w], lr=lr)
            found = None
            while c < largest and found is None:
                for _ in range(iterations):
                    image = valid * box.image(start + w) + (1 - valid) * xi
                    z = model(image)[0]
                    calls += 1
                    hinge = _hinge(z, yi, ti, kappa)
                    loss = c * hinge + (image - xi).pow(2).sum()
                    last = image.detach()
                    if float(hinge.detach()) < 1e-4 and _adversarial(z.detach(), yi, ti):
                        (grad,) = torch.autograd.grad(loss, w)  # at the iterate that worked (the authors restore it)
                        found = (grad, image.detach())
                        break
                    adam.zero_grad()
                    loss.backward()
                    adam.step()
                else:
                    c *= 2
            if found is None:
                break
            grad, nimg = found
            delta = nimg - xi
            pix = (lambda v: v[0].flatten(1).T) if images else (lambda v: v[0][:, None])  # [P, C]
            moved = pix(delta).abs().amax(dim=1) >= 1e-4 * width
            solution = torch.where((moved.reshape(valid.shape[1:]))[None], nimg, xi)
            if valid.sum() == 0:
                break
            valid = authors_freeze(pix(delta), pix(grad), valid.flatten(), width).reshape(valid.shape)
            masks.append(valid)
            prev = nimg
        if solution is not None:
            out_x[i] = solution[0]
            changed = (solution != xi)[0]
            out_d[i] = float(changed.flatten(1).any(0).sum() if images else changed.sum())
        else:
            out_x[i] = last[0]
    return out_x, out_d, calls, masks


@pytest.mark.parametrize(
    "shape,bounds,targeted,kappa,const,largest",
    [
        pytest.param((2, 3, 3), (0.0, 1.0), False, 0.01, 0.1, 10.0, id="images-untargeted"),
        # 36 pixels: up to ceil(0.3 sqrt(changed)) = 2 frozen per round, or 1 where the first scores above 0.01.
        pytest.param((1, 6, 6), (0.0, 1.0), False, 0.01, 1.0, 100.0, id="images-36-pixels"),
        pytest.param((7,), (-1.0, 2.0), True, 0.0, 0.3, 20.0, id="features-targeted-kappa0"),
        # c = 1 doubles to 128 = largest_const exactly: the round has failed there (the authors: while c < largest).
        pytest.param((3, 2, 2), (0.0, 1.0), True, 0.5, 1.0, 128.0, id="images-targeted-kappa"),
    ],
)
def test_cw_l0_follows_the_authors_search(shape, bounds, targeted, kappa, const, largest):
    model, x, y = _case(shape, n=2 if shape == (1, 6, 6) else 4, bounds=bounds, classes=4 if targeted else 3)
    t = (y + 1) % 4 if targeted else None
    iterations, lr = 15, 0.05
    attack = CWL0(max_iterations=iterations, learning_rate=lr, initial_const=const, largest_const=largest,
                  confidence=kappa)
    result = attack(model, x, y, threat=L0(eps=math.inf, bounds=bounds), targets=t)
    x_ref, d_ref, calls, masks = replay_cw_l0(model, x, y, t, iterations=iterations, lr=lr, const=const,
                                              largest=largest, kappa=kappa, bounds=bounds)
    assert result.backwards == calls  # every step, every doubling of c, every round
    torch.testing.assert_close(result.extras["best_distance"], d_ref)
    torch.testing.assert_close(result.x_adv, x_ref, rtol=1e-7, atol=1e-9)
    found = torch.isfinite(d_ref)
    assert found.any() and len(masks) > len(x)  # several rounds of freezing


# --- C&W L∞ ---------------------------------------------------------------------------------------


def replay_cw_linf(model, x, y, t, *, iterations, lr, const, largest, kappa, decrease, bounds):
    """``li_attack.py``'s ``attack_single`` and ``doit``: per round, Adam (fresh) on ``c hinge + sum_i max(|delta_i|
    - tau, 0)`` over ``x' = tanh(s + w)``, warm-started at the last solution ``s``; a step works when that loss is
    below 1e-4 c and the argmax is adversarial (judged at the same iterate), else c doubles after ``iterations``
    steps until ``largest``. After a success ``tau = decrease * min(tau, max |delta|)``; stop once ``tau <=
    (hi - lo) / 256`` or when a round fails, returning the last success. Also returns every round's tau."""
    box = _Box(bounds)
    width = bounds[1] - bounds[0]
    out_x, out_d, calls, taus = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype), 0, []
    for i in range(len(x)):
        xi, yi, ti = x[i:i + 1], int(y[i]), None if t is None else int(t[i])
        prev, c, tau, solution, last = xi, const, width, None, xi
        while tau > width / 256:
            start = box.to_w(prev)
            w = torch.zeros_like(xi, requires_grad=True)
            adam = torch.optim.Adam([w], lr=lr)
            found = None
            while c < largest and found is None:
                for _ in range(iterations):
                    image = box.image(start + w)
                    z = model(image)[0]
                    calls += 1
                    loss = c * _hinge(z, yi, ti, kappa) + torch.relu((image - xi).abs() - tau).sum()
                    last = image.detach()
                    if float(loss.detach()) < 1e-4 * c and _adversarial(z.detach(), yi, ti):
                        found = image.detach()
                        break
                    adam.zero_grad()
                    loss.backward()
                    adam.step()
                else:
                    c *= 2
            if found is None:
                break
            solution = prev = found
            tau = decrease * min(tau, float((found - xi).abs().max()))
            taus.append(tau)
        if solution is not None:
            out_x[i], out_d[i] = solution[0], (solution - xi).abs().max()
        else:
            out_x[i] = last[0]
    return out_x, out_d, calls, taus


@pytest.mark.parametrize(
    "shape,bounds,targeted,kappa,const,largest,decrease",
    [
        pytest.param((2, 3, 3), (0.0, 1.0), False, 0.0, 1e-2, 20.0, 0.9, id="untargeted"),
        pytest.param((6,), (-1.0, 2.0), True, 0.3, 0.1, 50.0, 0.7, id="targeted-kappa-box"),
    ],
)
def test_cw_linf_follows_the_authors_search(shape, bounds, targeted, kappa, const, largest, decrease):
    model, x, y = _case(shape, bounds=bounds, classes=4 if targeted else 3, seed=1)
    t = (y + 1) % 4 if targeted else None
    iterations, lr = 15, 0.05
    attack = CWLinf(max_iterations=iterations, learning_rate=lr, initial_const=const, largest_const=largest,
                    confidence=kappa, decrease_factor=decrease)
    result = attack(model, x, y, threat=Linf(eps=math.inf, bounds=bounds), targets=t)
    x_ref, d_ref, calls, taus = replay_cw_linf(model, x, y, t, iterations=iterations, lr=lr, const=const,
                                               largest=largest, kappa=kappa, decrease=decrease, bounds=bounds)
    assert result.backwards == calls  # every step, every doubling of c, every round
    torch.testing.assert_close(result.extras["best_distance"], d_ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(result.x_adv, x_ref, rtol=1e-7, atol=1e-9)
    assert torch.isfinite(d_ref).any() and len(taus) > len(x)  # several rounds of shrinking tau


class _Affine2(nn.Module):
    """Two classes, ``Z_1 - Z_0 = w . x``."""

    w = torch.tensor([1.0, -1.0, 0.5, 0.5, 1.0, -1.0], dtype=torch.float64)

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_cw_linf_stops_once_tau_is_a_256th_of_the_box():
    # Two points 0.002 and 0.02 from the boundary of an affine model (L∞ distances 4e-4 and 4e-3), in the box
    # [-1, 3]: tau halves from success to success until it is <= (hi - lo) / 256 = 1/64 (li_attack.py's
    # `while tau > 1./256` on its box of width 1), where the sample stops with its last success.
    g = torch.Generator().manual_seed(3)
    w = _Affine2.w
    x = 2 * torch.rand(2, 6, generator=g, dtype=torch.float64)
    x = x + ((-torch.tensor([2e-3, 0.02], dtype=torch.float64) - x @ w) / (w @ w))[:, None] * w
    y, bounds = torch.zeros(2, dtype=torch.int64), (-1.0, 3.0)
    options = {"iterations": 15, "lr": 0.05, "const": 0.1, "largest": 20.0, "kappa": 0.0, "decrease": 0.5}
    result = CWLinf(max_iterations=15, learning_rate=0.05, initial_const=0.1, largest_const=20.0, decrease_factor=0.5)(
        _Affine2(), x, y, threat=Linf(eps=math.inf, bounds=bounds))
    x_ref, d_ref, calls, taus = replay_cw_linf(_Affine2(), x, y, None, bounds=bounds, **options)
    assert result.backwards == calls
    torch.testing.assert_close(result.extras["best_distance"], d_ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(result.x_adv, x_ref, rtol=1e-7, atol=1e-9)
    assert result.success.all() and sum(t <= 4 / 256 for t in taus) == 2  # both stopped by the tau rule


@pytest.mark.parametrize("attack,threat", [
    (lambda: CWL0(max_iterations=15, learning_rate=0.1, initial_const=0.3, largest_const=20.0), L0(eps=math.inf)),
    (lambda: CWLinf(max_iterations=15, learning_rate=0.05, initial_const=0.1, largest_const=20.0), Linf(eps=math.inf)),
], ids=["l0", "linf"])
def test_targeted_cw_l0_linf_give_each_sample_the_result_it_gets_alone(attack, threat):
    # The samples of a batch finish at different rounds; those left keep their own targets (and everything else):
    # each sample's result in the batch is the one it gets when attacked alone.
    model, x, y = _case((6,), n=6, classes=4, seed=2)
    t = (y + 1 + torch.arange(6) % 3) % 4
    batch = attack()(model, x, y, threat=threat, targets=t)
    costs = []
    for i in range(len(x)):
        alone = attack()(model, x[i:i + 1], y[i:i + 1], threat=threat, targets=t[i:i + 1])
        torch.testing.assert_close(batch.x_adv[i:i + 1], alone.x_adv, rtol=1e-9, atol=1e-12)
        assert bool(batch.success[i]) == bool(alone.success[0])
        costs.append(alone.backwards)
    assert batch.success.any() and len(set(costs)) > 2  # they do finish at different steps
