"""APGD and APGD-T: the checkpoint schedule and step-size rule, strength against PGD on a trained
digits model, the DLR loss where cross-entropy is masked, early stopping, few-class models,
closed-form optima on a linear model, and hyperparameter checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import InputRecorder, linear_two_class, ramp3
from torch import nn

from robustlab.attacks import APGD, APGDT, PGD, AutoPGD, AutoPGDTargeted, build_attack
from robustlab.attacks.apgd import _AutoPGDBase, _sparse_direction, _State, checkpoints
from robustlab.errors import RobustlabError
from robustlab.threat import L1, L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def digits_test(digits):
    _, _, x_test, y_test = digits
    return x_test, y_test


class Scale(nn.Module):
    """Multiplies the logits: the predictions are unchanged, but softmax saturates in float32,
    so cross-entropy gradients vanish (the masking the DLR loss was designed against)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.factor


class FirstClasses(nn.Module):
    """The first ``k`` logits of a model: a k-class classifier."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, : self.k]


# --- the schedule and the step-size rule ------------------------------------------------------


def test_checkpoint_schedule_matches_the_paper():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (the next, 1.05, is past the end).
    assert checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert checkpoints(200) == (44, 82, 114, 140, 160, 174, 186, 198)
    # ceil(p * 10): 3, 5, 6, 7, 8, 9, 10, 10 -> the repeated 10 is merged.
    assert checkpoints(10) == (3, 5, 6, 7, 8, 9, 10)
    assert checkpoints(1) == (1,)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 33, 100, 1000])
def test_checkpoints_are_increasing_and_within_the_run(steps):
    w = checkpoints(steps)
    assert all(a < b for a, b in itertools.pairwise(w))
    assert 1 <= w[0] and w[-1] <= steps


def _state(increases, loss_max, loss_max_at_check, halved_at_check) -> _State:
    n = len(increases)
    x0 = torch.zeros(n, 2)
    x_cur, x_max = torch.ones(n, 2), torch.full((n, 2), 0.5)
    return _State(
        idx=torch.arange(n), x_clean=x0, y=torch.zeros(n, dtype=torch.int64), loss_targets=None,
        criterion_targets=None, x_cur=x_cur, x_prev=x_cur.clone(), grad=torch.ones(n, 2), loss=torch.zeros(n),
        x_max=x_max, grad_max=torch.full((n, 2), -1.0), loss_max=torch.tensor(loss_max),
        step=torch.full((n,), 0.2), increases=torch.tensor(increases), loss_max_at_check=torch.tensor(loss_max_at_check),
        halved_at_check=torch.tensor(halved_at_check), topk=torch.zeros(n), sparsity_at_check=torch.zeros(n),
        margin_min=torch.zeros(n), margin_halfway=torch.zeros(n), margin_clean=torch.ones(n),
    )


def test_checkpoint_halves_the_step_exactly_under_the_two_conditions():
    # Window of 10 steps, rho = 0.75: condition 1 holds below 7.5 increases.
    # 0: 7 increases -> condition 1.  1: 8 increases and a better best loss -> keep.
    # 2: 8 increases, best loss unchanged, step not halved last time -> condition 2.
    # 3: as 2 but halved at the last checkpoint -> keep.
    s = _state(increases=[7, 8, 8, 8], loss_max=[1.0, 2.0, 1.0, 1.0],
               loss_max_at_check=[1.0, 1.0, 1.0, 1.0], halved_at_check=[False, False, False, True])
    APGD()._checkpoint(s, window=10)
    halved = torch.tensor([True, False, True, False])
    torch.testing.assert_close(s.step, torch.where(halved, torch.tensor(0.1), torch.tensor(0.2)))
    # Halved samples restart from their best point and its gradient; the others go on.
    assert torch.equal(s.x_cur[halved], torch.full((2, 2), 0.5)) and torch.equal(s.x_cur[~halved], torch.ones(2, 2))
    assert torch.equal(s.grad[halved], torch.full((2, 2), -1.0)) and torch.equal(s.grad[~halved], torch.ones(2, 2))
    assert torch.equal(s.halved_at_check, halved)
    assert torch.equal(s.increases, torch.zeros(4, dtype=torch.int64))
    assert torch.equal(s.loss_max_at_check, s.loss_max)


def test_the_run_checks_at_the_scheduled_iterations(monkeypatch, digits_mlp, digits_test):
    windows: list[int] = []
    original = _AutoPGDBase._checkpoint

    def spy(self, s, *, window):
        windows.append(window)
        original(self, s, window=window)

    monkeypatch.setattr(_AutoPGDBase, "_checkpoint", spy)
    x, y = digits_test[0][:4], digits_test[1][:4]
    APGD(steps=100, early_stop=False)(digits_mlp, x, y, threat=Linf(eps=0.01), generator=gen())
    assert windows == [22, 19, 16, 13, 10, 7, 6, 6]


def test_l1_direction_moves_the_top_coordinates_that_can_still_move():
    grad = torch.tensor([[5.0, -4.0, 3.0, 0.5, -0.1, 0.0, 2.0, 1.0]])
    # The first coordinate is at the upper box edge with a positive gradient: it cannot move.
    x_adv = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    direction = _sparse_direction(grad, x_adv, torch.tensor([0.3]), (0.0, 1.0))  # ceil(2.4) = 3
    torch.testing.assert_close(direction, torch.tensor([[0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]) / 3)
    assert float(direction.abs().sum()) == pytest.approx(1.0)


def test_l1_checkpoint_resets_the_step_where_the_best_point_got_sparser():
    s = _state(increases=[0, 0], loss_max=[1.0, 1.0], loss_max_at_check=[0.0, 0.0], halved_at_check=[False, False])
    s.x_max = torch.tensor([[0.5, 0.0], [0.5, 0.5]])
    s.sparsity_at_check = torch.tensor([2.0, 2.0])
    s.step = torch.tensor([0.3, 0.3])
    _AutoPGDBase._l1_checkpoint(s, initial_step=1.0, d=2)
    torch.testing.assert_close(s.step, torch.tensor([1.0, 0.2]))  # reset to eps; shrunk by 1.5
    torch.testing.assert_close(s.topk, torch.tensor([1 / 3, 2 / 3]))  # sparsity / d / 1.5
    assert torch.equal(s.x_cur, torch.tensor([[0.5, 0.0], [1.0, 1.0]]))  # only the sparser one restarts
    s.step = torch.tensor([0.11, 0.11])
    s.sparsity_at_check = torch.tensor([1.0, 2.0])
    _AutoPGDBase._l1_checkpoint(s, initial_step=1.0, d=2)
    torch.testing.assert_close(s.step, torch.tensor([0.1, 0.1]))  # never below eps / 10


# --- strength on a trained, non-robust model --------------------------------------------------

# At Linf eps 0.12 the clean-trained digits MLP keeps about 22% robust accuracy against any
# attack we have (97% clean): room for a weak attack to show.
EPS_LINF = 0.12


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(loss, digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=EPS_LINF)
    apgd = APGD(steps=20, loss=loss)(digits_mlp, x, y, threat=threat, generator=gen())
    pgd = PGD(steps=20, loss=loss)(digits_mlp, x, y, threat=threat, generator=gen())
    assert threat.contains(x, apgd.x_adv).all()
    robust = accuracy(digits_mlp, apgd.x_adv, y)
    assert robust <= accuracy(digits_mlp, pgd.x_adv, y)
    assert robust <= 0.30 and accuracy(digits_mlp, x, y) - robust >= 0.6
    assert torch.equal(apgd.success, digits_mlp(apgd.x_adv).argmax(dim=1) != y)


@pytest.mark.parametrize("threat", [L2(eps=1.0), L1(eps=4.0)], ids=["L2", "L1"])
def test_apgd_breaks_a_non_robust_model_in_l2_and_l1(threat, digits_mlp, digits_test):
    x, y = digits_test
    result = APGD(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    assert threat.contains(x, result.x_adv).all()
    assert accuracy(digits_mlp, result.x_adv, y) <= 0.05
    # The same budget spent by PGD leaves more samples unbroken.
    pgd = PGD(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    assert int(result.success.sum()) >= int(pgd.success.sum())


def test_apgd_t_is_at_least_as_strong_as_apgd_ce(digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=EPS_LINF)
    apgd_t = APGDT(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    apgd_ce = APGD(steps=20)(digits_mlp, x, y, threat=threat, generator=gen())
    assert int(apgd_t.success.sum()) >= int(apgd_ce.success.sum()) - 0.01 * len(x)
    assert apgd_t.targets is None
    target = apgd_t.extras["target"]
    clean_wrong = digits_mlp(x).argmax(dim=1) != y
    broken_by_a_run = apgd_t.success & ~clean_wrong
    assert (target[broken_by_a_run] >= 0).all() and (target[broken_by_a_run] != y[broken_by_a_run]).all()
    assert (target[~apgd_t.success | clean_wrong] == -1).all()


def test_dlr_losses_break_a_model_whose_cross_entropy_is_masked(digits_mlp, digits_test):
    # Logits scaled by 1e4: same predictions, but softmax is saturated and the CE gradient is zero.
    x, y = digits_test
    scaled = nn.Sequential(digits_mlp, Scale(1e4)).eval()
    threat = Linf(eps=EPS_LINF)
    clean = accuracy(scaled, x, y)
    ce = accuracy(scaled, APGD(steps=20)(scaled, x, y, threat=threat, generator=gen()).x_adv, y)
    dlr = accuracy(scaled, APGD(steps=20, loss="dlr")(scaled, x, y, threat=threat, generator=gen()).x_adv, y)
    targeted = accuracy(scaled, APGDT(steps=20)(scaled, x, y, threat=threat, generator=gen()).x_adv, y)
    assert ce >= clean - 0.05  # the masking works: CE barely moves
    assert dlr <= 0.30 and targeted <= 0.30
    assert targeted <= dlr + 0.01


def test_targeted_apgd_reaches_the_target(digits_mlp, digits_test):
    x, y = digits_test
    for loss in ("ce", "dlr"):
        result = APGD(steps=20, loss=loss)(digits_mlp, x, y, threat=Linf(eps=0.25), targets="random", generator=gen())
        assert float(result.success.float().mean()) >= 0.85
        predictions = digits_mlp(result.x_adv).argmax(dim=1)
        assert torch.equal(result.success, predictions == result.targets)


def test_restarts_never_lose_and_do_find_more(digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=0.1)
    single = APGD(steps=2)(digits_mlp, x, y, threat=threat, generator=gen(3))
    several = APGD(steps=2, restarts=6)(digits_mlp, x, y, threat=threat, generator=gen(3))
    assert (several.success | ~single.success).all()
    assert int(several.success.sum()) > int(single.success.sum())
    restart = several.extras["restart"]
    assert (restart[several.success & ~single.success] > 0).all()


# --- the kept point ---------------------------------------------------------------------------


class BandModel(nn.Module):
    """1-D input in [-1, 1]; class 1 on the bands 0.005 < |x| < 0.98, class 0 elsewhere. A third
    output ``x - 100`` (never the argmax) gives a loss that grows towards x = 1, outside the band."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0]
        band = (x.abs() - 0.005) * (0.98 - x.abs())
        return torch.stack([torch.zeros_like(x), band, x - 100], dim=1)


