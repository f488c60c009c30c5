"""Carlini & Wagner's L2, L0 and L∞ attacks (S&P 2017, "Towards Evaluating the Robustness of
Neural Networks"), batched, following the paper and the authors' code
(``carlini/nn_robust_attacks``: ``l2_attack.py``, ``l0_attack.py``, ``li_attack.py``).

All three are minimum-norm attacks on logits. Inputs are ``[N, ...]`` in the threat model's box
``[lo, hi]``; the authors work on ``[-0.5, 0.5]``, a box of width 1, so their absolute
thresholds (τ, tolerances) are scaled here by the box width ``hi - lo``.

Costs (per sample; the template adds two forwards): one forward and one backward per
optimisation step. C&W L2: at most ``binary_search_steps * max_iterations`` steps. C&W L0 and
L∞: the number of steps depends on the data (each round runs until success or until ``c`` has
doubled past ``largest_const``); every step is counted.

The model is only touched through :class:`~robustlab.attacks.base.ModelOracle`: the gradient of
the objective comes from the oracle, the gradient of the distance term is added analytically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial
from robustlab.attacks.cw_objectives import KAPPA_OBJECTIVES, OBJECTIVES, f6, get_objective, objective_floor
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.validate import is_int, is_number

__all__ = ["CarliniWagnerL2", "CWL2", "CarliniWagnerL0", "CWL0", "CarliniWagnerLinf", "CWLinf", "BOX_ENCODINGS"]

BOX_ENCODINGS = ("tanh", "clip", "project")
# arctanh(±1) is infinite: the authors scale into (-1, 1) by this factor before arctanh.
_TANH_SHRINK = 0.999999
# Binary search: the authors' initial upper bound, and the bound below which c is bisected.
_UPPER_START, _UPPER_KNOWN = 1e10, 1e9
# Abort early: stop when the loss improved by less than this fraction since the last check.
_ABORT_RATIO = 0.9999
# L0/L∞ "it worked" threshold (authors: loss < 1e-4, resp. < 1e-4 * c).
_WORKS = 1e-4


def _confident(logits: Tensor, labels: Tensor, targets: Tensor | None, kappa: float) -> Tensor:
    """Logits with the confidence margin applied, as the authors judge success: the target
    logit lowered by ``kappa`` (targeted), the true logit raised by ``kappa`` (untargeted)."""
    if kappa == 0:
        return logits
    cls = labels if targets is None else targets
    shift = logits.new_full((logits.shape[0], 1), -kappa if targets is not None else kappa)
    return logits.scatter_add(1, cls[:, None], shift)


def _hinge(logits: Tensor, labels: Tensor, targets: Tensor | None, *, kappa: float) -> Tensor:
    """The authors' ``max(Z_other - Z_t + kappa, 0)`` (f6 shifted to be >= 0)."""
    return f6(logits, labels, targets, kappa=kappa) + kappa


# --- validation -------------------------------------------------------------------------------


def _check_int(name: str, value: object) -> None:
    if not is_int(value, 1):
        raise RobustlabError(f"{name} must be a positive integer, got {value!r}")


def _check_positive(name: str, value: object) -> None:
    if not is_number(value, finite=False) or not (0 < value < math.inf):
        raise RobustlabError(f"{name} must be a positive finite number, got {value!r}")


def _check_confidence(value: object) -> None:
    if not is_number(value, finite=False) or not (0 <= value < math.inf):
        raise RobustlabError(f"confidence (kappa) must be a finite number >= 0, got {value!r}")


# --- optimiser and box encodings -----------------------------------------------------------------


@dataclass
class _Adam:
    """Adam (Kingma & Ba 2015; torch/TF defaults β = (0.9, 0.999), ε = 1e-8) on a batch of
    independent variables, with a step count per sample so that samples can be reset one by one."""

    lr: float
    m: Tensor
    v: Tensor
    t: Tensor  # [N]

    @classmethod
    def fresh(cls, like: Tensor, lr: float) -> _Adam:
        return cls(lr, torch.zeros_like(like), torch.zeros_like(like), like.new_zeros(like.shape[0]))

    def step(self, grad: Tensor) -> Tensor:
        """The displacement to subtract from the variables."""
        self.t = self.t + 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad * grad
        m_hat = self.m / per_sample(1 - 0.9**self.t, grad)
        v_hat = self.v / per_sample(1 - 0.999**self.t, grad)
        return self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def reset(self, rows: Tensor) -> None:
        """Forget the state of the samples where ``rows`` (bool ``[N]``) is set."""
        keep = per_sample(~rows, self.m).to(self.m.dtype)
        self.m, self.v = self.m * keep, self.v * keep
        self.t = torch.where(rows, torch.zeros_like(self.t), self.t)

    def select(self, keep: Tensor) -> _Adam:
        return _Adam(self.lr, self.m[keep], self.v[keep], self.t[keep])


