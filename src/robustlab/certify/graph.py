"""The network as bound propagation sees it: a list of affine blocks, ReLUs, max-pools and
residual sums.

:func:`parse_model` walks a model's children and turns it into a list of *ops*:

- :class:`AffineOp`: a run of consecutive affine layers (``Linear``, ``Conv2d`` with zero
  padding, ``Flatten``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``BatchNorm1d/2d`` with running
  statistics (eval mode), ``Normalize``, ``Identity``, ``Dropout`` (identity in eval mode));
- :class:`ReLUOp` (``nn.ReLU``) and :class:`MaxPoolOp` (``nn.MaxPool2d``, ``ceil_mode=False``);
- :class:`ResidualOp`: ``sum_b branch_b(x)`` with each branch a list of ops (an empty branch is
  the identity).

Residual blocks are recognised in two ways: robustlab's :class:`~robustlab.models.PreActBlock`
and :class:`~robustlab.models.WideBasicBlock` (and the PreAct-ResNet-18 / Wide-ResNet wrappers)
are converted by hand, and any module may opt in with the *residual protocol*: a method
``certify_ops() -> list[nn.Module | tuple[list[nn.Module], ...]]`` returning the layers in order,
where a tuple of module lists denotes a residual sum of branches. Everything else raises a
:class:`~robustlab.errors.RobustlabError` naming the layer and the supported set.

The parsed graph is checked against the model by a forward pass (:func:`check_graph`), so a
custom ``forward`` that the children do not describe is caught instead of certified wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models.normalize import Normalize
from robustlab.models.resnet import (
    PreActBlock,
    PreActResNet18,
    WideBasicBlock,
    WideResNet,
    _WideStage,
)

__all__ = ["SUPPORTED", "AffineOp", "MaxPoolOp", "ReLUOp", "ResidualOp", "check_graph", "parse_model", "run_ops"]

_AFFINE_TYPES = (
    nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
    Normalize, nn.Identity, nn.Dropout,
)
SUPPORTED = (
    "Linear, Conv2d (zero padding), Flatten, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d/2d (eval mode), "
    "Normalize, Identity, Dropout (eval), ReLU, MaxPool2d (ceil_mode=False), nn.Sequential, "
    "PreActBlock/WideBasicBlock/PreActResNet18/WideResNet, and modules with a certify_ops() method"
)


def _unsupported(module: nn.Module, name: str) -> RobustlabError:
    return RobustlabError(
        f"layer {name or '<model>'!r} of type {type(module).__name__} is not supported by bound propagation; "
        f"supported: {SUPPORTED}"
    )


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
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


def _apply(module: nn.Module, x: Tensor, mode: str) -> Tensor:
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
    # Flatten and average pooling have non-negative weights and no bias.
    return module(x)


class AffineOp:
    """A run of affine layers ``f(x) = A x + b``; shapes recorded by :func:`check_graph`."""

    def __init__(self, modules: Sequence[nn.Module], names: Sequence[str]):
        self.modules = list(modules)
        self.names = list(names)
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None

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


class ReLUOp:
    def __init__(self, name: str):
        self.name = name
        self.in_shape: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return f"ReLU({self.name})"

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def ibp(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return lower.clamp(min=0), upper.clamp(min=0)


class MaxPoolOp:
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
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return f"MaxPool({self.name})"

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

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

    def __init__(self, branches: Sequence[list], name: str):
        self.branches = [list(b) for b in branches]
        self.name = name

    def __repr__(self) -> str:
        return f"Residual({self.name}: {self.branches})"


Op = AffineOp | ReLUOp | MaxPoolOp | ResidualOp


def _block_items(module: nn.Module) -> list | None:
    """Layer list for the known residual architectures and the ``certify_ops`` protocol."""
    if hasattr(module, "certify_ops"):
        return list(module.certify_ops())
    if isinstance(module, PreActBlock):
        main = [module.conv1, module.bn2, nn.ReLU(), module.conv2]
        if module.shortcut is None:
            return [([module.bn1, nn.ReLU(), *main], [])]
        return [module.bn1, nn.ReLU(), (main, [module.shortcut])]
    if isinstance(module, WideBasicBlock):
        main = [module.conv1, module.bn2, module.relu2, module.conv2]  # dropout: identity in eval mode
        if module.convShortcut is None:
            return [([module.bn1, module.relu1, *main], [])]
        return [module.bn1, module.relu1, (main, [module.convShortcut])]
    if isinstance(module, PreActResNet18):
        return [module.conv1, module.layer1, module.layer2, module.layer3, module.layer4, module.bn, nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), module.linear]
    if isinstance(module, WideResNet):
        return [module.conv1, module.block1, module.block2, module.block3, module.bn1, module.relu,
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), module.fc]
    if isinstance(module, _WideStage):
        return [module.layer]
    return None


def _parse_items(items: list, prefix: str, ops: list) -> None:
    for index, item in enumerate(items):
        if isinstance(item, tuple):
            branches = []
            for b, branch in enumerate(item):
                sub: list = []
                _parse_items(list(branch), f"{prefix}residual{index}.{b}.", sub)
                branches.append(sub)
            ops.append(ResidualOp(branches, f"{prefix}residual{index}"))
        else:
            _parse_module(item, f"{prefix}{index}", ops)


def _parse_module(module: nn.Module, name: str, ops: list) -> None:
    if isinstance(module, _AFFINE_TYPES):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise RobustlabError(f"Conv2d {name!r} uses padding_mode={module.padding_mode!r}; only 'zeros' is supported")
        if ops and isinstance(ops[-1], AffineOp):
            ops[-1].modules.append(module)
            ops[-1].names.append(name)
        else:
            ops.append(AffineOp([module], [name]))
    elif isinstance(module, nn.ReLU):
        ops.append(ReLUOp(name))
    elif isinstance(module, nn.MaxPool2d):
        ops.append(MaxPoolOp(module, name))
    elif isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            _parse_module(child, f"{name}.{child_name}" if name else child_name, ops)
    else:
        items = _block_items(module)
        if items is None:
            raise _unsupported(module, name)
        _parse_items(items, f"{name}." if name else "", ops)


def parse_model(model: nn.Module) -> list:
    """The list of ops of ``model`` (see the module docstring); raises on unsupported layers."""
    ops: list = []
    _parse_module(model, "", ops)
    return ops


def run_ops(ops: list, x: Tensor) -> Tensor:
    """Forward pass through the ops, recording each op's input/output shapes (without batch)."""
    for op in ops:
        if isinstance(op, ResidualOp):
            x = sum((run_ops(branch, x) if branch else x) for branch in op.branches)
            continue
        op.in_shape = tuple(x.shape[1:])
        x = op.forward(x)
        op.out_shape = tuple(x.shape[1:])
    return x


def check_graph(model: nn.Module, ops: list, x: Tensor) -> Tensor:
    """Run ``ops`` on ``x`` (recording shapes) and check that they reproduce ``model(x)``;
    returns the logits ``[N, K]``."""
    with torch.no_grad():
        reference = model(x)
        mine = run_ops(ops, x)
    if reference.shape != mine.shape or not torch.allclose(reference, mine, rtol=1e-4, atol=1e-4 * (1 + float(reference.abs().max()))):
        raise RobustlabError(
            f"the layers of {type(model).__name__} do not reproduce its forward pass (max difference "
            f"{float((reference - mine).abs().max()) if reference.shape == mine.shape else 'shape mismatch'}); "
            "its forward must be the composition of its children. Supported: " + SUPPORTED
        )
    if reference.dim() != 2:
        raise RobustlabError(f"the model must return logits [N, K], got shape {tuple(reference.shape)}")
    return reference