def _drift(logits, labels, targets=None):
    return logits[:, 2]


def test_an_adversarial_iterate_is_kept_over_a_higher_loss_one():
    # From x = 0 with eps = 1 the random start's first coordinate (t_0 / max |t| over 1000
    # uniform coordinates, as the reference) lies in a band (adversarial) with probability about
    # 0.975; the loss then climbs to x_0 = 1, which is not adversarial and has the highest loss.
    x, y = torch.zeros(8, 1000), torch.zeros(8, dtype=torch.int64)
    attack = APGD(steps=10, loss=_drift, early_stop=False)
    result = attack(BandModel(), x, y, threat=Linf(eps=1.0, bounds=(-1.0, 1.0)), generator=gen())
    assert result.success.all()
    assert (result.x_adv[:, 0].abs() < 0.98).all()
    # Without the preference for adversarial points the highest-loss point, x = 1, would be kept.
    assert (result.loss < 0.98 - 100).all()


# --- early stopping ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_attack", [lambda **kw: APGD(steps=20, **kw), lambda **kw: APGDT(steps=10, n_target_classes=3, **kw)],
                         ids=["apgd", "apgd-t"])
def test_early_stop_keeps_the_success_set_and_costs_less(make_attack, digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=0.1)
    stop = make_attack(early_stop=True)(digits_mlp, x, y, threat=threat, generator=gen())
    full = make_attack(early_stop=False)(digits_mlp, x, y, threat=threat, generator=gen())
    assert torch.equal(stop.success, full.success)
    assert 0.3 < float(stop.success.float().mean()) < 0.9  # a mixed set, so the check has teeth
    # Unbroken samples follow exactly the same trajectory.
    assert torch.equal(stop.x_adv[~stop.success], full.x_adv[~full.success])
    assert stop.backwards < 0.8 * full.backwards and stop.forwards < full.forwards


def test_cost_counters_match_the_documented_cost(digits_mlp, digits_test):
    x, y = digits_test[0][:10], digits_test[1][:10]
    n, steps = len(x), 5
    result = APGD(steps=steps, early_stop=False, restarts=1)(digits_mlp, x, y, threat=Linf(eps=0.1), generator=gen())
    assert (result.forwards, result.backwards) == ((steps + 1 + 2) * n, steps * n)
    # APGD-T with an eps too small to break anything: every target runs on every correct sample.
    tiny = Linf(eps=1e-4)
    correct = int((digits_mlp(x).argmax(dim=1) == y).sum())
    result = APGDT(steps=steps, n_target_classes=3, restarts=2, early_stop=False)(digits_mlp, x, y, threat=tiny, generator=gen())
    assert not result.success[digits_mlp(x).argmax(dim=1) == y].any()
    assert result.backwards == 3 * 2 * steps * correct
    assert result.forwards == 3 * n + 3 * 2 * (steps + 1) * correct


# --- few classes and the linear oracle --------------------------------------------------------


