"""The model's computation, traced with ``torch.fx``, as the ops bound propagation works on.

:func:`parse_model` traces ``model.forward`` (``Normalize`` and the preprocessing defenses are
kept as single calls), runs the traced graph once on the inputs to learn every intermediate
shape, and classifies each operation that depends on the input (see
:data:`~robustlab.certify.graph.SUPPORTED`). The graph is a DAG; the ops are a list with nested
sums of branches (:class:`~robustlab.certify.graph.ResidualOp`). The translation follows the
dominator tree: a merge (``a + b``, ``a - b``, ``torch.cat``) becomes the ops up to its
immediate dominator ``d`` (the last value every path to it passes through) followed by one sum
whose branches compute each operand from ``d``. ResNets and Inception-style blocks map one to
one; a graph that is not series-parallel gets the shared part repeated in each branch, which is
still exact arithmetic and sound bounds, only looser.

Constants (parameters, buffers and anything computed from them alone, such as
``self.mean.view(1, 3, 1, 1)``) are recomputed from the model at every use, so gradients reach
the parameters in certified training.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from robustlab.certify.graph import AFFINE_TYPES, SUPPORTED, AffineOp, MaxPoolOp, Op, ReLUOp, ResidualOp
from robustlab.errors import RobustlabError
from robustlab.models.normalize import Normalize

__all__ = ["parse_model"]

_PROBE_BATCH = 2

_RELU = {F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__", "__iadd__"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__", "__isub__"}
_RSUB = {torch.rsub, "__rsub__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide",
        "__truediv__", "__itruediv__"}
_NEG = {operator.neg, torch.neg, "neg", "__neg__"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
# Linear maps with non-negative coefficients (selections, copies, averages, sums): |A| = A, no bias.
_POSITIVE = {
    torch.flatten, "flatten", "view", "reshape", torch.reshape, torch.permute, "permute", torch.transpose,
    "transpose", torch.unsqueeze, "unsqueeze", torch.squeeze, "squeeze", "contiguous", "clone", operator.getitem,
    torch.narrow, "narrow", F.pad, F.avg_pool2d, F.adaptive_avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool1d,
    torch.mean, "mean", torch.sum, "sum", torch.nn.functional.interpolate, "expand", "repeat",
}
_RESHAPE = {"view", "reshape", torch.reshape}


class _Tracer(fx.Tracer):
    """torch.fx's tracer keeping Normalize (its channel check branches on shapes) and the
    preprocessing defenses (reported as unsupported) as single calls."""

    def __init__(self, locate: bool) -> None:
        super().__init__()
        self.record_stack_traces = locate  # costly (a traceback per node): only to locate an error

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from robustlab.models.preprocessing import InputTransformDefense

        return isinstance(m, (Normalize, InputTransformDefense)) or super().is_leaf_module(m, qualname)


class _Function:
    """An affine function of one input-dependent tensor, traced from the forward.

    ``kind``: "positive" (a linear map with non-negative coefficients: ``fn`` itself in every
    mode), "shift" (``x + c``), "scale" (``x * c``), "linear" / "conv" (``F.linear`` /
    ``F.conv2d`` with constant weights), "batch_norm" (eval mode). ``constants()`` returns the
    constants, recomputed from the model."""

    def __init__(self, kind: str, name: str, fn: Callable[..., Tensor] | None = None,
                 constants: Callable[[], Any] | None = None):
        self.kind, self.name, self.fn, self.constants = kind, name, fn, constants

    def __repr__(self) -> str:
        return f"{self.kind}({self.name})"

    def _constants(self) -> Any:
        if self.constants is None:
            raise RobustlabError(f"the traced {self.kind} {self.name!r} has no constants")
        return self.constants()

    def affine(self, x: Tensor, mode: str) -> Tensor:
        if self.kind == "positive":
            if self.fn is None:
                raise RobustlabError(f"the traced function {self.name!r} has no map")
            return self.fn(x)
        if self.kind == "shift":
            return x + _cast(self._constants(), x) if mode == "forward" else x
        if self.kind == "scale":
            c = _cast(self._constants(), x)
            return x * (c.abs() if isinstance(c, Tensor) else abs(c)) if mode == "abs" else x * c
        if self.kind == "batch_norm":
            mean, var, weight, bias, eps = self._constants()
            scale = torch.rsqrt(var + eps) * (1 if weight is None else weight)
            shape = (1, -1, *([1] * (x.dim() - 2)))
            out = x * (scale.abs() if mode == "abs" else scale).to(x.dtype).reshape(shape)
            if mode != "forward":
                return out
            shift = -mean * scale + (0 if bias is None else bias)
            shifted: Tensor = out + shift.to(x.dtype).reshape(shape)
            return shifted
        weight, bias, extra = self._constants()
        weight = weight.to(x.dtype)
        weight = weight.abs() if mode == "abs" else weight
        bias = bias.to(x.dtype) if bias is not None and mode == "forward" else None
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, **extra)


def _cast(value: Any, like: Tensor) -> Any:
    return value.to(dtype=like.dtype, device=like.device) if isinstance(value, Tensor) else value


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        module = model.get_submodule(cast(str, node.target))
        what = f"layer {node.target!r} ({type(module).__name__})"
    elif node.op == "call_method":
        what = f"tensor method .{node.target}() ({node.name})"
    else:
        what = f"{getattr(node.target, '__module__', '') or ''}.{getattr(node.target, '__name__', node.target)} ({node.name})"
        what = what.lstrip(".").replace("_operator.", "operator.")
    trace = (node.stack_trace or "").strip().splitlines()
    where = next((line.strip() for line in reversed(trace)
                  if line.strip().startswith("File ") and f"{os.sep}torch{os.sep}" not in line), None)
    return what + (f" ({where})" if where else "")


class _Unsupported(RobustlabError):
    pass


def _unsupported(node: fx.Node, model: nn.Module, why: str = "") -> RobustlabError:
    return _Unsupported(
        f"bound propagation does not support {_describe(node, model)} in the forward of {type(model).__name__}"
        f"{': ' + why if why else ''}; supported: {SUPPORTED}"
    )


class _Graph:
    """The traced graph with the probe run's values, and the translation into ops."""

    def __init__(self, model: nn.Module, x: Tensor, *, locate: bool = False):
        self.model = model
        try:
            graph = _Tracer(locate).trace(model)
        except Exception as exc:  # noqa: BLE001  fx.proxy.TraceError, TypeError from data-dependent control flow, ...
            raise RobustlabError(
                f"torch.fx cannot trace the forward of {type(model).__name__} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); bound propagation needs a forward without "
                "Python control flow on tensor values"
            ) from None
        self.module = fx.GraphModule(model, graph)
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RobustlabError(f"bound propagation needs a forward with one input, {type(model).__name__}'s takes "
                                 f"{len(placeholders)}")
        self.input = placeholders[0]
        probe = x[:1].expand(_PROBE_BATCH, *x.shape[1:]).clone() if x.shape[0] else x.new_zeros((_PROBE_BATCH, *x.shape[1:]))
        self.values: dict[fx.Node, Any] = {}
        values = self.values

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                values[n] = out
                return out

        with torch.no_grad():
            Recorder(self.module).run(probe)
        self.dynamic: set[fx.Node] = set()
        for n in self.nodes:
            if n is self.input:
                self.dynamic.add(n)
            elif n.op != "output" and any(a in self.dynamic for a in n.all_input_nodes):
                value = values[n]
                if isinstance(value, Tensor):
                    self.dynamic.add(n)
                elif isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value):
                    raise _unsupported(n, model, "it returns several tensors")

    # -- constants ------------------------------------------------------------------------
    def constant(self, arg: Any) -> Callable[[], Any]:
        """A thunk giving ``arg``'s value: recomputed from the model for parameters and what is
        computed from them alone; the probe's value for shapes and sizes."""
        if isinstance(arg, fx.Node):
            if arg in self.dynamic:
                raise AssertionError("not a constant")
            if arg.op == "get_attr":
                return lambda: _fetch(self.model, cast(str, arg.target))
            if not isinstance(self.values[arg], Tensor) or _depends_on(arg, self.input):
                value = self.values[arg]
                return lambda: value
            args = [self.constant(a) for a in arg.args]
            kwargs = {k: self.constant(v) for k, v in arg.kwargs.items()}

            def compute() -> Any:
                a = [f() for f in args]
                k = {key: f() for key, f in kwargs.items()}
                if arg.op == "call_method":
                    return getattr(a[0], cast(str, arg.target))(*a[1:], **k)
                if arg.op == "call_module":
                    return self.model.get_submodule(cast(str, arg.target))(*a, **k)
                return cast(Callable[..., Any], arg.target)(*a, **k)

            return compute
        if isinstance(arg, (list, tuple)):
            parts = [self.constant(a) for a in arg]
            return lambda: type(arg)(f() for f in parts)
        if isinstance(arg, dict):
            parts_d = {k: self.constant(v) for k, v in arg.items()}
            return lambda: {k: f() for k, f in parts_d.items()}
        return lambda: arg

    # -- classification ---------------------------------------------------------------------
    def spec(self, node: fx.Node) -> tuple[Any, ...]:
        """``("unary", input, make_ops)`` or ``("merge", inputs, branch_posts, make_after)``."""
        model = self.model
        value = self.values[node]
        if value.dim() == 0 or value.shape[0] != _PROBE_BATCH:
            raise _unsupported(node, model, "it mixes the samples of the batch (the first dimension)")
        dynamic_args = [a for a in node.all_input_nodes if a in self.dynamic]
        target = node.target
        name = node.name
        if node.op == "call_module":
            module_name = cast(str, target)
            module = self.model.get_submodule(module_name)
            (source,) = dynamic_args
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                raise _unsupported(node, model, f"padding_mode={module.padding_mode!r} (only 'zeros')")
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and (module.running_mean is None or module.running_var is None):
                raise _unsupported(node, model, "batch norm without running statistics (eval mode needs them)")
            if isinstance(module, AFFINE_TYPES):
                return ("unary", source, lambda: [AffineOp([module], [module_name])])
            if isinstance(module, nn.ReLU):
                return ("unary", source, lambda: [ReLUOp(module_name)])
            if isinstance(module, nn.MaxPool2d):
                if module.ceil_mode:
                    raise _unsupported(node, model, "ceil_mode=True")
                return ("unary", source, lambda: [MaxPoolOp(module, module_name)])
            raise _unsupported(node, model)
        if node.op not in ("call_function", "call_method"):
            raise _unsupported(node, model)
        args, kwargs = node.args, node.kwargs
        both = len(args) >= 2 and all(isinstance(a, fx.Node) and a in self.dynamic for a in args[:2])
        if target in _ADD | _SUB | _RSUB and both:
            if kwargs.get("alpha", 1) != 1 or len(args) > 2:
                raise _unsupported(node, model, "alpha is not supported")
            a, b = args[0], args[1]
            if target in _RSUB:
                a, b = b, a
            negate = target in _SUB | _RSUB
            post = [[], [self._op("scale", name, constants=lambda: -1.0)] if negate else []]
            return ("merge", [a, b], post, list)
        if target in _CAT:
            tensors = cast("Sequence[fx.Node]", args[0] if args else kwargs["tensors"])
            dim = cast(int, args[1] if len(args) > 1 else kwargs.get("dim", 0))
            if not all(isinstance(t, fx.Node) and t in self.dynamic for t in tensors):
                raise _unsupported(node, model, "it concatenates constants with input-dependent tensors")
            ndim = value.dim()
            dim = dim % ndim
            if dim == 0:
                raise _unsupported(node, model, "it concatenates along the batch dimension")
            sizes = [self.values[t].shape[dim] for t in tensors]
            posts = []
            for i in range(len(sizes)):
                before, after = sum(sizes[:i]), sum(sizes[i + 1:])
                posts.append([self._op("positive", name, fn=_embedder(dim, before, after))])
            return ("merge", list(tensors), posts, list)
        if len(dynamic_args) != 1:
            raise _unsupported(node, model, "it combines several input-dependent tensors")
        (source,) = dynamic_args
        first = args[0] if args else None
        if target in _RELU:
            return ("unary", source, lambda: [ReLUOp(name)])
        if target in (F.max_pool2d, "max_pool2d"):
            kernel = self.constant(args[1] if len(args) > 1 else kwargs["kernel_size"])()
            options = dict(zip(("stride", "padding", "dilation", "ceil_mode", "return_indices"),
                               [self.constant(a)() for a in args[2:]]))
            options.update({k: self.constant(v)() for k, v in kwargs.items() if k != "kernel_size"})
            if options.get("ceil_mode") or options.get("return_indices"):
                raise _unsupported(node, model, "ceil_mode and return_indices are not supported")
            pool = nn.MaxPool2d(kernel, **options)
            return ("unary", source, lambda: [MaxPoolOp(pool, name)])
        if first is not source:
            if target in _ADD | _MUL and len(args) == 2 and args[1] is source:
                first, rest = source, args[0]
                kind = "shift" if target in _ADD else "scale"
                return ("unary", source, lambda: [self._op(kind, name, constants=self.constant(rest))])
            if target in _RSUB | _SUB and len(args) == 2 and args[1] is source:  # c - x = -x + c
                c = self.constant(args[0])
                if target in _RSUB:  # torch.rsub(x, c) = c - x with x first
                    raise _unsupported(node, model)
                return ("unary", source, lambda: [self._op("scale", name, constants=lambda: -1.0),
                                                   self._op("shift", name, constants=c)])
            raise _unsupported(node, model, "the input-dependent tensor must be its first argument")
        rest = args[1:]
        if target in _ADD | _SUB | _RSUB | _MUL | _DIV:
            if len(rest) != 1 or set(kwargs) - {"alpha"} or kwargs.get("alpha", 1) != 1:
                raise _unsupported(node, model)
            c = self.constant(rest[0])
            if target in _ADD:
                return ("unary", source, lambda: [self._op("shift", name, constants=c)])
            if target in _SUB:
                return ("unary", source, lambda: [self._op("shift", name, constants=lambda: -c())])
            if target in _RSUB:  # x.__rsub__(c) = c - x
                return ("unary", source, lambda: [self._op("scale", name, constants=lambda: -1.0),
                                                   self._op("shift", name, constants=c)])
            if target in _MUL:
                return ("unary", source, lambda: [self._op("scale", name, constants=c)])
            return ("unary", source, lambda: [self._op("scale", name, constants=lambda: 1.0 / c())])
        if target in _NEG:
            return ("unary", source, lambda: [self._op("scale", name, constants=lambda: -1.0)])
        if target in (F.dropout, "dropout"):
            training = self.constant(kwargs.get("training", args[2] if len(args) > 2 else True))()
            if training:
                raise _unsupported(node, model, "dropout in training mode")
            return ("unary", source, list)
        if target in (F.linear, F.conv2d):
            weight = self.constant(args[1] if len(args) > 1 else kwargs["weight"])
            bias = self.constant(args[2] if len(args) > 2 else kwargs.get("bias"))
            extra_names = ("stride", "padding", "dilation", "groups")
            extra = {**dict(zip(extra_names, [self.constant(a)() for a in args[3:]])),
                     **{k: self.constant(v)() for k, v in kwargs.items() if k in extra_names}}
            kind = "linear" if target is F.linear else "conv"
            return ("unary", source, lambda: [self._op(kind, name, constants=lambda: (weight(), bias(), extra))])
        if target is F.batch_norm:
            names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
            given = {**dict(zip(names, args[1:])), **kwargs}
            if self.constant(given.get("training", False))():
                raise _unsupported(node, model, "batch norm in training mode")
            parts = [self.constant(given.get(k)) for k in ("running_mean", "running_var", "weight", "bias")]
            eps = self.constant(given.get("eps", 1e-5))
            return ("unary", source, lambda: [self._op("batch_norm", name,
                                                       constants=lambda: (*[p() for p in parts], eps()))])
        if target in _POSITIVE:
            if target in ("sum", torch.sum, "mean", torch.mean) and not (len(args) > 1 or "dim" in kwargs):
                raise _unsupported(node, model, "it reduces over the batch dimension")
            if target is F.pad and (self.constant(args[3] if len(args) > 3 else kwargs.get("value", None))() or 0) != 0:
                raise _unsupported(node, model, "padding with a non-zero value")
            fn: Callable[[Tensor], Tensor]
            if target in _RESHAPE:
                shape = tuple(value.shape[1:])
                fn = lambda t: t.reshape(t.shape[0], *shape)  # noqa: E731
            else:
                const_args = [self.constant(a) for a in rest]
                const_kwargs = {k: self.constant(v) for k, v in kwargs.items()}
                if isinstance(target, str):
                    fn = lambda t: getattr(t, target)(*[f() for f in const_args],  # noqa: E731
                                                      **{k: f() for k, f in const_kwargs.items()})
                else:
                    fn = lambda t: target(t, *[f() for f in const_args],  # noqa: E731
                                          **{k: f() for k, f in const_kwargs.items()})
            return ("unary", source, lambda: [self._op("positive", name, fn=fn)])
        raise _unsupported(node, model)

    @staticmethod
    def _op(kind: str, name: str, **kwargs: Any) -> AffineOp:
        return AffineOp([_Function(kind, name, **kwargs)], [name])

    # -- translation --------------------------------------------------------------------------
    def ops(self) -> list[Op]:
        output = next(n for n in self.nodes if n.op == "output")
        result = output.args[0]
        if not isinstance(result, fx.Node) or result not in self.dynamic:
            raise RobustlabError(f"the forward of {type(self.model).__name__} must return one tensor of logits "
                                 "computed from its input")
        order = [n for n in self.nodes if n in self.dynamic]
        self.specs = {n: self.spec(n) for n in order if n is not self.input}
        self.idom = _dominators(order, self.input, self.specs)
        return _merged(self.expr(self.input, result))

    def expr(self, start: fx.Node, node: fx.Node) -> list[Op]:
        """Ops computing ``node`` from ``start`` (which dominates it)."""
        pieces: list[list[Op]] = []
        while node is not start:
            spec = self.specs[node]
            if spec[0] == "unary":
                pieces.append(spec[2]())
                node = spec[1]
            else:
                _, inputs, posts, after = spec
                top = self.idom[node]
                branches = [_merged(self.expr(top, p) + post) for p, post in zip(inputs, posts)]
                pieces.append([ResidualOp(branches, node.name), *after()])
                node = top
        return [op for piece in reversed(pieces) for op in piece]


