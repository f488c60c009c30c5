"""Neural-ODE classifiers: ODENet, TisODE and their CNN baseline (Yan, Du, Tan & Feng, "On Robustness
of Neural Ordinary Differential Equations", ICLR 2020; ``HanshuYAN/TisODE:mnist/networks.py``).

All three share one layout, a ``nn.Sequential`` with named children::

    stem   Conv(C_in -> c, 3x3, valid) - GN - ReLU - Conv(c -> c, 4x4, stride 2, pad 1) - GN - ReLU
    block  ODENet: ODE block, dz/dt = f(t, z), f = ConcatConv-GN-ReLU-ConcatConv-GN-ReLU (sees t)
           TisODE: ODE block, dz/dt = f(z),    f = Conv-GN-ReLU-Conv-GN-ReLU (no time input)
           CNN:    one residual block, z + (Conv-GN-ReLU-Conv-GN-ReLU)(z)
    pool, flatten, fc   global average pooling, Linear(c -> classes)

with optional feature-denoising blocks (:class:`~robustlab.models.denoise.DenoisingBlock`,
children ``denoise_stem`` / ``denoise_block``) after either stage, and optional input
randomization (:class:`~robustlab.models.preprocessing.RandomResizePad` around the whole net):
the seed's FDn and IRd combinations. With ``c = 64`` on MNIST the CNN and TisODE have 141,130
parameters and ODENet 142,410 (its time channels add 1,280).

Solvers (:func:`odeint`): fixed-step ``"euler"`` (the paper's, and the default) and ``"rk4"`` are
built in and back-propagate directly through the solver steps; ``"dopri5"`` and adjoint gradients
(``adjoint=True``) need the optional package ``torchdiffeq``. Adaptive solvers and adjoint
gradients change the gradients an attacker sees (algorithms.md §8(d)); compare before trusting
a robustness number.
"""

from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models._checks import positive_int
from robustlab.models.denoise import DENOISE_VARIANTS, DenoisingBlock, group_norm
from robustlab.models.preprocessing import RandomResizePad
from robustlab.models.registry import register_model
from robustlab.modes import ModuleMode
from robustlab.validate import is_number

__all__ = [
    "FIXED_STEP_SOLVERS",
    "GRADIENT_VARIANTS",
    "ODECNN",
    "SOLVERS",
    "STEADY_STATE_FROM_EPOCH",
    "STEADY_STATE_WEIGHT",
    "ConcatConv2d",
    "ODEBlock",
    "ODENet",
    "ResidualBlock",
    "TimeDependentDynamics",
    "TimeInvariantDynamics",
    "TisODE",
    "logits_and_steady_state",
    "ode_gradient_check",
    "odeint",
    "steady_state_blocks",
]

FIXED_STEP_SOLVERS = ("euler", "rk4")
SOLVERS = (*FIXED_STEP_SOLVERS, "dopri5")
STAGES = ("stem", "block")

#: Weight of the steady-state term in TisODE's loss, ``CE + 0.01 * mean(penalty)``, and the epoch
#: (0-based) from which it is added (``w_steady``, ``epoch_steady`` in ``mnist/options.py``).
STEADY_STATE_WEIGHT = 0.01
STEADY_STATE_FROM_EPOCH = 5

Dynamics = Callable[[float, Tensor], Tensor]


def _step_count(t0: float, t1: float, step_size: float) -> int:
    # The tolerance keeps float noise (0.9 / 0.05 = 18.000000000000004) from adding a step.
    return max(1, math.ceil((t1 - t0) / step_size - 1e-6))


def _euler_step(func: Dynamics, t: float, dt: float, z: Tensor) -> Tensor:
    return z + dt * func(t, z)


def _rk4_step(func: Dynamics, t: float, dt: float, z: Tensor) -> Tensor:
    k1 = func(t, z)
    k2 = func(t + dt / 2, z + (dt / 2) * k1)
    k3 = func(t + dt / 2, z + (dt / 2) * k2)
    k4 = func(t + dt, z + dt * k3)
    return z + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": _euler_step, "rk4": _rk4_step}
DIFFUSIONS = ("additive", "multiplicative")


