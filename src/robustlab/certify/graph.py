"""The network as bound propagation sees it: a list of affine blocks, ReLUs, max-pools and
sums of branches.

The ops:

- :class:`AffineOp`: a run of consecutive affine maps (``Linear``, ``Conv2d`` with zero
  padding, ``BatchNorm`` with running statistics (eval mode), ``Normalize``, average pooling,
  flatten/view/reshape/permute/slicing/padding, adding, subtracting, multiplying or dividing by a
  constant, and their functional forms);
- :class:`ReLUOp` and :class:`MaxPoolOp` (``ceil_mode=False``);
- :class:`ResidualOp`: ``sum_b branch_b(x)`` with each branch a list of ops (an empty branch is
  the identity); residual additions, subtractions and concatenations (each branch embedded in
  its slice of the output) are such sums.

:func:`parse_model` (in :mod:`robustlab.certify.trace`) builds them by tracing the model's
forward with ``torch.fx``, so any custom ``forward`` made of these operations is certified as
it computes; the first other operation raises a :class:`~robustlab.errors.RobustlabError`
naming it. :func:`check_graph` checks the ops against the model by a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from robustlab.errors import RobustlabError
from robustlab.models.normalize import Normalize

__all__ = ["SUPPORTED", "AffineFunction", "AffineOp", "MaxPoolOp", "Op", "ReLUOp", "ResidualOp", "check_graph", "run_ops"]

AFFINE_TYPES = (
    nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
    Normalize, nn.Identity, nn.Dropout,
)
SUPPORTED = (
    "any forward (traced with torch.fx) made of: Linear, Conv2d (zero padding), BatchNorm1d/2d (eval mode), "
    "Normalize, AvgPool2d, AdaptiveAvgPool2d, Flatten, Identity, Dropout (eval), ReLU, MaxPool2d "
    "(ceil_mode=False), their functional forms, flatten/view/reshape/permute/transpose/squeeze/unsqueeze/"
    "slicing/zero padding, mean/sum over non-batch dims, + - * / by constants, residual + and -, torch.cat"
)


class AffineFunction(Protocol):
    """A traced function of :mod:`robustlab.certify.trace` in an :class:`AffineOp`: an affine
    map of the input alone, with the constants it was traced with."""

    kind: str
    name: str
    constants: Any

    def affine(self, x: Tensor, mode: str) -> Tensor: ...


def _bn_scale_shift(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise RobustlabError(f"{type(bn).__name__} without running statistics cannot be certified (eval mode needs them)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _channel_view(v: Tensor, x: Tensor, channel_dim_from_end: int | None) -> Tensor:
    """Reshape per-channel ``v`` to broadcast against ``x``: channel axis 1 for BatchNorm,
    ``-3`` for Normalize."""
    if channel_dim_from_end is None:  # BatchNorm: channels at dim 1
        return v.reshape(1, -1, *([1] * (x.dim() - 2)))
    return v.reshape(-1, 1, 1)


def _apply(module: nn.Module | AffineFunction, x: Tensor, mode: str) -> Tensor:
    """Apply one affine layer: ``mode`` is "forward" (W x + b), "linear" (W x) or "abs" (|W| x)."""
    if isinstance(module, nn.Linear):
        weight = module.weight.abs() if mode == "abs" else module.weight
        return F.linear(x, weight, module.bias if mode == "forward" else None)
    if isinstance(module, nn.Conv2d):
        weight = module.weight.abs() if mode == "abs" else module.weight
        bias = module.bias if mode == "forward" else None
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _bn_scale_shift(module)
        scale = scale.to(x.dtype)
        out = x * _channel_view(scale.abs() if mode == "abs" else scale, x, None)
        return out + _channel_view(shift.to(x.dtype), x, None) if mode == "forward" else out
    if isinstance(module, Normalize):
        channels = module.mean.shape[0]
        if channels != 1 and (x.dim() < 3 or x.shape[-3] != channels):
            raise RobustlabError(f"Normalize has {channels} channel statistics but the input has shape {tuple(x.shape)}")
        scale = (1.0 / module.std).to(x.dtype)
        out = x * _channel_view(scale, x, -3)
        if mode == "forward":
            out = out - _channel_view((module.mean / module.std).to(x.dtype), x, -3)
        return out
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return x
    if not isinstance(module, nn.Module):  # a traced function (robustlab.certify.trace)
        return module.affine(x, mode)
    # Flatten and average pooling have non-negative weights and no bias.
    pooled: Tensor = module(x)
    return pooled


class _Shaped:
    """``in_shape`` / ``out_shape`` of an op (without the batch axis), recorded by :func:`run_ops`."""

    _in_shape: tuple[int, ...] | None = None
    _out_shape: tuple[int, ...] | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        if self._in_shape is None:
            raise RobustlabError(f"{self!r} has no recorded shapes: run check_graph (or run_ops) on the ops first")
        return self._in_shape

    @in_shape.setter
    def in_shape(self, shape: tuple[int, ...]) -> None:
        self._in_shape = shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self._out_shape is None:
            raise RobustlabError(f"{self!r} has no recorded shapes: run check_graph (or run_ops) on the ops first")
        return self._out_shape

    @out_shape.setter
    def out_shape(self, shape: tuple[int, ...]) -> None:
        self._out_shape = shape


class AffineOp(_Shaped):
    """A run of affine layers ``f(x) = A x + b``; shapes recorded by :func:`check_graph`."""

    def __init__(self, modules: Sequence[nn.Module | AffineFunction], names: Sequence[str]):
        self.modules = list(modules)
        self.names = list(names)

    def __repr__(self) -> str:
        return f"Affine({', '.join(self.names)})"

    def forward(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = _apply(m, x, "forward")
        return x

    def linear(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = _apply(m, x, "linear")
        return x

    def abs_linear(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = _apply(m, x, "abs")
        return x

    def offset(self, like: Tensor) -> Tensor:
        """``b = f(0)``, shape ``[1, *out_shape]``."""
        return self.forward(like.new_zeros((1, *self.in_shape)))

    def ibp(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        mid, rad = self.forward(mid), self.abs_linear(rad)
        return mid - rad, mid + rad

    def backward(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """``lam [N, S, *out] -> (lam A [N, S, *in], lam . b [N, S])``; differentiable when grad is
        enabled (certified training, alpha-CROWN)."""
        n, s = lam.shape[:2]
        bias = (lam * self.offset(lam).unsqueeze(1)).flatten(2).sum(-1)
        if len(self.modules) == 1 and isinstance(self.modules[0], nn.Linear):
            return lam @ self.modules[0].weight.to(lam.dtype), bias
        flat_lam = lam.reshape(n * s, *self.out_shape)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = lam.new_zeros((n * s, *self.in_shape)).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.linear(z), z, flat_lam, create_graph=keep_graph)
        return grad.reshape(n, s, *self.in_shape), bias


class ReLUOp(_Shaped):
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"ReLU({self.name})"

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def ibp(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return lower.clamp(min=0), upper.clamp(min=0)


class MaxPoolOp(_Shaped):
    """``nn.MaxPool2d``. IBP is exact per element (max is monotone). CROWN uses a simple sound
    relaxation: below by ``x_{i*}`` (``i*`` the window element with the largest lower bound),
    above by ``x_{i*}`` where ``i*`` dominates the window (``l_{i*} >= u_j`` for all other
    ``j``), else by the constant ``max_i u_i``."""

    def __init__(self, module: nn.MaxPool2d, name: str):
        if module.ceil_mode:
            raise RobustlabError(f"MaxPool2d {name!r} with ceil_mode=True is not supported")
        self.module = module
        self.name = name
        pair = nn.modules.utils._pair
        self.kernel, self.stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
        self.padding, self.dilation = pair(module.padding), pair(module.dilation)

    def __repr__(self) -> str:
        return f"MaxPool({self.name})"

    def forward(self, x: Tensor) -> Tensor:
        pooled: Tensor = self.module(x)
        return pooled

    def ibp(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return self.module(lower), self.module(upper)

    def windows(self, x: Tensor, pad_value: float) -> Tensor:
        """``[N, C, H, W] -> [N, C, k*k, L]`` (the pooling windows)."""
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=pad_value)
        n, c = x.shape[:2]
        cols = F.unfold(x.reshape(n * c, 1, *x.shape[2:]), self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(n, c, cols.shape[1], cols.shape[2])

    def relaxation(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(index [N, C, L], dominated bool [N, C, L], umax [N, C, L])``."""
        lw, uw = self.windows(lower, -math.inf), self.windows(upper, -math.inf)
        lmax, index = lw.max(dim=2)
        others = uw.scatter(2, index.unsqueeze(2), -math.inf).amax(dim=2)
        return index, lmax >= others, uw.amax(dim=2)

    def select(self, x: Tensor, index: Tensor) -> Tensor:
        """The linear map ``x -> x_{i*}`` per window, ``[N', C, H, W] -> [N', *out_shape]``;
        ``index`` ``[N, C, L]`` broadcasts over ``N' = N * S`` rows when given repeated."""
        cols = self.windows(x, 0.0)
        return cols.gather(2, index.unsqueeze(2)).squeeze(2).reshape(x.shape[0], *self.out_shape)


