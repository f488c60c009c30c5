"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"), L∞ and L2, score-based.

Reference implementations: the paper's code ``max-andr/square-attack:attack.py`` and
AutoAttack's ``fra31/auto-attack:autoattack/square.py``; the defaults below cite them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, difference_of_logits
from robustlab.errors import RobustlabError
from robustlab.losses import Loss, get_loss
from robustlab.threat import ThreatModel

__all__ = ["Square", "SquareAttack", "square_fraction"]

# Query counts (on a 10000-query scale) after which the square's area fraction p halves
# (``p_selection`` in both reference implementations).
_HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# A window whose new values differ from the current ones by less than this is "unchanged"
# (the paper's code resamples such a window: querying it would waste a query).
_UNCHANGED_TOL = 1e-7


#: Queries spent (the initialisation included) at which ``give_up`` is checked.
GIVE_UP_CHECKPOINTS = frozenset({100, 200, 400, 800, 1600, 3200})


def square_fraction(p_init: float, iteration: int, queries: int, *, rescale: bool = True) -> float:
    """The fraction ``p`` of the image a square covers at ``iteration`` (0-based) of a
    ``queries`` budget: ``p_init`` halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    queries, the schedule written for 10000 queries (paper Sec. 3.2 and Appendix,
    ``p_selection`` in the reference code). ``rescale``: stretch it to ``queries`` (the
    reference's ``resc_schedule=True``, its default); AutoAttack builds its Square with
    ``resc_schedule=False``, so a 5000-query run there stops at ``p_init / 128``."""
    scaled = int(iteration / queries * 10000) if rescale else iteration
    return p_init / 2.0 ** sum(scaled > point for point in _HALVING_POINTS)


def _random_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _windows(n: int, side: int, h: int, w: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample a random ``side x side`` window: its ``[n, 1, h, w]`` mask and its top-left
    corner ``(rows [n], cols [n])``. Corners are drawn from ``[0, h - side)`` like the reference
    code's ``randint(0, h - s)`` (the last position is never drawn)."""
    top = torch.randint(0, h - side, (n,), generator=generator, device=device)
    left = torch.randint(0, w - side, (n,), generator=generator, device=device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None], top, left


def _rectangle_bump(rows: int, cols: int) -> Tensor:
    """``pseudo_gaussian_pert_rectangles`` of the reference code: nested centred rectangles with
    weights ``1 / (k + 1)^2``, unit L2 norm."""
    bump = torch.zeros(rows, cols, dtype=torch.float64)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(r0, c0) + 1):
        bump[max(r0 - k, 0):min(r0 + k + 1, rows), max(c0 - k, 0):min(c0 + k + 1, cols)] += 1.0 / (k + 1) ** 2
    unit: Tensor = bump / bump.norm().clamp_min(1e-12)
    return unit


def _square_bump(side: int) -> Tensor:
    """``meta_pseudo_gaussian_pert`` without its random transpose: a positive bump on the top
    half and a negative one on the bottom half of a ``side x side`` square, unit L2 norm."""
    half = side // 2
    bump = torch.cat([_rectangle_bump(half, side), -_rectangle_bump(side - half, side)])
    unit: Tensor = bump / bump.norm()
    return unit


def _place_bump(bump: Tensor, top: Tensor, left: Tensor, transpose: Tensor, h: int, w: int) -> Tensor:
    """``[n, h, w]``: ``bump`` (``[s, s]``, transposed where ``transpose``) placed with its
    top-left corner at ``(top, left)`` per sample, zero elsewhere."""
    side = bump.shape[0]
    rows = torch.arange(h, device=top.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=top.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    r, c = rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]
    flat_bump = bump.flatten()
    index = torch.where(transpose[:, None, None], c * side + r, r * side + c)
    return flat_bump[index] * inside