def odeint(func: Dynamics, z0: Tensor, t0: float, t1: float, *, solver: str = "euler", step_size: float = 0.1,
           adjoint: bool = False, rtol: float = 1e-3, atol: float = 1e-3) -> Tensor:
    """``z(t1)`` for ``dz/dt = func(t, z)``, ``z(t0) = z0`` (any shape), ``t0 <= t1``.

    Fixed-step solvers split ``[t0, t1]`` into ``ceil((t1 - t0) / step_size)`` equal steps (exactly
    ``step_size`` whenever it divides the interval, as in every setting of the paper), costing one
    (Euler) or four (RK4) evaluations of ``func`` per step, and back-propagate through the steps.
    ``"dopri5"`` (``rtol``/``atol``) and ``adjoint=True`` go through ``torchdiffeq``; the adjoint
    needs ``func`` to be an ``nn.Module``.
    """
    if t1 == t0:
        return z0
    if solver in _STEPS and not adjoint:
        steps = _step_count(t0, t1, step_size)
        dt = (t1 - t0) / steps
        step = _STEPS[solver]
        z = z0
        for k in range(steps):
            z = step(func, t0 + k * dt, dt, z)
        return z
    torchdiffeq = _torchdiffeq(solver, adjoint)
    integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    times = torch.tensor([t0, t1], dtype=z0.dtype, device=z0.device)
    options = {"step_size": step_size} if solver in FIXED_STEP_SOLVERS else None
    return integrate(func, z0, times, rtol=rtol, atol=atol, method=solver, options=options)[-1]


def _torchdiffeq(solver: str, adjoint: bool) -> Any:
    try:
        import torchdiffeq
    except ImportError:
        need = "adjoint=True" if adjoint else f"solver={solver!r}"
        raise RobustlabError(
            f"{need} needs the optional package torchdiffeq (pip install torchdiffeq); without it, use "
            f"solver='euler' or 'rk4' with adjoint=False"
        ) from None
    return torchdiffeq


class _WithAbsIntegral(nn.Module):
    """The augmented system ``d[z, r]/dt = [f(t, z), |f(t, z)|]`` on ``[z, r]`` stacked on dim 0.

    Solving it from ``r = 0`` gives ``r(t) = integral of |f(z(s))| ds`` along the true trajectory;
    with Euler this is ``euler_abs`` of the reference's patched ``torchdiffeq``
    (``FixedGridODESolver_ABS``). A module so the adjoint method can find the parameters."""

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: float, state: Tensor) -> Tensor:
        derivative = self.dynamics(t, state[0])
        return torch.stack((derivative, derivative.abs()))


class ConcatConv2d(nn.Module):
    """A convolution over ``[t, z]``: the time is appended as a constant first input channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, padding=padding)

    def forward(self, t: float | Tensor, z: Tensor) -> Tensor:
        time = torch.ones_like(z[:, :1]) * t
        return self.conv(torch.cat((time, z), dim=1))


class TimeDependentDynamics(nn.Module):
    """ODENet's ``f(t, z)``: ConcatConv3x3-GN-ReLU-ConcatConv3x3-GN-ReLU, ``[N, c, H, W]`` in and out."""

    time_dependent = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm1 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.relu = nn.ReLU()

    def forward(self, t: float | Tensor, z: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(t, z)))
        return self.relu(self.norm2(self.conv2(t, out)))


class TimeInvariantDynamics(nn.Module):
    """TisODE's ``f(z)``: Conv3x3-GN-ReLU-Conv3x3-GN-ReLU without bias and without a time input.

    ``forward(t, z)`` takes ``t`` only to share the solvers' interface and ignores it."""

    time_dependent = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.relu = nn.ReLU()

    def forward(self, t: float | Tensor, z: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(z)))
        return self.relu(self.norm2(self.conv2(out)))


class ResidualBlock(TimeInvariantDynamics):
    """The CNN baseline's block: ``z + f(z)`` with ``f`` the TisODE dynamics' layers, i.e. one
    Euler step of size 1 (``HanshuYAN/TisODE:mnist/networks.py:ResBlock``)."""

    def forward(self, z: Tensor) -> Tensor:  # type: ignore[override]
        return z + super().forward(0.0, z)