def _points_with_minimal_linf_eps(w: torch.Tensor, c: float, eps: float, factors: torch.Tensor, seed: int):
    """Points whose minimal L∞ flipping perturbation is ``factors * eps`` (both signs)."""
    factors = torch.cat([factors, factors])
    signs = torch.cat([torch.ones(len(factors) // 2), -torch.ones(len(factors) // 2)])
    margins = signs * factors * eps * w.abs().sum()
    z = 0.1 * torch.randn(len(margins), len(w), generator=gen(seed))
    x = z + ((margins - z @ w - c) / (w @ w))[:, None] * w
    return x, (margins > 0).long(), factors


@pytest.mark.parametrize("make_attack", [lambda: APGD(steps=10), lambda: APGD(steps=10, loss="margin"), lambda: APGDT(steps=10)],
                         ids=["apgd-ce", "apgd-margin", "apgd-t-two-classes"])
def test_linear_two_class_model_is_broken_exactly_above_the_minimal_eps(make_attack):
    model, w, c = linear_two_class(8, seed=2)
    factors = torch.tensor([0.5, 0.9, 0.98, 1.02, 1.1, 2.0])
    x, y, factors = _points_with_minimal_linf_eps(w, c, 0.5, factors, seed=3)
    result = make_attack()(model, x, y, threat=Linf(eps=0.5, bounds=(-10.0, 10.0)), generator=gen())
    assert result.success.tolist() == (factors < 1).tolist()


@pytest.mark.parametrize("make_attack", [lambda k: APGD(steps=100, loss="margin", give_up=2.0, keep_near=k),
                                         lambda k: APGDT(steps=100, give_up=2.0, keep_near=k)], ids=["apgd", "apgd-t"])
def test_give_up_drops_at_the_first_checkpoint_exactly_the_stuck_samples_above_keep_near(make_attack):
    # On a linear model the smallest margin in the L∞ ball is m_clean * (1 - 1/f) for a point whose
    # minimal flipping eps is f * eps, and APGD reaches it in its first step, then stays: no
    # progress, so the sample leaves at the first checkpoint unless it is within keep_near of the
    # boundary. f = 1.25 gets to 0.2 m_clean, f = 2 to 0.5 m_clean, and neither is broken.
    model, w, c = linear_two_class(8, seed=2)
    threat = Linf(eps=0.5, bounds=(-10.0, 10.0))
    runs_all, runs_to_checkpoint = 100, 1 + checkpoints(100)[0]  # backwards per sample: the start's and the steps'
    for factor, keep_near, backwards in [(1.25, 0.3, runs_all), (1.25, 0.15, runs_to_checkpoint),
                                         (2.0, 0.3, runs_to_checkpoint), (2.0, 0.55, runs_all),
                                         (1.02, None, runs_to_checkpoint)]:
        x, y, _ = _points_with_minimal_linf_eps(w, c, 0.5, torch.tensor([factor]), seed=3)
        result = make_attack(keep_near)(model, x, y, threat=threat, generator=gen())
        assert not result.success.any()
        assert result.backwards == backwards * len(x), (factor, keep_near)
        # What it found before leaving is kept: the best margin reached, not the clean point.
        torch.testing.assert_close(result.margin, (1 - 1 / factor) * (w.abs().sum() * 0.5 * factor).expand(len(x)),
                                   atol=1e-3, rtol=1e-3)


class _Descending(nn.Module):
    """Two classes; the margin of sample i is ``10 * x_i0 - 0.01 * min(t, stop)`` after ``t`` forward
    calls: it falls by 0.01 per APGD step whatever the step does (the perturbation budget moves it
    by at most 10 eps), up to call ``stop``."""

    def __init__(self, stop: float = math.inf) -> None:
        super().__init__()
        self.calls, self.stop = 0, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        margin = 10 * x[:, 0] - 0.01 * min(self.calls, self.stop)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


@pytest.mark.parametrize("make_attack", [lambda s: APGD(steps=100, loss="margin", give_up=s),
                                         lambda s: APGDT(steps=100, n_target_classes=1, give_up=s)], ids=["apgd", "apgd-t"])
def test_give_up_keeps_exactly_the_samples_whose_rate_of_progress_reaches_the_boundary(make_attack):
    # With safety factor 1, a sample whose margin falls at a constant rate r stays while
    # m > r * (steps left) is false, i.e. exactly when that rate breaks it within the budget:
    # margin 0.9 at the start (broken near step 90) stays and falls; 1.2 leaves at the first
    # checkpoint, however steadily it descends. With factor 0.5 both leave there.
    x = torch.tensor([[0.09, 0.0], [0.12, 0.0]])
    y = torch.zeros(2, dtype=torch.int64)
    threat = Linf(eps=1e-4, bounds=(-10.0, 10.0))
    first = checkpoints(100)[0]
    result = make_attack(1.0)(_Descending(), x, y, threat=threat, generator=gen())
    assert result.success.tolist() == [True, False]
    assert result.backwards > 80 + first
    result = make_attack(0.5)(_Descending(), x, y, threat=threat, generator=gen())
    assert result.success.tolist() == [False, False]
    assert result.backwards == 2 * (1 + first)


@pytest.mark.parametrize("make_attack", [lambda: APGD(steps=100, loss="margin", give_up=1.0),
                                         lambda: APGDT(steps=100, n_target_classes=1, give_up=1.0)], ids=["apgd", "apgd-t"])
@pytest.mark.parametrize("start, stays", [(1.025, True), (1.035, False)])
def test_give_up_boundary_is_the_recent_rate_times_the_steps_left(make_attack, start, stays):
    # The margin falls by exactly 0.01 per forward call (25 calls before the first checkpoint's
    # verdict: the template's clean check, the start, 22 steps and one more), so at the first
    # checkpoint (step 22 of 100) it is start - 0.25, its rate over the window's second half
    # (steps 11-22) is 0.01 and 78 steps are left: with safety 1 a sample leaves exactly when its
    # margin there exceeds 0.78. 0.775 stays (and runs every step), 0.785 leaves; half a step
    # either side of the boundary, so a rate, a window or a count of steps left off by one moves it.
    x = torch.tensor([[start / 10, 0.0]])
    y = torch.zeros(1, dtype=torch.int64)
    result = make_attack()(_Descending(), x, y, threat=Linf(eps=1e-9, bounds=(-10.0, 10.0)), generator=gen())
    assert result.backwards == (100 if stays else 1 + checkpoints(100)[0])


def test_give_up_rate_is_measured_from_the_middle_of_the_first_window():
    # 50 steps: the first checkpoint is 11, so the first window's second half starts at step 11 // 2 = 5
    # (the window starts at step 0). The margin falls by 0.01 per forward call up to call 9 (step 6 here)
    # and then stays: from step 5 to 11 it fell 0.01, a rate of 0.01 / 6 per step, which over the 39 steps
    # left reaches 0.065 > the margin 0.12 - 0.09 = 0.03: the sample stays, and leaves at the second
    # checkpoint (21), whose window saw no progress. Measured from step 6 the rate would be 0 and it would
    # leave at step 11 already.
    assert checkpoints(50)[:2] == (11, 21)
    x, y = torch.tensor([[0.012, 0.0]]), torch.zeros(1, dtype=torch.int64)
    threat = Linf(eps=1e-9, bounds=(-10.0, 10.0))
    result = APGD(steps=50, loss="margin", give_up=1.0)(_Descending(stop=9), x, y, threat=threat, generator=gen())
    assert not result.success.any()
    assert result.backwards == 1 + 21
    # The fall ending one call earlier (step 5), the second half of the window sees none: it leaves at 11.
    result = APGD(steps=50, loss="margin", give_up=1.0)(_Descending(stop=8), x, y, threat=threat, generator=gen())
    assert result.backwards == 1 + 11


def test_give_up_keeps_the_success_set_on_a_trained_model(digits_mlp, digits_test):
    x, y = digits_test
    threat = Linf(eps=0.1)
    for make in (lambda g: APGD(steps=30, give_up=g), lambda g: APGDT(steps=30, n_target_classes=3, give_up=g)):
        full, lean = make(None)(digits_mlp, x, y, threat=threat, generator=gen()), make(2.0)(digits_mlp, x, y, threat=threat, generator=gen())
        assert lean.success.tolist() == full.success.tolist()
        assert lean.backwards < full.backwards


def test_apgd_reaches_the_l2_optimum_of_a_linear_model():
    # From a random start each projected step shrinks the angle to w; the momentum and the
    # restarts from the best point must not undo that.
    model, w, _ = linear_two_class(8, seed=3)
    x = 0.1 * torch.randn(12, 8, generator=gen(4))
    y = model(x).argmax(dim=1).detach()
    toward = torch.where(y == 1, -1.0, 1.0)[:, None] * w / w.norm()
    result = APGD(steps=50, loss="margin", kappa=math.inf, early_stop=False)(
        model, x, y, threat=L2(eps=0.5, bounds=(-10.0, 10.0)), generator=gen(5))
    torch.testing.assert_close(result.x_adv, x + 0.5 * toward, atol=1e-3, rtol=0)


def test_apgd_t_on_a_three_class_model_uses_both_other_classes(digits_mlp, digits_test):
    x, y = digits_test
    model = FirstClasses(digits_mlp, 3).eval()
    keep = (y < 3) & (model(x).argmax(dim=1) == y)
    x, y = x[keep], y[keep]
    threat = Linf(eps=0.2)
    result = APGDT(steps=20)(model, x, y, threat=threat, generator=gen())  # n_target_classes=9 > K - 1
    assert accuracy(model, result.x_adv, y) <= 0.2
    target = result.extras["target"]
    assert ((target >= 0) & (target < 3) & (target != y))[result.success].all()
    capped = APGDT(steps=20, n_target_classes=2)(model, x, y, threat=threat, generator=gen())
    assert torch.equal(result.x_adv, capped.x_adv) and result.backwards == capped.backwards


def test_dlr_with_too_few_classes_is_rejected_with_a_clear_message(digits_mlp, digits_test):
    x, y = digits_test[0][:8], digits_test[1][:8] % 3
    three = FirstClasses(digits_mlp, 3).eval()
    targets = (y + 1) % 3
    with pytest.raises(RobustlabError, match="at least 4 classes"):
        APGD(steps=2, loss="dlr", early_stop=False)(three, x, y, threat=Linf(eps=0.1), targets=targets)
    two, _, _ = linear_two_class(4)
    x2 = torch.rand(4, 4, generator=gen())
    with pytest.raises(RobustlabError, match="at least 3 classes"):
        APGD(steps=2, loss="dlr")(two, x2, torch.zeros(4, dtype=torch.int64), threat=Linf(eps=0.1))


# --- configuration ----------------------------------------------------------------------------


def test_registry_and_aliases():
    assert APGD is AutoPGD and APGDT is AutoPGDTargeted
    assert isinstance(build_attack("apgd", steps=3), AutoPGD)
    assert isinstance(build_attack("apgd-t", steps=3), AutoPGDTargeted)
    assert AutoPGD().config() == {"attack": "apgd", "steps": 100, "restarts": 1, "rho": 0.75, "momentum": 0.75,
                                  "early_stop": True, "give_up": None, "keep_near": None, "loss": "ce", "kappa": 0.0}
    assert AutoPGDTargeted().n_target_classes == 9


@pytest.mark.parametrize(
    "make,keyword",
    [
        (lambda: APGD(steps=0), "steps"),
        (lambda: APGD(steps=2.5), "steps"),
        (lambda: APGD(restarts=0), "restarts"),
        (lambda: APGD(rho=0.0), "rho"),
        (lambda: APGD(rho=1.5), "rho"),
        (lambda: APGD(momentum=0.0), "momentum"),
        (lambda: APGD(momentum=1.2), "momentum"),
        (lambda: APGD(loss="hinge"), "unknown loss"),
        (lambda: APGDT(n_target_classes=0), "n_target_classes"),
        (lambda: APGDT(steps=-1), "steps"),
        (lambda: APGD(give_up=0.0), "give_up"),
        (lambda: APGD(give_up=math.inf), "give_up"),
        (lambda: APGD(give_up=True), "give_up"),
        (lambda: APGDT(give_up=2.0, early_stop=False), "early_stop"),
        (lambda: APGD(keep_near=0.1), "keep_near"),
        (lambda: APGD(give_up=2.0, keep_near=1.0), "keep_near"),
        (lambda: APGDT(give_up=2.0, keep_near=True), "keep_near"),
        (lambda: APGD(give_up=2.0, keep_near=0.0), "keep_near"),
        (lambda: APGD(give_up=2.0, keep_near="0.1"), "keep_near"),
    ],
)
def test_bad_hyperparameters_are_rejected(make, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        make()


def test_an_unbounded_threat_is_rejected(digits_mlp, digits_test):
    x, y = digits_test[0][:4], digits_test[1][:4]
    with pytest.raises(RobustlabError, match="bounded"):
        APGD(steps=2)(digits_mlp, x, y, threat=Linf(eps=math.inf))


def test_apgd_t_with_given_targets_is_targeted_apgd_on_dlr(digits_mlp, digits_test):
    x, y = digits_test[0][:60], digits_test[1][:60]
    threat = Linf(eps=0.2)
    result = APGDT(steps=20)(digits_mlp, x, y, threat=threat, targets="least-likely", generator=gen())
    expected = APGD(steps=20, loss="dlr")(digits_mlp, x, y, threat=threat, targets="least-likely", generator=gen())
    assert torch.equal(result.targets, expected.targets)
    assert torch.equal(result.success, expected.success) and result.success.float().mean() > 0.2


@pytest.mark.parametrize("make_attack", [lambda: APGD(steps=8), lambda: APGDT(steps=4, n_target_classes=2)], ids=["apgd", "apgd-t"])
@pytest.mark.parametrize("threat", [Linf(eps=0.05), L2(eps=0.3), L1(eps=1.0)], ids=["Linf", "L2", "L1"])
def test_same_generator_same_result_and_other_seeds_differ(make_attack, threat, digits_mlp, digits_test):
    x, y = digits_test[0][:40], digits_test[1][:40]
    attack = make_attack()
    first = attack(digits_mlp, x, y, threat=threat, generator=gen(7))
    second = attack(digits_mlp, x, y, threat=threat, generator=gen(7))
    other = attack(digits_mlp, x, y, threat=threat, generator=gen(8))
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.success, second.success)
    assert not torch.equal(first.x_adv, other.x_adv)


# --- MALT target ranking ----------------------------------------------------------------------


def test_linear_ranking_is_the_order_of_the_linearised_distances():
    # A linear 5-class model on 3 features, built so that the nearest boundary is not the
    # highest wrong logit: class 1 has the highest wrong logit but a flat boundary.
    torch.manual_seed(0)
    w = torch.tensor([[0.0, 0.0, 0.0], [0.01, -0.01, 0.01], [0.1, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, -2.0, 3.0]])
    b = torch.tensor([5.0, 4.0, 1.0, 2.0, 0.0])
    model = nn.Linear(3, 5)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(b)
    x = torch.rand(16, 3) * 0.1
    y = torch.zeros(16, dtype=torch.int64)
    from robustlab.attacks.apgd import linearised_target_ranking
    from robustlab.attacks.base import ModelOracle

    for threat, dual in ((Linf(eps=0.3), 1), (L2(eps=0.3), 2)):
        oracle = ModelOracle(model)
        ranked = linearised_target_ranking(oracle, x, y, threat, 5)
        logits = model(x).detach()
        gaps = logits[:, :1] - logits[:, 1:]
        norms = torch.linalg.vector_norm(w[0] - w[1:], ord=dual, dim=1)
        expected = (gaps / norms).argsort(dim=1, stable=True) + 1
        assert torch.equal(ranked, expected)
        # One forward and K - 1 backwards per sample.
        assert (oracle.forwards, oracle.backwards) == (16, 16 * 4)
    logit_order = logits.scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)[:, 0]
    assert (ranked[:, 0] != logit_order).all()  # the ranking is not the logit order here


def test_apgd_t_with_linear_ranking_attacks_the_nearest_boundary_first():
    # Class 1 has the higher wrong logit but a flat boundary (unreachable); class 2's boundary
    # lies within eps. With one target, the logit order attacks class 1 and fails.
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.95, 0.9, -0.2]))
    x, y = torch.full((4, 2), 0.2), torch.zeros(4, dtype=torch.int64)
    threat = Linf(eps=0.6)
    one_target = dict(steps=20, n_target_classes=1)
    by_logits = APGDT(**one_target)(model, x, y, threat=threat, generator=gen())
    by_line = APGDT(**one_target, ranking="linear")(model, x, y, threat=threat, generator=gen())
    assert not by_logits.success.any()
    assert by_line.success.all() and (by_line.predictions == 2).all()


