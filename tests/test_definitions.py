"""Each piece pinned to its definition (issue 15): steepest directions attain the dual norm, the
losses and C&W objectives equal their closed forms, schedules and binary-search updates follow
their published formulas, and the evaluation credits, orders and counts as a hand-made table says.

The closed forms here are written independently of the library (float64, sorting instead of
masking) so that a changed constant or a swapped index in the library cannot also change them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from robustlab.attacks import DDN, PGD, Attack, CarliniWagnerL2, Square
from robustlab.attacks.apgd import checkpoints
from robustlab.attacks.carlini_wagner import next_const
from robustlab.attacks.cw_objectives import OBJECTIVES
from robustlab.attacks.square import square_fraction
from robustlab.errors import RobustlabError
from robustlab.evaluation import CLEAN, Evaluation, accuracy, evaluate, wilson_interval
from robustlab.losses import cross_entropy, dlr, get_loss, looks_like_probabilities, margin
from robustlab.settings import RunSettings
from robustlab.threat import L0, L1, L2, Linf
from conftest import InputRecorder

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def _logit_rows(min_classes: int = 2):
    """``(logits [N, K] float64, labels [N], targets [N] with t != y)`` from hypothesis."""

    @st.composite
    def build(draw):
        k = draw(st.integers(min_classes, 7))
        n = draw(st.integers(1, 5))
        z = draw(arrays(np.float64, (n, k), elements=st.floats(-30, 30, allow_nan=False, width=64)))
        y = np.array([draw(st.integers(0, k - 1)) for _ in range(n)])
        t = np.array([(yi + draw(st.integers(1, k - 1))) % k for yi in y])
        return torch.tensor(z), torch.tensor(y), torch.tensor(t)

    return build()


def _own_and_other_max(z: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(z))
    own = z[rows, cls]
    other = np.array([max(np.delete(z[i], cls[i])) for i in rows])
    return own, other


# -- steepest directions ----------------------------------------------------------------------

_GRADS = arrays(np.float64, (3, 1, 3, 4), elements=st.floats(-5, 5, allow_nan=False, width=64))


@SETTINGS
@given(_GRADS)
def test_linf_steepest_direction_attains_the_l1_dual_norm(g):
    grad = torch.tensor(g)
    d = Linf(eps=1.0).steepest_direction(grad)
    assert (d.abs() <= 1).all()  # in the unit L∞ ball
    inner = (grad * d).flatten(1).sum(1)
    torch.testing.assert_close(inner, grad.flatten(1).abs().sum(1), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(_GRADS)
def test_l2_steepest_direction_attains_the_l2_dual_norm(g):
    grad = torch.tensor(g)
    d = L2(eps=1.0).steepest_direction(grad)
    norm = grad.flatten(1).norm(dim=1)
    nonzero = norm > 1e-9
    assert ((d.flatten(1).norm(dim=1)[nonzero] - 1).abs() < 1e-12).all()
    inner = (grad * d).flatten(1).sum(1)
    torch.testing.assert_close(inner[nonzero], norm[nonzero], rtol=1e-12, atol=1e-12)


@SETTINGS
@given(_GRADS)
def test_l1_steepest_direction_attains_the_linf_dual_norm(g):
    grad = torch.tensor(g)
    # sparsity_quantile=1: the exact steepest L1 direction (one coordinate of largest magnitude).
    d = L1(eps=1.0, sparsity_quantile=1.0).steepest_direction(grad)
    assert (d.flatten(1).abs().sum(1) <= 1 + 1e-12).all()
    inner = (grad * d).flatten(1).sum(1)
    torch.testing.assert_close(inner, grad.flatten(1).abs().amax(1), rtol=1e-12, atol=1e-12)
    # The default sparse direction stays in the unit ball and spreads over the top 1% (>= 1 coord).
    sparse = L1(eps=1.0).steepest_direction(grad)
    assert (sparse.flatten(1).abs().sum(1) <= 1 + 1e-12).all()
    assert ((grad * sparse).flatten(1).sum(1) >= -1e-12).all()


@SETTINGS
@given(arrays(np.float64, (3, 2, 3, 3), elements=st.floats(-5, 5, allow_nan=False, width=64)))
def test_l0_steepest_direction_is_the_largest_pixel_along_the_sign(g):
    grad = torch.tensor(g)
    d = L0(eps=1.0).steepest_direction(grad)
    changed = d.abs().amax(dim=1).flatten(1) > 0
    assert (changed.sum(1) <= 1).all()  # one pixel: the unit L0 ball
    pixel_mag = grad.abs().amax(dim=1).flatten(1)
    for i in range(grad.shape[0]):
        if pixel_mag[i].max() > 0:
            assert pixel_mag[i][changed[i]].item() == pixel_mag[i].max().item()
    # On the chosen pixel every channel moves along its gradient's sign by one.
    assert torch.equal(d, grad.sign() * (d != 0))
    # <g, d> is the chosen pixel's L1 gradient mass (all channels move together).
    inner = (grad * d).flatten(1).sum(1)
    chosen_mass = (grad.abs().sum(dim=1).flatten(1) * changed).sum(1)
    torch.testing.assert_close(inner, chosen_mass, rtol=1e-12, atol=1e-12)


# -- losses against their closed forms --------------------------------------------------------

@SETTINGS
@given(_logit_rows())
def test_cross_entropy_closed_form(case):
    z, y, t = case
    zn = z.numpy()
    lse = np.log(np.exp(zn - zn.max(1, keepdims=True)).sum(1)) + zn.max(1)
    rows = np.arange(len(zn))
    np.testing.assert_allclose(cross_entropy(z, y).numpy(), lse - zn[rows, y.numpy()], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cross_entropy(z, y, t).numpy(), -(lse - zn[rows, t.numpy()]), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(_logit_rows(), st.sampled_from([0.0, 0.5, 5.0, 50.0, math.inf]))
def test_margin_closed_form_with_kappa(case, kappa):
    z, y, t = case
    own, other = _own_and_other_max(z.numpy(), y.numpy())
    np.testing.assert_array_equal(margin(z, y, kappa=kappa).numpy(), np.minimum(other - own, kappa))
    own_t, other_t = _own_and_other_max(z.numpy(), t.numpy())
    np.testing.assert_array_equal(margin(z, y, t, kappa=kappa).numpy(), np.minimum(own_t - other_t, kappa))
    # The attacks' "margin" loss passes kappa through.
    loss_fn = PGD(loss="margin", kappa=kappa).loss_fn
    np.testing.assert_array_equal(loss_fn(z, y, None).numpy(), np.minimum(other - own, kappa))
    np.testing.assert_array_equal(get_loss("margin", kappa=kappa)(z, y, t).numpy(), np.minimum(own_t - other_t, kappa))


def test_margin_kappa_caps_the_value():
    z = torch.tensor([[10.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([1, 1])  # sample 0 misclassified by 10, sample 1 correct by 2
    assert margin(z, y, kappa=0.0).tolist() == [0.0, -2.0]
    assert margin(z, y).tolist() == [0.0, -2.0]  # C&W's default confidence is 0
    assert margin(z, y, kappa=4.0).tolist() == [4.0, -2.0]
    assert margin(z, y, kappa=math.inf).tolist() == [10.0, -2.0]


@SETTINGS
@given(_logit_rows(min_classes=4))
def test_dlr_closed_form_untargeted_and_targeted(case):
    z, y, t = case
    zn = z.numpy()
    rows = np.arange(len(zn))
    s = -np.sort(-zn, axis=1)  # decreasing: pi_1, pi_2, ...
    own, other = _own_and_other_max(zn, y.numpy())
    expected = -(own - other) / (s[:, 0] - s[:, 2] + 1e-12)
    np.testing.assert_allclose(dlr(z, y).numpy(), expected, rtol=1e-9, atol=1e-9)
    expected_t = -(zn[rows, y.numpy()] - zn[rows, t.numpy()]) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12)
    np.testing.assert_allclose(dlr(z, y, t).numpy(), expected_t, rtol=1e-9, atol=1e-9)


def test_get_loss_passes_options_to_a_callable_loss():
    # A user's own loss gets the options as keyword arguments, like the named ones do.
    z = torch.tensor([[10.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([1, 1])
    assert get_loss(margin, kappa=4.0)(z, y).tolist() == [4.0, -2.0]
    assert get_loss(margin)(z, y).tolist() == [0.0, -2.0]
    assert get_loss("margin", kappa=4.0)(z, y).tolist() == [4.0, -2.0]


def test_get_loss_unknown_name_lists_the_choices():
    with pytest.raises(RobustlabError, match=r"^unknown loss 'hinge'; choose one of \['ce', 'dlr', 'margin'\] "
                                             r"or pass a callable$"):
        get_loss("hinge")


def test_dlr_hand_computed_values():
    # Sorted logits 5 > 3 > 1 > 0: untargeted denominator Z_pi1 - Z_pi3 = 4, not Z_pi1 - Z_pi2 = 2.
    z = torch.tensor([[3.0, 5.0, 0.0, 1.0]], dtype=torch.float64)
    assert dlr(z, torch.tensor([0])).item() == pytest.approx(-(3 - 5) / 4)
    assert dlr(z, torch.tensor([1])).item() == pytest.approx(-(5 - 3) / 4)
    # Targeted: -(Z_y - Z_t) / (Z_pi1 - (Z_pi3 + Z_pi4) / 2) = -(3 - 0) / (5 - 0.5).
    assert dlr(z, torch.tensor([0]), torch.tensor([2])).item() == pytest.approx(-3 / 4.5)


def test_dlr_class_count_limits():
    z3 = torch.tensor([[3.0, 1.0, 0.0]])
    # Untargeted DLR is defined from 3 classes on (pi_3 exists), targeted from 4 (pi_4).
    assert dlr(z3, torch.tensor([0])).item() == pytest.approx(-(3 - 1) / 3)
    with pytest.raises(RobustlabError, match=r"^the untargeted DLR loss needs at least 3 classes, the model has 2; "
                                             r"use the 'margin' loss instead \(it is DLR without the scale "
                                             r"normalisation\)$"):
        dlr(z3[:, :2], torch.tensor([0]))
    with pytest.raises(RobustlabError, match=r"^the targeted DLR loss needs at least 4 classes, the model has 3; "):
        dlr(z3, torch.tensor([0]), torch.tensor([1]))


def test_looks_like_probabilities_definition():
    # Non-negative rows summing to 1 (within 1e-3) are softmax outputs; anything else is logits.
    assert looks_like_probabilities(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
    assert looks_like_probabilities(torch.tensor([[0.2, 0.8005]]))
    assert looks_like_probabilities(torch.tensor([[0.0, 1.0, 0.0]]))  # a saturated softmax
    assert not looks_like_probabilities(torch.tensor([[0.2, 0.802]]))
    assert not looks_like_probabilities(torch.tensor([[0.5, 1.0]]))
    assert not looks_like_probabilities(torch.tensor([[-0.1, 1.1]]))
    # One class, or no sample: nothing to tell.
    assert not looks_like_probabilities(torch.ones(3, 1))
    assert not looks_like_probabilities(torch.zeros(0, 3))


def _cw_closed_forms(z: np.ndarray, y: np.ndarray, t: np.ndarray | None, kappa: float) -> dict[str, np.ndarray]:
    """Carlini & Wagner's objectives (algorithms.md §1 with the printing errors fixed)."""
    f = np.exp(z - z.max(1, keepdims=True))
    f = f / f.sum(1, keepdims=True)
    if t is None:  # the true class must lose; single-class objectives aim at the likeliest wrong class
        own_z, other_z = _own_and_other_max(z, y)
        own_f, other_f = _own_and_other_max(f, y)
        m_z, m_f, winner = own_z - other_z, own_f - other_f, other_f
    else:
        own_z, other_z = _own_and_other_max(z, t)
        own_f, other_f = _own_and_other_max(f, t)
        m_z, m_f, winner = other_z - own_z, other_f - own_f, own_f
    softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    return {
        "f1": -np.log(winner) - math.log(2),
        "f2": np.maximum(m_f, 0.0),
        "f3": softplus(m_f) - math.log(2),
        "f4": np.maximum(0.5 - winner, 0.0),
        "f5": -np.log(2 * winner),
        "f6": np.maximum(m_z, -kappa),
        "f7": softplus(m_z) - math.log(2),
    }


