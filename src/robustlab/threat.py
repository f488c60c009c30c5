"""Threat models: the set of inputs an adversary may choose from.

A threat model is a norm ball of radius ``eps`` around the clean input, intersected with the
input box ``bounds`` (normally ``[0, 1]``). Attacks, training and reports all receive the same
small frozen object; ``eps`` lives here, never in an attack's own arguments.

All methods work on batches: ``x`` and ``x_adv`` are ``[N, ...]`` tensors, per-sample outputs
are ``[N]``. ``eps = math.inf`` is allowed and means "unbounded" (only the box applies), which
is what minimum-norm attacks and unbounded diagnostics use.

L0 counts changed *pixels*, not channels: for ``[N, C, H, W]`` inputs a pixel counts once if
any of its channels changed (as in Carlini & Wagner's L0 attack); for other shapes each
feature counts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.errors import RobustlabError

__all__ = ["ThreatModel", "Linf", "L2", "L1", "L0", "threat_model", "require_unbounded", "NORMS"]

# Bisection steps for the L2 and L1 projections onto ball ∩ box: 2**-50 relative precision.
_BISECTION_STEPS = 50


@dataclass(frozen=True)
class ThreatModel:
    """Base class: an ``eps``-ball in some norm intersected with the box ``bounds``.

    Subclasses set ``norm`` and implement the norm-specific operations.
    """

    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    norm: ClassVar[str] = ""

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise RobustlabError(f"eps must be a number, got {eps!r}")
        if math.isnan(eps) or eps <= 0:
            raise RobustlabError(f"eps must be > 0 (math.inf for unbounded), got {eps}")
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise RobustlabError(f"bounds must be finite with lower < upper, got {self.bounds}")
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "bounds", (float(lo), float(hi)))

    # -- shared helpers -------------------------------------------------------------------
    @property
    def unbounded(self) -> bool:
        return math.isinf(self.eps)

    def clip_to_box(self, x: Tensor) -> Tensor:
        return x.clamp(*self.bounds)

    def _box_delta(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper limits of the perturbation ``delta`` that keep ``x + delta`` in the box."""
        lo, hi = self.bounds
        return lo - x, hi - x

    def contains(self, x: Tensor, x_adv: Tensor, *, tol: float = 1e-5) -> Tensor:
        """``bool[N]``: whether each ``x_adv`` lies in the threat set around ``x`` (with a small
        tolerance for float rounding). float16 and bfloat16 points are compared in float32, so a
        point rounded outward, past ``eps``, is outside (attacks round inward, see
        ``robustlab.attacks.base.project_rounding_inward``)."""
        if x_adv.dtype in (torch.float16, torch.bfloat16) or x.dtype in (torch.float16, torch.bfloat16):
            x, x_adv = x.float(), x_adv.float()
        lo, hi = self.bounds
        in_box = flat((x_adv >= lo - tol) & (x_adv <= hi + tol)).all(dim=1)
        return in_box & (self.distance(x, x_adv) <= self.eps * (1 + tol) + tol)

    def with_eps(self, eps: float) -> ThreatModel:
        return type(self)(eps=eps, bounds=self.bounds)

    def with_bounds(self, bounds: tuple[float, float]) -> ThreatModel:
        """The same threat model on another input box (e.g. the one a model card declares)."""
        low, high = bounds
        return replace(self, bounds=(low, high))

    def __str__(self) -> str:
        return f"{self.norm}(eps={self.eps:g}, bounds={self.bounds})"

    def to_dict(self) -> dict[str, Any]:
        """``{"norm", "eps", "bounds"}``, as every saved document records its threat model
        (strict JSON writes an infinite ``eps`` as ``null``)."""
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ThreatModel:
        """The threat model :meth:`to_dict` wrote; ``eps`` ``null`` reads back as ``inf``."""
        eps = data["eps"]
        low, high = data["bounds"]
        return threat_model(data["norm"], math.inf if eps is None else eps, (low, high))

    # -- norm-specific ----------------------------------------------------------------------
    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """``[N]`` distance between ``x`` and ``x_adv`` in this norm."""
        raise NotImplementedError

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Euclidean projection of ``x_adv`` onto ``{z : ||z - x|| <= eps, lo <= z <= hi}``."""
        raise NotImplementedError

    def box(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The threat set around ``x`` as per-coordinate bounds ``(lower, upper)`` where it is a
        box (L∞), else ``None``."""
        return None

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random point inside the ball ∩ box around each ``x``."""
        raise NotImplementedError

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        """Unit-norm direction ``d`` maximising ``<grad, d>`` (the steepest-ascent step).

        ``x_adv``, where given, lets sparse norms skip coordinates already at the box edge in
        the direction of ascent.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Linf(ThreatModel):
    """L∞ ball: every feature may move by at most ``eps``."""

    norm: ClassVar[str] = "Linf"

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return flat(x_adv - x).abs().amax(dim=1) if x.numel() else x.new_zeros(x.shape[0])

    def box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The threat set around ``x`` as per-coordinate bounds ``(lower, upper)``: the ball and
        the input box are both boxes, and so is their intersection. ``x_adv.clamp(lower, upper)``
        is :meth:`project`; attacks that project around the same ``x`` at every step compute the
        bounds once."""
        lo, hi = self.bounds
        return (x - self.eps).clamp_min(lo), (x + self.eps).clamp_max(hi)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return x_adv.clamp(*self.box(x))

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = min(self.eps, self.bounds[1] - self.bounds[0])
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x, x + (2 * noise - 1) * eps)

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        return grad.sign()


@dataclass(frozen=True)
class L2(ThreatModel):
    """L2 ball."""

    norm: ClassVar[str] = "L2"

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        distance: Tensor = flat(x_adv - x).norm(p=2, dim=1)
        return distance

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        # KKT: delta_i = clip(t * v_i, lower_i, upper_i) for some t in [0, 1], and ||delta(t)||
        # grows with t; bisect on t, keeping the feasible end of the bracket.
        lower, upper = self._box_delta(x)
        v = x_adv - x
        if self.unbounded:
            return x + torch.minimum(torch.maximum(v, lower), upper)

        def norm_at(t: Tensor) -> Tensor:
            norm: Tensor = flat(torch.minimum(torch.maximum(per_sample(t, v) * v, lower), upper)).norm(dim=1)
            return norm

        n = v.shape[0]
        t_lo = v.new_zeros(n)
        t_hi = v.new_ones(n)
        feasible = norm_at(t_hi) <= self.eps
        for _ in range(_BISECTION_STEPS):
            mid = (t_lo + t_hi) / 2
            inside = norm_at(mid) <= self.eps
            t_lo = torch.where(inside, mid, t_lo)
            t_hi = torch.where(inside, t_hi, mid)
        t = torch.where(feasible, torch.ones_like(t_lo), t_lo)
        return x + torch.minimum(torch.maximum(per_sample(t, v) * v, lower), upper)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Uniform in the ball (Gaussian direction, radius eps * u^(1/d)), then clipped to the box;
        # clipping towards a box that contains x only shrinks each coordinate, so it stays inside.
        d = math.prod(x.shape[1:]) or 1
        eps = min(self.eps, (self.bounds[1] - self.bounds[0]) * math.sqrt(d))
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(flat(direction).norm(dim=1).clamp_min(1e-12), x)
        radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1 / d)
        return self.clip_to_box(x + per_sample(radius, x) * direction)

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        norm = flat(grad).norm(dim=1).clamp_min(1e-12)
        return grad / per_sample(norm, grad)


@dataclass(frozen=True)
class L1(ThreatModel):
    """L1 ball.

    ``steepest_direction`` is the sparse ascent direction of Tramèr & Boneh (2019): the sign of
    the gradient on its top ``1 - sparsity_quantile`` fraction of coordinates (by magnitude),
    scaled to unit L1 norm, skipping coordinates that are already at the box edge in the
    direction of ascent. With ``sparsity_quantile=1`` it is the exact steepest L1 direction
    (a single coordinate), which makes slow progress in practice.
    """

    norm: ClassVar[str] = "L1"
    sparsity_quantile: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.sparsity_quantile <= 1.0:
            raise RobustlabError(f"sparsity_quantile must lie in [0, 1], got {self.sparsity_quantile}")

    def with_eps(self, eps: float) -> L1:
        return L1(eps=eps, bounds=self.bounds, sparsity_quantile=self.sparsity_quantile)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return flat(x_adv - x).abs().sum(dim=1)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        # KKT: delta_i = clip(soft_threshold(v_i, lam), lower_i, upper_i) for some lam >= 0, and
        # ||delta(lam)||_1 falls as lam grows; bisect on lam, keeping the feasible end.
        lower, upper = self._box_delta(x)
        v = x_adv - x

        def delta_at(lam: Tensor) -> Tensor:
            shrunk = v.sign() * (v.abs() - per_sample(lam, v)).clamp_min(0)
            return torch.minimum(torch.maximum(shrunk, lower), upper)

        if self.unbounded:
            return x + delta_at(v.new_zeros(v.shape[0]))
        lam_lo = v.new_zeros(v.shape[0])
        lam_hi = flat(v).abs().amax(dim=1) if v.numel() else lam_lo.clone()
        feasible = flat(delta_at(lam_lo)).abs().sum(dim=1) <= self.eps
        for _ in range(_BISECTION_STEPS):
            mid = (lam_lo + lam_hi) / 2
            inside = flat(delta_at(mid)).abs().sum(dim=1) <= self.eps
            lam_hi = torch.where(inside, mid, lam_hi)
            lam_lo = torch.where(inside, lam_lo, mid)
        lam = torch.where(feasible, torch.zeros_like(lam_hi), lam_hi)
        return x + delta_at(lam)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Uniform in the L1 ball: d + 1 exponentials normalised by their sum give a uniform point
        # of the simplex; drop the last, attach random signs.
        d = math.prod(x.shape[1:])
        if x.shape[0] == 0 or d == 0:
            return x.clone()
        eps = min(self.eps, (self.bounds[1] - self.bounds[0]) * d)
        e = -torch.rand((x.shape[0], d + 1), generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12).log()
        point = e[:, :d] / e.sum(dim=1, keepdim=True)
        signs = torch.randint(0, 2, point.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        return self.clip_to_box(x + (eps * point * signs).reshape(x.shape))

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        g = flat(grad)
        if x_adv is not None:
            lo, hi = self.bounds
            xa = flat(x_adv)
            stuck = ((xa <= lo) & (g < 0)) | ((xa >= hi) & (g > 0))
            g = g.masked_fill(stuck, 0.0)
        if g.shape[1] == 0 or g.shape[0] == 0:
            return grad.clone()
        k = max(1, round((1 - self.sparsity_quantile) * g.shape[1]))
        magnitude = g.abs()
        threshold = magnitude.topk(k, dim=1).values[:, -1:]
        chosen = (magnitude >= threshold) & (magnitude > 0)
        direction = g.sign() * chosen
        count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
        return (direction / count).reshape(grad.shape)


@dataclass(frozen=True)
class L0(ThreatModel):
    """L0 ball: at most ``eps`` pixels may change (``eps`` is a count; math.inf for unbounded).

    A pixel is a spatial position of a ``[N, C, H, W]`` input (all its channels together), or a
    feature of any other input shape.
    """

    norm: ClassVar[str] = "L0"

    @staticmethod
    def _pixels(t: Tensor) -> Tensor:
        """``[N, P]`` per-pixel view: channel values reduced with ``amax`` of magnitudes."""
        if t.dim() == 4:
            return flat(t.abs().amax(dim=1))
        return flat(t).abs()

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return (self._pixels(x_adv - x) > 0).sum(dim=1).to(x.dtype)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        # Exact: clip into the box, then keep the eps pixels whose change is worth the most in
        # squared distance and reset the others. A pixel's worth is what changing it saves,
        # ||x_adv - x||^2 - ||x_adv - clipped||^2, not ||clipped - x||^2: the two differ where the
        # box clips, and ranking by the latter picks the wrong pixels.
        clipped = self.clip_to_box(x_adv)
        if self.unbounded or x.shape[0] == 0:
            return clipped
        saving = (x_adv - x) ** 2 - (x_adv - clipped) ** 2
        gain = saving.sum(dim=1) if x.dim() == 4 else saving
        gain = gain.reshape(x.shape[0], -1)
        k = int(self.eps)
        if k >= gain.shape[1]:
            return clipped
        keep = torch.zeros_like(gain, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, gain.topk(k, dim=1).indices, True)
        keep &= gain > 0
        mask = keep.reshape(x.shape[0], 1, *x.shape[2:]) if x.dim() == 4 else keep.reshape(x.shape)
        return torch.where(mask, clipped, x)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        values = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        lo, hi = self.bounds
        return self.project(x, lo + (hi - lo) * values)

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        # The pixel with the largest gradient magnitude, moved along the gradient's sign.
        magnitude = self._pixels(grad)
        if magnitude.shape[1] == 0:
            return grad.clone()
        best = torch.zeros_like(magnitude, dtype=torch.bool)
        best.scatter_(1, magnitude.argmax(dim=1, keepdim=True), True)
        mask = best.reshape(grad.shape[0], 1, *grad.shape[2:]) if grad.dim() == 4 else best.reshape(grad.shape)
        return grad.sign() * mask


NORMS: dict[str, type[ThreatModel]] = {"Linf": Linf, "L2": L2, "L1": L1, "L0": L0}
_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}


def threat_model(norm: str, eps: float, bounds: tuple[float, float] = (0.0, 1.0)) -> ThreatModel:
    """Build a threat model from a norm name (``"Linf"``/``"inf"``, ``"L2"``, ``"L1"``, ``"L0"``)."""
    key = _ALIASES.get(str(norm).lower())
    if key is None:
        raise RobustlabError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    return NORMS[key](eps=eps, bounds=bounds)


def require_unbounded(threat: object, what: str) -> ThreatModel:
    """``threat`` itself if it is an unbounded :class:`ThreatModel` (``eps = math.inf``: only the
    box applies), else a clear error naming ``what``.

    This is how the functions whose *output* is a distance take their threat model (minimum-norm
    and targeted evaluation, the certified radius, the exact minimal perturbation, the bracket):
    its norm says how distances are measured and its box bounds the inputs. A finite ``eps``
    would be ignored there, so it is refused rather than silently dropped."""
    if isinstance(threat, str):
        raise RobustlabError(f"{what} takes an unbounded threat model, e.g. L2(math.inf) or "
                             f"robustlab.threat.threat_model({threat!r}, math.inf), not the string {threat!r}")
    if not isinstance(threat, ThreatModel):
        raise RobustlabError(f"{what} takes threat=ThreatModel, unbounded (e.g. robustlab.threat.L2(math.inf)); "
                             f"got {type(threat).__name__}")
    if not threat.unbounded:
        raise RobustlabError(f"{what} measures each sample's minimal distance, so its threat model is unbounded: pass "
                             f"{threat.norm}(math.inf, bounds={threat.bounds}) (threat.with_eps(math.inf)), "
                             f"not eps={threat.eps:g}")
    return threat