# --- pieces pinned one by one (issue 15: mutation survivors) -----------------------------------


def test_l1_direction_skips_the_stuck_coordinates_at_both_edges_for_each_sample():
    grad = torch.tensor([
        # 1 sits at the lower edge going down and 6 at the upper edge going up: stuck; 2 sits at the lower
        # edge going up: free. Every magnitude below 1. k = ceil(0.3 * 8) = 3: coordinates 0, 2, 4.
        [0.5, -0.9, 0.3, 0.05, -0.2, 0.0, 0.6, 0.1],
        # k = ceil(0.1 * 8) = 1: only the largest, coordinate 1, with the whole unit L1 norm.
        [0.1, -0.7, 0.2, 0.0, 0.0, 0.0, 0.0, 0.3],
        # k = 8 > the 2 coordinates that can move (3 is stuck at the upper edge, the rest have no gradient):
        # only those 2 move, each by 1/2.
        [0.4, 0.0, -0.2, 0.3, 0.0, 0.0, 0.0, 0.0],
    ])
    x_adv = torch.full((3, 8), 0.5)
    x_adv[0, 1] = x_adv[0, 2] = 0.0
    x_adv[0, 6] = x_adv[2, 3] = 1.0
    direction = _sparse_direction(grad, x_adv, torch.tensor([0.3, 0.1, 1.0]), (0.0, 1.0))
    expected = torch.tensor([
        [1 / 3, 0.0, 1 / 3, 0.0, -1 / 3, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(direction, expected)


def test_l1_checkpoint_counts_changed_coordinates_against_the_clean_input():
    # d = 20; the best points differ from the (non-zero) clean input in 19 and 18 coordinates, against 20 at
    # the last checkpoint. 19 / 20 = 0.95 is not below the reference's threshold (`sp_curr / sp_old < .95`):
    # sample 0 shrinks its step by 1.5; sample 1 got sparser: its step is reset to eps and it restarts
    # from its best point. The state stays in the attack's dtype.
    s = _state(increases=[0, 0], loss_max=[1.0, 1.0], loss_max_at_check=[0.0, 0.0], halved_at_check=[False, False])
    f64 = torch.float64
    s.x_clean = torch.full((2, 20), 0.25, dtype=f64)
    s.x_max = s.x_clean.clone()
    s.x_max[0, :19] += 0.1
    s.x_max[1, :18] -= 0.1
    s.x_cur, s.grad, s.grad_max = torch.ones(2, 20, dtype=f64), torch.ones(2, 20, dtype=f64), -torch.ones(2, 20, dtype=f64)
    s.step = torch.tensor([0.3, 0.3], dtype=f64)
    s.sparsity_at_check = torch.tensor([20.0, 20.0], dtype=f64)
    _AutoPGDBase._l1_checkpoint(s, initial_step=1.0, d=20)
    torch.testing.assert_close(s.step, torch.tensor([0.2, 1.0], dtype=f64))
    torch.testing.assert_close(s.topk, torch.tensor([19 / 20 / 1.5, 18 / 20 / 1.5], dtype=f64))
    torch.testing.assert_close(s.sparsity_at_check, torch.tensor([19.0, 18.0], dtype=f64))
    assert torch.equal(s.x_cur[0], torch.ones(20, dtype=f64)) and torch.equal(s.x_cur[1], s.x_max[1])
    assert torch.equal(s.grad[1], -torch.ones(20, dtype=f64))


@pytest.mark.parametrize("threat,dual", [(Linf(eps=0.1), 1.0), (L2(eps=0.1), 2.0), (L1(eps=0.1), math.inf)],
                         ids=["Linf", "L2", "L1"])
def test_linear_ranking_follows_its_definition_sample_by_sample_on_a_nonlinear_model(threat, dual):
    # A tanh MLP: each sample has its own gradients. Classes 4 and 5 have the same output weights, so
    # their distances tie exactly and the lower class comes first.
    from robustlab.attacks.apgd import linearised_target_ranking
    from robustlab.attacks.base import ModelOracle

    g = gen(11)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        model[2].weight[5], model[2].bias[5] = model[2].weight[4], model[2].bias[4]
    x = torch.rand(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    ranked = linearised_target_ranking(ModelOracle(model), x, y, threat, 6)
    for i in range(len(x)):
        distance = {}
        for j in range(6):
            if j == y[i]:
                continue
            xi = x[i:i + 1].clone().requires_grad_(True)
            z = model(xi)[0]
            (grad,) = torch.autograd.grad(z[y[i]] - z[j], xi)
            distance[j] = float((z[y[i]] - z[j]).detach() / (torch.linalg.vector_norm(grad, ord=dual) + 1e-12))
        assert ranked[i].tolist() == sorted(distance, key=lambda j: (distance[j], j)), i


def test_dlr_or_margin_switches_at_the_class_counts_dlr_needs():
    from robustlab.attacks.apgd import _dlr_or_margin
    from robustlab.losses import dlr, margin

    g = gen(3)
    for k, targeted in ((3, False), (4, True), (5, False), (5, True)):  # DLR is defined: it is used
        z, y = torch.randn(6, k, generator=g), torch.randint(0, k, (6,), generator=g)
        t = (y + 1) % k if targeted else None
        torch.testing.assert_close(_dlr_or_margin(z, y, t), dlr(z, y, t))
    # Too few classes: the uncapped margin, positive where the attack already succeeds.
    z = torch.tensor([[0.0, 3.0], [2.0, 1.0]])
    torch.testing.assert_close(_dlr_or_margin(z, torch.tensor([0, 0])), torch.tensor([3.0, -1.0]))
    z = torch.tensor([[0.0, 1.0, 5.0], [3.0, 1.0, 0.0]])
    torch.testing.assert_close(_dlr_or_margin(z, torch.tensor([0, 0]), torch.tensor([2, 2])), torch.tensor([4.0, -3.0]))
    assert torch.equal(_dlr_or_margin(z, torch.tensor([0, 0]), torch.tensor([2, 2])),
                       margin(z, torch.tensor([0, 0]), torch.tensor([2, 2]), kappa=math.inf))


def test_targeted_apgd_checks_the_clean_input_against_the_target():
    # Targeted at class 2 with eps 0.1: sample 0 (u = -3) cannot reach it and returns its highest
    # targeted-loss point, x + eps (not the clean input); sample 1 starts misclassified into class 1,
    # which is not the target, so it is attacked (and reaches class 2); sample 2 starts in the target:
    # done, unchanged, credited to no restart (-1).
    x, y, t = torch.tensor([[0.2], [0.5], [0.8]]), torch.tensor([0, 0, 0]), torch.tensor([2, 2, 2])
    result = APGD(steps=5, early_stop=True)(ramp3(), x, y, threat=Linf(eps=0.1), targets=t, generator=gen())
    assert result.success.tolist() == [False, True, True]
    torch.testing.assert_close(result.x_adv[0], torch.tensor([0.3]))
    assert torch.equal(result.x_adv[2], x[2])
    assert result.extras["restart"].dtype == torch.int64 and result.extras["restart"].tolist() == [-1, 0, -1]


def _wall() -> nn.Module:
    # Two inputs, three classes: logits (0.95, 0.9, 2 x_0 - 0.2). Class 1, the highest wrong logit, can never
    # win; class 2 wins for x_0 > 0.575.
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.95, 0.9, -0.2]))
    return model


def test_apgd_t_goes_through_its_targets_and_credits_only_the_samples_it_breaks():
    model, y = _wall(), torch.zeros(1, dtype=torch.int64)
    x = torch.tensor([[0.2, 0.2]])
    # Logit order: class 1 first (fails), then class 2 breaks the single remaining sample.
    by_logits = APGDT(steps=10, n_target_classes=2)(model, x, y, threat=Linf(eps=0.6), generator=gen())
    assert by_logits.success.tolist() == [True] and by_logits.extras["target"].tolist() == [2]
    # Linear order: class 2 first breaks it; nothing is left for class 1.
    by_line = APGDT(steps=10, n_target_classes=2, ranking="linear")(model, x, y, threat=Linf(eps=0.6), generator=gen())
    assert by_line.success.tolist() == [True] and by_line.extras["target"].tolist() == [2]
    assert by_line.extras["restart"].tolist() == [0]
    # Sample 0 is misclassified from the start; samples 1 and 2 cannot be broken at eps 0.3 (x_0 <= 0.35):
    # neither is credited to a target or a restart, and the unbroken ones return their highest-loss
    # iterate, not the clean input.
    x = torch.tensor([[0.8, 0.2], [0.0, 0.2], [0.05, 0.3]])
    y = torch.zeros(3, dtype=torch.int64)
    result = APGDT(steps=10, n_target_classes=2, restarts=2)(model, x, y, threat=Linf(eps=0.3), generator=gen())
    assert result.success.tolist() == [True, False, False]
    assert result.extras["target"].tolist() == [-1, -1, -1] and result.extras["restart"].tolist() == [-1, -1, -1]
    assert result.extras["target"].dtype == result.extras["restart"].dtype == torch.int64
    assert torch.equal(result.x_adv[0], x[0])
    assert (result.x_adv[1:] != x[1:]).any(dim=1).all()


def test_apgd_t_with_given_targets_passes_every_option_to_targeted_apgd():
    from robustlab.attacks.apgd import _dlr_or_margin

    g = gen(12)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 5)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.rand(10, 6, generator=g, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    t = (y + 2) % 5
    options = dict(steps=12, restarts=2, rho=0.3, momentum=0.6, early_stop=True, give_up=2.0, keep_near=0.5)
    threat = Linf(eps=0.08)
    given = APGDT(**options)(model, x, y, threat=threat, targets=t, generator=gen(1))
    expected = APGD(**options, loss=_dlr_or_margin)(model, x, y, threat=threat, targets=t, generator=gen(1))
    assert 0 < int(given.success.sum()) < len(x)  # some broken, some run on
    assert torch.equal(given.x_adv, expected.x_adv)
    assert (given.forwards, given.backwards) == (expected.forwards, expected.backwards)
    # give_up and keep_near both change the run here (the counts of the same attack without keep_near, and
    # without either), so the equality above checks that both are passed on.
    for other in (dict(options, keep_near=None), dict(options, give_up=None, keep_near=None)):
        assert APGD(**other, loss=_dlr_or_margin)(model, x, y, threat=threat, targets=t, generator=gen(1)).backwards \
            != expected.backwards


def test_l1_checkpoints_every_4_percent_of_the_steps():
    # The reference implementation: k = max(int(0.04 * n_iter), 1), a checkpoint every k iterations.
    from robustlab.attacks.apgd import _l1_checkpoints

    assert _l1_checkpoints(100) == tuple(range(4, 101, 4))
    assert _l1_checkpoints(60) == tuple(range(2, 61, 2))  # int(2.4) = 2
    assert _l1_checkpoints(10) == tuple(range(1, 11))  # int(0.4) = 0 -> 1
    assert _l1_checkpoints(1) == (1,)


def test_l1_step_moves_the_step_along_the_sparse_direction_and_projects_around_the_clean_input():
    # Sample 0: top-2 coordinates (0 and 2) by 0.4 / 2 each, inside the ball. Sample 1: a step of 3 from a
    # point already 0.3 away in coordinate 3 overshoots eps = 1 and is projected onto the ball around x_clean:
    # delta (0, 3, 0, 0.3) soft-thresholded at 2 is (0, 1, 0, 0).
    threat = L1(eps=1.0, bounds=(-10.0, 10.0))
    s = _state(increases=[0, 0], loss_max=[0.0, 0.0], loss_max_at_check=[0.0, 0.0], halved_at_check=[False, False])
    s.x_clean = torch.full((2, 4), 0.4)
    s.x_cur = s.x_clean + torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3]])
    s.grad = torch.tensor([[0.3, -0.1, 0.2, 0.05], [-0.1, 0.4, 0.0, 0.2]])
    s.topk, s.step = torch.tensor([0.5, 0.25]), torch.tensor([0.4, 3.0])
    x_new = _AutoPGDBase._l1_step(s, threat)
    torch.testing.assert_close(x_new[0], torch.tensor([0.6, 0.4, 0.6, 0.4]))
    torch.testing.assert_close(x_new[1], torch.tensor([0.4, 1.4, 0.4, 0.4]))