@SETTINGS
@given(_logit_rows(), st.sampled_from([0.0, 1.0, 20.0]), st.booleans())
def test_cw_objectives_closed_form(case, kappa, targeted):
    z, y, t = case
    z = z / 3  # keep softmax probabilities away from underflow so log(F) is well defined
    expected = _cw_closed_forms(z.numpy(), y.numpy(), t.numpy() if targeted else None, kappa)
    for name, fn in OBJECTIVES.items():
        got = fn(z, y, t if targeted else None, kappa=kappa).numpy()
        np.testing.assert_allclose(got, expected[name], rtol=1e-7, atol=1e-9, err_msg=name)


def test_cw_l2_loss_uses_its_confidence():
    z = torch.tensor([[4.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    # f6 untargeted = max(Z_y - max_{i != y} Z_i, -kappa) = max(3, -kappa) = 3; misclassified by 2 -> -2.
    assert CarliniWagnerL2(confidence=5.0).loss_fn(z, y, None).item() == 3.0
    z2 = torch.tensor([[1.0, 3.0, 0.0]], dtype=torch.float64)
    assert CarliniWagnerL2(confidence=5.0).loss_fn(z2, y, None).item() == -2.0
    assert CarliniWagnerL2(confidence=1.0).loss_fn(z2, y, None).item() == -1.0


def test_cw_l2_successes_carry_the_confidence_margin(digits, digits_mlp):
    _, _, x_test, y_test = digits
    x, y = x_test[:6], y_test[:6]
    kappa = 3.0
    attack = CarliniWagnerL2(confidence=kappa, max_iterations=25, binary_search_steps=3, initial_const=1.0,
                             learning_rate=0.1)
    result = attack(digits_mlp, x, y, threat=L2(eps=math.inf))
    assert result.success.sum() >= 3
    with torch.no_grad():
        z = digits_mlp(result.x_adv[result.success])
    own, other = _own_and_other_max(z.double().numpy(), y[result.success].numpy())
    # Every returned success is misclassified by at least kappa (the paper's confident success).
    assert (other - own >= kappa - 1e-4).all(), other - own


# -- schedules and updates against their published formulas ----------------------------------

def _apgd_checkpoints_published(steps: int) -> tuple[int, ...]:
    """Croce & Hein 2020, Sec. 3: w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1 (exact fractions)."""
    p_prev, p = Fraction(0), Fraction(22, 100)
    out: list[int] = []
    while p <= 1:
        w = math.ceil(p * steps)
        if not out or w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return tuple(out)


@pytest.mark.parametrize("steps", [1, 5, 10, 37, 50, 100, 125, 1000])
def test_apgd_checkpoints_follow_the_published_recursion(steps):
    assert checkpoints(steps) == _apgd_checkpoints_published(steps)


def test_apgd_checkpoints_for_100_steps_hand_table():
    assert checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)


def _square_p_published(p_init: float, it: int, n_queries: int) -> float:
    """``p_selection`` of Andriushchenko et al. (rescaled to the query budget)."""
    it = int(it / n_queries * 10000)
    for k, upper in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if it <= upper:
            return p_init / 2**k
    return p_init / 512


@pytest.mark.parametrize("queries", [100, 1000, 5000, 10000])
def test_square_fraction_follows_the_published_schedule(queries):
    for it in range(queries):
        assert square_fraction(0.8, it, queries) == _square_p_published(0.8, it, queries), it


def test_square_fraction_hand_table():
    # 10000 queries: p halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    table = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025, 2001: 0.0125,
             4001: 0.00625, 6001: 0.003125, 8001: 0.0015625, 9999: 0.0015625}
    for it, p in table.items():
        assert square_fraction(0.8, it, 10000) == pytest.approx(p, rel=1e-15), it


class _Stuck(nn.Module):
    """Logits that ignore the input (plus a zero term so that autograd sees it): class 0 wins by 2."""

    def forward(self, x):
        return torch.tensor([[2.0, 0.0, -1.0]], dtype=x.dtype).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


def test_square_linf_window_sides_follow_the_schedule():
    # A model whose loss never moves keeps x_best at the stripes of the initialisation, so each
    # query differs from it on whole rows of its window: the changed rows give the window side.
    h = w = 16
    queries = 400
    x = torch.full((2, 1, h, w), 0.5)
    model = InputRecorder(_Stuck())
    Square(queries=queries, p_init=0.8)(model, x, torch.zeros(2, dtype=torch.long), threat=Linf(eps=0.1),
                                         generator=torch.Generator().manual_seed(0))
    queried = model.inputs[2:2 + queries]  # after the template's clean pass and the attack's clean check
    init = queried[0]
    tops = set()
    for it, candidate in enumerate(queried[1:]):
        p = _square_p_published(0.8, it, queries)
        side = min(max(round(math.sqrt(p * h * w)), 1), h - 1)
        for i in range(2):
            rows = (candidate[i] != init[i]).any(dim=2).squeeze(0).nonzero().squeeze(1)
            assert len(rows) == side, (it, i)
            assert int(rows.max() - rows.min()) + 1 == side
            tops.add((side, int(rows.min())))
    # Window corners are drawn from [0, H - side) as in the reference code.
    assert all(top < h - side for side, top in tops)


def test_cw_binary_search_update_hand_table():
    # Carlini & Wagner's l2_attack.py: start c = 1e-3 in [0, 1e10]; failures multiply c by 10
    # until an upper bound < 1e9 is known, then bisect.
    c, lo, hi = torch.tensor([1e-3]), torch.tensor([0.0]), torch.tensor([1e10])
    expected = [
        (False, 1e-2, 1e-3, 1e10),
        (False, 1e-1, 1e-2, 1e10),
        (True, (1e-2 + 1e-1) / 2, 1e-2, 1e-1),
        (False, (0.055 + 0.1) / 2, 0.055, 1e-1),
        (True, (0.055 + 0.0775) / 2, 0.055, 0.0775),
    ]
    for ok, c_next, lo_next, hi_next in expected:
        c, lo, hi = next_const(c, lo, hi, torch.tensor([ok]))
        assert (c.item(), lo.item(), hi.item()) == pytest.approx((c_next, lo_next, hi_next), rel=1e-6)


class _Linear2(nn.Module):
    """Two classes, logits (w.x, -w.x): the decision boundary is the hyperplane w.x = 0."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([s, -s], dim=1)


def test_ddn_norm_update_follows_algorithm_1():
    # Rony et al. 2019, Algorithm 1: after each step ||delta|| = eps, where eps *= (1 - gamma) if
    # the iterate was adversarial and (1 + gamma) otherwise. A wide box keeps clipping out of it.
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    y = ((x @ w) < 0).long()  # every sample correctly classified
    x = x + 0.3 * torch.sign((x @ w))[:, None] * w / w.norm()  # move away from the boundary
    model = InputRecorder(_Linear2(w))
    gamma, init_norm, steps = 0.05, 0.2, 12
    DDN(steps=steps, init_norm=init_norm, gamma=gamma)(model, x, y, threat=L2(eps=math.inf, bounds=(-100.0, 100.0)))
    iterates = model.inputs[1:1 + steps]  # after the template's clean pass
    eps = torch.full((3,), init_norm, dtype=torch.float64)
    for k in range(steps - 1):
        adversarial = (iterates[k] @ w < 0).long() != y
        eps = torch.where(adversarial, eps * (1 - gamma), eps * (1 + gamma))
        torch.testing.assert_close((iterates[k + 1] - x).norm(dim=1), eps, rtol=1e-9, atol=1e-12)


# -- evaluation: crediting, ordering, metrics --------------------------------------------------

class _Threshold(nn.Module):
    """Class 1 when feature 1 exceeds 0.5, else class 0 (feature 0 carries the sample's id)."""

    def forward(self, x):
        s = (x[:, 1] - 0.5) * 10
        return torch.stack([-s, s], dim=1)


@dataclass(frozen=True, kw_only=True)
class _Breaks(Attack):
    """Moves feature 1 of the samples whose id is in ``ids`` to ``to`` (> 0.5 breaks them)."""

    name = "breaks"
    norms = frozenset({"Linf"})
    ids: tuple[int, ...] = ()
    to: float = 0.9

    def _run(self, oracle, x, y, *, threat, targets, generator):
        x_adv = x.clone()
        hit = torch.tensor([round(float(v) * 100) in self.ids for v in x[:, 0]])
        x_adv[hit, 1] = self.to
        return x_adv, {}


def _credit_data():
    n = 10
    x = torch.zeros(n, 2)
    x[:, 0] = torch.arange(n) / 100
    x[:, 1] = 0.1
    x[5, 1] = 0.8  # misclassified without attack
    return x, torch.zeros(n, dtype=torch.long)


_A = _Breaks(ids=(0, 1, 2), to=0.9)  # distances 0.8
_B = _Breaks(ids=(1, 3), to=0.8)  # 0.7
_C = _Breaks(ids=(2, 3, 4, 5), to=0.7)  # 0.6


@pytest.mark.parametrize("cascade", [False, True])
def test_evaluation_credits_the_first_attack_in_order(cascade):
    x, y = _credit_data()
    ev = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A, "B": _B, "C": _C},
                  cascade=cascade, settings=RunSettings(batch_size=4))
    broken = [s["broken_by"] for s in ev.samples]
    assert broken == ["A", "A", "A", "B", "C", CLEAN, None, None, None, None]
    assert [s["distance"] for s in ev.samples][:6] == pytest.approx([0.8, 0.8, 0.8, 0.7, 0.6, 0.0])
    m = ev.metrics
    assert m["broken_by"] == {"A": 3, "B": 1, "C": 1}
    assert (m["clean_accuracy"]["count"], m["robust_accuracy"]["count"]) == (9, 4)
    assert m["robust_accuracy"]["value"] == 0.4 and m["samples"] == 10
    # Per-sample passes: one clean forward each, then the template's two forwards for each attack that ran on
    # the sample (no backwards: these attacks only move a feature); in a cascade a broken sample costs no more.
    forwards = [3, 3, 3, 5, 7, 1, 7, 7, 7, 7] if cascade else [7, 7, 7, 7, 7, 1, 7, 7, 7, 7]
    assert [(s["forwards"], s["backwards"]) for s in ev.samples] == [(f, 0) for f in forwards]
    assert (ev.passes["forwards"], ev.passes["backwards"]) == (sum(forwards), 0)
    if cascade:
        # Only the first attack saw every correct sample; the others' accuracies are not exact.
        assert {k: v["count"] for k, v in m["robust_accuracy_per_attack"].items()} == {"A": 6}
        assert ev.samples[1]["attacks"]["B"]["success"] is None  # B never saw sample 1
    else:
        per = {k: v["count"] for k, v in m["robust_accuracy_per_attack"].items()}
        assert per == {"A": 6, "B": 7, "C": 6}
        assert ev.samples[1]["attacks"]["B"] == {"success": True, "distance": pytest.approx(0.7)}


