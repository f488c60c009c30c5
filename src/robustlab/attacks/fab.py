"""Fast Adaptive Boundary attack (FAB; Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack") for L∞, L2 and L1, and its targeted variant
FAB-T as run by AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks").

Reference implementation: ``fra31/auto-attack:autoattack/fab_base.py`` (defaults, restart
radius, FAB-T's choice of targets). The core is :func:`hyperplane_projection`, the exact
minimal-norm step onto a hyperplane inside the box, solved by sorting (the paper's projection
step, there derived per norm; here one sort and cumulative sums per row). Section numbers of
the paper are not cited below: they could not be checked against the PDF here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, difference_of_logits, is_adversarial, require_two_classes
from robustlab.attacks.fmn import MinimumNormBest
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.validate import is_int

__all__ = ["FastAdaptiveBoundary", "FAB", "FABTargeted", "FABT", "hyperplane_projection"]

_ORDER = {"Linf": math.inf, "L2": 2.0, "L1": 1.0}
_DUAL_ORDER = {"Linf": 1.0, "L2": 2.0, "L1": math.inf}
# Lower bound on the step lengths in the bias ratio alpha and on dual norms in the linearised
# distance, as in the reference code (1e-8 and 1e-12): keeps 0/0 out of the iteration.
_MIN_STEP = 1e-8
_MIN_DUAL = 1e-12
# Cap on the restart radius when the threat model is unbounded: the reference code's default
# ``eps`` per norm (fab_base.py ``DEFAULT_EPS_DICT_BY_NORM``), for a box of width 1.
_RESTART_RADIUS = {"Linf": 0.3, "L2": 1.0, "L1": 5.0}

Boundary = Callable[[Tensor], tuple[Tensor, Tensor]]


# -- exact projection onto hyperplane ∩ box ---------------------------------------------------


def _solve_capped_sum(weights: Tensor, knots: Tensor, c: Tensor) -> Tensor:
    """``[M]``: the smallest ``t >= 0`` with ``sum_i weights_i * min(t, knots_i) = c`` (``inf``
    where even ``t = inf`` falls short). ``weights``, ``knots``: ``[M, D]``, non-negative;
    ``c``: ``[M]``, non-negative.

    The left side is piecewise linear and non-decreasing in ``t`` with kinks at the knots, so
    after sorting the knots, the segment containing the solution is found with cumulative sums.
    """
    knots, order = knots.sort(dim=1)
    weights = weights.gather(1, order)
    saturated = torch.where(weights > 0, weights * knots, torch.zeros_like(weights)).cumsum(dim=1)
    # Exclusive reverse cumsum: exactly 0 past the last positive weight, where knots may be inf.
    free = weights.flip(1).cumsum(dim=1).flip(1) - weights
    value_at_knot = saturated + torch.where(free > 0, knots * free, torch.zeros_like(free))
    passed = (value_at_knot < c[:, None]).sum(dim=1)
    d = knots.shape[1]
    zero = c.new_zeros(c.shape[0], 1)
    saturated_before = torch.cat([zero, saturated], dim=1).gather(1, passed[:, None]).squeeze(1)
    free_after = torch.cat([weights.sum(dim=1, keepdim=True), free], dim=1).gather(1, passed[:, None]).squeeze(1)
    last_knot = torch.cat([zero, knots], dim=1).gather(1, passed[:, None]).squeeze(1)
    t = ((c - saturated_before) / free_after.clamp_min(torch.finfo(c.dtype).tiny)).maximum(last_knot)
    infeasible = (passed == d) | (free_after <= 0)
    t = torch.where(infeasible, torch.full_like(t, math.inf), t)
    return torch.where(c > 0, t, torch.zeros_like(t))


def _amounts_linf(w_abs: Tensor, caps: Tensor, c: Tensor) -> Tensor:
    # Every coordinate moves by the same t, except those stopped by the box.
    knots = torch.where(w_abs > 0, caps, torch.full_like(caps, math.inf))
    t = _solve_capped_sum(w_abs, knots, c)
    return torch.minimum(t[:, None], caps)


def _amounts_l2(w_abs: Tensor, caps: Tensor, c: Tensor) -> Tensor:
    # KKT: the step is t * |w| clipped to the box, so coordinate i saturates at t = cap_i / |w_i|.
    knots = torch.where(w_abs > 0, caps / w_abs.clamp_min(torch.finfo(w_abs.dtype).tiny), torch.full_like(caps, math.inf))
    t = _solve_capped_sum(w_abs**2, knots, c)
    return torch.where(w_abs > 0, torch.minimum(t[:, None] * w_abs, caps), torch.zeros_like(caps))


def _amounts_l1(w_abs: Tensor, caps: Tensor, c: Tensor) -> Tensor:
    # A fractional knapsack: the coordinate with the largest |w| buys the most progress per unit
    # of L1 norm, so fill coordinates in that order up to their caps.
    w_sorted, order = w_abs.sort(dim=1, descending=True)
    caps_sorted = caps.gather(1, order)
    filled = (w_sorted * caps_sorted).cumsum(dim=1)
    full = (filled < c[:, None]).sum(dim=1)
    d = w_abs.shape[1]
    partial_at = full.clamp_max(d - 1)[:, None]
    filled_before = torch.cat([c.new_zeros(c.shape[0], 1), filled], dim=1).gather(1, full[:, None])
    w_partial = w_sorted.gather(1, partial_at)
    partial = ((c[:, None] - filled_before) / w_partial.clamp_min(torch.finfo(c.dtype).tiny))
    partial = torch.minimum(partial.clamp_min(0), caps_sorted.gather(1, partial_at))
    rank = torch.arange(d, device=c.device).expand_as(w_sorted)
    amounts_sorted = torch.where(rank < full[:, None], caps_sorted,
                                 torch.where(rank == full[:, None], partial, torch.zeros_like(caps_sorted)))
    amounts_sorted = torch.where(c[:, None] > 0, amounts_sorted, torch.zeros_like(amounts_sorted))
    return torch.empty_like(amounts_sorted).scatter_(1, order, amounts_sorted)


_AMOUNTS = {"Linf": _amounts_linf, "L2": _amounts_l2, "L1": _amounts_l1}


def hyperplane_projection(norm: str, w: Tensor, c: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """The smallest step onto a hyperplane inside a box, exactly, for a batch of problems.

    Solves ``min ||d||_p  s.t.  <w, d> = c,  lower <= d <= upper`` per row, for ``p`` = ``norm``
    in ``"Linf"``, ``"L2"``, ``"L1"`` (the projection of a point ``x`` onto
    ``{z : <w, z> = b} ∩ box`` is ``x + d`` with ``c = b - <w, x>`` and the box shifted by ``-x``).
    Where the hyperplane does not meet the box, returns the box point with the largest
    ``sign(c) <w, d>`` (the corner towards the hyperplane; coordinates with ``w_i = 0`` stay 0).

    Args:
        w: ``[M, D]`` normals. c: ``[M]`` offsets. lower, upper: ``[M, D]`` with
            ``lower <= 0 <= upper`` (the current point lies in the box).

    Returns ``d`` of shape ``[M, D]``. The minimiser is unique for L2; for L∞ and L1 this is
    one minimiser (L∞: every coordinate moves by the same amount unless the box stops it; L1:
    the coordinates with the largest ``|w_i|`` move first). Cost: one sort of each row.
    """
    if norm not in _AMOUNTS:
        raise RobustlabError(f"hyperplane_projection supports the norms {sorted(_AMOUNTS)}, not {norm!r}")
    # Orient each problem so that c >= 0; then each coordinate moves along sign(w_i), at most
    # as far as the box allows in that direction.
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip[:, None]
    direction = w.sign()
    caps = torch.where(w > 0, upper, torch.where(w < 0, -lower, torch.zeros_like(upper))).clamp_min(0)
    amounts = _AMOUNTS[norm](w.abs(), caps, c.abs())
    return direction * amounts


# -- the attack -------------------------------------------------------------------------------


def _closest_boundary(oracle: ModelOracle, x: Tensor, labels: Tensor, classes: int, dual: float) -> tuple[Tensor, Tensor]:
    """The linearised decision boundary nearest to ``x`` (as in DeepFool): for every
    class ``k != y``, ``g_k = Z_k - Z_y`` and its gradient; keep the ``k`` with the smallest
    ``|g_k| / ||grad g_k||_dual``. One batched call on ``K - 1`` copies of ``x``: ``K - 1``
    forwards and backwards per sample. Returns ``(g [M], grad g [M, D])``."""
    m, k = x.shape[0], classes
    others = (labels[:, None] + torch.arange(1, k, device=x.device)) % k
    rows = labels.repeat_interleave(k - 1)
    cols = others.reshape(-1)

    def differences(logits: Tensor) -> Tensor:
        return logits.gather(1, cols[:, None]).squeeze(1) - logits.gather(1, rows[:, None]).squeeze(1)

    g, grad, _ = oracle.loss_and_grad(x.repeat_interleave(k - 1, dim=0), differences)
    g, grad = g.reshape(m, k - 1), flat(grad).reshape(m, k - 1, -1)
    distance = g.abs() / (torch.linalg.vector_norm(grad, ord=dual, dim=2) + _MIN_DUAL)
    nearest = distance.argmin(dim=1)
    index = torch.arange(m, device=x.device)
    return g[index, nearest], grad[index, nearest]


def _target_boundary(oracle: ModelOracle, x: Tensor, targets: Tensor, reference: Tensor | None) -> tuple[Tensor, Tensor]:
    """``g = Z_t - Z_ref`` and its gradient (one forward and backward per sample); ``ref`` is
    ``reference``, or where that is ``None`` the strongest class other than ``t`` at ``x``."""

    def difference(logits: Tensor) -> Tensor:
        own = logits.gather(1, targets[:, None]).squeeze(1)
        if reference is None:
            return own - logits.scatter(1, targets[:, None], -math.inf).amax(dim=1)
        return own - logits.gather(1, reference[:, None]).squeeze(1)

    g, grad, _ = oracle.loss_and_grad(x, difference)
    return g, flat(grad)


@dataclass(frozen=True, kw_only=True)
class FastAdaptiveBoundary(Attack):
    """FAB (Croce & Hein, ICML 2020), Algorithm 1: a minimum-norm attack that repeatedly
    projects onto the linearised decision boundary, biased towards the original point.

    Each step, for ``x`` of shape ``[N, ...]`` and the current iterate ``x_k``:

    1. linearise the boundary nearest to ``x_k``: ``g(z) ≈ g(x_k) + <grad g(x_k), z - x_k>``
       with ``g = Z_j - Z_y`` for the class ``j != y`` minimising ``|g_j| / ||grad g_j||_q``
       (``q`` the dual norm); targeted: ``g = Z_t - max_{j != t} Z_j``;
    2. project both ``x_k`` and ``x`` onto that hyperplane inside the box, exactly
       (:func:`hyperplane_projection`): steps ``d_k`` and ``d_0``;
    3. bias towards ``x``: ``alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)`` and
       ``x_{k+1} = clip((1 - alpha) (x_k + eta d_k) + alpha (x + eta d_0))``: ``eta`` overshoots
       the hyperplane so that the iterate crosses it;
    4. where ``x_{k+1}`` is adversarial, keep it if it is the closest so far, then step back
       ``x_{k+1} <- x + beta (x_{k+1} - x)`` to search for a closer one.

    Restarts after the first start from ``x + r u / 2`` with ``u`` random of unit norm (uniform
    direction for L∞, Gaussian for L2 and L1, as in the reference code) and
    ``r = min(best distance so far, eps)``; ``eps`` is ``threat.eps``, or where that is
    unbounded the reference code's default (0.3 L∞, 1 L2, 5 L1) times the box width. Every
    restart attacks every sample, keeping the closest adversarial (the paper's protocol).

    Norms: L∞, L2, L1. Minimum-norm: ``threat.eps`` only scales the restarts; the closest
    adversarial found is returned (the template then projects onto the eps-ball), and
    ``extras["best_distance"]`` holds its distance (``inf`` where none; 0 where ``x`` is already
    misclassified, which is not attacked). A sample that never became adversarial returns its
    lowest-margin iterate.

    Args:
        steps: iterations per restart, 100 (AutoAttack's ``n_iter`` for FAB and FAB-T).
        restarts: 1 (AutoAttack "standard"; its "plus" version uses 5).
        alpha_max: bias cap, 0.1 (paper's experiments; reference code).
        eta: overshoot, 1.05 (paper's experiments; reference code).
        beta: backward step after a success, 0.9 (paper's experiments; reference code).

    Cost per sample not misclassified at ``x``: ``restarts * steps`` times ``K - 1`` forwards
    and backwards for the boundary (the Jacobian of all logit differences, batched; memory for
    ``K - 1`` copies of the batch) plus one forward for the success check; targeted: 1 forward
    and backward plus 1 forward per step. Plus one forward per sample at the start and the
    template's two.
    """

    name = "fab"
    norms = frozenset({"Linf", "L2", "L1"})
    minimum_norm = True

    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        for label, value in (("steps", self.steps), ("restarts", self.restarts)):
            if not is_int(value, 1):
                raise RobustlabError(f"{label} must be a positive integer, got {value!r}")
        if not 0 <= self.alpha_max <= 1:
            raise RobustlabError(f"alpha_max must lie in [0, 1] (the weight of the original point), got {self.alpha_max!r}")
        if not (self.eta >= 1 and math.isfinite(self.eta)):
            raise RobustlabError(f"eta must be a finite number >= 1 (it overshoots the boundary), got {self.eta!r}")
        if not 0 < self.beta < 1:
            raise RobustlabError(f"beta must lie in (0, 1) (the backward step after a success), got {self.beta!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        clean = oracle.logits(x)
        require_two_classes(clean)
        best = self._start(x, y, clean, targets, threat)
        todo = (~best.success).nonzero().squeeze(1)
        if todo.numel():
            ys = y[todo]
            t = None if targets is None else targets[todo]
            boundary: Boundary = (
                partial(_closest_boundary, oracle, labels=ys, classes=clean.shape[1], dual=_DUAL_ORDER[threat.norm])
                if t is None else partial(_target_boundary, oracle, targets=t, reference=None)
            )
            _merge(best, todo, self._search(oracle, x[todo], ys, t, boundary, threat, generator))
        return best.x, {"best_distance": best.distance}

    @staticmethod
    def _start(x: Tensor, y: Tensor, clean: Tensor, targets: Tensor | None, threat: ThreatModel) -> MinimumNormBest:
        """The bookkeeping at ``x``: samples already adversarial count at distance 0."""
        best = MinimumNormBest.start(x)
        best.update(x, threat.distance(x, x), difference_of_logits(clean, y, targets), is_adversarial(clean, y, targets))
        return best

    def _search(self, oracle: ModelOracle, x: Tensor, y: Tensor, targets: Tensor | None, boundary: Boundary,
                threat: ThreatModel, generator: torch.Generator | None) -> MinimumNormBest:
        """Run all restarts on ``x`` ``[M, ...]``; success is judged against ``targets`` (or
        untargeted), the boundary to step to comes from ``boundary``."""
        best = MinimumNormBest.start(x)
        for restart in range(self.restarts):
            x_k = x.clone() if restart == 0 else self._random_start(x, best.distance, threat, generator)
            for _ in range(self.steps):
                x_k = self._step(x, x_k, boundary, threat)
                logits = oracle.logits(x_k)
                success = is_adversarial(logits, y, targets)
                best.update(x_k, threat.distance(x, x_k), difference_of_logits(logits, y, targets), success)
                x_k = torch.where(per_sample(success, x_k), x + self.beta * (x_k - x), x_k)
        return best

    def _step(self, x: Tensor, x_k: Tensor, boundary: Boundary, threat: ThreatModel) -> Tensor:
        lo, hi = threat.bounds
        m = x.shape[0]
        g, w = boundary(x_k)
        # The linearised boundary is {z : <w, z> = <w, x_k> - g}; from x_k the step must cover -g,
        # from x also the gap <w, x_k - x>.
        c_k = -g
        c_0 = -g + (w * flat(x_k - x)).sum(dim=1)
        origins = torch.cat([flat(x_k), flat(x)])
        steps = hyperplane_projection(threat.norm, torch.cat([w, w]), torch.cat([c_k, c_0]), lo - origins, hi - origins)
        lengths = torch.linalg.vector_norm(steps, ord=_ORDER[threat.norm], dim=1).clamp_min(_MIN_STEP)
        alpha = (lengths[:m] / (lengths[:m] + lengths[m:])).clamp(0, self.alpha_max)
        d_k, d_0 = steps[:m].reshape(x.shape), steps[m:].reshape(x.shape)
        a = per_sample(alpha, x)
        return ((1 - a) * (x_k + self.eta * d_k) + a * (x + self.eta * d_0)).clamp(lo, hi)

    @staticmethod
    def _random_start(x: Tensor, best_distance: Tensor, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        lo, hi = threat.bounds
        cap = threat.eps if not threat.unbounded else _RESTART_RADIUS[threat.norm] * (hi - lo)
        if threat.norm == "Linf":
            u = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        else:
            u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = u / per_sample(torch.linalg.vector_norm(flat(u), ord=_ORDER[threat.norm], dim=1), u)
        radius = best_distance.clamp_max(cap) / 2
        return (x + per_sample(radius, x) * u).clamp(lo, hi)


def _merge(best: MinimumNormBest, index: Tensor, found: MinimumNormBest) -> Tensor:
    """Fold a search over the samples ``index`` into the bookkeeping of the whole batch;
    returns ``bool[M]``: where ``found`` became the closest adversarial."""
    improved = found.success & (found.distance < best.distance[index])
    x_new, distance, margin = best.x.clone(), best.distance.clone(), torch.full_like(best.margin, math.inf)
    success = torch.zeros_like(best.success)
    x_new[index], distance[index], margin[index], success[index] = found.x, found.distance, found.margin, found.success
    best.update(x_new, distance, margin, success)
    return improved


FAB = FastAdaptiveBoundary


@dataclass(frozen=True, kw_only=True)
class FABTargeted(FastAdaptiveBoundary):
    """FAB-T as in AutoAttack: targeted FAB against each of the ``n_target_classes`` wrong
    classes with the highest clean logits in turn, each round on the samples not yet broken.

    Each round linearises only ``g = Z_t - Z_y`` (one backward per step instead of ``K - 1``,
    which is what makes FAB affordable for many classes) but counts any misclassification as a
    success, as AutoAttack does. A sample counts as broken once it has an adversarial within
    ``threat.eps`` (for an unbounded threat: any adversarial); its result is the closest
    adversarial over the rounds that ran on it, so its distance is an upper bound on the minimal
    one but, unlike FAB's, not minimised over all targets. ``extras["target"]`` ``[N]`` is the
    class whose round produced the returned adversarial (-1 where none, or where ``x`` is
    already misclassified); ``extras["best_distance"]`` as for FAB.

    Given explicit ``targets``, they replace the ranked classes: this is targeted FAB towards
    them, with success meaning the target wins.

    Args:
        n_target_classes: 9 (AutoAttack "standard"), capped at ``K - 1``.
        restarts: 1 per target (AutoAttack sets FAB-T's ``n_restarts`` to 1).
        steps, alpha_max, eta, beta: as for :class:`FastAdaptiveBoundary`.

    Cost per round and still-unbroken sample: ``restarts * steps`` times (2 forwards and 1
    backward); plus one forward per sample at the start and the template's two.
    """

    name = "fab-t"

    n_target_classes: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.n_target_classes, 1):
            raise RobustlabError(f"n_target_classes must be a positive integer, got {self.n_target_classes!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if targets is not None:
            return super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
        clean = oracle.logits(x)
        require_two_classes(clean)
        best = self._start(x, y, clean, None, threat)
        rounds = min(self.n_target_classes, clean.shape[1] - 1)
        ranked = clean.scatter(1, y[:, None], -math.inf).topk(rounds, dim=1).indices
        winner = torch.full_like(y, -1)
        for r in range(rounds):
            todo = (~(best.success & (best.distance <= threat.eps))).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            t, ys = ranked[todo, r], y[todo]
            boundary = partial(_target_boundary, oracle, targets=t, reference=ys)
            found = self._search(oracle, x[todo], ys, None, boundary, threat, generator)
            improved = _merge(best, todo, found)
            winner[todo] = torch.where(improved, t, winner[todo])
        return best.x, {"best_distance": best.distance, "target": winner}


FABT = FABTargeted