def test_checkpoint_halves_on_a_tie_with_rho_times_the_window_as_the_reference():
    # The reference's check_oscillation halves where increases <= rho * window (the paper writes <):
    # window 4, rho 0.75: 3 increases halve, 4 do not (the best loss improved: condition 2 is off).
    s = _state(increases=[3, 4], loss_max=[2.0, 2.0], loss_max_at_check=[1.0, 1.0], halved_at_check=[False, False])
    APGD()._checkpoint(s, window=4)
    torch.testing.assert_close(s.step, torch.tensor([0.1, 0.2]))


def test_l2_step_scales_into_the_ball_then_clips_to_the_box_as_the_reference():
    # From x = (0.9, 0.5), a first step of 1 along (1, 1) / sqrt(2) with eps = 0.5: the reference scales the
    # perturbation to norm eps, (0.354, 0.354), then clips to the box: (1.0, 0.854). (The exact projection
    # onto ball and box would give (1.0, 0.99).)
    threat = L2(eps=0.5)
    s = _state(increases=[0], loss_max=[0.0], loss_max_at_check=[0.0], halved_at_check=[False])
    s.x_clean = torch.tensor([[0.9, 0.5]])
    s.x_cur, s.x_prev, s.grad = s.x_clean.clone(), s.x_clean.clone(), torch.tensor([[2.0, 2.0]])
    s.step = torch.tensor([1.0])
    z = APGD()._step(s, threat, first=True)
    torch.testing.assert_close(z, torch.tensor([[1.0, 0.5 + 0.5 / math.sqrt(2)]]))