@dataclass(frozen=True)
class _Tanh:
    """Change of variables (Sec. V-B, option 3): ``x' = lo + (hi - lo) (tanh(w) + 1) / 2``."""

    lo: float
    hi: float

    def to_w(self, x: Tensor) -> Tensor:
        return torch.atanh((2 * (x - self.lo) / (self.hi - self.lo) - 1) * _TANH_SHRINK)

    def image(self, w: Tensor) -> Tensor:
        return self.lo + (self.hi - self.lo) * (torch.tanh(w) + 1) / 2

    def slope(self, w: Tensor) -> Tensor:
        """``dx'/dw``."""
        return (self.hi - self.lo) / 2 * (1 - torch.tanh(w) ** 2)


class _Encoding:
    """How the L2 attack keeps ``x'`` in the box (Sec. V-B). It optimises a variable ``v``."""

    def __init__(self, bounds: tuple[float, float]):
        self.lo, self.hi = bounds

    def start(self, x: Tensor) -> Tensor:
        return x.clone()

    def image(self, v: Tensor) -> Tensor:
        return v

    def distance_and_grad(self, v: Tensor, image: Tensor, x: Tensor, grad_f: Tensor) -> tuple[Tensor, Tensor]:
        """``(||x' - x||² [N], d(||x' - x||² + c f)/dv)`` given ``grad_f = c df/dx'``."""
        delta = image - x
        return flat(delta).pow(2).sum(dim=1), 2 * delta + grad_f

    def after_step(self, v: Tensor) -> Tensor:
        return v


class _TanhEncoding(_Encoding):
    """Change of variables: ``v = w``, ``x' = tanh box(w)``; starts at ``arctanh`` of ``x``."""

    def __init__(self, bounds: tuple[float, float]):
        super().__init__(bounds)
        self.tanh = _Tanh(*bounds)

    def start(self, x: Tensor) -> Tensor:
        return self.tanh.to_w(x)

    def image(self, v: Tensor) -> Tensor:
        return self.tanh.image(v)

    def distance_and_grad(self, v: Tensor, image: Tensor, x: Tensor, grad_f: Tensor) -> tuple[Tensor, Tensor]:
        dist2, grad_image = super().distance_and_grad(v, image, x, grad_f)
        return dist2, grad_image * self.tanh.slope(v)


class _ClipEncoding(_Encoding):
    """Clipped descent: minimise ``||v - x||² + c f(clip(v))``; coordinates outside the box get
    no gradient from ``f``. Coordinates on its boundary do, as through the authors'
    ``tf.clip_by_value`` (and ``torch.clamp``): else a pixel starting exactly at 0 or 1, as most
    MNIST pixels do, would never move."""

    def image(self, v: Tensor) -> Tensor:
        return v.clamp(self.lo, self.hi)

    def distance_and_grad(self, v: Tensor, image: Tensor, x: Tensor, grad_f: Tensor) -> tuple[Tensor, Tensor]:
        delta = v - x
        inside = (v >= self.lo) & (v <= self.hi)
        return flat(delta).pow(2).sum(dim=1), 2 * delta + grad_f * inside


class _ProjectEncoding(_Encoding):
    """Projected descent: an Adam step on ``x'``, then clip into the box (Adam's moments are
    not told, which is the bad interaction the paper describes)."""

    def after_step(self, v: Tensor) -> Tensor:
        return v.clamp(self.lo, self.hi)


_ENCODINGS: dict[str, type[_Encoding]] = {"tanh": _TanhEncoding, "clip": _ClipEncoding, "project": _ProjectEncoding}