def _embedder(dim: int, before: int, after: int) -> Callable[[Tensor], Tensor]:
    """``t -> t`` placed at offset ``before`` of a zero tensor ``before + size + after`` long in ``dim``."""
    def embed(t: Tensor) -> Tensor:
        pad = [0, 0] * (t.dim() - 1 - dim) + [before, after]
        return F.pad(t, pad)
    return embed


def _fetch(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _depends_on(node: fx.Node, source: fx.Node) -> bool:
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n is source:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return False


def _dominators(order: list[fx.Node], root: fx.Node, specs: dict[fx.Node, Any]) -> dict[fx.Node, Any]:
    """Immediate dominators of the input-dependent nodes (a DAG in topological order)."""
    idom: dict[fx.Node, Any] = {root: None}
    depth = {root: 0}

    def meet(a: fx.Node, b: fx.Node) -> fx.Node:
        while a is not b:
            if depth[a] < depth[b]:
                a, b = b, a
            a = idom[a]
        return a

    for node in order:
        if node is root:
            continue
        spec = specs[node]
        preds = [spec[1]] if spec[0] == "unary" else list(spec[1])
        dom = preds[0]
        for p in preds[1:]:
            dom = meet(dom, p)
        idom[node] = dom
        depth[node] = depth[dom] + 1
    return idom


def _merged(ops: list[Op]) -> list[Op]:
    """Consecutive affine ops joined into one (one backward pass each)."""
    out: list[Op] = []
    for op in ops:
        if isinstance(op, AffineOp) and out and isinstance(out[-1], AffineOp):
            out[-1].modules.extend(op.modules)
            out[-1].names.extend(op.names)
        else:
            out.append(op)
    return out


def parse_model(model: nn.Module, x: Tensor | None = None) -> list[Op]:
    """The ops of ``model`` (see :mod:`robustlab.certify.graph`) traced on inputs like ``x``
    ``[N, *in]``; raises a RobustlabError naming the first unsupported operation."""
    if x is None:
        raise RobustlabError("parse_model needs example inputs x [N, *in] to trace the model")
    try:
        return _Graph(model, x).ops()
    except _Unsupported:
        return _Graph(model, x, locate=True).ops()  # raises again, now with the line in the forward