def test_restarts_run_again_only_on_the_unbroken_samples():
    # Sample 0 (u = -0.5) breaks in restart 0; sample 1 (u = -4, eps 0.1 reaches u = -3) never does. The
    # second restart costs exactly what a one-restart run on sample 1 alone costs, minus the template's two
    # forwards and the clean check.
    model, threat, y = ramp3(), Linf(eps=0.1), torch.zeros(2, dtype=torch.int64)
    x = torch.tensor([[0.45], [0.1]])
    one = APGD(steps=4, restarts=1)(model, x, y, threat=threat, generator=gen())
    two = APGD(steps=4, restarts=2)(model, x, y, threat=threat, generator=gen())
    alone = APGD(steps=4, restarts=1)(model, x[1:], y[1:], threat=threat, generator=gen())
    assert two.success.tolist() == [True, False] and two.extras["restart"].tolist() == [0, -1]
    assert two.forwards - one.forwards == alone.forwards - 3 > 0
    # Once restart 0 has broken every sample, the second restart has nothing to run and costs nothing.
    broken_once = APGD(steps=4, restarts=1)(model, x[:1], y[:1], threat=threat, generator=gen())
    broken_twice = APGD(steps=4, restarts=2)(model, x[:1], y[:1], threat=threat, generator=gen())
    assert broken_twice.success.tolist() == [True] and broken_twice.extras["restart"].tolist() == [0]
    assert torch.equal(broken_twice.x_adv, broken_once.x_adv)
    assert (broken_twice.forwards, broken_twice.backwards) == (broken_once.forwards, broken_once.backwards)