# --- C&W L2 -------------------------------------------------------------------------------------


@dataclass
class _Smallest:
    """Per sample, the successful iterate with the smallest distance, and the c that found it."""

    x: Tensor
    distance: Tensor
    const: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> _Smallest:
        n = x.shape[0]
        const = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)
        return cls(x.clone(), x.new_full((n,), math.inf), const)

    def offer(self, rows: Tensor, x: Tensor, distance: Tensor, success: Tensor, const: Tensor) -> None:
        better = success & (distance < self.distance[rows])
        self.x[rows] = torch.where(per_sample(better, x), x, self.x[rows])
        self.distance[rows] = torch.where(better, distance, self.distance[rows])
        self.const[rows] = torch.where(better, const, self.const[rows])


def next_const(const: Tensor, lower: Tensor, upper: Tensor, succeeded: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the authors' binary search over ``c`` (all ``[N]``): returns the new
    ``(const, lower, upper)``. Success at ``c``: ``upper = min(upper, c)``; failure: ``lower =
    max(lower, c)``. Then ``c = (lower + upper) / 2`` if ``upper < 1e9``, else a failure
    multiplies ``c`` by 10 (and a success, impossible there, leaves it)."""
    upper = torch.where(succeeded, torch.minimum(upper, const), upper)
    lower = torch.where(succeeded, lower, torch.maximum(lower, const))
    grown = torch.where(succeeded, const, const * 10)
    return torch.where(upper < _UPPER_KNOWN, (lower + upper) / 2, grown), lower, upper


@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(Attack):
    """C&W L2 (Sec. V): minimise ``||x' - x||₂² + c f(x')`` with Adam, binary search over ``c``.

    Shapes: ``x [N, ...]`` in the box, logits ``[N, K]`` with ``K >= 2``. Norms: L2 only. With a
    bounded threat model the template projects the result onto the ball (the attack minimises
    the distance, so success within eps means the minimal distance found is <= eps).

    Each sample has its own ``c``, bracket ``[lower, upper]`` (start ``[0, 1e10]``) and best
    point. For each ``c`` the variable and Adam's state are reset and up to ``max_iterations``
    Adam steps are taken; every iterate that succeeds *with the confidence margin applied*
    (target logit lowered by ``kappa``) is a candidate, and the smallest-L2 one across all
    iterations and all ``c`` is returned. Then, per sample (authors' update rule): success at
    ``c`` sets ``upper = min(upper, c)``; failure sets ``lower = max(lower, c)``; the next ``c``
    is ``(lower + upper) / 2`` once ``upper < 1e9``, else failures multiply ``c`` by 10. With
    ``binary_search_steps >= 10`` the last step uses ``c = upper``. Samples that never succeed
    return the last iterate of the last ``c`` (their best attempt, not the clean input).

    Args (defaults from the authors' ``l2_attack.py`` unless noted):
        binary_search_steps: number of ``c`` values tried (9; the paper's evaluation uses 20).
        max_iterations: Adam steps per ``c`` (10000, as in the code and Sec. V-C; pass far fewer
            for quick runs, e.g. 100-1000 on small models).
        initial_const: first ``c`` (1e-3).
        learning_rate: Adam's step (1e-2).
        confidence: ``kappa >= 0``, the margin a success must have (0). Only ``objective="f6"``
            uses it.
        abort_early: every ``max_iterations // 10`` steps, stop a sample's descent at this ``c``
            if its loss is above 0.9999 times its loss at the previous check. Per sample here;
            the authors test the sum over the batch.
        objective: one of ``"f1"``..``"f7"`` (:mod:`robustlab.attacks.cw_objectives`; default
            ``"f6"``, the paper's choice). The loss uses ``f`` minus its lower bound, so it is
            never negative (for f6 that is the authors' ``max(Z_other - Z_t + kappa, 0)``).
        box: ``"tanh"`` (change of variables, the paper's choice), ``"clip"`` (clipped descent)
            or ``"project"`` (projected descent) — Sec. V-B, Table III.

    ``extras``: ``best_distance [N]`` (smallest successful L2 distance, ``inf`` where none),
    ``best_const [N]`` (the ``c`` that found it, NaN where none).

    Cost per sample: at most ``binary_search_steps * max_iterations`` forwards and backwards
    (fewer with abort-early), plus the template's two forwards.
    """

    name: ClassVar[str] = "cw-l2"
    norms: ClassVar[frozenset[str]] = frozenset({"L2"})
    minimum_norm: ClassVar[bool] = True

    binary_search_steps: int = 9
    max_iterations: int = 10000
    initial_const: float = 1e-3
    learning_rate: float = 1e-2
    confidence: float = 0.0
    abort_early: bool = True
    objective: str = "f6"
    box: str = "tanh"

    def __post_init__(self) -> None:
        _check_int("binary_search_steps", self.binary_search_steps)
        _check_int("max_iterations", self.max_iterations)
        _check_positive("initial_const (c)", self.initial_const)
        _check_positive("learning_rate", self.learning_rate)
        _check_confidence(self.confidence)
        get_objective(self.objective)
        if self.box not in _ENCODINGS:
            raise RobustlabError(f"unknown box encoding {self.box!r}; choose one of {list(BOX_ENCODINGS)}")
        if self.confidence > 0 and self.objective not in KAPPA_OBJECTIVES:
            raise RobustlabError(f"confidence (kappa) is defined for objective 'f6' only, not {self.objective!r}")

    @property
    def loss_fn(self) -> Callable[..., Tensor]:
        """The objective ``f`` (``<= 0`` on success), reported as the result's ``loss``."""
        return partial(OBJECTIVES[self.objective], kappa=self.confidence)

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        n = x.shape[0]
        const = torch.full((n,), self.initial_const, dtype=torch.float64, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, _UPPER_START)
        best, last = _Smallest.empty(x), x.clone()
        encoding = _ENCODINGS[self.box](threat.bounds)
        for step in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and step == self.binary_search_steps - 1:
                const = upper.clone()
            succeeded = self._descend(oracle, x, y, targets, const, encoding, best, last)
            const, lower, upper = next_const(const, lower, upper, succeeded)
        found = torch.isfinite(best.distance)
        x_adv = torch.where(per_sample(found, x), best.x, last)
        return x_adv, {"best_distance": best.distance, "best_const": best.const.to(x.dtype)}

    def _descend(self, oracle: ModelOracle, x: Tensor, y: Tensor, targets: Tensor | None, const: Tensor,
                 encoding: _Encoding, best: _Smallest, last: Tensor) -> Tensor:
        """Adam on ``||x' - x||² + c f(x')`` at fixed ``c`` from a fresh start; updates ``best``
        and ``last`` in place; returns ``bool [N]``: some iterate succeeded."""
        objective = OBJECTIVES[self.objective]
        kappa, floor = self.confidence, objective_floor(self.objective, self.confidence)
        check_every = max(1, self.max_iterations // 10)
        succeeded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        xs, ys, ts, cs = x, y, targets, const.to(x.dtype)
        v = encoding.start(x)
        adam = _Adam.fresh(v, self.learning_rate)
        previous = x.new_full((x.shape[0],), math.inf)
        for iteration in range(self.max_iterations):
            image = encoding.image(v)
            f, grad_f, logits = oracle.loss_and_grad(image, lambda z: objective(z, ys, ts, kappa=kappa))
            dist2, grad = encoding.distance_and_grad(v, image, xs, per_sample(cs, v) * grad_f)
            success = is_adversarial(_confident(logits, ys, ts, kappa), ys, ts)
            best.offer(rows, image, flat(image - xs).norm(dim=1), success, const[rows])
            last[rows] = image
            succeeded[rows] |= success
            if self.abort_early and iteration % check_every == 0:
                loss = dist2 + cs * (f - floor)
                keep = ~(loss > _ABORT_RATIO * previous)
                previous = loss
                if not bool(keep.all()):
                    rows, xs, ys, cs, v, grad, previous = (t[keep] for t in (rows, xs, ys, cs, v, grad, previous))
                    ts = None if ts is None else ts[keep]
                    adam = adam.select(keep)
                    if rows.numel() == 0:
                        break
            v = encoding.after_step(v - adam.step(grad))
        return succeeded


CWL2 = CarliniWagnerL2


# --- C&W L0 and L∞: rounds of a warm-started tanh solver -----------------------------------------


@dataclass
class _Solver:
    """Per-sample state of the authors' inner solver (``doit``), compacted to running samples.

    ``x' = mask * tanh_box(start + w) + (1 - mask) * x``; ``w`` and Adam restart at 0 each round,
    ``c`` is carried over between rounds and doubles after ``max_iterations`` failed steps.
    """

    rows: Tensor
    x: Tensor
    y: Tensor
    t: Tensor | None
    start: Tensor
    w: Tensor
    adam: _Adam
    const: Tensor
    steps: Tensor
    mask: Tensor  # 1 where a pixel may change (L0); all ones for L∞
    tau: Tensor  # [n] (L∞)

    def select(self, keep: Tensor) -> _Solver:
        return _Solver(
            self.rows[keep], self.x[keep], self.y[keep], None if self.t is None else self.t[keep],
            self.start[keep], self.w[keep], self.adam.select(keep), self.const[keep], self.steps[keep],
            self.mask[keep], self.tau[keep],
        )


@dataclass(frozen=True, kw_only=True)
class _WarmStartedRounds(Attack):
    """Shared driver of C&W L0 and L∞: rounds of "solve, then tighten" per sample, all samples
    stepping together. Subclasses define the distance penalty, when a step "works", and how a
    success tightens the problem for the next round."""

    minimum_norm: ClassVar[bool] = True

    max_iterations: int = 1000
    learning_rate: float = 1e-2
    initial_const: float = 1e-3
    largest_const: float = 2e6
    confidence: float = 0.0

    def __post_init__(self) -> None:
        _check_int("max_iterations", self.max_iterations)
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("initial_const (c)", self.initial_const)
        _check_positive("largest_const", self.largest_const)
        _check_confidence(self.confidence)

    @property
    def loss_fn(self) -> Callable[..., Tensor]:
        """The hinge ``max(Z_other - Z_t + kappa, 0)`` (0 on a confident success)."""
        return partial(_hinge, kappa=self.confidence)

    # hooks -------------------------------------------------------------------------------------
    def _mask(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def _penalty(self, delta: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(penalty [n], d penalty / d x')``."""
        raise NotImplementedError

    def _works(self, hinge: Tensor, penalty: Tensor, const: Tensor) -> Tensor:
        raise NotImplementedError

    def _tighten(self, solver: _Solver, image: Tensor, grad_w: Tensor, width: float) -> Tensor:
        """Update ``solver`` for the next round of the samples in ``solver`` (all succeeded);
        return ``bool [n]``: the sample is finished."""
        raise NotImplementedError

    def _snap(self, image: Tensor, x: Tensor, width: float) -> Tensor:
        return image

    # driver ------------------------------------------------------------------------------------
    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        n = x.shape[0]
        lo, hi = threat.bounds
        width, tanh = hi - lo, _Tanh(lo, hi)
        start = tanh.to_w(x)
        solver = _Solver(
            rows=torch.arange(n, device=x.device), x=x, y=y, t=targets, start=start, w=torch.zeros_like(x),
            adam=_Adam.fresh(x, self.learning_rate), const=x.new_full((n,), self.initial_const),
            steps=torch.zeros(n, dtype=torch.int64, device=x.device), mask=self._mask(x),
            tau=x.new_full((n,), width),
        )
        solution, found, last = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), x.clone()
        while solver.rows.numel():
            s = solver
            image = s.mask * tanh.image(s.start + s.w) + (1 - s.mask) * s.x
            hinge, grad_hinge, logits = oracle.loss_and_grad(
                image, lambda z: _hinge(z, s.y, s.t, kappa=self.confidence))
            penalty, grad_penalty = self._penalty(image - s.x, s.tau)
            grad_w = (per_sample(s.const, image) * grad_hinge + grad_penalty) * tanh.slope(s.start + s.w) * s.mask
            works = self._works(hinge, penalty, s.const) & is_adversarial(logits, s.y, s.t)
            last[s.rows] = image
            s.w = s.w - s.adam.step(grad_w)
            s.steps = s.steps + 1
            done = torch.zeros_like(works)
            if bool(works.any()):
                done = self._succeed(s, works, image, grad_w, width, tanh, solution, found)
            exhausted = s.steps >= self.max_iterations
            s.const = torch.where(exhausted, s.const * 2, s.const)
            s.steps = torch.where(exhausted, torch.zeros_like(s.steps), s.steps)
            done |= s.const >= self.largest_const
            if bool(done.any()):
                solver = s.select(~done)
        x_adv = torch.where(per_sample(found, x), solution, last)
        distance = threat.distance(x, solution).masked_fill(~found, math.inf)
        return x_adv, {"best_distance": distance}

    def _succeed(self, s: _Solver, works: Tensor, image: Tensor, grad_w: Tensor, width: float, tanh: _Tanh,
                 solution: Tensor, found: Tensor) -> Tensor:
        """Record the successes (``works``, evaluated before this step's Adam update), restart
        their solver from the success; return ``bool [n]``: finished."""
        idx = works.nonzero().squeeze(1)
        rows = s.rows[idx]
        solution[rows] = self._snap(image[idx], s.x[idx], width)
        found[rows] = True
        sub = s.select(idx)
        finished = self._tighten(sub, image[idx], grad_w[idx], width)
        s.mask[idx], s.tau[idx] = sub.mask, sub.tau
        s.start[idx] = tanh.to_w(image[idx])
        s.w[idx] = 0
        s.adam.reset(works)
        s.steps = torch.where(works, torch.zeros_like(s.steps), s.steps)
        done = torch.zeros_like(works)
        done[idx] = finished
        return done


def _pixel_view(t: Tensor) -> Tensor:
    """``[N, P, C]``: the channels of each pixel of ``[N, C, H, W]`` (else ``C = 1``)."""
    if t.dim() == 4:
        return t.flatten(2).transpose(1, 2)
    return flat(t)[:, :, None]


@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL0(_WarmStartedRounds):
    """C&W L0 (Sec. VI): shrink the set of pixels allowed to change until the L2 sub-attack fails.

    Shapes: ``x [N, C, H, W]`` (a pixel is a spatial position; its channels change or are
    frozen together) or ``[N, D]`` (a pixel is a feature). Norms: L0 (pixels, not channels).

    Each round runs the authors' L2 sub-attack on the allowed pixels, ``x' = mask *
    tanh_box(s + w) + (1 - mask) * x``, minimising ``c max(Z_other - Z_t + kappa, 0) + ||x' -
    x||²``, warm-started at the previous solution ``s``. A step works when the hinge is below
    1e-4 (and the argmax agrees); otherwise after ``max_iterations`` steps ``c`` doubles, and
    once ``c >= largest_const`` the round has failed and the sample returns its last success.
    After a success, the pixels are scored by ``|Σ_ch δ| · Σ_ch |g|`` (``g`` the gradient of the
    loss with respect to ``w``) and frozen to their clean values in increasing order of score,
    stopping after a pixel with score > 0.01 or once ``>= 0.3 sqrt(#changed pixels)`` are frozen.

    All samples step together (one batched forward/backward per step); only the freezing
    bookkeeping runs on the samples that just succeeded. The returned solutions have the pixels
    whose channels all moved by less than ``1e-4 * (hi - lo)`` reset to their clean values (the
    authors' "equal" tolerance), so that the L0 distance counts only real changes.

    Args (defaults from ``l0_attack.py``): ``max_iterations`` 1000 Adam steps per ``c``,
    ``learning_rate`` 1e-2, ``initial_const`` 1e-3 (the paper says 1e-4), ``largest_const``
    2e6, ``confidence`` 0.01 (the code's fixed margin).

    ``extras``: ``best_distance [N]`` (pixels changed by the last success, ``inf`` where none).
    Cost per sample: one forward and backward per step; the number of steps is data-dependent.
    """

    name: ClassVar[str] = "cw-l0"
    norms: ClassVar[frozenset[str]] = frozenset({"L0"})

    confidence: float = 0.01

    _SCORE_LIMIT: ClassVar[float] = 0.01
    _FREEZE_FRACTION: ClassVar[float] = 0.3

    def _mask(self, x: Tensor) -> Tensor:
        return torch.ones_like(x[:, :1]) if x.dim() == 4 else torch.ones_like(x)

    def _penalty(self, delta: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        return flat(delta).pow(2).sum(dim=1), 2 * delta

    def _works(self, hinge: Tensor, penalty: Tensor, const: Tensor) -> Tensor:
        return hinge < _WORKS

    def _snap(self, image: Tensor, x: Tensor, width: float) -> Tensor:
        changed = _pixel_view(image - x).abs().amax(dim=2) >= _WORKS * width
        return torch.where(changed.reshape(self._mask(x).shape), image, x)

    def _tighten(self, solver: _Solver, image: Tensor, grad_w: Tensor, width: float) -> Tensor:
        delta = _pixel_view(image - solver.x)
        valid = flat(solver.mask) > 0
        changed = (delta.abs().amax(dim=2) >= _WORKS * width).sum(dim=1)
        score = delta.sum(dim=2).abs() * _pixel_view(grad_w).abs().sum(dim=2)
        score = score.masked_fill(~valid, math.inf)
        ordered, order = score.sort(dim=1)
        # Freeze in order of score: at most ceil(0.3 sqrt(changed)) pixels (at least one), and
        # the first pixel scoring above the limit is the last one frozen.
        cap = (self._FREEZE_FRACTION * changed.to(score.dtype).sqrt()).ceil().clamp_min(1)
        above = ordered > self._SCORE_LIMIT
        first_above = torch.where(above.any(dim=1), above.float().argmax(dim=1), above.shape[1])
        count = torch.minimum(torch.minimum(cap, (first_above + 1).to(cap.dtype)), valid.sum(dim=1).to(cap.dtype))
        rank = torch.arange(score.shape[1], device=score.device)[None]
        freeze = torch.zeros_like(valid).scatter(1, order, rank < count[:, None])
        finished = valid.sum(dim=1) == 0
        solver.mask = (valid & ~freeze).to(solver.mask.dtype).reshape(solver.mask.shape)
        return finished


CWL0 = CarliniWagnerL0


@dataclass(frozen=True, kw_only=True)
class CarliniWagnerLinf(_WarmStartedRounds):
    """C&W L∞ (Sec. VI): minimise ``c max(Z_other - Z_t + kappa, 0) + Σ_i max(|δ_i| - τ, 0)``
    over a tanh-encoded ``x'``, shrinking ``τ`` after every success.

    Shapes: any ``x [N, ...]``. Norms: L∞.

    ``τ`` starts at the box width (1 on the authors' scale). Each round restarts Adam from the
    previous solution; a step works when the total loss is below ``1e-4 c`` and the argmax is the
    target (judged at the same iterate; the authors re-check after the step). Then ``τ ←
    0.9 min(τ, max|δ|)``; the sample stops when ``τ <= (hi - lo) / 256``, or when a round fails
    (``c`` doubled past ``largest_const``), and returns its last success.

    Args (defaults from ``li_attack.py``): ``max_iterations`` 1000 Adam steps per ``c``,
    ``learning_rate`` 5e-3, ``initial_const`` 1e-5, ``largest_const`` 20, ``confidence`` 0,
    ``decrease_factor`` 0.9.

    ``extras``: ``best_distance [N]`` (L∞ distance of the last success, ``inf`` where none).
    Cost per sample: one forward and backward per step; the number of steps is data-dependent.
    """

    name: ClassVar[str] = "cw-linf"
    norms: ClassVar[frozenset[str]] = frozenset({"Linf"})

    learning_rate: float = 5e-3
    initial_const: float = 1e-5
    largest_const: float = 20.0
    decrease_factor: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.decrease_factor, (int, float)) and 0 < self.decrease_factor < 1):
            raise RobustlabError(f"decrease_factor must lie in (0, 1), got {self.decrease_factor!r}")

    def _penalty(self, delta: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        excess = delta.abs() - per_sample(tau, delta)
        return flat(excess.clamp_min(0)).sum(dim=1), delta.sign() * (excess > 0)

    def _works(self, hinge: Tensor, penalty: Tensor, const: Tensor) -> Tensor:
        return const * hinge + penalty < _WORKS * const

    def _tighten(self, solver: _Solver, image: Tensor, grad_w: Tensor, width: float) -> Tensor:
        actual = flat(image - solver.x).abs().amax(dim=1)
        solver.tau = torch.minimum(solver.tau, actual) * self.decrease_factor
        return solver.tau <= width / 256


CWLinf = CarliniWagnerLinf
