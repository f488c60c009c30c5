"""Certifiers: ``certifier(model, x, y, *, threat) -> CertResult``.

:class:`IBP`, :class:`CROWN` (CROWN-Ada; ``intermediate="ibp"`` gives CROWN-IBP, ``alpha_steps``
gives alpha-CROWN), and the shortcuts :class:`CROWNIBP` and :class:`AlphaCROWN`. A sample is
certified when the lower bound of every margin ``z_y - z_j`` (j != y) over the threat set is
> 0; a sample misclassified at ``x`` itself is never certified.

Supported layers: see :data:`robustlab.certify.graph.SUPPORTED`. Norms: Linf (box, exact input
handling), L2 and L1 (dual norm on the first affine block). The model's train/eval mode and its
parameters' ``requires_grad``/``.grad`` are restored afterwards; certification runs in eval mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from robustlab.attacks.base import check_call, check_inputs
from robustlab.certify.bounds import InputSet, crown_bounds, ibp_bounds, margin_spec
from robustlab.certify.graph import AffineFunction, AffineOp, MaxPoolOp, Op, ReLUOp, ResidualOp, check_graph, run_ops
from robustlab.certify.trace import parse_model
from robustlab.errors import RobustlabError
from robustlab.modes import FrozenEval
from robustlab.threat import ThreatModel, require_unbounded

__all__ = [
    "CROWN",
    "CROWNIBP",
    "IBP",
    "AlphaCROWN",
    "CertResult",
    "Certifier",
    "Prepared",
    "certified_accuracy",
    "certified_radius",
    "check_certify_inputs",
    "eps_per_sample",
    "prepare",
]


@dataclass
class CertResult:
    """Per-sample certificates.

    Attributes:
        certified: ``bool[N]``: the prediction is provably ``y`` everywhere in the threat set.
        margins: ``[N, K]`` lower bounds on ``z_y - z_j`` over the threat set (``+inf`` at ``j = y``).
        margin: ``[N]`` the smallest of them (``min_{j != y}``); certified iff ``> 0``.
        eps: ``[N]`` the radius each sample was certified at.
        norm, method: the threat norm and the certifier ("ibp", "crown", "crown-ibp", "alpha-crown").
        clean_correct: ``bool[N]``: the model classifies ``x`` itself correctly.
        seconds: wall time of the call.
    """

    certified: Tensor
    margins: Tensor
    margin: Tensor
    eps: Tensor
    norm: str
    method: str
    clean_correct: Tensor
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.certified.shape[0]

    @property
    def certified_accuracy(self) -> float:
        return certified_accuracy(self)


def certified_accuracy(result: CertResult) -> float:
    """Fraction of samples certified (correct and provably robust); NaN for an empty batch."""
    return float(result.certified.float().mean()) if len(result) else math.nan


@dataclass
class Prepared:
    """A parsed model: ``ops`` then the final linear layer ``weight [K, D]``, ``bias [K]``."""

    ops: list[Op]
    weight: Tensor
    bias: Tensor | None
    logits: Tensor


def prepare(model: nn.Module, x: Tensor) -> Prepared:
    """Trace ``model`` on ``x`` into ops, split off its last ``Linear`` (for elision) and check
    the ops by a forward pass on ``x``. The model must already be in the mode it is certified in (eval)."""
    ops = parse_model(model, x)
    if not ops:
        raise RobustlabError("the model has no layers to certify")
    last = ops[-1]
    final = last.modules[-1] if isinstance(last, AffineOp) else None
    if isinstance(last, AffineOp) and (isinstance(final, nn.Linear) or getattr(final, "kind", None) == "linear"):  # a Linear or F.linear
        last.modules.pop()
        last.names.pop()
        if not last.modules:
            ops.pop()
        weight, bias = ((final.weight, final.bias) if isinstance(final, nn.Linear)
                        else cast(AffineFunction, final).constants()[:2])
    else:
        weight, bias = None, None
    with torch.no_grad():
        hidden = run_ops(ops, x)
    if hidden.dim() != 2:
        raise RobustlabError(f"the layer before the output must give [N, D] features, got {tuple(hidden.shape)}")
    if weight is None:
        weight = torch.eye(hidden.shape[1], dtype=x.dtype, device=x.device)
    logits = check_graph_with_head(model, ops, weight, bias, x)
    return Prepared(ops, weight, bias, logits)


def check_graph_with_head(model: nn.Module, ops: list[Op], weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    # Built on the meta device and filled in: no initialisation, so no draw from the global RNG.
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    head = head.to_empty(device=weight.device)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return check_graph(model, [*ops, AffineOp([head], ["output"])], x)


def check_certify_inputs(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """The attacks' checks (:func:`~robustlab.attacks.base.check_inputs`: ``x`` clamped to the
    box, ``y`` as int64; :func:`~robustlab.attacks.base.check_call`: ``x`` of the model's dtype,
    not under inference_mode), plus the norms bound propagation supports."""
    x, y = check_inputs(x, y, threat)
    if threat.norm not in ("Linf", "L2", "L1"):
        raise RobustlabError(f"certification supports the norms Linf, L2 and L1, not {threat.norm}")
    return check_call(model, x), y


def eps_per_sample(eps: float | Tensor, x: Tensor) -> Tensor:
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    eps_t = eps_t.expand(x.shape[0]).clone() if eps_t.dim() == 0 else eps_t.reshape(-1)
    if eps_t.shape[0] != x.shape[0] or bool((eps_t < 0).any()) or not bool(torch.isfinite(eps_t).all()):
        raise RobustlabError("eps must be finite, non-negative, a number or one value per sample")
    return eps_t


@dataclass(frozen=True, kw_only=True)
class Certifier:
    """Base class: a frozen configuration; :meth:`__call__` certifies a batch.

    Bound-propagation subclasses implement :meth:`_bound`; the exact
    :class:`~robustlab.certify.milp.MILPVerifier` overrides :meth:`__call__`."""

    batch_size: int = 256
    name: ClassVar[str] = ""  # the key in CERTIFIERS
    method = ""

    def margins(self, prepared: Prepared, x: Tensor, y: Tensor, eps: Tensor, threat: ThreatModel) -> Tensor:
        """``[N, K]`` margin lower bounds (``+inf`` at ``y``) for a prepared model, over the balls
        of radii ``eps [N]`` in ``threat``'s norm and box."""
        spec = margin_spec(y, prepared.weight.shape[0], x.dtype)
        inputs = InputSet(x, eps, threat.norm, threat.bounds)
        values = self._bound(prepared, spec, inputs)
        return values.masked_fill(spec.abs().sum(-1) == 0, math.inf)

    def _bound(self, prepared: Prepared, spec: Tensor, inputs: InputSet) -> Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: ThreatModel,
                 eps: float | Tensor | None = None) -> CertResult:
        """Certify ``x [N, ...]`` with labels ``y [N]`` against ``threat`` (or per-sample radii
        ``eps [N]`` in ``threat``'s norm and box)."""
        x, y = check_certify_inputs(model, x, y, threat)
        start = time.perf_counter()
        eps_t = eps_per_sample(threat.eps if eps is None else eps, x)
        with FrozenEval(model), torch.no_grad():
            out = []
            for i in range(0, max(x.shape[0], 1), self.batch_size):
                xb, yb = x[i:i + self.batch_size], y[i:i + self.batch_size]
                if xb.shape[0] == 0:
                    break
                prepared = prepare(model, xb)
                if yb.numel() and (int(yb.min()) < 0 or int(yb.max()) >= prepared.weight.shape[0]):
                    raise RobustlabError(f"labels must lie in [0, {prepared.weight.shape[0]})")
                margins = self.margins(prepared, xb, yb, eps_t[i:i + self.batch_size], threat)
                correct = prepared.logits.argmax(1) == yb
                out.append((margins, correct))
        if out:
            margins = torch.cat([m for m, _ in out])
            correct = torch.cat([c for _, c in out])
        else:
            margins, correct = x.new_zeros((0, 0)), torch.zeros(0, dtype=torch.bool)
        margin = margins.amin(dim=1) if margins.numel() else x.new_zeros(x.shape[0])
        certified = (margin > 0) & correct
        return CertResult(certified, margins, margin, eps_t, threat.norm, self.method, correct,
                          time.perf_counter() - start)