def test_evaluation_names_saves_and_loads_without_a_trained_model(tmp_path):
    x, y = _credit_data()
    # A sequence is named by each attack's registry name, a repeated one numbered from 2.
    ev = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks=[_A, _B], settings=RunSettings(seed=3))
    assert list(ev.attacks) == ["breaks", "breaks-2"]
    assert [s["broken_by"] for s in ev.samples] == ["breaks"] * 3 + ["breaks-2", None, CLEAN] + [None] * 4
    assert [s["index"] for s in ev.samples] == list(range(10)) and [s["label"] for s in ev.samples] == [0] * 10
    assert [s["clean_prediction"] for s in ev.samples] == [0] * 5 + [1] + [0] * 4
    path = ev.save(tmp_path / "ev.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "fixed" and data["threat"] == {"norm": "Linf", "eps": 1.0, "bounds": [0.0, 1.0]}
    assert data["metrics"]["robust_accuracy"]["count"] == 5 and data["provenance"]["seed"] == 3
    loaded = Evaluation.load(path)
    assert loaded.threat == ev.threat and loaded.attacks == data["attacks"] and loaded.passes == ev.passes
    assert loaded.samples == data["samples"] and loaded.provenance == data["provenance"]
    # A robust sample's distance is inf in memory, null in the (strict JSON) file; the rest as saved.
    assert ev.samples[4]["distance"] == math.inf and data["samples"][4]["distance"] is None
    assert [s for i, s in enumerate(loaded.samples) if ev.samples[i]["broken_by"] is not None] == \
        [s for s in ev.samples if s["broken_by"] is not None]
    assert loaded.metrics == json.loads(json.dumps(ev.metrics))
    with pytest.raises(RobustlabError, match=r"^evaluate needs at least one attack$"):
        evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={})
    with pytest.raises(RobustlabError, match=r"^'x' is not a robustlab Attack \(got object\)$"):
        evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"x": object()})