class ODEBlock(nn.Module):
    """``z -> z(t_end)`` for ``dz/dt = dynamics(t, z)``, ``z(0) = z`` (any shape ``dynamics`` takes).

    Cost per forward: ``ceil(t_end / step_size)`` evaluations of ``dynamics`` with Euler, four
    times that with RK4, adaptive with dopri5; the backward pass of direct back-propagation
    stores every step's activations (memory linear in the step count), the adjoint method does
    not but re-integrates backwards. See :func:`odeint` for the solvers.

    While :func:`logits_and_steady_state` runs, a time-invariant block also integrates
    ``|dynamics|`` over ``[steady_start, steady_end]`` and hands the result to the caller.
    """

    def __init__(self, dynamics: nn.Module, *, t_end: float = 1.0, step_size: float = 0.1, solver: str = "euler",
                 adjoint: bool = False, rtol: float = 1e-3, atol: float = 1e-3,
                 steady_start: float | None = None, steady_end: float | None = None, diffusion: float = 0.0,
                 diffusion_kind: str = "additive", generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_solver(solver, adjoint)
        if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) or not 0 <= diffusion < math.inf:
            raise RobustlabError(f"ODE block: diffusion must be a finite number >= 0, got {diffusion!r}")
        if diffusion_kind not in DIFFUSIONS:
            raise RobustlabError(f"ODE block: diffusion_kind must be one of {DIFFUSIONS}, got {diffusion_kind!r}")
        if diffusion > 0 and (solver != "euler" or adjoint or steady_start is not None):
            raise RobustlabError("ODE block: a diffusion term (a neural SDE) is integrated by Euler-Maruyama: it needs "
                                 "solver='euler', no adjoint and no steady-state window")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise RobustlabError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        for name, value in (("t_end", t_end), ("step_size", step_size), ("rtol", rtol), ("atol", atol)):
            if not is_number(value, finite=False) or not 0 < value < math.inf:
                raise RobustlabError(f"ODE block: {name} must be a positive finite number, got {value!r}")
        if (steady_start is None) != (steady_end is None):
            raise RobustlabError("ODE block: give both steady_start and steady_end, or neither")
        if steady_start is not None:
            if getattr(dynamics, "time_dependent", True):
                raise RobustlabError("the steady-state regularizer needs time-invariant dynamics (TisODE)")
            if not 0 <= steady_start <= t_end <= steady_end or steady_start == steady_end:  # type: ignore[operator]
                raise RobustlabError(
                    f"steady-state window must satisfy 0 <= steady_start <= t_end <= steady_end with "
                    f"steady_start < steady_end; got [{steady_start}, {steady_end}] and t_end={t_end}"
                )
        self.dynamics = dynamics
        self.t_end = float(t_end)
        self.step_size = float(step_size)
        self.solver = solver
        self.adjoint = adjoint
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.steady_start = None if steady_start is None else float(steady_start)
        self.steady_end = None if steady_end is None else float(steady_end)
        self._steady_sink: list[Tensor] | None = None
        self.diffusion = float(diffusion)
        self.diffusion_kind = diffusion_kind
        self.generator = generator
        #: a neural SDE draws fresh noise on every forward, in train and eval mode alike (EOT's test)
        self.stochastic = self.diffusion > 0

    def integrate(self, z: Tensor, t0: float, t1: float) -> Tensor:
        """``z(t1)`` from ``z(t0) = z`` with this block's solver (Euler-Maruyama when it has a
        diffusion term: ``z <- z + dt f(t, z) + diffusion * G(z) * sqrt(dt) * eps``, ``G = 1``
        (additive) or ``z`` (multiplicative), ``eps ~ N(0, I)`` from the block's generator;
        ``xuanqing94/NeuralSDE:sdeint/euler.py``)."""
        if self.diffusion > 0:
            steps = _step_count(t0, t1, self.step_size) if t1 > t0 else 0
            dt = (t1 - t0) / max(steps, 1)
            for k in range(steps):
                noise = torch.randn(z.shape, generator=self.generator, dtype=z.dtype).to(z.device)
                scale = self.diffusion * math.sqrt(dt)
                z = z + dt * self.dynamics(t0 + k * dt, z) + scale * (noise if self.diffusion_kind == "additive"
                                                                      else z * noise)
            return z
        return odeint(self.dynamics, z, t0, t1, solver=self.solver, step_size=self.step_size,
                      adjoint=self.adjoint, rtol=self.rtol, atol=self.atol)

    def integrate_with_abs(self, z: Tensor, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        """``(z(t1), integral over [t0, t1] of |dynamics(z(t))| dt)``, both shaped like ``z``."""
        state = odeint(_WithAbsIntegral(self.dynamics), torch.stack((z, torch.zeros_like(z))), t0, t1,
                       solver=self.solver, step_size=self.step_size, adjoint=self.adjoint, rtol=self.rtol,
                       atol=self.atol)
        return state[0], state[1]

    def steady_state(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(z(t_end), penalty)``: the output and, per sample, ``mean over C, H, W`` of
        ``integral over [steady_start, steady_end] of |f(z(t))| dt`` along the trajectory from ``z``.

        The trajectory is solved on ``[0, steady_start]``, ``[steady_start, t_end]`` and
        ``[t_end, steady_end]``, so the output is the one :meth:`forward` computes (bit for bit
        up to rounding of the step when ``step_size`` divides each piece)."""
        if self.steady_start is None or self.steady_end is None:
            raise RobustlabError("this ODE block has no steady-state window (only TisODE blocks do)")
        start = self.integrate(z, 0.0, self.steady_start)
        out, before = self.integrate_with_abs(start, self.steady_start, self.t_end)
        _, after = self.integrate_with_abs(out, self.t_end, self.steady_end)
        return out, (before + after).flatten(1).mean(dim=1)

    def forward(self, z: Tensor) -> Tensor:
        if self._steady_sink is None:
            return self.integrate(z, 0.0, self.t_end)
        out, penalty = self.steady_state(z)
        self._steady_sink.append(penalty)
        return out

    def extra_repr(self) -> str:
        text = f"t_end={self.t_end}, solver={self.solver!r}, step_size={self.step_size}, adjoint={self.adjoint}"
        if self.steady_start is not None:
            text += f", steady=[{self.steady_start}, {self.steady_end}]"
        if self.diffusion > 0:
            text += f", diffusion={self.diffusion:g} ({self.diffusion_kind})"
        return text


def _check_solver(solver: str, adjoint: bool) -> None:
    if solver not in SOLVERS:
        raise RobustlabError(f"unknown ODE solver {solver!r}; choose one of {list(SOLVERS)}")
    if not isinstance(adjoint, bool):
        raise RobustlabError(f"adjoint must be True or False, got {adjoint!r}")
    if adjoint or solver not in FIXED_STEP_SOLVERS:
        _torchdiffeq(solver, adjoint)


def steady_state_blocks(model: nn.Module) -> list[ODEBlock]:
    """The ODE blocks inside ``model`` that have a steady-state window (TisODE blocks), in
    module order."""
    return [m for m in model.modules() if isinstance(m, ODEBlock) and m.steady_start is not None]


def logits_and_steady_state(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(model(x), penalty)`` in one forward pass: ``penalty`` ``[N]`` is the sum, over the
    TisODE blocks inside ``model``, of each block's per-sample steady-state integral (see
    :meth:`ODEBlock.steady_state`).

    Works through wrappers (``Normalize``, input randomization, ``DataParallel`` on one device):
    the blocks record their term during the call and are reset afterwards, even on error. The
    TisODE loss is ``cross_entropy + STEADY_STATE_WEIGHT * penalty.mean()`` from epoch
    ``STEADY_STATE_FROM_EPOCH`` (Yan et al., ``main_tisode_gaus.py``). Cost: the forward pass
    plus ``(steady_end - t_end) / step_size`` extra evaluations of the dynamics per block.
    """
    blocks = steady_state_blocks(model)
    if not blocks:
        raise RobustlabError("the model has no TisODE block, so it has no steady-state term")
    sink: list[Tensor] = []
    try:
        for block in blocks:
            block._steady_sink = sink
        logits = model(x)
    finally:
        for block in blocks:
            block._steady_sink = None
    if len(sink) != len(blocks):
        raise RobustlabError(f"expected {len(blocks)} steady-state terms from the forward pass, got {len(sink)}")
    return logits, torch.stack(sink).sum(dim=0)


class _FeatureNet(nn.Sequential):
    """stem -> [denoise_stem] -> block -> [denoise_block] -> pool -> flatten -> fc."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: int, block: nn.Module,
                 denoise: str | None, denoise_after: Sequence[str]) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("stem", nn.Sequential(
                nn.Conv2d(input_shape[0], channels, 3), group_norm(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 4, stride=2, padding=1), group_norm(channels), nn.ReLU(),
            )),
        ]
        if denoise is not None and "stem" in denoise_after:
            layers.append(("denoise_stem", DenoisingBlock(channels, variant=denoise)))
        layers.append(("block", block))
        if denoise is not None and "block" in denoise_after:
            layers.append(("denoise_block", DenoisingBlock(channels, variant=denoise)))
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                   ("fc", nn.Linear(channels, num_classes))]
        super().__init__(OrderedDict(layers))


class ODECNN(_FeatureNet):
    """The CNN baseline: the ODE nets' stem and head around one :class:`ResidualBlock`."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, channels: int = 64,
                 denoise: str | None = None, denoise_after: Sequence[str] = ("stem",)) -> None:
        super().__init__(input_shape, num_classes, channels, ResidualBlock(channels), denoise, denoise_after)


class ODENet(_FeatureNet):
    """ODENet: an :class:`ODEBlock` over :class:`TimeDependentDynamics`, integrated on ``[0, t_end]``."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, channels: int = 64,
                 t_end: float = 1.0, step_size: float = 0.1, solver: str = "euler", adjoint: bool = False,
                 rtol: float = 1e-3, atol: float = 1e-3, denoise: str | None = None,
                 denoise_after: Sequence[str] = ("stem",), diffusion: float = 0.0, diffusion_kind: str = "additive",
                 generator: torch.Generator | None = None) -> None:
        block = ODEBlock(TimeDependentDynamics(channels), t_end=t_end, step_size=step_size, solver=solver,
                         adjoint=adjoint, rtol=rtol, atol=atol, diffusion=diffusion, diffusion_kind=diffusion_kind,
                         generator=generator)
        super().__init__(input_shape, num_classes, channels, block, denoise, denoise_after)


class TisODE(_FeatureNet):
    """TisODE: an :class:`ODEBlock` over :class:`TimeInvariantDynamics` with a steady-state window."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, channels: int = 64,
                 t_end: float = 1.0, step_size: float = 0.05, solver: str = "euler", adjoint: bool = False,
                 rtol: float = 1e-3, atol: float = 1e-3, steady_start: float = 0.9, steady_end: float = 1.5,
                 denoise: str | None = None, denoise_after: Sequence[str] = ("stem",)) -> None:
        block = ODEBlock(TimeInvariantDynamics(channels), t_end=t_end, step_size=step_size, solver=solver,
                         adjoint=adjoint, rtol=rtol, atol=atol, steady_start=steady_start, steady_end=steady_end)
        super().__init__(input_shape, num_classes, channels, block, denoise, denoise_after)