def test_apgd_random_start_for_l1_is_the_threat_models_draw():
    from robustlab.attacks.apgd import _random_start

    threat, x, todo = L1(eps=2.0), torch.rand(5, 3, 4, 4, generator=gen(1)), torch.tensor([0, 2, 3])
    assert torch.equal(_random_start(threat, x, todo, gen(9)), threat.random_init(x, gen(9))[todo])


def test_an_unbounded_threat_is_rejected_with_the_reason():
    with pytest.raises(RobustlabError, match=r"^APGD's step size is a multiple of eps; it needs a bounded threat model$"):
        APGD(steps=2)(ramp3(), torch.tensor([[0.5]]), torch.tensor([0]), threat=Linf(eps=math.inf))


def test_apgd_t_checks_its_own_hyperparameters_with_the_reason():
    for bad in (2.5, True):
        with pytest.raises(RobustlabError, match="n_target_classes must be a positive integer"):
            APGDT(n_target_classes=bad)
    with pytest.raises(RobustlabError, match=r"^ranking must be one of \['logits', 'linear'\] \(how target classes are ordered\), got 'nearest'$"):
        APGDT(ranking="nearest")


def test_targeted_apgd_counts_only_the_target_as_a_success_along_the_way():
    # ramp3 targeted at class 1 (the band |u| < 0.2) from u = -1.4 with eps 0.2 (u moves by 2): this start
    # lands at u = 0.6, class 2, misclassified but not the target, and so does the third iterate; APGD must
    # go on (early_stop asks for the target) until it lands in the band, at u = 0.1.
    model = InputRecorder(ramp3())
    x, y, t = torch.tensor([[0.36]]), torch.tensor([0]), torch.tensor([1])
    result = APGD(steps=10, loss="margin")(model, x, y, threat=Linf(eps=0.2), targets=t, generator=gen(1))
    classes = [int(ramp3()(xi).argmax()) for xi in model.inputs]
    assert classes[2] == 2 and 2 in classes[3:-2]  # the start, and a later iterate, in the wrong wrong class
    assert result.success.tolist() == [True]
    torch.testing.assert_close(10 * (result.x_adv - 0.5), torch.tensor([[0.1]]))
    # Two steps from u = 1.4: start u = -0.6 (targeted margin loss 0.2 - |u| = -0.4), then 3.4 (-3.2), then the
    # last iterate, scored without a gradient, u = 0.9 (-0.7; class 2). The start has the highest targeted
    # loss and is returned (the untargeted loss of the last iterate, 1.8, would have picked it).
    model = InputRecorder(ramp3())
    result = APGD(steps=2, loss="margin")(model, torch.tensor([[0.64]]), y, threat=Linf(eps=0.2), targets=t,
                                          generator=gen(0))
    torch.testing.assert_close(10 * (torch.cat(model.inputs[2:5]) - 0.5), torch.tensor([[-0.6], [3.4], [0.9]]))
    assert result.success.tolist() == [False]
    torch.testing.assert_close(10 * (result.x_adv - 0.5), torch.tensor([[-0.6]]))


@pytest.mark.parametrize("keep_near,backwards", [(0.1, 1 + checkpoints(100)[0]), (0.2, 100)])
def test_targeted_give_up_measures_margins_to_the_target(keep_near, backwards):
    # ramp3 targeted at class 1 from u = 1.4 (class 2: misclassified, not the target), eps 0.1 (u within
    # [0.4, 2.4]): the margin to the target, max(Z_0, Z_2) - Z_1 = |u| - 0.2, is 1.2 at the clean input and
    # 0.2 from the first steps on (u = 0.4), where it stays: no progress, so the sample gives up at the first
    # checkpoint unless 0.2 is within keep_near of 1.2: it leaves with keep_near 0.1 and runs all 100 steps
    # with 0.2. Margins to the label y = 0 instead (-2.8 clean, negative around the ball) would decide the
    # other way in both cases.
    x, y, t = torch.tensor([[0.64], [0.64]]), torch.tensor([0, 0]), torch.tensor([1, 1])
    result = APGD(steps=100, loss="margin", give_up=2.0, keep_near=keep_near)(
        ramp3(), x, y, threat=Linf(eps=0.1), targets=t, generator=gen())
    assert result.success.tolist() == [False, False]
    assert result.backwards == backwards * len(x)
    torch.testing.assert_close(10 * (result.x_adv - 0.5), torch.tensor([[0.4], [0.4]]), atol=1e-5, rtol=0)


