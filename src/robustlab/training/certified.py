"""Certified training: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020) objectives,
registered as the training methods ``"ibp"`` and ``"crown-ibp"`` of :func:`robustlab.training.train`.

**Objective.** With ``m_j`` a lower bound on the margin ``z_y - z_j`` over the threat set (the
specification folded into the last layer, so ``m_y = 0``), the *worst-case logits* are
``-m`` and the loss is

    ``kappa * CE(z(x), y) + (1 - kappa) * CE(-m, y)``.

- ``"ibp"``: ``m`` from interval bound propagation (:func:`~robustlab.certify.bounds.ibp_bounds`).
- ``"crown-ibp"``: ``m = beta * m_CROWN-IBP + (1 - beta) * m_IBP``, where CROWN-IBP is CROWN's
  backward pass on interval intermediate bounds
  (:func:`~robustlab.certify.bounds.crown_bounds` with ``intermediate="ibp"``).

The bounds are differentiable in the weights (autograd through the same code the certifiers
use), so the loss trains the network to be certifiable.

**Schedules** (per optimizer step ``t``, counted by the method from 0 = the first batch).
``f = clamp((t - warmup_steps) / ramp_steps, 0, 1)`` (with ``ramp_steps = 0``: ``f = 0``
before ``warmup_steps``, 1 from then on), and

- ``eps_t = f * eps`` (Gowal et al.: natural warm-up, then eps ramped linearly to its target),
- ``kappa_t = kappa_start + f * (kappa_end - kappa_start)`` (Gowal et al.: 1 -> 0.5),
- ``beta_t = beta_start + f * (beta_end - beta_start)`` (CROWN-IBP only; Zhang et al.: 1 -> 0;
  ``"ibp"`` always has ``beta = 0``).

While ``eps_t = 0`` or ``kappa_t = 1`` the robust term is skipped (the loss is the clean
cross-entropy, which is what it equals mathematically at ``eps = 0``).

**Settings.** :class:`CertifiedTrainingOptions`, given as ``TrainConfig.method_options``
(:func:`train_certified` does that from an options object). ``eps``, ``norm`` and ``bounds`` may
instead come from ``TrainConfig.threat``; with neither the methods refuse to start (the radius
is data-dependent, there is no sensible default). The eps ramp is the methods' own
(``warmup_steps`` / ``ramp_steps``), so ``TrainConfig.eps_warmup_epochs`` must stay 0. The step
counter is part of the method's ``state_dict`` and the options are part of the config, so
checkpoints capture the ramp position and a resumed run is exact; resuming under different
options is refused.

**Mode.** The clean term uses the model in training mode (as the loop leaves it). The bounds
are those of the eval-mode network, the one that gets certified: BatchNorm with its running
statistics, Dropout off. For the plain ReLU MLPs/CNNs of certified training the two coincide.

Cost per batch: one forward and backward pass for the clean term; IBP about two more forward
passes (and their backward); CROWN-IBP in addition one backward bound pass with ``K`` rows
per sample (about ``K`` times a forward pass), and its gradient.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.certify.bounds import InputSet, crown_bounds, ibp_bounds, margin_spec
from robustlab.certify.certifiers import Prepared, prepare
from robustlab.errors import RobustlabError
from robustlab.modes import ModuleMode
from robustlab.threat import ThreatModel, threat_model
from robustlab.training.methods import (
    METHODS,
    Batch,
    LossOutput,
    TrainingMethod,
    build_options,
)
from robustlab.validate import is_int, is_number

__all__ = [
    "CERTIFIED_METHODS",
    "CROWNIBPMethod",
    "CertifiedLoss",
    "CertifiedTrainingOptions",
    "IBPMethod",
    "Schedule",
    "certified_loss",
    "schedule",
    "train_certified",
    "worst_case_logits",
]


@dataclass(frozen=True)
class CertifiedTrainingOptions:
    """Settings of ``"ibp"`` / ``"crown-ibp"`` training (validated on construction).

    Args:
        eps: the training radius reached at the end of the ramp (Gowal et al. train MNIST at
            somewhat more than the test radius, e.g. 0.4 for 0.3).
        norm: "Linf" (default), "L2" or "L1" (the certifiers' input sets).
        bounds: the input box ``(lo, hi)``.
        warmup_steps: optimizer steps of natural training (``eps = 0``) before the ramp.
        ramp_steps: optimizer steps over which ``eps``, ``kappa`` and ``beta`` move linearly
            from their start to their end values (0: jump at ``warmup_steps``).
        kappa_start, kappa_end: weight of the clean cross-entropy (Gowal et al.: 1 -> 0.5).
        beta_start, beta_end: weight of CROWN-IBP in the bound mix of ``"crown-ibp"``
            (Zhang et al.: 1 -> 0); ignored by ``"ibp"``.
    """

    eps: float
    norm: str = "Linf"
    bounds: tuple[float, float] = (0.0, 1.0)
    warmup_steps: int = 0
    ramp_steps: int = 0
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0

    def __post_init__(self) -> None:
        eps = _number("eps", self.eps)
        if eps <= 0:
            raise RobustlabError(f"CertifiedTrainingOptions.eps must be > 0, got {self.eps}")
        if self.norm not in ("Linf", "L2", "L1"):
            raise RobustlabError(f"CertifiedTrainingOptions.norm must be Linf, L2 or L1, got {self.norm!r}")
        try:
            lo, hi = (_number("bounds", v) for v in self.bounds)
        except TypeError:
            raise RobustlabError(f"CertifiedTrainingOptions.bounds must be (lo, hi), got {self.bounds!r}") from None
        if not lo < hi:
            raise RobustlabError(f"CertifiedTrainingOptions.bounds must have lo < hi, got {self.bounds!r}")
        for name in ("warmup_steps", "ramp_steps"):
            value = getattr(self, name)
            if not is_int(value, 0):
                raise RobustlabError(f"CertifiedTrainingOptions.{name} must be an integer >= 0, got {value!r}")
        weights = {}
        for name in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
            weights[name] = _number(name, getattr(self, name))
            if not 0 <= weights[name] <= 1:
                raise RobustlabError(f"CertifiedTrainingOptions.{name} must lie in [0, 1], got {weights[name]}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "bounds", (lo, hi))
        for name, value in weights.items():
            object.__setattr__(self, name, value)

    @property
    def threat(self) -> ThreatModel:
        """The threat model trained against at the end of the ramp: ``eps`` in ``norm`` on ``bounds``
        (the options keep them as plain fields: they are the method's ``NAME:key=value`` options)."""
        return threat_model(self.norm, self.eps, self.bounds)

    def to_dict(self) -> dict:
        """Plain Python (for checkpoints and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CertifiedTrainingOptions:
        data = dict(data)
        if "bounds" in data:
            data["bounds"] = tuple(data["bounds"])
        return cls(**data)


def _number(name: str, value: object) -> float:
    if not is_number(value, finite=False) or not math.isfinite(value):
        raise RobustlabError(f"CertifiedTrainingOptions.{name} must be a finite number, got {value!r}")
    return float(value)


class Schedule(NamedTuple):
    """The ramped values at one step: radius, clean-loss weight, CROWN-IBP weight, ramp fraction."""

    eps: float
    kappa: float
    beta: float
    fraction: float


def schedule(options: CertifiedTrainingOptions, step: int, *, method: str = "crown-ibp") -> Schedule:
    """``(eps, kappa, beta, fraction)`` at optimizer step ``step`` (0 = the first batch); see the
    module docstring. ``method="ibp"`` gives ``beta = 0``."""
    if options.ramp_steps == 0:
        fraction = 1.0 if step >= options.warmup_steps else 0.0
    else:
        fraction = min(max((step - options.warmup_steps) / options.ramp_steps, 0.0), 1.0)
    kappa = options.kappa_start + fraction * (options.kappa_end - options.kappa_start)
    beta = 0.0 if method == "ibp" else options.beta_start + fraction * (options.beta_end - options.beta_start)
    return Schedule(fraction * options.eps, kappa, beta, fraction)


# -- the objective ---------------------------------------------------------------------------


class CertifiedLoss(NamedTuple):
    """``loss`` (scalar), ``clean_logits [N, K]``, ``worst_logits [N, K]`` (None when skipped)."""

    loss: Tensor
    clean_logits: Tensor
    worst_logits: Tensor | None


def _prepare_for_training(model: nn.Module, x: Tensor) -> Prepared:
    """Parse ``model`` (in eval mode, without gradient, modes restored). The returned ops and the
    final ``weight``/``bias`` refer to the model's live parameters, so bounds computed from them
    later are differentiable and follow the optimizer's updates."""
    with ModuleMode(model, False), torch.no_grad():
        return prepare(model, x[:1])


def worst_case_logits(
    model: nn.Module | Prepared,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    eps: float | Tensor | None = None,
    beta: float = 0.0,
) -> Tensor:
    """``-m [N, K]``: minus the lower bounds of the margins ``z_y - z_j`` over ``threat`` (its
    norm, Linf, L2 or L1, and box; radius ``threat.eps`` or ``eps``, a number or ``[N]``, as a
    certifier's ``eps``), with ``m = beta * m_CROWN-IBP + (1 - beta) * m_IBP``
    (``beta = 0``: pure IBP, one bound computation only; ``beta = 1``: pure CROWN-IBP). Entry
    ``y`` is 0. Differentiable in the model's parameters when gradients are enabled; the bounds
    are those of the eval-mode network. ``model`` may be an already prepared model (a
    :class:`~robustlab.certify.certifiers.Prepared` on the same input shape)."""
    prepared = model if isinstance(model, Prepared) else _prepare_for_training(model, x)
    eps_t = torch.as_tensor(threat.eps if eps is None else eps, dtype=x.dtype, device=x.device)
    eps_t = eps_t.expand(x.shape[0]) if eps_t.dim() == 0 else eps_t.reshape(-1)
    spec = margin_spec(y, prepared.weight.shape[0], x.dtype)
    inputs = InputSet(x, eps_t, threat.norm, threat.bounds)
    bound: Tensor | float = 0
    if beta < 1:
        bound = (1 - beta) * ibp_bounds(prepared.ops, prepared.weight, prepared.bias, spec, inputs)
    if beta > 0:
        crown, _ = crown_bounds(prepared.ops, prepared.weight, prepared.bias, spec, inputs, intermediate="ibp")
        bound = bound + beta * crown
    return -cast(Tensor, bound)


def certified_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    kappa: float,
    eps: float | None = None,
    beta: float = 0.0,
    prepared: Prepared | None = None,
) -> CertifiedLoss:
    """``kappa * CE(model(x), y) + (1 - kappa) * CE(worst_case_logits, y)`` (mean over the
    batch) over ``threat`` at radius ``eps`` (default ``threat.eps``; the ramp passes its
    current radius). The clean forward runs in the model's current mode; the robust term is
    skipped (``worst_logits = None``) when ``eps == 0`` or ``kappa == 1``."""
    eps = threat.eps if eps is None else eps
    clean = model(x)
    if eps == 0 or kappa == 1:
        return CertifiedLoss(F.cross_entropy(clean, y), clean, None)
    worst = worst_case_logits(model if prepared is None else prepared, x, y, threat=threat, eps=eps, beta=beta)
    loss = kappa * F.cross_entropy(clean, y) + (1 - kappa) * F.cross_entropy(worst, y)
    return CertifiedLoss(loss, clean, worst)


# -- the training methods --------------------------------------------------------------------


def _options_from(config) -> CertifiedTrainingOptions:
    """The :class:`CertifiedTrainingOptions` of ``config``: its ``method_options``, with ``eps``,
    ``norm`` and ``bounds`` taken from ``config.threat`` where the options leave them out."""
    values = dict(config.method_options)
    if set(values) - {f.name for f in fields(CertifiedTrainingOptions)}:
        build_options(CertifiedTrainingOptions, values, config.method)  # names the valid options
    if "eps" not in values:
        if config.threat is None:
            raise RobustlabError(
                f"the {config.method!r} training method needs a radius: give TrainConfig.threat or "
                "method_options={'eps': ...}, or train with robustlab.training.certified.train_certified(model, x, y, "
                "config=..., options=CertifiedTrainingOptions(eps=...))"
            )
        values = {**{k: config.threat[k] for k in ("eps", "norm", "bounds")}, **values}
    return build_options(CertifiedTrainingOptions, values, config.method)


class _CertifiedMethod(TrainingMethod):
    Options = CertifiedTrainingOptions

    def __init__(self, config, *, device="cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.options = _options_from(config)
        self.step = 0
        self.last: Schedule | None = None
        self._prepared: tuple[tuple, Prepared] | None = None

    def current(self) -> Schedule:
        """The schedule values the next batch will use."""
        return schedule(self.options, self.step, method=self.name)

    @classmethod
    def check_config(cls, config) -> None:
        _options_from(config)
        if config.eps_warmup_epochs:
            raise RobustlabError(
                f"the {cls.name!r} method ramps eps with its own warmup_steps / ramp_steps options; "
                "leave TrainConfig.eps_warmup_epochs at 0"
            )

    def _prepared_for(self, model: nn.Module, x: Tensor) -> Prepared:
        key = (id(model), tuple(x.shape[1:]), x.dtype, x.device)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, _prepare_for_training(model, x))
        return self._prepared[1]

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        x, y = batch.x, batch.y
        values = self.current()
        prepared = None
        if values.eps > 0 and values.kappa < 1:
            prepared = self._prepared_for(model, x)
        out = certified_loss(model, x, y, threat=self.options.threat, eps=values.eps, kappa=values.kappa,
                             beta=values.beta, prepared=prepared)
        self.last = values
        self.step += 1
        return LossOutput(out.loss, out.clean_logits)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class IBPMethod(_CertifiedMethod):
    """IBP training (Gowal et al., "On the effectiveness of interval bound propagation for
    training verifiably robust models", 2018): ``kappa CE(clean) + (1 - kappa) CE(-m_IBP)`` with
    ``eps`` and ``kappa`` ramped (see the module docstring). Cost per batch: about 3 forward
    passes and their backward."""

    name = "ibp"


class CROWNIBPMethod(_CertifiedMethod):
    """CROWN-IBP training (Zhang et al., "Towards stable and efficient training of verifiably
    robust neural networks", ICLR 2020): the margin bound ``beta m_CROWN-IBP + (1 - beta) m_IBP``
    with ``beta`` ramped from ``beta_start`` to ``beta_end`` along with ``eps`` and ``kappa``.
    Cost per batch: IBP's plus one CROWN backward bound pass (``K`` rows per sample) while
    ``beta > 0``."""

    name = "crown-ibp"


#: The certified training methods by name (also registered in :data:`robustlab.training.METHODS`).
CERTIFIED_METHODS = {"ibp": IBPMethod, "crown-ibp": CROWNIBPMethod}
for _method in CERTIFIED_METHODS.values():
    METHODS.add(_method)


def train_certified(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    *,
    config,
    options: CertifiedTrainingOptions,
    checkpoint_dir: str | Path | None = None,
    **train_kwargs,
):
    """:func:`robustlab.training.train` with ``config.method`` ``"ibp"`` or ``"crown-ibp"``
    (``"natural"`` is replaced by ``"ibp"``) and ``options`` as its ``method_options``; returns
    its ``TrainResult``. Other keyword arguments go to :func:`~robustlab.training.train`."""
    from robustlab.training.config import TrainConfig
    from robustlab.training.loop import train

    if not isinstance(config, TrainConfig):
        raise RobustlabError(f"config must be a TrainConfig, got {type(config).__name__}")
    method = "ibp" if config.method == "natural" else config.method
    if method not in CERTIFIED_METHODS:
        raise RobustlabError(
            f"train_certified needs config.method in {sorted(CERTIFIED_METHODS)}, got {config.method!r}"
        )
    if not isinstance(options, CertifiedTrainingOptions):
        raise RobustlabError(f"options must be CertifiedTrainingOptions, got {type(options).__name__}")
    config = replace(config, method=method, method_options=options.to_dict())
    return train(model, train_x, train_y, config=config, checkpoint_dir=checkpoint_dir, **train_kwargs)