@dataclass(frozen=True, kw_only=True)
class SquareAttack(Attack):
    """Square Attack: random search over square-shaped updates, accepted when they lower the loss
    (or break the sample, as in the reference code).

    Score-based: it sees only the model's logits (no gradient, ``backwards == 0``). Inputs are
    images ``[N, C, H, W]`` with ``H, W >= 2``. Samples run in parallel; each query goes only to
    the samples not yet broken, and a sample stops at its first success.

    L∞ (paper Algorithm 2): start from vertical stripes, ``x + eps * s`` with a random sign
    ``s`` per (channel, column); each step sets a random ``k x k`` window (per sample) to
    ``x + eps * s`` with a random sign per channel, ``k = round(sqrt(p * H * W))`` clamped to
    ``[1, H - 1]``. A window that would not change the current iterate gets another sign
    pattern, drawn uniformly from the others (the reference code resamples until it changes).

    L2 (paper Algorithm 3): start from a grid of ``(H // 5)``-sized pseudo-Gaussian bumps with
    random signs, scaled to norm ``eps``; each step draws two windows of odd side
    ``k = max(round(sqrt(p * H * W)), 3)`` (clamped to ``H - 1``), empties the second and
    writes into the first, per channel, the old window content plus a new bump with a random
    sign, rescaled so that the window carries its old mass, the mass of the emptied window and
    its share ``(eps^2 - ||delta||^2) / C`` of the unused budget (the exact budget
    redistribution of the paper's Sec. 3.3); the image perturbation is then rescaled to norm
    ``eps`` and clipped to the box.

    ``p`` follows :func:`square_fraction`. Loss, minimised: the margin ``Z_y - max_{j != y} Z_j``
    (untargeted) or the cross-entropy towards the target (targeted), as in the paper's code and
    AutoAttack; success is decided on the margin whatever the loss.

    Args:
        queries: queries per sample on perturbed points, the initialisation included, 5000
            (AutoAttack's ``n_queries``).
        p_init: initial fraction of the image a square covers, 0.8 for both norms
            (AutoAttack's value; the paper's ImageNet runs use 0.05 for L∞ and 0.1 for L2).
        loss: ``None`` (margin untargeted, ``"ce"`` targeted), ``"margin"``, ``"ce"``, or a
            callable ``(logits, labels, targets) -> [N]`` that grows as the attack progresses
            (robustlab's loss convention; the attack minimises its negative).
        rescale_schedule: stretch the ``p`` schedule to ``queries`` (True, the reference code's
            default) or keep it on the 10000-query scale (False, as AutoAttack runs Square).
        give_up: ``None`` (every sample gets the whole budget) or a safety factor ``s``: at the
            checkpoints :data:`GIVE_UP_CHECKPOINTS` (queries spent), a sample whose margin ``m``
            satisfies ``m > s * r * log2(queries / spent)`` stops, ``r = (m_1 - m) / log2(spent)``
            its average progress per doubling of the queries so far (``m_1`` the margin after
            the first query): Square's margin falls roughly linearly in ``log(queries)``, at a
            decaying rate, so a sample that would need more than ``s`` times its average
            progress so far to reach the boundary is not going to. Our rule, in the spirit of
            A3's discarding of points that will not fall (Liu et al., CVPR 2022); robustlab's
            ``fast`` protocol uses it.
        keep_near: ``None`` or a fraction ``k`` of the clean margin: a sample whose margin is
            below ``k`` times its margin at the clean input never gives up (with ``give_up``).
            Our rule: a point that close to the boundary is where a random search most often
            still succeeds late (on the benchmark models of ``benchmarks/README.md``, warm
            searches from such points broke images after up to about 1600 queries that the give-up
            rule had stopped at 100), so the budget the give-up saves goes there.
        warm_start: in an evaluation cascade (:func:`robustlab.evaluation.evaluate` with
            ``cascade=True``), the runner passes each sample's point nearest the decision
            boundary over the earlier attacks as ``start`` (False: AutoAttack's Square, always
            from its own initialisation).
        p_init_start: ``p_init`` for the samples that continue from ``start`` (0.1, our choice:
            a point already near the boundary wants small squares; a large one mostly replaces
            it and is rejected).
        cold_search_near: ``None`` or a fraction ``c`` of the clean margin: with ``start``, a
            sample that continued from a start whose margin was below ``c`` times its clean margin,
            and that this search did not break, is searched once more from Square's own
            initialisation (the cold search of AutoAttack's Square: ``p_init``, the whole budget,
            the same ``give_up``); the better of the two ends is kept. Our option: the two
            searches break different images near the boundary. On the zoo's first (kw-small)
            ``mnist-trades``, after ``fast``'s gradient attacks, the warm search broke 17 of the 908 survivors and
            warm plus cold (0.3) 21, every image ``standard`` broke there, for 71% more queries.
        cold_search_queries: ``None`` (the whole budget) or the queries of that cold search, the
            initialisation included: it runs the first ones of the whole cold search (the same
            ``p`` schedule), and ``give_up`` judges against what is left of this budget. Our
            option: the images only the cold search broke on the benchmark models mostly fell after
            500-1800 of its queries, and capped at 2000 the cold search costs ``fast`` 10% more
            passes where the whole one cost 44% (``benchmarks/README.md``, "The reference
            AutoAttack").

    A call may give ``start``, points of the threat set ``[N, C, H, W]``: each sample continues
    from its start where that scores a lower margin than the initialisation, with
    ``p_init_start``, and from the initialisation otherwise (one more query per sample). Our
    addition: on the benchmark models a search continued from where APGD stopped breaks every
    sample the cold search breaks, mostly in a few hundred queries instead of thousands
    (``benchmarks/README.md``, "The reference AutoAttack").

    ``extras["queries"]``: ``[N]`` queries per sample, the clean check included (at most
    ``queries + 1``; with ``start``, one more, and ``queries - 1`` (``cold_search_queries - 1``)
    more for a ``cold_search_near`` search); a sample misclassified from the start costs 1 and is
    returned unchanged.

    Cost: ``sum(extras["queries"])`` forwards (with ``start``, one more per sample), no backward,
    plus the template's two forwards.
    """

    name = "square"
    norms = frozenset({"Linf", "L2"})

    queries: int = 5000
    p_init: float = 0.8
    loss: str | Callable[..., Tensor] | None = None
    rescale_schedule: bool = True
    give_up: float | None = None
    keep_near: float | None = None
    warm_start: bool = False
    p_init_start: float = 0.1
    cold_search_near: float | None = None
    cold_search_queries: int | None = None

    takes_start = True

    def __post_init__(self) -> None:
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1:
            raise RobustlabError(f"queries must be a positive integer, got {self.queries!r}")
        if self.give_up is not None and not (isinstance(self.give_up, (int, float)) and not isinstance(self.give_up, bool)
                                             and 0 < self.give_up < math.inf):
            raise RobustlabError(f"give_up must be None or a positive number (a safety factor), got {self.give_up!r}")
        if self.keep_near is not None and (isinstance(self.keep_near, bool) or not isinstance(self.keep_near, (int, float))
                                           or not 0 < self.keep_near < 1 or self.give_up is None):
            raise RobustlabError(f"keep_near must be None or a fraction of the clean margin in (0, 1), with give_up set; "
                                 f"got keep_near={self.keep_near!r}, give_up={self.give_up!r}")
        if self.cold_search_near is not None and (isinstance(self.cold_search_near, bool)
                                                  or not isinstance(self.cold_search_near, (int, float))
                                                  or not 0 < self.cold_search_near <= 1):
            raise RobustlabError(f"cold_search_near must be None or a fraction of the clean margin in (0, 1], "
                                 f"got {self.cold_search_near!r}")
        if self.cold_search_queries is not None and (isinstance(self.cold_search_queries, bool)
                                                     or not isinstance(self.cold_search_queries, int)
                                                     or not 1 <= self.cold_search_queries <= self.queries
                                                     or self.cold_search_near is None):
            raise RobustlabError(f"cold_search_queries must be None or a number of queries in [1, queries={self.queries}], "
                                 f"with cold_search_near set; got {self.cold_search_queries!r}")
        for name in ("p_init", "p_init_start"):
            if not 0 < getattr(self, name) <= 1:
                raise RobustlabError(f"{name} must lie in (0, 1], got {getattr(self, name)!r}")
        if isinstance(self.loss, str):
            get_loss(self.loss)

    def _objective(self, targets: Tensor | None) -> Loss:
        """The loss the attack minimises: the negative of a robustlab (climbing) loss."""
        name = "margin" if targets is None else "ce"
        loss = name if self.loss is None else self.loss
        # The margin is uncapped: the search must keep ranking points that are far from the boundary.
        climb = get_loss(loss, kappa=math.inf) if loss == "margin" else get_loss(loss)
        return lambda logits, y, t: -climb(logits, y, t)

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None, start: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        if threat.unbounded:
            raise RobustlabError("Square Attack searches at a fixed budget; it needs a bounded threat model (finite eps)")
        if x.dim() != 4 or min(x.shape[2:]) < 2:
            raise RobustlabError(f"Square Attack needs images [N, C, H, W] with H, W >= 2, got shape {tuple(x.shape)}")
        objective = self._objective(targets)
        n = x.shape[0]
        queries = torch.ones(n, dtype=torch.int64, device=x.device)
        margin = difference_of_logits(oracle.logits(x), y, targets)
        clean_margin = margin.clone()
        near = margin * (self.keep_near or 0.0)  # below this margin a sample never gives up

        x_best = x.clone()
        loss_min = x.new_full((n,), math.inf)
        todo = (margin > 0).nonzero().squeeze(1)
        init = self._init_linf if threat.norm == "Linf" else self._init_l2
        x_best[todo] = init(x[todo], threat, generator)
        self._evaluate(oracle, objective, x_best, y, targets, todo, x_best[todo], loss_min, margin, queries)
        from_start = torch.zeros(n, dtype=torch.bool, device=x.device)
        cold = (x_best.clone(), loss_min.clone(), margin.clone())  # the initialisation, evaluated
        if start is not None:  # the given point where it scores better than the initialisation
            todo = (margin > 0).nonzero().squeeze(1)
            before = loss_min.clone()
            self._evaluate(oracle, objective, x_best, y, targets, todo, start[todo], loss_min, margin, queries)
            from_start = loss_min < before

        start_margin = margin.clone()
        self._search(oracle, objective, x, y, targets, x_best, loss_min, margin, queries, from_start, near, threat, generator)
        if start is not None and self.cold_search_near is not None:
            # Unbroken samples that continued from a start near the boundary: once more from the
            # initialisation (its point, loss and margin as evaluated above), keeping the better end.
            again = (from_start & (margin > 0) & (start_margin < self.cold_search_near * clean_margin)).nonzero().squeeze(1)
            if again.numel():
                x_cold, loss_cold, margin_cold, queries_cold = cold[0][again], cold[1][again], cold[2][again], queries[again]
                self._search(oracle, objective, x[again], y[again], None if targets is None else targets[again], x_cold,
                             loss_cold, margin_cold, queries_cold, torch.zeros_like(from_start[again]), near[again], threat,
                             generator, budget=self.cold_search_queries)
                queries[again] = queries_cold
                take = (margin_cold <= 0) | (loss_cold < loss_min[again])
                keep = again[take]
                x_best[keep], loss_min[keep], margin[keep] = x_cold[take], loss_cold[take], margin_cold[take]
        return x_best, {"queries": queries}

    def _search(self, oracle: ModelOracle, objective: Loss, x: Tensor, y: Tensor, targets: Tensor | None, x_best: Tensor,
                loss_min: Tensor, margin: Tensor, queries: Tensor, from_start: Tensor, near: Tensor, threat: ThreatModel,
                generator: torch.Generator | None, budget: int | None = None) -> None:
        """The random search from ``x_best`` (updated in place with ``loss_min``, ``margin`` and
        ``queries``): ``budget - 1`` steps at most (``queries - 1`` by default; a smaller budget
        runs the first steps of the full search, its ``p`` schedule unchanged), the samples
        ``from_start`` with the smaller squares of ``p_init_start``, each stopping when broken or,
        with ``give_up``, given up (judged against what is left of ``budget``)."""
        budget = budget or self.queries
        step = self._step_linf if threat.norm == "Linf" else self._step_l2
        going = margin > 0  # still searched: not broken and not given up
        first_margin = margin.clone()
        for iteration in range(budget - 1):
            spent = iteration + 1  # queries on perturbed points so far, the initialisation included
            if self.give_up is not None and spent in GIVE_UP_CHECKPOINTS:
                rate = (first_margin - margin).clamp_min(0) / math.log2(spent)
                going &= ~((margin > self.give_up * rate * math.log2(budget / spent)) & (margin >= near))
            searched = going & (margin > 0)
            if not bool(searched.any()):
                break
            # Samples that continue from the given start search with smaller squares.
            for group, p_init in ((searched & ~from_start, self.p_init), (searched & from_start, self.p_init_start)):
                todo = group.nonzero().squeeze(1)
                if todo.numel():
                    p = square_fraction(p_init, iteration, self.queries, rescale=self.rescale_schedule)
                    candidates = step(x[todo], x_best[todo], p, threat, generator)
                    self._evaluate(oracle, objective, x_best, y, targets, todo, candidates, loss_min, margin, queries)

    @staticmethod
    def _evaluate(oracle: ModelOracle, objective: Loss, x_best: Tensor, y: Tensor, targets: Tensor | None,
                  todo: Tensor, candidates: Tensor, loss_min: Tensor, margin: Tensor, queries: Tensor) -> None:
        """Query ``candidates`` for the samples ``todo`` and keep those that lower the loss or are
        adversarial (margin <= 0, whatever their loss: the reference code's ``idx_miscl``; with the
        cross-entropy a success need not lower it). Updates ``x_best``, ``loss_min`` (only where
        the loss is lower), ``margin`` and ``queries`` in place."""
        t = None if targets is None else targets[todo]
        logits = oracle.logits(candidates)
        loss = objective(logits, y[todo], t)
        new_margin = difference_of_logits(logits, y[todo], t)
        better = loss < loss_min[todo]
        keep = better | (new_margin <= 0)
        x_best[todo] = torch.where(per_sample(keep, candidates), candidates, x_best[todo])
        loss_min[todo] = torch.where(better, loss, loss_min[todo])
        margin[todo] = torch.where(keep, new_margin, margin[todo])
        queries[todo] += 1

    # -- L∞ ---------------------------------------------------------------------------------
    @staticmethod
    def _init_linf(x: Tensor, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        n, c, _, w = x.shape
        return threat.clip_to_box(x + threat.eps * _random_signs((n, c, 1, w), generator, x))

    @staticmethod
    def _step_linf(x: Tensor, x_best: Tensor, p: float, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        mask, _, _ = _windows(n, side, h, w, generator, x.device)
        signs = _random_signs((n, c, 1, 1), generator, x)
        unchanged = (((threat.clip_to_box(x + threat.eps * signs) - x_best).abs() < _UNCHANGED_TOL) | ~mask).flatten(1).all(dim=1)
        # Another sign pattern, uniform over the 2^c - 1 others: flip the channels whose bit is
        # set in a random non-zero code (only the first 62 channels can flip; enough to change).
        coded = min(c, 62)
        code = torch.randint(1, 2**coded, (n,), generator=generator, device=x.device)
        flip = torch.zeros(n, c, dtype=torch.bool, device=x.device)
        flip[:, :coded] = ((code[:, None] >> torch.arange(coded, device=x.device)) & 1).bool()
        signs = torch.where((flip & unchanged[:, None])[:, :, None, None], -signs, signs)
        return torch.where(mask, threat.clip_to_box(x + threat.eps * signs), x_best)

    # -- L2 -----------------------------------------------------------------------------------
    @staticmethod
    def _init_l2(x: Tensor, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        # A grid of tiles of side s = H // 5, starting at (H - 5 s) // 2 on each axis; tiles that
        # run past the image are cut, as in the reference code's slicing.
        n, c, h, w = x.shape
        side = max(min(h, w) // 5, 1)
        bump = _square_bump(side).to(x)

        def tiling(size: int) -> tuple[Tensor, Tensor, Tensor]:
            offset = torch.arange(size, device=x.device) - max((size - 5 * side) // 2, 0)
            tile = torch.div(offset, side, rounding_mode="floor")
            return tile.clamp(0, size // side - 1), offset.remainder(side), (offset >= 0) & (tile < size // side)

        tile_r, rel_r, valid_r = tiling(h)
        tile_c, rel_c, valid_c = tiling(w)
        signs = _random_signs((n, c, h // side, w // side), generator, x)
        transpose = torch.randint(0, 2, (n, h // side, w // side), generator=generator, device=x.device).bool()
        upright = bump[rel_r[:, None], rel_c[None, :]]
        flipped = bump[rel_c[None, :], rel_r[:, None]]
        pattern = torch.where(transpose[:, tile_r[:, None], tile_c[None, :]], flipped, upright)
        delta = pattern[:, None] * signs[:, :, tile_r[:, None], tile_c[None, :]] * (valid_r[:, None] & valid_c[None, :])
        delta = delta / per_sample(flat(delta).norm(dim=1).clamp_min(1e-12), delta)
        return threat.clip_to_box(x + threat.eps * delta)

    @staticmethod
    def _step_l2(x: Tensor, x_best: Tensor, p: float, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        side = max(round(math.sqrt(p * h * w)), 3)
        side = min(side + 1 - side % 2, min(h, w) - 1)
        mask, top, left = _windows(n, side, h, w, generator, x.device)
        mask_2, _, _ = _windows(n, side, h, w, generator, x.device)
        delta = x_best - x

        def window_norm(t: Tensor) -> Tensor:  # [n, c, 1, 1]
            return t.square().sum(dim=(2, 3), keepdim=True).sqrt()

        norm_window = window_norm(delta * mask)
        norm_image = per_sample(flat(delta).norm(dim=1), delta)
        norm_windows = window_norm(delta * (mask | mask_2))
        transpose = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
        bump = _place_bump(_square_bump(side).to(x), top, left, transpose, h, w)[:, None]
        new = bump * _random_signs((n, c, 1, 1), generator, x) + delta * mask / (1e-10 + norm_window)
        budget = ((threat.eps**2 - norm_image.square()).clamp_min(0) / c + norm_windows.square()).sqrt()
        new = new / window_norm(new).clamp_min(1e-12) * budget
        delta = torch.where(mask, new, delta.masked_fill(mask_2, 0.0))
        delta = delta / per_sample(flat(delta).norm(dim=1).clamp_min(1e-12), delta)
        return threat.clip_to_box(x + threat.eps * delta)


Square = SquareAttack