def test_evaluate_passes_its_options_on(tmp_path, capsys):
    from robustlab.io import header

    x, y = _credit_data()
    card = {"architecture": "threshold"}
    ev = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A}, indices=torch.arange(10) + 100, num_classes=2, model_card=card, settings=RunSettings(seed=5, batch_size=4))
    assert [s["index"] for s in ev.samples] == list(range(100, 110))
    assert ev.passes["clean"]["calls"] == 3  # blocks of 4
    assert ev.model_card == card and ev.to_dict()["model_card"] == card and ev.to_dict()["version"] == header("fixed")["version"]
    assert (ev.provenance["seed"], ev.provenance["processes"], ev.provenance["device"]) == (5, 1, "cpu")
    assert ev.provenance["wall_time_s"] >= 0
    assert Evaluation.load(ev.save(tmp_path / "ev.json")).model_card == card
    with pytest.raises(RobustlabError, match="num_classes is 3"):
        evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A}, num_classes=3)
    # Defaults: blocks of 256 (257 samples take two clean calls), seed 0, no progress bar.
    many = torch.zeros(257, 2)
    many[:, 1] = 0.1
    ev = evaluate(_Threshold(), many, torch.zeros(257, dtype=torch.long), threat=Linf(eps=1.0), attacks={"A": _A})
    assert ev.passes["clean"]["calls"] == 2 and ev.provenance["seed"] == 0
    assert capsys.readouterr().err == ""
    # The state file: written, of this mode and seed, resumed by default (no attack runs again), redone with
    # resume=False, refused for another seed.
    runs = []

    @dataclass(frozen=True, kw_only=True)
    class Counted(_Breaks):
        def _run(self, oracle, x, y, *, threat, targets, generator):
            runs.append(len(x))
            return super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)

    state = tmp_path / "state.json"
    options = dict(threat=Linf(eps=1.0), attacks={"A": Counted(ids=(0, 1))}, state_file=state,
                   settings=RunSettings(seed=3))
    first = evaluate(_Threshold(), x, y, **options)
    assert runs == [9] and json.loads(state.read_text())["fingerprint"]["settings"]["mode"] == "fixed"
    assert evaluate(_Threshold(), x, y, **options).samples == first.samples and runs == [9]
    assert evaluate(_Threshold(), x, y, **options, resume=False).samples == first.samples and runs == [9, 9]
    with pytest.raises(RobustlabError, match="belongs to another evaluation"):
        evaluate(_Threshold(), x, y, **{**options, "settings": RunSettings(seed=4)})
    # A saved document without provenance or passes (older files) loads with empty ones.
    path = first.save(tmp_path / "old.json")
    data = json.loads(path.read_text())
    del data["provenance"], data["passes"]
    path.write_text(json.dumps(data))
    loaded = Evaluation.load(path)
    assert (loaded.provenance, loaded.passes) == ({}, {})