class ResidualOp:
    """``sum_b branch_b(x)``; an empty branch is the identity shortcut."""

    def __init__(self, branches: Sequence[list[Op]], name: str):
        self.branches = [list(b) for b in branches]
        self.name = name

    def __repr__(self) -> str:
        return f"Residual({self.name}: {self.branches})"


Op = AffineOp | ReLUOp | MaxPoolOp | ResidualOp


def run_ops(ops: list[Op], x: Tensor) -> Tensor:
    """Forward pass through the ops, recording each op's input/output shapes (without batch)."""
    for op in ops:
        if isinstance(op, ResidualOp):
            x = cast(Tensor, sum((run_ops(branch, x) if branch else x) for branch in op.branches))
            continue
        op.in_shape = tuple(x.shape[1:])
        x = op.forward(x)
        op.out_shape = tuple(x.shape[1:])
    return x


def check_graph(model: nn.Module, ops: list[Op], x: Tensor) -> Tensor:
    """Run ``ops`` on ``x`` (recording shapes) and check that they reproduce ``model(x)``;
    returns the logits ``[N, K]``."""
    with torch.no_grad():
        reference: Tensor = model(x)
        mine = run_ops(ops, x)
    if reference.shape != mine.shape or not torch.allclose(reference, mine, rtol=1e-4, atol=1e-4 * (1 + float(reference.abs().max()))):
        raise RobustlabError(
            f"the traced operations of {type(model).__name__} do not reproduce its forward pass (max difference "
            f"{float((reference - mine).abs().max()) if reference.shape == mine.shape else 'shape mismatch'}): "
            "its result depends on more than the traced graph (e.g. on the batch size, or on state changed "
            "while running). Supported: " + SUPPORTED
        )
    if reference.dim() != 2:
        raise RobustlabError(f"the model must return logits [N, K], got shape {tuple(reference.shape)}")
    return reference
