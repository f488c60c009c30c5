"""Bound propagation: IBP, CROWN (with CROWN or IBP intermediate bounds) and alpha-CROWN.

Everything works on a batch: ``x [N, *in]``, per-sample radii ``eps [N]``, a specification
``C [N, S, K]`` whose rows are linear functions of the logits (for certification
``C[n, j] = e_y - e_j``, so row ``j`` is the margin ``z_y - z_j``). The result is a lower bound
``[N, S]`` on ``C z(x')`` over every ``x'`` in the input set
``{x' : ||x' - x|| <= eps} ∩ [lo, hi]^d``.

The specification is folded into the network's last ``Linear`` layer (``W' = C W``,
``b' = C b``: "elision", Gowal et al. 2018), which is tighter than bounding logits first.

Input sets: for Linf the set is a box (``clip(x ± eps)``), handled exactly. For L2 and L1 the
first affine block is bounded by the dual norm, ``lam·x - eps ||lam||_*`` (the tighter of that
and the box bound); IBP then continues with intervals.

ReLU relaxation (Zhang et al. 2018, CROWN): for an unstable neuron (``l < 0 < u``) the upper line
``u (z - l) / (u - l)`` and a lower line ``alpha z``, ``alpha = 1 if u >= -l else 0`` (CROWN-Ada)
or optimised in ``[0, 1]`` (alpha-CROWN, Xu et al. 2021). Stable neurons are exact.

Costs (``D_k`` = neurons at the k-th ReLU/max-pool input, ``d`` = input size): IBP is about two
forward passes. CROWN with CROWN intermediate bounds runs, for each ReLU layer k, a backward
pass with ``2 D_k`` rows, so it costs ``O(sum_k D_k * (depth up to k))`` backward passes of
the network per sample and memory ``2 D_k * d`` per sample: fine for MLPs and small CNNs, heavy
for large convolutional layers (use ``intermediate="ibp"``, CROWN-IBP: one backward pass with
``K`` rows). alpha-CROWN multiplies the final backward pass by its number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from robustlab.certify.graph import AffineOp, MaxPoolOp, Op, ReLUOp, ResidualOp
from robustlab.errors import RobustlabError

__all__ = ["InputSet", "crown_bounds", "ibp_bounds", "margin_spec"]

_DUAL = {"L2": 2.0, "L1": math.inf}


@dataclass
class InputSet:
    """``{x' : ||x' - x||_norm <= eps_n} ∩ [lo, hi]^d`` per sample; ``x [N, *in]``, ``eps [N]``."""

    x: Tensor
    eps: Tensor
    norm: str = "Linf"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in ("Linf", "L2", "L1"):
            raise RobustlabError(f"bound propagation supports the norms Linf, L2, L1; got {self.norm}")

    def _eps(self) -> Tensor:
        return self.eps.to(self.x.dtype).reshape(-1, *([1] * (self.x.dim() - 1)))

    def box(self) -> tuple[Tensor, Tensor]:
        """Coordinate-wise bounds ``[N, *in]`` (exact for Linf; the plain box ∩ ball hull otherwise)."""
        lo, hi = self.bounds
        eps = self._eps()
        return (self.x - eps).clamp(lo, hi), (self.x + eps).clamp(lo, hi)

    def concretize(self, lam: Tensor, bias: Tensor) -> Tensor:
        """``min over the set of lam·x' + bias``: ``lam [N, S, *in]``, ``bias [N, S]`` -> ``[N, S]``."""
        lower, upper = self.box()
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        box_value = (pos * lower.unsqueeze(1) + neg * upper.unsqueeze(1)).flatten(2).sum(-1)
        if self.norm == "Linf":
            return box_value + bias
        flat_lam = lam.flatten(2)
        centre = (flat_lam * self.x.flatten(1).unsqueeze(1)).sum(-1)
        dual = torch.linalg.vector_norm(flat_lam, ord=_DUAL[self.norm], dim=-1)
        ball_value = centre - self.eps.to(lam.dtype).unsqueeze(1) * dual
        return torch.maximum(ball_value, box_value) + bias


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``C [N, K, K]`` with ``C[n, j] = e_{y_n} - e_j`` (row ``y_n`` is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _fold(spec: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Elision: ``(C W [N, S, D], C b [N, S])``."""
    w = spec @ weight.to(spec.dtype)
    b = spec @ bias.to(spec.dtype) if bias is not None else spec.new_zeros(spec.shape[:2])
    return w, b


# -- IBP -----------------------------------------------------------------------------------


#: Maps linear functions of an op list's input back to the network input: ``lam -> (lam', bias)``.
Prefix = Callable[[Tensor], tuple[Tensor, Tensor | float]]


def _sum(terms: Iterable[Tensor]) -> Tensor:
    """``sum(terms)`` of the branches of a residual op (at least one)."""
    return cast(Tensor, sum(terms))


def _ibp_ops(ops: list[Op], lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    for op in ops:
        if isinstance(op, ResidualOp):
            parts = [_ibp_ops(b, lower, upper) if b else (lower, upper) for b in op.branches]
            lower, upper = _sum(p[0] for p in parts), _sum(p[1] for p in parts)
        else:
            lower, upper = op.ibp(lower, upper)
    return lower, upper


def _leading_affine(ops: list[Op]) -> int:
    count = 0
    for op in ops:
        if not isinstance(op, AffineOp):
            break
        count += 1
    return count


def _identity_rows(n: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``[N, 2D, *shape]``: the rows ``+e_i`` then ``-e_i`` (lower and upper bounds of each unit)."""
    d = math.prod(shape)
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    return torch.cat([eye, -eye]).reshape(1, 2 * d, *shape).expand(n, -1, *([-1] * len(shape)))


def _exact_affine_bounds(ops: list[Op], inputs: InputSet) -> tuple[Tensor, Tensor]:
    """Exact bounds at the output of a purely affine op list (dual norm for L2/L1)."""
    affine = cast("list[AffineOp]", ops)  # the caller passes the leading affine ops
    shape = affine[-1].out_shape
    d = math.prod(shape)
    lam = _identity_rows(inputs.x.shape[0], shape, inputs.x)
    bias = lam.new_zeros(lam.shape[:2])
    for op in reversed(affine):
        lam, b = op.backward(lam)
        bias = bias + b
    values = inputs.concretize(lam, bias)
    return values[:, :d].reshape(-1, *shape), -values[:, d:].reshape(-1, *shape)


def ibp_bounds(ops: list[Op], weight: Tensor, bias: Tensor | None, spec: Tensor, inputs: InputSet) -> Tensor:
    """IBP lower bound ``[N, S]`` on ``spec @ (W h + b)`` with ``h = ops(x')``.

    Cost: about two forward passes (plus, for L2/L1, one backward pass of the leading affine
    block with ``2 D`` rows)."""
    lower, upper = inputs.box()
    start = 0
    if inputs.norm != "Linf":
        start = _leading_affine(ops)
        if start == len(ops):
            return _crown_final(_Crown(inputs, "ibp"), ops, weight, bias, spec)
        if start:
            lower, upper = _exact_affine_bounds(ops[:start], inputs)
    lower, upper = _ibp_ops(ops[start:], lower, upper)
    w, b = _fold(spec, weight, bias)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    return (w @ mid.unsqueeze(-1)).squeeze(-1) + b - (w.abs() @ rad.unsqueeze(-1)).squeeze(-1)


# -- CROWN ---------------------------------------------------------------------------------


def _relu_backward(lam: Tensor, lower: Tensor, upper: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lam.dtype)
    width = (upper - lower).clamp(min=1e-12)
    slope_up = torch.where(unstable, upper / width, active)
    intercept_up = torch.where(unstable, -slope_up * lower, torch.zeros_like(lower))
    if alpha is None:
        slope_lo = torch.where(unstable, (upper >= -lower).to(lam.dtype), active)
    else:
        slope_lo = torch.where(unstable, alpha, active)
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    new = pos * slope_lo.unsqueeze(1) + neg * slope_up.unsqueeze(1)
    return new, (neg * intercept_up.unsqueeze(1)).flatten(2).sum(-1)


def _maxpool_backward(op: MaxPoolOp, lam: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    index, dominated, umax = op.relaxation(lower, upper)
    n, s = lam.shape[:2]
    out_flat = lam.reshape(n, s, op.out_shape[0], -1)  # [N, S, C, L]
    pos, neg = out_flat.clamp(min=0), out_flat.clamp(max=0)
    dom = dominated.unsqueeze(1).to(lam.dtype)
    selected = pos + neg * dom
    bias = (neg * (1 - dom) * umax.unsqueeze(1)).flatten(2).sum(-1)
    rows_index = index.unsqueeze(1).expand(n, s, *index.shape[1:]).reshape(n * s, *index.shape[1:])
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        z = lam.new_zeros((n * s, *op.in_shape)).requires_grad_(True)
        (grad,) = torch.autograd.grad(
            op.select(z, rows_index), z, selected.reshape(n * s, *op.out_shape), create_graph=keep_graph
        )
    return grad.reshape(n, s, *op.in_shape), bias


class _Crown:
    """One CROWN run: intermediate bounds per nonlinear op (``id(op) -> (lower, upper)``) and,
    for alpha-CROWN, the lower slopes per ReLU."""

    def __init__(self, inputs: InputSet, intermediate: str):
        if intermediate not in ("crown", "ibp"):
            raise RobustlabError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
        self.inputs = inputs
        self.intermediate = intermediate
        self.bounds: dict[int, tuple[Tensor, Tensor]] = {}
        self.alphas: dict[int, Tensor] = {}

    def backward(self, ops: list[Op], lam: Tensor) -> tuple[Tensor, Tensor]:
        bias = lam.new_zeros(lam.shape[:2])
        b: Tensor | float
        for op in reversed(ops):
            if isinstance(op, AffineOp):
                lam, b = op.backward(lam)
            elif isinstance(op, ReLUOp):
                lam, b = _relu_backward(lam, *self.bounds[id(op)], self.alphas.get(id(op)))
            elif isinstance(op, MaxPoolOp):
                lam, b = _maxpool_backward(op, lam, *self.bounds[id(op)])
            else:
                parts = [self.backward(branch, lam) if branch else (lam, 0) for branch in op.branches]
                lam, b = _sum(p[0] for p in parts), sum(p[1] for p in parts)
            bias = bias + b
        return lam, bias

    def _node_bounds(self, prefix: Callable[[Tensor], tuple[Tensor, Tensor]], shape: tuple[int, ...]
                     ) -> tuple[Tensor, Tensor]:
        d = math.prod(shape)
        lam_in, bias = prefix(_identity_rows(self.inputs.x.shape[0], shape, self.inputs.x))
        values = self.inputs.concretize(lam_in, bias)
        return values[:, :d].reshape(-1, *shape), -values[:, d:].reshape(-1, *shape)

    def forward(self, ops: list[Op], prefix: Prefix, lower: Tensor, upper: Tensor, exact_first: bool
                ) -> tuple[Tensor, Tensor]:
        """Compute and store bounds at every ReLU/max-pool input; returns interval bounds at the
        output of ``ops``. ``prefix(lam) -> (lam at the network input, bias)`` maps linear
        functions of ``ops``' input back to the network input."""
        for i, op in enumerate(ops):
            if isinstance(op, AffineOp):
                lower, upper = op.ibp(lower, upper)
                continue

            def here(lam: Tensor, i: int = i, prefix: Prefix = prefix) -> tuple[Tensor, Tensor]:
                lam, b1 = self.backward(ops[:i], lam)
                lam, b2 = prefix(lam)
                return lam, b1 + b2

            if isinstance(op, ResidualOp):
                parts = [self.forward(b, here, lower, upper, exact_first) if b else (lower, upper) for b in op.branches]
                lower, upper = _sum(p[0] for p in parts), _sum(p[1] for p in parts)
                exact_first = False
                continue
            if self.intermediate == "crown" or exact_first:
                crown_lower, crown_upper = self._node_bounds(here, op.in_shape)
                lower, upper = torch.maximum(lower, crown_lower), torch.minimum(upper, crown_upper)
            exact_first = False
            self.bounds[id(op)] = (lower, upper)
            lower, upper = op.ibp(lower, upper)
        return lower, upper

    def run(self, ops: list[Op]) -> tuple[Tensor, Tensor]:
        lower, upper = self.inputs.box()
        return self.forward(ops, lambda lam: (lam, 0), lower, upper, self.inputs.norm != "Linf")


def _crown_final(run: _Crown, ops: list[Op], weight: Tensor, bias: Tensor | None, spec: Tensor) -> Tensor:
    lam, b0 = _fold(spec, weight, bias)
    lam_in, b1 = run.backward(ops, lam)
    return run.inputs.concretize(lam_in, b0 + b1)


def _init_alphas(run: _Crown, ops: list[Op]) -> list[Tensor]:
    params = []
    for op in ops:
        if isinstance(op, ResidualOp):
            for branch in op.branches:
                params += _init_alphas(run, branch)
        elif isinstance(op, ReLUOp):
            lower, upper = run.bounds[id(op)]
            alpha = (upper.detach() >= -lower.detach()).to(lower.dtype).requires_grad_(True)
            run.alphas[id(op)] = alpha
            params.append(alpha)
    return params


def crown_bounds(
    ops: list[Op],
    weight: Tensor,
    bias: Tensor | None,
    spec: Tensor,
    inputs: InputSet,
    *,
    intermediate: str = "crown",
    alpha_steps: int = 0,
    alpha_lr: float = 0.1,
) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """CROWN lower bound ``[N, S]`` on ``spec @ (W h + b)`` and the intermediate bounds.

    ``intermediate="crown"``: every ReLU/max-pool input bounded by its own CROWN pass (and
    intersected with IBP); ``"ibp"``: intervals (CROWN-IBP, Zhang et al. 2020). ``alpha_steps
    > 0``: alpha-CROWN, the lower ReLU slopes of the final pass optimised by Adam (``alpha_lr``)
    and projected to ``[0, 1]``; every iterate is a valid bound, so the best per entry is kept.
    The intermediate bounds stay those of CROWN (or IBP); only the final bound is optimised.
    """
    run = _Crown(inputs, intermediate)
    run.run(ops)
    bound = _crown_final(run, ops, weight, bias, spec)
    if alpha_steps <= 0:
        return bound, run.bounds
    with torch.enable_grad():
        params = _init_alphas(run, ops)
        if not params:
            return bound, run.bounds
        best = bound.detach()
        optimizer = torch.optim.Adam(params, lr=alpha_lr)
        for _ in range(alpha_steps):
            value = _crown_final(run, ops, weight.detach(), None if bias is None else bias.detach(), spec)
            best = torch.maximum(best, value.detach())
            optimizer.zero_grad()
            (-value.sum()).backward()
            optimizer.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(0, 1)
        with torch.no_grad():
            best = torch.maximum(best, _crown_final(run, ops, weight, bias, spec))
    return best, run.bounds
