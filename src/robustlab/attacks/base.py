"""The attack contract and the template every attack runs through.

``attack(model, x, y, *, threat, targets=None, generator=None) -> AttackResult``

An attack object holds only configuration (keyword-only hyperparameters, validated at
construction). A call takes what varies per batch and leaves nothing behind. The template in
:meth:`Attack.__call__` enforces the invariants so that no attack has to remember them:

1. inputs are checked (shapes, dtypes, NaN/inf, bounds, label range, probabilities vs logits);
2. the model runs in eval mode with its parameters frozen; its per-module training flags,
   parameters' ``requires_grad`` and ``.grad`` are restored in ``finally``;
3. targets are resolved (given, least likely, most confusing, random);
4. the attack's result is projected onto the threat set and membership is verified;
5. success is recomputed by a fresh forward pass, never taken from the attack's own bookkeeping.

Attacks talk to the model only through a :class:`ModelOracle`, which counts forward and
backward passes (per sample) and is the place where wrappers such as EOT plug in.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustlab.documentation import docs_pointer
from robustlab.errors import ProbabilityOutputWarning, RobustlabError
from robustlab.losses import looks_like_probabilities
from robustlab.models.adapters import output_error
from robustlab.modes import FrozenEval
from robustlab.threat import ThreatModel

__all__ = ["Attack", "AttackResult", "ModelOracle", "check_call", "check_inputs", "check_logits", "check_start",
           "difference_of_logits", "is_adversarial", "project_rounding_inward", "require_two_classes", "resolve_targets",
           "TARGET_MODES"]

TARGET_MODES = ("least-likely", "most-confusing", "random")

# Inputs this far outside the box are float noise and are clamped silently; further out is an error.
_BOX_TOLERANCE = 1e-5


@dataclass
class AttackResult:
    """What an attack produced, per sample.

    Attributes:
        x_adv: ``[N, ...]`` adversarial inputs, inside the threat set (where an attack failed
            this is its best attempt, never silently the clean input unless that is its best).
        success: ``bool[N]``, recomputed by a fresh forward pass on ``x_adv``.
        distance: ``[N]`` distance of ``x_adv`` to ``x`` in the threat model's norm.
        loss: ``[N]`` the attack's loss at ``x_adv`` (NaN for attacks without a loss).
        predictions: ``[N]`` the model's predicted classes at ``x_adv``.
        targets: ``[N]`` target classes, or ``None`` for untargeted attacks.
        forwards / backwards: model forward and backward passes, counted per sample.
        extras: attack-specific information (e.g. the restart that won).
        margin: ``[N]`` :func:`difference_of_logits` at ``x_adv`` (how far it is from the
            decision boundary; ``<= 0`` where adversarial, up to ties).
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    loss: Tensor
    predictions: Tensor
    targets: Tensor | None = None
    forwards: int = 0
    backwards: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    margin: Tensor | None = None

    def __len__(self) -> int:
        return self.x_adv.shape[0]

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")


def require_two_classes(logits: Tensor) -> None:
    """Raise a :class:`RobustlabError` for a model with fewer than 2 outputs."""
    if logits.shape[1] < 2:
        raise RobustlabError(f"this attack needs a model with at least 2 classes, got {logits.shape[1]}")


def difference_of_logits(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """``[N]`` margin that minimum-norm attacks drive below zero (negative = adversarial, up to ties).

    Untargeted: ``Z_y - max_{j != y} Z_j``; targeted: ``max_{j != t} Z_j - Z_t``. Raises a
    :class:`RobustlabError` for models with fewer than 2 classes.
    """
    require_two_classes(logits)
    cls = labels if targets is None else targets
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], -math.inf).amax(dim=1)
    return own - other if targets is None else other - own