def test_evaluation_documents_are_read_by_kind_and_progress_is_off_by_default(tmp_path, caplog):
    x, y = _credit_data()
    with caplog.at_level(logging.INFO, logger="robustlab"):
        ev = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A})
        assert not [r for r in caplog.records if r.name == "robustlab"]  # no progress by default
        evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A}, settings=RunSettings(progress=True))
        assert [r for r in caplog.records if r.name == "robustlab"]  # off a terminal: one line per stage
    path = ev.save(tmp_path / "ev.json")
    data = json.loads(path.read_text())
    # A document written before documents had a kind is read as a fixed-eps evaluation ...
    del data["kind"]
    path.write_text(json.dumps(data))
    assert Evaluation.load(path).samples == json.loads(ev.save(tmp_path / "again.json").read_text())["samples"]
    # ... and one of another kind is refused.
    path.write_text(json.dumps({**data, "kind": "minimum-norm"}))
    with pytest.raises(RobustlabError, match="minimum-norm"):
        Evaluation.load(path)


@dataclass(frozen=True, kw_only=True)
class _Nameless(_Breaks):
    name = ""


def test_evaluation_names_an_attack_without_a_name_by_its_class():
    x, y = _credit_data()
    assert list(evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks=[_Nameless(ids=(0,))]).attacks) == ["_Nameless"]


