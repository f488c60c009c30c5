"""Training methods: the plug points of the training loop.

Every training method is a pair:

- an *inner maximization* ``make_inputs(model, batch) -> x_train`` that produces the inputs the
  model is trained on (natural training: ``batch.x`` itself; adversarial training: an attack),
- an *objective* ``loss(model, x_train, batch) -> LossOutput`` that computes the scalar loss to
  minimize (natural training: cross-entropy on ``x_train``; TRADES: CE on ``batch.x`` plus a KL
  term to ``x_train``; ...),

plus an optional ``after_step(model, x_train, batch)`` called after the optimizer step, and
``replays`` (how many optimizer steps the loop takes on each minibatch; "free" adversarial
training replays each one ``m`` times).

The loop (:func:`robustlab.training.train`) calls, for each batch and each replay, with the model
in train mode: ``make_inputs``, then zeroes the parameter gradients, then ``loss``, ``backward``,
the optimizer step and ``after_step``. So ``make_inputs`` may leave parameter gradients behind,
and ``after_step`` may read ``x_train.grad`` when ``make_inputs`` returned a leaf that requires
grad (that is how "free" training reuses the training backward for its perturbation). Everything
else about the model's state while ``make_inputs`` runs is the method's concern; the
:func:`inner_mode` helper puts the model in the mode ``TrainConfig.bn_mode`` asks for.

A :class:`Batch` carries what varies per step: the inputs, their **dataset indices** (for methods
with per-example state, such as MMA's per-example eps, kept in ``state_dict`` by index), the
optimizer step, and the threat model for this step (``TrainConfig.threat`` with the eps warm-up
applied; ``None`` without a threat).

Methods are classes built as ``METHODS[name](config, device=...)``. Each declares its settings as
a frozen ``Options`` dataclass; ``TrainConfig.method_options`` is validated against it when the
config is made (:meth:`TrainingMethod.check_config`), so a misspelt option fails before training.
Randomness a method needs must come from a ``torch.Generator`` it owns and exposes through
``state_dict`` / ``load_state_dict``, so that checkpoints capture it and resumed runs stay exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.modes import ModuleMode
from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.threat import ThreatModel
    from robustlab.training.config import TrainConfig


class LossOutput(NamedTuple):
    """What an objective returns.

    ``loss``: scalar tensor to minimize (mean over the batch). ``logits``: ``[N, K]`` model
    outputs on the inputs whose accuracy is reported as the training accuracy (for natural
    training the clean inputs, for adversarial training usually ``x_train``), returned so the
    loop does not pay an extra forward pass to track accuracy.
    """

    loss: Tensor
    logits: Tensor


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Batch:
    """One training step's data, as the loop hands it to a method.

    ``x``: ``[N, ...]`` inputs on the training device; ``y``: ``[N]`` int64 labels; ``index``:
    ``[N]`` int64 positions of the examples in the training set (same device); ``epoch``: the
    loop's 1-based pass; ``step``: optimizer steps taken before this one (0 = first); ``threat``:
    this step's threat model (warm-up applied) or ``None``; ``scale_loss``: the mixed-precision
    loss scaler (identity without it). Scaling a loss before differentiating with respect to the
    input keeps float16 input gradients from underflowing; the steepest-ascent directions of
    the threat models are invariant to that positive factor.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    epoch: int = 1
    step: int = 0
    threat: ThreatModel | None = None
    scale_loss: Callable[[Tensor], Tensor] = _identity

    @property
    def required_threat(self) -> ThreatModel:
        """``threat``, for the methods that cannot train without one (``needs_threat``)."""
        if self.threat is None:
            raise RobustlabError("this training method needs a threat model: set TrainConfig.threat")
        return self.threat


@runtime_checkable
class Method(Protocol):
    """A training method; see the module docstring for the contract."""

    @property
    def replays(self) -> int:
        """How many times the loop replays each batch (1 for most methods)."""
        ...

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """Inner maximization: ``batch -> x_train [N, ...]``."""
        ...

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        """Objective on a batch; returns the scalar loss and the logits for accuracy."""
        ...

    def after_step(self, model: nn.Module, x_train: Tensor, batch: Batch) -> None:
        """Called after the optimizer step (``x_train.grad`` holds the training gradient when
        ``x_train`` was a leaf requiring grad)."""
        ...

    def state_dict(self) -> dict:
        """Checkpointable state (generators, per-example state) as tensors / plain Python."""
        ...

    def load_state_dict(self, state: dict) -> None:
        ...


@dataclass(frozen=True)
class NoOptions:
    """A method without settings."""


def build_options(options_type: type, values: dict, method: str) -> Any:
    """``options_type(**values)``, with unknown names reported together with the valid ones."""
    if not isinstance(values, dict):
        raise RobustlabError(f"method_options must be a dict of option names to values, got {values!r}")
    valid = [f.name for f in dataclasses.fields(options_type)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        choices = ", ".join(valid) if valid else "none"
        raise RobustlabError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for training method {method!r}; "
            f"valid options: {choices}"
        )
    try:
        return options_type(**values)
    except TypeError as exc:
        raise RobustlabError(f"bad options for training method {method!r}: {exc}") from None


class TrainingMethod:
    """Base class: natural-training defaults for every plug point.

    Subclasses set ``name``, ``Options`` (a frozen dataclass of the method's settings, validated
    in ``__post_init__``) and ``needs_threat``, and override what they change.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_threat: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, *, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.options = build_options(self.Options, config.method_options, self.name)

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Raise :class:`RobustlabError` unless ``config`` suits this method (called by
        ``TrainConfig`` on construction, before any data is touched)."""
        build_options(cls.Options, config.method_options, cls.name)
        if cls.needs_threat and config.threat is None:
            raise RobustlabError(
                f"training method {cls.name!r} needs a threat model: set TrainConfig.threat, e.g. "
                "{'norm': 'Linf', 'eps': 0.3} (CLI: --norm Linf --eps 0.3)"
            )

    @property
    def replays(self) -> int:
        return 1

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return batch.x

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        logits = model(x_train)
        return LossOutput(F.cross_entropy(logits, batch.y), logits)

    def after_step(self, model: nn.Module, x_train: Tensor, batch: Batch) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NaturalMethod(TrainingMethod):
    """Standard (non-adversarial) training: inputs unchanged, cross-entropy objective.

    Cost per batch: 1 forward and 1 backward pass.
    """

    name = "natural"


BN_MODES = ("eval", "train")


@contextlib.contextmanager
def inner_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Run the body with ``model`` in eval mode (``bn_mode="eval"``: BatchNorm uses its running
    statistics and is not updated, Dropout is off) or train mode (``"train"``: batch statistics,
    running statistics updated by every attack forward), restoring every module's mode after."""
    with ModuleMode(model, bn_mode == "train"):
        yield


def method_generator(config: TrainConfig, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` for a method's random starts, seeded from ``config.seed`` and
    independent of the loop's shuffling and global-RNG seeds (it is the third of the same
    draw). Methods keep it in their ``state_dict``."""
    seeds = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return torch.Generator(device=device).manual_seed(seeds[2])


#: Training methods by name; ``TrainConfig.method`` picks one. Values are classes built as
#: ``METHODS[name](config, device=...)`` (see :class:`TrainingMethod`).
METHODS: Registry[type[TrainingMethod]] = Registry("training method", [NaturalMethod])


def make_method(config: TrainConfig, device: str | torch.device = "cpu") -> Method:
    """Build the method ``config.method`` names; the one place the loop constructs methods."""
    return METHODS[config.method](config, device=device)