# -- gradient-masking check ---------------------------------------------------------------------------------
#: The ways of integrating a model's ODE blocks that :func:`ode_gradient_check` compares.
GRADIENT_VARIANTS = ("adjoint", "euler", "rk4", "dopri5")


def ode_gradient_check(model: nn.Module, x: Tensor, y: Tensor, *,
                       variants: Sequence[str] = GRADIENT_VARIANTS) -> dict[str, Any]:
    """Compare the input gradients an attacker gets from ``model`` as configured with those of
    other ways of integrating the same ODE blocks: a gradient-masking check for neural-ODE models
    (adaptive solvers and adjoint gradients can mislead attacks; algorithms.md §8(d)).

    ``x``: ``[N, ...]`` inputs, ``y``: ``[N]`` labels. For each variant every ODE block inside
    ``model`` is switched, for one forward and backward pass, to:

    - ``"adjoint"``: the block's own solver and step, gradients by the adjoint method (Chen et al.,
      NeurIPS 2018; torchdiffeq) instead of back-propagation through the solver steps;
    - ``"euler"`` / ``"rk4"``: that fixed-step solver at the block's step size, direct
      back-propagation;
    - ``"dopri5"``: the adaptive solver with the block's ``rtol``/``atol``, direct back-propagation
      through its accepted steps (torchdiffeq).

    The gradient is that of the summed cross-entropy with respect to the input, the model in eval
    mode. A variant that is the model's own configuration, or that needs torchdiffeq when it is
    not installed, is listed in ``"skipped"`` with the reason instead.

    Returns a JSON-ready dict: ``"reference"`` (the blocks' solvers and adjoint flags),
    ``"variants"``: per variant ``cosine_mean`` / ``cosine_min`` (per-sample cosine similarity of
    the flattened gradients; 0 where a gradient is exactly zero), ``relative_median`` /
    ``relative_max`` (``||g_variant - g_model|| / ||g_model||`` per sample), ``logit_change_max``
    (the largest absolute change of a logit: the forward solutions' disagreement) and
    ``same_prediction`` (fraction of samples whose predicted class is unchanged); and
    ``"skipped"``: variant -> reason.

    Reading it: the adjoint gradient is not the gradient of the discretized forward pass; it
    re-integrates backwards with its own discretization error, so it agrees with direct
    back-propagation only at fine steps (on a small untrained ODENet with the paper's Euler step
    0.1 we measured a minimum cosine of about 0.6; at step 0.01, 0.99). Solvers agree up to their
    discretization error. A low cosine means the attack's gradient depends on a numerical choice:
    attack the model as deployed and under the other variants, and trust the lowest robust
    accuracy.

    Stochastic models: the generator of every module that owns one (e.g. input randomization
    built with a seed) is rewound before each pass, so every variant sees the same random draw,
    and is left as it was found; randomness from torch's global generator is not controlled, and
    the comparison then mixes random draws with solver effects.

    Cost: ``1 + len(variants)`` forward and backward passes (``"adjoint"``: the backward
    integrates back over the interval; ``"dopri5"``: as many evaluations as its tolerance needs).
    """
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    if not blocks:
        raise RobustlabError("ode_gradient_check needs a model with at least one ODE block")
    unknown = [v for v in variants if v not in GRADIENT_VARIANTS]
    if unknown or len(set(variants)) != len(variants):
        raise RobustlabError(f"variants must be distinct names from {list(GRADIENT_VARIANTS)}, got {list(variants)}")
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise RobustlabError(f"ode_gradient_check needs x [N, ...] and labels y [N] with N >= 1, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    settings = [(block.solver, block.adjoint) for block in blocks]
    generators = [g for m in model.modules() if isinstance(g := getattr(m, "generator", None), torch.Generator)]
    states = [g.get_state() for g in generators]
    with ModuleMode(model, False):
        try:
            reference = _input_gradient(model, x, y, generators, states)
            results: dict[str, dict[str, float]] = {}
            skipped: dict[str, str] = {}
            for variant in variants:
                adjoint = variant == "adjoint"
                wanted = [(solver, True) if adjoint else (variant, False) for solver, _ in settings]
                if wanted == settings:
                    skipped[variant] = "the model's own configuration"
                    continue
                needs_torchdiffeq = any(a or s not in FIXED_STEP_SOLVERS for s, a in wanted)
                if needs_torchdiffeq and importlib.util.find_spec("torchdiffeq") is None:
                    skipped[variant] = "needs the optional package torchdiffeq, which is not installed"
                    continue
                for block, (solver, flag) in zip(blocks, wanted):
                    block.solver, block.adjoint = solver, flag
                results[variant] = _agreement(reference, _input_gradient(model, x, y, generators, states))
        finally:
            for block, (solver, flag) in zip(blocks, settings):
                block.solver, block.adjoint = solver, flag
            for generator, state in zip(generators, states):
                generator.set_state(state)
    return {"reference": {"solvers": [s for s, _ in settings], "adjoint": [a for _, a in settings]},
            "variants": results, "skipped": skipped}


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor, generators: list[torch.Generator],
                    states: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``(logits, d sum CE / d x)``, both detached, after rewinding ``generators`` to ``states``."""
    for generator, state in zip(generators, states):
        generator.set_state(state)
    inputs = x.detach().clone().requires_grad_(True)
    logits = model(inputs)
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), inputs)
    return logits.detach(), gradient.detach()


def _agreement(reference: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor]) -> dict[str, float]:
    (logits, gradient), (other_logits, other_gradient) = reference, other
    g, h = gradient.flatten(1).double(), other_gradient.flatten(1).double()
    cosine = F.cosine_similarity(g, h, dim=1, eps=1e-30)
    relative = (h - g).norm(dim=1) / g.norm(dim=1).clamp_min(1e-30)
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "relative_median": float(relative.median()),
        "relative_max": float(relative.max()),
        "logit_change_max": float((other_logits - logits).abs().max()),
        "same_prediction": float((other_logits.argmax(1) == logits.argmax(1)).double().mean()),
    }


# -- registry ----------------------------------------------------------------------------------------------
def _feature_side(side: int) -> int:
    # A 3x3 valid convolution, then a 4x4 stride-2 convolution with padding 1.
    return (side - 4) // 2 + 1 if side > 2 else 0


def _common_checks(name: str, input_shape: tuple[int, int, int], channels: int, denoise: str | None,
                   denoise_after: Sequence[str], input_randomization: bool,
                   randomization_seed: int | None) -> tuple[int, tuple[str, ...]]:
    channels = positive_int(channels, "channels", name)
    if min(_feature_side(input_shape[1]), _feature_side(input_shape[2])) < 1:
        raise RobustlabError(
            f"{name}: input of {input_shape[1]}x{input_shape[2]} pixels is too small for this architecture; "
            f"it needs at least 4x4"
        )
    if denoise is not None and denoise not in DENOISE_VARIANTS:
        raise RobustlabError(f"{name}: denoise must be None or one of {list(DENOISE_VARIANTS)}, got {denoise!r}")
    if isinstance(denoise_after, str) or not isinstance(denoise_after, Sequence) or not denoise_after:
        raise RobustlabError(f"{name}: denoise_after must be a non-empty list of stages from {list(STAGES)}")
    stages = tuple(denoise_after)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or len(set(stages)) != len(stages):
        raise RobustlabError(f"{name}: denoise_after must name distinct stages from {list(STAGES)}, got {stages}")
    if not isinstance(input_randomization, bool):
        raise RobustlabError(f"{name}: input_randomization must be True or False, got {input_randomization!r}")
    if randomization_seed is not None and (isinstance(randomization_seed, bool)
                                           or not isinstance(randomization_seed, int)):
        raise RobustlabError(f"{name}: randomization_seed must be an int or None, got {randomization_seed!r}")
    return channels, stages


def _randomized(net: nn.Module, input_randomization: bool, randomization_seed: int | None) -> nn.Module:
    if not input_randomization:
        return net
    generator = None
    if randomization_seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(randomization_seed)
    return RandomResizePad(net, generator=generator)


_OPTIONS_DOC = """
    ``channels`` (64, the paper's): feature channels. ``denoise``: ``None`` or a variant of
    :data:`~robustlab.models.denoise.DENOISE_VARIANTS` (FDn; Xie et al., CVPR 2019), inserted
    after each stage named in ``denoise_after`` (``"stem"`` and/or ``"block"``; default after the
    stem, so the denoised features enter the block: the seed does not say where it inserts FDn).
    ``input_randomization``: wrap the net in
    :class:`~robustlab.models.preprocessing.RandomResizePad` (IRd; Xie et al., ICLR 2018), drawing
    from a CPU generator seeded with ``randomization_seed`` (``None``: torch's global RNG); it is
    stochastic, so attack it with EOT. With ``normalize`` the randomization sees normalized inputs.
"""


@register_model("ode-cnn")
def ode_cnn(*, input_shape: tuple[int, int, int], num_classes: int, channels: int = 64,
            denoise: str | None = None, denoise_after: Sequence[str] = ("stem",),
            input_randomization: bool = False, randomization_seed: int | None = None) -> nn.Module:
    channels, stages = _common_checks("ode-cnn", input_shape, channels, denoise, denoise_after,
                                      input_randomization, randomization_seed)
    net = ODECNN(input_shape, num_classes, channels=channels, denoise=denoise, denoise_after=stages)
    return _randomized(net, input_randomization, randomization_seed)


ode_cnn.__doc__ = """The CNN baseline of Yan et al. (ICLR 2020, §5; ``mnist/networks.py:CNN_MNIST``): ODENet with
    one residual block in place of the ODE block (141,130 parameters on MNIST with 64 channels).
""" + _OPTIONS_DOC


@register_model("odenet")
def odenet(*, input_shape: tuple[int, int, int], num_classes: int, channels: int = 64, t_end: float = 1.0,
           step_size: float = 0.1, solver: str = "euler", adjoint: bool = False, rtol: float = 1e-3,
           atol: float = 1e-3, denoise: str | None = None, denoise_after: Sequence[str] = ("stem",),
           input_randomization: bool = False, randomization_seed: int | None = None, diffusion: float = 0.0,
           diffusion_kind: str = "additive", diffusion_seed: int | None = None) -> nn.Module:
    channels, stages = _common_checks("odenet", input_shape, channels, denoise, denoise_after,
                                      input_randomization, randomization_seed)
    if diffusion_seed is not None and (isinstance(diffusion_seed, bool) or not isinstance(diffusion_seed, int)):
        raise RobustlabError(f"odenet: diffusion_seed must be an int or None, got {diffusion_seed!r}")
    generator = None if diffusion_seed is None else torch.Generator().manual_seed(diffusion_seed)
    net = ODENet(input_shape, num_classes, channels=channels, t_end=t_end, step_size=step_size, solver=solver,
                 adjoint=adjoint, rtol=rtol, atol=atol, denoise=denoise, denoise_after=stages, diffusion=diffusion,
                 diffusion_kind=diffusion_kind, generator=generator)
    return _randomized(net, input_randomization, randomization_seed)


odenet.__doc__ = """ODENet of Yan et al. (ICLR 2020; ``mnist/networks.py:ODENet_MNIST``): dynamics with a time
    channel, integrated on ``[0, t_end]`` with ``t_end = 1`` and fixed-step Euler of ``step_size
    0.1`` (``mnist/options.py`` defaults; ``run_ode_gaus.sh``). ``solver``: ``"euler"``, ``"rk4"``
    or ``"dopri5"`` (torchdiffeq, with ``rtol``/``atol``, default 1e-3 as in ``options.py``);
    ``adjoint``: adjoint gradients through torchdiffeq (default: direct back-propagation).
    142,410 parameters on MNIST with 64 channels.

    ``diffusion`` > 0 makes it a neural SDE (Liu, Xiao, Si, Cao, Kumar & Hsieh, "How Does Noise
    Help Robustness? Explanation and Exploration under the Neural SDE Framework", CVPR 2020; the
    random self-ensemble seen as an SDE): ``dz = f(t, z) dt + diffusion * G(z) dB_t`` integrated by
    Euler-Maruyama with ``step_size`` (0.1 there), ``G = 1`` (``diffusion_kind="additive"``, RSE-like)
    or ``G = z`` (``"multiplicative"``, dropout-like), noise from a CPU generator seeded with
    ``diffusion_seed`` (None: torch's global RNG), in train and eval mode alike. Random: attack it
    with EOT, and average predictions over draws for the ensemble.
""" + _OPTIONS_DOC


@register_model("tisode")
def tisode(*, input_shape: tuple[int, int, int], num_classes: int, channels: int = 64, t_end: float = 1.0,
           step_size: float = 0.05, solver: str = "euler", adjoint: bool = False, rtol: float = 1e-3,
           atol: float = 1e-3, steady_start: float = 0.9, steady_end: float = 1.5, denoise: str | None = None,
           denoise_after: Sequence[str] = ("stem",), input_randomization: bool = False,
           randomization_seed: int | None = None) -> nn.Module:
    channels, stages = _common_checks("tisode", input_shape, channels, denoise, denoise_after,
                                      input_randomization, randomization_seed)
    net = TisODE(input_shape, num_classes, channels=channels, t_end=t_end, step_size=step_size, solver=solver,
                 adjoint=adjoint, rtol=rtol, atol=atol, steady_start=steady_start, steady_end=steady_end,
                 denoise=denoise, denoise_after=stages)
    return _randomized(net, input_randomization, randomization_seed)


tisode.__doc__ = """TisODE of Yan et al. (ICLR 2020, §4; ``mnist/networks.py:ODENet_tisode``): time-invariant
    dynamics (no time channel, bias-free convolutions), prediction from ``z(t_end = 1)`` with Euler
    of ``step_size 0.05`` (``run_tisode_gaus.sh``). The steady-state window ``[steady_start,
    steady_end] = [0.9, 1.5]`` is the released checkpoint's ``TimePeriod 0_0.9_1.0_1.5``
    (algorithms.md §8(a)); it does not affect predictions. Train with
    :func:`logits_and_steady_state`. 141,130 parameters on MNIST with 64 channels. Solver options
    as for ``odenet``.
""" + _OPTIONS_DOC
