"""Training methods: the two plug points of the training loop.

Every training method is a pair:

- an *inner maximization* ``make_inputs(model, x, y) -> x_train`` that produces the inputs the
  model is trained on (natural training: ``x`` itself; adversarial training: an attack), and
- an *objective* ``loss(model, x_train, x, y) -> LossOutput`` that computes the scalar loss to
  minimize (natural training: cross-entropy on ``x_train``; TRADES: CE on ``x`` plus a KL term
  to ``x_train``; ...).

The loop (:func:`robustlab.training.train`) calls, for each batch, with the model in train
mode: ``make_inputs``, then zeroes the parameter gradients, then ``loss`` and ``backward``. So
``make_inputs`` may leave parameter gradients behind, but it owns everything else about the
model's state while it runs: in particular **BatchNorm mode during the inner maximization is
the method's concern** (e.g. run the attack in eval mode so attack forwards do not update the
running statistics, and restore train mode before returning). Randomness a method needs must
come from a ``torch.Generator`` it owns and exposes through ``state_dict`` /
``load_state_dict``, so that checkpoints capture it and resumed runs stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
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


@runtime_checkable
class Method(Protocol):
    """A training method; see the module docstring for the contract."""

    def make_inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Inner maximization: ``x [N, ...], y [N] -> x_train [N, ...]``."""
        ...

    def loss(self, model: nn.Module, x_train: Tensor, x: Tensor, y: Tensor) -> LossOutput:
        """Objective on a batch; returns the scalar loss and the logits for accuracy."""
        ...

    def state_dict(self) -> dict:
        """Checkpointable state (generators, per-example state) as tensors / plain Python."""
        ...

    def load_state_dict(self, state: dict) -> None:
        ...


class NaturalMethod:
    """Standard (non-adversarial) training: inputs unchanged, cross-entropy objective.

    Cost per batch: 1 forward and 1 backward pass.
    """

    name = "natural"

    def make_inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x

    def loss(self, model: nn.Module, x_train: Tensor, x: Tensor, y: Tensor) -> LossOutput:
        logits = model(x_train)
        return LossOutput(F.cross_entropy(logits, y), logits)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


#: Training methods by name; ``TrainConfig.method`` picks one. Values are zero-argument
#: factories returning a :class:`Method`.
METHODS: dict[str, Callable[[], Method]] = {"natural": NaturalMethod}


def make_method(config: TrainConfig) -> Method:
    """Build the method ``config.method`` names; the one place the loop constructs methods."""
    return METHODS[config.method]()