def test_l1_run_steps_and_checks_as_l1_apgd(monkeypatch):
    # l1-APGD's constants wired into the run: the step starts at eps (not 2 eps), the top-k fraction at 20%
    # of all d = 2 * 5 features, the sparsity remembered at d; a checkpoint every 4% of the steps. A linear
    # model with constant gradient w, the start fixed at x + 0.6 e_2, eps 1, a box too wide to matter:
    # iterate 1: top-2 coordinates (0, 1) by eps / 2 each: (0.5, -0.5, 0.6), L1 1.6, projected (soft
    #   threshold 0.2) to (0.3, -0.3, 0.4);
    # iterate 2 (no checkpoint at 1 of 50 steps): (0.8, -0.8, 0.4) projected (threshold 1/3) to
    #   (7/15, -7/15, 1/15);
    # checkpoint at 2: 3 changed coordinates < 0.95 * 10, so the step is reset to eps, top-k = 3 / 10 / 1.5;
    # iterate 3: (29/30, -29/30, 1/15) projected (threshold 7/15) to (0.5, -0.5, 0).
    import robustlab.attacks.apgd as apgd_module

    w = torch.tensor([10.0, -9, 8, -7, 6, -5, 4, -3, 2, -1], dtype=torch.float64)
    linear = nn.Linear(10, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.stack([torch.zeros(10, dtype=torch.float64), w]))
        linear.bias.copy_(torch.tensor([0.0, -100.0], dtype=torch.float64))  # never broken
    model = InputRecorder(nn.Sequential(nn.Flatten(), linear))
    x, y = torch.zeros(1, 2, 5, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
    start = x.clone()
    start[0, 0, 2] = 0.6
    monkeypatch.setattr(apgd_module, "_random_start", lambda threat, x, todo, generator: start[todo])
    checks = []
    original = _AutoPGDBase._l1_checkpoint

    def spy(s, initial_step, d):
        # inputs: the template's clean pass, the start, then one per iterate
        checks.append((len(model.inputs) - 2, initial_step, d, s.step.item(), s.topk.item(), s.sparsity_at_check.item()))
        original(s, initial_step, d)

    monkeypatch.setattr(_AutoPGDBase, "_l1_checkpoint", staticmethod(spy))
    APGD(steps=50, loss="margin", kappa=math.inf, early_stop=False)(model, x, y, threat=L1(eps=1.0, bounds=(-10.0, 10.0)),
                                                                     generator=gen())
    iterates = [xi.flatten()[:4] for xi in model.inputs[2:5]]
    expected = torch.tensor([[0.3, -0.3, 0.4, 0.0], [7 / 15, -7 / 15, 1 / 15, 0.0], [0.5, -0.5, 0.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(torch.stack(iterates), expected, rtol=0, atol=1e-12)
    assert [c[0] for c in checks] == list(range(2, 50, 2))  # every int(0.04 * 50) = 2 steps, not at the last
    assert all(c[1:3] == (1.0, 10) for c in checks)  # initial step eps, d = every feature
    # (step, top-k, sparsity) each checkpoint finds: the initial (eps, 0.2, d); reset after 3 < 9.5;
    # reset after 2 < 0.95 * 3 with top-k 2 / 10 / 1.5; then shrunk by 1.5 (no sparser best point).
    torch.testing.assert_close([c[3:] for c in checks[:4]],
                               [(1.0, 0.2, 10.0), (1.0, 0.2, 3.0), (1.0, 2 / 15, 2.0), (2 / 3, 2 / 15, 2.0)])


def test_give_up_applies_at_a_checkpoint_one_step_before_the_end():
    # 3 steps: checkpoints (1, 2, 3); an unbreakable point (minimal eps 2 * eps) is stuck at its best margin
    # after the first step and gives up at checkpoint 2, so its last iterate is never scored: per sample the
    # template's two forwards, the clean check, the start and steps 1 and 2 (forward and backward each), not
    # step 3's forward. Without give_up (the default) it runs every step.
    model, w, c = linear_two_class(8, seed=2)
    x, y, _ = _points_with_minimal_linf_eps(w, c, 0.5, torch.tensor([2.0]), seed=3)
    threat = Linf(eps=0.5, bounds=(-10.0, 10.0))
    assert checkpoints(3) == (1, 2, 3)
    result = APGD(steps=3, loss="margin", give_up=2.0)(model, x, y, threat=threat, generator=gen())
    full = APGD(steps=3, loss="margin")(model, x, y, threat=threat, generator=gen())
    assert not result.success.any() and not full.success.any()
    assert (result.forwards, result.backwards) == (6 * len(x), 3 * len(x))
    assert (full.forwards, full.backwards) == (7 * len(x), 3 * len(x))


def test_a_tie_with_the_best_loss_keeps_the_earlier_point_to_restart_from():
    # The reference keeps its best point on a strict increase (``y1 > loss_best``). Loss -|10 (x - 0.5)| (class 0
    # always wins), x = 0.5, eps = 0.25, 4 steps (checkpoints 1, 2, 3, 4): the start is 0.75 (loss -2.5) and the
    # first step of 2 eps lands on 0.25 (loss -2.5, a tie). Checkpoint 1 halves the step (no increase) and
    # restarts from the best point, the start 0.75, with its gradient: z = 0.75 - 0.25 = 0.5, and the momentum
    # step from 0.75 (previous iterate 0.75) is 0.75 + 0.75 (0.5 - 0.75) = 0.5625. Restarting from the tie,
    # 0.25, would give 0.3125.
    linear = nn.Linear(1, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0], [0.0], [10.0]]))
        linear.bias.copy_(torch.tensor([100.0, 0.0, -5.0]))
    model = InputRecorder(linear)
    APGD(steps=4, loss=lambda z, y, t: -z[:, 2].abs(), early_stop=False)(
        model, torch.tensor([[0.5]]), torch.tensor([0]), threat=Linf(eps=0.25), generator=gen(1))
    assert [float(v) for v in torch.cat(model.inputs[1:4]).flatten()] == [0.75, 0.25, 0.5625]


def test_hyperparameters_at_the_ends_of_their_ranges_and_the_messages():
    # steps 1, rho 1 (halve unless the loss rose at every step) and momentum 1 (no momentum) are valid.
    for attack in (APGD(steps=1), APGD(rho=1.0), APGD(momentum=1.0), APGD(give_up=0.5, keep_near=0.5)):
        assert isinstance(attack, AutoPGD)
    with pytest.raises(RobustlabError, match=r"^restarts must be a positive integer, got 2.5$"):
        APGD(restarts=2.5)
    with pytest.raises(RobustlabError, match=r"^steps must be a positive integer, got 0$"):
        APGD(steps=0)
    with pytest.raises(RobustlabError, match=r"^give_up must be None or a positive number \(a safety factor\), got '2'$"):
        APGD(give_up="2")
    with pytest.raises(RobustlabError, match=r"^give_up asks for a verdict, not the highest loss: it needs early_stop=True$"):
        APGD(give_up=0.1, early_stop=False)