@dataclass(frozen=True, kw_only=True)
class IBP(Certifier):
    """Interval bound propagation (Gowal et al. 2018) with the margin spec folded into the last
    layer. Cost: about two forward passes per sample."""

    name: ClassVar[str] = "ibp"
    method = "ibp"

    def _bound(self, prepared: Prepared, spec: Tensor, inputs: InputSet) -> Tensor:
        return ibp_bounds(prepared.ops, prepared.weight, prepared.bias, spec, inputs)


@dataclass(frozen=True, kw_only=True)
class CROWN(Certifier):
    """CROWN (Zhang et al. 2018) backward linear bound propagation.

    Args:
        intermediate: "crown" (every ReLU layer bounded by its own backward pass; quadratic in
            depth) or "ibp" (CROWN-IBP: interval intermediate bounds, one backward pass).
        alpha_steps: > 0 optimises the lower ReLU slopes (alpha-CROWN) for that many Adam steps.
        alpha_lr: Adam step size for alpha-CROWN (0.1; the slopes live in [0, 1]).
        with_ibp: also compute IBP and keep the larger (both are sound) bound per margin.
    """

    name: ClassVar[str] = "crown"
    intermediate: str = "crown"
    alpha_steps: int = 0
    alpha_lr: float = 0.1
    with_ibp: bool = True

    @property
    def method(self) -> str:  # type: ignore[override]
        base = "crown" if self.intermediate == "crown" else "crown-ibp"
        return f"alpha-{base}" if self.alpha_steps > 0 else base

    def _bound(self, prepared: Prepared, spec: Tensor, inputs: InputSet) -> Tensor:
        # Samples in chunks whose back-substitution matrices stay within _CROWN_MEMORY (on a conv net they
        # are [samples, rows, features]: 90 MB a sample for kw-small on MNIST, 23 GB for a batch of 250).
        per_sample = _crown_bytes_per_sample(prepared.ops, spec.shape[1], self.intermediate, inputs.x.element_size())
        chunk = max(1, _CROWN_MEMORY // per_sample)
        bounds = []
        for i in range(0, inputs.x.shape[0], chunk):
            part = InputSet(inputs.x[i:i + chunk], inputs.eps[i:i + chunk], inputs.norm, inputs.bounds)
            bound, _ = crown_bounds(prepared.ops, prepared.weight, prepared.bias, spec[i:i + chunk], part,
                                    intermediate=self.intermediate, alpha_steps=self.alpha_steps,
                                    alpha_lr=self.alpha_lr)
            bounds.append(bound)
        bound = torch.cat(bounds) if bounds else spec.new_zeros(spec.shape[:2])
        if self.with_ibp:
            bound = torch.maximum(bound, ibp_bounds(prepared.ops, prepared.weight, prepared.bias, spec, inputs))
        return bound


#: The largest back-substitution CROWN may hold at once, in bytes (with 4x headroom for its temporaries).
_CROWN_MEMORY = 2**31


def _crown_bytes_per_sample(ops: list[Op], outputs: int, intermediate: str, element_size: int) -> int:
    """An upper estimate of CROWN's memory per sample: 4 matrices of ``rows x widest layer so far``, with
    ``2 d`` rows for each nonlinear op's input of size ``d`` (both bounds; with CROWN intermediate bounds)
    and ``outputs`` rows for the specification."""
    def flat(ops: list[Op]) -> Iterator[AffineOp | ReLUOp | MaxPoolOp]:
        for op in ops:
            if isinstance(op, ResidualOp):
                for branch in op.branches:
                    yield from flat(branch)
            else:
                yield op

    widest, largest = 1, 0
    for op in flat(ops):
        widest = max(widest, math.prod(op.in_shape), math.prod(op.out_shape))
        if not isinstance(op, AffineOp) and intermediate == "crown":
            largest = max(largest, 2 * math.prod(op.in_shape) * widest)
    return 4 * max(largest, outputs * widest) * element_size


@dataclass(frozen=True, kw_only=True)
class CROWNIBP(CROWN):
    """CROWN with interval intermediate bounds (Zhang et al., ICLR 2020): ``CROWN(intermediate="ibp")``."""

    name: ClassVar[str] = "crown-ibp"
    intermediate: str = "ibp"


@dataclass(frozen=True, kw_only=True)
class AlphaCROWN(CROWN):
    """CROWN with optimised lower ReLU slopes (Xu et al., ICLR 2021): ``CROWN(alpha_steps=30)``,
    30 Adam steps by default."""

    name: ClassVar[str] = "alpha-crown"
    alpha_steps: int = 30


def certified_radius(
    certifier: Certifier,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    eps_max: float | Tensor = 1.0,
    steps: int = 20,
) -> Tensor:
    """``[N]`` the largest radius certified by ``certifier`` in ``threat``'s norm and box (an
    unbounded threat model, ``eps = math.inf``: the radius is the output, see
    :func:`~robustlab.threat.require_unbounded`), by per-sample bisection on
    ``[0, eps_max]`` (a number or ``[N]``, e.g. an attack's distances: the certified radius
    cannot exceed them; ``steps`` halvings: precision ``eps_max / 2**steps``); 0 for misclassified
    samples. Every returned radius was itself certified (the lower end of the bracket), so it
    is a sound lower bound on the minimal adversarial perturbation.

    Cost: ``steps + 1`` certifier calls."""
    require_unbounded(threat, "certified_radius")
    low, high = threat.bounds
    width = (high - low) * (1 if threat.norm == "Linf" else x[0].numel())
    hi = torch.as_tensor(eps_max, dtype=x.dtype).expand(x.shape[0]).clone().clamp(max=width)
    hi = torch.where(hi > 0, hi, torch.full_like(hi, 1e-12))
    lo = x.new_zeros(x.shape[0])
    top = certifier(model, x, y, threat=threat, eps=hi)
    lo = torch.where(top.certified, hi, lo)
    done = top.certified | ~top.clean_correct
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = certifier(model, x, y, threat=threat, eps=mid).certified
        lo = torch.where(ok & ~done, mid, lo)
        hi = torch.where(~ok & ~done, mid, hi)
    return torch.where(top.clean_correct, lo, torch.zeros_like(lo))