def test_evaluation_order_decides_the_credit():
    x, y = _credit_data()
    ev = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"C": _C, "B": _B, "A": _A})
    assert [s["broken_by"] for s in ev.samples] == ["A", "B", "C", "C", "C", CLEAN, None, None, None, None]
    assert ev.metrics["broken_by"] == {"C": 3, "B": 1, "A": 1}
    assert [s["distance"] for s in ev.samples][:5] == pytest.approx([0.8, 0.7, 0.6, 0.6, 0.6])


def test_evaluation_confidence_intervals_hand_table():
    x, y = _credit_data()
    m = evaluate(_Threshold(), x, y, threat=Linf(eps=1.0), attacks={"A": _A, "B": _B, "C": _C}).metrics
    # Wilson 95% intervals (z = 1.959964): 9/10, 4/10 and 6/10, 7/10 (per attack).
    table = {"clean_accuracy": (0.5958, 0.9821), "robust_accuracy": (0.1682, 0.6873)}
    for key, (low, high) in table.items():
        assert (m[key]["ci_low"], m[key]["ci_high"]) == pytest.approx((low, high), abs=1e-4), key
    per = m["robust_accuracy_per_attack"]
    assert (per["A"]["ci_low"], per["A"]["ci_high"]) == pytest.approx((0.3127, 0.8318), abs=1e-4)
    assert (per["B"]["ci_low"], per["B"]["ci_high"]) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(1, 4, confidence=0.9) == pytest.approx((0.0579, 0.6438), abs=1e-4)
    # Rounding puts the raw bounds a hair outside [0, 1] here (1 + 2e-16 and -3e-17): they are clipped exactly.
    assert wilson_interval(12, 12, confidence=0.9)[1] == 1.0 and wilson_interval(0, 5, confidence=0.9)[0] == 0.0
    # accuracy(): the value, the interval at the confidence asked, the counts; NaN for no samples.
    assert accuracy(1, 4, confidence=0.9) == {"value": 0.25, "ci_low": wilson_interval(1, 4, confidence=0.9)[0],
                                              "ci_high": wilson_interval(1, 4, confidence=0.9)[1], "count": 1, "total": 4}
    empty = accuracy(0, 0)
    assert all(math.isnan(empty[k]) for k in ("value", "ci_low", "ci_high")) and (empty["count"], empty["total"]) == (0, 0)
