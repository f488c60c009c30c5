"""Auto-PGD (APGD) and its multi-target version APGD-T.

APGD: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Sec. 3 (Algorithm 1). The sparse L1 variant: Croce & Hein,
"Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021. Where
the papers leave a detail open, the authors' reference implementation (``fra31/auto-attack``,
``autopgd_base.py``) decides, and the docstring says so.

APGD is PGD with momentum and a step size that needs no tuning: it starts at ``2 * eps``, and at
a fixed schedule of checkpoints halves the step of every sample whose loss has stopped climbing,
restarting that sample from the best point found so far. APGD-T runs targeted APGD on the
targeted DLR loss against each of the most likely wrong classes in turn and counts any
misclassification as a success.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, difference_of_logits, is_adversarial
from robustlab.attacks.gradient import BestIterate, LossMixin
from robustlab.errors import RobustlabError
from robustlab.losses import Loss, dlr, get_loss, margin
from robustlab.threat import ThreatModel

__all__ = ["APGD", "APGDT", "AutoPGD", "AutoPGDTargeted", "checkpoints", "linearised_target_ranking"]

# Checkpoint schedule of Sec. 3 (step size selection), in hundredths of the iterations so that
# the rounding of w_j = ceil(p_j * steps) is exact: p_1 = 0.22 and
# p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
_FIRST_CHECKPOINT, _GAP_SHRINK, _MIN_GAP = 22, 3, 6
# L1 (reference implementation): a checkpoint every 4% of the iterations; the step starts at eps,
# shrinks by 1.5 per checkpoint without a sparser best point, never below eps / 10; the top-k
# fraction starts at 20% of the coordinates and then follows the best point's sparsity / 1.5.
_L1_CHECK_EVERY, _L1_STEP_SHRINK, _L1_MIN_STEP_FACTOR = 0.04, 1.5, 10.0
_L1_INITIAL_TOPK, _L1_TOPK_SHRINK, _L1_SPARSER = 0.2, 1.5, 0.95


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations ``w_1 < w_2 < ... <= steps`` at which APGD may halve its step (L∞, L2).

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020, Sec. 3), keeping
    ``p_j <= 1``; for few steps, coinciding checkpoints are merged. For ``steps=100``:
    ``(22, 41, 57, 70, 80, 87, 93, 99)``. (The reference implementation rounds the gaps down
    to whole iterations instead, which differs for step counts that are not multiples of 100.)
    """
    out: list[int] = []
    previous, current = 0, _FIRST_CHECKPOINT
    while current <= 100:
        w = -(-current * steps // 100)
        if not out or w > out[-1]:
            out.append(w)
        previous, current = current, current + max(current - previous - _GAP_SHRINK, _MIN_GAP)
    return tuple(out)


def _l1_checkpoints(steps: int) -> tuple[int, ...]:
    every = max(int(_L1_CHECK_EVERY * steps), 1)
    return tuple(range(every, steps + 1, every))


def _sparse_direction(grad: Tensor, x_adv: Tensor, fraction: Tensor, bounds: tuple[float, float]) -> Tensor:
    """l1-APGD's ascent direction: ``sign(grad)`` on each sample's top ``ceil(fraction * d)``
    coordinates by gradient magnitude, scaled to unit L1 norm.

    Coordinates already at the box edge in the direction of ascent are left out before ranking:
    a step on them would be clipped away and waste L1 budget ("mind the box").
    """
    g, xa = flat(grad), flat(x_adv)
    d = g.shape[1]
    lo, hi = bounds
    stuck = ((xa <= lo) & (g < 0)) | ((xa >= hi) & (g > 0))
    magnitude = g.abs().masked_fill(stuck, 0.0)
    k = (fraction * d).ceil().clamp(1, d).long()
    threshold = magnitude.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    chosen = (magnitude >= threshold) & (magnitude > 0)
    direction = g.sign() * chosen
    return (direction / chosen.sum(dim=1, keepdim=True).clamp_min(1)).reshape(grad.shape)


def _random_start(threat: ThreatModel, x: Tensor, todo: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random starts for the samples ``todo``, drawn for the whole batch so that a sample's
    start does not depend on which other samples are still being attacked (``early_stop`` then
    changes the cost, never a sample's trajectory).

    L∞ and L2 as the reference implementation (``attack_single_run``): ``x + eps * t / ||t||``
    clipped to the box, ``t`` uniform in ``[-1, 1]^d`` (L∞) or Gaussian (L2), so the start lies
    on the sphere of radius ``eps`` before the clipping. L1: the threat model's ``random_init``.
    """
    if threat.norm not in ("Linf", "L2"):
        return threat.random_init(x, generator)[todo]
    if threat.norm == "Linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        size = flat(t).abs().amax(dim=1)
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        size = flat(t).norm(dim=1)
    start = threat.clip_to_box(x + threat.eps * t / per_sample(size + 1e-12, t))
    return start[todo]


def _scale_and_clip(threat: ThreatModel, x: Tensor, z: Tensor) -> Tensor:
    """APGD's L2 projection in the reference implementation: scale ``z - x`` into the ball,
    then clip to the box. The result lies in ball ∩ box (clipping towards a box that contains
    ``x`` only shrinks coordinates) but is not the exact projection onto it."""
    delta = z - x
    norm = per_sample(flat(delta).norm(dim=1), delta)
    return threat.clip_to_box(x + delta / (norm + 1e-12) * norm.clamp_max(threat.eps))


@dataclass
class _State:
    """Per-sample state of one APGD run over the samples still being attacked (``idx``)."""

    idx: Tensor
    x_clean: Tensor
    y: Tensor
    loss_targets: Tensor | None
    criterion_targets: Tensor | None
    x_cur: Tensor
    x_prev: Tensor
    grad: Tensor
    loss: Tensor
    x_max: Tensor  # the highest-loss point so far: where a halved step restarts from
    grad_max: Tensor
    loss_max: Tensor
    step: Tensor
    increases: Tensor  # loss increases since the last checkpoint (condition 1)
    loss_max_at_check: Tensor  # for condition 2
    halved_at_check: Tensor
    topk: Tensor  # L1 only: fraction of coordinates a step moves
    sparsity_at_check: Tensor  # L1 only
    margin_min: Tensor  # smallest margin to the success criterion so far (``give_up``)
    margin_halfway: Tensor  # margin_min halfway through the current give-up window (``give_up``)
    margin_clean: Tensor  # its value at the clean input (``keep_near``; ones when not given)
    lower: Tensor | None = None  # L∞: the threat set around x_clean as a box (ThreatModel.box), computed once
    upper: Tensor | None = None

    def select(self, keep: Tensor) -> _State:
        selected: dict[str, Any] = {f.name: None if (v := getattr(self, f.name)) is None else v[keep]
                                    for f in dataclasses.fields(self)}
        return _State(**selected)


@dataclass(frozen=True, kw_only=True)
class _AutoPGDBase(Attack):
    """Hyperparameters and the single-start APGD run shared by APGD and APGD-T."""

    norms = frozenset({"Linf", "L2", "L1"})

    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    early_stop: bool = True
    give_up: float | None = None
    keep_near: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise RobustlabError(f"steps must be a positive integer, got {self.steps!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise RobustlabError(f"restarts must be a positive integer, got {self.restarts!r}")
        if not (isinstance(self.rho, (int, float)) and 0 < self.rho <= 1):
            raise RobustlabError(f"rho (the fraction of loss increases below which the step is halved) must lie in (0, 1], got {self.rho!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 < self.momentum <= 1):
            raise RobustlabError(f"momentum must lie in (0, 1] (1 means no momentum), got {self.momentum!r}")
        if self.give_up is not None:
            if (isinstance(self.give_up, bool) or not isinstance(self.give_up, (int, float))
                    or not 0 < self.give_up < math.inf):
                raise RobustlabError(f"give_up must be None or a positive number (a safety factor), got {self.give_up!r}")
            if not self.early_stop:
                raise RobustlabError("give_up asks for a verdict, not the highest loss: it needs early_stop=True")
        if self.keep_near is not None and (isinstance(self.keep_near, bool) or not isinstance(self.keep_near, (int, float))
                                           or not 0 < self.keep_near < 1 or self.give_up is None):
            raise RobustlabError(f"keep_near must be None or a fraction of the clean margin in (0, 1), with give_up set; "
                                 f"got keep_near={self.keep_near!r}, give_up={self.give_up!r}")

    @staticmethod
    def _check_threat(threat: ThreatModel) -> None:
        if threat.unbounded:
            raise RobustlabError("APGD's step size is a multiple of eps; it needs a bounded threat model")

    def _descend(self, oracle: ModelOracle, x: Tensor, x_start: Tensor, y: Tensor, loss_targets: Tensor | None,
                 criterion_targets: Tensor | None, threat: ThreatModel, loss_fn: Loss,
                 margin_clean: Tensor | None = None) -> BestIterate:
        """One APGD run from ``x_start``; returns the best point per sample (adversarial first,
        then highest loss). ``loss_targets`` go to the loss, ``criterion_targets`` to the success
        test (APGD-T climbs a targeted loss but wants any misclassification). ``margin_clean``:
        :func:`difference_of_logits` to the success criterion at ``x``, needed by ``keep_near``."""
        l1 = threat.norm == "L1"
        schedule = set(_l1_checkpoints(self.steps) if l1 else checkpoints(self.steps))
        # give_up: at each checkpoint, the window since the previous one and its second half.
        ends = checkpoints(self.steps) if self.give_up is not None else ()
        halfway = {end: (start + end) // 2 for start, end in zip((0, *ends), ends)}
        halfway_points = set(halfway.values())
        safety, near = self.give_up or 0.0, self.keep_near or 0.0
        # Initial step: 2 eps for L∞ and L2 (Sec. 3), eps for L1 (reference implementation).
        initial_step = (1.0 if l1 else 2.0) * threat.eps
        best = BestIterate.empty(x)
        box = threat.box(x)
        n, d = x.shape[0], math.prod(x.shape[1:])
        loss, grad, logits = oracle.loss_and_grad(x_start, lambda z: loss_fn(z, y, loss_targets))
        success = is_adversarial(logits, y, criterion_targets)
        best.update(None, x_start, loss, success)
        margin_start = difference_of_logits(logits, y, criterion_targets) if halfway else x.new_zeros(n)
        s = _State(
            idx=torch.arange(n, device=x.device), x_clean=x, y=y, loss_targets=loss_targets,
            # As the reference implementation: the first loss increase is counted against 0 (its
            # loss history starts as zeros), and condition 2 is off at the first checkpoint
            # (``reduced_last_check`` starts as ones).
            criterion_targets=criterion_targets, x_cur=x_start, x_prev=x_start, grad=grad,
            loss=torch.zeros_like(loss), x_max=x_start, grad_max=grad, loss_max=loss,
            step=x.new_full((n,), initial_step),
            increases=torch.zeros(n, dtype=torch.int64, device=x.device), loss_max_at_check=loss,
            halved_at_check=torch.ones(n, dtype=torch.bool, device=x.device),
            topk=x.new_full((n,), _L1_INITIAL_TOPK), sparsity_at_check=x.new_full((n,), float(d)),
            margin_min=margin_start, margin_halfway=margin_start,
            margin_clean=x.new_ones(n) if margin_clean is None else margin_clean,
            lower=None if box is None else box[0], upper=None if box is None else box[1],
        )
        if self.early_stop:
            s = s.select(~success)
        last_check = 0
        for i in range(self.steps):
            if s.idx.numel() == 0:
                break
            x_new = self._l1_step(s, threat) if l1 else self._step(s, threat, first=(i == 0))
            if i + 1 < self.steps:
                loss, grad, logits = oracle.loss_and_grad(
                    x_new, lambda z: loss_fn(z, s.y, s.loss_targets))
            else:
                # The last iterate is only scored: its gradient would never be used.
                logits = oracle.logits(x_new)
                loss, grad = loss_fn(logits, s.y, s.loss_targets), s.grad
            success = is_adversarial(logits, s.y, s.criterion_targets)
            best.update(None if s.idx.numel() == n else s.idx, x_new, loss, success)  # no gather while all run
            s.increases = s.increases + (loss > s.loss)
            s.x_prev, s.x_cur, s.loss, s.grad = s.x_cur, x_new, loss, grad
            improved = loss > s.loss_max
            s.x_max = torch.where(per_sample(improved, x_new), x_new, s.x_max)
            s.grad_max = torch.where(per_sample(improved, grad), grad, s.grad_max)
            s.loss_max = torch.where(improved, loss, s.loss_max)
            if i + 1 in schedule and i + 1 < self.steps:
                if l1:
                    self._l1_checkpoint(s, initial_step, d)
                else:
                    self._checkpoint(s, window=i + 1 - last_check)
                last_check = i + 1
            leave = success
            if halfway:
                s.margin_min = torch.minimum(s.margin_min, difference_of_logits(logits, s.y, s.criterion_targets))
                if i + 1 in halfway and i + 1 < self.steps:
                    # Far from the boundary, and the recent rate of progress (over the second half
                    # of the window), kept up give_up-fold, would not reach it in the steps left.
                    rate = (s.margin_halfway - s.margin_min) / (i + 1 - halfway[i + 1])
                    far = s.margin_min > near * s.margin_clean
                    leave = leave | (far & (s.margin_min > safety * rate * (self.steps - i - 1)))
                if i + 1 in halfway_points:
                    s.margin_halfway = s.margin_min
            # Compacting copies every state tensor; skip it on the many steps that drop nobody.
            if self.early_stop and bool(leave.any()):
                s = s.select(~leave)
        return best

    def _step(self, s: _State, threat: ThreatModel, *, first: bool) -> Tensor:
        """L∞/L2: a projected steepest-ascent step, then the momentum combination (Algorithm 1).
        L2 projects as the reference implementation does (:func:`_scale_and_clip`)."""
        def project(v: Tensor) -> Tensor:
            if s.lower is not None and s.upper is not None:  # L∞: the box, computed once
                return v.clamp(s.lower, s.upper)
            return _scale_and_clip(threat, s.x_clean, v)

        z = project(s.x_cur + per_sample(s.step, s.x_cur) * threat.steepest_direction(s.grad, s.x_cur))
        if first:
            return z
        a = self.momentum
        return project(s.x_cur + a * (z - s.x_cur) + (1 - a) * (s.x_cur - s.x_prev))

    @staticmethod
    def _l1_step(s: _State, threat: ThreatModel) -> Tensor:
        # The reference implementation uses no momentum for L1; neither do we.
        direction = _sparse_direction(s.grad, s.x_cur, s.topk, threat.bounds)
        return threat.project(s.x_clean, s.x_cur + per_sample(s.step, s.x_cur) * direction)

    def _checkpoint(self, s: _State, *, window: int) -> None:
        """Halve the step where condition 1 (at most ``rho * window`` loss increases since
        the last checkpoint) or condition 2 (the step was not halved at the last checkpoint and
        the best loss has not improved since) holds, and restart those samples from their
        best point. Conditions of the paper (Sec. 3) in the reference implementation's form
        (``check_oscillation``): ``<=`` in condition 1 where the paper writes ``<``, condition 2
        off at the first checkpoint, and the increases counted along the loss trajectory (a
        restart from the best point does not reset the loss the next step is compared with)."""
        halve = (s.increases <= self.rho * window) | (~s.halved_at_check & (s.loss_max <= s.loss_max_at_check))
        s.step = torch.where(halve, s.step / 2, s.step)
        self._restart_from_best(s, halve)
        s.halved_at_check, s.loss_max_at_check = halve, s.loss_max
        s.increases = torch.zeros_like(s.increases)

    @staticmethod
    def _l1_checkpoint(s: _State, initial_step: float, d: int) -> None:
        """l1-APGD: where the best point got sparser, reset the step to its initial value and
        restart from the best point; elsewhere shrink the step. The top-k fraction follows the
        best point's sparsity."""
        sparsity = (flat(s.x_max - s.x_clean) != 0).sum(dim=1).to(s.step.dtype)
        sparser = sparsity < _L1_SPARSER * s.sparsity_at_check
        s.topk = sparsity / d / _L1_TOPK_SHRINK
        s.step = torch.where(sparser, torch.full_like(s.step, initial_step), s.step / _L1_STEP_SHRINK)
        s.step = s.step.clamp(initial_step / _L1_MIN_STEP_FACTOR, initial_step)
        s.sparsity_at_check = sparsity
        _AutoPGDBase._restart_from_best(s, sparser)

    @staticmethod
    def _restart_from_best(s: _State, where: Tensor) -> None:
        s.x_cur = torch.where(per_sample(where, s.x_cur), s.x_max, s.x_cur)
        s.grad = torch.where(per_sample(where, s.grad), s.grad_max, s.grad)


@dataclass(frozen=True, kw_only=True)
class AutoPGD(LossMixin, _AutoPGDBase):
    """APGD (Croce & Hein, ICML 2020) for L∞, L2 and L1 (l1-APGD, Croce & Hein, ICML 2021).

    ``x`` is ``[N, ...]`` inside the box, ``y`` is ``[N]``; untargeted, or targeted when
    ``targets`` are given (success then means "classified as the target").

    Each step (L∞, L2) takes ``z = P(x_k + step * steepest_direction(grad))`` and then
    ``x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))``, ``P`` the
    projection onto ball ∩ box (L∞: exact; L2: scaled into the ball, then clipped to the box, as
    the reference implementation). The start is ``x + eps * t / ||t||`` clipped to the box (the
    reference's). The step starts at ``2 * eps``; at the checkpoints
    :func:`checkpoints` it is halved per sample when the loss climbed in at most a fraction
    ``rho`` of the steps since the last checkpoint, or when neither the step nor the best loss
    changed since then; a halved sample restarts from its highest-loss point.

    L1 follows l1-APGD: the step moves the top-k coordinates by gradient magnitude (skipping
    those stuck at the box edge) by ``step / k`` each; k starts at 20% of the coordinates and
    then tracks the sparsity of the best point (divided by 1.5); the step starts at ``eps``,
    shrinks by 1.5 at each checkpoint (every 4% of the steps) unless the best point got sparser,
    which resets it to ``eps`` and restarts from that point; no momentum. These constants come
    from the authors' reference implementation. The L1 threat model's own ``sparsity_quantile``
    is not used.

    Returned per sample: an adversarial point if any iterate of any restart was adversarial,
    otherwise the highest-loss iterate. ``extras["restart"]`` is the restart that broke each
    sample (-1 where none did, including samples adversarial on the clean input).

    Args:
        steps: iterations per restart (100, Sec. 3/5).
        restarts: random starts; later restarts run only on samples not yet broken (1).
        rho: condition-1 threshold (0.75, Sec. 3).
        momentum: weight ``alpha`` of the new step against the previous update (0.75, Sec. 3).
        loss: ``"ce"``, ``"dlr"`` (Sec. 4; untargeted needs >= 3 classes, targeted >= 4),
            ``"margin"`` (with ``kappa``) or a callable ``(logits, labels, targets) -> [N]``.
        early_stop: drop a sample from the batch as soon as it is adversarial (including on the
            clean input, checked first), so later steps compute only on unbroken samples, as
            AutoAttack does between runs. The success set is the same; broken samples keep their
            first adversarial point rather than the highest-loss one.
        give_up: ``None`` (every sample runs all ``steps``) or a safety factor ``s``: at each
            checkpoint ``w`` of :func:`checkpoints` (22, 41, ... of 100 steps), a sample leaves the
            run unbroken when its smallest margin so far ``m``
            (:func:`~robustlab.attacks.base.difference_of_logits` to the success criterion, over
            the run's iterates) satisfies ``m > s * r * (steps - w)``, ``r`` its rate of progress
            over the second half of the window since the previous checkpoint (the fall of ``m``
            per step): kept up ``s``-fold, that rate would not reach the boundary in the steps
            left. A sample stuck on a plateau leaves; one still descending, however far, stays.
            Our rule, in the spirit of A3's discarding of points that will not fall (Liu et al.,
            CVPR 2022). Needs ``early_stop`` (a verdict, not the highest loss, is asked).
            ``fast`` uses 2.
        keep_near: ``None`` or a fraction ``k`` of the clean margin: a sample whose smallest
            margin so far is at most ``k`` times its margin at the clean input never gives up
            (with ``give_up``). ``fast`` uses 0.15. Both chosen from the margin trajectories of
            APGD-CE and APGD-T on ten trained models (``benchmarks/README.md``, "The reference
            AutoAttack"): a rule on the margin alone (leave above 15% of the clean margin at a
            checkpoint) lost successes of APGD-T on the slowly descending zoo bilateral model;
            this one lost none on any of them.

    Cost per sample, at most: ``restarts * steps`` backwards and ``restarts * (steps + 1)``
    forwards (the start and ``steps - 1`` gradient steps, then a forward-only score of the last
    iterate), plus one forward for the clean check when ``early_stop``; the template adds two
    forwards.
    """

    name = "apgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, str):
            get_loss(self.loss)  # an unknown loss name fails here, at construction

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        self._check_threat(threat)
        loss_fn = self.loss_fn
        best = BestIterate.empty(x)
        winning_restart = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        margin_clean = None
        if self.early_stop:
            clean = oracle.logits(x)
            best.update(None, x, loss_fn(clean, y, targets), is_adversarial(clean, y, targets))
            todo = todo[~best.success]
            if self.keep_near is not None:
                margin_clean = difference_of_logits(clean, y, targets)
        for restart in range(self.restarts):
            if restart > 0:
                todo = todo[~best.success[todo]]
            if todo.numel() == 0:
                break
            t = None if targets is None else targets[todo]
            x_start = _random_start(threat, x, todo, generator)
            run = self._descend(oracle, x[todo], x_start, y[todo], t, t, threat, loss_fn,
                                None if margin_clean is None else margin_clean[todo])
            was_success = best.success[todo].clone()
            best.update(todo, run.x, run.loss, run.success)
            winning_restart[todo[run.success & ~was_success]] = restart
        return best.x, {"restart": winning_restart}


APGD = AutoPGD


def _dlr_or_margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """DLR where the model has enough classes (3 untargeted, 4 targeted), else the uncapped
    C&W margin: DLR's denominator needs the third (and fourth) largest logit, and the margin is
    DLR's numerator without that scale normalisation."""
    if logits.shape[1] >= (3 if targets is None else 4):
        return dlr(logits, labels, targets)
    return margin(logits, labels, targets, kappa=math.inf)


@dataclass(frozen=True, kw_only=True)
class AutoPGDTargeted(_AutoPGDBase):
    """APGD-T (Croce & Hein, ICML 2020, Sec. 4 and 5): targeted APGD on the targeted DLR loss
    against each of the ``n_target_classes`` highest-scoring wrong classes (ranked by the clean
    logits), in turn, on the samples no earlier target has broken. Untargeted: any
    misclassification at any iterate counts. Given ``targets``, it is targeted APGD on the
    targeted DLR loss towards them (success then means "classified as the target"), as FAB-T.

    With fewer than 4 classes the targeted DLR loss is undefined (its denominator uses the third
    and fourth largest logits), so the uncapped targeted C&W margin ``Z_t - max_{j != t} Z_j``
    is climbed instead: it is DLR's numerator without the scale normalisation, which matters
    little here because L∞ steps use only the gradient's sign and L2/L1 steps normalise it.

    ``x`` ``[N, ...]``, ``y`` ``[N]``; norms L∞, L2, L1. Other hyperparameters as
    :class:`AutoPGD`; ``n_target_classes`` defaults to 9 (AutoAttack, for 10 classes) and is
    capped at ``K - 1``. ``ranking``: ``"logits"`` (AutoAttack: the highest clean logits first)
    or ``"linear"`` (MALT, Melamed, Yehudai & Shamir, NeurIPS 2024: the classes whose
    linearised decision boundary is nearest first, :func:`linearised_target_ranking`; it costs
    one forward and ``K - 1`` backwards per sample and lets a few targets do the work of many). ``extras["target"]`` holds the target class whose run broke each sample
    (-1 where none did, including samples misclassified on the clean input), and
    ``extras["restart"]`` the restart within that target's runs. Samples never broken return
    the point with the highest targeted loss over all targets.

    Cost per sample, at most: one forward for the clean logits, plus
    ``min(n_target_classes, K - 1) * restarts`` runs of ``steps`` backwards and ``steps + 1``
    forwards each; the template adds two forwards.
    """

    name = "apgd-t"

    n_target_classes: int = 9
    ranking: str = "logits"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_target_classes, bool) or not isinstance(self.n_target_classes, int) or self.n_target_classes < 1:
            raise RobustlabError(f"n_target_classes must be a positive integer, got {self.n_target_classes!r}")
        if self.ranking not in _RANKINGS:
            raise RobustlabError(f"ranking must be one of {list(_RANKINGS)} (how target classes are ordered), got {self.ranking!r}")

    @property
    def loss_fn(self) -> Loss:
        return _dlr_or_margin

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if targets is not None:
            given = AutoPGD(steps=self.steps, restarts=self.restarts, rho=self.rho, momentum=self.momentum,
                            early_stop=self.early_stop, give_up=self.give_up, keep_near=self.keep_near,
                            loss=_dlr_or_margin)
            return given._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
        self._check_threat(threat)
        n = x.shape[0]
        clean = oracle.logits(x)
        n_targets = min(self.n_target_classes, clean.shape[1] - 1)
        if self.ranking == "linear":
            ranked = linearised_target_ranking(oracle, x, y, threat, clean.shape[1])[:, :n_targets]
        else:
            ranked = clean.scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)[:, :n_targets]
        margin_clean = None if self.keep_near is None else difference_of_logits(clean, y)
        best = BestIterate.empty(x)
        # Clean successes are kept as they are; their loss is not comparable with the targeted
        # losses of the runs, so it is not recorded.
        best.update(None, x, x.new_full((n,), -math.inf), is_adversarial(clean, y))
        winning_target = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        winning_restart = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        everyone = torch.arange(n, device=x.device)
        for j in range(n_targets):
            for restart in range(self.restarts):
                todo = everyone[~best.success]
                if todo.numel() == 0:
                    break
                t = ranked[todo, j]
                x_start = _random_start(threat, x, todo, generator)
                run = self._descend(oracle, x[todo], x_start, y[todo], t, None, threat, _dlr_or_margin,
                                    None if margin_clean is None else margin_clean[todo])
                was_success = best.success[todo].clone()
                best.update(todo, run.x, run.loss, run.success)
                won = todo[run.success & ~was_success]
                winning_target[won] = ranked[won, j]
                winning_restart[won] = restart
        return best.x, {"target": winning_target, "restart": winning_restart}


APGDT = AutoPGDTargeted

_RANKINGS = ("logits", "linear")
_DUAL_ORDER = {"Linf": 1.0, "L2": 2.0, "L1": math.inf}


def linearised_target_ranking(oracle: ModelOracle, x: Tensor, y: Tensor, threat: ThreatModel, classes: int) -> Tensor:
    """``[N, K - 1]``: the wrong classes of each sample, nearest linearised boundary first.

    MALT's target ranking (Melamed, Yehudai & Shamir, "MALT powers up adversarial attacks",
    NeurIPS 2024): class ``j`` is ranked by ``(Z_y - Z_j) / ||grad(Z_y - Z_j)||_q`` at ``x``,
    ``q`` the dual norm of the threat's (L1 for L∞, L2 for L2, L∞ for L1): the norm of the
    smallest step that reaches ``Z_j = Z_y`` under the model's first-order approximation. For a
    linear model this is the exact order of the minimal distances to the classes' boundaries
    (ignoring the box). Ties keep the lower class first. Cost: one forward and ``K - 1``
    backwards per sample.
    """
    offsets = torch.arange(1, classes, device=x.device)
    others = (y[:, None] + offsets) % classes  # [N, K-1]

    def gap(logits: Tensor, column: int) -> Tensor:
        return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, others[:, column:column + 1]).squeeze(1)

    losses, grads, _ = oracle.losses_and_grads(x, [partial(gap, column=c) for c in range(classes - 1)])
    distance = torch.stack([
        loss / (torch.linalg.vector_norm(flat(grad), ord=_DUAL_ORDER[threat.norm], dim=1) + 1e-12)
        for loss, grad in zip(losses, grads)], dim=1)
    # Order by distance, then by class index (stable sort of the classes in index order).
    by_class = others.argsort(dim=1)
    distance, others = distance.gather(1, by_class), others.gather(1, by_class)
    order = distance.argsort(dim=1, stable=True)
    return others.gather(1, order)