def is_adversarial(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """The success criterion: misclassified (untargeted) or classified as the target."""
    pred = logits.argmax(dim=1)
    return pred != labels if targets is None else pred == targets


class ModelOracle:
    """The model as attacks see it: logits and gradients, with per-sample cost counters."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def logits(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` without gradient. Costs one forward per sample."""
        self.forwards += x.shape[0]
        with torch.no_grad():
            logits: Tensor = self.model(x)
        return logits

    def loss_and_grad(
        self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss [N], grad d sum(loss)/dx, logits [N, K])`` at ``x``.

        ``loss_fn`` maps logits to a per-sample loss. Costs one forward and one backward per
        sample. Samples are independent in eval mode, so the gradient of the summed loss is
        each sample's own gradient.
        """
        (loss,), (grad,), logits = self.losses_and_grads(x, (loss_fn,))
        return loss, grad, logits

    def losses_and_grads(
        self, x: Tensor, loss_fns: Sequence[Callable[[Tensor], Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Several losses and their input gradients from one forward pass: ``([loss [N]],
        [grad], logits [N, K])``, one entry per ``loss_fns`` item. Costs one forward and
        ``len(loss_fns)`` backwards per sample."""
        self.forwards += x.shape[0]
        self.backwards += x.shape[0] * len(loss_fns)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self.model(x)
            losses = [fn(logits) for fn in loss_fns]
            grads = [torch.autograd.grad(loss.sum(), x, retain_graph=i < len(losses) - 1)[0]
                     for i, loss in enumerate(losses)]
        return [loss.detach() for loss in losses], [g.detach() for g in grads], logits.detach()


def resolve_targets(
    targets: Tensor | str | None,
    clean_logits: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """Turn a target specification into a ``[N]`` tensor of classes (or ``None``).

    ``"least-likely"``: the class with the lowest clean logit. ``"most-confusing"``: the
    highest-scoring wrong class. ``"random"``: uniform over the wrong classes, from ``generator``.
    """
    if targets is None:
        return None
    n, k = clean_logits.shape
    if isinstance(targets, str):
        if targets == "least-likely":
            return clean_logits.argmin(dim=1)
        if targets == "most-confusing":
            return clean_logits.scatter(1, labels[:, None], float("-inf")).argmax(dim=1)
        if targets == "random":
            if k < 2:
                raise RobustlabError("random targets need at least 2 classes")
            offset = torch.randint(1, k, (n,), generator=generator, device=labels.device) if n else labels.clone()
            return (labels + offset) % k
        raise RobustlabError(f"unknown target mode {targets!r}; give a tensor of classes or one of {TARGET_MODES}")
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise RobustlabError(f"targets must be integer class indices, got dtype {targets.dtype}")
    targets = targets.to(device=labels.device, dtype=torch.int64)
    if targets.shape != labels.shape:
        raise RobustlabError(f"targets must have shape {tuple(labels.shape)}, got {tuple(targets.shape)}")
    if n and (targets.min() < 0 or targets.max() >= k):
        raise RobustlabError(f"targets must lie in [0, {k}); got values in [{int(targets.min())}, {int(targets.max())}]")
    if n and (targets == labels).any():
        raise RobustlabError("a target equals the true label for some samples; targeted attacks need t != y")
    return targets


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_call(model: nn.Module, x: Tensor) -> Tensor:
    """Checks shared by every entry point that runs ``model`` on ``x``: not under
    ``torch.inference_mode()`` (attacks and training need gradients), ``x`` on the device of the
    model's parameters (where they all share one), and ``x`` of the dtype of
    the model's floating parameters (robustlab never casts silently: rounding ``x`` to a lower
    precision would move the clean point). Returns ``x``, as a normal tensor if it was an
    inference tensor (one made under ``inference_mode``)."""
    if torch.is_inference_mode_enabled():
        raise RobustlabError("called under torch.inference_mode(), where no gradient can be computed; call it "
                             "outside (torch.no_grad() around it is fine: robustlab enables gradients where it needs them)")
    if isinstance(x, Tensor) and x.is_inference():
        x = x.clone()
    if isinstance(model, nn.Module) and isinstance(x, Tensor):
        devices = {p.device for p in model.parameters()}
        if len(devices) == 1 and x.device not in devices:
            (device,) = devices
            raise RobustlabError(f"x is on {x.device} but the model's parameters are on {device}: move one to the "
                                 f"other (x.to({str(device)!r}) or model.to({str(x.device)!r}))")
    if isinstance(model, nn.Module) and isinstance(x, Tensor) and x.is_floating_point():
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if len(dtypes) == 1 and x.dtype not in dtypes:
            (dtype,) = dtypes
            raise RobustlabError(
                f"x has dtype {x.dtype} but the model's parameters are {dtype}; cast one to the other "
                f"(x.to({dtype}) or model.to({x.dtype})): robustlab does not cast silently, since rounding x moves "
                "the clean point the threat set is centred on")
    return x


def check_generator(generator: object, x: Tensor) -> None:
    """``generator`` must be ``None`` or a :class:`torch.Generator` on the device type of ``x``:
    torch draws a CUDA tensor only from a CUDA generator, so a CPU generator with CUDA inputs
    would fail inside the attack with torch's own message."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise RobustlabError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise RobustlabError(f"the generator is on {generator.device} but the inputs are on {x.device}: make it there, "
                             f"torch.Generator(device={str(x.device)!r}).manual_seed(seed)")


def project_rounding_inward(threat: ThreatModel, x: Tensor, x_adv: Tensor) -> Tensor:
    """``threat.project(x, x_adv)``, exact also in float16 and bfloat16.

    Low-precision inputs are projected in float32 and rounded back coordinate by coordinate
    towards ``x`` (never away from it), so every ``|x_adv_i - x_i|`` is at most that of the float32
    projection: the result lies in the threat set exactly, with float32's tolerance, instead of
    overshooting ``eps`` by a rounding step (0.1 is 0.10010 in float16).
    """
    if x.dtype not in _LOW_PRECISION:
        return threat.project(x, x_adv)
    x32 = x.float()
    projected = threat.project(x32, x_adv.float())
    rounded = projected.to(x.dtype)
    outward = (rounded.float() - x32).abs() > (projected - x32).abs()
    return torch.where(outward, torch.nextafter(rounded, x), rounded)


def check_inputs(x: Tensor, y: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """Check a batch before any model sees it; return ``(x clamped to the box, y as int64)``.

    ``x`` must be a floating-point ``[N, ...]`` tensor of finite values inside ``threat.bounds``
    (up to float noise, which is clamped), ``y`` a ``[N]`` tensor of non-negative integer class
    indices. Shared by the attack template and the evaluations (:mod:`robustlab.evaluation`).
    Raises :class:`RobustlabError` naming the problem. Cost: one pass over ``x``.
    """
    if isinstance(threat, str):
        raise RobustlabError(f"threat must be a robustlab.threat.ThreatModel with a budget, e.g. Linf(eps=0.3) or "
                             f"robustlab.threat.threat_model({threat!r}, eps), not the string {threat!r}")
    if not isinstance(threat, ThreatModel):
        raise RobustlabError(f"threat must be a robustlab.threat.ThreatModel, got {type(threat).__name__}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RobustlabError("x and y must be torch tensors")
    if not x.is_floating_point():
        raise RobustlabError(f"x must be a floating-point tensor, got dtype {x.dtype} (scale integer images to {threat.bounds})")
    if x.dim() < 2:
        raise RobustlabError(f"x must be a batch [N, ...] with at least 2 dimensions, got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise RobustlabError(f"y must have shape [{x.shape[0]}] (one label per input: as many labels as x has samples, the same N), "
                             f"got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise RobustlabError(f"y must hold integer class indices (labels), got dtype {y.dtype}")
    if y.device != x.device:
        raise RobustlabError(f"x is on {x.device} and y on {y.device}: put both on the model's device (y.to(x.device))")
    if y.numel() and int(y.min()) < 0:
        raise RobustlabError(f"labels must lie in [0, number of classes); got a negative label {int(y.min())}")
    if not torch.isfinite(x).all():
        raise RobustlabError("x contains NaN or inf")
    lo, hi = threat.bounds
    if x.numel():
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < lo - _BOX_TOLERANCE or x_max > hi + _BOX_TOLERANCE:
            raise RobustlabError(
                f"x lies outside the threat model's bounds {threat.bounds}: values in [{x_min:.4g}, {x_max:.4g}]. "
                "Inputs must be in the model's input domain; put mean/std normalization inside the model "
                "(robustlab.models.Normalize)"
            )
    return x.clamp(lo, hi), y.to(torch.int64)


def check_logits(logits: Tensor, y: Tensor, num_classes: int | None = None, *, stacklevel: int = 3) -> None:
    """Check a model's clean outputs ``[N, K]`` for the labels ``y [N]``.

    Raises :class:`RobustlabError` unless the outputs are 2-D, ``K == num_classes`` (when given),
    every label lies in ``[0, K)`` and no output is NaN (the argmax of a NaN row is class 0, so
    such samples would count as correct or broken at random). Warns
    (:class:`ProbabilityOutputWarning`) when the rows look like probabilities.
    """
    if not isinstance(logits, Tensor):
        raise output_error(logits)
    if logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise RobustlabError(f"the model must return logits of shape [N, K], got {shape}")
    k = logits.shape[1]
    if num_classes is not None and k != num_classes:
        raise RobustlabError(f"the model has {k} outputs but num_classes is {num_classes}: the labels, the attacks "
                             "(e.g. a suite's target classes) and the model must agree on the number of classes")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise RobustlabError(f"labels must lie in [0, {k}) for a model with {k} outputs; got [{int(y.min())}, {int(y.max())}]")
    nan_rows = torch.isnan(logits).any(dim=1)
    if bool(nan_rows.any()):
        raise RobustlabError(f"the model returned NaN logits for {int(nan_rows.sum())} of {logits.shape[0]} inputs "
                             f"(first at position {int(nan_rows.nonzero()[0, 0])}); a NaN row has no predicted class")
    if looks_like_probabilities(logits):
        warnings.warn(
            "the model's outputs look like probabilities (non-negative rows summing to 1); attacks and "
            "losses expect logits: remove the final softmax. Margin-based losses saturate on "
            f"probabilities and make the model look robust. See `{docs_pointer('diagnostics', 'probabilities')}`",
            ProbabilityOutputWarning,
            stacklevel=stacklevel,
        )


def check_start(x: Tensor, start: Tensor, threat: ThreatModel) -> Tensor:
    """Check points an attack is asked to start from (``start=`` of a call): a tensor of
    ``x``'s shape, dtype and device, finite, inside the threat set around ``x``; returned
    detached."""
    if not isinstance(start, Tensor):
        raise RobustlabError(f"start must be a tensor like x, got {type(start).__name__}")
    if start.shape != x.shape or start.dtype != x.dtype or start.device != x.device:
        raise RobustlabError(f"start must have x's shape, dtype and device {tuple(x.shape)}, {x.dtype}, {x.device}; "
                             f"got {tuple(start.shape)}, {start.dtype}, {start.device}")
    if not bool(torch.isfinite(start).all()):
        raise RobustlabError("start holds NaN or infinite values")
    outside = ~threat.contains(x, start)
    if bool(outside.any()):
        raise RobustlabError(f"start lies outside {threat} around x for {int(outside.sum())} of {len(x)} samples")
    return start.detach()


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class. Subclasses are frozen keyword-only dataclasses holding hyperparameters and
    implement :meth:`_run`.

    Class attributes: ``name`` (registry key), ``norms`` (supported threat-model norms),
    ``minimum_norm`` (True for attacks that minimise the distance rather than work at a fixed
    budget: their per-sample distances give robust accuracy at every eps), ``takes_start``
    (True for attacks that can start from given points of the threat set: the call's ``start``).
    """

    name: ClassVar[str] = ""
    norms: ClassVar[frozenset[str]] = frozenset()
    minimum_norm: ClassVar[bool] = False
    takes_start: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-friendly dict (for reports and the results store)."""
        out: dict[str, Any] = {"attack": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)
        return out

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        targets: Tensor | str | None = None,
        generator: torch.Generator | None = None,
        start: Tensor | None = None,
    ) -> AttackResult:
        x, y = check_inputs(check_call(model, x), y, threat)
        check_generator(generator, x)
        if start is not None:
            if not self.takes_start:
                raise RobustlabError(f"{type(self).__name__} does not take start points (start=...)")
            start = check_start(x, start, threat)
        if isinstance(y, Tensor) and y.is_inference():
            y = y.clone()
        if threat.norm not in self.norms:
            raise RobustlabError(f"{type(self).__name__} supports the norms {sorted(self.norms)}, not {threat.norm}")
        x = x.detach()
        oracle = ModelOracle(model)
        with FrozenEval(model):
            clean_logits = oracle.logits(x)
            check_logits(clean_logits, y)
            target_classes = resolve_targets(targets, clean_logits, y, generator)
            if x.shape[0] == 0:
                x_adv: Tensor = x.clone()
                extras: dict[str, Any] = {}
            else:
                x_adv, extras = self._run(oracle, x, y, threat=threat, targets=target_classes, generator=generator,
                                          **({} if start is None else {"start": start}))
            x_adv = project_rounding_inward(threat, x, x_adv.detach())
            inside = threat.contains(x, x_adv)
            if not bool(inside.all()):
                raise RuntimeError(
                    f"{type(self).__name__} produced points outside {threat} after projection "
                    f"(max distance {float(threat.distance(x, x_adv).max()):.6g}); this is a bug in the attack"
                )
            adv_logits = oracle.logits(x_adv)
        return AttackResult(
            x_adv=x_adv,
            success=is_adversarial(adv_logits, y, target_classes),
            distance=threat.distance(x, x_adv) if x.dtype not in _LOW_PRECISION
            else threat.distance(x.float(), x_adv.float()),
            loss=self._final_loss(adv_logits, y, target_classes),
            predictions=adv_logits.argmax(dim=1),
            targets=target_classes,
            forwards=oracle.forwards,
            backwards=oracle.backwards,
            extras=extras,
            margin=difference_of_logits(adv_logits, y, target_classes),
        )

    def _final_loss(self, logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        loss_fn = getattr(self, "loss_fn", None)
        if loss_fn is None:
            return torch.full((logits.shape[0],), math.nan, device=logits.device)
        loss: Tensor = loss_fn(logits, y, targets).detach()
        return loss

    def _run(
        self,
        oracle: ModelOracle,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        targets: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Return ``(x_adv, extras)``. ``x`` is detached and inside the box; the model is in eval
        mode with frozen parameters. Need not project: the template does."""
        raise NotImplementedError
